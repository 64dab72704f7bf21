"""Batched SSIM (Wang et al. 2004) in torch, pinned to scikit-image's definition.

``skimage.metrics.structural_similarity(a, b, data_range=R, channel_axis=-1)`` with its
defaults: a 7×7 uniform window, K1 = 0.01, K2 = 0.03, sample covariance (N/(N-1)), the
mean of the SSIM map over the pixels whose window lies inside the image, averaged over
channels. The local means of each image are computed once; only the cross term
box(x·y) is per pair, as two separable 1-D box filters. Blocks of pairs run on any device.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from bench.errors import BenchError

K1, K2 = 0.01, 0.03


def _box(x: torch.Tensor, win: int) -> torch.Tensor:
    """Valid-region mean over win×win windows of (B, C, H, W) (separable)."""
    b, c, h, w = x.shape
    y = F.avg_pool2d(x.reshape(b * c, 1, h, w), (win, 1), stride=1)
    y = F.avg_pool2d(y, (1, win), stride=1)
    return y.reshape(b, c, h - win + 1, w - win + 1)


class SSIMStats:
    """Per-image local statistics, so a pair costs one box filter of the product."""

    def __init__(self, images: np.ndarray | torch.Tensor, *, data_range: float = 255.0, win_size: int = 7,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        x = torch.as_tensor(np.asarray(images) if not torch.is_tensor(images) else images)
        if x.ndim == 3:
            x = x[..., None]
        if x.ndim != 4:
            raise BenchError(f"wavelet: SSIM needs (N, H, W, C) images, got shape {tuple(x.shape)}")
        if win_size % 2 == 0 or win_size < 3:
            raise BenchError(f"wavelet: SSIM win_size must be odd and >= 3, got {win_size}")
        if min(x.shape[1:3]) < win_size:
            raise BenchError(f"wavelet: SSIM with a {win_size}x{win_size} window needs images of at least "
                             f"that size, got {x.shape[1]}x{x.shape[2]}")
        # scale to [0, 1] so float32 keeps the variance terms accurate
        self.x = x.to(device=device, dtype=dtype).permute(0, 3, 1, 2).contiguous() / float(data_range)
        self.win = win_size
        self.cov_norm = win_size * win_size / (win_size * win_size - 1.0)
        self.mu = _box(self.x, win_size)
        self.var = self.cov_norm * (_box(self.x * self.x, win_size) - self.mu * self.mu)
        self.c1, self.c2 = K1 ** 2, K2 ** 2

    def __len__(self) -> int:
        return self.x.shape[0]

    def block(self, other: SSIMStats, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """SSIM of every (rows[i], cols[j]) pair: (len(rows), len(cols))."""
        xa, xb = self.x[rows], other.x[cols]
        ma, mb = self.mu[rows][:, None], other.mu[cols][None]
        va, vb = self.var[rows][:, None], other.var[cols][None]
        nr, nc = len(rows), len(cols)
        prod = (xa[:, None] * xb[None]).reshape(nr * nc, *xa.shape[1:])
        cov = self.cov_norm * (_box(prod, self.win).reshape(nr, nc, *ma.shape[2:]) - ma * mb)
        s = ((2 * ma * mb + self.c1) * (2 * cov + self.c2)) / ((ma * ma + mb * mb + self.c1) * (va + vb + self.c2))
        return s.mean(dim=(2, 3, 4))

    def pairs(self, other: SSIMStats, i: np.ndarray, j: np.ndarray, *, chunk: int = 256) -> np.ndarray:
        """SSIM of the listed pairs (self[i[t]], other[j[t]])."""
        out = np.empty(len(i))
        dev = self.x.device
        for s in range(0, len(i), chunk):
            a = torch.as_tensor(np.ascontiguousarray(i[s:s + chunk], dtype=np.int64), device=dev)
            b = torch.as_tensor(np.ascontiguousarray(j[s:s + chunk], dtype=np.int64), device=dev)
            xa, xb = self.x[a], other.x[b]
            ma, mb, va, vb = self.mu[a], other.mu[b], self.var[a], other.var[b]
            cov = self.cov_norm * (_box(xa * xb, self.win) - ma * mb)
            v = ((2 * ma * mb + self.c1) * (2 * cov + self.c2)) / ((ma * ma + mb * mb + self.c1) * (va + vb + self.c2))
            out[s:s + chunk] = v.mean(dim=(1, 2, 3)).double().cpu().numpy()
        return out


def _block_size(stats: SSIMStats, budget: int = 1 << 24) -> int:
    """Rows per block so that a (b × b) block of product maps stays under ~budget elements."""
    per_pair = int(np.prod(stats.x.shape[1:]))
    return max(1, int(np.sqrt(budget / per_pair)))


def iter_ssim_blocks(a: SSIMStats, b: SSIMStats | None = None, *,
                     block: int | None = None) -> Iterator[tuple[slice, slice, np.ndarray]]:
    """Yield (row slice, col slice, SSIM block). With b=None only blocks on or above the
    diagonal of the symmetric a×a matrix are computed."""
    sym = b is None
    b = a if b is None else b
    bs = block or _block_size(a)
    dev = a.x.device
    for r0 in range(0, len(a), bs):
        rows = torch.arange(r0, min(r0 + bs, len(a)), device=dev)
        for c0 in range(r0 if sym else 0, len(b), bs):
            cols = torch.arange(c0, min(c0 + bs, len(b)), device=dev)
            yield (slice(r0, r0 + len(rows)), slice(c0, c0 + len(cols)),
                   a.block(b, rows, cols).double().cpu().numpy())


def ssim_matrix(a: SSIMStats, b: SSIMStats | None = None, *, block: int | None = None) -> np.ndarray:
    """Full SSIM matrix: symmetric (n×n, unit diagonal) for one set, (na×nb) for two."""
    sym = b is None
    out = np.empty((len(a), len(a) if sym else len(b)))
    for rs, cs, s in iter_ssim_blocks(a, b, block=block):
        out[rs, cs] = s
        if sym:
            out[cs, rs] = s.T
    if sym:
        np.fill_diagonal(out, 1.0)
    return out


def threshold_groups(stats: SSIMStats, threshold: float, *, block: int | None = None,
                     progress: Callable[[int], None] | None = None) -> np.ndarray:
    """The paper's O(n²) alternative: scan the upper triangle of S row by row; each image not
    yet grouped leads a group of every later ungrouped image with SSIM > threshold.

    Returns (n,) group ids (the leader's index). S is never stored: only the pairs above the
    threshold are kept while the blocks stream past.
    """
    n = len(stats)
    leader = np.full(n, -1, dtype=np.int64)
    bs = block or _block_size(stats)
    edges: list[tuple[np.ndarray, np.ndarray]] = []
    for rs, cs, s in iter_ssim_blocks(stats, block=bs):
        ii, jj = np.nonzero(s > threshold)
        gi, gj = ii + rs.start, jj + cs.start
        keep = gj > gi
        edges.append((gi[keep], gj[keep]))
        if progress is not None:
            progress(rs.stop)
    src = np.concatenate([e[0] for e in edges]) if edges else np.zeros(0, np.int64)
    dst = np.concatenate([e[1] for e in edges]) if edges else np.zeros(0, np.int64)
    order = np.lexsort((dst, src))
    src, dst = src[order], dst[order]
    starts = np.searchsorted(src, np.arange(n + 1))
    for i in range(n):
        if leader[i] >= 0:
            continue
        leader[i] = i
        nb = dst[starts[i]:starts[i + 1]]
        nb = nb[leader[nb] < 0]
        leader[nb] = i
    return leader
