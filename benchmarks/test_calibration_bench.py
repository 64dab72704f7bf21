"""Issue 26, items 6 and 7: are the block-state p-values calibrated, as powerful as the brute force,
and do the reported intervals cover?

* Calibration: ``BENCH_CALIB_SPLITS`` (200) random splits of Fashion-MNIST test images (a stratified
  pool of ``BENCH_CALIB_POOL`` = 2,000, efficientnet-lite0 features cached by the feature store):
  each split draws 2 × ``BENCH_CALIB_N`` (100) images of the pool, A the first half; p from
  ``Comparator.draws`` + ``permutation_null`` (99 permutations), blocks sized as ``bench compare``
  sizes them. Per comparator: share of p < 0.05 (target [0.02, 0.08]) and KS against uniform
  (target: not rejected at 0.01). dna runs on the pooled features (``layers="pooled"``: read from
  the cache, no forward pass per split) with ``BENCH_CALIB_DNA_BINS`` (100) bins: 1000 bins of 1280
  neurons are 10 MB per image, which puts two images per block and costs ~1 s a draw here.
* Power: the synth-shift ladder (reference vs each mix) and Fashion-MNIST with one class thinned in
  B: the first rung with p < 0.01 (199 permutations, so p can go below 0.01), block path vs
  ``brute_force_null`` with the comparator's ``score`` on subsets.
* Coverage: Gaussian features with FD in closed form; the 95 % interval ``bench compare`` reports
  (half-sampling with the bias extrapolated, 100 draws) beside the basic and percentile intervals
  over 100 block-bootstrap resamples, ``BENCH_COVERAGE_REPS`` (200) repetitions per (n, d). DNA: one value
  per neuron per image binned over fixed ranges; the truth is the EMD of the two Gaussians' exact bin
  probabilities (normal CDF at the bin edges), the quantity the plug-in histogram EMD estimates.

Every result is also appended as one JSON line to ``BENCH_RESULTS`` (default
/tmp/bench_issue26_results.jsonl); the numbers are in benchmarks/RESULTS_issue26.md.
"""

from __future__ import annotations

import functools
import json
import os
import time

import numpy as np
import pytest
from scipy import stats as sps

from bench import statistics as S

SPLITS = int(os.environ.get("BENCH_CALIB_SPLITS", "200"))
POOL = int(os.environ.get("BENCH_CALIB_POOL", "2000"))
N_SIDE = int(os.environ.get("BENCH_CALIB_N", "100"))
PERMS = 99
POWER_PERMS = 199
DNA_BINS = int(os.environ.get("BENCH_CALIB_DNA_BINS", "100"))
COVERAGE_REPS = int(os.environ.get("BENCH_COVERAGE_REPS", "200"))
BOOT = 100
#: also score the basic and percentile intervals (the reference; another BOOT resamples per repetition)
COVERAGE_REFERENCE = os.environ.get("BENCH_COVERAGE_REFERENCE", "1") == "1"
RESULTS = os.environ.get("BENCH_RESULTS", "/tmp/bench_issue26_results.jsonl")
COMPARATORS = os.environ.get("BENCH_CALIB_COMPARATORS", "fd,dna,multicut,wavelet,kid,prdc,c2st,atlas").split(",")
#: comparators whose brute-force null is run in the power tests (multicut re-solves its multicut on
#: every draw: 199 solves per rung, about an hour per rung on this machine)
BRUTE = os.environ.get("BENCH_POWER_BRUTE", "fd,dna,wavelet").split(",")
THINNING = [1.0, 0.7, 0.5, 0.3, 0.0]


def record(kind: str, results: str | None = None, **values) -> None:
    """Print one result and append it as a JSON line to ``results`` (default ``BENCH_RESULTS``)."""
    print(f"\n{kind}: {json.dumps(values, default=float)}")
    with open(results or RESULTS, "a") as f:
        f.write(json.dumps({"kind": kind, **values}, default=float) + "\n")


