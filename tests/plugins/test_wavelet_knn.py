"""wavelet's default near-duplicate mode on real photographs (issue #19): P/R on planted copies."""

import numpy as np

from bench.datasets.base import ImageSource
from bench.datasets.neardup import make_near_duplicates
from bench.metrics import duplicate_scores


def test_wavelet_knn_finds_perturbed_copies_of_real_photos():
    from bench_wavelet.core import approximation_level, coefficient_matrix, knn_duplicates, normalised_rows

    data = make_near_duplicates(60, 4)
    level = approximation_level(data.images.shape[1:3], 16)
    x = normalised_rows(coefficient_matrix(data.images, level=level, coefficients="approximation"))
    found = knn_duplicates(x, n_neighbours=5, threshold=0.5)
    scores = duplicate_scores(found.pairs, data.pairs)
    assert scores["dup_precision"] >= 0.9 and scores["dup_recall"] >= 0.9, scores
    exact = [tuple(sorted(p)) for p, k in zip(data.pairs.tolist(), data.kinds) if k == "exact"]
    dist = {tuple(p): d for p, d in zip(found.pairs.tolist(), found.distance)}
    assert all(dist[p] == 0.0 for p in exact)   # identical images at exactly 0


def test_comparison_pairs_null_is_split_half_of_first_side():
    from bench.evaluate import comparison_pairs

    class View:
        groups = None
        labels = np.repeat(np.arange(4), 10)
        source = ImageSource(name="x", revision="r", n=40, array=np.zeros((40, 2, 2, 3), np.uint8), ids=[""] * 40)

        def __len__(self):
            return 40

    between, null, _ = comparison_pairs(View(), 0)
    first = set(np.flatnonzero(View.labels < 2))
    assert set(null[0]) | set(null[1]) == first and not set(null[0]) & set(null[1])
    # between: the null's first half against as many images of the other side (same sample size)
    assert np.array_equal(between[0], null[0]) and len(between[1]) == len(null[1])
    assert not set(between[1]) & first
