"""k-means with the distance GEMM in reduced precision: the exact float32 re-check of near ties
keeps every assignment equal to the float32 one (bf16 on CPU exercises the same code as TF32 on
CUDA, with a wider error band, so more rows are re-checked)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.errors import BenchError
from bench.kmeans import assign, lloyd


def _blobs(n, d, k, seed=0, spread=0.4):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d))
    return (centres[rng.integers(0, k, n)] + spread * rng.normal(size=(n, d))).astype(np.float32)


@pytest.mark.parametrize("d,k,ties", [(64, 300, True), (256, 40, True), (8, 2, False)])
def test_bf16_gemm_assignments_equal_fp32(d, k, ties):
    x = torch.from_numpy(_blobs(6000, d, k))
    c = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(1))[:k]]
    ref_codes, ref_d = assign(x, c, gemm="fp32")
    stats = {}
    codes, dists = assign(x, c, gemm="bf16", stats=stats)
    assert torch.equal(codes, ref_codes)
    # many close centroids: the band is exercised; two far-apart blobs: no row needs the exact pass
    assert (0 < stats["rechecked"] < len(x)) if ties else stats["rechecked"] < len(x) // 100
    assert torch.allclose(dists, ref_d, rtol=0.02, atol=0.05 * float(ref_d.mean()))


def test_a_near_tie_is_resolved_exactly():
    """Two centroids whose distances to a row differ by far less than bf16 resolves."""
    x = torch.tensor([[1.0, 0.0, 0.0, 0.0]] * 3)
    c = torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0 + 1e-5, 0.0], [5.0, 5.0, 5.0, 5.0]])
    ref, _ = assign(x, c, gemm="fp32")
    got, _ = assign(x, c, gemm="bf16")
    assert torch.equal(ref, got) and int(ref[0]) == 0


def test_lloyd_bf16_equals_fp32_and_inertia_within_0_1_percent():
    x = _blobs(8000, 32, 60, seed=3, spread=0.8)
    a = lloyd(x, 60, niter=15, seed=0)
    b = lloyd(x, 60, niter=15, seed=0, gemm="bf16")
    assert np.array_equal(a.codes, b.codes)
    assert abs(a.inertia - b.inertia) <= 1e-3 * a.inertia


def test_bad_gemm_is_one_line():
    with pytest.raises(BenchError, match="gemm must be one of"):
        lloyd(np.zeros((4, 2), np.float32), 2, gemm="fp8")
