"""Yousefzadeh's two algorithms and the train↔test analysis, on arrays (no harness types).

Algorithm 1: wavelet coefficients → drop constant columns → pivoted QR + tau rule (only if
n > d) → k-means with n_c clusters → single-label clusters are *redundant* (keep the image
closest to the centre), mixed-label clusters are *influential*. Algorithm 2: SSIM matrix →
eigen-gaps of its Laplacian choose n_c → spectral clustering → the same reduction; or the
O(n²) threshold scan. See ``shared/reference/wavelet.md`` for the facts followed here.
"""

from __future__ import annotations

import time
import warnings
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import faiss
import numpy as np
import scipy.sparse as sp
import torch
from PIL import Image
from scipy.sparse.csgraph import connected_components

from bench.baselines import pair_components  # noqa: F401  (one implementation; wavelet re-exports it)
from bench.errors import BenchError, DataError

from .algorithm2 import eigengap_count, laplacian_eigenvalues, spectral_embedding
from .dwt import resolve_coefficients, wavedec2_pywt, wavedec2_torch
from .kmeans import KMeansResult, kmeans
from .rrqr import QR_METHODS, select_columns
from .ssim import SSIMStats, ssim_matrix, threshold_groups

# --------------------------------------------------------------------------- images


def stack_images(batches: Iterable[np.ndarray], *, size: tuple[int, int] | None = None,
                 what: str = "images") -> np.ndarray:
    """Collect (B, H, W, 3) uint8 batches into one array.

    Images of another size than ``size`` (default: the most common size) are resized
    bilinearly, with one warning that says how many.
    """
    imgs: list[np.ndarray] = []
    for batch in batches:
        arr = np.asarray(batch)
        if arr.ndim == 3:
            arr = arr[..., None]
        if arr.ndim != 4:
            raise DataError(f"wavelet: {what} must be (N, H, W, C) arrays, got a batch of shape {arr.shape}")
        imgs.extend(arr)
    if not imgs:
        raise DataError(f"wavelet: no {what} to analyse (empty input)")
    shapes = Counter(im.shape[:2] for im in imgs)
    target = tuple(size) if size is not None else shapes.most_common(1)[0][0]
    odd = sum(c for s, c in shapes.items() if s != target)
    if odd:
        warnings.warn(f"wavelet: {odd} of {len(imgs)} {what} are not {target[0]}x{target[1]}; resized "
                      "bilinearly (set image_size to choose the size)", stacklevel=2)
    out = np.empty((len(imgs), *target, 3), dtype=np.uint8)
    for i, raw in enumerate(imgs):
        im = np.repeat(raw, 3, axis=2) if raw.shape[2] == 1 else raw[..., :3]
        if im.shape[:2] != target:
            im = np.asarray(Image.fromarray(np.ascontiguousarray(im, dtype=np.uint8)).resize(
                (target[1], target[0]), Image.BILINEAR))
        out[i] = im
    return out


def coefficient_matrix(images: np.ndarray, *, wavelet: str = "db1", level: int = 1, mode: str = "symmetric",
                       coefficients: str = "all", backend: str = "auto", device: torch.device | str = "cpu",
                       batch: int = 1024, dtype: np.dtype = np.float64) -> np.ndarray:
    """W (n × d): one row of wavelet coefficients per image (raw 0..255 intensities, as
    MATLAB's ``wavedec2`` on uint8 images). ``backend``: "pywt", "torch" or "auto" (torch on
    CUDA, PyWavelets otherwise). ``coefficients="auto"``: see :func:`resolve_coefficients`."""
    level, coefficients = resolve_coefficients(images.shape[1:3], wavelet, level, mode, coefficients)
    dev = torch.device(device)
    use_torch = backend == "torch" or (backend == "auto" and dev.type == "cuda")
    if backend not in ("auto", "torch", "pywt"):
        raise BenchError(f"wavelet: backend must be 'auto', 'torch' or 'pywt', got {backend!r}")
    out = None
    for s in range(0, len(images), batch):
        part = images[s:s + batch]
        if use_torch:
            rows = wavedec2_torch(part, wavelet, level, mode, coefficients, device=dev).cpu().numpy()
        else:
            rows = wavedec2_pywt(part, wavelet, level, mode, coefficients)
        if out is None:
            out = np.empty((len(images), rows.shape[1]), dtype=dtype)
        out[s:s + len(part)] = rows
    return out


