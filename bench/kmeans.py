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

Distances on the tensor cores (``gemm="tf32"``, the default on CUDA, or ``"bf16"``): the
(rows × K) cross term is the one large GEMM, so it runs in reduced precision, and every row whose
two nearest centroids are closer than twice the GEMM's worst-case error bound is re-assigned
with an exact float32 GEMM. Rows outside that band provably keep the float32 argmin, so
assignments equal the float32 ones (tested on CPU with bf16, where most rows need no recheck).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch

from bench import distributed
from bench.api import check_finite, check_k

#: rows per distance block: bounds the (rows, K) distance matrix
CHUNK = 16384
#: nearest centroids kept per row by the reduced-precision pass, re-ranked exactly when close
CANDIDATES = 8


@dataclass
class LloydResult:
    codes: np.ndarray       # (n_local,) int64, cluster of each of this rank's rows
    centroids: np.ndarray   # (K, D) float32, identical on every rank
    inertia: float          # Σ over all ranks' rows of the squared distance to their centroid


def initial_indices(n_total: int, k: int, seed: int) -> np.ndarray:
    """K distinct global row indices, a function of (n_total, k, seed) only."""
    return np.sort(np.random.default_rng(seed).choice(n_total, size=k, replace=False))


#: unit roundoff of the GEMM inputs per mode (TF32 keeps 10 mantissa bits, bf16 7)
UNIT_ROUNDOFF = {"tf32": 2.0 ** -11, "bf16": 2.0 ** -8}
GEMMS = ("auto", "fp32", "tf32", "bf16")


def resolve_gemm(gemm: str, device: torch.device) -> str:
    if gemm not in GEMMS:
        from bench.errors import BenchError

        raise BenchError(f"k-means gemm must be one of {', '.join(GEMMS)}, got {gemm!r}")
    if gemm == "auto":
        return "tf32" if device.type == "cuda" else "fp32"
    return gemm


@contextlib.contextmanager
def _matmul_tf32(on: bool):
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = on
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


def _cross(xb: torch.Tensor, c: torch.Tensor, gemm: str, c_low: torch.Tensor | None) -> torch.Tensor:
    """xb @ c.T in float32 (TF32 off), on TF32 tensor cores, or from bf16 inputs (fp32 accumulate)."""
    if gemm == "bf16":
        return torch.matmul(xb.to(torch.bfloat16), c_low.T, out_dtype=torch.float32) \
            if _HAS_OUT_DTYPE else (xb.to(torch.bfloat16) @ c_low.T).float()
    with _matmul_tf32(gemm == "tf32"):
        return xb @ c.T


def _probe_out_dtype() -> bool:
    try:
        a = torch.ones(2, 2, dtype=torch.bfloat16)
        return torch.matmul(a, a, out_dtype=torch.float32).dtype == torch.float32
    except (TypeError, RuntimeError):
        return False


_HAS_OUT_DTYPE = _probe_out_dtype()


