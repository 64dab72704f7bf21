"""The Evaluator: turns a method's Summary / Comparison into leaderboard metrics.

Plugins never grade themselves: everything here is computed from what they return, with
the same code and the same seeded protocol for every method.
"""

from __future__ import annotations

import numpy as np

from bench import distributed
from bench import metrics as M
from bench.api import Comparator, DataView, Summary
from bench.datasets.base import DatasetSpec
from bench.errors import DataError
from bench.statistics import checked_score


def validate_summary(summary: Summary, n: int, method: str) -> None:
    """One-line errors for a malformed Summary (a plugin bug, reported in the record)."""
    if not isinstance(summary, Summary):
        raise DataError(f"{method}: fit() must set summary_ to a bench.api.Summary, got {type(summary).__name__}")
    if summary.codes is not None and np.asarray(summary.codes).shape != (n,):
        raise DataError(f"{method}: summary codes have shape {np.asarray(summary.codes).shape}, expected ({n},)")
    if summary.embedding is not None:
        emb = np.asarray(summary.embedding)
        if emb.ndim != 2 or len(emb) != n:
            raise DataError(f"{method}: summary embedding has shape {emb.shape}, expected ({n}, d)")
    if summary.duplicate_pairs is not None:
        pairs = np.asarray(summary.duplicate_pairs).reshape(-1, 2)
        if len(pairs) and (pairs.min() < 0 or pairs.max() >= n):
            raise DataError(f"{method}: duplicate pairs index outside 0..{n - 1}")


class Evaluator:
    """Grades summaries and comparators. Holds the backbone probe of each (dataset, seed), so the
    cells of one run probe the same features once; no state beyond that cache."""

    def __init__(self) -> None:
        self._probe: dict[tuple, float] = {}

    def backbone_probe(self, view: DataView, seed: int) -> float:
        """Linear-probe accuracy of the view's pooled features (the reference beside a method's)."""
        key = (view.source.name, view.source.revision, view.source.n, seed)
        if key not in self._probe:
            labelled = view.labels >= 0
            self._probe[key] = M.linear_probe_accuracy(view.features()[labelled], view.labels[labelled], seed=seed)
        return self._probe[key]

    def summary(self, summary: Summary, view: DataView, *, seed: int) -> dict[str, float]:
        return evaluate_summary(summary, view, seed=seed, evaluator=self)


def evaluate_summary(summary: Summary, view: DataView, *, seed: int,
                     evaluator: Evaluator | None = None) -> dict[str, float]:
    """Harness metrics of one Summary: clustering scores against labels (and groups), the linear
    probe of its representation beside the backbone's, duplicate precision / recall."""
    out: dict[str, float] = {}
    labels = view.labels
    # label < 0 marks an unlabelled image (e.g. PASS inside passnet): graded on labelled ones only
    labelled = None if labels is None else np.flatnonzero(labels >= 0)
    if labelled is not None and len(labelled) == 0:
        labels = labelled = None
    planted = view.source.duplicate_pairs
    if labels is not None and planted is not None and len(np.unique(labels[labelled])) < 2:
        # one class folder holding a duplicates.csv (neardup.write_folder's layout): its ground
        # truth is the pairs; label metrics would only fail (no probe on one class)
        labels = labelled = None
    if summary.codes is not None:
        codes = np.asarray(summary.codes)
        out["n_clusters"] = float(len(np.unique(codes)))
        if labels is not None:
            out.update(M.clustering_scores(codes[labelled], labels[labelled]))
            out["nmi_random"] = M.random_assignment_nmi(codes[labelled], labels[labelled], seed=seed)
        groups = view.groups
        if groups is not None and len(np.unique(groups)) > 1:
            out["group_nmi"] = float(M.clustering_scores(codes, groups)["nmi"])
    rep = summary.embedding if summary.embedding is not None else (
        M.one_hot(np.asarray(summary.codes)) if summary.codes is not None else None)
    if rep is not None and labels is not None:
        if evaluator is not None and summary.embedding is not None:
            out["probe_acc_backbone"] = evaluator.backbone_probe(view, seed)
        if "probe_acc_backbone" in out and _is_backbone(summary.embedding, view):
            out["probe_acc"] = out["probe_acc_backbone"]  # same input, same protocol: same number
        else:
            out["probe_acc"] = M.linear_probe_accuracy(np.asarray(rep)[labelled], labels[labelled], seed=seed)
    if summary.duplicate_pairs is not None and planted is not None and len(planted):
        out.update(M.duplicate_scores(np.asarray(summary.duplicate_pairs), planted))
    return out


