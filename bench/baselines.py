"""Baselines shipped with the harness: ``kmeans`` and ``phash`` (Summarisers) and ``fd`` (Comparator).

They are what users would reach for instead of the five methods, so every leaderboard
has a reference row. Registered through the same hooks as any plugin.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import ClassVar

import faiss
import numpy as np
import scipy.sparse as sp
from scipy import fft, linalg
from scipy.sparse.csgraph import connected_components

from bench.api import Comparator, Comparison, DataView, Finding, Summariser, Summary, check_finite, check_k
from bench.errors import BenchError, DataError
from bench.hookspecs import hookimpl
from bench.statistics import AdditiveDraws, Draws, block_size, make_blocks

log = logging.getLogger("bench")


def faiss_kmeans(x: np.ndarray, k: int, *, niter: int = 20, seed: int = 0, nredo: int = 1,
                 use_gpu: bool | None = None, max_points_per_centroid: int | None = None):
    """faiss k-means (GPU when faiss has GPUs and ``use_gpu`` is not False).

    Restart ``r`` starts from the rows ``bench.kmeans.initial_indices(n, k, seed + r)``, the
    same start the torch path (GPU without faiss-gpu, torchrun) uses, so the backend does not
    change the clustering; the restart with the lowest inertia is kept. faiss subsamples to
    256 points per centroid by default; we lift that cap unless asked, so all data is used.

    Returns (assignments (N,), centroids (k, d), inertia).
    """
    from bench.kmeans import initial_indices

    x = np.ascontiguousarray(check_finite(np.asarray(x, dtype=np.float32)))
    n, d = x.shape
    check_k(k, n, what="k")
    gpu = (faiss.get_num_gpus() > 0) if use_gpu is None else use_gpu
    best = None
    for restart in range(max(1, nredo)):
        km = faiss.Kmeans(d, k, niter=niter, seed=int(seed) + restart, gpu=bool(gpu), verbose=False,
                          max_points_per_centroid=max_points_per_centroid or max(256, -(-n // k)),
                          min_points_per_centroid=1)
        km.train(x, init_centroids=x[initial_indices(n, k, int(seed) + restart)])
        dist, assign = km.index.search(x, 1)
        inertia = float(dist.astype(np.float64).sum())
        if best is None or inertia < best[2]:
            best = (assign.ravel().astype(np.int64), km.centroids.copy(), inertia)
    return best


class KMeans(Summariser):
    """k-means on pooled extractor features; ``k=None`` uses the number of classes.

    faiss on CPU (and on GPU when faiss was built with GPU support); torch Lloyd
    (``bench.kmeans``) on a CUDA device without faiss-gpu and under torchrun, where every rank
    clusters its own rows and only centroid sums are all-reduced.
    """

    name = "kmeans"
    version = "2"   # 2: restarts start from bench.kmeans.initial_indices (shared by both backends)
    requires: ClassVar[frozenset[str]] = frozenset({"features"})
    distributed: ClassVar[bool] = True

    def __init__(self, *, k: int | None = None, niter: int = 20, nredo: int = 1, layer: str = "pooled"):
        self.k = k
        self.niter = niter
        self.nredo = nredo
        self.layer = layer

    def check_params(self) -> None:
        if self.k is not None and self.k < 1:
            raise BenchError(f"kmeans: k must be at least 1 (or unset for the number of classes), got {self.k}")
        for name in ("niter", "nredo"):
            if getattr(self, name) < 1:
                raise BenchError(f"kmeans: {name} must be at least 1, got {getattr(self, name)}")

    def fit(self, data: DataView, *, seed: int = 0) -> KMeans:
        from bench import distributed
        from bench.kmeans import lloyd

        k = self.k
        if k is None:
            k = len(np.unique(data.labels)) if data.labels is not None else 10
        on_cuda = str(data.device).startswith("cuda")
        ctx = distributed.context()
        n = len(data)
        if ctx.world_size > 1 or (on_cuda and faiss.get_num_gpus() == 0):
            start, stop = distributed.shard_range(n, ctx.rank, ctx.world_size)
            x = data.features(self.layer, rows=slice(start, stop))   # this rank's rows only
            fits = [lloyd(x, int(k), niter=self.niter, seed=seed + r, device=data.device,
                          offset=start, n_total=n) for r in range(max(1, self.nredo))]
            fit = min(fits, key=lambda f: f.inertia)
            self.backend_ = "torch"
            codes = distributed.all_gather_rows(fit.codes, start, n)
            centroids, inertia = fit.centroids, fit.inertia
        else:
            x = data.features(self.layer)
            codes, centroids, inertia = faiss_kmeans(x, int(k), niter=self.niter, seed=seed, nredo=self.nredo,
                                                     use_gpu=on_cuda or None)
            self.backend_ = "faiss"
        self.k_ = int(k)
        self.centroids_ = centroids
        # no embedding: the probe then reads the one-hot cluster ids, k-means' own representation
        self.summary_ = Summary(codes=codes,
                                statistics={"k": float(k), "inertia": inertia},
                                artefacts={"centroids": centroids})
        return self


PHASH_SIDE, PHASH_BLOCK = 32, 8


def phash_bits(image: np.ndarray) -> np.ndarray:
    """The 64 PHash bits (8×8 bool) of one (H, W, 3) or (H, W) uint8 image, as imagededup computes them.

    Followed from ``idealo/imagededup`` (``methods/hashing.py: PHash._hash_algo`` and
    ``utils/image_utils.py: preprocess_image``, unchanged up to its 2025 head): resize the RGB
    image to 32×32 with PIL LANCZOS, *then* convert to grey (PIL ``L``, uint8); 2-D DCT-II with
    scipy's default normalisation (``scipy.fftpack.dct(dct(x, axis=0), axis=1)``, i.e. norm=None,
    not "ortho": the scale of the first row and column relative to the others decides their bits);
    keep the top-left 8×8 block; the median is taken over its 63 coefficients *without* the DC
    term; bit = coefficient >= median (imagededup's ``>=``; the DC term keeps its bit). So
    ``np.packbits(bits)`` is imagededup's hex string as bytes and its Hamming distances carry over.
    """
    from PIL import Image

    image = np.asarray(image, dtype=np.uint8)
    img = Image.fromarray(np.ascontiguousarray(image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image))
    if img.mode != "L":
        img = img.convert("RGB")
    grey = np.asarray(img.resize((PHASH_SIDE, PHASH_SIDE), Image.LANCZOS).convert("L"), dtype=np.float64)
    block = fft.dctn(grey, type=2)[:PHASH_BLOCK, :PHASH_BLOCK]
    return block >= np.median(block.ravel()[1:])


def hamming_pairs(codes: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray]:
    """All pairs (i < j) of packed binary codes (N, bytes) within Hamming ``max_distance``, and
    their distances: faiss ``IndexBinaryFlat`` range search, exact (no approximate index)."""
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    n = len(codes)
    if n < 2:
        return np.zeros((0, 2), dtype=np.int64), np.zeros(0, dtype=np.int64)
    index = faiss.IndexBinaryFlat(codes.shape[1] * 8)
    index.add(codes)
    # faiss keeps distances strictly below the radius
    lims, dist, found = index.range_search(codes, int(max_distance) + 1)
    query = np.repeat(np.arange(n), np.diff(lims.astype(np.int64)))
    keep = query < found
    order = np.lexsort((found[keep], query[keep]))
    pairs = np.stack([query[keep], found[keep]], axis=1).astype(np.int64)[order]
    return pairs, np.rint(dist[keep]).astype(np.int64)[order]


def pair_components(n: int, pairs: np.ndarray) -> np.ndarray:
    """(n,) component id of every image in the graph of ``pairs``; an image in no pair is its own."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    graph = sp.coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    return connected_components(graph, directed=False)[1].astype(np.int64)


class PHash(Summariser):
    """Perceptual hash duplicates, as imagededup's ``PHash().find_duplicates`` finds them: what a
    user would run instead of the wavelet method to find near-duplicates.

    64-bit PHash per image (:func:`phash_bits`); every pair within Hamming distance
    ``max_distance`` (imagededup's default 10, inclusive) is a duplicate; codes are the connected
    components of those pairs; the embedding is the 64 bits (the probe reads the hash itself).
    """

    name = "phash"
    version = "1"
    requires: ClassVar[frozenset[str]] = frozenset({"images"})
    quick_params: ClassVar[dict] = {}   # hashing is already cheap on a CPU

    def __init__(self, *, max_distance: int = 10):
        self.max_distance = max_distance

    def check_params(self) -> None:
        d = self.max_distance
        if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or not 0 <= d <= 64:
            raise BenchError(f"phash: max_distance must be an integer from 0 to 64, got {d!r}")

    def fit(self, data: DataView, *, seed: int = 0) -> PHash:
        self.check_params()
        t0 = time.perf_counter()
        bits = [phash_bits(img) for batch in data.images() for img in batch]
        if len(bits) != len(data):
            raise DataError(f"phash: read {len(bits)} images of {data.name!r}, expected {len(data)}")
        bits = np.asarray(bits, dtype=bool).reshape(len(data), PHASH_BLOCK * PHASH_BLOCK)
        t_hash = time.perf_counter() - t0
        t0 = time.perf_counter()
        pairs, dist = hamming_pairs(np.packbits(bits, axis=1), self.max_distance)
        codes = pair_components(len(bits), pairs)
        self.hashes_ = np.packbits(bits, axis=1)
        self.summary_ = Summary(
            codes=codes, embedding=bits.astype(np.float32), duplicate_pairs=pairs,
            statistics={"max_distance": float(self.max_distance), "n_duplicate_pairs": float(len(pairs)),
                        "n_clusters": float(codes.max() + 1) if len(codes) else 0.0,
                        "time_hash_s": t_hash, "time_search_s": time.perf_counter() - t0},
            artefacts={"hashes": self.hashes_, "duplicate_pairs": pairs, "duplicate_distance": dist})
        return self


def _checked(x: np.ndarray) -> np.ndarray:
    x = check_finite(np.asarray(x, dtype=np.float64))
    if len(x) < 2:
        raise DataError(f"Fréchet distance needs at least 2 images per side, got {len(x)}")
    return x


#: bytes of one float64 chunk of rows when statistics stream over a (memory-mapped) feature
#: matrix: 16 MiB is 10,922 rows of 192-D or 2,730 of 768-D, enough for an efficient GEMM
GAUSSIAN_CHUNK_BYTES = 2**24

#: LAPACK calls of a draw on matrices up to this side run on one BLAS thread: on a shared 2-core
#: machine OpenBLAS' spinning worker threads lose the CPU and one 384 × 384 FD took 8–10 s with two
#: threads against 0.4–0.5 s with one (load average 12, benchmarks/RESULTS_issue26.md); larger
#: matrices keep the configured threads, where they pay.
ONE_THREAD_MAX_SIDE = 1024
_BLAS: list = []


def _small_lapack(side: int):
    """One BLAS thread (threadpoolctl) around a draw's LAPACK calls on ``side`` × ``side`` matrices."""
    if side > ONE_THREAD_MAX_SIDE:
        return contextlib.nullcontext()
    if not _BLAS:
        from threadpoolctl import ThreadpoolController

        _BLAS.append(ThreadpoolController())
    return _BLAS[0].limit(limits=1, user_api="blas")


def gaussian(x, rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (float64, ``np.cov``'s n−1) of the rows of ``x``, ``rows`` at a time.

    Two passes, the mean and then the centred scatter, as ``np.cov`` computes them, but never an
    N×D float64 copy: FD's memory is D² plus one chunk (``GAUSSIAN_CHUNK_BYTES`` by default)
    however many images there are. ``x``: an (N, D) array (memory-mapped or not) or anything
    whose row slices are arrays (:class:`_ViewRows`).
    """
    n = len(x)
    if n < 2:
        raise DataError(f"Fréchet distance needs at least 2 images per side, got {n}")
    rows = rows or max(1, GAUSSIAN_CHUNK_BYTES // (8 * np.asarray(x[0:1]).shape[1]))
    chunks = [slice(s, s + rows) for s in range(0, n, rows)]
    mu = sum(check_finite(np.asarray(x[c])).sum(0, dtype=np.float64) for c in chunks) / n
    scatter = 0.0
    for c in chunks:
        centred = np.array(x[c], dtype=np.float64)
        centred -= mu
        scatter = scatter + centred.T @ centred
    return mu, scatter / (n - 1)


class _ViewRows:
    """A view's features of one layer, read from the store a slice of rows at a time."""

    def __init__(self, view: DataView, layer: str):
        self.view, self.layer = view, layer

    def __len__(self) -> int:
        return len(self.view)

    def __getitem__(self, rows: slice | np.ndarray) -> np.ndarray:
        """A slice of rows, or positions (gaussian_block_sums reads a block's rows together)."""
        return self.view.features(self.layer, rows=rows)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """FID formula ‖μ1−μ2‖² + Tr(Σ1 + Σ2 − 2(Σ1Σ2)^½), with Tr√(Σ1Σ2) = Σ √eig(Σ1Σ2).

    The eigenvalue route avoids scipy's slow ``sqrtm`` (pytorch-fid#83); the eigenvalues of
    Σ1Σ2 are real and ≥ 0 in exact arithmetic, so we clip tiny negative round-off.
    """
    diff = np.asarray(mu1) - np.asarray(mu2)
    eig = linalg.eigvals(np.asarray(sigma1) @ np.asarray(sigma2))
    tr_sqrt = np.sqrt(np.clip(eig.real, 0, None)).sum()
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_sqrt)


def frechet_distance_features(x1: np.ndarray, x2: np.ndarray) -> float:
    """The same FD straight from features, exact and fast for any d.

    With centred A = X1c/√(n1−1), B = X2c/√(n2−1): Σ1 = AᵀA, Σ2 = BᵀB and the nonzero
    eigenvalues of Σ1Σ2 are the squared singular values of A Bᵀ, so Tr√(Σ1Σ2) = ‖A Bᵀ‖_*.
    A Bᵀ is n1×n2 (small when images are fewer than dimensions); when d is smaller we use
    ‖Σ1^½ Σ2^½‖_* with symmetric square roots instead. No general eigensolver either way.
    """
    d = np.shape(x1)[1]
    if min(len(x1), len(x2)) > d:
        # more images than dimensions: the D×D covariances, streamed (see ``gaussian``)
        (mu1, sigma1), (mu2, sigma2) = gaussian(x1), gaussian(x2)
        return frechet_distance_psd(mu1, sigma1, mu2, sigma2)
    x1, x2 = _checked(x1), _checked(x2)
    mu1, mu2 = x1.mean(0), x2.mean(0)
    a = (x1 - mu1) / np.sqrt(len(x1) - 1)
    b = (x2 - mu2) / np.sqrt(len(x2) - 1)
    tr_sqrt = linalg.svdvals(a @ b.T).sum()
    diff = mu1 - mu2
    return float(diff @ diff + (a * a).sum() + (b * b).sum() - 2.0 * tr_sqrt)


def frechet_distance_psd(mu1, sigma1, mu2, sigma2) -> float:
    """FD from two Gaussians with Tr√(Σ1Σ2) = ‖Σ1^½ Σ2^½‖_*: exact for singular covariances too,
    where the eigenvalues of the non-symmetric product lose digits."""
    diff = np.asarray(mu1) - np.asarray(mu2)
    tr_sqrt = linalg.svdvals(_sym_sqrt(sigma1) @ _sym_sqrt(sigma2)).sum()
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_sqrt)


def _sym_sqrt(sigma: np.ndarray) -> np.ndarray:
    w, v = linalg.eigh(sigma)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance_sqrtm(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """pytorch-fid's reference formula (scipy ``sqrtm``); kept as the test oracle."""
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


class FrechetDistance(Comparator):
    """Fréchet distance between Gaussians fitted to pooled features (FID's formula)."""

    name = "fd"
    version = "1"
    larger_is_more_different = True
    #: FD is a smooth function of means and covariances: its plug-in bias is c/n + O(1/n²) (the mean
    #: term's exactly tr Σ_A/n_A + tr Σ_B/n_B), so ``bench compare`` extrapolates it away as 1/n
    bias_rates: ClassVar[tuple[float, ...]] = (1.0,)

    def __init__(self, *, layer: str = "pooled"):
        self.layer = layer

    def check_params(self) -> None:
        if not isinstance(self.layer, str):
            raise BenchError(f"fd: layer must be a layer name, got {self.layer!r}")

    def compare(self, a: DataView, b: DataView, *, seed: int = 0) -> Comparison:
        """FD with its mean and covariance terms, and beside it the sample-size-corrected FD∞
        (:func:`fd_infinity`; ``statistics`` and a finding). One warning when a side has fewer
        images than feature dimensions (singular covariances: FD is biased upward at this n)."""
        result = self._fd(a, b)
        rows_a, rows_b = _ViewRows(a, self.layer), _ViewRows(b, self.layer)
        d = rows_a[0:1].shape[1]
        if min(len(a), len(b)) < d:
            log.warning("fd: %d and %d images but %d feature dimensions: the covariances are singular and FD is "
                        "biased upward at this n; read fd_inf (FD extrapolated to infinitely many images) beside it",
                        len(a), len(b), d)
        inf = fd_infinity(rows_a, rows_b, seed=seed)
        result.statistics["fd"] = result.score
        if inf is None:
            result.detail["fd_inf"] = None
            result.detail["fd_inf_note"] = f"FD∞ needs at least {FD_INF_MIN} images per side"
            return result
        result.statistics.update({"fd_inf": inf["fd_inf"], "fd_inf_slope": inf["slope"]})
        result.detail.update({"fd_inf": inf["fd_inf"], "fd_inf_fit": inf})
        result.findings.append(Finding(
            f"FD at {len(inf['fd'])} subset sizes and FD∞ = {inf['fd_inf']:.4g} (the fit's intercept in 1/n; "
            f"FD at all images: {result.score:.4g})",
            rows=[{"n_a": int(na), "n_b": int(nb), "fd": float(v), "fit": float(inf["fd_inf"] + inf["slope"] / f)}
                  for na, nb, v, f in zip(inf["n_a"], inf["n_b"], inf["fd"], inf["fraction"])]))
        return result

    def interval_note(self, draws: Draws) -> str | None:
        """With fewer images a side than FD_NOTE_RATIO × dimensions FD's bias is not c/n (the
        covariances are singular or nearly so) and the half-sampling interval does not cover."""
        d = draws.dim if isinstance(draws, GramFrechetDraws) else np.shape(getattr(draws, "arrays", {}).get("sum"))[-1]
        n = min(draws.blocks.n_a, draws.blocks.n_b)
        if n >= FD_NOTE_RATIO * d:
            return None
        return (f"{n} images on the smaller side for {d} feature dimensions: below {FD_NOTE_RATIO:g} × {d} images "
                "a side FD's bias is not c/n and the interval does not cover the population FD (0 % of simulations "
                "at n = 50, d = 64); use more images or fewer dimensions")

    def score(self, a: DataView, b: DataView, *, seed: int = 0) -> float:
        """FD alone (no FD∞ fit), for brute-force draws."""
        return float(self._fd(a, b).score)

    def _fd(self, a: DataView, b: DataView) -> Comparison:
        self.check_params()
        rows_a, rows_b = _ViewRows(a, self.layer), _ViewRows(b, self.layer)
        d = rows_a[0:1].shape[1] if len(a) else 0
        if min(len(a), len(b)) > d:   # streamed: D×D statistics, never all rows at once
            (mu1, sigma1), (mu2, sigma2) = gaussian(rows_a), gaussian(rows_b)
            return _fd_result(frechet_distance_psd(mu1, sigma1, mu2, sigma2), float(((mu1 - mu2) ** 2).sum()))
        x1, x2 = a.features(self.layer), b.features(self.layer)
        mean_term = float(((x1.mean(0, dtype=np.float64) - x2.mean(0, dtype=np.float64)) ** 2).sum())
        return _fd_result(frechet_distance_features(x1, x2), mean_term)

    def summarise(self, a: DataView, *, seed: int = 0) -> dict:
        """A's Gaussian (mean, covariance in float64): all FD needs of A (clean-fid's reference statistics)."""
        self.check_params()
        mu, sigma = gaussian(_ViewRows(a, self.layer))
        return {"mu": mu, "sigma": sigma, "n": len(a)}

    def compare_summary(self, summary: dict, b: DataView, *, seed: int = 0) -> Comparison:
        self.check_params()
        rows = _ViewRows(b, self.layer)
        mu, sigma = np.asarray(summary["mu"], dtype=np.float64), np.asarray(summary["sigma"], dtype=np.float64)
        d = rows[0:1].shape[1]
        if mu.shape != (d,):
            raise DataError(f"fd: the saved summary has {mu.shape[0]}-dimensional features, B has {d}")
        mu_b, sigma_b = gaussian(rows)
        return _fd_result(frechet_distance_psd(mu, sigma, mu_b, sigma_b), float(((mu - mu_b) ** 2).sum()))


    # -- the state path: one pass, any number of draws ------------------------------------------
    def state_bytes(self, view: DataView, context: dict) -> int:
        """One block's count, sum and sum of outer products (D² float64)."""
        d = _ViewRows(view, self.layer)[0:1].shape[1]
        return 8 * (d * d + d + 1)

    def block_states(self, view: DataView, blocks: np.ndarray, n_blocks: int, *, context: dict,
                     seed: int = 0) -> dict[str, np.ndarray]:
        """Count, sum and sum of outer products of each block's features (float64), a chunk of rows
        at a time."""
        self.check_params()
        return gaussian_block_sums(_ViewRows(view, self.layer), blocks, n_blocks)

    def finalize(self, a: dict, b: dict, *, context: dict) -> float:
        (mu1, s1), (mu2, s2) = gaussian_from_sums(a), gaussian_from_sums(b)
        with _small_lapack(len(mu1)):
            return frechet_distance_psd(mu1, s1, mu2, s2)

    def check_summary(self, summary: dict) -> None:
        mu, sigma = np.asarray(summary["mu"]), np.asarray(summary["sigma"])
        d = mu.shape[0] if mu.ndim == 1 else -1
        if d < 1 or sigma.shape != (d, d):
            raise DataError(f"fd: the saved mean has shape {mu.shape} and covariance {sigma.shape}; they must be "
                            "(D,) and (D, D)")
        if not np.allclose(sigma, sigma.T, rtol=1e-6, atol=1e-9 * max(1.0, float(np.abs(sigma).max()))) \
                or (np.diag(sigma) < 0).any():
            raise DataError("fd: the saved covariance is not symmetric with a non-negative diagonal")
        if "state.row" in summary and np.asarray(summary["state.row"]).shape[1:] != (d,):
            raise DataError(f"fd: the saved feature rows are not {d}-dimensional like the saved mean")

    def saved_states(self, a: DataView, *, seed: int = 0) -> dict:
        """A's feature rows while images are fewer than dimensions (smaller than one D×D block, and the
        null keeps one image per block); else block sums."""
        d = _ViewRows(a, self.layer)[0:1].shape[1]
        if not _SavedRows.fits(len(a), d):
            return super().saved_states(a, seed=seed)
        return {"state.row": check_finite(np.asarray(a.features(self.layer), dtype=np.float64)),
                "state.block_size": 1, "state.block_sizes": np.ones(len(a), dtype=np.int64)}

    def saved_draws(self, saved: dict, b: DataView, *, seed: int = 0):
        if "state.row" not in saved:
            return super().saved_draws(saved, b, seed=seed)
        from bench.statistics import check_mergeable, join_blocks

        rows_a = np.asarray(saved["state.row"], dtype=np.float64)
        rows_b = np.asarray(b.features(self.layer), dtype=np.float64)
        check_mergeable({"row": rows_a}, {"row": rows_b}, self.name)
        x = np.concatenate([rows_a, check_finite(rows_b)])
        n_a, n_b = len(rows_a), len(rows_b)
        blocks = join_blocks(np.ones(n_a, np.int64), np.arange(n_b), np.ones(n_b, np.int64))
        if n_a + n_b <= max(x.shape[1], GRAM_MAX_IMAGES):
            return GramFrechetDraws(blocks, x)
        d = x.shape[1]   # too many for the Gram matrix: random blocks of both sides, D×D sums each
        blocks = make_blocks(n_a, n_b, block_size(n_a, n_b, 8 * (d * d + d + 1)), seed)
        return AdditiveDraws(blocks, gaussian_block_sums(x, blocks.of, blocks.count), self._finalizer({}))

    def draws(self, a: DataView, b: DataView, blocks, *, seed: int = 0):
        """While images are fewer than dimensions: one image per block whatever ``blocks`` says, and FD
        of any reweighting from the Gram matrix of A ∪ B (no D×D matrix, no eigensolver: an
        n_A × n_B SVD per draw). Else the additive block states."""
        self.check_params()
        d = _ViewRows(a, self.layer)[0:1].shape[1]
        if len(a) + len(b) <= d:
            x = np.concatenate([check_finite(a.features(self.layer)), check_finite(b.features(self.layer))])
            return GramFrechetDraws(make_blocks(len(a), len(b), 1, seed), x)
        if (blocks.size == 1).all():   # one image per block: FD from the rows, not one D×D state per image
            x = np.concatenate([check_finite(a.features(self.layer)), check_finite(b.features(self.layer))])
            return RowFrechetDraws(blocks, x)
        return super().draws(a, b, blocks, seed=seed)


#: images per side, in multiples of the feature dimension, below which a compare's FD interval
#: carries a note (measured, benchmarks/test_calibration_bench.py: at d = 64 it covers from
#: n = 100, and covers 0 % at n = 50)
FD_NOTE_RATIO = 1.5

#: subset sizes of the FD∞ fit (dgm-eval's default), and the fewest images per side it runs on
FD_INF_POINTS = 15
FD_INF_MIN = 4


def fd_infinity(rows_a, rows_b, *, seed: int = 0, points: int = FD_INF_POINTS,
                budget: int | None = None) -> dict | None:
    """FD∞ (Chong & Forsyth 2020; dgm-eval's ``compute_FD_infinity``): FD at ``points`` subset sizes,
    a line fitted to FD against 1/n, its intercept (FD's bias at n images is about c/n).

    dgm-eval keeps the reference set whole and subsamples the other from max(n/10, 2) (at most
    5,000) up to n; here *both* sides are subsampled at the same fraction f of their size (from that
    start, rounded, at least 2 images), so the fit removes the bias of both (c_A/n_A + c_B/n_B =
    c/f) and a small A is corrected too. The subsets are nested prefixes of one seeded random
    order per side. With more images than dimensions the subsets' statistics are streamed sums of
    random segments (D² float64 per segment and side; fewer points when 2 × points × D² × 8 bytes
    would pass ``budget``), else FD from the rows (as ``frechet_distance_features``).

    Cost: one more pass over the features and ``points`` FDs (with more images than dimensions each
    is two D×D eigendecompositions and an SVD; a few seconds apiece at D = 2048), so ``score``, which
    the brute-force draws call, leaves it out.

    Returns fd_inf, slope, fraction, n_a, n_b, fd (per point); None under :data:`FD_INF_MIN` images a side.
    """
    from bench.statistics import STATE_BUDGET_BYTES

    n_a, n_b = len(rows_a), len(rows_b)
    m = min(n_a, n_b)
    if m < FD_INF_MIN:
        return None
    d = np.asarray(rows_a[0:1]).shape[1]
    streamed = m > d
    if streamed:
        points = int(min(points, max(2, (budget or STATE_BUDGET_BYTES) // (16 * d * d))))
    fraction = np.linspace(min(5000, max(m // 10, 2)) / m, 1.0, points)
    sizes = [np.maximum(2, np.rint(fraction * n).astype(np.int64)) for n in (n_a, n_b)]
    for s, n in zip(sizes, (n_a, n_b)):
        s[-1] = n
    rng = np.random.default_rng([seed, 13])
    orders = [rng.permutation(n) for n in (n_a, n_b)]
    fds = []
    if streamed:
        sums = []
        for rows, order, size in zip((rows_a, rows_b), orders, sizes):
            rank = np.empty(len(order), dtype=np.int64)
            rank[order] = np.arange(len(order))
            segment = np.searchsorted(size, rank, side="right")   # segment j: ranks size[j-1] .. size[j]
            seg = gaussian_block_sums(rows, segment, points)
            sums.append({k: np.cumsum(v, axis=0, out=v) for k, v in seg.items()})
        for j in range(points):
            (mu1, s1), (mu2, s2) = (gaussian_from_sums({k: v[j] for k, v in side.items()}) for side in sums)
            fds.append(frechet_distance_psd(mu1, s1, mu2, s2))
    else:
        x1, x2 = np.asarray(rows_a[0:n_a], dtype=np.float64), np.asarray(rows_b[0:n_b], dtype=np.float64)
        fds = [frechet_distance_features(x1[np.sort(orders[0][:ka])], x2[np.sort(orders[1][:kb])])
               for ka, kb in zip(*sizes)]
    slope, intercept = np.polyfit(1.0 / fraction, np.asarray(fds), 1)
    return {"fd_inf": float(intercept), "slope": float(slope), "fraction": fraction.tolist(),
            "n_a": sizes[0].tolist(), "n_b": sizes[1].tolist(), "fd": [float(v) for v in fds]}


#: largest A ∪ B scored through the Gram matrix (n² float64 and an n_A × n_B SVD per draw)
GRAM_MAX_IMAGES = 20_000


class _SavedRows:
    """FD's compact saved state while A has fewer images than dimensions: A's feature rows (n_A × D
    is smaller than one D × D block), one image per block."""

    @staticmethod
    def fits(n: int, d: int) -> bool:
        from bench.statistics import SUMMARY_BUDGET_BYTES

        return n <= d and n * d * 8 <= SUMMARY_BUDGET_BYTES


def gaussian_block_sums(x, blocks: np.ndarray, n_blocks: int, rows: int | None = None) -> dict[str, np.ndarray]:
    """``count`` (K,), ``sum`` (K, D) and ``outer`` (K, D, D) float64 of the rows of each block.

    Rows are read grouped by block (image order within a block), at most ``rows`` at a time, so each
    block's outer products are one GEMM over its rows: accumulating per (chunk, block) pair took
    ~1 minute for 40,000 rows in random blocks of 45 (one tiny GEMM and one D² add per pair)."""
    d = np.asarray(x[0:1]).shape[1]
    rows = rows or max(1, GAUSSIAN_CHUNK_BYTES // (8 * d))
    blocks = np.asarray(blocks, dtype=np.int64)
    count = np.bincount(blocks, minlength=n_blocks).astype(np.float64)
    total = np.zeros((n_blocks, d))
    outer = np.zeros((n_blocks, d, d))
    order = np.argsort(blocks, kind="stable")          # by block, image order within a block
    ends = np.cumsum(np.bincount(blocks, minlength=n_blocks))
    starts = ends - np.bincount(blocks, minlength=n_blocks)
    k = 0
    while k < n_blocks:
        # consecutive blocks whose rows fit one read (a block larger than ``rows`` is read in pieces)
        stop = max(k + 1, int(np.searchsorted(ends, starts[k] + rows, side="right")))
        lo, hi = int(starts[k]), int(ends[stop - 1])
        for s in range(lo, hi, rows if stop == k + 1 else hi - lo or 1):
            idx = order[s:min(hi, s + rows)]
            chunk = check_finite(np.asarray(_gather(x, idx), dtype=np.float64))
            ids = blocks[idx]
            cuts = np.flatnonzero(np.diff(ids)) + 1
            for part, j in zip(np.split(chunk, cuts), ids[np.r_[0, cuts]]):
                total[j] += part.sum(0)
                outer[j] += part.T @ part
        k = stop
    return {"count": count, "sum": total, "outer": outer}


def _gather(x, idx: np.ndarray) -> np.ndarray:
    """Rows ``idx`` (ascending within a block) of an array, a memmap or a row reader."""
    if len(idx) and idx[-1] - idx[0] + 1 == len(idx) and (np.diff(idx) == 1).all():
        return np.asarray(x[int(idx[0]):int(idx[-1]) + 1])
    return np.asarray(x[idx])


def gaussian_from_sums(stats: dict) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (n−1) from summed count, sum and outer products."""
    n = float(stats["count"])
    if n < 2:
        raise DataError(f"Fréchet distance needs at least 2 images per side, got {n:g}")
    mu = stats["sum"] / n
    sigma = (stats["outer"] - n * np.outer(mu, mu)) / (n - 1)
    return mu, (sigma + sigma.T) / 2


class GramFrechetDraws(Draws):
    """FD of weighted A and B rows from the Gram matrix G = X Xᵀ of A ∪ B: with centred, weighted
    rows Ã = W_a^½ (X_a − μ_a) / √(n_a − 1), Tr√(Σ_A Σ_B) = ‖Ã B̃ᵀ‖_* and every term is a
    quadratic form in G (see ``frechet_distance_features``)."""

    def __init__(self, blocks, x: np.ndarray):
        self.blocks = blocks
        x = np.asarray(x, dtype=np.float64)
        self.dim = x.shape[1]
        x = x - x.mean(axis=0)   # FD ignores a common shift; centring keeps G's cancellations small
        self.gram = x @ x.T

    def score(self, w_a: np.ndarray, w_b: np.ndarray) -> float:
        g = self.gram
        ia, ib = np.flatnonzero(w_a), np.flatnonzero(w_b)
        wa, wb = np.asarray(w_a, np.float64)[ia], np.asarray(w_b, np.float64)[ib]
        na, nb = wa.sum(), wb.sum()
        if min(na, nb) < 2:
            raise DataError(f"Fréchet distance needs at least 2 images per side, got {na:g} and {nb:g}")
        pa, pb = wa / na, wb / nb
        g_aa, g_bb, g_ab = g[np.ix_(ia, ia)], g[np.ix_(ib, ib)], g[np.ix_(ia, ib)]
        ga_a, gb_b = g_aa @ pa, g_bb @ pb            # X_a μ_a, X_b μ_b
        mm_a, mm_b = pa @ ga_a, pb @ gb_b            # ‖μ_a‖², ‖μ_b‖²
        mu_ab = pa @ g_ab @ pb                       # μ_a · μ_b
        xa_mub, xb_mua = g_ab @ pb, g_ab.T @ pa      # X_a μ_b, X_b μ_a
        # centred cross products (X_a − μ_a)(X_b − μ_b)ᵀ
        cross = g_ab - xa_mub[:, None] - xb_mua[None, :] + mu_ab
        cross *= np.sqrt(wa)[:, None] * np.sqrt(wb)[None, :] / np.sqrt((na - 1) * (nb - 1))
        tr_a = (wa @ np.diag(g_aa) - na * mm_a) / (na - 1)
        tr_b = (wb @ np.diag(g_bb) - nb * mm_b) / (nb - 1)
        mean_term = mm_a + mm_b - 2 * mu_ab
        # ‖C‖_* = Σ √λ(C Cᵀ) over the smaller side: a symmetric eigensolver, several times faster than an SVD
        small = cross @ cross.T if cross.shape[0] <= cross.shape[1] else cross.T @ cross
        with _small_lapack(len(small)):
            eig = linalg.eigvalsh(small, overwrite_a=True, check_finite=False)
        nuclear = np.sqrt(np.clip(eig, 0, None)).sum()
        return float(mean_term + tr_a + tr_b - 2.0 * nuclear)


class RowFrechetDraws(Draws):
    """FD of weighted A and B rows, one image per block, from the rows themselves: each side's mean
    and weighted covariance (X − μ)ᵀ diag(w) (X − μ) / (n − 1), one GEMM of its rows per draw, and
    ``frechet_distance_psd``. The same score as the additive path's per-image count, sum and D × D
    outer product, to round-off (the covariance from centred rows, not from Σ xxᵀ − n μμᵀ), without
    the n × D² states: with n ≈ D those were D times the rows, and every draw read them all."""

    def __init__(self, blocks, x: np.ndarray):
        self.blocks = blocks
        x = np.asarray(x, dtype=np.float64)
        self.x = x - x.mean(axis=0)   # FD ignores a common shift

    def _gaussian(self, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        idx = np.flatnonzero(w)
        w = np.asarray(w, dtype=np.float64)[idx]
        n = float(w.sum())
        if n < 2:
            raise DataError(f"Fréchet distance needs at least 2 images per side, got {n:g}")
        rows = self.x[idx]
        mu = (w @ rows) / n
        rows -= mu
        rows *= np.sqrt(w)[:, None]
        return mu, rows.T @ rows / (n - 1)

    def score(self, w_a: np.ndarray, w_b: np.ndarray) -> float:
        with _small_lapack(self.x.shape[1]):
            (mu1, s1), (mu2, s2) = self._gaussian(w_a), self._gaussian(w_b)
            return frechet_distance_psd(mu1, s1, mu2, s2)


def _fd_result(fd: float, mean_term: float) -> Comparison:
    """The score with what differs: how much of FD is the shift of the mean, how much the spread."""
    cov_term = fd - mean_term
    rows = [{"term": "mean: ‖μA − μB‖²", "value": mean_term, "share": mean_term / fd if fd > 0 else None},
            {"term": "covariance: Tr(ΣA + ΣB − 2(ΣA ΣB)^½)", "value": cov_term,
             "share": cov_term / fd if fd > 0 else None}]
    return Comparison(score=fd, detail={"mean_term": mean_term},
                      findings=[Finding("mean shift vs covariance change", rows=rows)])


@hookimpl
def bench_register_summarisers(registry):
    registry.add("kmeans", KMeans)
    registry.add("phash", PHash)


@hookimpl
def bench_register_comparators(registry):
    registry.add("fd", FrechetDistance)
