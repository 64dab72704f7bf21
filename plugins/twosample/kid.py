"""``kid``: the unbiased MMD² between A and B (Kernel Inception Distance, Bińkowski et al. 2018).

k(x, y) = (xᵀy / d + 1)³ (KID's cubic kernel, torch-fidelity's and clean-fid's defaults) or
exp(−‖x − y‖² / 2σ²) with σ the median distance between images of A ∪ B (the median heuristic,
fixed once from A ∪ B so every permutation and resample uses the same kernel).

MMD²_u = Σ_{i≠j∈A} k / (n_A(n_A−1)) + Σ_{i≠j∈B} k / (n_B(n_B−1)) − 2 Σ_{A×B} k / (n_A n_B)

on all rows at once. torch-fidelity averages this estimator (equal sizes) over 100 random subsets
of 1,000 images; the mean over subsets has the same expectation and more variance, so we take
all rows (equal to torch-fidelity with one subset covering every row: tested to 1e-6).

**Draws.** The kernel matrix of A ∪ B is reduced once to block-pair sums P_kl (pairs of *distinct*
images of blocks k and l) and pair counts C_kl; a draw with block weights w (0/1 for a
permutation, resample counts for the bootstrap) scores

    wᵀ_A P w_A / wᵀ_A C w_A + wᵀ_B P w_B / wᵀ_B C w_B − 2 wᵀ_A P w_B / (N_A N_B),

two matrix-vector products. A resample that repeats an image never pairs it with its own copy
(a copy is not a second sample; its pairs with k(x, x) would bias the within-side means): the
within-side term is the weighted mean of k over pairs of distinct images. With 0/1 weights this
is exactly MMD²_u. One image per block up to :data:`SINGLE_MAX` images, else as many blocks.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from bench.api import Comparator, Comparison, DataView, Finding
from bench.errors import BenchError, DataError
from bench.statistics import Draws, make_blocks

from .common import side_features, top_rows

KERNELS = ("poly", "rbf")
#: bytes of one kernel chunk (rows × n float64): 128 MiB, at most 1,024 rows
CHUNK_BYTES = 2**27


def chunk_rows(n: int) -> int:
    return max(1, min(1024, CHUNK_BYTES // (8 * n)))
#: images of A ∪ B scored one image per block (P is n² float64: 4,096 images are 128 MiB)
SINGLE_MAX = 4096
#: rows the median heuristic looks at (all pairs of this many images of A ∪ B, chosen seeded)
MEDIAN_ROWS = 2000


def median_bandwidth(x: np.ndarray, seed: int = 0) -> float:
    """The median Euclidean distance between distinct images (at most :data:`MEDIAN_ROWS` of them)."""
    if len(x) > MEDIAN_ROWS:
        x = x[np.sort(np.random.default_rng([seed, 17]).choice(len(x), MEDIAN_ROWS, replace=False))]
    sq = (x * x).sum(1)
    d2 = np.clip(sq[:, None] + sq[None, :] - 2.0 * (x @ x.T), 0, None)
    sigma = float(np.sqrt(np.median(d2[np.triu_indices(len(x), 1)])))
    if not sigma > 0:
        raise DataError("kid: the median distance between images is 0 (most images identical); "
                        "the RBF kernel has no bandwidth; use kernel=poly")
    return sigma


def kernel(x: np.ndarray, y: np.ndarray, kind: str, sigma: float | None) -> np.ndarray:
    """k(x_i, y_j) for all rows, as torch-fidelity's ``kernel_poly`` (degree 3, γ = 1/d, c = 1) and
    ``kernel_rbf``."""
    if kind == "poly":
        return (x @ y.T / x.shape[1] + 1.0) ** 3
    d2 = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * (x @ y.T)
    return np.exp(-np.clip(d2, 0, None) / (2.0 * sigma ** 2))


def kernel_diagonal(x: np.ndarray, kind: str) -> np.ndarray:
    if kind == "poly":
        return ((x * x).sum(1) / x.shape[1] + 1.0) ** 3
    return np.ones(len(x))


def kernel_row_sums(x: np.ndarray, n_a: int, kind: str, sigma: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Each image's kernel sum over A and over B (self included), a chunk of rows at a time."""
    to_a, to_b = np.empty(len(x)), np.empty(len(x))
    chunk = chunk_rows(len(x))
    for s in range(0, len(x), chunk):
        k = kernel(x[s:s + chunk], x, kind, sigma)
        to_a[s:s + chunk], to_b[s:s + chunk] = k[:, :n_a].sum(1), k[:, n_a:].sum(1)
    return to_a, to_b


