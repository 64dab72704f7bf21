"""The harness-facing classes: the ``wavelet`` Summariser and Comparator."""

from __future__ import annotations

import time
from typing import Any, ClassVar

import numpy as np

from bench.api import Comparator, Comparison, DataView, Summariser, Summary
from bench.errors import BenchError, DataError
from bench.statistics import Draws

from .algorithm2 import eigengap_count, laplacian_eigenvalues
from .core import (
    Reduction,
    _reduction_stats,
    algorithm1,
    algorithm2,
    approximation_level,
    coefficient_matrix,
    knn_duplicates,
    nearest_neighbours,
    normalised_rows,
    pair_components,
    reduce_clusters,
    stack_images,
    train_test_analysis,
)
from .dwt import PAPER_COEFFICIENTS, resolve_coefficients
from .findings import wavelet_findings
from .ssim import SSIMStats, ssim_matrix

ALGORITHMS = ("wavelet-knn", "wavelet-kmeans", "ssim-spectral", "ssim-threshold")
#: how the comparator decides near-duplicates across and within A and B
DUPLICATE_MODES = ("knn", "ssim")


def _read(view: DataView, image_size: int | None, what: str, size: tuple[int, int] | None = None) -> np.ndarray:
    if len(view) == 0:
        raise DataError(f"wavelet: {what} {view.name!r} is empty")
    if image_size is not None:
        if not isinstance(image_size, (int, np.integer)) or image_size < 2:
            raise BenchError(f"wavelet: image_size must be an integer >= 2 or None, got {image_size!r}")
        size = (int(image_size), int(image_size))
    # one image per batch: view.images() stacks a batch, which fails on mixed sizes
    batches = view.images(batch_size=1) if _mixed_sizes_possible(view) else view.images()
    return stack_images(batches, size=size, what=f"images of {view.name!r}")


def _mixed_sizes_possible(view: DataView) -> bool:
    return getattr(view.source, "array", None) is None


def _ids(view: DataView, idx: np.ndarray) -> list[str] | None:
    ids = getattr(view.source, "ids", None)
    if ids is None:
        return None
    return [str(ids[int(view.indices[i])]) for i in idx]


def knn_rows(images: np.ndarray, side: int, backend: str, device) -> tuple[int, np.ndarray]:
    """(level, rows) wavelet-knn searches: the Haar approximation band at <= ``side`` px, each
    row centred and scaled to unit length. One definition for the summariser and the comparator."""
    level = approximation_level(images.shape[1:3], side)
    return level, normalised_rows(coefficient_matrix(images, wavelet="db1", level=level, mode="symmetric",
                                                     coefficients="approximation", backend=backend,
                                                     device=device))


