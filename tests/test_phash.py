"""The ``phash`` baseline (issue #19): imagededup's PHash bits, exact Hamming search, real photos."""

import numpy as np
import pytest
from PIL import Image

from bench.baselines import PHash, hamming_pairs, pair_components, phash_bits
from bench.conformance import method_checks
from bench.datasets.base import ImageSource
from bench.datasets.neardup import make_near_duplicates
from bench.errors import BenchError
from bench.evaluate import evaluate_summary
from bench.extractors.pixels import PixelsExtractor
from bench.factory import create_view
from bench.testing import make_tiny_view


def _reference_bits(grey: np.ndarray) -> np.ndarray:
    """PHash by hand: DCT-II as a cosine matrix (unnormalised, X_k = 2 Σ x_n cos(πk(2n+1)/2N)),
    top-left 8×8, median of its 63 non-DC coefficients, bit = coefficient >= median."""
    n = grey.shape[0]
    k, m = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    c = 2 * np.cos(np.pi * k * (2 * m + 1) / (2 * n))
    block = (c @ grey.astype(np.float64) @ c.T)[:8, :8]
    return block >= np.median(block.ravel()[1:])


def _gradient_grey() -> np.ndarray:
    y, x = np.mgrid[0:32, 0:32]
    return ((x * 7 + y * 3 + (x * y) % 11 * 5) % 256).astype(np.uint8)


def test_phash_bits_equal_hand_computed_reference():
    grey = _gradient_grey()                 # 32×32 grey: no resampling, L conversion is exact
    bits = phash_bits(np.repeat(grey[..., None], 3, axis=2))
    assert bits.shape == (8, 8) and np.array_equal(bits, _reference_bits(grey))
    # imagededup 0.3.3 PHash().encode_image(image_array=...) of the same image
    assert "".join(f"{v:02x}" for v in np.packbits(bits)) == "91b56b5b66292e4b"
    assert np.array_equal(phash_bits(grey), bits) and np.array_equal(phash_bits(grey[..., None]), bits)


def test_phash_bits_resize_before_grey_like_imagededup():
    rgb = np.random.default_rng(0).integers(0, 256, (48, 40, 3), dtype=np.uint8)
    small = np.asarray(Image.fromarray(rgb).resize((32, 32), Image.LANCZOS).convert("L"))
    assert np.array_equal(phash_bits(rgb), _reference_bits(small))


def _brute_force(codes: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray]:
    """O(n²) oracle: XOR of every pair, popcount by table, pairs i < j within the distance."""
    popcount = np.array([bin(v).count("1") for v in range(256)], dtype=np.int64)
    dist = popcount[codes[:, None, :] ^ codes[None, :, :]].sum(axis=2)
    i, j = np.nonzero(np.triu(dist <= max_distance, k=1))
    return np.stack([i, j], axis=1), dist[i, j]


@pytest.mark.parametrize("max_distance", [0, 3, 10, 64])
def test_hamming_search_equals_brute_force(max_distance):
    rng = np.random.default_rng(1)
    centres = rng.integers(0, 256, (12, 8), dtype=np.uint8)
    codes = centres[rng.integers(0, 12, 300)]
    flips = rng.random((300, 64)) < 0.06                       # a few bits off each centre
    codes = codes ^ np.packbits(flips, axis=1)
    codes[7] = codes[3]                                         # exact repeats at distance 0
    pairs, dist = hamming_pairs(codes, max_distance)
    want_pairs, want_dist = _brute_force(codes, max_distance)
    assert np.array_equal(pairs, want_pairs) and np.array_equal(dist, want_dist)
    assert len(pairs) > 0


def test_pair_components():
    codes = pair_components(6, np.array([[0, 2], [2, 5], [3, 4]]))
    assert codes[0] == codes[2] == codes[5] and codes[3] == codes[4] and len(set(codes.tolist())) == 3
    assert pair_components(3, np.zeros((0, 2))).tolist() == [0, 1, 2]


def test_phash_finds_exact_and_jpeg_copies_of_real_photos():
    data = make_near_duplicates(100, 10)
    source = ImageSource(name="neardup", revision="t", n=len(data.images), array=data.images,
                         duplicate_pairs=data.pairs)
    view = create_view(source, PixelsExtractor(size=8))
    est = PHash().fit(view)
    found = {tuple(p) for p in est.summary_.duplicate_pairs.tolist()}
    for kind in ("exact", "jpeg50"):
        planted = [tuple(p) for p, k in zip(data.pairs.tolist(), data.kinds) if k == kind]
        assert all(p in found for p in planted), kind
    scores = evaluate_summary(est.summary_, view, seed=0)
    assert scores["dup_precision"] >= 0.9 and scores["dup_recall"] >= 0.9, scores
    codes = est.summary_.codes
    assert all(codes[a] == codes[b] for a, b in found)
    assert est.summary_.statistics["n_duplicate_pairs"] == len(found)


def test_phash_bad_max_distance_is_one_line():
    for bad in (65, -1, 2.5, True):
        with pytest.raises(BenchError, match="max_distance") as err:
            PHash(max_distance=bad).check_params()
        assert "\n" not in str(err.value)


@pytest.mark.parametrize("check", method_checks("phash", view=make_tiny_view()), ids=lambda c: c.__name__)
def test_conformance(check):
    check()
