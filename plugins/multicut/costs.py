"""Edge costs of Prasse et al.: cosine similarity → min–max p → logit(p) + logit(cal).

L2-normalise, s_ij = x_i·x_j, p_ij = (s_ij − min s)/(max s − min s) with min and max over
**all pairs** i < j of the dataset, clamp p and cal to [1e-5, 1 − 1e-5], and
w_ij = log(p/(1−p)) + log(cal/(1−cal)). Positive w attracts; the zero crossing is at
p = 1 − cal, so a larger cal merges more (fewer clusters).

The complete graph is one (n, n) float32 matrix on the data's device (as the reference
front-end, which computes w in float32). Beyond memory, a sparse graph (not the paper's)
keeps the same p normalisation (min and max still come from all pairs, in a chunked pass
that never holds the full matrix) and consists of

* the exact k nearest neighbours of every image (faiss inner-product search), and
* ``r`` random other partners per image, each cost multiplied by (number of non-kNN
  pairs)/(number of sampled pairs), so that the sum of costs between any two groups of
  images is an unbiased estimate of the complete graph's. Without them every kNN edge is
  attractive and GAEC merges each connected component whole (measured: one cluster).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from bench.errors import BenchError

#: the reference's clamp of p and cal
EPS = 1e-5
#: a similarity range below this is float32 rounding noise: all pairs are equally similar
RANGE_TOL = 1e-5

#: Published cal per embedding model (README of KathPra/MP4VisualFrameDetection, tuned on
#: ImageNette/ImageWoof train). Keys are normalised names (lower case, alphanumerics only);
#: the first key contained in the extractor's normalised name wins, so CLIP comes first.
PAPER_CAL: dict[str, float] = {
    "clipvitb32": 0.5,          # CLIP ViT-B/32 (openai)
    "dinov2": 0.6,
    "convnextv2": 0.7,
    "inceptionresnetv2": 0.5,
    "vgg19bn": 0.7,
    "resnet50": 0.7,            # torchvision IMAGENET1K_V2
    "vitb32": 0.7,              # torchvision ViT-B/32 IMAGENET1K_V1
}
#: Our offline extractors (not in the paper, no tuned value): the supplement's own rule
#: cal = 0.94 − 0.98 μ evaluated on the embedded datasets, averaged and rounded, then fixed
#: so that cal does not move with the dataset. tiny-vit: μ = 0.60 (synth-passnet), 0.72
#: (digits) → 0.35, 0.23; pixels (16 and 32 px): μ = 0.63–0.70 → 0.25–0.37. Both → 0.3.
#: (cal = 0.5 merges these narrow-cone features into 1–3 clusters.)
OFFLINE_CAL: dict[str, float] = {"tinyvit": 0.3, "pixels": 0.3}


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def default_cal(*names: str) -> tuple[float | None, str]:
    """(cal, source) for an extractor, tried by each name in turn (registry name, then
    architecture); (None, reason) when no table has an entry."""
    for raw in names:
        key = _norm(raw or "")
        if not key or ("clip" in key and "vitb32" not in key):   # CLIP RN-50 has no published cal
            continue
        for table, source in ((PAPER_CAL, "paper table"), (OFFLINE_CAL, "bench default")):
            for name, value in table.items():
                if name in key:
                    return value, f"{source} ({name})"
    shown = " / ".join(repr(n) for n in names if n)
    return None, f"no published cal for {shown or 'this extractor'}"


def adaptive_cal(mean_p: float) -> float:
    """Supplement A.1: cal = 0.94 − 0.98 μ, μ = mean normalised similarity (clamped)."""
    return float(min(max(0.94 - 0.98 * mean_p, EPS), 1.0 - EPS))


def check_cal(cal: object) -> None:
    if cal is None or cal == "auto":
        return
    if isinstance(cal, bool) or not isinstance(cal, (int, float)) or not (0.0 < float(cal) < 1.0):
        raise BenchError(f"multicut: cal must be a number in (0, 1), 'auto' or None, got {cal!r}")


def logit(p: float) -> float:
    p = min(max(float(p), EPS), 1.0 - EPS)
    return math.log(p / (1.0 - p))


@dataclass
class PairStats:
    """Similarity over all pairs i < j: min, max, mean (float64), and the mean of p."""

    n: int
    s_min: float
    s_max: float
    s_mean: float

    @property
    def degenerate(self) -> bool:
        """All pairs equally similar (constant embeddings, or N = 2): p is undefined."""
        return self.n < 2 or not (self.s_max - self.s_min > RANGE_TOL)

    @property
    def mean_p(self) -> float:
        if self.degenerate:
            return 1.0
        return (self.s_mean - self.s_min) / (self.s_max - self.s_min)


def normalise(x: np.ndarray | torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """L2-normalised float32 rows on ``device`` (an all-zero row stays zero: s = 0 to all)."""
    t = torch.as_tensor(x).to(device=device, dtype=torch.float32)
    return F.normalize(t, dim=1, eps=1e-12)


def _mean_pair_similarity(xn: torch.Tensor) -> float:
    """Mean of x_i·x_j over i < j in closed form: (‖Σx‖² − Σ‖x‖²) / (n(n−1))."""
    n = xn.shape[0]
    if n < 2:
        return 1.0
    x64 = xn.double()
    total = x64.sum(0)
    return float(((total @ total) - (x64 * x64).sum()) / (n * (n - 1)))


def similarity_matrix(xn: torch.Tensor) -> tuple[torch.Tensor, PairStats]:
    """S = X Xᵀ (n, n) float32 and its pair statistics (diagonal excluded)."""
    n = xn.shape[0]
    S = xn @ xn.T
    if n < 2:
        return S, PairStats(n, 1.0, 1.0, 1.0)
    S.fill_diagonal_(float("inf"))
    s_min = float(S.min())
    S.fill_diagonal_(float("-inf"))
    s_max = float(S.max())
    S.fill_diagonal_(1.0)
    return S, PairStats(n, s_min, s_max, _mean_pair_similarity(xn))


def pair_stats_chunked(xn: torch.Tensor, *, chunk_bytes: int = 256 * 2**20) -> PairStats:
    """Min and max similarity over all pairs without the full matrix (row blocks)."""
    n = xn.shape[0]
    if n < 2:
        return PairStats(n, 1.0, 1.0, 1.0)
    rows = max(1, min(n, chunk_bytes // (4 * n)))
    s_min, s_max = math.inf, -math.inf
    for r0 in range(0, n, rows):
        block = xn[r0:r0 + rows] @ xn.T
        idx = torch.arange(block.shape[0], device=block.device)
        block[idx, idx + r0] = float("inf")
        s_min = min(s_min, float(block.min()))
        block[idx, idx + r0] = float("-inf")
        s_max = max(s_max, float(block.max()))
    return PairStats(n, s_min, s_max, _mean_pair_similarity(xn))


def costs_(S: torch.Tensor, stats: PairStats, cal: float) -> torch.Tensor:
    """Turn a similarity matrix (or vector) into edge costs **in place**; returns it.

    Degenerate similarity (all pairs equal within ``RANGE_TOL``) gives p = 1 for every pair:
    nothing tells the images apart, so they are as similar as the data allows.
    """
    if stats.degenerate:
        S.fill_(1.0)
    else:
        S.sub_(stats.s_min).div_(stats.s_max - stats.s_min)
    S.clamp_(EPS, 1.0 - EPS)
    S.logit_()
    S.add_(logit(cal))
    if S.dim() == 2:
        S.fill_diagonal_(0.0)
    return S


def knn_edges(xn: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetrised exact kNN graph (faiss inner product): unique edges (i < j) and their s."""
    import faiss

    x = np.ascontiguousarray(xn.detach().cpu().numpy(), dtype=np.float32)
    n, d = x.shape
    k = int(min(k, n - 1))
    if k < 1:
        return np.zeros((0, 2), dtype=np.int64), np.zeros(0, dtype=np.float32)
    index = faiss.IndexFlatIP(d)
    index.add(x)
    _, nbrs = index.search(x, k + 1)
    rows = np.repeat(np.arange(n), k + 1).reshape(n, k + 1)
    not_self = nbrs != rows
    # keep k neighbours per row: drop self, or the last one if self was crowded out by ties
    keep = not_self & (np.cumsum(not_self, axis=1) <= k) & (nbrs >= 0)
    u, v = rows[keep], nbrs[keep]
    lo, hi = np.minimum(u, v), np.maximum(u, v)
    key = np.unique(lo.astype(np.int64) * n + hi)
    uv = np.stack([key // n, key % n], axis=1)
    return uv, pair_similarity(xn, uv)


def random_far_edges(n: int, r: int, exclude: np.ndarray, seed: int) -> tuple[np.ndarray, float]:
    """``r`` uniform random partners per image, minus the pairs in ``exclude`` (i < j rows).

    Returns the unique edges (i < j) and the weight that makes them stand for every pair
    outside ``exclude``: (number of such pairs) / (number sampled).
    """
    if r < 1 or n < 2:
        return np.zeros((0, 2), dtype=np.int64), 0.0
    rng = np.random.default_rng(seed)
    a = np.repeat(np.arange(n, dtype=np.int64), r)
    b = rng.integers(0, n - 1, size=len(a), dtype=np.int64)
    b += b >= a                                         # never the image itself
    key = np.unique(np.minimum(a, b) * n + np.maximum(a, b))
    if len(exclude):
        key = np.setdiff1d(key, exclude[:, 0].astype(np.int64) * n + exclude[:, 1], assume_unique=True)
    if len(key) == 0:
        return np.zeros((0, 2), dtype=np.int64), 0.0
    others = n * (n - 1) // 2 - len(exclude)
    return np.stack([key // n, key % n], axis=1), others / len(key)


def pair_similarity(xn: torch.Tensor, uv: np.ndarray, *, chunk: int = 65536) -> np.ndarray:
    """s = x_u · x_v for the given pairs (float32), in chunks of pairs to bound memory."""
    x = xn.detach().cpu().numpy()
    out = np.empty(len(uv), dtype=np.float32)
    for start in range(0, len(uv), chunk):
        part = uv[start:start + chunk]
        out[start:start + chunk] = np.einsum("ij,ij->i", x[part[:, 0]], x[part[:, 1]])
    return out