# --------------------------------------------------------------------------- views and comparators


@functools.lru_cache(maxsize=1)
def _registries():
    from bench import plugins

    return plugins.load()


#: "efficientnet-lite0" (cached pooled features, 1280-D) or "pixelsS" (S×S RGB pixels, 3·S²-D)
EXTRACTOR = os.environ.get("BENCH_CALIB_EXTRACTOR", "efficientnet-lite0")


@functools.lru_cache(maxsize=1)
def _extractor():
    from bench.extractors.base import ExtractorConfig, create_extractor

    if EXTRACTOR.startswith("pixels"):
        from bench.extractors.pixels import PixelsExtractor

        return PixelsExtractor(size=int(EXTRACTOR[len("pixels"):]))
    return create_extractor(_registries().extractors.get(EXTRACTOR), weights=None, device="cpu",
                            config=ExtractorConfig())


def view_of(source):
    from bench.api import DataView
    from bench.features import FeatureStore, default_cache_dir

    return DataView(source, _extractor(), FeatureStore(default_cache_dir()), batch_size=64)


@functools.lru_cache(maxsize=1)
def fmnist_pool():
    """A stratified pool of Fashion-MNIST test images (features extracted once, then cached)."""
    from bench.datasets import get_spec, limit

    view = view_of(limit(get_spec(_registries().datasets, "fashion-mnist-test").load(seed=0), POOL, seed=0))
    view.features()
    return view


def comparator(name: str):
    if name == "dna":
        from bench_dna.plugin import DNAComparator

        return DNAComparator(layers="pooled", bins=DNA_BINS)
    return _registries().comparators.get(name)()


def direction(c) -> float:
    return 1.0 if c.larger_is_more_different else -1.0


def block_p(c, a, b, seed: int, perms: int) -> tuple[float, float, str]:
    """(score, p, blocks) through the state / graph path, blocks sized as ``bench compare`` does."""
    context = c.state_context(a, b, seed=seed)
    size = S.block_size(len(a), len(b), c.state_bytes(a, context))
    draws = c.draws(a, b, S.make_blocks(len(a), len(b), size, seed), seed=seed)
    score = draws.observed()
    return score, S.p_value(score, S.permutation_null(draws, perms, seed), direction(c)), draws.blocks.describe()


def brute_p(c, union, n_a: int, seed: int, perms: int) -> tuple[float, float]:
    """(score, p) with every null draw scored from scratch on subsets (``bench compare``'s old path)."""
    n = len(union)
    score = c.score(union.subset(np.arange(n_a)), union.subset(np.arange(n_a, n)), seed=seed)
    null = S.brute_force_null(lambda ia, ib, s: c.score(union.subset(ia), union.subset(ib), seed=s),
                              n_a, n, perms, seed)
    return score, S.p_value(score, null, direction(c))


# --------------------------------------------------------------------------- calibration


@pytest.mark.benchmark(group="calibration")
@pytest.mark.parametrize("name", COMPARATORS)
def test_p_values_are_uniform_under_no_difference(benchmark, name):
    pool = fmnist_pool()
    c = comparator(name)
    rng = np.random.default_rng(26)

    def run():
        ps, t0 = [], time.perf_counter()
        for k in range(SPLITS):
            idx = rng.choice(len(pool), 2 * N_SIDE, replace=False)
            a, b = pool.subset(np.sort(idx[:N_SIDE])), pool.subset(np.sort(idx[N_SIDE:]))
            own = c.compare(a, b, seed=k).p_value if name == "atlas" else None   # its exact (Simes) p
            ps.append(own if own is not None else block_p(c, a, b, seed=k, perms=PERMS)[1])
        return np.asarray(ps), time.perf_counter() - t0

    ps, secs = benchmark.pedantic(run, rounds=1, iterations=1)
    share, ks = float((ps < 0.05).mean()), sps.kstest(ps, "uniform")
    # p takes values k/100: KS against the discrete uniform's continuous version is slightly
    # conservative; the share below 0.05 is exact (P(p <= 0.05) = 0.05 for 99 permutations)
    record("calibration", comparator=name, extractor=EXTRACTOR, splits=SPLITS, n_per_side=N_SIDE, permutations=PERMS,
           share_below_005=share, share_below_001=float((ps < 0.01).mean()), ks_stat=float(ks.statistic),
           ks_p=float(ks.pvalue), mean_p=float(ps.mean()), seconds=secs, per_split_s=secs / SPLITS,
           dna_bins=DNA_BINS if name == "dna" else None)
    assert 0.02 <= share <= 0.08
    assert ks.pvalue >= 0.01