def assign(x: torch.Tensor, centroids: torch.Tensor, *, gemm: str = "fp32",
           stats: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid and squared distance of every row, ``CHUNK`` rows at a time.

    ``gemm`` "tf32"/"bf16": the cross term in reduced precision; rows whose best and second-best
    distances lie within the error band are re-ranked in exact float32 (``stats["rechecked"]``
    counts them). Distances to the chosen centroids are then computed directly in float32."""
    gemm = resolve_gemm(gemm, x.device)
    c_sq = (centroids * centroids).sum(1)
    exact = gemm == "fp32"
    if not exact:
        u = UNIT_ROUNDOFF[gemm] + (2.0 ** -8 if gemm == "bf16" and not _HAS_OUT_DTYPE else 0.0)
        # |computed - exact float32 cross term| <= (2u + u^2 + 2 d u32) |x| |c|; a wrong argmin
        # needs the two nearest within twice that (for the worst centroid norm), plus margin
        c_max = float(torch.linalg.vector_norm(centroids, dim=1).max()) if len(centroids) else 0.0
        band = 2.0 * 2.0 * (2 * u + u * u + 2 * x.shape[1] * 2.0 ** -24) * c_max * 1.01
        c_low = centroids.to(torch.bfloat16) if gemm == "bf16" else None
    codes, dists = [], []
    rechecked = 0
    for s in range(0, len(x), CHUNK):
        xb = x[s:s + CHUNK]
        x_sq = (xb * xb).sum(1, keepdim=True)
        if exact:
            with _matmul_tf32(False):
                d2 = x_sq - 2.0 * (xb @ centroids.T) + c_sq
            best, idx = d2.min(dim=1)
        else:
            d2 = x_sq - 2.0 * _cross(xb, centroids, gemm, c_low) + c_sq
            m = min(CANDIDATES, d2.shape[1])
            top, top_idx = d2.topk(m, dim=1, largest=False, sorted=True)
            best, idx = top[:, 0].clone(), top_idx[:, 0].clone()
            if m >= 2:
                slack = band * x_sq.squeeze(1).sqrt()
                near = (top[:, 1] - top[:, 0]) <= slack
                rows = near.nonzero().squeeze(1)
                rechecked += len(rows)
                if len(rows):
                    # the exact argmin is among the candidates whose approximate distance is within the
                    # band of the best; when all m candidates are, the row is checked against every centroid
                    covered = (top[rows, m - 1] - top[rows, 0]) > slack[rows] if m < d2.shape[1] else \
                        torch.ones(len(rows), dtype=torch.bool, device=x.device)
                    few, full = rows[covered], rows[~covered]
                    if len(few):
                        cand = top_idx[few]                                     # (r, m)
                        xr = xb[few]
                        with _matmul_tf32(False):
                            dot = torch.bmm(centroids[cand], xr.unsqueeze(2)).squeeze(2)
                        d2r = (xr * xr).sum(1, keepdim=True) - 2.0 * dot + c_sq[cand]
                        rb, ri = d2r.min(dim=1)
                        idx[few], best[few] = cand.gather(1, ri[:, None]).squeeze(1), rb
                    if len(full):
                        xr = xb[full]
                        with _matmul_tf32(False):
                            d2r = (xr * xr).sum(1, keepdim=True) - 2.0 * (xr @ centroids.T) + c_sq
                        rb, ri = d2r.min(dim=1)
                        idx[full], best[full] = ri, rb
            # the distance to the chosen centroid in float32, not the reduced GEMM's (exact inertia)
            best = ((xb - centroids[idx]) ** 2).sum(1)
        codes.append(idx)
        dists.append(best.clamp_min_(0))
    if stats is not None:
        stats["rechecked"] = stats.get("rechecked", 0) + rechecked
    if not codes:
        return x.new_zeros(0, dtype=torch.long), x.new_zeros(0)
    return torch.cat(codes), torch.cat(dists)


def lloyd(x_local: np.ndarray, k: int, *, niter: int = 20, seed: int = 0,
          device: str | torch.device = "cpu", offset: int = 0, n_total: int | None = None,
          gemm: str = "auto") -> LloydResult:
    """``niter`` Lloyd iterations then a final assignment (faiss' convention).

    Alone: ``x_local`` is all the data. Under torchrun: rows ``[offset, offset + len(x_local))``
    of ``n_total``, and every rank must call this with the same ``k``, ``niter`` and ``seed``.
    """
    device = torch.device(device)
    gemm = resolve_gemm(gemm, device)   # auto: TF32 tensor cores on CUDA (exact recheck), fp32 on CPU
    x = torch.as_tensor(check_finite(np.ascontiguousarray(x_local, dtype=np.float32)), device=device)
    n_local, d = x.shape
    if n_total is None:
        n_total = int(distributed.all_reduce_sum(torch.tensor([n_local], dtype=torch.float64)).item())
    check_k(k, n_total, what="k")

    init = torch.zeros(k, d, dtype=torch.float64, device=device)
    chosen = initial_indices(n_total, k, seed)
    mine = np.flatnonzero((chosen >= offset) & (chosen < offset + n_local))   # one gather, not K copies
    if len(mine):
        init[torch.as_tensor(mine, device=device)] = x[torch.as_tensor(chosen[mine] - offset, device=device)].double()
    centroids = distributed.all_reduce_sum(init).float()
    x64 = x.double() if device.type == "cuda" else None   # converted once on the GPU (memory is ample there)

    for _ in range(niter):
        codes, _ = assign(x, centroids, gemm=gemm)
        sums = torch.zeros(k, d, dtype=torch.float64, device=device)
        if x64 is not None:
            sums.index_add_(0, codes, x64)
        else:   # float64 a CHUNK of rows at a time, in row order: no second, double-size copy of x
            for s in range(0, n_local, CHUNK):
                sums.index_add_(0, codes[s:s + CHUNK], x[s:s + CHUNK].double())
        counts = torch.bincount(codes, minlength=k).double()
        sums, counts = distributed.all_reduce_sum(sums), distributed.all_reduce_sum(counts)
        filled = counts > 0
        centroids = torch.where(filled[:, None], (sums / counts.clamp_min(1)[:, None]).float(), centroids)

    codes, dists = assign(x, centroids, gemm=gemm)
    inertia = distributed.all_reduce_sum(dists.double().sum().reshape(1)).item()
    return LloydResult(codes=codes.cpu().numpy().astype(np.int64), centroids=centroids.cpu().numpy(),
                       inertia=float(inertia))
