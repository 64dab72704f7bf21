"""faiss k-means (the harness' `kmeans`) against scikit-learn KMeans, same data, K and iterations.

Both start from one random initialisation (faiss: random points; sklearn: init="random",
n_init=1) and run exactly 20 Lloyd iterations (sklearn tol=0), so the work is equal; the
inertia of both is stored in ``extra_info`` and compared in the last test.
"""

import numpy as np
import pytest
from sklearn.cluster import KMeans as SkKMeans

from bench.baselines import faiss_kmeans

N, D, K, ITERS = 20_000, 128, 100, 20


@pytest.fixture(scope="module")
def features():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(K * 2, D)).astype(np.float32)
    return (centres[rng.integers(0, len(centres), N)] + rng.normal(scale=1.5, size=(N, D))).astype(np.float32)


RESULTS: dict[str, float] = {}


@pytest.mark.benchmark(group="kmeans")
def test_faiss_kmeans(benchmark, features):
    _, _, inertia = benchmark.pedantic(faiss_kmeans, args=(features, K), kwargs={"niter": ITERS, "seed": 0},
                                       rounds=3, iterations=1)
    RESULTS["faiss"] = benchmark.stats.stats.min
    RESULTS["faiss_inertia"] = inertia
    benchmark.extra_info["inertia"] = inertia


@pytest.mark.benchmark(group="kmeans")
def test_sklearn_kmeans(benchmark, features):
    def fit():
        return SkKMeans(K, init="random", n_init=1, max_iter=ITERS, tol=0.0, random_state=0).fit(features)

    model = benchmark.pedantic(fit, rounds=1, iterations=1)
    RESULTS["sklearn"] = benchmark.stats.stats.min
    RESULTS["sklearn_inertia"] = float(model.inertia_)
    benchmark.extra_info["inertia"] = float(model.inertia_)


def test_report_ratio():
    speedup = RESULTS["sklearn"] / RESULTS["faiss"]
    gap = abs(RESULTS["faiss_inertia"] - RESULTS["sklearn_inertia"]) / RESULTS["sklearn_inertia"]
    print(f"\nfaiss k-means speed-up over sklearn: {speedup:.1f}x; inertia gap {gap:.4%}")
    assert speedup >= 10 and gap < 0.01


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.benchmark(group="kmeans-cuda")
def test_torch_lloyd_cuda_qrp_scale(benchmark):
    """QRP's scale on a GPU without faiss-gpu: 100,000 × 768, K = 1000, 100 Lloyd iterations."""
    import torch

    from bench.kmeans import lloyd

    x = np.random.default_rng(0).standard_normal((100_000, 768), dtype=np.float32)
    fit = benchmark.pedantic(lambda: lloyd(x, 1000, niter=100, seed=0, device="cuda"), rounds=1, iterations=1,
                             warmup_rounds=0)
    benchmark.extra_info.update(inertia=fit.inertia, device=torch.cuda.get_device_name())
    print(f"\ntorch Lloyd on {torch.cuda.get_device_name()}: 100k x 768, K=1000, 100 iterations in "
          f"{benchmark.stats.stats.min:.2f}s")
