"""Near-duplicates on real photographs (issue #19): wavelet (default ``wavelet-knn``) vs the ``phash`` baseline.

``make_near_duplicates()``: 200 tiles of scikit-image's bundled photographs plus 20 copies of
each kind (exact, JPEG 50, 2-px shift, brightness +10 %, 95 % crop), each of a different
original: 300 images, 100 known pairs. Both methods run as ``bench run`` runs them (default
parameters, a DataView over the images); precision, recall, F1 overall, recall per perturbation
and the best fit time go to ``extra_info`` and are printed by the last test.
"""

from __future__ import annotations

import pytest

from bench import plugins
from bench.datasets.base import ImageSource
from bench.datasets.neardup import KINDS, make_near_duplicates
from bench.extractors.pixels import PixelsExtractor
from bench.factory import create_method, create_view
from bench.metrics import duplicate_scores

METHODS = ("wavelet", "phash")
RESULTS: dict[str, dict] = {}


@pytest.fixture(scope="module")
def data():
    return make_near_duplicates()


@pytest.fixture(scope="module")
def view(data):
    source = ImageSource(name="neardup", revision="bench", n=len(data.images), array=data.images,
                         duplicate_pairs=data.pairs)
    return create_view(source, PixelsExtractor(size=8))


def _pair_set(pairs) -> set[tuple[int, int]]:
    return {(min(a, b), max(a, b)) for a, b in pairs.reshape(-1, 2).tolist()}


def _scores(found, data) -> dict[str, float]:
    out = duplicate_scores(found, data.pairs)
    pred = _pair_set(found)
    for kind in KINDS:
        planted = _pair_set(data.pairs[[k == kind for k in data.kinds]])
        out[f"recall_{kind}"] = len(planted & pred) / len(planted)
    out["n_predicted_pairs"] = float(len(pred))
    return out


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.benchmark(group="neardup")
def test_neardup(benchmark, method, data, view):
    est = create_method(plugins.load(), method)["summariser"]
    benchmark.pedantic(est.fit, args=(view,), kwargs={"seed": 0}, rounds=3, iterations=1)
    stats = {**_scores(est.summary_.duplicate_pairs, data), "best_s": benchmark.stats.stats.min,
             "n_images": float(len(data.images))}
    RESULTS[method] = stats
    benchmark.extra_info.update(stats)


def test_report():
    rows = ["dup_precision", "dup_recall", "dup_f1", *(f"recall_{k}" for k in KINDS), "n_predicted_pairs", "best_s"]
    print(f"\nnear-duplicates, {RESULTS['phash']['n_images']:.0f} images (make_near_duplicates())")
    print(f"{'':22}" + "".join(f"{m:>10}" for m in METHODS))
    for row in rows:
        print(f"{row:22}" + "".join(f"{RESULTS[m][row]:>10.3f}" for m in METHODS))
    assert all(RESULTS[m]["recall_exact"] == 1.0 for m in METHODS)   # exact copies: both must find all