def mmd2_unbiased(to_a: np.ndarray, to_b: np.ndarray, diag: np.ndarray, n_a: int) -> dict[str, float]:
    """MMD²_u and its three terms from row sums (see the module docstring)."""
    n_b = len(diag) - n_a
    aa = (to_a[:n_a].sum() - diag[:n_a].sum()) / (n_a * (n_a - 1))
    bb = (to_b[n_a:].sum() - diag[n_a:].sum()) / (n_b * (n_b - 1))
    ab = to_b[:n_a].sum() / (n_a * n_b)
    return {"mmd2": float(aa + bb - 2.0 * ab), "mean_k_aa": float(aa), "mean_k_bb": float(bb), "mean_k_ab": float(ab)}


def block_pair_sums(x: np.ndarray, of: np.ndarray, count: int, kind: str, sigma: float | None) -> np.ndarray:
    """P_kl = Σ k(x_i, x_j) over i in block k, j in block l, i ≠ j (a chunk of rows at a time)."""
    chunk = chunk_rows(len(x))
    if count == len(x) and np.array_equal(of, np.arange(len(x))):
        p = np.empty((len(x), len(x)))
        for s in range(0, len(x), chunk):
            p[s:s + chunk] = kernel(x[s:s + chunk], x, kind, sigma)
        np.fill_diagonal(p, 0.0)
        return p
    order = np.argsort(of, kind="stable")
    xs, ofs = x[order], of[order]
    starts = np.flatnonzero(np.r_[True, ofs[1:] != ofs[:-1]])
    p = np.zeros((count, count))
    for s in range(0, len(xs), chunk):
        cols = np.add.reduceat(kernel(xs[s:s + chunk], xs, kind, sigma), starts, axis=1)
        ids = ofs[s:s + chunk]
        runs = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
        p[ids[runs]] += np.add.reduceat(cols, runs, axis=0)
    p[np.diag_indices(count)] -= np.bincount(of, weights=kernel_diagonal(x, kind), minlength=count)
    return p


class KernelDraws(Draws):
    """MMD²_u of any reweighting of A ∪ B's blocks from block-pair kernel sums (module docstring)."""

    def __init__(self, blocks, pairs: np.ndarray):
        self.blocks = blocks
        self.pairs = pairs
        self.size = blocks.size.astype(np.float64)

    def _pair_count(self, w: np.ndarray, v: np.ndarray) -> float:
        """Σ_kl w_k v_l C_kl with C_kl = n_k n_l − [k = l] n_k (pairs of distinct images)."""
        return float((w @ self.size) * (v @ self.size) - (w * v) @ self.size)

    def score(self, w_a: np.ndarray, w_b: np.ndarray) -> float:
        w_a, w_b = np.asarray(w_a, np.float64), np.asarray(w_b, np.float64)
        c_aa, c_bb = self._pair_count(w_a, w_a), self._pair_count(w_b, w_b)
        if c_aa <= 0 or c_bb <= 0:
            raise DataError("kid: needs at least 2 distinct images per side")
        pa, pb = self.pairs @ w_a, self.pairs @ w_b
        n_ab = (w_a @ self.size) * (w_b @ self.size)
        return float(w_a @ pa / c_aa + w_b @ pb / c_bb - 2.0 * (w_a @ pb) / n_ab)


