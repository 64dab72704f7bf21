"""Descriptive statistics of a multicut clustering (the supplement's Tables 5 and 6), the
variation of information between clusterings of different extractors, and how the groups
of a multi-source dataset mix inside clusters."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy.special import gammaln
from scipy.stats import entropy
from sklearn.metrics import adjusted_mutual_info_score, mutual_info_score

from bench.errors import DataError
from bench.metrics import variation_of_information


def cluster_sizes(codes: np.ndarray) -> np.ndarray:
    """Sizes of the clusters, largest first."""
    _, counts = np.unique(np.asarray(codes), return_counts=True)
    return np.sort(counts)[::-1]


def cluster_statistics(codes: np.ndarray) -> dict[str, float]:
    """Table 5: #clusters, min / median / mean / max size and % size 1.

    ``pct_size_1`` is the share of **images** alone in their cluster, in percent, which is
    how the supplement reads it (CLIP: 1.0 % of 37k images ≈ 0.4k singleton clusters).
    """
    sizes = cluster_sizes(codes)
    n = int(sizes.sum())
    return {
        "n_clusters": float(len(sizes)),
        "min_size": float(sizes.min()),
        "median_size": float(np.median(sizes)),
        "mean_size": float(sizes.mean()),
        "max_size": float(sizes.max()),
        "pct_size_1": float(100.0 * (sizes == 1).sum() / n),
    }


def largest_clusters(codes: np.ndarray, labels: np.ndarray | None = None,
                     class_names: list[str] | None = None, groups: np.ndarray | None = None,
                     group_names: list[str] | None = None,
                     top: int = 5) -> list[dict[str, Any]]:
    """Table 6: the ``top`` largest clusters with their majority class and group make-up."""
    codes = np.asarray(codes)
    ids, counts = np.unique(codes, return_counts=True)
    order = np.argsort(-counts, kind="stable")[:top]
    rows = []
    for rank, c in enumerate(ids[order], start=1):
        members = codes == c
        row: dict[str, Any] = {"rank": rank, "cluster": int(c), "size": int(members.sum())}
        if labels is not None:
            lab, cnt = np.unique(np.asarray(labels)[members], return_counts=True)
            best = int(lab[np.argmax(cnt)])
            known = class_names and 0 <= best < len(class_names)
            row["majority_class"] = class_names[best] if known else str(best)
            row["majority_share"] = float(cnt.max() / cnt.sum())
        if groups is not None:
            groups = np.asarray(groups)
            for gi in np.unique(groups):
                name = group_names[int(gi)] if group_names and 0 <= int(gi) < len(group_names) else str(gi)
                row[f"group_{name}"] = int((groups[members] == gi).sum())
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- VI


def variation_of_information_matrix(codes_by_extractor: Mapping[str, Any]) -> tuple[list[str], np.ndarray]:
    """Pairwise VI (nats) between clusterings of one dataset by several extractors.

    ``codes_by_extractor`` maps a name to per-image codes (an array, or a Summary with
    ``.codes``); returns (names in the given order, symmetric (m, m) matrix, zero diagonal).
    """
    names = list(codes_by_extractor)
    codes = []
    for name in names:
        value = codes_by_extractor[name]
        value = getattr(value, "codes", value)
        if value is None:
            raise DataError(f"VI matrix: {name!r} has no codes")
        codes.append(np.asarray(value).reshape(-1))
    if len({len(c) for c in codes}) > 1:
        sizes = ", ".join(f"{n}={len(c)}" for n, c in zip(names, codes))
        raise DataError(f"VI matrix: clusterings cover different numbers of images ({sizes})")
    m = len(names)
    out = np.zeros((m, m), dtype=np.float64)
    for i in range(m):
        for j in range(i + 1, m):
            out[i, j] = out[j, i] = variation_of_information(codes[i], codes[j])
    return names, out


# ----------------------------------------------------------------------------- group mixing


def _log_comb(n: np.ndarray | int, k: np.ndarray) -> np.ndarray:
    n = np.asarray(n, dtype=np.float64)
    k = np.asarray(k, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        out = gammaln(n + 1) - gammaln(k + 1) - gammaln(n - k + 1)
    return np.where(k <= n, out, -np.inf)


def group_mixing(codes: np.ndarray, groups: np.ndarray) -> dict[str, float]:
    """How the groups (source datasets) mix inside clusters.

    pure_share:        share of images in clusters that hold one group only.
    pure_share_chance: its expectation when group labels are shuffled over the same
                       cluster sizes (hypergeometric, exact): singletons are always pure.
    adjusted_pure_share: (pure − chance)/(1 − chance); 0 at chance, 1 when every cluster
                       is pure; larger means the groups are more different.
    mixing:            H(group | cluster)/H(group) in [0, 1]; 1 = clusters carry no group
                       information (perfectly mixed), 0 = clusters separate the groups.
    adjusted_mutual_information: AMI(group, cluster) (scikit-learn, normalised by the
                       smaller entropy; 0 at chance, 1 when every cluster holds one group):
                       sees a cluster that is 72 % one group, which the pure share, counting
                       only clusters with no image of the other group, does not.
    """
    codes, groups = np.asarray(codes).reshape(-1), np.asarray(groups).reshape(-1)
    if codes.shape != groups.shape:
        raise DataError(f"group mixing: {len(codes)} codes but {len(groups)} group labels")
    n = len(codes)
    if n == 0:
        raise DataError("group mixing: no images")
    _, c_idx = np.unique(codes, return_inverse=True)
    g_vals, g_idx = np.unique(groups, return_inverse=True)
    table = np.zeros((c_idx.max() + 1, len(g_vals)), dtype=np.int64)
    np.add.at(table, (c_idx, g_idx), 1)
    sizes = table.sum(1)
    pure = float(sizes[(table > 0).sum(1) == 1].sum() / n)
    g_tot = table.sum(0)
    log_all = _log_comb(n, sizes)
    p_pure = np.exp(np.logaddexp.reduce(_log_comb(g_tot[None, :], sizes[:, None]), axis=1) - log_all)
    chance = float((sizes * p_pure).sum() / n)
    adjusted = 0.0 if chance >= 1.0 - 1e-12 else (pure - chance) / (1.0 - chance)
    h_g = float(entropy(g_tot))
    mixing = float("nan") if h_g <= 0 else max(0.0, (h_g - float(mutual_info_score(groups, codes))) / h_g)
    # all singletons: every shuffle has the observed information, AMI is 0/0 (sklearn returns noise)
    informative = len(g_vals) > 1 and 1 < len(sizes) < n
    ami = float(adjusted_mutual_info_score(groups, codes, average_method="min")) if informative else 0.0
    return {"pure_share": pure, "pure_share_chance": chance, "adjusted_pure_share": float(adjusted),
            "mixing": mixing, "adjusted_mutual_information": ami}