def auto_n_clusters(w_hat: np.ndarray, z: float = 4.0) -> tuple[int, dict[str, float]]:
    """Adaptive n_c (the paper leaves n_c to "an adaptive method"): the number of groups of
    near-identical images, so that k-means merges only those.

    An image is near-identical to its nearest neighbour when that distance is 0 or a low
    outlier of the nearest-neighbour distances: log δ < median(log δ) - z · 1.4826 · MAD(log δ).
    n_c = number of connected components of the graph of those (image, neighbour) links.
    z = 4 was chosen on synth-passnet's planted pairs (best F1 over z = 3 … 5; z = 3 also
    links ~2 % of ordinary nearest neighbours there); it is a parameter, not a paper value.
    """
    if not z > 0:
        raise BenchError(f"wavelet: auto_z must be > 0, got {z!r}")
    n = len(w_hat)
    centred = w_hat - w_hat.mean(axis=0, dtype=np.float64).astype(w_hat.dtype)   # less float32 cancellation
    dist, nn = nearest_neighbours(centred, centred, 1, exclude_self=True)
    del centred
    dist, nn = dist[:, 0], nn[:, 0]
    pos = dist[dist > 0]
    if len(pos) >= 2:
        logd = np.log(pos)
        med = float(np.median(logd))
        spread = 1.4826 * float(np.median(np.abs(logd - med)))
        cut = float(np.exp(med - z * spread))
    else:
        med, cut = float("nan"), 0.0
    linked = (dist == 0) | (dist < cut)
    graph = sp.coo_matrix((np.ones(int(linked.sum())), (np.flatnonzero(linked), nn[linked])), shape=(n, n))
    n_c = int(connected_components(graph, directed=False)[0])
    return n_c, {"auto_distance_cut": cut, "auto_median_nn_distance": float(np.exp(med)) if med == med else 0.0,
                 "auto_near_identical_images": float(linked.sum()), "auto_z": float(z)}


def resolve_n_clusters(n_clusters: Any, n: int) -> int:
    """n_c given as an absolute int or as a fraction (float in (0, 1]) of N; must be < N."""
    if n < 2:
        raise DataError(f"wavelet: need at least 2 images to find similar ones, got {n}")
    if isinstance(n_clusters, bool) or not isinstance(n_clusters, (int, float, np.integer, np.floating)):
        raise BenchError(f"wavelet: n_clusters must be an int (absolute), a float in (0, 1] (fraction of N) "
                         f"or 'eigengap', got {n_clusters!r}")
    if isinstance(n_clusters, (float, np.floating)):
        if not 0 < n_clusters <= 1:
            raise BenchError(f"wavelet: a fractional n_clusters must lie in (0, 1], got {n_clusters}")
        k = max(1, round(float(n_clusters) * n))
    else:
        k = int(n_clusters)
    if k < 1:
        raise BenchError(f"wavelet: n_clusters must be at least 1, got {k}")
    if k >= n:
        raise DataError(f"wavelet: n_clusters={k} must be smaller than the number of images N={n} "
                        "(n_c >= N leaves every image alone); choose fewer clusters")
    return k


# --------------------------------------------------------------------------- reduction


@dataclass
class Reduction:
    """Algorithm 1 lines 11-16 (Algorithm 2 lines 11-20)."""

    redundant_groups: list[list[int]]     # kept image first, then the discarded ones
    influential_groups: list[list[int]]   # mixed-label clusters, kept whole
    reduced: np.ndarray                   # indices of the reduced dataset, ascending

    def duplicate_pairs(self) -> np.ndarray:
        """Every pair inside a redundant group, (i < j), lexicographically sorted."""
        pairs = [tuple(sorted(p)) for g in self.redundant_groups for p in combinations(g, 2)]
        return np.asarray(sorted(pairs), dtype=np.int64).reshape(-1, 2)


