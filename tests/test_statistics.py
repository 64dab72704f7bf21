"""bench.statistics: block draws equal the brute force, p-values are uniform under no difference,
the half-sampling interval (and the basic one, the reference) covers a known truth,
multiple-testing adjustments match their definitions. Simulations are small here;
benchmarks/test_calibration_bench.py runs them at size."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from bench import statistics as S
from bench.baselines import (
    FrechetDistance,
    GramFrechetDraws,
    RowFrechetDraws,
    frechet_distance,
    frechet_distance_features,
    gaussian_block_sums,
)
from bench.errors import BenchError


def _fd_additive(x: np.ndarray, n_a: int, size: int, seed: int) -> S.AdditiveDraws:
    blocks = S.make_blocks(n_a, len(x) - n_a, size, seed)
    stats = gaussian_block_sums(x, blocks.of, blocks.count)
    return S.AdditiveDraws(blocks, stats, lambda a, b: FrechetDistance().finalize(a, b, context={}))


def test_blocks_keep_sizes_and_cover_every_image():
    b = S.make_blocks(23, 17, 4, seed=1)
    assert b.n_a == 23 and b.n_b == 17
    assert np.array_equal(np.bincount(b.of), b.size)
    assert sorted(b.size[b.side == 0].tolist()) == [3, 4, 4, 4, 4, 4]     # 23 = 5 × 4 + 3
    assert sorted(b.size[b.side == 1].tolist()) == [1, 4, 4, 4, 4]        # 17 = 4 × 4 + 1
    rng = np.random.default_rng(0)
    for _ in range(20):
        wa, wb = S.permutation_weights(b, rng)
        assert wa @ b.size == 23 and wb @ b.size == 17 and np.all(wa + wb == 1)


@pytest.mark.parametrize("size", [1, 4])
def test_additive_fd_equals_the_direct_fd(size):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(90, 5))
    draws = _fd_additive(x, 40, size, seed=0)
    assert draws.observed() == pytest.approx(frechet_distance_features(x[:40], x[40:]), rel=1e-9)


def test_gram_fd_equals_the_feature_route_for_weights():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(30, 50)) + 3.0          # fewer images than dimensions, off-centre
    blocks = S.make_blocks(12, 18, 1, 0)
    draws = GramFrechetDraws(blocks, x)
    assert draws.observed() == pytest.approx(frechet_distance_features(x[:12], x[12:]), rel=1e-8)
    wa, wb = S.bootstrap_weights(blocks, np.random.default_rng(2))
    ia, ib = np.repeat(np.arange(30), wa.astype(int)), np.repeat(np.arange(30), wb.astype(int))
    assert draws.score(wa, wb) == pytest.approx(frechet_distance_features(x[ia], x[ib]), rel=1e-8)


def test_single_image_blocks_give_the_brute_force_null_and_p():
    """The oracle: with one image per block the block null is today's brute-force permutation null."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(60, 3))
    x[30:] += 0.3
    draws = _fd_additive(x, 30, 1, seed=0)
    null = S.permutation_null(draws, 99, seed=5)
    brute = S.brute_force_null(lambda ia, ib, s: frechet_distance_features(x[ia], x[ib]), 30, 60, 99, seed=5)
    np.testing.assert_allclose(null, brute, rtol=1e-9)
    obs = draws.observed()
    assert S.p_value(obs, null, 1.0) == S.p_value(obs, brute, 1.0)