def _is_backbone(embedding: np.ndarray, view: DataView) -> bool:
    feats = view.features()
    return np.shape(embedding) == feats.shape and np.array_equal(np.asarray(embedding), feats)


def _halves(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[: n // 2]), np.sort(perm[n // 2:])


def comparison_pairs(view: DataView, seed: int) -> tuple[tuple[np.ndarray, np.ndarray] | None,
                                                         tuple[np.ndarray, np.ndarray], str]:
    """(between-pair, null-pair, description) of positions in ``view``, both at the same size.

    The sides: group 0 vs group 1 when groups exist, else lower vs upper half of the classes.
    null: two disjoint seeded random halves A1, A2 of the *first* side (group 0, or the lower half
    of the classes), so ``score_null`` is always a split-half within one side, grouped dataset or
    not. between: the same A1 against a seeded random subset B1 of the second side of the same
    size, so the two scores differ only in where the second set comes from. Plug-in divergences
    (FD, histogram EMD, JS of usage) grow as samples shrink; scoring the sources at full size
    against a null at half size let a null exceed a real difference (FD on clipart-passnet:
    null 101 at 200 vs 200, between 80 at 400 vs 400). A dataset with neither groups nor two
    classes has no between pair and its null splits the whole dataset.
    """
    groups, labels = view.groups, view.labels
    if groups is not None and len(np.unique(groups)) > 1:
        g = np.unique(groups)
        first, second = np.flatnonzero(groups == g[0]), np.flatnonzero(groups == g[1])
        names = view.source.group_names or [str(x) for x in g]
        what = f"{names[0]} vs {names[1]}"
    elif labels is not None and len(np.unique(labels)) > 1:
        classes = np.unique(labels)
        low = np.isin(labels, classes[: len(classes) // 2])
        first, second, what = np.flatnonzero(low), np.flatnonzero(~low), "lower vs upper half of the classes"
    else:
        h1, h2 = _halves(len(view), seed)
        return None, (h1, h2), "random halves"
    h1, h2 = _halves(len(first), seed)
    rng = np.random.default_rng([seed, 1])
    b1 = np.sort(rng.choice(len(second), size=min(len(h1), len(second)), replace=False))
    return (first[h1], second[b1]), (first[h1], first[h2]), what


def _score(comparator: Comparator, a: DataView, b: DataView, seed: int):
    """One comparison; a NaN or infinite score is an error, never a number on the leaderboard.
    (Under torchrun a rank > 0 of a distributed comparator returns NaN by contract: rank 0 scores.)"""
    result = comparator.compare(a, b, seed=seed)
    if not distributed.context().is_main:
        return result, float(result.score)
    return result, checked_score(result.score, f"{comparator.name or type(comparator).__name__} ({a.name})",
                                 len(a), len(b))


def evaluate_comparator(comparator: Comparator, view: DataView, *, seed: int,
                        spec: DatasetSpec) -> tuple[dict[str, float], dict]:
    """Scores of ``comparator`` on one dataset and the fidelity metrics derived from them.

    With a ladder (``spec.ladder``, e.g. synth-shift) the score against each mixing proportion
    gives ``fidelity_spearman``; otherwise ``score_between`` (half of one source vs as many of
    the other) and ``score_null`` (that half vs the other half), see :func:`comparison_pairs`."""
    direction = comparator.larger_is_more_different
    out: dict[str, float] = {}
    detail: dict = {}
    if spec.ladder is not None:
        reference, levels = spec.ladder(seed=0)
        ref_view = view.sibling(reference)
        props, scores = [], []
        for proportion, source in levels:
            scores.append(_score(comparator, ref_view, view.sibling(source), seed)[1])
            props.append(float(proportion))
        out["fidelity_spearman"] = M.fidelity_spearman(props, scores, direction)
        out["score_null"], out["score_between"] = scores[0], scores[-1]
        detail["ladder"] = [{"proportion": p, "score": s} for p, s in zip(props, scores)]
    else:
        between, null, what = comparison_pairs(view, seed)
        out["score_null"] = _score(comparator, view.subset(null[0]), view.subset(null[1]), seed)[1]
        if between is not None:
            result, score = _score(comparator, view.subset(between[0]), view.subset(between[1]), seed)
            out["score_between"] = score
            detail["between"] = what
            detail["between_detail"] = {"pair": what, "score": score, **result.detail}
    if "score_between" in out and out["score_between"] != 0:
        ratio = out["score_null"] / out["score_between"]
        out["null_over_between"] = ratio if direction else 1.0 / ratio if ratio else float("inf")
    return out, detail