class WaveletSummariser(Summariser):
    """Yousefzadeh (arXiv 2002.10257): similar training images without a trained model.

    ``algorithm="wavelet-knn"`` (the default) finds perturbed copies on real images: each
    image's Haar approximation band at the level whose side is at most ``knn_side`` (16 px),
    centred and scaled to unit length (brightness / contrast invariant, shifts of a few pixels
    shrink below one coefficient), its ``n_neighbours`` nearest images as candidates, and a
    per-pair decision: exact float64 distance 0, or below ``dup_threshold`` times the pair's
    typical neighbour distance (:func:`bench_wavelet.core.knn_duplicates`). Codes are the
    connected components of the duplicate pairs. A global distance cut (Algorithm 1's k-means
    with the automatic n_c) cannot do this: on real photographs perturbed copies lie farther
    apart than distinct flat images (issue #19).

    ``algorithm="wavelet-kmeans"`` is Algorithm 1 (wavelet coefficients, pivoted QR with the
    condition cap ``tau``, k-means with ``n_clusters``); ``"ssim-spectral"`` is Algorithm 2
    (SSIM matrix, Laplacian eigen-gaps > ``gamma`` choose n_c, spectral clustering);
    ``"ssim-threshold"`` is its O(n²) scan with ``ssim_threshold``. Codes are cluster ids;
    the duplicate pairs are the pairs inside redundant (single-label) clusters.

    ``n_clusters``: int (absolute), float in (0, 1] (fraction of N; the paper used 0.94),
    "eigengap" (Algorithm 2's rule on the SSIM matrix), "auto" (near-identical groups, see
    :func:`bench_wavelet.core.auto_n_clusters`), or None = "auto" for Algorithm 1 and
    "eigengap" for Algorithm 2. ``coefficients="auto"`` keeps all level-1 coefficients up to
    ``max_coefficients`` (3,072 = CIFAR, the paper's run) and the approximation band of a
    coarser level for larger images.
    """

    name: ClassVar[str] = "wavelet"
    version: ClassVar[str] = "2"   # 2: default algorithm wavelet-knn (was Algorithm 1, now "wavelet-kmeans")
    requires: ClassVar[frozenset[str]] = frozenset({"images"})
    quick_params: ClassVar[dict[str, Any]] = {"max_iter": 30}

    def __init__(self, *, algorithm: str = "wavelet-knn", knn_side: int = 16, n_neighbours: int = 5,
                 dup_threshold: float = 0.5, wavelet: str = "db1", level: int = 1,
                 mode: str = "symmetric", coefficients: str = "auto", max_coefficients: int = PAPER_COEFFICIENTS,
                 tau: float = 1e5, n_columns: int | None = None, rrqr: str = "auto", qr: str = "gram",
                 n_clusters: int | float | str | None = None, auto_z: float = 4.0,
                 init: str = "greedy-k-means++", gamma: float = 0.4, ssim_threshold: float = 0.9,
                 ssim_win_size: int = 7, max_iter: int = 100, image_size: int | None = None,
                 backend: str = "auto", return_embedding: bool = True):
        self.algorithm = algorithm
        self.knn_side = knn_side
        self.n_neighbours = n_neighbours
        self.dup_threshold = dup_threshold
        self.wavelet = wavelet
        self.level = level
        self.mode = mode
        self.coefficients = coefficients
        self.max_coefficients = max_coefficients
        self.tau = tau
        self.n_columns = n_columns
        self.rrqr = rrqr
        self.qr = qr
        self.n_clusters = n_clusters
        self.auto_z = auto_z
        self.init = init
        self.gamma = gamma
        self.ssim_threshold = ssim_threshold
        self.ssim_win_size = ssim_win_size
        self.max_iter = max_iter
        self.image_size = image_size
        self.backend = backend
        self.return_embedding = return_embedding

    def fit(self, data: DataView, *, seed: int = 0) -> WaveletSummariser:
        if self.algorithm not in ALGORITHMS:
            raise BenchError(f"wavelet: algorithm must be one of {', '.join(ALGORITHMS)}, got {self.algorithm!r}")
        t0 = time.perf_counter()
        images = _read(data, self.image_size, "dataset")
        if len(images) < 2:
            raise DataError(f"wavelet: need at least 2 images to find similar ones, got {len(images)}")
        labels = data.labels
        t_read = time.perf_counter() - t0
        dup_pairs = None
        if self.algorithm == "wavelet-knn":
            t0 = time.perf_counter()
            level, x = knn_rows(images, self.knn_side, self.backend, data.device)
            t_dwt = time.perf_counter() - t0
            t0 = time.perf_counter()
            found = knn_duplicates(x, n_neighbours=self.n_neighbours, threshold=self.dup_threshold)
            codes = pair_components(len(x), found.pairs)
            red = reduce_clusters(codes, np.zeros(len(x)), labels)
            redundant = np.zeros(len(x), dtype=bool)
            for g in red.redundant_groups:
                redundant[g] = True
            dup_pairs = found.pairs[redundant[found.pairs[:, 0]]] if len(found.pairs) else found.pairs
            stats = {"level_used": float(level), "approximation_side": float(-(-min(images.shape[1:3]) // 2 ** level)),
                     "n_candidate_pairs": float(found.n_candidates),
                     "n_exact_pairs": float(np.sum(found.distance == 0)), "dup_threshold": float(self.dup_threshold),
                     "n_clusters": float(codes.max() + 1), "time_read_s": t_read, "time_dwt_s": t_dwt,
                     "time_search_s": time.perf_counter() - t0}
            stats.update({**_reduction_stats(red, len(x)), "n_duplicate_pairs": float(len(dup_pairs)),
                          "n_decided_pairs": float(len(found.pairs))})
            artefacts = {"duplicate_pairs": found.pairs, "duplicate_relative_distance": found.relative}
            embedding = x.astype(np.float32) if self.return_embedding else None
        elif self.algorithm == "wavelet-kmeans":
            t0 = time.perf_counter()
            level, coefficients = resolve_coefficients(images.shape[1:3], self.wavelet, self.level, self.mode,
                                                       self.coefficients, self.max_coefficients)
            w = coefficient_matrix(images, wavelet=self.wavelet, level=level, mode=self.mode,
                                   coefficients=coefficients, backend=self.backend, device=data.device)
            t_dwt = time.perf_counter() - t0
            n_c: Any = "auto" if self.n_clusters is None else self.n_clusters
            extra: dict[str, float] = {"level_used": float(level),
                                       "approximation_only": float(coefficients == "approximation")}
            if isinstance(n_c, str) and n_c != "auto":
                if n_c != "eigengap":
                    raise BenchError(f"wavelet: n_clusters must be a number, 'auto', 'eigengap' or None, "
                                     f"got {n_c!r}")
                s = ssim_matrix(SSIMStats(images, win_size=self.ssim_win_size, device=data.device))
                n_c = min(eigengap_count(laplacian_eigenvalues(s), self.gamma), len(images) - 1)
                extra["eigengap_n_clusters"] = float(n_c)
            res = algorithm1(w, labels, n_clusters=n_c, auto_z=self.auto_z, tau=self.tau, n_columns=self.n_columns,
                             rrqr=self.rrqr, qr=self.qr, init=self.init, max_iter=self.max_iter, seed=seed,
                             device=data.device)
            del w
            stats = {**res.statistics, **extra, "time_read_s": t_read, "time_dwt_s": t_dwt}
            artefacts: dict[str, Any] = {"kept_columns": res.columns}
            embedding = res.embedding if self.return_embedding else None
            codes, red = res.codes, res.reduction
        else:
            variant = self.algorithm.split("-")[1]
            n_c = "eigengap" if self.n_clusters is None else self.n_clusters
            res2 = algorithm2(images, labels, variant=variant, n_clusters=n_c, gamma=self.gamma,
                              threshold=self.ssim_threshold, win_size=self.ssim_win_size,
                              max_iter=self.max_iter, seed=seed, device=data.device)
            stats = {**res2.statistics, "time_read_s": t_read}
            artefacts = {}
            if res2.eigenvalues is not None:
                artefacts["laplacian_eigenvalues"] = res2.eigenvalues
            embedding = res2.embedding if self.return_embedding else None
            codes, red = res2.codes, res2.reduction
        artefacts.update(self._group_artefacts(data, red, labels))
        stats = {k: float(v) for k, v in stats.items() if np.isfinite(v)}     # records hold finite numbers
        self.summary_ = Summary(codes=np.asarray(codes, dtype=np.int64), embedding=embedding,
                                duplicate_pairs=red.duplicate_pairs() if dup_pairs is None else dup_pairs,
                                statistics=stats, artefacts=artefacts)
        self.reduction_ = red
        return self

    @staticmethod
    def _group_artefacts(data: DataView, red: Reduction, labels: np.ndarray | None) -> dict[str, Any]:
        names = getattr(data.source, "class_names", None)

        def label_of(i: int) -> Any:
            if labels is None:
                return None
            lab = int(labels[i])
            return names[lab] if names is not None and 0 <= lab < len(names) else lab

        redundant_rows = [{"group": g, "kept": grp[0], "discarded": grp[1:], "size": len(grp),
                           "label": label_of(grp[0])} for g, grp in enumerate(red.redundant_groups)]
        influential_rows = [{"group": g, "members": grp, "size": len(grp),
                             "labels": sorted({str(label_of(i)) for i in grp})}
                            for g, grp in enumerate(red.influential_groups)]
        out: dict[str, Any] = {
            "redundant_groups": red.redundant_groups,
            "influential_groups": red.influential_groups,
            "reduced_indices": red.reduced.tolist(),
            "tables": {"wavelet_redundant_groups": redundant_rows,
                       "wavelet_influential_groups": influential_rows},
        }
        ids = _ids(data, red.reduced)
        if ids is not None:
            out["reduced_ids"] = ids
        return out


class NeighbourDraws(Draws):
    """The wavelet score of any relabelling of A ∪ B from one k-NN graph (exact: a node whose ``k``
    neighbours hold none of the wanted side is searched in full). A node's weight is how often a
    draw takes it; a repeated node is never its own neighbour (a repeat is not a near-duplicate)."""

    K = 32

    def __init__(self, blocks, w: np.ndarray):
        self.blocks, self.w = blocks, w
        k = min(self.K, len(w) - 1)
        self.dist, self.idx = nearest_neighbours(w, w, k, exclude_self=True)
        self.floor = 1e-9 * float(np.sqrt(np.mean((w.astype(np.float64) ** 2).sum(1))) + 1e-30)

    def _nearest_in(self, rows: np.ndarray, member: np.ndarray) -> np.ndarray:
        """Distance from each node of ``rows`` to its nearest other node with ``member`` true."""
        hit = member[self.idx[rows]]
        found = hit.any(axis=1)
        out = np.empty(len(rows))
        out[found] = self.dist[rows[found], hit[found].argmax(axis=1)]
        for r in np.flatnonzero(~found):   # beyond the k nearest: search that node's side in full
            cand = np.flatnonzero(member)
            cand = cand[cand != rows[r]]
            if len(cand) == 0:
                raise DataError("wavelet: comparing needs at least 2 distinct images per dataset")
            out[r] = float(np.sqrt(((self.w[cand] - self.w[rows[r]]) ** 2).sum(1, dtype=np.float64)).min())
        return out

    def score(self, w_a: np.ndarray, w_b: np.ndarray) -> float:
        in_a, in_b = np.asarray(w_a) > 0, np.asarray(w_b) > 0
        if in_a.sum() < 2 or in_b.sum() < 2:
            raise DataError(f"wavelet: comparing needs at least 2 distinct images per dataset, got "
                            f"{int(in_a.sum())} and {int(in_b.sum())}")
        ra, rb = np.flatnonzero(in_a), np.flatnonzero(in_b)
        wa, wb = np.asarray(w_a, np.float64)[ra], np.asarray(w_b, np.float64)[rb]

        def mean(d: np.ndarray, weight: np.ndarray) -> float:
            return max(float(weight @ d / weight.sum()), self.floor)

        ba, bb = mean(self._nearest_in(rb, in_a), wb), mean(self._nearest_in(rb, in_b), wb)
        ab, aa = mean(self._nearest_in(ra, in_b), wa), mean(self._nearest_in(ra, in_a), wa)
        return float(0.5 * (np.log(ba / bb) + np.log(ab / aa)))



def _nearest_other(w: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """Each row's distance to its nearest neighbour *from another image* of the same set.

    A bootstrap resample repeats images; a repeat is not a near-duplicate, so rows that share an
    ``origin`` (the view's source index) never count as each other's neighbour. Without repeats
    this is the plain leave-one-out nearest-neighbour distance.
    """
    _, first, inverse = np.unique(origin, return_index=True, return_inverse=True)
    if len(first) < 2:
        raise DataError(f"wavelet: comparing needs at least 2 distinct images per dataset, got {len(first)}")
    d, _ = nearest_neighbours(w[first], w[first], 1, exclude_self=True)
    return d[inverse.ravel()]


class WaveletComparator(Comparator):
    """Two datasets compared in wavelet space: nearest-neighbour distances, and which images are
    near-duplicates across A and B (train/test leakage) and within each.

    score = ½ [log(d̄(B→A) / d̄(B→B∖b)) + log(d̄(A→B) / d̄(A→A∖a))], d̄ = mean Euclidean distance
    to the nearest neighbour: 0 for two samples of one distribution, larger when apart.

    ``duplicates="knn"`` (the default) decides duplicates as the summariser's wavelet-knn does, on
    A ∪ B: Haar approximation band at <= ``knn_side`` px, rows normalised, ``n_neighbours``
    candidates, a pair is a duplicate when its exact distance is 0 or below ``dup_threshold``
    times its typical neighbour distance — perturbed copies (JPEG, a 2-px shift, brightness) are
    found, not only exact ones. ``n_neighbours`` is 10 here (5 in the summariser): an image of A
    leaked into B several times over forms a group, and the typical distance, a median over the
    neighbours, must still reach past the group (at 5, 2-px shifts of an image also copied exactly
    and as JPEG were all missed). ``duplicates="ssim"`` is the paper's §5.2.2 across two sets: SSIM
    >= ``ssim_threshold`` with the most similar image of the other set, scored on the
    ``n_candidates`` nearest wavelet neighbours (every pair with ``n_candidates=None``); it finds
    only near-exact copies on real photographs.
    """

    name: ClassVar[str] = "wavelet"
    version: ClassVar[str] = "2"   # 2: duplicates across / within sets by wavelet-knn (SSIM kept as "ssim")
    requires: ClassVar[frozenset[str]] = frozenset({"images"})
    larger_is_more_different: ClassVar[bool] = True
    quick_params: ClassVar[dict[str, Any]] = {"n_candidates": 1}

    def __init__(self, *, wavelet: str = "db1", level: int = 1, mode: str = "symmetric",
                 coefficients: str = "auto", max_coefficients: int = PAPER_COEFFICIENTS,
                 image_size: int | None = None, duplicates: str = "knn", knn_side: int = 16,
                 n_neighbours: int = 10, dup_threshold: float = 0.5, ssim_threshold: float = 0.9,
                 n_candidates: int | None = 5, ssim_win_size: int = 7, backend: str = "auto"):
        self.wavelet = wavelet
        self.level = level
        self.mode = mode
        self.coefficients = coefficients
        self.max_coefficients = max_coefficients
        self.image_size = image_size
        self.duplicates = duplicates
        self.knn_side = knn_side
        self.n_neighbours = n_neighbours
        self.dup_threshold = dup_threshold
        self.ssim_threshold = ssim_threshold
        self.n_candidates = n_candidates
        self.ssim_win_size = ssim_win_size
        self.backend = backend

    def _nearest(self, a: DataView, b: DataView) -> dict:
        """The score from nearest-neighbour distances in wavelet space, and what it was made of."""
        if self.n_candidates is not None and (not isinstance(self.n_candidates, (int, np.integer))
                                              or self.n_candidates < 1):
            raise BenchError(f"wavelet: n_candidates must be a positive integer or None, got {self.n_candidates!r}")
        ia = _read(a, self.image_size, "dataset")
        ib = _read(b, self.image_size, "dataset", size=ia.shape[1:3])
        if len(ia) < 2 or len(ib) < 2:
            raise DataError(f"wavelet: comparing needs at least 2 images per dataset, got {len(ia)} and {len(ib)}")
        level, coefficients = resolve_coefficients(ia.shape[1:3], self.wavelet, self.level, self.mode,
                                                   self.coefficients, self.max_coefficients)
        kw = dict(wavelet=self.wavelet, level=level, mode=self.mode, coefficients=coefficients,
                  backend=self.backend, device=a.device, dtype=np.float32)
        wa, wb = coefficient_matrix(ia, **kw), coefficient_matrix(ib, **kw)
        centre = (wa.mean(axis=0, dtype=np.float64) + wb.mean(axis=0, dtype=np.float64)) / 2
        wa -= centre.astype(np.float32)
        wb -= centre.astype(np.float32)
        d_ba, i_ba = nearest_neighbours(wb, wa, 1)
        d_ab, i_ab = nearest_neighbours(wa, wb, 1)
        d_aa, d_bb = _nearest_other(wa, a.indices), _nearest_other(wb, b.indices)
        floor = 1e-9 * float(np.sqrt(np.mean(np.concatenate([(wa * wa).sum(1), (wb * wb).sum(1)]))) + 1e-30)
        means = {k: max(float(v.mean()), floor) for k, v in
                 (("ba", d_ba), ("ab", d_ab), ("aa", d_aa), ("bb", d_bb))}
        score = 0.5 * (np.log(means["ba"] / means["bb"]) + np.log(means["ab"] / means["aa"]))
        return {"ia": ia, "ib": ib, "wa": wa, "wb": wb, "d_ba": d_ba, "i_ba": i_ba, "d_ab": d_ab, "i_ab": i_ab,
                "means": means, "score": float(score)}

    def score(self, a: DataView, b: DataView, *, seed: int = 0) -> float:
        """The score alone (no near-duplicate analysis): what a null draw or a bootstrap resample needs."""
        return self._nearest(a, b)["score"]

    def draws(self, a: DataView, b: DataView, blocks, *, seed: int = 0) -> NeighbourDraws:
        """The k-NN graph of A ∪ B in wavelet space, built once (one image per block); a draw relabels
        its nodes and reads each one's nearest neighbour of a side off its neighbour list."""
        from bench.statistics import make_blocks

        ia = _read(a, self.image_size, "dataset")
        ib = _read(b, self.image_size, "dataset", size=ia.shape[1:3])
        level, coefficients = resolve_coefficients(ia.shape[1:3], self.wavelet, self.level, self.mode,
                                                   self.coefficients, self.max_coefficients)
        w = coefficient_matrix(np.concatenate([ia, ib]), wavelet=self.wavelet, level=level, mode=self.mode,
                               coefficients=coefficients, backend=self.backend, device=a.device, dtype=np.float32)
        w -= w.mean(axis=0, dtype=np.float64).astype(np.float32)
        return NeighbourDraws(make_blocks(len(ia), len(ib), 1, seed), w)

    def compare(self, a: DataView, b: DataView, *, seed: int = 0) -> Comparison:
        if self.duplicates not in DUPLICATE_MODES:
            raise BenchError(f"wavelet: duplicates must be one of {', '.join(DUPLICATE_MODES)}, "
                             f"got {self.duplicates!r}")
        nn = self._nearest(a, b)
        ia, ib, means, score = nn["ia"], nn["ib"], nn["means"], nn["score"]
        d_ba, i_ba, d_ab, i_ab = nn["d_ba"], nn["i_ba"], nn["d_ab"], nn["i_ab"]
        detail: dict[str, Any] = {
            "nearest_a_for_b": i_ba[:, 0], "distance_b_to_a": d_ba[:, 0],
            "nearest_b_for_a": i_ab[:, 0], "distance_a_to_b": d_ab[:, 0],
            # the images of B farthest from anything in A, in wavelet space
            "least_similar_b": np.argsort(-d_ba[:, 0], kind="stable")[:20],
        }
        found = self._duplicates_knn(ia, ib, a.device) if self.duplicates == "knn" else \
            self._duplicates_ssim(ia, ib, nn["wa"], nn["wb"], a.device)
        detail.update(found)
        cross = detail["near_duplicate_pairs"]
        statistics = {
            "near_duplicate_rate_b_in_a": float(len(np.unique(cross[:, 1]))) / len(ib),
            "near_duplicate_rate_a_in_b": float(len(np.unique(cross[:, 0]))) / len(ia),
            "n_duplicate_pairs_across": float(len(cross)),
            "n_duplicate_pairs_within_a": float(len(detail["duplicate_pairs_within_a"])),
            "n_duplicate_pairs_within_b": float(len(detail["duplicate_pairs_within_b"])),
            "mean_nn_distance_b_to_a": means["ba"], "mean_nn_distance_a_to_b": means["ab"],
            "mean_nn_distance_within_a": means["aa"], "mean_nn_distance_within_b": means["bb"],
            "n_a": float(len(ia)), "n_b": float(len(ib)),
        }
        return Comparison(score=float(score), detail=detail, statistics=statistics,
                          findings=wavelet_findings(detail, self._rule()))

    def _rule(self) -> str:
        """How a pair was decided, in a finding's title."""
        if self.duplicates == "knn":
            return f"wavelet k-NN, distance < {self.dup_threshold:g} × typical"
        return f"SSIM ≥ {self.ssim_threshold:g}"

    def _duplicates_knn(self, ia: np.ndarray, ib: np.ndarray, device) -> dict[str, np.ndarray]:
        """wavelet-knn on A ∪ B, its pairs split into across (a, b), within A and within B."""
        _, x = knn_rows(np.concatenate([ia, ib]), self.knn_side, self.backend, device)
        found = knn_duplicates(x, n_neighbours=self.n_neighbours, threshold=self.dup_threshold)
        n_a = len(ia)
        pairs, rel = found.pairs.reshape(-1, 2), found.relative
        in_a = pairs < n_a
        across = in_a[:, 0] & ~in_a[:, 1]          # pairs are (i < j), so an across pair is (a, b)
        within_a, within_b = in_a.all(axis=1), ~in_a.any(axis=1)
        order = np.argsort(rel[across], kind="stable")
        return {"near_duplicate_pairs": (pairs[across][order] - [0, n_a]).astype(np.int64),
                "pair_relative_distance": rel[across][order],
                "duplicate_pairs_within_a": pairs[within_a].astype(np.int64),
                "duplicate_pairs_within_b": (pairs[within_b] - n_a).astype(np.int64)}

    def _duplicates_ssim(self, ia, ib, wa, wb, device) -> dict[str, np.ndarray]:
        """The paper's train/test analysis both ways (SSIM ≥ threshold with the most similar image)."""
        kw = dict(threshold=self.ssim_threshold, n_candidates=self.n_candidates, win_size=self.ssim_win_size,
                  device=device)
        b_in_a = train_test_analysis(ia, ib, w_train=wa, w_test=wb, **kw)
        a_in_b = train_test_analysis(ib, ia, w_train=wb, w_test=wa, **kw)
        near_b = np.flatnonzero(b_in_a["near_identical"])
        near_a = np.flatnonzero(a_in_b["near_identical"])
        pairs = {(int(b_in_a["nearest"][j]), int(j)) for j in near_b} | \
                {(int(i), int(a_in_b["nearest"][i])) for i in near_a}
        pairs_arr = np.asarray(sorted(pairs), dtype=np.int64).reshape(-1, 2)
        sim = np.asarray([max(b_in_a["similarity"][j] if b_in_a["nearest"][j] == i else -1,
                              a_in_b["similarity"][i] if a_in_b["nearest"][i] == j else -1)
                          for i, j in pairs_arr], dtype=np.float64)
        order = np.argsort(-sim, kind="stable")
        empty = np.zeros((0, 2), dtype=np.int64)
        return {"near_duplicate_pairs": pairs_arr[order], "pair_ssim": sim[order],
                "ssim_b_to_a": b_in_a["similarity"], "ssim_a_to_b": a_in_b["similarity"],
                "duplicate_pairs_within_a": empty, "duplicate_pairs_within_b": empty}