def test_row_fd_draws_give_the_brute_force_null_and_the_additive_scores():
    """One image per block with more images than dimensions: FD from the rows (weighted covariance)
    is the brute-force null and p, and the additive path's scores for resamples, to round-off."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(70, 6)) + 5.0
    x[35:] += 0.3
    blocks = S.make_blocks(35, 35, 1, 0)
    rows = RowFrechetDraws(blocks, x)
    null = S.permutation_null(rows, 99, seed=5)
    brute = S.brute_force_null(lambda ia, ib, s: frechet_distance_features(x[ia], x[ib]), 35, 70, 99, seed=5)
    np.testing.assert_allclose(null, brute, rtol=1e-9)
    assert S.p_value(rows.observed(), null, 1.0) == S.p_value(rows.observed(), brute, 1.0)
    np.testing.assert_allclose(S.bootstrap(rows, 30, seed=2), S.bootstrap(_fd_additive(x, 35, 1, 0), 30, seed=2),
                               rtol=1e-9)


def test_integer_states_sum_exactly_through_float32():
    """Counts kept as float32 (one GEMV a draw) give the exact integer sums, also where a column's
    total times a resample weight passes 2**24 (those columns are summed in float64)."""
    rng = np.random.default_rng(8)
    b = S.make_blocks(300, 280, 7, 1)
    counts = rng.integers(0, 3000, size=(b.count, 4, 50)).astype(np.int32)
    counts[:, 1, 0] = 190_000                      # a column whose total is near 2**24
    want = counts.astype(np.int64).reshape(b.count, -1)
    draws = S.AdditiveDraws(b, {"c": counts.copy()}, lambda a, c: 0.0, own=True)
    assert draws.arrays["c"].dtype == np.float32
    r = np.random.default_rng(9)
    for w in ([(b.side == 0) * 1.0, (b.side == 1) * 1.0], S.permutation_weights(b, r), S.bootstrap_weights(b, r),
              S.bootstrap_weights(b, r)):
        got = draws.totals(np.stack(w))
        for i in range(2):
            assert np.array_equal(got[i]["c"].reshape(-1), np.asarray(w[i]).astype(np.int64) @ want)


def test_blocks_are_single_images_while_they_fit_and_capped_per_side_beyond():
    assert S.block_size(300, 300, 1000) == 1
    # 64-D FD states (33 KB) at 10^6 + 10^6 images: the budget alone would allow 8,000 blocks
    state = 8 * (64 * 64 + 65)
    size = S.block_size(10**6, 10**6, state)
    assert size == int(np.ceil(2 * 10**6 / (2 * S.MAX_BLOCKS_PER_SIDE)))
    b = S.make_blocks(10**6, 10**6, size, 0)
    assert (b.side == 0).sum() <= S.MAX_BLOCKS_PER_SIDE and (b.side == 1).sum() <= S.MAX_BLOCKS_PER_SIDE
    # 384-D states: the budget, not the cap, sets the count (as before the cap)
    big = 8 * (384 * 384 + 385)
    assert S.block_size(10**6, 10**6, big) == int(np.ceil(2 * 10**6 / (S.STATE_BUDGET_BYTES // big - 2)))


def test_block_permutation_p_values_are_uniform_under_no_difference():
    """150 splits of one Gaussian sample, blocks of 3: share below 0.05 near 0.05 and KS not rejecting."""
    rng = np.random.default_rng(4)
    ps = []
    for k in range(150):
        x = rng.normal(size=(60, 3))
        draws = _fd_additive(x, 30, 3, seed=k)
        ps.append(S.p_value(draws.observed(), S.permutation_null(draws, 99, seed=k), 1.0))
    ps = np.asarray(ps)
    assert 0.0 <= (ps < 0.05).mean() <= 0.11
    assert sps.kstest(ps, "uniform").pvalue > 0.001


def test_block_permutation_has_power_against_a_shift():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(80, 3))
    x[40:, 0] += 1.0
    draws = _fd_additive(x, 40, 2, seed=0)
    assert S.p_value(draws.observed(), S.permutation_null(draws, 199, seed=0), 1.0) < 0.01


def test_basic_interval_covers_the_true_fd():
    """The reference (``basic_interval``, kept): Gaussian sides with a known FD, d = 3, where the bias
    is small: the basic interval covers it in 90-98 % of 200 repetitions; the percentile interval,
    biased upward like the score, covers it far less often."""
    rng = np.random.default_rng(6)
    d, n = 3, 60
    mu_b, scale_b = np.r_[0.5, 0.0, 0.0], 1.3
    truth = frechet_distance(np.zeros(d), np.eye(d), mu_b, scale_b**2 * np.eye(d))
    basic = percentile = 0
    reps = 200
    for k in range(reps):
        x = np.concatenate([rng.normal(size=(n, d)), mu_b + scale_b * rng.normal(size=(n, d))])
        draws = _fd_additive(x, n, 1, seed=k)
        boot = S.bootstrap(draws, 200, seed=k)
        ci = S.basic_interval(draws.observed(), boot)
        basic += ci.low <= truth <= ci.high
        lo, hi = S.percentile_interval(boot)
        percentile += lo <= truth <= hi
    assert 0.90 <= basic / reps <= 0.98
    assert percentile < basic


def test_half_samples_are_complementary_halves_of_each_side():
    b = S.make_blocks(23, 17, 4, seed=1)
    rng = np.random.default_rng(0)
    for _ in range(20):
        wa, wb, ca, cb = S.half_weights(b, rng)
        assert np.all(wa + wb + ca + cb == 1)                       # every block once, in one half
        assert not (wa * (b.side == 1)).any() and not (ca * (b.side == 1)).any()
        assert abs((wa > 0).sum() - (ca > 0).sum()) <= 1 and abs((wb > 0).sum() - (cb > 0).sum()) <= 1


def _fd_coverage(d: int, n: int, reps: int, seed: int) -> tuple[float, float, float, float]:
    """(coverage of the half-sampling interval, of the basic one, mean score − truth, mean
    bias-corrected score − truth) over ``reps`` Gaussian samples with a known FD."""
    rng = np.random.default_rng(seed)
    mu_b, var_b = np.full(d, 0.4 / np.sqrt(d)), np.linspace(0.6, 1.6, d)
    truth = frechet_distance(np.zeros(d), np.eye(d), mu_b, np.diag(var_b))
    half = basic = 0
    score_err, corrected_err = [], []
    for k in range(reps):
        x = np.concatenate([rng.normal(size=(n, d)), mu_b + np.sqrt(var_b) * rng.normal(size=(n, d))])
        draws = _fd_additive(x, n, 1, seed=k)
        score = draws.observed()
        ci = S.interval(score, S.interval_draws(draws, 100, k, FrechetDistance.bias_rates))
        assert ci.method.startswith("half-sampling")
        half += ci.low <= truth <= ci.high
        b = S.basic_interval(score, S.bootstrap(draws, 100, seed=k))
        basic += b.low <= truth <= b.high
        score_err.append(score - truth)
        corrected_err.append(ci.bias_corrected - truth)
    return half / reps, basic / reps, float(np.mean(score_err)), float(np.mean(corrected_err))


def test_half_sampling_interval_covers_the_true_fd():
    """What ``bench compare`` reports for FD: 95 % half-sampling intervals cover a known FD in 90-98 %
    of 200 repetitions at d = 6, n = 40 a side, where the plug-in score's bias is twice its spread and
    the basic bootstrap interval, wide with the resamples' own bias, over-covers."""
    half, basic, score_err, corrected_err = _fd_coverage(d=6, n=40, reps=200, seed=26)
    assert 0.90 <= half <= 0.98
    assert basic > half
    assert abs(corrected_err) < 0.1 * score_err          # the bias is extrapolated away


