"""The multicut method: costs, cal, graph choice, bad input, statistics, VI, comparator."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from bench_multicut import costs as C
from bench_multicut import solver as S
from bench_multicut import stats as T
from bench_multicut.method import Multicut, MulticutComparator

from bench import metrics as M
from bench.api import DataView
from bench.conformance import method_checks
from bench.datasets.base import ImageSource, content_revision
from bench.errors import BenchError, DataError
from bench.extractors.pixels import PixelsExtractor
from bench.features import FeatureStore
from bench.testing import make_tiny_view


class FeatureView(DataView):
    """A DataView over given features (no images), for exact inputs such as duplicates."""

    def __init__(self, x: np.ndarray, *, groups: np.ndarray | None = None, extractor_name: str = "pixels"):
        n = len(x)
        rev = content_revision(np.asarray(x)) if n else "empty"
        src = ImageSource(name="feat", revision=rev, n=n,
                          array=np.zeros((n, 2, 2, 3), np.uint8), labels=np.zeros(n, np.int64), groups=groups)
        ext = PixelsExtractor(size=2)
        ext.name = extractor_name
        super().__init__(src, ext, FeatureStore(None))
        self._x = np.asarray(x, dtype=np.float32)

    def features(self, layer: str = "pooled") -> np.ndarray:
        return self._x[self.indices]


def blobs(n_per: int = 20, k: int = 3, d: int = 16, spread: float = 0.3, seed: int = 0):
    """k clusters around orthogonal centres (between-cluster cosine about 0)."""
    rng = np.random.default_rng(seed)
    centres = 3.0 * np.eye(k, d)
    labels = np.repeat(np.arange(k), n_per)
    return (centres[labels] + spread * rng.normal(size=(len(labels), d))).astype(np.float32), labels


# ----------------------------------------------------------------------------- costs


def test_costs_match_the_reference_formula():
    x, _ = blobs(seed=1)
    cal = 0.6
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    s = xn.astype(np.float64) @ xn.T.astype(np.float64)
    iu = np.triu_indices(len(x), 1)
    p = np.clip((s - s[iu].min()) / (s[iu].max() - s[iu].min()), 1e-5, 1 - 1e-5)
    expected = np.log(p / (1 - p)) + np.log(cal / (1 - cal))
    W, st = C.similarity_matrix(C.normalise(x))
    C.costs_(W, st, cal)
    assert np.allclose(W.numpy()[iu], expected[iu], atol=2e-3)
    assert st.mean_p == pytest.approx(p[iu].mean(), abs=1e-5)
    assert np.all(np.diag(W.numpy()) == 0)


def test_zero_crossing_is_at_one_minus_cal():
    st = C.PairStats(n=10, s_min=0.0, s_max=1.0, s_mean=0.5)
    for cal in (0.3, 0.5, 0.7):
        s = torch.tensor([1 - cal - 0.01, 1 - cal, 1 - cal + 0.01], dtype=torch.float64)
        w = C.costs_(s, st, cal)
        assert w[0] < 0 and abs(float(w[1])) < 1e-9 and w[2] > 0


def test_clamp_keeps_duplicates_and_extremes_finite():
    x, _ = blobs(n_per=5, seed=2)
    x = np.concatenate([x, x[:3]])                 # exact duplicates: s = 1
    W, st = C.similarity_matrix(C.normalise(x))
    C.costs_(W, st, 0.5)
    assert torch.isfinite(W).all()
    assert float(W.max()) == pytest.approx(math.log((1 - 1e-5) / 1e-5), rel=1e-3)


def test_chunked_pair_statistics_and_knn_edges():
    x, _ = blobs(n_per=12, seed=10)
    x = np.concatenate([x, x[:1], x[:1]])            # three identical rows: self may not come first
    xn = C.normalise(x)
    _, dense = C.similarity_matrix(xn)
    chunked = C.pair_stats_chunked(xn, chunk_bytes=4 * len(x) * 5)   # 5 rows per block
    assert (chunked.s_min, chunked.s_max) == pytest.approx((dense.s_min, dense.s_max), abs=1e-6)
    assert chunked.s_mean == pytest.approx(dense.s_mean)
    uv, s = C.knn_edges(xn, 3)
    assert np.all(uv[:, 0] < uv[:, 1]) and len(np.unique(uv, axis=0)) == len(uv)
    assert np.bincount(uv.ravel(), minlength=len(x)).min() >= 3     # every node keeps k neighbours
    assert np.allclose(s, (xn[uv[:, 0]] * xn[uv[:, 1]]).sum(1).numpy(), atol=1e-6)


def test_adaptive_cal_rule_and_table():
    assert C.adaptive_cal(0.3) == pytest.approx(0.94 - 0.98 * 0.3)
    assert C.adaptive_cal(2.0) == pytest.approx(1e-5)
    # the registry's names, then architectures
    assert C.default_cal("clip-vitb32", "ViT-B-32")[0] == 0.5
    assert C.default_cal("dinov2-vitb14", "")[0] == 0.6
    assert C.default_cal("convnextv2-tiny")[0] == 0.7
    assert C.default_cal("resnet50", "resnet50")[0] == 0.7
    assert C.default_cal("my-net", "inception_resnet_v2")[0] == 0.5
    assert C.default_cal("vgg19_bn")[0] == 0.7
    assert C.default_cal("tiny-vit", "bench-tiny-vit:depth=6")[0] == C.OFFLINE_CAL["tinyvit"] == 0.3
    assert C.default_cal("pixels")[0] == C.OFFLINE_CAL["pixels"] == 0.3
    assert C.default_cal("clip-rn50", "RN50")[0] is None
    assert C.default_cal("deit-s", "deit_small_patch16_224")[0] is None


def test_cal_auto_uses_mean_normalised_similarity():
    x, _ = blobs(seed=3)
    m = Multicut(cal="auto").fit(FeatureView(x))
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    s = xn.astype(np.float64) @ xn.T
    iu = np.triu_indices(len(x), 1)
    mu = ((s[iu] - s[iu].min()) / (s[iu].max() - s[iu].min())).mean()
    assert m.summary_.statistics["cal"] == pytest.approx(0.94 - 0.98 * mu, abs=1e-5)
    # an extractor the paper did not use falls back to the same rule
    m2 = Multicut().fit(FeatureView(x, extractor_name="brand-new-net"))
    assert m2.summary_.statistics["cal"] == pytest.approx(m.summary_.statistics["cal"])
    assert "0.94 - 0.98*mu" in m2.summary_.artefacts["cal_source"]


def test_number_of_clusters_moves_the_right_way_with_cal():
    view = make_tiny_view()
    cals = (0.05, 0.3, 0.5, 0.7, 0.95)
    counts = [Multicut(cal=c).fit(view).summary_.statistics["n_clusters"] for c in cals]
    assert all(a >= b for a, b in itertools.pairwise(counts)), counts
    assert counts[0] > counts[-1]
    assert counts[-1] == 1


# ----------------------------------------------------------------------------- method


def test_fit_recovers_planted_clusters_with_table_and_energy():
    x, labels = blobs(n_per=25, k=4, seed=4)
    m = Multicut(cal=0.5).fit(FeatureView(x))
    s = m.summary_
    assert M.clustering_scores(s.codes, labels)["ari"] == pytest.approx(1.0)
    assert s.statistics["n_clusters"] == 4
    row = s.artefacts["tables"]["multicut_cluster_statistics"][0]
    assert (row["n_clusters"], row["min_size"], row["max_size"], row["pct_size_1"]) == (4, 25, 25, 0.0)
    # the reported energy is the energy of the codes under the method's own costs
    W, st = C.similarity_matrix(C.normalise(x))
    C.costs_(W, st, 0.5)
    assert s.statistics["energy"] == pytest.approx(S.energy_dense(W.numpy(), s.codes), rel=1e-9)
    assert s.statistics["energy"] <= s.statistics["energy_gaec"]


def test_cluster_statistics_table5():
    codes = np.array([0, 0, 0, 0, 1, 1, 2, 3, 3, 3])
    st = T.cluster_statistics(codes)
    assert st == {"n_clusters": 4.0, "min_size": 1.0, "median_size": 2.5, "mean_size": 2.5,
                  "max_size": 4.0, "pct_size_1": 10.0}
    rows = T.largest_clusters(codes, labels=np.array([1, 1, 1, 0, 0, 0, 0, 1, 1, 1]), class_names=["a", "b"])
    assert rows[0]["size"] == 4 and rows[0]["majority_class"] == "b" and rows[0]["majority_share"] == 0.75


def test_knn_graph_with_all_neighbours_equals_complete_graph():
    x, _ = blobs(n_per=15, k=3, spread=1.5, seed=5)
    view = FeatureView(x)
    full = Multicut(cal=0.5, graph="complete").fit(view).summary_
    knn = Multicut(cal=0.5, graph="knn", knn=len(x) - 1).fit(view).summary_
    assert knn.statistics["complete_graph"] == 0.0
    assert knn.statistics["n_edges"] == full.statistics["n_edges"]
    assert knn.statistics["energy"] == pytest.approx(full.statistics["energy"], rel=1e-5)
    sparse = Multicut(cal=0.5, graph="knn", knn=3, knn_random=2).fit(view).summary_
    assert sparse.statistics["n_edges"] < full.statistics["n_edges"]


def test_random_partners_estimate_the_complete_graph_without_bias():
    """Scaled random pairs stand for all non-neighbour pairs: the sparse energy of a fixed
    partition averages to its complete-graph energy over seeds."""
    x, labels = blobs(n_per=20, k=3, spread=2.0, seed=11)
    n = len(x)
    xn = C.normalise(x)
    W, st = C.similarity_matrix(xn)
    C.costs_(W, st, 0.5)
    exact = S.energy_dense(W.numpy(), labels)
    knn_uv, s = C.knn_edges(xn, 4)
    knn_w = C.costs_(torch.from_numpy(s), st, 0.5).double().numpy()
    estimates = []
    for seed in range(400):
        far, scale = C.random_far_edges(n, 5, knn_uv, seed)
        assert scale * len(far) == pytest.approx(n * (n - 1) / 2 - len(knn_uv))
        assert not set(map(tuple, far.tolist())) & set(map(tuple, knn_uv.tolist()))
        far_w = scale * C.costs_(torch.from_numpy(C.pair_similarity(xn, far)), st, 0.5).double().numpy()
        uv, w = np.concatenate([knn_uv, far]), np.concatenate([knn_w, far_w])
        estimates.append(S.energy_edges(uv, w, labels))
    standard_error = np.std(estimates) / np.sqrt(len(estimates))
    assert abs(np.mean(estimates) - exact) < 4 * standard_error


def test_too_large_graph_is_a_clear_error_or_switches_to_knn():
    view = FeatureView(blobs(seed=6)[0])
    with pytest.raises(BenchError, match="graph='knn'") as err:
        Multicut(graph="complete", max_dense_gb=1e-6).fit(view)
    assert "\n" not in str(err.value)
    auto = Multicut(graph="auto", max_dense_gb=1e-6).fit(view).summary_
    assert auto.statistics["complete_graph"] == 0.0 and auto.artefacts["graph"] == "knn"


def test_bad_input():
    x, _ = blobs(n_per=4, seed=7)
    # duplicates (similarity exactly 1) land together
    dup = np.concatenate([x, x[:2]])
    codes = Multicut(cal=0.5).fit(FeatureView(dup)).summary_.codes
    assert codes[0] == codes[len(x)] and codes[1] == codes[len(x) + 1]
    # constant embeddings: max = min, one cluster
    const = Multicut().fit(FeatureView(np.ones((7, 5), np.float32))).summary_
    assert const.statistics["n_clusters"] == 1 and np.isfinite(const.statistics["energy"])
    # N = 1 and N = 2
    assert Multicut().fit(FeatureView(x[:1])).summary_.codes.tolist() == [0]
    assert Multicut().fit(FeatureView(x[:2])).summary_.codes.shape == (2,)
    # an all-zero feature row does not produce NaN
    zero = x.copy()
    zero[0] = 0
    assert np.isfinite(Multicut().fit(FeatureView(zero)).summary_.statistics["energy"])
    for bad, match in ((np.zeros((0, 4), np.float32), "empty"), (np.full((3, 4), np.nan, np.float32), "NaN")):
        with pytest.raises(DataError, match=match):
            Multicut().fit(FeatureView(bad))
    for params in ({"cal": 1.5}, {"cal": "big"}, {"graph": "tree"}, {"knn": 0}, {"backend": "gpu"},
                   {"kl_outer_iterations": -1}, {"knn_random": -1}, {"kl": "yes"},
                   {"kl_inner_iterations": 0}):
        with pytest.raises(BenchError) as err:
            Multicut(**params).fit(FeatureView(x))
        assert "\n" not in str(err.value)


def test_bioimage_backend_gives_the_same_clustering_on_clear_data():
    x, _ = blobs(n_per=10, k=3, seed=8)
    a = Multicut(cal=0.5).fit(FeatureView(x)).summary_
    b = Multicut(cal=0.5, backend="bioimage").fit(FeatureView(x)).summary_
    assert M.variation_of_information(a.codes, b.codes) == pytest.approx(0.0, abs=1e-12)
    assert a.statistics["energy"] == pytest.approx(b.statistics["energy"], rel=1e-6)


# ----------------------------------------------------------------------------- VI


def test_variation_of_information():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, 50)
    b = rng.integers(0, 3, 50)
    assert T.variation_of_information(a, a) == pytest.approx(0.0, abs=1e-12)
    assert T.variation_of_information(a, (a + 7) * 3) == pytest.approx(0.0, abs=1e-12)
    assert T.variation_of_information(np.arange(50), np.zeros(50)) == pytest.approx(math.log(50))
    halves, alternating = np.repeat([0, 1], 50), np.tile([0, 1], 50)     # independent: VI = H + H
    assert T.variation_of_information(halves, alternating) == pytest.approx(2 * math.log(2))
    import bench_multicut

    names, mat = bench_multicut.variation_of_information_matrix({"clip": a, "dino": b, "same": a})
    assert names == ["clip", "dino", "same"]
    assert np.allclose(mat, mat.T) and np.all(np.diag(mat) == 0) and mat[0, 2] == pytest.approx(0.0)
    assert mat[0, 1] == pytest.approx(T.variation_of_information(a, b))
    with pytest.raises(DataError):
        T.variation_of_information_matrix({"a": a, "b": b[:10]})


# ----------------------------------------------------------------------------- comparator


def test_group_mixing_extremes_and_exact_chance():
    groups = np.repeat([0, 1], 30)
    sep = T.group_mixing(groups.copy(), groups)
    assert sep["pure_share"] == 1.0 and sep["adjusted_pure_share"] == pytest.approx(1.0)
    assert sep["mixing"] == pytest.approx(0.0, abs=1e-12)
    one = T.group_mixing(np.zeros(60), groups)
    assert one["pure_share"] == 0.0 and one["mixing"] == pytest.approx(1.0)
    singletons = T.group_mixing(np.arange(60), groups)
    assert singletons["pure_share"] == 1.0 and singletons["adjusted_pure_share"] == 0.0
    assert sep["adjusted_mutual_information"] == pytest.approx(1.0)
    assert singletons["adjusted_mutual_information"] == pytest.approx(0.0, abs=1e-9)
    # two clusters 80 % / 20 % one group: none pure, yet the clusters know the group
    leaning = np.r_[np.zeros(24), np.ones(6), np.zeros(6), np.ones(24)]
    lean = T.group_mixing(leaning, groups)
    assert lean["pure_share"] == 0.0 and lean["adjusted_mutual_information"] > 0.2
    # the hypergeometric chance level equals the mean over shuffled groups
    codes = np.repeat(np.arange(15), 4)
    rng = np.random.default_rng(0)
    shuffled = np.mean([T.group_mixing(codes, rng.permutation(groups))["pure_share"] for _ in range(500)])
    assert T.group_mixing(codes, groups)["pure_share_chance"] == pytest.approx(shuffled, abs=0.015)


def test_comparator_separated_vs_same_source():
    x, labels = blobs(n_per=20, k=4, seed=9)
    same_a, same_b = FeatureView(x[::2]), FeatureView(x[1::2])
    far = FeatureView(x[labels < 2]), FeatureView(x[labels >= 2])
    comp = MulticutComparator(cal=0.5)
    null = comp.compare(same_a, same_b).score
    between = comp.compare(*far).score
    assert between == pytest.approx(1.0)
    assert null < 0.2 < between
    assert MulticutComparator.larger_is_more_different is True


@pytest.mark.parametrize("check", method_checks("multicut"), ids=lambda c: c.__name__)
def test_conformance(check):
    check()
