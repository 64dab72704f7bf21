"""wavelet plugin: each step pinned to a known answer (PyWavelets, brute force, scikit-image,
scikit-learn, closed forms, planted duplicates)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import pywt
import scipy.linalg as sla
import torch
from bench_wavelet.algorithm2 import eigengap_count, laplacian_eigenvalues, spectral_embedding
from bench_wavelet.core import (
    auto_n_clusters,
    coefficient_matrix,
    reduce_clusters,
    resolve_n_clusters,
    stack_images,
    train_test_analysis,
)
from bench_wavelet.dwt import TORCH_MODES, coefficient_count, resolve_coefficients, wavedec2_pywt, wavedec2_torch
from bench_wavelet.kmeans import _Searcher, kmeans, kmeans_plusplus, kmeans_plusplus_greedy
from bench_wavelet.methods import WaveletComparator, WaveletSummariser
from bench_wavelet.rrqr import pivoted_r, select_columns, tau_rule, triangular_cond
from bench_wavelet.ssim import SSIMStats, ssim_matrix, threshold_groups
from skimage.metrics import structural_similarity
from sklearn.cluster import kmeans_plusplus as sk_kmeans_plusplus

from bench.api import DataView
from bench.conformance import method_checks
from bench.datasets.base import ImageSource, content_revision
from bench.errors import BenchError, DataError
from bench.extractors.pixels import PixelsExtractor
from bench.features import FeatureStore
from bench.testing import make_tiny_view


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny tensors: a second intra-op thread only adds contention on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _view(images: np.ndarray, labels: np.ndarray | None = None, name: str = "arr") -> DataView:
    src = ImageSource(name=name, revision=content_revision(images), n=len(images), array=images, labels=labels)
    return DataView(src, PixelsExtractor(size=8), FeatureStore(None))


def _spectrum_matrix(n: int, d: int, decades: float, seed: int) -> np.ndarray:
    """n × d matrix with singular values log-spaced over ``decades`` decades."""
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((n, d)))
    v, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return (u * np.logspace(0, -decades, d)) @ v.T


# --------------------------------------------------------------------------- DWT


@pytest.mark.parametrize("wavelet", ["db1", "db2", "sym3", "bior2.2"])
@pytest.mark.parametrize("shape", [(8, 8), (9, 5)])
def test_torch_dwt_equals_pywavelets(wavelet, shape):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(2, *shape, 3)).astype(np.uint8)
    for mode in TORCH_MODES:
        for level in (1, 2):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")            # pywt warns when level is deep
                ref = wavedec2_pywt(x, wavelet, level, mode)
                got = wavedec2_torch(x, wavelet, level, mode).numpy()
            assert got.shape == ref.shape, (mode, level)
            np.testing.assert_allclose(got, ref, rtol=0, atol=1e-9, err_msg=f"{mode} level {level}")
    # float32 (the GPU default) on [0, 1] images: within 1e-5
    ref = wavedec2_pywt(x / 255.0, wavelet, 1, "symmetric")
    got = wavedec2_torch(x / 255.0, wavelet, 1, "symmetric", dtype=torch.float32).numpy()
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)


def test_wavedec_row_layout_is_pywavelets_order():
    x = np.random.default_rng(1).integers(0, 256, size=(1, 8, 8, 3)).astype(np.float64)
    ca, (ch, cv, cd) = pywt.wavedec2(x[0], "db1", level=1, axes=(0, 1))
    expected = np.concatenate([c.ravel() for c in (ca, ch, cv, cd)])
    np.testing.assert_allclose(wavedec2_pywt(x)[0], expected)
    assert coefficient_count((8, 8)) == 192


def test_haar_level1_is_orthonormal():
    """Level-1 Haar on even sizes: pairwise distances equal pixel distances, d = pixel count."""
    x = np.random.default_rng(2).integers(0, 256, size=(6, 10, 12, 3)).astype(np.uint8)
    w = coefficient_matrix(x)
    assert w.shape == (6, 10 * 12 * 3)
    px = x.reshape(6, -1).astype(np.float64)
    dw = np.linalg.norm(w[:, None] - w[None], axis=2)
    dp = np.linalg.norm(px[:, None] - px[None], axis=2)
    np.testing.assert_allclose(dw, dp, atol=1e-9)
    np.testing.assert_allclose(coefficient_matrix(x, backend="torch"), w, atol=1e-9)


def test_auto_coefficients_reproduce_the_paper_on_cifar_size():
    assert resolve_coefficients((32, 32), "db1", 1, "symmetric", "auto") == (1, "all")   # 3,072 = paper
    assert resolve_coefficients((64, 64), "db1", 1, "symmetric", "auto") == (1, "approximation")
    assert resolve_coefficients((224, 224), "db1", 1, "symmetric", "auto") == (3, "approximation")
    assert resolve_coefficients((64, 64), "db1", 1, "symmetric", "all") == (1, "all")


# --------------------------------------------------------------------------- pivoted QR + tau


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("tau", [10.0, 1e3, 1e5])
def test_tau_rule_matches_bruteforce_condition_scan(seed, tau):
    w = _spectrum_matrix(90, 40, 8, seed)
    r, piv = pivoted_r(w.copy(), method="geqp3")
    conds = [np.linalg.cond(w[:, piv[:k]]) for k in range(1, 41)]
    brute = max(k for k in range(1, 41) if conds[k - 1] < tau)
    m, c, _ = tau_rule(r, tau)
    assert m == brute
    assert c == pytest.approx(conds[m - 1], rel=1e-9)
    assert m == 40 or conds[m] >= tau                         # maximal
    assert tau_rule(r, tau, dense_max=0)[0] == brute          # Lanczos path
    rg, pg = pivoted_r(w.copy(), method="gram", tau=tau)      # pivoted Cholesky of WᵀW
    assert tau_rule(rg, tau)[0] == brute
    np.testing.assert_array_equal(pg[:m], piv[:m])


def test_tau_rule_on_a_rank_deficient_matrix():
    """MNIST-like: exact rank 25 of 40 columns; both QRs stop inside the rank, as brute force."""
    rng = np.random.default_rng(15)
    w = rng.standard_normal((90, 25)) @ rng.standard_normal((25, 40)) * np.logspace(0, -2, 40)
    r, piv = pivoted_r(w.copy(), method="geqp3")
    conds = [np.linalg.cond(w[:, piv[:k]]) for k in range(1, 41)]
    brute = max(k for k in range(1, 41) if conds[k - 1] < 1e5)
    assert brute <= 25
    assert tau_rule(r, 1e5)[0] == brute
    assert tau_rule(pivoted_r(w.copy(), method="gram")[0], 1e5)[0] == brute


def test_triangular_cond_lanczos_equals_dense():
    r = np.triu(np.random.default_rng(3).standard_normal((300, 300))) + 8 * np.eye(300)
    assert triangular_cond(r, dense_max=0) == pytest.approx(np.linalg.cond(r), rel=1e-9)
    r[5, 5] = 0.0
    assert triangular_cond(r) == np.inf


def test_select_columns_drops_constants_and_follows_n_gt_d_rule():
    w = _spectrum_matrix(60, 20, 9, 4)
    w = np.concatenate([w, np.full((60, 3), 7.0)], axis=1)        # 3 constant columns
    sel = select_columns(w, tau=1e4)
    assert sel.n_constant == 3 and sel.rrqr_applied and sel.m < 20
    assert not np.isin([20, 21, 22], sel.columns).any()
    assert np.linalg.cond(w[:, sel.columns]) < 1e4
    wide = select_columns(w[:15])                                  # n <= d: no QR (paper)
    assert not wide.rrqr_applied and wide.m == 20
    assert select_columns(w[:15], rrqr="always", tau=1e4).rrqr_applied
    assert select_columns(w, n_columns=5).m == 5
    with pytest.raises(BenchError, match="tau"):
        select_columns(w, tau=1.0)


# --------------------------------------------------------------------------- k-means


def test_greedy_kmeanspp_equals_scikit_learn():
    x = np.random.default_rng(5).standard_normal((300, 7))
    for seed in range(3):
        _, ref = sk_kmeans_plusplus(x, 20, random_state=seed)
        got = kmeans_plusplus_greedy(torch.as_tensor(x), 20, np.random.RandomState(seed))
        np.testing.assert_array_equal(got, ref)


def test_torch_paths_equal_the_cpu_paths():
    """The CUDA code paths (torch greedy seeding, torch nearest-centroid search), run on CPU."""
    x = np.random.default_rng(14).standard_normal((150, 6)).astype(np.float32)
    np.testing.assert_array_equal(kmeans_plusplus_greedy(torch.as_tensor(x), 12, np.random.RandomState(0),
                                                         use_torch=True),
                                  kmeans_plusplus_greedy(x, 12, np.random.RandomState(0)))
    searcher = _Searcher(torch.device("cpu"))
    c = x[:9].copy()
    d_faiss, l_faiss = searcher(x, None, c)
    searcher.use_torch = True
    d_torch, l_torch = searcher(x, torch.as_tensor(x), c)
    np.testing.assert_array_equal(l_torch, l_faiss)
    np.testing.assert_allclose(d_torch, d_faiss, rtol=1e-4, atol=1e-4)


def test_batched_kmeanspp_follows_the_sequential_law():
    """Rejection-batched seeding: the joint law of the first three seeds is k-means++'s."""
    pts = np.array([[0.0], [1.0], [3.0], [10.0]])
    rng = np.random.default_rng(0)
    counts: dict[tuple[int, int, int], int] = {}
    trials = 3000
    xt = torch.as_tensor(pts)
    for _ in range(trials):
        s = tuple(int(i) for i in kmeans_plusplus(xt, 3, rng, batch=3))
        counts[s] = counts.get(s, 0) + 1
    d2 = (pts - pts.T) ** 2
    for (a, b, c), cnt in counts.items():
        p = 0.25 * d2[a, b] / d2[a].sum() * min(d2[a, c], d2[b, c]) / np.minimum(d2[a], d2[b]).sum()
        assert abs(cnt / trials - p) < 4 * np.sqrt(p * (1 - p) / trials) + 2e-3, (a, b, c)