def reduce_clusters(codes: np.ndarray, centre_distance: np.ndarray, labels: np.ndarray | None) -> Reduction:
    """Single-label clusters with >1 image keep the one closest to the centre (ties: lowest
    index); mixed-label clusters are influential and kept whole. Without labels every
    multi-image cluster counts as single-label; a negative label (unlabelled image, e.g. PASS
    inside passnet) is compatible with any label."""
    codes = np.asarray(codes)
    n = len(codes)
    order = np.lexsort((np.arange(n), centre_distance, codes))
    bounds = np.flatnonzero(np.diff(codes[order])) + 1
    redundant, influential = [], []
    dropped = np.zeros(n, dtype=bool)
    for members in np.split(order, bounds):
        if len(members) < 2:
            continue
        known = None if labels is None else labels[members][labels[members] >= 0]
        if known is None or len(np.unique(known)) <= 1:
            keep, rest = int(members[0]), sorted(int(i) for i in members[1:])
            redundant.append([keep, *rest])
            dropped[rest] = True
        else:
            influential.append(sorted(int(i) for i in members))
    redundant.sort(key=lambda g: g[0])
    influential.sort(key=lambda g: g[0])
    return Reduction(redundant, influential, np.flatnonzero(~dropped))


# --------------------------------------------------------------------------- algorithm 1


@dataclass
class Algorithm1Result:
    codes: np.ndarray
    reduction: Reduction
    columns: np.ndarray          # kept columns of W (pivot order)
    embedding: np.ndarray        # (n, m) float32 kept coefficients
    statistics: dict[str, float] = field(default_factory=dict)


def algorithm1(w: np.ndarray, labels: np.ndarray | None, *, n_clusters: Any = "auto", auto_z: float = 4.0,
               tau: float = 1e5, n_columns: int | None = None, rrqr: str = "auto", qr: str = "gram",
               init: str = "greedy-k-means++", max_iter: int = 100, seed: int = 0,
               device: torch.device | str = "cpu") -> Algorithm1Result:
    """Algorithm 1 on a coefficient matrix W (n × d). ``n_clusters``: int, fraction of N, or
    "auto" (:func:`auto_n_clusters`, after the column selection)."""
    n, d = w.shape
    if n < 2:
        raise DataError(f"wavelet: need at least 2 images to find similar ones, got {n}")
    k = None if isinstance(n_clusters, str) and n_clusters == "auto" else resolve_n_clusters(n_clusters, n)
    if qr not in QR_METHODS:
        raise BenchError(f"wavelet: qr must be one of {QR_METHODS}, got {qr!r}")
    if not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
        raise BenchError(f"wavelet: max_iter must be a positive integer, got {max_iter!r}")
    t0 = time.perf_counter()
    sel = select_columns(w, tau=tau, n_columns=n_columns, rrqr=rrqr, qr=qr)
    t_qr = time.perf_counter() - t0
    if sel.m == 0:                       # all images identical: k-means warns and forms one cluster
        w_hat = np.zeros((n, 1), dtype=np.float32)
    else:
        w_hat = np.ascontiguousarray(w[:, sel.columns], dtype=np.float32)
    t0 = time.perf_counter()
    auto: dict[str, float] = {}
    if k is None:
        k, auto = auto_n_clusters(w_hat, auto_z)
    if k >= n:                           # "auto" found no near-identical images: all singletons
        km = KMeansResult(np.arange(n), w_hat.copy(), np.zeros(n), 0, True, 0.0, n, "none")
    else:
        km = kmeans(w_hat, k, seed=seed, max_iter=max_iter, init=init, device=device)
    t_km = time.perf_counter() - t0
    red = reduce_clusters(km.labels, km.distances, labels)
    stats = {**auto,
        "n_images": float(n), "n_coefficients": float(d), "n_constant_columns": float(sel.n_constant),
        "rrqr_applied": float(sel.rrqr_applied), "m_columns": float(sel.m), "cond_kept": sel.cond,
        "n_cond_evaluations": float(sel.n_cond_evaluations), "tau": float(tau),
        "n_clusters": float(km.k), "n_clusters_requested": float(k),
        "kmeans_iterations": float(km.n_iter), "kmeans_converged": float(km.converged),
        "kmeans_greedy_init": float(km.init == "greedy-k-means++"),
        "kmeans_objective": km.objective, "time_qr_s": t_qr, "time_kmeans_s": t_km,
    }
    stats.update(_reduction_stats(red, n))
    return Algorithm1Result(km.labels, red, sel.columns, w_hat, stats)


