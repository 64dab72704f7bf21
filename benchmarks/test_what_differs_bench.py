"""Issue 27's Done-when on real data: Fashion-MNIST test images, efficientnet-lite0 features.

* ``removed`` / ``doubled``: A = 100 images per class × 10 classes; B = 100 other images per class
  without one class (Bag), or with one class doubled (Sneaker: 100 more). Every comparator of
  ``--methods kid,prdc,c2st,fd`` plus the atlas, p-values Holm-adjusted across the five as
  ``bench compare`` does; the atlas's most significant region and its majority class; the share of
  A's removed-class images ``prdc`` flags as uncovered; the share of the removed class among
  ``c2st``'s 50 most A-like images.
* ``null``: ``BENCH_WD_SEEDS`` (20) seeds of two disjoint random halves of the same classes
  (``BENCH_WD_NULL_PER_CLASS`` = 50 per class per side, from a cached pool of 200 per class): how
  many seeds have an adjusted p < 0.05, how many an atlas region at FDR 0.05.
* ``plan``: ``--plan``'s recommended n per side on the removed case, then the share of 20 fresh
  subsamples of that size with p < 0.05 (target ≥ 70 %).

Features come from the feature store: A ∪ B is built as ``bench compare`` builds it (two named
subsets of the test set, concatenated), so a second run, or an earlier ``bench compare`` of the same
design, reads them back. p-values come from the same
calls ``bench compare`` makes (``state_context``, ``block_size``, ``draws``, ``permutation_null``,
the comparator's own exact p where it has one, ``holm``). Results are appended as JSON lines to
``BENCH_RESULTS`` (default /tmp/bench_issue27_results.jsonl); numbers in benchmarks/RESULTS_issue27.md.
"""

from __future__ import annotations

import functools
import os
import time

import numpy as np
import pytest

# the same registries and cached-feature views as the calibration benchmark (efficientnet-lite0 unless
# BENCH_CALIB_EXTRACTOR says otherwise): its pool's features serve the null seeds here
from test_calibration_bench import _registries, record, view_of

from bench import statistics as S

PERMS = int(os.environ.get("BENCH_WD_PERMS", "999"))
#: fd at 1280-D: each draw sums 1280² states and takes two eigendecompositions (~1 s here), so fewer
FD_PERMS = int(os.environ.get("BENCH_WD_FD_PERMS", "199"))
NULL_PERMS = int(os.environ.get("BENCH_WD_NULL_PERMS", "199"))
SEEDS = int(os.environ.get("BENCH_WD_SEEDS", "20"))
#: images per class per side in the null seeds: 50 keeps A ∪ B (1,000) within FD's Gram path at
#: 1280-D (an n_A × n_B SVD per draw instead of 1280² eigendecompositions: ~10× less here)
NULL_PER_CLASS = int(os.environ.get("BENCH_WD_NULL_PER_CLASS", "50"))
METHODS = os.environ.get("BENCH_WD_METHODS", "kid,prdc,c2st,fd").split(",") + ["atlas"]
RESULTS = os.environ.get("BENCH_RESULTS", "/tmp/bench_issue27_results.jsonl")
REMOVED, DOUBLED = 8, 7      # Bag, Sneaker


@functools.lru_cache(maxsize=1)
def test_set():
    from bench.datasets import get_spec

    return get_spec(_registries().datasets, "fashion-mnist-test").load(seed=0)


@functools.lru_cache(maxsize=1)
def null_pool():
    """200 test images per class (``bench.datasets.limit``'s stratified choice, seed 0: the pool the
    calibration benchmark uses, so its features are cached once for both)."""
    from bench.datasets import limit

    view = view_of(limit(test_set(), 2000, seed=0))
    view.features()
    return view