def test_kmeans_merges_planted_near_duplicates():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((200, 16)).astype(np.float32) * 10
    x[180:] = x[:20] + rng.standard_normal((20, 16)).astype(np.float32) * 0.01
    res = kmeans(x, 180, seed=0)
    assert res.converged and res.k == 180
    assert all(res.labels[i] == res.labels[180 + i] for i in range(20))
    assert len(np.unique(res.labels)) == 180


def test_kmeans_on_identical_points_forms_one_cluster():
    with pytest.warns(UserWarning, match="distinct"):
        res = kmeans(np.ones((10, 4), np.float32), 3, seed=0)
    assert res.k == 1 and (res.labels == 0).all()


# --------------------------------------------------------------------------- reduction


def test_reduction_keeps_closest_to_centre_and_flags_mixed_labels():
    codes = np.array([0, 0, 0, 1, 1, 2, 3, 3, 4, 4])
    dist = np.array([3.0, 1.0, 2.0, 0.5, 0.5, 0.0, 1.0, 2.0, 0.0, 1.0])
    labels = np.array([5, 5, 5, 1, 2, 3, 4, 4, -1, 6])                 # -1: unlabelled
    red = reduce_clusters(codes, dist, labels)
    assert red.redundant_groups == [[1, 0, 2], [6, 7], [8, 9]]
    assert red.influential_groups == [[3, 4]]
    np.testing.assert_array_equal(red.reduced, [1, 3, 4, 5, 6, 8])
    np.testing.assert_array_equal(red.duplicate_pairs(), [[0, 1], [0, 2], [1, 2], [6, 7], [8, 9]])
    assert reduce_clusters(codes, dist, None).influential_groups == []


