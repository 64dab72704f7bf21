"""QRP: metric definitions, the MI bound, the split rule, k-means, the Summariser end to end."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from bench_qrp.method import QRP
from bench_qrp.probe import (
    ProbeConfig,
    average_precision_per_class,
    conditional_entropy,
    entropy,
    probe_metrics,
    reverse_probe,
    stratified_split,
    train_probe,
)
from bench_qrp.quantise import faiss_kmeans, resolve_k, standardise
from sklearn import metrics as skm

from bench.api import DataView
from bench.datasets.base import ImageSource, content_revision
from bench.errors import BenchError, DataError
from bench.extractors.pixels import PixelsExtractor
from bench.features import FeatureStore
from bench.testing import make_tiny_source, make_tiny_view

FAST = {"n_clusterings": 2, "epochs": 30, "milestones": (18, 24)}
FASTEST = {"n_clusterings": 1, "epochs": 10, "milestones": (6, 8), "breakdown": False}


def planted_view(n_per: int = 40, seed: int = 0) -> DataView:
    """Six clusters = every combination of attribute a (2 values) × b (3 values), each drawn
    as a flat colour with light noise; concept groups ``a``, ``b`` and random ``noise`` bits."""
    rng = np.random.default_rng(seed)
    a = np.repeat(np.arange(2), 3 * n_per)
    b = np.tile(np.repeat(np.arange(3), n_per), 2)
    combo = a * 3 + b
    palette = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [0, 255, 255]])
    images = palette[combo][:, None, None, :] + rng.integers(0, 20, size=(len(combo), 4, 4, 3))
    images = np.clip(images, 0, 255).astype(np.uint8)
    noise = rng.random((len(combo), 4)) < 0.5
    concepts = np.concatenate([np.eye(2, dtype=bool)[a], np.eye(3, dtype=bool)[b], noise], axis=1)
    source = ImageSource(
        name="planted", revision=content_revision(images), n=len(combo), array=images,
        concepts=concepts, concept_names=["a0", "a1", "b0", "b1", "b2", "n0", "n1", "n2", "n3"],
        concept_groups={"a": [0, 1], "b": [2, 3, 4], "noise": [5, 6, 7, 8]},
    )
    return DataView(source, PixelsExtractor(size=4), FeatureStore(None))


# --------------------------------------------------------------------------- metrics


def _nmi_by_hand(a: np.ndarray, b: np.ndarray) -> float:
    """MI / mean(H(a), H(b)) from the contingency table (the 'arithmetic' normaliser)."""
    joint = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(joint, (a, b), 1)
    p = joint / joint.sum()
    pa, pb = p.sum(1), p.sum(0)
    nz = p > 0
    mi = (p[nz] * np.log(p[nz] / np.outer(pa, pb)[nz])).sum()
    h_a, h_b = (-(q[q > 0] * np.log(q[q > 0])).sum() for q in (pa, pb))
    return mi / ((h_a + h_b) / 2)


def test_nmi_ami_equal_sklearn_arithmetic_on_fixed_inputs():
    true = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 3, 3])
    pred = np.array([0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 2, 0])
    logp = np.log(np.full((len(true), 4), 0.01))
    logp[np.arange(len(true)), pred] = np.log(0.97)
    got = probe_metrics(true, torch.as_tensor(logp))
    assert got["nmi"] == pytest.approx(skm.normalized_mutual_info_score(true, pred, average_method="arithmetic"),
                                       abs=1e-12)
    assert got["ami"] == pytest.approx(skm.adjusted_mutual_info_score(true, pred, average_method="arithmetic"),
                                       abs=1e-12)
    assert got["nmi"] == pytest.approx(_nmi_by_hand(true, pred), abs=1e-12)
    # the normaliser matters on this input, so the stated one is the one used
    assert abs(got["nmi"] - skm.normalized_mutual_info_score(true, pred, average_method="min")) > 1e-3
    assert got["top1"] == pytest.approx(np.mean(pred == true))
    hit = np.mean(pred == true)
    assert got["ce"] == pytest.approx(-np.log(0.97) * hit - np.log(0.01) * (1 - hit))


@pytest.mark.parametrize("ties", [False, True])
def test_average_precision_equals_sklearn(ties):
    rng = np.random.default_rng(1)
    true = rng.integers(0, 7, 300)
    scores = (rng.integers(0, 4, (300, 7)) if ties else rng.random((300, 7))).astype(np.float32)
    classes = np.unique(true)
    ours = average_precision_per_class(true, scores, classes, chunk=3)
    ref = [skm.average_precision_score(true == c, scores[:, c]) for c in classes]
    np.testing.assert_allclose(ours, ref, atol=1e-12)


def test_entropies_closed_form():
    codes = np.array([0, 0, 1, 1, 2, 2, 2, 2])
    concepts = np.array([[1, 0]] * 4 + [[0, 1]] * 4)
    assert entropy(codes) == pytest.approx(-(2 * 0.25 * math.log(0.25) + 0.5 * math.log(0.5)))
    # y=(1,0): codes {0,0,1,1} → ln 2 ; y=(0,1): codes all 2 → 0
    assert conditional_entropy(codes, concepts) == pytest.approx(0.5 * math.log(2))


def test_mutual_information_bound_small_exact_case():
    """CE of the probe ≥ H(cluster | concepts): exactly on the training sample (Gibbs) and on
    the known population; tight because one-hot concept combinations make the probe exact."""
    rng = np.random.default_rng(0)
    p_k_given_y = rng.dirichlet(np.ones(4) * 0.7, size=8)            # 8 concept vectors → 4 clusters
    p_y = np.full(8, 1 / 8)
    n = 2000
    y = rng.integers(0, 8, n)
    codes = np.array([rng.choice(4, p=p_k_given_y[v]) for v in y])
    concepts = np.eye(8, dtype=np.uint8)[y]
    x = torch.as_tensor(concepts)
    everyone = torch.arange(n)
    probe = train_probe(x, torch.as_tensor(codes), n_classes=4, train=everyone, val=None, seed=0,
                        config=ProbeConfig(lr=1.0, epochs=60, milestones=(40, 50)))
    logq_sample = probe.log_proba(x).double().numpy()
    ce_sample = -logq_sample[np.arange(n), codes].mean()
    h_plugin = conditional_entropy(codes, concepts)
    assert ce_sample >= h_plugin - 1e-9
    assert ce_sample - h_plugin < 0.02

    logq = probe.log_proba(torch.eye(8, dtype=torch.uint8)).double().numpy()
    h_true = -(p_y[:, None] * p_k_given_y * np.log(p_k_given_y)).sum()
    ce_true = -(p_y[:, None] * p_k_given_y * logq).sum()
    assert ce_true >= h_true
    assert ce_true - h_true < 0.03

    # the reported MI estimate is H(clusters) − CE_test, below the true I(cluster; concepts)
    split = stratified_split(codes, seed=0)
    res = reverse_probe(x, codes, split, n_classes=4, seed=0, config=ProbeConfig(lr=1.0, epochs=40,
                                                                                milestones=(25, 35)))
    h_k = entropy(codes)
    assert res["mi_nats"] == pytest.approx(h_k - res["ce"])
    assert res["mi_nats"] <= (h_k - h_plugin) + 0.02


def test_concept_aligned_clustering_gives_nmi_one_random_gives_zero():
    rng = np.random.default_rng(0)
    n, k = 600, 5
    codes = rng.integers(0, k, n)
    extra = rng.random((n, 6)) < 0.5
    aligned = torch.as_tensor(np.concatenate([np.eye(k, dtype=bool)[codes], extra], axis=1).astype(np.uint8))
    split = stratified_split(codes, seed=1)
    res = reverse_probe(aligned, codes, split, n_classes=k, seed=0)
    assert res["nmi"] > 0.99 and res["ami"] > 0.99 and res["top1"] == 1.0 and res["map"] > 0.99

    independent = torch.as_tensor(np.concatenate([np.eye(k, dtype=bool)[rng.integers(0, k, n)], extra],
                                                 axis=1).astype(np.uint8))
    res = reverse_probe(independent, codes, split, n_classes=k, seed=0)
    assert res["nmi"] < 0.05 and abs(res["ami"]) < 0.03
    assert res["top1"] < np.bincount(codes).max() / n + 0.08
    assert res["mi_nats"] < 0.02   # no information survives (the bound may go negative)


# --------------------------------------------------------------------------- split, K, k-means


def test_stratified_split_rule_for_tiny_clusters():
    sizes = [1, 2, 3, 5, 10, 100]
    codes = np.repeat(np.arange(len(sizes)), sizes)
    sp = stratified_split(codes, seed=3)
    assert sp.dropped.tolist() == [0]                                  # the singleton cluster
    parts = [sp.train, sp.val, sp.test]
    joined = np.concatenate(parts)
    assert len(np.unique(joined)) == len(joined) == len(codes) - 1
    for c, n in enumerate(sizes[1:], start=1):
        n_test = max(1, math.floor(0.2 * n + 0.5))
        n_val = min(math.floor(0.2 * (n - n_test) + 0.5), n - n_test - 1)
        assert (codes[sp.test] == c).sum() == n_test
        assert (codes[sp.val] == c).sum() == n_val
        assert (codes[sp.train] == c).sum() == n - n_test - n_val >= 1
    again = stratified_split(codes, seed=3)
    assert all(np.array_equal(p, q) for p, q in zip(parts, [again.train, again.val, again.test]))
    assert not np.array_equal(stratified_split(codes, seed=4).test, sp.test)


def test_resolve_k_small_dataset_rule():
    assert resolve_k(1000, 100_000) == 1000
    assert resolve_k(1000, 1200, k_rule="scale") == 24                 # 1200 // min_cluster_size 50
    assert resolve_k(1000, 60_000, k_rule="scale") == 1000
    assert resolve_k(10, 1200, k_rule="scale") == 10
    assert resolve_k(1000, 60, k_rule="scale", min_cluster_size=10) == 6
    assert resolve_k(1000, 60, k_rule="scale") == 2
    for k, n in ((1000, 600), (600, 600)):
        with pytest.raises(DataError, match="K=") as err:
            resolve_k(k, n)
        assert "\n" not in str(err.value)
    with pytest.raises(BenchError, match="at least 1"):
        resolve_k(0, 100)
    with pytest.raises(DataError, match="need N >= 4"):
        resolve_k(1000, 3, k_rule="scale")
    with pytest.raises(BenchError, match="k_rule"):
        resolve_k(10, 100, k_rule="auto")


def test_standardise_and_faiss_kmeans():
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=10, size=(4, 8))
    truth = np.repeat(np.arange(4), 50)
    x = (centres[truth] + rng.normal(size=(200, 8))).astype(np.float32)
    x[:, 3] = 7.0                                                       # a constant dimension
    z = standardise(x)
    assert np.allclose(z.mean(0), 0, atol=1e-5) and np.allclose(z[:, [0, 1, 2, 4]].std(0), 1, atol=1e-4)
    assert np.all(z[:, 3] == 0)
    km = faiss_kmeans(z, 4, seed=0, n_redo=3)
    assert skm.normalized_mutual_info_score(truth, km.codes) == pytest.approx(1.0)
    d2 = ((z[:, None, :] - km.centroids[None]) ** 2).sum(-1)
    assert np.array_equal(km.codes, d2.argmin(1))                      # every point at its nearest centroid
    assert km.inertia == pytest.approx(d2.min(1).sum(), rel=1e-4)
    assert np.array_equal(faiss_kmeans(z, 4, seed=0, n_redo=3).codes, km.codes)
    assert faiss_kmeans(z, 4, seed=0, max_points_per_centroid=10).train_points == 40


# --------------------------------------------------------------------------- the Summariser


def test_summariser_breakdown_explains_planted_combinations():
    view = planted_view()
    # random-init k-means often merges two of six equal blobs; enough restarts find them all
    qrp = QRP(n_clusters=6, n_redo=25, **FAST).fit(view, seed=0)
    s = qrp.summary_
    assert s.codes.shape == (len(view),) and s.embedding.shape[0] == len(view)
    assert np.array_equal(s.codes, s.artefacts["qrp_codes"][0])
    combo = np.argmax(view.concepts[:, :2], 1) * 3 + np.argmax(view.concepts[:, 2:5], 1)
    assert skm.normalized_mutual_info_score(combo, s.codes) == pytest.approx(1.0)
    assert s.statistics["qrp_nmi"] > 0.99 and s.statistics["qrp_top1"] > 0.99
    for key in ("qrp_nmi", "qrp_ami", "qrp_top1", "qrp_map"):
        assert 0 <= s.statistics[key + "_std"] < 0.05
    rows = s.artefacts["tables"]["qrp_expert_breakdown"]
    assert [r["added"] for r in rows] == ["ground-truth/a", "ground-truth/b", "ground-truth/noise"]
    # a alone explains log 2 of log 6 nats; a + b explain everything; noise adds nothing
    assert 0.3 < rows[0]["nmi"] < 0.6
    assert rows[1]["nmi"] > 0.99 and rows[1]["delta_nmi"] > 0.4
    assert abs(rows[2]["delta_nmi"]) < 0.02
    assert len(s.artefacts["tables"]["qrp_clusterings"]) == 2
    protocol = {row["setting"]: row["value"] for row in s.artefacts["tables"]["qrp_protocol"]}
    assert "one run = one clustering" in protocol["run"] and "average_method='arithmetic'" in protocol["metrics"]
    assert set(s.artefacts) == {"tables", "qrp_codes"}            # everything else lives in the record


def test_summariser_quick_preset_on_tiny_view_is_deterministic():
    view = make_tiny_view()
    params = dict(QRP.quick_params, **FAST, min_cluster_size=10)
    a = QRP(**params).fit(view, seed=0).summary_
    b = QRP(**params).fit(view, seed=0).summary_
    assert a.statistics["qrp_k"] == 6                                  # 60 images // min_cluster_size 10
    assert np.array_equal(a.codes, b.codes) and a.statistics == b.statistics
    c = QRP(**params).fit(view, seed=1).summary_
    assert not np.array_equal(a.artefacts["qrp_codes"], c.artefacts["qrp_codes"]) or \
        a.statistics != c.statistics


def test_bad_inputs_raise_one_line_errors():
    view = make_tiny_view()
    cases = [
        (QRP(), DataError, "K=1000"),                                   # paper K on 60 images
        (QRP(n_clusters=6, experts=("no-such-expert",)), BenchError, "no-such-expert"),
        (QRP(n_clusters=6, n_clusterings=0), BenchError, "n_clusterings"),
        (QRP(n_clusters=6, expert_params={"clip-zeroshot": {}}), BenchError, "expert_params"),
    ]
    for qrp, exc, match in cases:
        with pytest.raises(exc, match=match) as err:
            qrp.fit(view, seed=0)
        assert "\n" not in str(err.value)

    bare = make_tiny_source()
    bare.labels, bare.concepts, bare.concept_groups = None, None, None
    with pytest.raises(DataError, match="bench_register_experts"):
        QRP(n_clusters=6).fit(DataView(bare, PixelsExtractor(size=8), FeatureStore(None)), seed=0)

    constant = make_tiny_source()
    constant.concepts[:, 3] = True                                      # group "half" is constant
    cview = DataView(constant, PixelsExtractor(size=8), FeatureStore(None))
    with pytest.raises(DataError, match=r"'half'.*same for all"):
        QRP(n_clusters=6).fit(cview, seed=0)
    kept = QRP(n_clusters=6, on_constant_group="drop", **FAST).fit(cview, seed=0).summary_
    assert [g["group"] for g in kept.artefacts["tables"]["qrp_concept_groups"]] == ["labels", "class"]

    nan = make_tiny_source()
    nan.array = nan.array.astype(np.float32)
    nan.array[0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        QRP(n_clusters=6).fit(DataView(nan, PixelsExtractor(size=8), FeatureStore(None)), seed=0)


def test_registered_and_conformant():
    from bench import plugins
    from bench.conformance import method_checks

    regs = plugins.load()
    assert regs.summarisers.get("qrp") is QRP
    assert {"ground-truth", "clip-zeroshot"} <= set(regs.experts.names())
    for check in method_checks(QRP, view=make_tiny_view(), params=FASTEST):
        check()


@pytest.mark.parametrize("cap", [None, 20])
def test_torch_quantiser_matches_faiss_protocol(cap):
    """The GPU fallback (torch Lloyd, faiss-style subsample) is no worse than faiss with the same
    restarts (here it is better: faiss' random starts land in poorer local minima); run on CPU."""
    from bench_qrp.quantise import faiss_kmeans, torch_kmeans

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(10, 6)) * 6
    x = (centres[rng.integers(0, 10, 1500)] + rng.normal(size=(1500, 6))).astype(np.float32)
    ours = torch_kmeans(x, 10, seed=0, n_iter=20, n_redo=3, max_points_per_centroid=cap, device="cpu")
    ref = faiss_kmeans(x, 10, seed=0, n_iter=20, n_redo=3, max_points_per_centroid=cap)
    assert ours.train_points == ref.train_points == (1500 if cap is None else 200)
    assert ours.codes.shape == (1500,) and ours.gpu
    assert ours.inertia <= ref.inertia * 1.01