class KernelInceptionDistance(Comparator):
    """Unbiased MMD² between A and B (KID); larger is more different, 0 in expectation when they
    do not differ (so a single estimate can be slightly negative)."""

    name: ClassVar[str] = "kid"
    version: ClassVar[str] = "1"
    larger_is_more_different: ClassVar[bool] = True

    def __init__(self, *, kernel: str = "poly", layer: str = "pooled"):
        self.kernel = kernel
        self.layer = layer

    def check_params(self) -> None:
        if self.kernel not in KERNELS:
            raise BenchError(f"kid: kernel must be one of {', '.join(KERNELS)}, got {self.kernel!r}")
        if not isinstance(self.layer, str):
            raise BenchError(f"kid: layer must be a layer name, got {self.layer!r}")

    def _prepare(self, a: DataView, b: DataView, seed: int) -> tuple[np.ndarray, int, float | None]:
        self.check_params()
        x, n_a = side_features(a, b, self.layer, "kid")
        sigma = median_bandwidth(x, seed) if self.kernel == "rbf" else None
        return x, n_a, sigma

    def score(self, a: DataView, b: DataView, *, seed: int = 0) -> float:
        x, n_a, sigma = self._prepare(a, b, seed)
        to_a, to_b = kernel_row_sums(x, n_a, self.kernel, sigma)
        return mmd2_unbiased(to_a, to_b, kernel_diagonal(x, self.kernel), n_a)["mmd2"]

    def compare(self, a: DataView, b: DataView, *, seed: int = 0) -> Comparison:
        x, n_a, sigma = self._prepare(a, b, seed)
        to_a, to_b = kernel_row_sums(x, n_a, self.kernel, sigma)
        diag = kernel_diagonal(x, self.kernel)
        terms = mmd2_unbiased(to_a, to_b, diag, n_a)
        n_b = len(x) - n_a
        # the MMD witness at each image, leaving the image itself out of its own side's mean:
        # > 0 where A is denser than B (A's images B lacks), < 0 where B is denser
        own = np.r_[(to_a[:n_a] - diag[:n_a]) / (n_a - 1), (to_b[n_a:] - diag[n_a:]) / (n_b - 1)]
        witness = np.r_[own[:n_a] - to_b[:n_a] / n_b, to_a[n_a:] / n_a - own[n_a:]]
        statistics = {**terms, "n_a": float(n_a), "n_b": float(n_b)}
        if sigma is not None:
            statistics["rbf_sigma"] = sigma
        detail: dict[str, Any] = {**terms, "kernel": self.kernel, "rbf_sigma": sigma, "witness": witness,
                                  "estimator": "unbiased MMD² on all rows (pairs of distinct images)"}
        return Comparison(score=terms["mmd2"], detail=detail, statistics=statistics,
                          findings=_witness_findings(witness, n_a))

    def draws(self, a: DataView, b: DataView, blocks, *, seed: int = 0) -> KernelDraws:
        """Block-pair kernel sums of A ∪ B, computed once: one image per block up to
        :data:`SINGLE_MAX` images, else that many random blocks (the kernel itself is n² d either way)."""
        x, n_a, sigma = self._prepare(a, b, seed)
        n = len(x)
        blocks = make_blocks(n_a, n - n_a, max(1, -(-n // SINGLE_MAX)), seed)
        return KernelDraws(blocks, block_pair_sums(x, blocks.of, blocks.count, self.kernel, sigma))


#: images per side a witness finding shows
TOP = 20


def _witness_findings(witness: np.ndarray, n_a: int) -> list[Finding]:
    """A's images where A is densest relative to B, and B's where B is densest relative to A."""
    out = []
    for side, idx, sign in (("a", np.arange(n_a), 1.0), ("b", np.arange(n_a, len(witness)), -1.0)):
        order = idx[np.argsort(-sign * witness[idx], kind="stable")][:TOP]
        local = order - (0 if side == "a" else n_a)
        title = (f"images of {side.upper()} where {side.upper()} is denser than "
                 f"{'B' if side == 'a' else 'A'} (MMD witness)")
        rows = [{"image": int(i), "witness": float(witness[j])} for i, j in zip(local, order)]
        images = [(label, side, idx) for label, idx in
                  top_rows(local, 10, lambda s, c: f"ranks {s + 1}–{s + len(c)}")]
        out.append(Finding(title, side=side, rows=rows, images=images))
    return out