# --------------------------------------------------------------------------- power


def first_rung(rungs: list, ps: list) -> object:
    return next((r for r, p in zip(rungs, ps) if p is not None and p < 0.01), None)


def ladder_power(c, pairs, rungs, seed: int) -> dict:
    """p of both paths on each rung until both fall below 0.01 (later rungs only grow the shift);
    the brute force only for comparators in ``BENCH_POWER_BRUTE``."""
    brute_on = c.name in BRUTE
    block, brute, scores, t_block, t_brute = [], [], [], 0.0, 0.0
    for union, n_a in pairs:
        t = time.perf_counter()
        s1, p1, _ = block_p(c, union.subset(np.arange(n_a)), union.subset(np.arange(n_a, len(union))), seed,
                            POWER_PERMS)
        t_block += time.perf_counter() - t
        t = time.perf_counter()
        s2, p2 = brute_p(c, union, n_a, seed, POWER_PERMS) if brute_on else (None, None)
        t_brute += time.perf_counter() - t
        block.append(p1)
        brute.append(p2)
        scores.append([s1, s2])
        if p1 < 0.01 and (p2 is None or p2 < 0.01):
            break
    done = rungs[:len(block)]
    return {"rungs": done, "p_block": block, "p_brute": brute, "scores_block_brute": scores,
            "first_block": first_rung(done, block), "first_brute": first_rung(done, brute) if brute_on else "not run",
            "block_s": t_block, "brute_s": t_brute}


@functools.lru_cache(maxsize=1)
def synth_shift_pairs():
    """(view of reference ∪ level, n_reference) for each level of the synth-shift ladder."""
    from bench.datasets import get_spec

    spec = get_spec(_registries().datasets, "synth-shift")
    union = view_of(spec.load(seed=0))
    union.features()
    src = union.source
    n_levels = len(src.group_names) - 1
    ref = np.flatnonzero(src.groups == n_levels)
    pairs = [(union.subset(np.r_[ref, np.flatnonzero(src.groups == k)]), len(ref)) for k in range(n_levels)]
    return pairs, list(src.notes["proportions"])


@pytest.mark.benchmark(group="power")
@pytest.mark.parametrize("name", COMPARATORS)
def test_power_on_the_synth_shift_ladder(benchmark, name):
    pairs, props = synth_shift_pairs()
    out = benchmark.pedantic(lambda: ladder_power(comparator(name), pairs, props, seed=0), rounds=1, iterations=1)
    record("power-synth-shift", comparator=name, extractor=EXTRACTOR, permutations=POWER_PERMS, **out)
    assert out["first_block"] is not None
    if out["first_brute"] not in (None, "not run"):
        assert out["first_block"] <= out["first_brute"]


def thinned_pairs(class_id: int, seed: int):
    """A: N random pool images; B: N of the rest with class ``class_id`` kept at each fraction."""
    pool = fmnist_pool()
    rng = np.random.default_rng([seed, 26])
    order = rng.permutation(len(pool))
    a, rest = order[:N_SIDE], order[N_SIDE:]
    labels = np.asarray(pool.labels)
    in_class = rest[labels[rest] == class_id]
    others = rest[labels[rest] != class_id]
    u = rng.random(len(in_class))
    pairs = []
    for keep in THINNING:
        cand = np.concatenate([others, in_class[u < keep]])
        b = rng.choice(cand, N_SIDE, replace=False)
        pairs.append((pool.subset(np.r_[a, b]), N_SIDE))
    return pairs