def test_auto_n_clusters_counts_near_identical_groups():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((120, 30))
    x[100:110] = x[:10] + 1e-3 * rng.standard_normal((10, 30))
    x[110:] = x[:10]                                   # a third copy: groups of 3
    n_c, info = auto_n_clusters(x)
    assert n_c == 100 and info["auto_near_identical_images"] >= 20


def test_resolve_n_clusters():
    assert resolve_n_clusters(0.94, 500) == 470
    assert resolve_n_clusters(470, 500) == 470
    with pytest.raises(DataError, match="smaller than the number of images"):
        resolve_n_clusters(500, 500)
    with pytest.raises(DataError, match="at least 2"):
        resolve_n_clusters(1, 1)
    with pytest.raises(BenchError):
        resolve_n_clusters(1.5, 10)


# --------------------------------------------------------------------------- SSIM, Algorithm 2


def test_batched_ssim_equals_scikit_image():
    rng = np.random.default_rng(8)
    x = rng.integers(0, 256, size=(7, 15, 13, 3)).astype(np.uint8)
    x[3] = np.clip(x[2].astype(int) + rng.integers(-6, 7, x[2].shape), 0, 255)
    ref = np.array([[structural_similarity(a, b, data_range=255, channel_axis=-1) for b in x] for a in x])
    np.testing.assert_allclose(ssim_matrix(SSIMStats(x)), ref, atol=1e-5)
    s64 = SSIMStats(x, dtype=torch.float64)
    np.testing.assert_allclose(ssim_matrix(s64, s64, block=3), ref, atol=1e-10)
    np.testing.assert_allclose(s64.pairs(s64, np.arange(7), np.arange(7)[::-1]),
                               ref[np.arange(7), np.arange(7)[::-1]], atol=1e-10)