def test_half_sampling_interval_covers_the_binned_emd():
    """DNA's histogram EMD (the rates n^-1/2 to n^-1 as DNAComparator declares them): 95 % intervals
    cover the EMD between the exact bin probabilities in 90-98 % of 200 repetitions, where the basic
    bootstrap interval under-covers (the EMD's bias is not moved back by resamples)."""
    from bench_dna.plugin import DNAComparator

    neurons, bins, n, lo, hi = 6, 40, 80, -4.0, 4.0
    edges = np.linspace(lo, hi, bins + 1)
    mu, sd = np.linspace(0.0, 0.6, neurons), np.linspace(1.0, 1.4, neurons)
    inner = edges[1:-1]
    truth = float(np.abs(sps.norm.cdf(inner)[None, :] - sps.norm.cdf((inner[None, :] - mu[:, None]) / sd[:, None]))
                  .sum(1).mean())
    dna = DNAComparator(bins=bins)
    context = {"layers": ["pooled"], "neurons": {"pooled": neurons}, "selected": None}
    rng = np.random.default_rng(27)
    half = basic = 0
    reps = 200
    for k in range(reps):
        x = np.concatenate([rng.normal(size=(n, neurons)), mu + sd * rng.normal(size=(n, neurons))])
        b = np.clip(((x - lo) * (bins / (hi - lo))).astype(np.int64), 0, bins - 1)
        counts = np.zeros((2 * n, neurons, bins), dtype=np.int64)
        np.put_along_axis(counts, b[:, :, None], 1, axis=2)
        draws = S.AdditiveDraws(S.make_blocks(n, n, 1, k), {"counts:pooled": counts},
                                lambda a, b_: dna.finalize(a, b_, context=context))
        score = draws.observed()
        ci = S.interval(score, S.interval_draws(draws, 100, k, dna.bias_rates))
        half += ci.low <= truth <= ci.high
        bi = S.basic_interval(score, S.bootstrap(draws, 100, seed=k))
        basic += bi.low <= truth <= bi.high
    assert 0.90 <= half / reps <= 0.98
    assert basic < half