@pytest.mark.benchmark(group="power")
@pytest.mark.parametrize("name", COMPARATORS)
def test_power_on_fashion_mnist_with_one_class_thinned(benchmark, name):
    pairs = thinned_pairs(class_id=0, seed=0)
    out = benchmark.pedantic(lambda: ladder_power(comparator(name), pairs, THINNING, seed=0), rounds=1, iterations=1)
    record("power-fmnist-thinned", comparator=name, extractor=EXTRACTOR, permutations=POWER_PERMS, thinned_class=0,
           **out)
    if out["first_brute"] not in (None, "not run"):   # rungs are keep fractions: larger is better
        assert out["first_block"] is not None and out["first_block"] >= out["first_brute"]


# --------------------------------------------------------------------------- coverage


def fd_draws(x: np.ndarray, n_a: int, seed: int):
    """FD's draws as ``FrechetDistance.draws`` makes them from features (Gram while n ≤ d)."""
    from bench.baselines import FrechetDistance, GramFrechetDraws, gaussian_block_sums

    n_b, d = len(x) - n_a, x.shape[1]
    if len(x) <= d:
        return GramFrechetDraws(S.make_blocks(n_a, n_b, 1, seed), x)
    blocks = S.make_blocks(n_a, n_b, S.block_size(n_a, n_b, 8 * (d * d + d + 1)), seed)
    fdc = FrechetDistance()
    return S.AdditiveDraws(blocks, gaussian_block_sums(x, blocks.of, blocks.count),
                           lambda a, b: fdc.finalize(a, b, context={}))


def coverage(make, reps: int, seed: int, comparator) -> dict:
    """Share of ``reps`` 95 % intervals that cover the truth: the one ``bench compare`` reports
    (``S.interval`` of ``S.interval_draws`` with the comparator's bias rates: half-sampling, BOOT
    draws), the basic bootstrap interval (the reference, BOOT resamples) and the percentile
    interval; ``make(rng, k)`` returns (draws, truth)."""
    rng = np.random.default_rng(seed)
    hits = {"interval": 0, "basic": 0, "percentile": 0}
    scores, centres, widths, basic_widths, notes, truth, method = [], [], [], [], 0, None, ""
    for k in range(reps):
        draws, truth = make(rng, k)
        score = draws.observed()
        ci = S.interval(score, S.interval_draws(draws, BOOT, k, comparator.bias_rates))
        hits["interval"] += ci.low <= truth <= ci.high
        if COVERAGE_REFERENCE:
            boot = S.bootstrap(draws, BOOT, seed=k)
            basic = S.basic_interval(score, boot)
            lo, hi = S.percentile_interval(boot)
            hits["basic"] += basic.low <= truth <= basic.high
            hits["percentile"] += lo <= truth <= hi
            basic_widths.append(basic.high - basic.low)
        notes += (comparator.interval_note(draws) or ci.note) is not None
        scores.append(score)
        centres.append(ci.bias_corrected)
        widths.append(ci.high - ci.low)
        method = ci.method
    if not COVERAGE_REFERENCE:
        hits = {"interval": hits["interval"], "basic": None, "percentile": None}
    return {**{k: None if v is None else v / reps for k, v in hits.items()}, "truth": truth,
            "mean_score": float(np.mean(scores)),
            "mean_bias_corrected": float(np.mean(centres)), "sd_bias_corrected": float(np.std(centres)),
            "mean_width": float(np.mean(widths)),
            "mean_basic_width": float(np.mean(basic_widths)) if basic_widths else None,
            "share_with_note": notes / reps, "method": method, "reps": reps}


