"""Comparison statistics in one place: blocks, the permutation null, p-values, the interval
(half-sampling or bootstrap) and multiple-testing adjustment. ``bench compare``, ``bench
summarise`` and the evaluator all call this module; nothing else draws nulls or resamples.

**Blocks and draws.** Each side is split at random into blocks of images (one image per block
while the comparator's per-block state fits the memory budget; beyond it as few blocks as the budget
needs and at most :data:`MAX_BLOCKS_PER_SIDE` a side). A comparator turns its images into
a :class:`Draws` object once — additive statistics per block (FD's count, sum and sum of outer
products; DNA's histograms) or a graph on A ∪ B (wavelet's and multicut's) — and scores any
assignment of blocks to sides from it: a permutation draw reassigns blocks, a bootstrap resample
reweights them. Every image passes through the network once per compare, whatever the number
of draws. A block permutation is an exact test when blocks are formed at random: under "no
difference" the blocks are exchangeable, so the observed assignment is one more draw from the
null. Blocks of different sizes are only exchanged with blocks of their own size, so every draw
keeps the sides' sizes.

**Interval.** A plug-in divergence grows as its effective sample shrinks and a resample with
replacement repeats images, so percentile bootstrap intervals of FD or DNA sit above the score
(they excluded it in real runs). The *basic* (centred) bootstrap interval [2θ̂ − q97.5, 2θ̂ − q2.5]
moves the resamples' bias back, but only part of it where the bias is large next to the spread
(FD at n ≈ d: 0.58 coverage). For comparators that declare how their bias shrinks with n
(``Comparator.bias_rates``: FD as 1/n, DNA's EMD between 1/√n and 1/n) ``bench compare`` reports
the *half-sampling* interval instead (:func:`subsample_interval`): complementary halves of each
side's blocks without replacement (real samples of n/2, no repeated images) give the bias by
extrapolation from n/2 to n and the standard error of the bias-corrected score. Other comparators
keep the basic interval (:func:`basic_interval`, the reference). Coverage of a known truth is
measured by simulation (tests and benchmarks/test_calibration_bench.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bench.errors import BenchError, DataError

#: bootstrap resamples by default
DEFAULT_BOOTSTRAP = 100
#: the interval's level
CI_LEVEL = 0.95
#: most draws a compare accepts (each draw is one score; a typo of 10^9 would never end)
MAX_DRAWS = 100_000
#: per-block state memory of one compare (both sides), and of a saved summary's side A: every draw
#: reads all block states once, so this also bounds a draw's cost (256 MiB: FD at 384-D keeps 226
#: blocks, about 0.1 s a draw on two cores)
STATE_BUDGET_BYTES = 2**28
SUMMARY_BUDGET_BYTES = 2**28
#: most blocks per side once blocks hold several images. An exact block permutation test needs
#: random blocks, not many (128 + 128 blocks give C(256, 128) ≈ 10^75 assignments), while every draw
#: reads every block's state: without a cap, small states (FD at 64-D: 33 KB a block) would fill the
#: budget with thousands of blocks and every draw would read 256 MiB. While one image per block fits
#: the budget, blocks stay single images (the block null is then the brute-force null).
MAX_BLOCKS_PER_SIDE = 128


def checked_score(value: float, who: str, n_a: int, n_b: int) -> float:
    """A NaN or infinite score is an error, never a number in a record."""
    score = float(value)
    if not np.isfinite(score):
        raise DataError(f"{who}: the comparison score is {score} ({n_a} vs {n_b} images)")
    return score


def p_value(observed: float, null: np.ndarray, direction: float) -> float:
    """(1 + #draws at least as different as observed) / (1 + #draws): never 0, valid at any draw count."""
    null = np.asarray(null, dtype=np.float64)
    hits = int(np.sum(direction * null >= direction * observed - 1e-12 * max(1.0, abs(observed))))
    return (1 + hits) / (1 + len(null))


def check_draws(value: int | None, what: str, *, minimum: int) -> None:
    if value is None:
        return
    if value < minimum or value > MAX_DRAWS:
        raise BenchError(f"{what} must be from {minimum} to {MAX_DRAWS:,}, got {value}")


# --------------------------------------------------------------------------- blocks


@dataclass(frozen=True)
class Blocks:
    """Which block each image of A ∪ B is in: ``of[i]`` for image i (A's first), blocks of A first.

    ``size[k]`` images in block k; ``side[k]`` 0 for A's blocks, 1 for B's."""

    of: np.ndarray
    size: np.ndarray
    side: np.ndarray

    @property
    def count(self) -> int:
        return len(self.size)

    @property
    def n_a(self) -> int:
        return int(self.size[self.side == 0].sum())

    @property
    def n_b(self) -> int:
        return int(self.size[self.side == 1].sum())

    def exchangeable(self) -> bool:
        """Whether a permutation can move anything: some block size occurs on both sides."""
        return bool(set(self.size[self.side == 0].tolist()) & set(self.size[self.side == 1].tolist()))

    def describe(self) -> str:
        """E.g. "9 + 9 blocks of 111 images (remainders: A 1, B 101)": the full blocks a side, then the
        images of each side's one smaller block."""
        full = int(self.size.max()) if len(self.size) else 0
        counts = [int(((self.side == s) & (self.size == full)).sum()) for s in (0, 1)]
        rest = [int(self.size[(self.side == s) & (self.size < full)].sum()) for s in (0, 1)]
        text = f"{counts[0]} + {counts[1]} blocks of {full} image{'s' * (full != 1)}"
        if any(rest):
            text += f" (remainders: A {rest[0]}, B {rest[1]})"
        return text


def block_size(n_a: int, n_b: int, state_bytes: int, budget: int = STATE_BUDGET_BYTES,
               most_per_side: int | None = None) -> int:
    """Images per block: 1 while one state per image fits ``budget``, else the fewest that keep the
    states within ``budget`` (two blocks of it left for the sides' remainder blocks) and each side at
    most :data:`MAX_BLOCKS_PER_SIDE` full blocks; ``most_per_side`` (``bench compare --blocks``) caps
    the full blocks a side in either case. Never more than the smaller side, so that each side has a
    block of that size to exchange (that bound wins over the others)."""
    n = n_a + n_b
    fits = state_bytes <= 0 or n * state_bytes <= budget
    if fits and most_per_side is None:
        return 1
    size = 1.0 if fits else np.ceil(n / max(2, budget // state_bytes - 2))
    size = max(size, np.ceil(max(n_a, n_b) / (most_per_side or MAX_BLOCKS_PER_SIDE)))
    smallest = min(k for k in (n_a, n_b) if k > 0)   # one side alone: a saved summary's blocks
    return int(max(1, min(size, smallest)))


def side_blocks(n: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A side of ``n`` images in random blocks of exactly ``size``, the ``n mod size`` left over in
    one smaller block: (block of each image, block sizes).

    Exactly ``size``, because a permutation only exchanges blocks of equal size: blocks sized
    ``n // count`` per side (the old rule) gave 1,000 images 111–112 per block and 1,100 images 110,
    so no block could move and every null draw was the observed split (p = 1)."""
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    if size <= 1:
        return np.arange(n, dtype=np.int64), np.ones(n, dtype=np.int64)
    full, rest = divmod(n, size)
    sizes = np.r_[np.full(full, size, dtype=np.int64), np.array([rest] if rest else [], dtype=np.int64)]
    of = np.repeat(np.arange(len(sizes)), sizes)
    if len(sizes) < n:
        of = of[rng.permutation(n)]
    return of, sizes


def make_blocks(n_a: int, n_b: int, size: int, seed: int) -> Blocks:
    """Random blocks of each side (one image per block when ``size`` is 1, in image order)."""
    rng = np.random.default_rng([seed, 3])
    of_a, size_a = side_blocks(n_a, size, rng)
    of_b, size_b = side_blocks(n_b, size, rng)
    return Blocks(np.concatenate([of_a, of_b + len(size_a)]), np.concatenate([size_a, size_b]),
                  np.r_[np.zeros(len(size_a), np.int64), np.ones(len(size_b), np.int64)])


# --------------------------------------------------------------------------- draws


class Draws:
    """A comparison prepared for many draws: ``score(w_a, w_b)`` with one weight per block
    (0/1 for a permutation draw, resample counts for the bootstrap). Comparators return one from
    ``Comparator.draws``; :class:`AdditiveDraws` covers every comparator whose statistics merge
    by addition."""

    blocks: Blocks

    def score(self, w_a: np.ndarray, w_b: np.ndarray) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def observed(self) -> float:
        side = self.blocks.side
        return self.score((side == 0).astype(np.float64), (side == 1).astype(np.float64))


@dataclass
class AdditiveDraws(Draws):
    """Per-block statistics (``arrays[name]`` with the block on axis 0) and the comparator's
    ``finalize(stats_a, stats_b) -> score``; a side's statistics are the weighted sum of its blocks'.

    Non-negative integer states (DNA's counts) below 2**24 are kept as float32, which holds them
    exactly: a draw then sums them with one float32 GEMV and no cast, and every sum whose bound
    (largest weight × the column's total over all blocks) stays below 2**24 is exact in float32; the
    columns that could pass it are summed in float64. So the totals are the exact integer sums, bit
    for bit as before. ``own=True``: the caller keeps no reference to ``arrays``' integer arrays, which
    are then converted in place (no second copy of the states)."""

    blocks: Blocks
    arrays: dict[str, np.ndarray]
    finalize: Callable[[dict[str, np.ndarray], dict[str, np.ndarray]], float]
    #: values that are the same for every block (JSON-able or arrays), passed through unchanged
    constants: dict[str, Any] = field(default_factory=dict)
    own: bool = False

    def __post_init__(self) -> None:
        self.arrays = dict(self.arrays)
        #: per state: its (blocks, values) view, the column totals over all blocks (float64) and,
        #: for integer states kept as float32, the columns by decreasing total
        self._flat: dict[str, np.ndarray] = {}
        self._total: dict[str, np.ndarray] = {}
        self._by_total: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        ones = np.ones((1, len(self.blocks.size)))
        for k, v in self.arrays.items():
            flat = v.reshape(len(v), -1)
            exact = (np.issubdtype(flat.dtype, np.integer) and flat.size > 0
                     and int(flat.min()) >= 0 and int(flat.max()) < _FLOAT32_EXACT)
            if exact:
                flat = _as_float32(flat, in_place=self.own)
                self.arrays[k] = flat.reshape(v.shape)
            self._flat[k] = flat
            self._total[k] = _weighted_sums(ones, flat)[0]
            if exact:
                order = np.argsort(-self._total[k], kind="stable")
                self._by_total[k] = (order, self._total[k][order])

    def totals(self, w: np.ndarray) -> list[dict[str, np.ndarray]]:
        """Each row of ``w`` (sides × blocks) summed over the blocks, reading every state once per draw.

        A row is summed over its nonzero blocks' range only (a resample's sides are disjoint ranges);
        when two rows add up to one everywhere (a permutation draw), the second is the column totals
        minus the first. Nothing is copied per draw but the sums (float64 states: to round-off the
        same sums; integer states: exact)."""
        w = np.asarray(w, dtype=np.float64)
        spans = []
        for row in w:
            nz = np.flatnonzero(row)
            spans.append((int(nz[0]), int(nz[-1]) + 1) if len(nz) else (0, 0))
        rest = None   # (row, from row): row = totals − from row
        if len(w) == 2 and sum(hi - lo for lo, hi in spans) > w.shape[1] and np.all(w[0] + w[1] == 1.0):
            rest = (1, 0) if spans[0][1] - spans[0][0] <= spans[1][1] - spans[1][0] else (0, 1)
        out: list[dict[str, np.ndarray]] = [{} for _ in range(len(w))]
        for k, v in self.arrays.items():
            sums = [None] * len(w)
            for i, (lo, hi) in enumerate(spans):
                if rest is None or i != rest[0]:
                    sums[i] = self._row_sum(k, w[i, lo:hi], lo, hi)
            if rest is not None:
                sums[rest[0]] = self._total[k] - sums[rest[1]]
            for i in range(len(w)):
                out[i][k] = sums[i].reshape(v.shape[1:])
        for o in out:
            o.update(self.constants)
        return out

    def _row_sum(self, k: str, w: np.ndarray, lo: int, hi: int) -> np.ndarray:
        """Σ_j w[j] · state k of block lo + j, float64."""
        flat = self._flat[k][lo:hi]
        if k not in self._by_total:
            return _weighted_sums(w[None], flat)[0]
        top = float(w.max()) if len(w) else 0.0
        if top <= 0 or not np.all(w >= 0) or not np.all(w == np.floor(w)):
            return _weighted_sums(w[None], flat)[0]
        order, sorted_total = self._by_total[k]
        # columns whose sum could reach 2**24 (largest weight × total over all blocks): float64
        wide = int(np.searchsorted(-sorted_total, -(_FLOAT32_EXACT / top), side="right"))
        if wide > flat.shape[1] // 8:
            return _weighted_sums(w[None], flat)[0]
        sums = (w.astype(np.float32) @ flat).astype(np.float64)
        if wide:
            cols = order[:wide]
            sums[cols] = w @ flat[:, cols].astype(np.float64)
        return sums

    def score(self, w_a: np.ndarray, w_b: np.ndarray) -> float:
        a, b = self.totals(np.stack([np.asarray(w_a, np.float64), np.asarray(w_b, np.float64)]))
        return float(self.finalize(a, b))


#: bytes converted at once when states are cast (float64 columns in :func:`_weighted_sums`, float32
#: rows in :func:`_as_float32`): memory stays that of the states
_CAST_BYTES = 2**24
#: integers below this are exact in float32, and so are sums of them that stay below it
_FLOAT32_EXACT = 2**24


def _weighted_sums(w: np.ndarray, flat: np.ndarray) -> np.ndarray:
    """``w @ flat`` in float64; other dtypes are cast a slice of columns at a time (memory stays that
    of the states)."""
    if flat.dtype == np.float64:
        return w @ flat
    step = max(1, _CAST_BYTES // (8 * max(1, len(flat))))
    return np.concatenate([w @ flat[:, c:c + step].astype(np.float64) for c in range(0, flat.shape[1], step)]
                          + [np.zeros((len(w), 0))], axis=1)


def _as_float32(flat: np.ndarray, *, in_place: bool) -> np.ndarray:
    """Integer ``flat`` as float32 (exact below 2**24); 4-byte integers owned by the caller may be
    converted in place, a slice of rows at a time."""
    if not (in_place and flat.dtype.itemsize == 4 and flat.flags.c_contiguous and flat.flags.writeable):
        return flat.astype(np.float32)
    out = flat.view(np.float32)
    step = max(1, _CAST_BYTES // (4 * max(1, flat.shape[1])))
    for r in range(0, len(flat), step):
        out[r:r + step] = flat[r:r + step].astype(np.float32)
    return out


def split_saved(saved: dict[str, Any], who: str) -> tuple[dict[str, Any], dict[str, np.ndarray], np.ndarray]:
    """(context, block states, block sizes) of a saved summary's ``context.*`` / ``state.*`` entries."""
    context = {k.partition(".")[2]: v for k, v in saved.items() if k.startswith("context.")}
    states = {k.partition(".")[2]: np.asarray(v) for k, v in saved.items()
              if k.startswith("state.") and k not in ("state.block_size", "state.block_sizes")}
    sizes = np.asarray(saved.get("state.block_sizes", []), dtype=np.int64).reshape(-1)
    if not states or len(sizes) == 0 or (sizes < 1).any() or any(len(v) != len(sizes) for v in states.values()):
        raise BenchError(f"{who}: the saved block states do not match their block sizes; summarise the dataset again")
    return context, states, sizes


def check_mergeable(a: dict[str, np.ndarray], b: dict[str, np.ndarray], who: str) -> None:
    """ONE line when two sides' states cannot be added (other statistics or shapes)."""
    if set(a) != set(b) or any(a[k].shape[1:] != b[k].shape[1:] for k in a):
        raise BenchError(f"{who}: the saved statistics do not merge with B's (different names or shapes); "
                         "summarise A again with this bench, extractor and parameters")


def rank_state_info(states: dict[str, np.ndarray], **identity: Any) -> dict[str, Any]:
    """What one torchrun rank tells the others about its block states before any is sent: who made
    them (``identity``: bench version, method, parameters, extractor, context digest) and each
    array's dtype and shape past the block axis (empty for a rank that owns no block)."""
    return {**identity, "arrays": {k: [v.dtype.str, list(v.shape[1:])] for k, v in states.items()}}


def check_rank_states(infos: list[dict[str, Any]], who: str) -> None:
    """ONE line when the ranks' block states cannot be merged: made by another bench, method version,
    parameters, extractor or context (DNA's ranges), or other statistics, shapes or dtypes."""
    first = infos[0]
    for rank, info in enumerate(infos[1:], start=1):
        for key in sorted(set(first) | set(info)):
            mine, theirs = first.get(key), info.get(key)
            if key == "arrays" and (not mine or not theirs):
                continue   # a rank with no block sends no arrays
            if mine != theirs:
                shown = [str(x) if len(str(x)) <= 80 else str(x)[:77] + "..." for x in (mine, theirs)]
                raise BenchError(f"{who}: rank {rank}'s block states do not merge with rank 0's ({key}: rank 0 "
                                 f"{shown[0]}, rank {rank} {shown[1]}); run every rank with the same bench, "
                                 "extractor and parameters")


def place_rank_states(parts: list[tuple[np.ndarray, dict[str, np.ndarray]]], count: int,
                      who: str) -> dict[str, np.ndarray]:
    """The block states of all ranks as one process would hold them: rank r computed blocks
    ``parts[r][0]`` whole, so merging is placing rows, never adding floats (bit for bit)."""
    template = next((states for ids, states in parts if len(ids)), None)
    if template is None:
        raise BenchError(f"{who}: no rank computed any block state")
    out = {k: np.empty((count, *v.shape[1:]), dtype=v.dtype) for k, v in template.items()}
    filled = np.zeros(count, dtype=np.int64)
    for ids, states in parts:
        if len(ids) and (np.min(ids) < 0 or np.max(ids) >= count):
            raise BenchError(f"{who}: a rank sent blocks outside the {count} blocks of this summary")
        if len(ids):
            for k in out:
                out[k][ids] = states[k]
            np.add.at(filled, np.asarray(ids, dtype=np.int64), 1)
    if (filled != 1).any():
        raise BenchError(f"{who}: the ranks' blocks do not tile the {count} blocks once each "
                         f"({int((filled == 0).sum())} missing, {int((filled > 1).sum())} twice)")
    return out


def join_blocks(size_a: np.ndarray, of_b: np.ndarray, size_b: np.ndarray) -> Blocks:
    """Blocks of a saved A (sizes only: its images are not at hand) followed by B's."""
    return Blocks(np.concatenate([np.zeros(int(size_a.sum()), np.int64), of_b + len(size_a)]),
                  np.concatenate([size_a, size_b]),
                  np.r_[np.zeros(len(size_a), np.int64), np.ones(len(size_b), np.int64)])


def permutation_weights(blocks: Blocks, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One permutation draw: blocks reassigned at random among blocks of their own size, each side
    keeping its count of blocks of every size (so its number of images)."""
    new_side = np.empty(blocks.count, dtype=np.int64)
    for s in np.unique(blocks.size):
        idx = np.flatnonzero(blocks.size == s)
        new_side[idx] = blocks.side[idx][rng.permutation(len(idx))]
    return (new_side == 0).astype(np.float64), (new_side == 1).astype(np.float64)


def permutation_null(draws: Draws, n_draws: int, seed: int) -> np.ndarray:
    """Scores of ``n_draws`` block permutations.

    With one image per block the draws are the same permutations as :func:`brute_force_null`
    (``rng.permutation(n)``, the first n_A to A), so the two p-values are equal (tested)."""
    rng = np.random.default_rng([seed, 7])
    b = draws.blocks
    out = np.empty(n_draws)
    singles = bool((b.size == 1).all())
    for k in range(n_draws):
        if singles:
            perm = rng.permutation(b.count)
            w_a = np.zeros(b.count)
            w_a[perm[: b.n_a]] = 1.0
            out[k] = draws.score(w_a, 1.0 - w_a)
        else:
            out[k] = draws.score(*permutation_weights(b, rng))
    return out


def bootstrap_weights(blocks: Blocks, rng: np.random.Generator, sides=(0, 1)) -> tuple[np.ndarray, np.ndarray]:
    """One bootstrap resample: each side's blocks drawn with replacement within that side (a side
    not in ``sides`` keeps its blocks once)."""
    out = []
    for s in (0, 1):
        idx = np.flatnonzero(blocks.side == s)
        w = np.zeros(blocks.count)
        if s in sides:
            np.add.at(w, idx[rng.integers(0, len(idx), len(idx))], 1.0)
        else:
            w[idx] = 1.0
        out.append(w)
    return out[0], out[1]


def bootstrap(draws: Draws, reps: int, seed: int, sides=(0, 1)) -> np.ndarray:
    """Scores of ``reps`` block-bootstrap resamples (each side within itself)."""
    rng = np.random.default_rng([seed, 11])
    out, degenerate = [], 0
    for _ in range(reps):
        try:
            out.append(draws.score(*bootstrap_weights(draws.blocks, rng, sides)))
        except DataError:   # e.g. a resample of a 2-image side that drew one image twice
            degenerate += 1
    if reps and len(out) < max(2, reps // 10):
        raise DataError(f"{degenerate} of {reps} bootstrap resamples could not be scored (too few distinct images "
                        "per side); use --bootstrap 0 or more images")
    return np.asarray(out)


@dataclass(frozen=True)
class Interval:
    low: float
    high: float
    #: the estimate with its small-sample bias moved back (basic: 2θ̂ − mean(θ*); half-sampling:
    #: θ̂ − (mean(θ½) − θ̂) / (2^r − 1), the middle of the range when r is a range)
    bias_corrected: float
    #: mean of the resamples (basic) or of the half-samples
    bootstrap_mean: float
    reps: int
    method: str = "basic bootstrap"
    #: the standard error used (half-sampling) or None
    sd: float | None = None
    #: one line when the bias is known only up to a range wider than the sampling error (half-sampling
    #: with a range of rates: the interval spans it)
    note: str | None = None


def basic_interval(score: float, boot: np.ndarray, level: float = CI_LEVEL) -> Interval:
    """The basic (centred) bootstrap interval [2θ̂ − q_hi, 2θ̂ − q_lo]; see the module docstring."""
    boot = np.asarray(boot, dtype=np.float64)
    alpha = (1.0 - level) / 2
    q_lo, q_hi = np.quantile(boot, [alpha, 1.0 - alpha])
    return Interval(2 * score - q_hi, 2 * score - q_lo, 2 * score - float(boot.mean()), float(boot.mean()), len(boot))


def percentile_interval(boot: np.ndarray, level: float = CI_LEVEL) -> tuple[float, float]:
    """The percentile interval, kept for comparison in the coverage benchmark."""
    alpha = (1.0 - level) / 2
    lo, hi = np.quantile(np.asarray(boot, dtype=np.float64), [alpha, 1.0 - alpha])
    return float(lo), float(hi)


# --------------------------------------------------------------------------- half-sampling


def half_weights(blocks: Blocks, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A random half of each side's blocks without replacement and its complement (an odd count is
    split one way or the other at random): (w_a, w_b) of the half, then of the complement."""
    half = np.zeros(blocks.count)
    for s in (0, 1):
        idx = np.flatnonzero(blocks.side == s)
        m = len(idx) // 2 + int(len(idx) % 2 == 1 and rng.random() < 0.5)
        half[rng.choice(idx, size=m, replace=False)] = 1.0
    a, b = (blocks.side == 0).astype(np.float64), (blocks.side == 1).astype(np.float64)
    return half * a, half * b, (1.0 - half) * a, (1.0 - half) * b


@dataclass(frozen=True)
class Subsamples:
    """Scores of complementary half-samples without replacement: ``half[k]`` of a random half of each
    side's blocks, ``other[k]`` of the rest; the comparator's bias rates
    (:attr:`bench.api.Comparator.bias_rates`)."""

    half: np.ndarray
    other: np.ndarray
    rates: tuple[float, ...] = (1.0,)

    @property
    def mean(self) -> float:
        return float((self.half.mean() + self.other.mean()) / 2)

    def _variances(self) -> tuple[float, float]:
        a, b = (self.half - self.other) / 2, (self.half + self.other) / 2
        return float(np.var(a, ddof=1)), float(np.var(b, ddof=1))

    def _smooth_variance(self) -> float:
        """var(A) − var(B), kept within [var(A)/2, var(A)] (see :meth:`sd`)."""
        var_a, var_b = self._variances()
        return min(var_a, max(var_a / 2, var_a - var_b))

    @property
    def smooth(self) -> bool:
        """Bias rate 1 alone: a smooth function of moments (FD), whose U-statistic expansion
        :meth:`sd` uses; a range of rates marks a non-smooth score (DNA's |F̂_A − F̂_B|)."""
        return tuple(self.rates) == (1.0,)

    def sd(self, rate: float = 1.0) -> float:
        """Standard error of the score bias-corrected at ``rate``, from the pairs (balanced halves).

        Over random splits, a pair's difference A = (θ_H − θ_H̄)/2 has the score's spread and its
        mean B = (θ_H + θ_H̄)/2 the spread of the bias estimate. For a smooth score write its
        variance at n as L + Q, L the linear (first-order) part and Q the pair terms of a
        U-statistic expansion: var(A) = L + 2Q (the pair terms within either half), var(B) = Q (no
        linear part), and the bias-corrected score 2θ̂ − mean(B) keeps the full sample's pair terms,
        variance L + Q = var(A) − var(B), kept within [var(A)/2, var(A)] (L, Q ≥ 0). (var(A) alone
        is a half-sample's spread: too wide where n is near the dimension.) For a non-smooth score
        the bias estimate's own variation counts in full: var(A) + k²·var(B), k = 1/(2^r − 1) its
        weight in θ̂ − k·(mean(B) − θ̂). Both add var(B)·k²/K for mean(B) over K pairs."""
        var_a, var_b = self._variances()
        k = 1.0 / (2.0**rate - 1.0)
        mc = k * k * var_b / len(self.half)
        if self.smooth:
            return float(np.sqrt(self._smooth_variance() + mc))
        return float(np.sqrt(var_a + k * k * var_b + mc))

    @property
    def dof(self) -> float:
        """Degrees of freedom of sd² from K pairs: Welch–Satterthwaite's for var(A) − var(B) (smooth
        scores), else K − 1; at least 2."""
        var_a, var_b = self._variances()
        k = len(self.half) - 1
        est = self._smooth_variance()
        if not self.smooth or est <= 0:
            return float(max(2, k))
        return float(max(2.0, est**2 / max((var_a**2 + var_b**2) / k, 1e-300)))

    def scores(self) -> np.ndarray:
        """All half-sample scores (each pair's half, then its complement), for artefacts."""
        return np.column_stack([self.half, self.other]).ravel()

    def __len__(self) -> int:
        return 2 * len(self.half)


def subsamples(draws: Draws, reps: int, seed: int, rates: tuple[float, ...] = (1.0,)) -> Subsamples:
    """``reps`` half-samples without replacement in ``reps // 2`` complementary pairs (each side's
    blocks split in two halves at random; each half scored). DataError when a side has fewer than 2
    blocks or under a tenth of the pairs can be scored."""
    rng = np.random.default_rng([seed, 17])
    b = draws.blocks
    pairs = max(2, reps // 2)
    if min(int((b.side == 0).sum()), int((b.side == 1).sum())) < 2:
        raise DataError("half-sampling needs at least 2 blocks a side")
    half, other, degenerate = [], [], 0
    for _ in range(pairs):
        wa, wb, ca, cb = half_weights(b, rng)
        try:
            h, o = draws.score(wa, wb), draws.score(ca, cb)
        except DataError:   # e.g. FD on a half of 3 single-image blocks: one image
            degenerate += 1
            continue
        half.append(h)
        other.append(o)
    if len(half) < max(2, pairs // 10):
        raise DataError(f"{degenerate} of {pairs} half-sample pairs could not be scored (too few images per side "
                        "to halve)")
    return Subsamples(np.asarray(half), np.asarray(other), tuple(rates))


def subsample_interval(score: float, sub: Subsamples, level: float = CI_LEVEL) -> Interval:
    """The half-sampling interval: the bias removed by extrapolation, then ± z · the standard error.

    A half-sample without replacement is a real sample of n/2 images a side (no repeated images, as
    a bootstrap resample has), so with a bias c/n^r, mean(θ½) − θ̂ = (2^r − 1) c/n^r and
    θ̃ = θ̂ − (mean(θ½) − θ̂) / (2^r − 1) is the score with its bias removed (r = 1: 2θ̂ − mean(θ½),
    the half-sample jackknife). The interval is θ̃ ± t·sd (:meth:`Subsamples.sd`, t at its
    :attr:`Subsamples.dof`). With a range of rates the bias-corrected value lies between the
    lowest and the highest θ̃ (a set, not a point): the interval runs from the lowest θ̃ − c·sd to
    the highest θ̃ + c·sd with Imbens & Manski's (2004) c, from t(0.975) when the two coincide down
    to t(0.95) when they are far apart, so it covers the value (not the whole set) at ``level``.
    Coverage measured in tests and benchmarks/test_calibration_bench.py."""
    from scipy.optimize import brentq
    from scipy.stats import t as student

    shift = sub.mean - score
    ends = sorted((score - shift / (2.0**r - 1.0), sub.sd(r)) for r in sub.rates)
    (lo_c, sd_lo), (hi_c, sd_hi) = ends[0], ends[-1]
    dist = student(sub.dof)
    z = float(dist.ppf(0.5 + level / 2))
    if hi_c > lo_c:   # Imbens & Manski (2004): cover the value, not the whole range [lo_c, hi_c]
        gap = (hi_c - lo_c) / max(sd_lo, sd_hi)
        z = float(brentq(lambda c: dist.cdf(c + gap) - dist.cdf(-c) - level, float(dist.ppf(level)), z))
    low, high = lo_c - z * sd_lo, hi_c + z * sd_hi
    rate = f"n^-{sub.rates[0]:g}" if len(sub.rates) == 1 else f"n^-{min(sub.rates):g} to n^-{max(sub.rates):g}"
    sd = sub.sd(max(sub.rates))
    note = None
    if hi_c - lo_c > z * sd:
        note = (f"the small-sample bias is known only between {score - hi_c:.4g} and {score - lo_c:.4g} (as {rate}), "
                "a range wider than the sampling error, and the interval spans it: it covers more than 95 % where "
                "the sides differ, less where they do not (a distance's truth 0 sits at its edge: 88–92 % for DNA "
                "in simulation), so read the p-value for whether they differ; more images narrow it")
    return Interval(low, high, (lo_c + hi_c) / 2, sub.mean, len(sub),
                    f"half-sampling without replacement, bias extrapolated as {rate} "
                    f"({len(sub.half)} complementary pairs)", sd, note)


def interval_draws(draws: Draws, reps: int, seed: int, rates: tuple[float, ...] | None) -> np.ndarray | Subsamples:
    """What ``bench compare`` draws for its interval: half-samples for a comparator with bias rates
    (bootstrap resamples where a side cannot be halved: under 2 blocks, or too few images), else
    bootstrap resamples."""
    if rates:
        try:
            return subsamples(draws, reps, seed, rates)
        except DataError:
            pass
    return bootstrap(draws, reps, seed)


def interval(score: float, resamples: np.ndarray | Subsamples, level: float = CI_LEVEL) -> Interval:
    """The interval ``bench compare`` reports: :func:`subsample_interval` from half-samples, the basic
    bootstrap interval (:func:`basic_interval`, the reference) from bootstrap resamples."""
    if isinstance(resamples, Subsamples):
        return subsample_interval(score, resamples, level)
    return basic_interval(score, resamples, level)


def resample_scores(resamples: np.ndarray | Subsamples) -> np.ndarray:
    return resamples.scores() if isinstance(resamples, Subsamples) else np.asarray(resamples)


# --------------------------------------------------------------------------- the oracle


def brute_force_null(score_fn: Callable[[np.ndarray, np.ndarray, int], float], n_a: int, n: int, n_draws: int,
                     seed: int) -> np.ndarray:
    """The null by recomputing the score on every permutation of A ∪ B: ``score_fn(rows_a, rows_b,
    seed)``. The oracle for :func:`permutation_null`, and the null of comparators without draws."""
    rng = np.random.default_rng([seed, 7])
    out = np.empty(n_draws)
    for k in range(n_draws):
        perm = rng.permutation(n)
        out[k] = score_fn(np.sort(perm[:n_a]), np.sort(perm[n_a:]), seed + k + 1)
    return out


def split_half_null(score_fn: Callable[[np.ndarray, np.ndarray, int], float], n_a: int, n: int, n_draws: int,
                    seed: int) -> np.ndarray:
    """Split halves of each side (for comparators that train, where many permutations cost too much)."""
    rng = np.random.default_rng([seed, 7])
    out = []
    for k in range(n_draws):
        for side in (np.arange(n_a), np.arange(n_a, n)):
            perm = rng.permutation(side)
            half = len(perm) // 2
            out.append(score_fn(np.sort(perm[:half]), np.sort(perm[half:]), seed + k + 1))
    return np.asarray(out)


def brute_force_bootstrap(score_fn: Callable[[np.ndarray | None, np.ndarray, int], float], n_a: int | None, n_b: int,
                          reps: int, seed: int) -> np.ndarray:
    """Resamples (with replacement, each side within itself; ``n_a=None``: B only) scored from scratch."""
    rng = np.random.default_rng([seed, 11])
    out = []
    for k in range(reps):
        ia = None if n_a is None else np.sort(rng.integers(0, n_a, n_a))
        ib = np.sort(rng.integers(0, n_b, n_b))
        out.append(score_fn(ia, ib, seed + k + 1))
    return np.asarray(out)


# --------------------------------------------------------------------------- many tests


def _adjust(p: np.ndarray, step) -> np.ndarray:
    """``step(sorted p, m)`` → adjusted sorted p, put back in the input's order and capped at 1."""
    p = np.asarray(p, dtype=np.float64)
    if len(p) == 0:
        return p
    order = np.argsort(p, kind="stable")
    out = np.empty(len(p))
    out[order] = np.minimum(step(p[order], len(p)), 1.0)
    return out


def holm(p: np.ndarray) -> np.ndarray:
    """Holm's step-down adjustment (family-wise error), as statsmodels' ``multipletests(method="holm")``."""
    return _adjust(p, lambda ps, m: np.maximum.accumulate((m - np.arange(m)) * ps))


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values (false discovery rate), as ``multipletests(method="fdr_bh")``."""
    return _adjust(p, lambda ps, m: np.minimum.accumulate((ps * m / np.arange(1, m + 1))[::-1])[::-1])


def minimum_detectable_effect(null: np.ndarray, boot: np.ndarray | Subsamples | None, direction: float,
                              alpha: float = 0.05, power: float = 0.8) -> float | None:
    """The smallest shift of the score above the null's typical value that this n would detect with
    ``power``: the null's (1 − α) quantile plus the bootstrap's spread at ``power`` (a normal shift
    model; the half-sampling standard error for :class:`Subsamples`), minus the null's median. None
    without resamples."""
    if boot is None or len(resample_scores(boot)) < 2 or len(null) < 2:
        return None
    null = direction * np.asarray(null, dtype=np.float64)
    crit = float(np.quantile(null, 1 - alpha))
    spread = boot.sd() if isinstance(boot, Subsamples) else float(np.std(boot, ddof=1))
    from scipy.stats import norm

    return max(0.0, crit + norm.ppf(power) * spread - float(np.median(null)))


# --------------------------------------------------------------------------- how many images


@dataclass(frozen=True)
class PowerPlan:
    """How many images per side a comparison needs: the power measured on subsamples of the current
    sides and the n per side (A's; B scaled alike) estimated to reach ``power`` at ``alpha``."""

    rows: list[dict[str, float]]
    n_a: int | None
    n_b: int | None
    how: str


def _subsample_weights(blocks: Blocks, frac: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    out = []
    for s in (0, 1):
        idx = np.flatnonzero(blocks.side == s)
        take = rng.choice(idx, size=max(2, round(frac * len(idx))), replace=False)
        w = np.zeros(blocks.count)
        w[take] = 1.0
        out.append(w)
    return out[0], out[1]


def power_plan(draws: Draws, direction: float, *, alpha: float = 0.05, power: float = 0.8,
               fractions: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0), reps: int = 20, n_perm: int = 99,
               seed: int = 0) -> PowerPlan:
    """Power by subsampling the blocks of A and B (``reps`` subsamples per fraction, each with its own
    block-permutation null), and the n reaching ``power``: interpolated where a fraction reaches it,
    else extrapolated from the standardised effect z(n) = (score − null mean) / null sd, which grows
    as √n for a fixed effect."""
    from scipy.stats import norm

    b = draws.blocks
    rng = np.random.default_rng([seed, 13])
    rows, zs, ns = [], [], []
    for frac in fractions:
        hits, z_sum = 0, 0.0
        for _ in range(reps):
            w_a, w_b = _subsample_weights(b, frac, rng)
            chosen = (w_a + w_b) > 0
            sub = Blocks(np.zeros(0, np.int64), b.size[chosen], np.where(w_a[chosen] > 0, 0, 1))
            scores = np.empty(n_perm)
            for k in range(n_perm):
                pa, pb = permutation_weights(sub, rng)
                wa, wb = np.zeros(b.count), np.zeros(b.count)
                wa[chosen], wb[chosen] = pa, pb
                scores[k] = draws.score(wa, wb)
            obs = draws.score(w_a, w_b)
            hits += p_value(obs, scores, direction) < alpha
            sd = float(scores.std(ddof=1)) or 1e-12
            z_sum += direction * (obs - float(scores.mean())) / sd
        n_a = int(b.size[np.flatnonzero(b.side == 0)].sum() * frac)
        n_b = int(b.size[np.flatnonzero(b.side == 1)].sum() * frac)
        rows.append({"fraction": frac, "n_a": n_a, "n_b": n_b, "power": hits / reps, "z": z_sum / reps})
        zs.append(z_sum / reps)
        ns.append(n_a)
    ratio = rows[-1]["n_b"] / max(1, rows[-1]["n_a"])
    reached = [r for r in rows if r["power"] >= power]
    if reached:
        first = reached[0]
        i = rows.index(first)
        if i == 0:
            n_a = first["n_a"]
            how = f"the smallest subsample tried ({first['n_a']} per side) already reaches {power:.0%} power"
        else:
            lo = rows[i - 1]
            t = (power - lo["power"]) / max(first["power"] - lo["power"], 1e-9)
            n_a = int(np.ceil(np.exp(np.log(lo["n_a"]) + t * (np.log(first["n_a"]) - np.log(lo["n_a"])))))
            how = f"interpolated between subsamples of {lo['n_a']} and {first['n_a']} (log n)"
        return PowerPlan(rows, n_a, int(np.ceil(n_a * ratio)), how)
    c = float(np.sum(np.asarray(zs) * np.sqrt(ns)) / np.sum(ns))   # least squares of z = c √n
    if c <= 0:
        return PowerPlan(rows, None, None, "no effect seen in the subsamples: no n would reach the power")
    target = norm.ppf(1 - alpha) + norm.ppf(power)
    n_a = int(np.ceil((target / c) ** 2))
    return PowerPlan(rows, n_a, int(np.ceil(n_a * ratio)), "extrapolated from z(n) ∝ √n over the subsamples")
