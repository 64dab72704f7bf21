import numpy as np
import pytest

from bench.baselines import (
    FrechetDistance,
    KMeans,
    faiss_kmeans,
    frechet_distance,
    frechet_distance_features,
    frechet_distance_sqrtm,
    gaussian,
)
from bench.errors import DataError
from bench.testing import make_tiny_view


def test_fd_eigvals_equals_sqrtm_oracle():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(300, 16)), rng.normal(loc=0.3, size=(250, 16)) @ rng.normal(size=(16, 16))
    mu1, s1, mu2, s2 = a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)
    oracle = frechet_distance_sqrtm(mu1, s1, mu2, s2)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(oracle, rel=1e-6)
    assert frechet_distance_features(a, b) == pytest.approx(oracle, rel=1e-6)


@pytest.mark.parametrize("n1, n2, d", [(20, 30, 64), (40, 25, 8), (10, 10, 10)])
def test_fd_from_features_low_rank_and_full_rank(n1, n2, d):
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(n1, d)), rng.normal(loc=0.5, size=(n2, d)) * 2
    mu1, s1, mu2, s2 = a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)
    assert frechet_distance_features(a, b) == pytest.approx(frechet_distance(mu1, s1, mu2, s2), rel=1e-6)


def test_gaussian_streams_a_memmap_in_chunks_and_equals_np_cov(tmp_path):
    rng = np.random.default_rng(2)
    x = np.lib.format.open_memmap(tmp_path / "f.npy", mode="w+", dtype=np.float32, shape=(1003, 12))
    x[:] = rng.normal(loc=50.0, size=(1003, 12)) @ rng.normal(size=(12, 12))
    x.flush()
    x = np.load(tmp_path / "f.npy", mmap_mode="r")
    mu, sigma = gaussian(x, rows=100)   # 11 chunks, the last one short
    np.testing.assert_allclose(mu, x.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(x.astype(np.float64), rowvar=False), rtol=1e-10, atol=1e-10)
    with pytest.raises(DataError, match="NaN or inf"):
        gaussian(np.array([[0.0, 1.0], [np.nan, 2.0], [1.0, 1.0]]))


@pytest.mark.parametrize("rows", [None, 3, 100])
def test_check_finite_counts_every_bad_entry_whatever_the_chunk(rows):
    from bench.api import check_finite

    x = np.ones((11, 4), dtype=np.float32)
    assert check_finite(x, rows=rows) is x
    x[0, 1], x[10, 0], x[10, 3] = np.nan, np.inf, -np.inf   # first and last (short) chunk
    with pytest.raises(DataError, match=r"\(3 entries\)"):
        check_finite(x, rows=rows)


def test_fd_comparator_streams_the_store_and_matches_the_sqrtm_oracle(monkeypatch):
    from bench import baselines
    from bench.api import DataView

    view = make_tiny_view(500)   # 192-D pixels: 250 > 192 images per side takes the streamed path
    a, b = view.subset(np.arange(250)), view.subset(np.arange(250, 500))
    x1, x2 = a.features().astype(np.float64), b.features().astype(np.float64)
    oracle = frechet_distance_sqrtm(x1.mean(0), np.cov(x1, rowvar=False), x2.mean(0), np.cov(x2, rowvar=False))
    read, features = [], DataView.features

    def spy(self, layer="pooled", rows=None):
        out = features(self, layer, rows)
        read.append(len(out))
        return out

    monkeypatch.setattr(baselines, "GAUSSIAN_CHUNK_BYTES", 32 * 8 * 192)   # 32 rows
    monkeypatch.setattr(DataView, "features", spy)
    got = FrechetDistance().compare(a, b)
    # FD here is ~0.02, the difference of traces ~1: float64 cancellation leaves ~1e-6 relative
    assert got.score == pytest.approx(oracle, rel=1e-5)
    assert max(read) == 32   # never more than a chunk of rows at once
    saved = FrechetDistance().summarise(a)
    assert FrechetDistance().compare_summary(saved, b).score == pytest.approx(oracle, rel=1e-5)


def test_fd_closed_form_identical_covariances():
    d = 64
    sigma = np.eye(d) * 2.0
    assert frechet_distance(np.zeros(d), sigma, np.ones(d), sigma) == pytest.approx(d, abs=1e-6)


def test_fd_comparator_self_is_zero_and_needs_two_images():
    view = make_tiny_view()
    fd = FrechetDistance()
    assert fd.compare(view, view).score == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(DataError, match="at least 2"):
        fd.compare(view.subset([0]), view)


def test_faiss_kmeans_close_to_sklearn_inertia():
    from sklearn.cluster import KMeans as SkKMeans

    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 16)).astype(np.float32)  # no planted clusters: a smooth objective
    _, _, inertia = faiss_kmeans(x, 20, niter=25, seed=0)
    sk = SkKMeans(20, n_init=1, max_iter=25, random_state=0).fit(x)
    assert abs(inertia - sk.inertia_) / sk.inertia_ < 0.01


def test_kmeans_errors_are_one_line():
    view = make_tiny_view(20)
    with pytest.raises(DataError, match="larger than the number of images"):
        KMeans(k=50).fit(view)


def test_kmeans_nan_features_error():
    from bench.baselines import faiss_kmeans

    x = np.ones((10, 3), dtype=np.float32)
    x[3, 1] = np.nan
    with pytest.raises(DataError, match="NaN"):
        faiss_kmeans(x, 2)
