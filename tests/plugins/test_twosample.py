"""The two-sample comparators (kid, prdc, c2st) and FD∞: equal to their reference packages on the same
features, their draws equal to their direct scores (resamples with repeated images included), a
planted missing mode found image by image, conformance, and the report section."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from bench_twosample import c2st as C
from bench_twosample import kid as K
from bench_twosample import prdc as P
from PIL import Image

from bench import statistics as S
from bench.api import DataView
from bench.baselines import FrechetDistance, fd_infinity, frechet_distance_features
from bench.conformance import method_checks
from bench.datasets.base import ImageSource, content_revision
from bench.errors import BenchError, DataError
from bench.extractors.pixels import PixelsExtractor
from bench.features import FeatureStore


class FeatureView(DataView):
    """A DataView over given features (no images), for exact inputs."""

    def __init__(self, x: np.ndarray):
        n = len(x)
        src = ImageSource(name="feat", revision=content_revision(np.asarray(x)), n=n,
                          array=np.zeros((n, 2, 2, 3), np.uint8), labels=np.zeros(n, np.int64))
        super().__init__(src, PixelsExtractor(size=2), FeatureStore(None))
        self._x = np.asarray(x, dtype=np.float32)

    def features(self, layer: str = "pooled", rows: slice | None = None) -> np.ndarray:
        out = self._x[self.indices]
        return out if rows is None else out[rows]


def views(xa: np.ndarray, xb: np.ndarray) -> tuple[DataView, DataView]:
    """A and B as views of one union (features stored float32, so the references get the same values)."""
    union = FeatureView(np.concatenate([xa, xb]))
    return union.subset(np.arange(len(xa))), union.subset(np.arange(len(xa), len(xa) + len(xb)))


def sides(n_a: int, n_b: int, d: int, shift: float = 0.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    xa = rng.normal(size=(n_a, d)).astype(np.float32)
    xb = (rng.normal(size=(n_b, d)) * 1.2 + shift).astype(np.float32)
    return xa, xb


def modes(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Four well-separated Gaussian modes in 8-D; A has 50 of each, B 60 of modes 1–3 only."""
    rng = np.random.default_rng(seed)
    centres = 6.0 * np.eye(4, 8)
    mode_a = np.repeat(np.arange(4), 50)
    mode_b = np.repeat(np.arange(1, 4), 60)
    xa = centres[mode_a] + rng.normal(size=(len(mode_a), 8))
    xb = centres[mode_b] + rng.normal(size=(len(mode_b), 8))
    return xa.astype(np.float32), xb.astype(np.float32), mode_a


# ----------------------------------------------------------------------------- kid


def test_kid_equals_torch_fidelity_on_the_same_features():
    """One torch-fidelity subset covering every row (a permutation of them: MMD² does not see order)."""
    from torch_fidelity.metric_kid import kernel_mmd, kid_features_to_metric

    xa, xb = sides(240, 240, 24, shift=0.15)
    a, b = views(xa, xb)
    ref = kid_features_to_metric(torch.from_numpy(xa.astype(np.float64)), torch.from_numpy(xb.astype(np.float64)),
                                 kid_subsets=1, kid_subset_size=240, verbose=False,
                                 rng_seed=0)["kernel_inception_distance_mean"]
    got = K.KernelInceptionDistance().compare(a, b)
    assert got.score == pytest.approx(ref, rel=1e-6, abs=1e-9)
    assert K.KernelInceptionDistance().score(a, b) == pytest.approx(ref, rel=1e-6, abs=1e-9)
    rbf = K.KernelInceptionDistance(kernel="rbf").compare(a, b)
    sigma = rbf.detail["rbf_sigma"]
    ref_rbf = kernel_mmd(xa.astype(np.float64), xb.astype(np.float64), kid_kernel="rbf", kid_kernel_rbf_sigma=sigma)
    assert rbf.score == pytest.approx(ref_rbf, rel=1e-6, abs=1e-9)
    x = np.concatenate([xa, xb]).astype(np.float64)
    pair_d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))[np.triu_indices(len(x), 1)]
    assert sigma == pytest.approx(np.median(pair_d), rel=1e-9)   # the median heuristic over A ∪ B


def _kid_of_multisets(x: np.ndarray, rows_a: np.ndarray, rows_b: np.ndarray) -> float:
    """Unbiased MMD² of two multisets of rows, pairs of copies of one image left out (the definition)."""
    k = (x @ x.T / x.shape[1] + 1.0) ** 3

    def within(rows):
        same = rows[:, None] == rows[None, :]
        return k[np.ix_(rows, rows)][~same].mean()

    return within(rows_a) + within(rows_b) - 2 * k[np.ix_(rows_a, rows_b)].mean()