def _reduction_stats(red: Reduction, n: int) -> dict[str, float]:
    dropped = n - len(red.reduced)
    return {
        "n_redundant_groups": float(len(red.redundant_groups)),
        "n_influential_groups": float(len(red.influential_groups)),
        "n_influential_images": float(sum(len(g) for g in red.influential_groups)),
        "n_discarded": float(dropped), "reduced_size": float(len(red.reduced)),
        "reduction_ratio": dropped / n, "n_duplicate_pairs": float(sum(len(g) * (len(g) - 1) // 2
                                                                       for g in red.redundant_groups)),
    }


# --------------------------------------------------------------------------- algorithm 2


@dataclass
class Algorithm2Result:
    codes: np.ndarray
    reduction: Reduction
    embedding: np.ndarray | None
    similarity: np.ndarray | None
    eigenvalues: np.ndarray | None
    statistics: dict[str, float] = field(default_factory=dict)


def ssim_summary(s: np.ndarray) -> dict[str, float]:
    """Paper §5.2.1 numbers: mean/std of S off the diagonal, the most dissimilar pair."""
    iu = np.triu_indices(len(s), 1)
    vals = s[iu]
    if len(vals) == 0:
        return {}
    lo = int(np.argmin(vals))
    return {"ssim_mean": float(vals.mean()), "ssim_std": float(vals.std()), "ssim_min": float(vals[lo]),
            "ssim_min_i": float(iu[0][lo]), "ssim_min_j": float(iu[1][lo]),
            "n_identical_pairs": float(np.sum(vals >= 1.0 - 1e-9))}


def algorithm2(images: np.ndarray, labels: np.ndarray | None, *, variant: str = "spectral",
               n_clusters: Any = "eigengap", gamma: float = 0.4, threshold: float = 0.9, win_size: int = 7,
               max_iter: int = 100, seed: int = 0, device: torch.device | str = "cpu") -> Algorithm2Result:
    """Algorithm 2 on images: ``variant="spectral"`` (SSIM matrix, eigen-gaps, spectral
    clustering; O(n²) SSIM + O(n³) eigenvectors) or ``"threshold"`` (the O(n²) scan that
    groups images with SSIM > threshold; S is never stored)."""
    n = len(images)
    if n < 2:
        raise DataError(f"wavelet: need at least 2 images to find similar ones, got {n}")
    stats = SSIMStats(images, win_size=win_size, device=device)
    t0 = time.perf_counter()
    if variant == "threshold":
        if not -1 <= threshold <= 1:
            raise BenchError(f"wavelet: an SSIM threshold must lie in [-1, 1], got {threshold!r}")
        leader = threshold_groups(stats, threshold)
        codes = np.unique(leader, return_inverse=True)[1].astype(np.int64)
        dist = (leader != np.arange(n)).astype(np.float64)       # the leader is kept
        red = reduce_clusters(codes, dist, labels)
        st = {"n_clusters": float(codes.max() + 1), "ssim_threshold": float(threshold),
              "time_ssim_s": time.perf_counter() - t0}
        st.update(_reduction_stats(red, n))
        return Algorithm2Result(codes, red, None, None, None, st)
    if variant != "spectral":
        raise BenchError(f"wavelet: Algorithm 2 variant must be 'spectral' or 'threshold', got {variant!r}")
    s = ssim_matrix(stats)
    t_ssim = time.perf_counter() - t0
    eig = laplacian_eigenvalues(s)
    if isinstance(n_clusters, str):
        if n_clusters != "eigengap":
            raise BenchError(f"wavelet: n_clusters must be a number or 'eigengap', got {n_clusters!r}")
        k = min(eigengap_count(eig, gamma), n - 1)
    else:
        k = resolve_n_clusters(n_clusters, n)
    emb = spectral_embedding(s, k)
    km = kmeans(emb, k, seed=seed, max_iter=max_iter, device=device)
    red = reduce_clusters(km.labels, km.distances, labels)
    st = {"n_clusters": float(km.k), "eigengap_gamma": float(gamma), "time_ssim_s": t_ssim,
          "kmeans_iterations": float(km.n_iter), **ssim_summary(s)}
    st.update(_reduction_stats(red, n))
    return Algorithm2Result(km.labels, red, emb.astype(np.float32), s, eig, st)