def test_threshold_scan_is_the_greedy_upper_triangle_rule():
    s = np.array([[1, .95, .2, .92], [.95, 1, .93, .1], [.2, .93, 1, .3], [.92, .1, .3, 1]])

    class Fixed(SSIMStats):
        def __init__(self):
            self.x = torch.zeros((4, 1, 1, 1))

        def block(self, other, rows, cols):
            return torch.as_tensor(s[np.ix_(rows.numpy(), cols.numpy())])

    # 0 leads {1, 3}; 2 is similar to 1 only, but 1 is already grouped -> 2 leads itself
    np.testing.assert_array_equal(threshold_groups(Fixed(), 0.9, block=2), [0, 0, 2, 0])


def test_laplacian_eigengap_on_closed_forms():
    s = np.ones((5, 5))                                  # complete graph: eigenvalues 0, 5, 5, 5, 5
    np.testing.assert_allclose(laplacian_eigenvalues(s), [0, 5, 5, 5, 5], atol=1e-12)
    assert eigengap_count(np.array([0.0, 0.1, 1.0, 1.05, 2.0]), 0.4) == 2
    blocks = sla.block_diag(np.ones((3, 3)), np.ones((4, 4)))
    emb = spectral_embedding(blocks, 2)
    assert len({tuple(np.round(r, 6)) for r in emb}) == 2        # one point per block


# --------------------------------------------------------------------------- the methods


def test_summariser_finds_planted_duplicates_on_tiny():
    view = make_tiny_view()
    summ = WaveletSummariser(algorithm="wavelet-kmeans").fit(view, seed=0).summary_
    np.testing.assert_array_equal(summ.duplicate_pairs, np.sort(view.source.duplicate_pairs, axis=1))
    assert summ.codes.shape == (60,) and summ.embedding.shape[0] == 60
    st = summ.statistics
    assert st["n_clusters"] == 56 and st["reduced_size"] == 56 and st["rrqr_applied"] == 0.0
    assert summ.artefacts["redundant_groups"] == [[i, 56 + i] for i in range(4)]
    assert len(summ.artefacts["reduced_indices"]) == 56
    # the paper's ratio
    explicit = WaveletSummariser(algorithm="wavelet-kmeans", n_clusters=0.94).fit(view, seed=0).summary_
    assert explicit.statistics["n_clusters"] == 56


def test_algorithm1_with_rrqr_on_a_tall_matrix():
    x = np.random.default_rng(9).integers(0, 256, size=(80, 4, 4, 3)).astype(np.uint8)   # n=80 > d=48
    x[70:] = x[:10]
    summ = WaveletSummariser(algorithm="wavelet-kmeans").fit(_view(x), seed=0).summary_
    assert summ.statistics["rrqr_applied"] == 1.0 and summ.statistics["m_columns"] == 48
    assert summ.statistics["cond_kept"] < 1e5
    assert {tuple(p) for p in summ.duplicate_pairs} == {(i, 70 + i) for i in range(10)}


@pytest.mark.parametrize("algorithm", ["ssim-spectral", "ssim-threshold"])
def test_algorithm2_on_tiny(algorithm):
    view = make_tiny_view(24, size=8)
    summ = WaveletSummariser(algorithm=algorithm).fit(view, seed=0).summary_
    assert summ.codes.shape == (24,)
    pairs = {tuple(p) for p in summ.duplicate_pairs}
    assert {(0, 20), (1, 21), (2, 22), (3, 23)} <= pairs           # exact copies always grouped
    if algorithm == "ssim-spectral":
        assert summ.statistics["n_identical_pairs"] >= 4
        assert len(summ.artefacts["laplacian_eigenvalues"]) == 24