def test_kid_draws_score_unequal_sizes_blocks_and_resamples(monkeypatch):
    xa, xb = sides(70, 45, 6, shift=0.3)
    a, b = views(xa, xb)
    x = np.concatenate([xa, xb]).astype(np.float64)
    direct = K.KernelInceptionDistance().compare(a, b).score
    assert direct == pytest.approx(_kid_of_multisets(x, np.arange(70), np.arange(70, 115)), rel=1e-9)
    draws = K.KernelInceptionDistance().draws(a, b, None)
    assert draws.blocks.count == 115 and draws.observed() == pytest.approx(direct, rel=1e-9)
    rng = np.random.default_rng(3)
    for _ in range(3):   # a resample's repeated image never pairs with its own copy
        w_a, w_b = S.bootstrap_weights(draws.blocks, rng)
        rows_a, rows_b = np.repeat(np.arange(115), w_a.astype(int)), np.repeat(np.arange(115), w_b.astype(int))
        assert draws.score(w_a, w_b) == pytest.approx(_kid_of_multisets(x, rows_a, rows_b), rel=1e-9)
    monkeypatch.setattr(K, "SINGLE_MAX", 20)   # blocks of 6 images: block-pair sums, the same score
    blocked = K.KernelInceptionDistance().draws(a, b, None)
    assert blocked.blocks.count < 30 and blocked.observed() == pytest.approx(direct, rel=1e-9)
    with pytest.raises(BenchError, match="kernel must be one of"):
        K.KernelInceptionDistance(kernel="linear").compare(a, b)


# ----------------------------------------------------------------------------- prdc


@pytest.mark.parametrize(("n_a", "n_b", "k"), [(150, 150, 5), (120, 80, 3)])
def test_prdc_equals_the_prdc_package(n_a, n_b, k, capsys):
    from prdc import compute_prdc

    xa, xb = sides(n_a, n_b, 10, shift=0.2, seed=k)
    ref = compute_prdc(xa.astype(np.float64), xb.astype(np.float64), k)
    a, b = views(xa, xb)
    got = P.PRDC(k=k).compare(a, b)
    for m in ("precision", "recall", "density", "coverage"):
        assert got.statistics[m] == pytest.approx(ref[m], abs=1e-6), m
    assert got.score == pytest.approx(1.0 - ref["coverage"], abs=1e-6)
    # a short neighbour list forces the exact full search for many nodes: the same numbers
    x = np.concatenate([xa, xb]).astype(np.float64)
    side = np.r_[np.zeros(n_a), np.ones(n_b)]
    short = P.prdc_from_graph(P.NeighbourGraph(x, k + 1), 1 - side, side, k)
    assert all(short[m] == pytest.approx(ref[m], abs=1e-6) for m in ("precision", "recall", "density", "coverage"))
    draws = P.PRDC(k=k).draws(a, b, None)
    assert draws.observed() == pytest.approx(got.score, abs=1e-12)


def _prdc_of_multisets(x: np.ndarray, rows_a: np.ndarray, rows_b: np.ndarray, k: int) -> dict[str, float]:
    """PRDC of two multisets: a copy's radius counts other images' copies, never its own."""
    d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))

    def radii(rows):
        dd = d[np.ix_(rows, rows)].copy()
        dd[rows[:, None] == rows[None, :]] = np.inf
        return np.sort(dd, axis=1)[:, k - 1]

    ra, rb = radii(rows_a), radii(rows_b)
    ab = d[np.ix_(rows_a, rows_b)]
    return {"precision": (ab < ra[:, None]).any(0).mean(), "recall": (ab < rb[None, :]).any(1).mean(),
            "density": (ab < ra[:, None]).sum(0).mean() / k, "coverage": (ab.min(1) < ra).mean()}


def test_prdc_resamples_count_repeats_but_not_own_copies():
    xa, xb = sides(40, 30, 5, shift=0.4, seed=2)
    a, b = views(xa, xb)
    x = np.concatenate([xa, xb]).astype(np.float64)
    draws = P.PRDC(k=3).draws(a, b, None)
    rng = np.random.default_rng(5)
    for _ in range(4):
        w_a, w_b = S.bootstrap_weights(draws.blocks, rng)
        got = P.prdc_from_graph(draws.graph, w_a, w_b, 3)
        rows_a, rows_b = np.repeat(np.arange(70), w_a.astype(int)), np.repeat(np.arange(70), w_b.astype(int))
        ref = _prdc_of_multisets(x, rows_a, rows_b, 3)
        assert all(got[m] == pytest.approx(ref[m], abs=1e-12) for m in ref)
    with pytest.raises(DataError, match="at least 4 images per side"):
        P.PRDC(k=3).compare(a.subset([0, 1, 2]), b)