# --------------------------------------------------------------------------- train ↔ test


def nearest_neighbours(query: np.ndarray, base: np.ndarray, k: int, *,
                       exclude_self: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Exact Euclidean k-NN (faiss flat L2): (distances, indices), each (nq, k).

    With ``exclude_self`` (query is base) row i never returns i itself.
    """
    base32 = np.ascontiguousarray(base, dtype=np.float32)
    q32 = np.ascontiguousarray(query, dtype=np.float32)
    index = faiss.IndexFlatL2(base32.shape[1])
    index.add(base32)
    kk = min(k + int(exclude_self), len(base32))
    d2, idx = index.search(q32, kk)
    if exclude_self:
        rows = np.arange(len(q32))[:, None]
        keep = idx != rows
        # drop the self hit (or the last column if self was tied out of the list)
        first_self = np.where(keep.all(axis=1), kk - 1, np.argmin(keep, axis=1))
        mask = np.ones_like(keep)
        mask[np.arange(len(q32)), first_self] = False
        d2 = d2[mask].reshape(len(q32), kk - 1)
        idx = idx[mask].reshape(len(q32), kk - 1)
    return _exact_distances(q32, base32, idx.astype(np.int64))


def _exact_distances(query: np.ndarray, base: np.ndarray, idx: np.ndarray,
                     chunk_bytes: int = 2**26) -> tuple[np.ndarray, np.ndarray]:
    """The neighbours' distances recomputed in float64 and each row re-sorted: faiss's float32
    ‖q‖² + ‖b‖² − 2 q·b turns an exact copy's 0 into rounding noise (~√ε ‖x‖), which moved the
    score with how the rows happened to be centred or blocked."""
    n, k = idx.shape
    out = np.empty((n, k))
    rows = max(1, chunk_bytes // (8 * max(1, k * query.shape[1])))
    for s in range(0, n, rows):
        q = query[s:s + rows].astype(np.float64)
        diff = base[idx[s:s + rows]].astype(np.float64) - q[:, None, :]
        out[s:s + rows] = np.sqrt(np.einsum("nkd,nkd->nk", diff, diff))
    order = np.argsort(out, axis=1, kind="stable")
    return np.take_along_axis(out, order, axis=1), np.take_along_axis(idx, order, axis=1)


def train_test_analysis(train: np.ndarray, test: np.ndarray, *, threshold: float = 0.9,
                        n_candidates: int | None = None, w_train: np.ndarray | None = None,
                        w_test: np.ndarray | None = None, win_size: int = 7,
                        device: torch.device | str = "cpu") -> dict[str, Any]:
    """For each test image its most similar training image by SSIM, and the share of test
    images with a near-identical one (SSIM >= threshold; paper §5.2.2).

    ``n_candidates=None`` scores every (test, train) pair, as the paper; an integer scores
    only the nearest training images in wavelet space (``w_train``/``w_test`` rows).
    """
    if len(train) == 0 or len(test) == 0:
        raise DataError("wavelet: train/test analysis needs at least one image on each side")
    st_train = SSIMStats(train, win_size=win_size, device=device)
    st_test = SSIMStats(test, win_size=win_size, device=device)
    if n_candidates is None:
        s = ssim_matrix(st_test, st_train)
        best = np.argmax(s, axis=1)
        sim = s[np.arange(len(test)), best]
    else:
        if w_train is None or w_test is None:
            raise BenchError("wavelet: candidate mode needs the wavelet rows of both sets")
        _, cand = nearest_neighbours(w_test, w_train, int(n_candidates))
        qi = np.repeat(np.arange(len(test)), cand.shape[1])
        vals = st_test.pairs(st_train, qi, cand.ravel()).reshape(cand.shape)
        pick = np.argmax(vals, axis=1)
        best = cand[np.arange(len(test)), pick]
        sim = vals[np.arange(len(test)), pick]
    near = sim >= threshold
    return {"nearest": best.astype(np.int64), "similarity": sim, "near_identical": near,
            "share": float(near.mean()), "least_similar": np.argsort(sim, kind="stable")}


# --------------------------------------------------------------------------- nearest-neighbour mode


def approximation_level(shape: tuple[int, int], side: int) -> int:
    """The Haar level whose approximation band is at most ``side`` pixels on the shorter side
    (at least 1): 64 px → 2 and 128 px → 3 for ``side=16``."""
    if not isinstance(side, (int, np.integer)) or side < 2:
        raise BenchError(f"wavelet: knn_side must be an integer >= 2, got {side!r}")
    level, short = 1, min(shape) / 2
    while short > side:
        short /= 2
        level += 1
    return level


def normalised_rows(w: np.ndarray) -> np.ndarray:
    """Rows centred and scaled to unit length (float64): a brightness gain and offset change nothing;
    a constant row stays zero."""
    x = np.asarray(w, dtype=np.float64)
    x = x - x.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


@dataclass
class KnnDuplicates:
    pairs: np.ndarray            # (P, 2) decided pairs, i < j, sorted
    distance: np.ndarray         # (P,) exact float64 distance of each pair
    relative: np.ndarray         # (P,) distance / the closer image's typical neighbour distance
    n_candidates: int            # distinct candidate pairs examined
    typical: np.ndarray          # (n,) each image's typical (median non-zero k-NN) distance


def knn_duplicates(x: np.ndarray, *, n_neighbours: int = 5, threshold: float = 0.5) -> KnnDuplicates:
    """Near-duplicate pairs among the rows of ``x`` (float64, e.g. :func:`normalised_rows`).

    Candidates: each row's ``n_neighbours`` nearest rows (faiss flat L2). Decision per pair, not
    one global cut: the pair's exact float64 distance d(i, j) (identical rows: exactly 0) relative
    to r = min(r_i, r_j), r_i = the median of row i's non-zero neighbour distances (how far its
    ordinary neighbours are, so dense and sparse regions of the space get their own scale); a
    pair is a duplicate when d = 0 or d < ``threshold`` · r.
    """
    n = len(x)
    if not isinstance(n_neighbours, (int, np.integer)) or n_neighbours < 1:
        raise BenchError(f"wavelet: n_neighbours must be a positive integer, got {n_neighbours!r}")
    if not threshold > 0:
        raise BenchError(f"wavelet: dup_threshold must be > 0, got {threshold!r}")
    k = min(int(n_neighbours), n - 1)
    dist, nn = nearest_neighbours(x, x, k, exclude_self=True)
    masked = np.where(dist > 0, dist, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)     # a row whose neighbours are all copies
        typical = np.nanmedian(masked, axis=1)
    typical = np.where(np.isfinite(typical), typical, np.inf)
    i = np.repeat(np.arange(n), k)
    j = nn.ravel()
    lo, hi = np.minimum(i, j), np.maximum(i, j)
    cand = np.unique(np.stack([lo, hi], axis=1)[lo != hi], axis=0)
    exact = np.sqrt(((x[cand[:, 0]] - x[cand[:, 1]]) ** 2).sum(axis=1))
    scale = np.minimum(typical[cand[:, 0]], typical[cand[:, 1]])
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(exact == 0, 0.0, exact / scale)
    keep = (exact == 0) | (rel < threshold)
    return KnnDuplicates(cand[keep], exact[keep], rel[keep], len(cand), typical)
