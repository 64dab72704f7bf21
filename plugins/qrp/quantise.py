"""The quantiser μ_K of QRP: standardised features → faiss k-means cluster ids.

Paper, App. C: standardise to zero mean / unit std, then faiss k-means for 100 iterations,
best of 5 runs, K = 1000. faiss trains on at most ``max_points_per_centroid``·K points (256k at
K = 1000, the faiss default that matches the paper's "256k vectors" timing) and then assigns
every point to its nearest centroid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bench.api import check_k
from bench.errors import BenchError, DataError

K_RULES = ("fixed", "scale")


def standardise(x: np.ndarray) -> np.ndarray:
    """Zero mean, unit std per dimension (float32); constant dimensions stay 0 instead of NaN."""
    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    std[std == 0] = 1.0
    return np.ascontiguousarray(((x - mean) / std).astype(np.float32))


def resolve_k(n_clusters: int, n: int, *, k_rule: str = "fixed", min_cluster_size: int = 50) -> int:
    """The K actually used on N images: the small-dataset rule.

    ``fixed`` (paper): K = ``n_clusters``; K ≥ N is an error (with K = N every image is its own
    cluster and nothing is left to probe). ``scale``: K = min(n_clusters, max(2, N // min_cluster_size)),
    so an average cluster keeps ``min_cluster_size`` images (50: ≥ 10 in the 20 % test split,
    which keeps the small-sample upward bias of NMI in check); the paper's K = 1000 is kept
    from N = 50,000 images on. Needs N ≥ 2K (at least two images per cluster on average).
    """
    if k_rule not in K_RULES:
        raise BenchError(f"qrp: k_rule must be one of {', '.join(K_RULES)}, got {k_rule!r}")
    if isinstance(n_clusters, bool) or not isinstance(n_clusters, (int, np.integer)):
        raise BenchError(f"qrp: n_clusters must be an integer, got {n_clusters!r}")
    if n < 2:
        raise DataError(f"qrp: needs at least 2 images, got N={n}")
    k = int(n_clusters)
    if k_rule == "scale":
        if isinstance(min_cluster_size, bool) or not isinstance(min_cluster_size, (int, np.integer)) \
                or min_cluster_size < 2:
            raise BenchError(f"qrp: min_cluster_size must be an integer >= 2, got {min_cluster_size!r}")
        if k < 1:
            check_k(k, n, method="qrp")  # the standard one-line "K must be at least 1"
        k = min(k, max(2, n // int(min_cluster_size)))
        if 2 * k > n:
            raise DataError(f"qrp: N={n} images are too few for K={k} clusters of 2+ images; need N >= {2 * k}")
        return k
    check_k(k, n, method="qrp")
    if k >= n:
        raise DataError(f"qrp: K={k} is not smaller than the number of images N={n}; choose K < {n} "
                        "or k_rule='scale' (K = N // min_cluster_size)")
    return k


#: N·K·D below which k-means runs on one OpenMP thread
SMALL_KMEANS_WORK = 10_000_000


@dataclass
class KMeansResult:
    codes: np.ndarray        # (N,) int64 cluster id of every point
    centroids: np.ndarray    # (K, D) float32
    inertia: float           # Σ squared distance of every point to its centroid
    train_points: int        # how many points faiss trained on (its subsampling)
    gpu: bool


def faiss_kmeans(x: np.ndarray, k: int, *, seed: int, n_iter: int = 100, n_redo: int = 5,
                 max_points_per_centroid: int | None = 256, gpu: bool = False) -> KMeansResult:
    """faiss k-means with every default the paper depends on set explicitly.

    ``n_redo`` restarts keep the lowest objective ("best of 5 runs"); ``max_points_per_centroid``
    None trains on all points instead of faiss' subsample. ``gpu`` uses all visible GPUs.
    """
    import faiss

    x = np.ascontiguousarray(x, dtype=np.float32)
    n, d = x.shape
    cap = n if max_points_per_centroid is None else int(max_points_per_centroid)
    km = faiss.Kmeans(d, int(k), niter=int(n_iter), nredo=int(n_redo), seed=int(seed),
                      max_points_per_centroid=max(cap, 1), min_points_per_centroid=1,
                      verbose=False, gpu=bool(gpu))
    threads = faiss.omp_get_max_threads()
    if n * int(k) * d < SMALL_KMEANS_WORK:   # OpenMP hand-off dominates tiny problems (50× on a busy host)
        faiss.omp_set_num_threads(1)
    try:
        km.train(x)
        dist, idx = km.index.search(x, 1)
    finally:
        faiss.omp_set_num_threads(threads)
    return KMeansResult(codes=idx[:, 0].astype(np.int64), centroids=np.asarray(km.centroids),
                        inertia=float(dist[:, 0].astype(np.float64).sum()),
                        train_points=min(n, max(cap, 1) * int(k)), gpu=bool(gpu))


def faiss_gpu_available() -> bool:
    """True when the installed faiss was built with GPU support and sees a GPU."""
    try:
        import faiss
    except ImportError:  # pragma: no cover - faiss is a dependency
        return False
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0



def torch_kmeans(x: np.ndarray, k: int, *, seed: int, n_iter: int = 100, n_redo: int = 5,
                 max_points_per_centroid: int | None = 256, device: str = "cuda") -> KMeansResult:
    """The same protocol on a CUDA device when faiss has no GPU build (the PyPI faiss-cpu):
    train on a seeded subsample of ``max_points_per_centroid``·K points as faiss does, keep the
    best of ``n_redo`` Lloyd runs (``bench.kmeans.lloyd``), then assign every point."""
    import torch

    from bench.kmeans import assign, lloyd

    x = np.ascontiguousarray(x, dtype=np.float32)
    n = len(x)
    cap = n if max_points_per_centroid is None else min(n, max(1, int(max_points_per_centroid)) * int(k))
    train = x if cap == n else x[np.sort(np.random.default_rng(seed).choice(n, size=cap, replace=False))]
    runs = [lloyd(train, int(k), niter=int(n_iter), seed=int(seed) + r, device=device) for r in range(int(n_redo))]
    best = min(runs, key=lambda r: r.inertia)
    if cap == n:
        return KMeansResult(codes=best.codes, centroids=best.centroids, inertia=best.inertia, train_points=n,
                            gpu=True)
    codes, dist = assign(torch.as_tensor(x, device=device), torch.as_tensor(best.centroids, device=device))
    return KMeansResult(codes=codes.cpu().numpy().astype(np.int64), centroids=best.centroids,
                        inertia=float(dist.double().sum()), train_points=cap, gpu=True)