# ----------------------------------------------------------------------------- c2st


def test_c2st_is_sklearn_out_of_fold_logistic_regression_and_refits_per_draw():
    """Both statistics from scikit-learn's own cross-validated logistic regression (the oracle):
    the default, the mean out-of-fold logit of B minus that of A, and AUC − 0.5."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    xa, xb = sides(60, 40, 6, shift=0.8, seed=4)
    a, b = views(xa, xb)
    got = C.C2ST().compare(a, b, seed=3)
    x = C.standardised(np.concatenate([xa, xb]).astype(np.float64))
    y = np.r_[np.zeros(60), np.ones(40)]
    p = cross_val_predict(LogisticRegression(C=C.C2ST().c, solver=C.SOLVER), x, y, method="predict_proba",
                          cv=StratifiedKFold(5, shuffle=True, random_state=3))[:, 1]
    logit = np.log(p) - np.log1p(-p)
    assert got.score == pytest.approx(logit[y == 1].mean() - logit[y == 0].mean(), abs=1e-9)
    assert got.statistics["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-9)
    assert np.allclose(got.detail["p_b"], p, atol=1e-9)
    by_auc = C.C2ST(statistic="auc").compare(a, b, seed=3)
    assert by_auc.score == pytest.approx(roc_auc_score(y, p) - 0.5, abs=1e-9)
    assert by_auc.statistics["logit_difference"] == pytest.approx(got.score, abs=1e-12)
    for comp, direct in ((C.C2ST(), got), (C.C2ST(statistic="auc"), by_auc)):
        draws = comp.draws(a, b, None, seed=3)
        assert draws.observed() == pytest.approx(direct.score, abs=1e-12)
        null = S.permutation_null(draws, 5, seed=0)   # permuted labels: refitted, near chance
        assert np.all(np.abs(null) < direct.score) and len(set(null.tolist())) == 5
    with pytest.raises(BenchError, match="folds must be"):
        C.C2ST(folds=1).compare(a, b)
    with pytest.raises(BenchError, match="statistic must be one of logit, auc"):
        C.C2ST(statistic="accuracy").compare(a, b)
    # every principal component is a rotation, which the L2-penalised fit does not see; fewer change it
    assert C.C2ST(components=6).compare(a, b, seed=3).score == pytest.approx(got.score, abs=1e-6)
    assert C.C2ST(components=2).compare(a, b, seed=3).statistics["dimensions"] == 2


def test_c2st_logit_difference_sees_a_changed_share_better_than_auc():
    """A mode whose share doubles (10 % → 18 %): the density ratio takes two values, AUC's ranks tie
    the unchanged images, the mean logit weighs them by how far they sit from the other side.
    z against the refitted null, averaged over 5 replications (one alone is noisy)."""
    z = {name: [] for name in C.STATISTICS}
    for seed in range(5):
        rng = np.random.default_rng(seed)
        xa, xb = rng.normal(size=(400, 8)), rng.normal(size=(440, 8))
        xa[:40, 0] += 4.0   # a separate mode along the first axis: 10 % of A, 80 of B's 440 (18 %)
        xb[:80, 0] += 4.0
        a, b = views(xa, xb)
        for name in C.STATISTICS:
            draws = C.C2ST(statistic=name, components=None).draws(a, b, None, seed=0)
            null = S.permutation_null(draws, 49, seed=1)
            z[name].append((draws.observed() - null.mean()) / null.std())
    mean = {name: float(np.mean(v)) for name, v in z.items()}
    assert mean["logit"] > 2.5 and mean["logit"] > mean["auc"] + 0.5, z


# ----------------------------------------------------------------------------- a planted missing mode


def test_a_missing_mode_is_found_image_by_image():
    xa, xb, mode_a = modes()
    a, b = views(xa, xb)
    removed = np.flatnonzero(mode_a == 0)
    prdc = P.PRDC().compare(a, b)
    flagged = np.intersect1d(prdc.detail["uncovered_a"], removed)
    assert len(flagged) / len(removed) >= 0.8
    c2st = C.C2ST().compare(a, b)
    a_like = next(f for f in c2st.findings if f.title.startswith("images of A most A-like"))
    top = np.asarray([r["image"] for r in a_like.rows])
    assert len(top) == 50 and np.isin(top, removed).mean() >= 0.8
    kid = K.KernelInceptionDistance().compare(a, b)
    a_excess = next(f for f in kid.findings if f.side == "a")
    assert np.isin([r["image"] for r in a_excess.rows], removed).mean() >= 0.8
    p = {}
    for name, comp, n in (("kid", K.KernelInceptionDistance(), 199), ("prdc", P.PRDC(), 199), ("c2st", C.C2ST(), 119)):
        draws = comp.draws(a, b, None)
        p[name] = S.p_value(draws.observed(), S.permutation_null(draws, n, seed=0), 1.0)
    assert max(p.values()) < 0.01, p
    print(f"\nplanted mode: prdc flags {len(flagged)}/{len(removed)}; c2st A-like top 50 from the mode "
          f"{np.isin(top, removed).mean():.2f}; p {p}")


# ----------------------------------------------------------------------------- fd∞


def test_fd_infinity_removes_the_small_sample_bias(caplog):
    rng = np.random.default_rng(0)
    d = 16
    xa, xb = rng.normal(size=(800, d)), rng.normal(size=(800, d))
    same = fd_infinity(xa, xb, seed=0)
    assert same["fd"][-1] > 0.2 and abs(same["fd_inf"]) < 0.25 * same["fd"][-1]
    # the streamed path (more images than dimensions) equals FD of the same nested subsets
    ka, kb = same["n_a"][3], same["n_b"][3]
    rng2 = np.random.default_rng([0, 13])
    oa, ob = rng2.permutation(800), rng2.permutation(800)
    assert same["fd"][3] == pytest.approx(frechet_distance_features(xa[oa[:ka]], xb[ob[:kb]]), rel=1e-8)
    shifted = fd_infinity(xa, xb + 0.5, seed=0)   # truth: d × 0.25 = 4
    assert abs(shifted["fd_inf"] - 4.0) < abs(shifted["fd"][-1] - 4.0)
    a, b = views(xa[:10].astype(np.float32), xb[:12].astype(np.float32))
    with caplog.at_level(logging.WARNING, logger="bench"):
        res = FrechetDistance().compare(a, b)
    assert any("16 feature dimensions" in r.message for r in caplog.records)
    assert "fd_inf" in res.statistics and res.statistics["fd"] == res.score
    assert FrechetDistance().score(a, b) == res.score


# ----------------------------------------------------------------------------- conformance, report


@pytest.mark.parametrize("check", [c for m in ("kid", "prdc", "c2st") for c in method_checks(m)],
                         ids=lambda c: c.__name__)
def test_conformance(check):
    check()


def _folder(root: Path, images: np.ndarray) -> Path:
    root.mkdir(parents=True)
    for i, im in enumerate(images):
        Image.fromarray(im).save(root / f"{i:03d}.png")
    return root


def test_compare_records_and_the_report_section(tmp_path, capsys):
    from bench.cli import main
    from bench.runstore import RunStore
    from bench.testing import make_tiny_source

    src = make_tiny_source(90, n_classes=3, size=16, seed=1)
    imgs, labels = src.array, src.labels
    a = _folder(tmp_path / "a", imgs[:60])
    b = _folder(tmp_path / "b", imgs[60:][labels[60:] != 0])   # B lacks class 0
    out = tmp_path / "out"
    assert main(["compare", str(a), str(b), "--methods", "kid,prdc,c2st", "--permutations", "19", "--bootstrap", "5",
                 "--extractor", "pixels", "--no-progress", "--no-cache", "--out", str(out)]) == 0, capsys.readouterr()
    recs = {r.method.name: r for r in RunStore(out).load().records if r.kind == "comparison"}
    # the atlas joins every compare (--no-atlas leaves it out)
    assert set(recs) == {"kid", "prdc", "c2st", "atlas"} and all(r.status == "ok" for r in recs.values())
    assert {"precision", "recall", "density", "coverage"} <= set(recs["prdc"].statistics)
    assert recs["c2st"].tables["null"][0]["draws"] == 19
    loaded = RunStore(out).load()
    path = next(p for r, p in zip(loaded.records, loaded.paths) if r.method.name == "c2st")
    findings = RunStore.load_artefacts(path)[0]["findings"]
    every = next(f for f in findings if f["title"].startswith("out-of-fold P(B) of every image"))
    assert len(every["rows"]) == recs["c2st"].dataset.n + recs["c2st"].dataset_b.n   # per image, in the record
    flagged = next(f for f in findings if f["title"].startswith("images of A most A-like"))
    assert flagged["images"] and flagged["images"][0][1] == "a"
    text = (out / "report.html").read_text(encoding="utf-8")
    assert 'id="twosample"' in text and "out-of-fold P(B), by side" in text
    assert "images of A no image of B covers" in text and "images of B most B-like" in text