def check_coverage(out: dict) -> None:
    """The reported interval covers in 90-98 %, or (a regime known to miss: FD with n < 1.5 d, DNA
    whose bias range is wider than its spread) the record says so: a ci_note in ≥ 90 % of them."""
    if out["share_with_note"] >= 0.9:
        return
    assert 0.90 <= out["interval"] <= 0.98, out


@pytest.mark.benchmark(group="coverage")
@pytest.mark.parametrize(("n", "d"), [(50, 8), (200, 8), (1000, 8), (50, 64), (100, 64), (200, 64), (1000, 64)])
def test_fd_interval_covers_the_true_fd(benchmark, n, d):
    from bench.baselines import FrechetDistance, frechet_distance

    mu = np.full(d, 0.5 / np.sqrt(d))
    var = np.linspace(0.5, 1.5, d)
    truth = frechet_distance(np.zeros(d), np.eye(d), mu, np.diag(var))

    def make(rng, k):
        x = np.concatenate([rng.standard_normal((n, d)), mu + np.sqrt(var) * rng.standard_normal((n, d))])
        return fd_draws(x, n, seed=k), truth

    out = benchmark.pedantic(lambda: coverage(make, COVERAGE_REPS, n * 1000 + d, FrechetDistance()), rounds=1,
                             iterations=1)
    record("coverage-fd", n=n, d=d, **out)
    check_coverage(out)


def dna_truth(mu: np.ndarray, sd: np.ndarray, edges: np.ndarray) -> float:
    """Mean over neurons of the EMD in bins between N(0, 1) and N(mu, sd²) binned at ``edges`` (the
    outer bins take the tails, as DNA clips values outside its ranges into the edge bins)."""
    inner = edges[1:-1]
    cdf_a = sps.norm.cdf(inner)[None, :]
    cdf_b = sps.norm.cdf((inner[None, :] - mu[:, None]) / sd[:, None])
    return float(np.abs(cdf_a - cdf_b).sum(1).mean())


@pytest.mark.benchmark(group="coverage")
@pytest.mark.parametrize("n", [50, 200, 1000])
def test_dna_interval_covers_the_binned_emd(benchmark, n):
    from bench_dna.plugin import DNAComparator

    neurons, bins = 16, 100
    lo, hi = -4.8, 4.8
    edges = np.linspace(lo, hi, bins + 1)
    mu = np.linspace(0.0, 0.6, neurons)
    sd = np.linspace(1.0, 1.4, neurons)
    truth = dna_truth(mu, sd, edges)
    dna = DNAComparator(bins=bins)
    context = {"layers": ["pooled"], "neurons": {"pooled": neurons}, "selected": None}
    offset = np.arange(neurons) * bins

    def make(rng, k):
        x = np.concatenate([rng.standard_normal((n, neurons)), mu + sd * rng.standard_normal((n, neurons))])
        b = np.clip(((x - lo) * (bins / (hi - lo))).astype(np.int64), 0, bins - 1) + offset
        counts = np.zeros((2 * n, neurons * bins), dtype=np.int64)
        np.put_along_axis(counts, b, 1, axis=1)
        blocks = S.make_blocks(n, n, S.block_size(n, n, dna.state_bytes(None, context)), k)
        per_block = np.zeros((blocks.count, neurons * bins), dtype=np.int64)
        np.add.at(per_block, blocks.of, counts)
        draws = S.AdditiveDraws(blocks, {"counts:pooled": per_block.reshape(-1, neurons, bins)},
                                lambda a, b: dna.finalize(a, b, context=context))
        return draws, truth

    out = benchmark.pedantic(lambda: coverage(make, COVERAGE_REPS, n, dna), rounds=1, iterations=1)
    record("coverage-dna", n=n, neurons=neurons, bins=bins, **out)
    check_coverage(out)