def design(case: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices of A and B in the test set (disjoint; 100 per class each, B as ``case`` says)."""
    labels = test_set().labels
    rng = np.random.default_rng(seed)
    per = {c: rng.permutation(np.flatnonzero(labels == c)) for c in range(10)}
    a = np.concatenate([per[c][:100] for c in range(10)])
    b = [per[c][100:200] for c in range(10) if not (case == "removed" and c == REMOVED)]
    if case == "doubled":
        b.append(per[DOUBLED][200:300])
    return np.sort(a), np.sort(np.concatenate(b))


def union_of(a_idx: np.ndarray, b_idx: np.ndarray):
    """A ∪ B as ``bench compare`` builds it from two subsets of the test set (same cache entry)."""
    from bench.datasets import concat

    return view_of(concat(test_set().subset(a_idx, name="A"), test_set().subset(b_idx, name="B")))


def compare(union, n_a: int, perms: int, seed: int = 0) -> dict:
    """Every comparator's score, p and Holm-adjusted p, as ``bench compare`` computes them."""
    a, b = union.subset(np.arange(n_a)), union.subset(np.arange(n_a, len(union)))
    out = {}
    for name in METHODS:
        c = _registries().comparators.get(name)()
        t0 = time.perf_counter()
        result = c.compare(a, b, seed=seed)
        if result.p_value is not None:
            p = float(result.p_value)
        else:
            context = c.state_context(a, b, seed=seed)
            size = S.block_size(len(a), len(b), c.state_bytes(a, context))
            draws = c.draws(a, b, S.make_blocks(len(a), len(b), size, seed), seed=seed)
            null = S.permutation_null(draws, min(perms, FD_PERMS) if name == "fd" else perms, seed)
            p = S.p_value(draws.observed(), null, 1.0 if c.larger_is_more_different else -1.0)
        out[name] = {"score": float(result.score), "p": p, "seconds": time.perf_counter() - t0, "result": result}
    for name, q in zip(out, S.holm(np.asarray([v["p"] for v in out.values()]))):
        out[name]["p_adjusted"] = float(q)
    return out


def _summary(out: dict) -> dict:
    return {k: {"score": v["score"], "p": v["p"], "p_adjusted": v["p_adjusted"], "seconds": round(v["seconds"], 1)}
            for k, v in out.items()}


@pytest.mark.benchmark(group="what-differs")
@pytest.mark.parametrize("case", ["removed", "doubled"])
def test_the_moved_class_is_found(benchmark, case):
    a_idx, b_idx = design(case)
    labels = test_set().labels
    moved = REMOVED if case == "removed" else DOUBLED
    names = test_set().class_names
    out = benchmark.pedantic(lambda: compare(union_of(a_idx, b_idx), len(a_idx), PERMS), rounds=1, iterations=1)
    regions = out["atlas"]["result"].detail["regions"]
    top = {k: regions[0].get(k) for k in ("region", "cells", "n_a", "n_b", "p_adjusted", "majority_class",
                                          "class_share")}
    extra = {}
    if case == "removed":
        removed_a = np.flatnonzero(labels[a_idx] == moved)
        uncovered = out["prdc"]["result"].detail["uncovered_a"]
        extra["prdc_uncovered_share_of_removed"] = float(np.isin(removed_a, uncovered).mean())
        a_like = next(f for f in out["c2st"]["result"].findings if f.title.startswith("images of A most A-like"))
        extra["c2st_a_like_top50_removed_share"] = float(np.mean([labels[a_idx[r["image"]]] == moved
                                                                   for r in a_like.rows]))
    else:
        b_like = next(f for f in out["c2st"]["result"].findings if f.title.startswith("images of B most B-like"))
        extra["c2st_b_like_top50_doubled_share"] = float(np.mean([labels[b_idx[r["image"]]] == moved
                                                                   for r in b_like.rows]))
    record("moved-class", results=RESULTS, case=case, moved=names[moved], permutations=PERMS, comparators=_summary(out),
           atlas_top=top, **extra)
    assert top["majority_class"] == names[moved]
    assert out["atlas"]["p_adjusted"] < 0.01 and out["c2st"]["p_adjusted"] < 0.01


@pytest.mark.benchmark(group="what-differs")
def test_no_difference_is_not_called_a_difference(benchmark):
    def run():
        rows = []
        pool = null_pool()
        for seed in range(SEEDS):
            rng = np.random.default_rng([27, seed])
            per = [rng.permutation(np.flatnonzero(pool.labels == c))[:2 * NULL_PER_CLASS] for c in range(10)]
            a_idx = np.sort(np.concatenate([p[:NULL_PER_CLASS] for p in per]))
            b_idx = np.sort(np.concatenate([p[NULL_PER_CLASS:] for p in per]))
            out = compare(pool.subset(np.r_[a_idx, b_idx]), len(a_idx), NULL_PERMS, seed=seed)
            regions = out["atlas"]["result"].detail["regions"]
            rows.append({"seed": seed, "min_p_adjusted": min(v["p_adjusted"] for v in out.values()),
                         "atlas_significant": sum(r["p_adjusted"] < 0.05 for r in regions),
                         "p_adjusted": {k: v["p_adjusted"] for k, v in out.items()}})
            print(rows[-1], flush=True)
        return rows

    rows = benchmark.pedantic(run, rounds=1, iterations=1)
    called = sum(r["min_p_adjusted"] < 0.05 for r in rows)
    regions = sum(r["atlas_significant"] > 0 for r in rows)
    record("null-seeds", results=RESULTS, seeds=SEEDS, permutations=NULL_PERMS, seeds_with_adjusted_p_below_005=called,
           seeds_with_a_significant_region=regions, rows=rows)
    assert called <= SEEDS // 20 and regions <= SEEDS // 20


@pytest.mark.benchmark(group="what-differs")
@pytest.mark.parametrize("name", ["fd", "kid", "c2st"])   # c2st refits per draw: ~8,000 refits (0.02 s each)
def test_plan_reaches_its_power(benchmark, name):
    """--plan's n on the removed case, then 20 fresh subsamples of that size per side, drawn from
    that case's A and B (the images whose features are cached), each with its own 99-draw null."""
    a_idx, b_idx = design("removed")
    union = union_of(a_idx, b_idx)
    n_a, n_b = len(a_idx), len(b_idx)
    c = _registries().comparators.get(name)()

    def prepared(ia, ib, seed):
        sub = union.subset(np.r_[ia, n_a + ib])
        sa, sb = sub.subset(np.arange(len(ia))), sub.subset(np.arange(len(ia), len(sub)))
        size = S.block_size(len(ia), len(ib), c.state_bytes(sa, c.state_context(sa, sb, seed=seed)))
        return c.draws(sa, sb, S.make_blocks(len(ia), len(ib), size, seed), seed=seed)

    def run():
        plan = S.power_plan(prepared(np.arange(n_a), np.arange(n_b), 0), 1.0, alpha=0.05, seed=0)
        if plan.n_a is None:
            return plan, None
        rng = np.random.default_rng(27)
        hits = 0
        for k in range(20):
            ia = np.sort(rng.choice(n_a, size=min(plan.n_a, n_a), replace=False))
            ib = np.sort(rng.choice(n_b, size=min(plan.n_b, n_b), replace=False))
            d = prepared(ia, ib, k)
            hits += S.p_value(d.observed(), S.permutation_null(d, 99, k), 1.0) < 0.05
        return plan, hits

    plan, hits = benchmark.pedantic(run, rounds=1, iterations=1)
    record("plan", results=RESULTS, comparator=name, n_a=plan.n_a, n_b=plan.n_b, how=plan.how, hits_of_20=hits)
    assert hits is not None and hits >= 14
