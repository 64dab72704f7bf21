"""k-means for features that live on a GPU or are split across ranks.

faiss (``bench.baselines.faiss_kmeans``) is the single-process CPU path and stays the
reference. This is plain Lloyd in torch for the two cases faiss-cpu cannot serve: a CUDA
device without faiss-gpu, and features sharded over ``torchrun`` ranks, where each rank
assigns its own rows and only the (K, D) centroid sums and (K,) counts are all-reduced, so no
rank ever holds another rank's features.

Initialisation picks K global row indices from the seed (the same on every rank); the rank
that owns a row contributes it. Sums are accumulated in float64, so the result does not
depend on how the rows are split (checked against one process and against scikit-learn's
Lloyd in the tests). An empty cluster keeps its previous centroid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from bench import distributed
from bench.api import check_finite, check_k

#: rows per distance block: bounds the (rows, K) distance matrix
CHUNK = 16384


@dataclass
class LloydResult:
    codes: np.ndarray       # (n_local,) int64, cluster of each of this rank's rows
    centroids: np.ndarray   # (K, D) float32, identical on every rank
    inertia: float          # Σ over all ranks' rows of the squared distance to their centroid


def initial_indices(n_total: int, k: int, seed: int) -> np.ndarray:
    """K distinct global row indices, a function of (n_total, k, seed) only."""
    return np.sort(np.random.default_rng(seed).choice(n_total, size=k, replace=False))


def assign(x: torch.Tensor, centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid and squared distance of every row, ``CHUNK`` rows at a time."""
    c_sq = (centroids * centroids).sum(1)
    codes, dists = [], []
    for s in range(0, len(x), CHUNK):
        xb = x[s:s + CHUNK]
        d2 = (xb * xb).sum(1, keepdim=True) - 2.0 * (xb @ centroids.T) + c_sq
        best, idx = d2.min(dim=1)
        codes.append(idx)
        dists.append(best.clamp_min_(0))
    if not codes:
        return x.new_zeros(0, dtype=torch.long), x.new_zeros(0)
    return torch.cat(codes), torch.cat(dists)


def lloyd(x_local: np.ndarray, k: int, *, niter: int = 20, seed: int = 0,
          device: str | torch.device = "cpu", offset: int = 0, n_total: int | None = None) -> LloydResult:
    """``niter`` Lloyd iterations then a final assignment (faiss' convention).

    Alone: ``x_local`` is all the data. Under torchrun: rows ``[offset, offset + len(x_local))``
    of ``n_total``, and every rank must call this with the same ``k``, ``niter`` and ``seed``.
    """
    device = torch.device(device)
    x = torch.as_tensor(check_finite(np.ascontiguousarray(x_local, dtype=np.float32)), device=device)
    n_local, d = x.shape
    if n_total is None:
        n_total = int(distributed.all_reduce_sum(torch.tensor([n_local], dtype=torch.float64)).item())
    check_k(k, n_total, what="k")

    init = torch.zeros(k, d, dtype=torch.float64, device=device)
    for j, i in enumerate(initial_indices(n_total, k, seed)):
        if offset <= i < offset + n_local:
            init[j] = x[i - offset].double()
    centroids = distributed.all_reduce_sum(init).float()

    for _ in range(niter):
        codes, _ = assign(x, centroids)
        sums = torch.zeros(k, d, dtype=torch.float64, device=device).index_add_(0, codes, x.double())
        counts = torch.bincount(codes, minlength=k).double()
        sums, counts = distributed.all_reduce_sum(sums), distributed.all_reduce_sum(counts)
        filled = counts > 0
        centroids = torch.where(filled[:, None], (sums / counts.clamp_min(1)[:, None]).float(), centroids)

    codes, dists = assign(x, centroids)
    inertia = distributed.all_reduce_sum(dists.double().sum().reshape(1)).item()
    return LloydResult(codes=codes.cpu().numpy().astype(np.int64), centroids=centroids.cpu().numpy(),
                       inertia=float(inertia))