def test_fd_interval_note_below_the_dimension_and_bootstrap_fallback():
    """FD with fewer images a side than 1.5 × the dimension: the record gets a one-line note; a
    side that cannot be halved (one block) falls back to the basic bootstrap interval."""
    rng = np.random.default_rng(8)
    x = rng.normal(size=(60, 40))
    draws = GramFrechetDraws(S.make_blocks(30, 30, 1, 0), x)
    assert "feature dimensions" in FrechetDistance().interval_note(draws)
    assert FrechetDistance().interval_note(_fd_additive(rng.normal(size=(60, 3)), 30, 1, 0)) is None
    one_block = _fd_additive(rng.normal(size=(60, 3)), 30, 30, 0)       # one block a side
    assert isinstance(S.interval_draws(one_block, 20, 0, (1.0,)), np.ndarray)


def test_holm_and_benjamini_hochberg_match_their_definitions():
    p = np.array([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(S.holm(p), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(S.benjamini_hochberg(p), [0.02, 0.04, 0.04, 0.02])
    assert S.holm(np.array([])).size == 0


def test_draw_counts_are_bounded():
    with pytest.raises(BenchError, match="--permutations must be from 1"):
        S.check_draws(0, "--permutations", minimum=1)
    with pytest.raises(BenchError, match="100,000"):
        S.check_draws(10**9, "--permutations", minimum=1)


@pytest.mark.parametrize("n_a,n_b,per_image", [(1000, 1100, 13_000_000), (23, 17, 40_000_000), (500, 3, 10**9),
                                               (9, 9, 10**9)])
def test_every_permutation_moves_blocks_when_states_need_multi_image_blocks(n_a, n_b, per_image):
    """Blocks are exactly ``size`` on both sides (a smaller remainder block per side), so blocks of one
    size sit on both sides and a permutation exchanges them: with 1,000 vs 1,100 FD states at 1280-D
    the old per-side sizes (111–112 vs 110) left nothing to exchange and p was 1 whatever the data."""
    size = S.block_size(n_a, n_b, per_image)
    b = S.make_blocks(n_a, n_b, size, seed=0)
    assert b.exchangeable() and size <= min(n_a, n_b)
    assert ((b.size == size) & (b.side == 0)).any() and ((b.size == size) & (b.side == 1)).any()
    assert b.size[b.side == 0].sum() == n_a and b.size[b.side == 1].sum() == n_b
    rng = np.random.default_rng(0)
    moved = [not np.array_equal(S.permutation_weights(b, rng)[0], (b.side == 0).astype(float)) for _ in range(20)]
    assert sum(moved) >= 5   # two blocks in all (9 vs 9): half the draws swap them


def test_a_cap_on_blocks_per_side_never_leaves_a_side_without_a_block_to_exchange():
    """--blocks 5 with 10 vs 1,000 images: blocks of 200 would leave A one 10-image block that no
    block of B matches; the size is bounded by the smaller side instead (B then has more blocks)."""
    size = S.block_size(10, 1000, 8, most_per_side=5)
    assert size == 10 and S.make_blocks(10, 1000, size, 0).exchangeable()
    assert S.block_size(120, 118, 8, most_per_side=4) == 30          # the cap applies while states fit
    assert S.block_size(120, 118, 8) == 1                             # the default does not
    # unequal sides: the larger side has at most the cap's full blocks
    b = S.make_blocks(300, 3000, S.block_size(300, 3000, 2**20), 0)
    assert ((b.side == 1) & (b.size == b.size.max())).sum() <= S.MAX_BLOCKS_PER_SIDE


def test_blocks_describe_counts_full_blocks_and_names_the_remainders():
    assert S.make_blocks(1000, 1100, 111, 0).describe() == "9 + 9 blocks of 111 images (remainders: A 1, B 101)"
    assert S.make_blocks(4, 6, 1, 0).describe() == "4 + 6 blocks of 1 image"
    assert S.make_blocks(10, 20, 10, 0).describe() == "1 + 2 blocks of 10 images"
