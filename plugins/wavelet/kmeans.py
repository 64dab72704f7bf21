"""k-means for Algorithm 1: k-means++ seeding (Arthur & Vassilvitskii 2007) + Lloyd (1982).

The paper clusters with n_c close to N (47,000 of 50,000 CIFAR-10 images). Plain sequential
k-means++ costs k passes over the data (faiss' own k-means++ takes ~10 s for k=470 on
5,000 × 3,072 here), so seeding is batched *without changing its distribution*: proposals
are drawn i.i.d. from the stale D² distribution and accepted with probability
D²_now / D²_stale (rejection sampling), which yields exactly the sequential k-means++ law
while the distance updates run as matrix products. The default is scikit-learn's greedy
k-means++ (best of 2 + ln k D² candidates per seed), which at n_c ≈ N is what keeps the two
copies of a near-duplicate from both becoming seeds. Lloyd iterations use faiss' exact flat
search (GPU index when faiss has GPUs, a chunked torch search on CUDA otherwise) and stop by
scikit-learn's rule, so the iteration count is recorded, not fixed.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import faiss
import numpy as np
import scipy.sparse as sp
import torch

from bench.errors import BenchError

#: proposals per seeding round; bounds the (b × b) proposal distance matrix
SEED_BATCH = 2048
#: greedy k-means++ keeps an N × N Gram matrix up to GREEDY_MAX_N points; beyond, it costs
#: k · (2 + ln k) memory-bound passes over the data, and above GREEDY_MAX_MACS multiply-adds
#: plain k-means++ (one batched N·k·d pass) is used instead
GREEDY_MAX_N = 16384
GREEDY_MAX_MACS = 2e11
INITS = ("greedy-k-means++", "k-means++")
#: rows per chunk of a torch distance matrix (fewer when there are many centroids)
_CHUNK = 8192
#: seeds per distance update while seeding: bounds the (N × chunk) distance block
_SEED_CHUNK = 512


@dataclass
class KMeansResult:
    labels: np.ndarray         # (N,) int64 cluster ids 0..k-1
    centroids: np.ndarray      # (k, d) float32
    distances: np.ndarray      # (N,) squared distance of each point to its centroid
    n_iter: int
    converged: bool
    objective: float           # sum of squared distances
    k: int                     # number of clusters actually formed (< requested when too few distinct points)
    init: str = "k-means++"    # seeding actually used


def _sqdist_from(x_sq: torch.Tensor, y_sq: torch.Tensor, dots: torch.Tensor) -> torch.Tensor:
    """Squared distances |x|² + |y|² - 2x·y; values below the rounding level of that
    expansion are set to exactly 0, so identical rows never count as distinct seeds."""
    norms = x_sq[:, None] + y_sq[None, :]
    d = norms - 2.0 * dots
    noise = 16 * torch.finfo(d.dtype).eps
    return d.masked_fill_(d <= noise * norms, 0.0)


def _sqdist(x: torch.Tensor, y: torch.Tensor, x_sq: torch.Tensor, y_sq: torch.Tensor) -> torch.Tensor:
    return _sqdist_from(x_sq, y_sq, x @ y.T)


def kmeans_plusplus(x: torch.Tensor, k: int, rng: np.random.Generator, *,
                    batch: int = SEED_BATCH) -> np.ndarray:
    """Indices of k k-means++ seeds (fewer if the data has fewer distinct points).

    x should be centred (distances are computed as |x|² + |c|² - 2x·c). The first seed is
    uniform; every later seed follows the sequential D² law exactly (see module docstring).
    """
    n = x.shape[0]
    x_sq = (x * x).sum(1)
    seeds = [int(rng.integers(n))]
    d2 = _sqdist(x, x[seeds], x_sq, x_sq[seeds])[:, 0]
    d2[seeds[0]] = 0.0
    while len(seeds) < k:
        d2_np = d2.double().cpu().numpy()
        cum = np.cumsum(d2_np)
        if not cum[-1] > 0:
            break                                   # every point coincides with a seed
        need = k - len(seeds)
        b = min(batch, max(need, 1))
        props = np.searchsorted(cum, rng.random(b) * cum[-1], side="right").clip(max=n - 1)
        p_idx = torch.as_tensor(props, device=x.device)
        xp = x[p_idx]
        dpp = _sqdist(xp, xp, x_sq[p_idx], x_sq[p_idx]).double().cpu().numpy()
        dpp[props[:, None] == props[None, :]] = 0.0
        d_old = d2_np[props]
        d_cur = d_old.copy()
        accept_u = rng.random(b)
        accepted = []
        for t in range(b):
            if accept_u[t] * d_old[t] < d_cur[t]:
                accepted.append(t)
                np.minimum(d_cur, dpp[t], out=d_cur)
                if len(accepted) == need:
                    break
        new = props[accepted]
        seeds.extend(int(i) for i in new)
        new_t = torch.as_tensor(new, device=x.device)
        for start in range(0, len(new), _SEED_CHUNK):
            part = new_t[start:start + _SEED_CHUNK]
            d2 = torch.minimum(d2, _sqdist(x, x[part], x_sq, x_sq[part]).min(dim=1).values)
        d2[new_t] = 0.0
    return np.asarray(seeds, dtype=np.int64)


def kmeans_plusplus_greedy(x: torch.Tensor | np.ndarray, k: int, rng: np.random.RandomState,
                           n_local_trials: int | None = None, *, use_torch: bool | None = None) -> np.ndarray:
    """Greedy k-means++ (Arthur & Vassilvitskii §6; scikit-learn's default): at each step draw
    2 + ln k candidates from the D² law and keep the one that lowers the potential most.

    Same random calls as ``sklearn.cluster.kmeans_plusplus`` (tested equal). Candidate
    distances come from a precomputed N × N Gram matrix up to ``GREEDY_MAX_N`` points (one
    compute-bound N²d product, then O(N · trials) per seed); beyond, from (trials × d) · (d × N)
    products, which re-read the data k times (memory-bound).
    CPU data runs in numpy (k small steps; torch's per-op overhead dominates there), CUDA
    tensors in torch (``use_torch`` forces either, for tests).
    """
    on_cpu = (not torch.is_tensor(x) or x.device.type == "cpu") if use_torch is None else not use_torch
    if on_cpu:
        x = x.cpu().numpy() if torch.is_tensor(x) else np.asarray(x)
    else:
        x = torch.as_tensor(x)
    lib = np if on_cpu else torch
    n = x.shape[0]
    trials = 2 + int(np.log(k)) if n_local_trials is None else n_local_trials
    sq = (x * x).sum(1)
    gram = x @ x.T if n <= GREEDY_MAX_N else None
    noise = 16 * float(np.finfo(np.float32 if x.dtype in (np.float32, torch.float32) else np.float64).eps)

    def dist_rows(idx):
        dots = gram[idx] if gram is not None else x[idx] @ x.T
        norms = sq[idx][:, None] + sq[None, :]
        d = norms - 2.0 * dots
        d[d <= noise * norms] = 0.0
        return d

    first = int(rng.choice(n, p=np.full(n, 1.0 / n)))
    centers = [first]
    idx0 = np.array([first]) if on_cpu else torch.tensor([first], device=x.device)
    closest = dist_rows(idx0)[0]
    pot = float(closest.sum(dtype=np.float64) if on_cpu else closest.double().sum())
    for _ in range(1, k):
        if not pot > 0:
            break                                           # every point coincides with a centre
        cum = np.cumsum(closest, dtype=np.float64) if on_cpu else torch.cumsum(closest.double(), 0).cpu().numpy()
        cand = np.searchsorted(cum, rng.uniform(size=trials) * pot).clip(max=n - 1)
        d = lib.minimum(closest[None, :], dist_rows(cand if on_cpu else torch.as_tensor(cand, device=x.device)))
        pots = d.sum(1, dtype=np.float64) if on_cpu else d.double().sum(1).cpu().numpy()
        best = int(np.argmin(pots))
        pot = float(pots[best])
        closest = d[best]
        centers.append(int(cand[best]))
    return np.asarray(centers, dtype=np.int64)


class _Searcher:
    """Nearest centroid for every point: faiss flat L2 (CPU or GPU), or chunked torch on CUDA."""

    def __init__(self, device: torch.device):
        self.device = device
        self.use_torch = device.type == "cuda" and not hasattr(faiss, "StandardGpuResources")
        self.gpu_res = None
        if device.type == "cuda" and not self.use_torch and faiss.get_num_gpus() > 0:
            self.gpu_res = faiss.StandardGpuResources()

    def __call__(self, x: np.ndarray, xt: torch.Tensor | None, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.use_torch:
            ct = torch.as_tensor(c, device=self.device)
            c_sq = (ct * ct).sum(1)
            x_sq = (xt * xt).sum(1)
            dist, lab = [], []
            rows = max(1, min(_CHUNK, (1 << 27) // max(len(c), 1)))
            for s in range(0, len(xt), rows):
                dd = _sqdist(xt[s:s + rows], ct, x_sq[s:s + rows], c_sq)
                v, i = dd.min(dim=1)
                dist.append(v)
                lab.append(i)
            return torch.cat(dist).cpu().numpy(), torch.cat(lab).cpu().numpy().astype(np.int64)
        index = faiss.IndexFlatL2(c.shape[1])
        if self.gpu_res is not None:
            index = faiss.index_cpu_to_gpu(self.gpu_res, self.device.index or 0, index)
        index.add(c)
        dist, lab = index.search(x, 1)
        return dist[:, 0].astype(np.float64).clip(min=0.0), lab[:, 0].astype(np.int64)


def _centroids(x: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    counts = np.bincount(labels, minlength=k)
    onehot = sp.csr_matrix((np.ones(len(labels), dtype=np.float32), (labels, np.arange(len(labels)))),
                           shape=(k, len(labels)))
    sums = onehot @ x
    return (sums / np.maximum(counts, 1)[:, None].astype(np.float32)).astype(np.float32), counts


def kmeans(x: np.ndarray, k: int, *, seed: int = 0, max_iter: int = 100, tol: float = 1e-4,
           init: str = "greedy-k-means++", device: torch.device | str = "cpu") -> KMeansResult:
    """Lloyd's k-means on rows of x with k-means++ seeds, scikit-learn's stopping rule (no
    assignment changes, or total squared centre shift <= tol · mean feature variance) and its
    empty-cluster rule (re-seed with the points farthest from their centroids).

    ``init="greedy-k-means++"`` (default, as scikit-learn) costs about (2 + ln k) Lloyd
    iterations; where that exceeds ``GREEDY_MAX_MACS`` (k ≈ N = 50,000) plain k-means++ seeds
    are used instead (``KMeansResult.init`` says which).
    """
    if init not in INITS:
        raise BenchError(f"wavelet: init must be one of {INITS}, got {init!r}")
    dev = torch.device(device)
    x = np.ascontiguousarray(x, dtype=np.float32)
    mean = x.mean(axis=0, dtype=np.float64).astype(np.float32)
    x = x - mean                       # k-means is translation-invariant; centring limits cancellation
    xt = torch.as_tensor(x, device=dev)
    n, d = x.shape
    trials = 2 + int(np.log(max(k, 1)))
    greedy_macs = 0 if n <= GREEDY_MAX_N else k * trials * n * d
    used = init if (init != "greedy-k-means++" or greedy_macs <= GREEDY_MAX_MACS) else "k-means++"
    if used == "greedy-k-means++":
        seeds = kmeans_plusplus_greedy(x if dev.type == "cpu" else xt, k, np.random.RandomState(seed))
    else:
        seeds = kmeans_plusplus(xt, k, np.random.default_rng(seed))
    if len(seeds) < k:
        warnings.warn(f"wavelet: only {len(seeds)} distinct images; using n_c={len(seeds)} instead of {k}",
                      stacklevel=3)
        k = len(seeds)
    search = _Searcher(dev)
    xt_search = xt if search.use_torch else None
    if not search.use_torch:
        del xt
    centroids = x[seeds].copy()
    labels = np.full(len(x), -1, dtype=np.int64)
    tol_abs = tol * float(np.mean(np.var(x, axis=0, dtype=np.float64)))
    strict = False
    shift = float("inf")
    n_iter = 0
    dist = np.zeros(len(x))
    while n_iter < max_iter:
        n_iter += 1
        dist, new_labels = search(x, xt_search, centroids)
        if np.array_equal(new_labels, labels):
            strict = True                        # labels already match the centroids
            break
        labels = new_labels
        new_centroids, counts = _centroids(x, labels, k)
        empty = np.flatnonzero(counts == 0)
        if len(empty):
            far = np.argsort(-dist, kind="stable")[: len(empty)]
            new_centroids[empty] = x[far]
        diff = (new_centroids - centroids).ravel()
        shift = float(np.dot(diff, diff))
        centroids = new_centroids
        if shift <= tol_abs:
            break
    converged = strict or shift <= tol_abs
    if not strict:                               # final assignment to the final centroids
        dist, labels = search(x, xt_search, centroids)
    return KMeansResult(labels=labels, centroids=centroids + mean, distances=dist, n_iter=n_iter,
                        converged=converged, objective=float(dist.sum()), k=k, init=used)