def test_train_test_analysis_full_and_candidate_modes_agree():
    rng = np.random.default_rng(10)
    train = rng.integers(0, 256, size=(12, 10, 10, 3)).astype(np.uint8)
    test = rng.integers(0, 256, size=(6, 10, 10, 3)).astype(np.uint8)
    test[:2] = train[[4, 7]]
    full = train_test_analysis(train, test)
    assert full["share"] == pytest.approx(2 / 6)
    np.testing.assert_array_equal(full["nearest"][:2], [4, 7])
    w_tr, w_te = coefficient_matrix(train), coefficient_matrix(test)
    cand = train_test_analysis(train, test, n_candidates=3, w_train=w_tr, w_test=w_te)
    np.testing.assert_array_equal(cand["near_identical"], full["near_identical"])


def test_comparator_null_vs_shift_and_cross_duplicates():
    rng = np.random.default_rng(11)
    a = rng.integers(0, 120, size=(30, 8, 8, 3)).astype(np.uint8)
    b_same = rng.integers(0, 120, size=(30, 8, 8, 3)).astype(np.uint8)
    b_shift = rng.integers(100, 256, size=(30, 8, 8, 3)).astype(np.uint8)
    b_same[:3] = a[:3]
    comp = WaveletComparator(n_candidates=2)
    null = comp.compare(_view(a), _view(b_same), seed=0)
    far = comp.compare(_view(a), _view(b_shift), seed=0)
    assert far.score > null.score + 0.5 and abs(null.score) < 0.2
    assert null.statistics["near_duplicate_rate_b_in_a"] == pytest.approx(0.1)
    assert {tuple(p) for p in null.detail["near_duplicate_pairs"]} == {(0, 0), (1, 1), (2, 2)}


# --------------------------------------------------------------------------- bad input


def test_bad_inputs_give_one_clear_line():
    x = np.random.default_rng(12).integers(0, 256, size=(6, 8, 8, 3)).astype(np.uint8)
    with pytest.raises(DataError, match="at least 2 images"):
        WaveletSummariser(algorithm="wavelet-kmeans").fit(_view(x[:1]), seed=0)
    with pytest.raises(DataError, match="smaller than the number of images"):
        WaveletSummariser(algorithm="wavelet-kmeans", n_clusters=6).fit(_view(x), seed=0)
    with pytest.raises(BenchError, match="algorithm"):
        WaveletSummariser(algorithm="nope").fit(_view(x), seed=0)
    with pytest.raises(BenchError, match="wavelet"):
        WaveletSummariser(algorithm="wavelet-kmeans", wavelet="nope").fit(_view(x), seed=0)
    with pytest.raises(DataError, match="empty"):
        WaveletSummariser(algorithm="wavelet-kmeans").fit(_view(x).subset([]), seed=0)
    with pytest.raises(DataError, match="at least 2 images per dataset"):
        WaveletComparator().compare(_view(x), _view(x[:1]), seed=0)


def test_all_identical_images_form_one_redundant_group():
    x = np.full((5, 8, 8, 3), 90, dtype=np.uint8)
    with pytest.warns(UserWarning, match="distinct"):
        summ = WaveletSummariser(algorithm="wavelet-kmeans", n_clusters=3).fit(_view(x), seed=0).summary_
    assert summ.artefacts["redundant_groups"] == [[0, 1, 2, 3, 4]] and len(summ.duplicate_pairs) == 10


def test_mixed_sizes_are_resized_with_a_warning():
    rng = np.random.default_rng(13)
    imgs = [rng.integers(0, 256, size=(8, 8, 3)).astype(np.uint8) for _ in range(4)]
    imgs.append(rng.integers(0, 256, size=(12, 10, 3)).astype(np.uint8))
    with pytest.warns(UserWarning, match="1 of 5"):
        out = stack_images([im[None] for im in imgs])
    assert out.shape == (5, 8, 8, 3)
    src = ImageSource(name="mixed", revision="r", n=5, loader=lambda i: imgs[i])
    view = DataView(src, PixelsExtractor(size=8), FeatureStore(None))
    with pytest.warns(UserWarning, match="resized"):
        summ = WaveletSummariser(algorithm="wavelet-kmeans", n_clusters=3).fit(view, seed=0).summary_
    assert summ.codes.shape == (5,)


@pytest.mark.parametrize("check", method_checks("wavelet", view=make_tiny_view()), ids=lambda c: c.__name__)
def test_conformance(check):
    check()


def test_plugin_registers_both_roles():
    import bench.plugins

    regs = bench.plugins.load(strict=True)
    assert regs.summarisers.get("wavelet") is WaveletSummariser
    assert regs.comparators.get("wavelet") is WaveletComparator
