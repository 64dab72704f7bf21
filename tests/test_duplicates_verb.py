"""``bench duplicates DIR [DIR2]`` (issue 29): same answer as the wavelet-knn and PHash oracles, every
input kind, the outputs (CSV, sidecar, removal list, report) and one-line errors."""

from __future__ import annotations

import csv
import io
import tarfile

import numpy as np
import pytest
from bench_wavelet.core import knn_duplicates
from bench_wavelet.methods import knn_rows
from PIL import Image, ImageFilter

from bench.baselines import hamming_pairs, phash_bits
from bench.cli import main
from bench.datasets.neardup import KINDS, make_near_duplicates, original_tiles, perturb, write_folder
from bench.datasets.real import folder_source, read_image
from bench.duplicates import (
    Side,
    decide_knn_pairs,
    find_pairs,
    hamming_range_pairs,
    hash_sides,
    neighbours,
    reduced_image,
    wavelet_rows,
    wavelet_thumbnail,
)
from bench.metrics import duplicate_scores


def _pairs(p) -> set[tuple[int, int]]:
    return {(min(a, b), max(a, b)) for a, b in np.asarray(p).reshape(-1, 2).tolist()}


@pytest.fixture(scope="module")
def neardup():
    return make_near_duplicates(n_originals=60, per_kind=6, tile=96)


@pytest.fixture(scope="module")
def folder(neardup, tmp_path_factory):
    return write_folder(neardup, tmp_path_factory.mktemp("nd") / "photos")


def _codes(root, method, workers=0):
    return hash_sides([Side("A", str(root), folder_source(root))], method, workers=workers)


# --------------------------------------------------------------------------- same answer as the oracles


def test_phash_codes_are_phash_bits_of_the_reduced_decode(folder, tmp_path):
    src = folder_source(folder)
    codes = _codes(folder, "phash").codes
    expected = [np.packbits(phash_bits(np.asarray(reduced_image(src, i)[0])).ravel()) for i in range(src.n)]
    assert np.array_equal(codes, np.stack(expected))
    # a JPEG is decoded at reduced scale (500x375 -> 1/8), then hashed by the same steps
    Image.fromarray(np.asarray(Image.fromarray(src.image(0)).resize((500, 375)))).save(tmp_path / "a.jpg", quality=90)
    one = folder_source(tmp_path)
    img, pixels = reduced_image(one, 0)
    assert img.size == (63, 47) and pixels == 500 * 375


def test_wavelet_rows_are_knn_rows_of_the_thumbnail(folder):
    src = folder_source(folder)
    thumbs = np.stack([wavelet_thumbnail(reduced_image(src, i)[0]) for i in range(12)])
    _, oracle = knn_rows(thumbs, 16, "pywt", "cpu")
    assert oracle.shape == (12, 768)
    np.testing.assert_allclose(wavelet_rows(thumbs), oracle, atol=1e-6)


def test_blocked_hamming_search_equals_hamming_pairs():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, size=(300, 8), dtype=np.uint8)
    codes[150:200] = codes[:50] ^ (rng.random((50, 8)) < 0.1).astype(np.uint8)   # ~6 bits off
    codes[250] = codes[3]
    want = hamming_pairs(codes, 10)
    got = hamming_range_pairs(codes, 10, block=37)
    assert len(want[0]) >= 50
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])


def _planted_rows(n=400, d=48, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    x[n // 2:n // 2 + 40] = x[:40] + 0.05 * rng.standard_normal((40, d))
    x[-1] = x[7]
    x -= x.mean(axis=1, keepdims=True)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("k", [5, 10])
def test_exact_neighbours_and_rule_equal_knn_duplicates(k):
    x = _planted_rows()
    oracle = knn_duplicates(x, n_neighbours=k, threshold=0.5)
    dist, ids, how = neighbours(x, k, block=53)
    pairs, exact, rel = decide_knn_pairs(x, dist, ids)
    assert how == "exact" and len(oracle.pairs) >= 40
    assert np.array_equal(pairs, oracle.pairs)
    np.testing.assert_array_equal(exact, oracle.distance)
    np.testing.assert_allclose(rel, oracle.relative)


def test_ivf_neighbours_find_the_exact_pairs():
    """Above ``exact_max`` the neighbours come from IVF on a PCA; the decided pairs match exact ones."""
    x = _planted_rows(n=3000, d=768, seed=1).astype(np.float32)
    exact = _pairs(decide_knn_pairs(x, *neighbours(x, 5)[:2])[0])
    dist, ids, how = neighbours(x, 5, exact_max=100)
    approx = _pairs(decide_knn_pairs(x, dist, ids)[0])
    assert how.startswith("IVF") and len(exact) >= 40
    assert len(exact & approx) / len(exact) >= 0.99 and len(exact & approx) / len(approx) >= 0.99


@pytest.mark.parametrize("method", ["wavelet", "phash"])
def test_same_pairs_as_todays_path_on_the_near_duplicate_set(folder, neardup, method):
    """Today's: wavelet-knn on the 256-px images the harness reads (``knn_rows`` + ``knn_duplicates``);
    PHash (imagededup's steps) on every full decode + ``hamming_pairs``."""
    src = folder_source(folder)
    found = find_pairs(_codes(folder, method), method, n_neighbours=5)
    if method == "wavelet":
        _, x = knn_rows(np.stack([src.image(i) for i in range(src.n)]), 16, "pywt", "cpu")
        oracle = knn_duplicates(x, n_neighbours=5).pairs
    else:
        bits = np.stack([np.packbits(phash_bits(src.native(i)).ravel()) for i in range(src.n)])
        oracle = hamming_pairs(bits, 10)[0]
    assert _pairs(found.pairs) == _pairs(oracle)
    assert duplicate_scores(found.pairs, neardup.pairs)["dup_precision"] >= 0.95


def test_workers_do_not_change_the_answer(folder):
    one, two = _codes(folder, "wavelet", workers=0), _codes(folder, "wavelet", workers=2)
    assert np.array_equal(one.codes, two.codes) and np.array_equal(one.rows, two.rows)


# --------------------------------------------------------------------------- the verb


def _run(capsys, *argv):
    code = main(["duplicates", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


def _csv(path):
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


@pytest.mark.parametrize("method", ["wavelet", "phash"])
def test_within_one_set_writes_csv_sidecar_report(folder, neardup, tmp_path, capsys, method):
    code, out, err = _run(capsys, folder, "--method", method, "--out", tmp_path / "o")
    assert code == 0, err
    rows = _csv(tmp_path / "o" / "duplicates.csv")
    assert rows[0] == ["path_a", "path_b", "distance", "group"]
    names = [f"{folder}/images/{i:04d}.png" for i in range(len(neardup.images))]
    found = {tuple(sorted((names.index(a), names.index(b)))) for a, b, _, _ in rows[1:]}
    scores = duplicate_scores(np.asarray(sorted(found)), neardup.pairs)
    assert scores["dup_precision"] >= 0.95 and scores["dup_recall"] >= 0.9
    assert _csv(tmp_path / "o" / "duplicates.skipped.csv") == [["path", "reason"]]
    page = (tmp_path / "o" / "report.html").read_text()
    assert "group 0" in page and "data:image/jpeg;base64," in page
    assert f"{len(rows) - 1} pairs" in out and "groups of near-duplicates" in out
    assert not (tmp_path / "o" / "remove.txt").exists()


def _group_folder(root, variant):
    """Three distinct tiles, and tile 0 again as a variant: larger (2x) or blurred, listed first."""
    tiles, _ = original_tiles(3, tile=96)
    root.mkdir(parents=True)
    for i, t in enumerate(tiles):
        Image.fromarray(t).save(root / f"b{i}.png")
    img = Image.fromarray(tiles[0])
    img = img.resize((192, 192), Image.BICUBIC) if variant == "larger" else img.filter(ImageFilter.GaussianBlur(1))
    img.save(root / "a_copy.png")
    return root


@pytest.mark.parametrize("policy, variant, removed", [
    ("first", "blurred", "b0.png"),           # a_copy.png is listed first
    ("largest", "larger", "b0.png"),          # the 192-px copy is kept
    ("sharpest", "blurred", "a_copy.png"),    # the blurred copy goes
])
def test_keep_policies_list_what_one_would_remove(tmp_path, capsys, policy, variant, removed):
    root = _group_folder(tmp_path / "g", variant)
    code, out, err = _run(capsys, root, "--out", tmp_path / "o", "--keep", policy)
    assert code == 0, err
    assert (tmp_path / "o" / "remove.txt").read_text().splitlines() == [str(root / removed)]
    assert (root / removed).exists() and "nothing deleted" in out


def _jpeg(img: np.ndarray, path, quality=95):
    Image.fromarray(img).save(path, format="JPEG", quality=quality)


@pytest.fixture(scope="module")
def leak(tmp_path_factory):
    """A: 60 tiles; B: 40 other tiles and 20 of A's, 4 of each perturbation (all JPEGs)."""
    tiles, _ = original_tiles(100, tile=128)
    root = tmp_path_factory.mktemp("leak")
    (root / "a").mkdir()
    (root / "b").mkdir()
    for i in range(60):
        _jpeg(tiles[i], root / "a" / f"{i:03d}.jpg")
    for i in range(40):
        _jpeg(tiles[60 + i], root / "b" / f"{i:03d}.jpg")
    planted = {}
    for k in range(20):
        src = 3 * k
        name = f"leak{k:02d}.jpg"
        _jpeg(perturb(tiles[src], KINDS[k // 4]), root / "b" / name)
        planted[(str(root / "a" / f"{src:03d}.jpg"), str(root / "b" / name))] = KINDS[k // 4]
    return root, planted


@pytest.mark.parametrize("method", ["wavelet", "phash"])
def test_across_two_sets_finds_the_leaks_and_nothing_within(leak, tmp_path, capsys, method):
    root, planted = leak
    code, out, err = _run(capsys, root / "a", root / "b", "--method", method, "--out", tmp_path / "o",
                          "--keep", "first")
    assert code == 0, err
    found = {(a, b) for a, b, _, _ in _csv(tmp_path / "o" / "duplicates.csv")[1:]}
    across = {p for p in found if "/a/" in p[0] and "/b/" in p[1]}
    within = found - across
    tp = len(across & set(planted))
    assert tp / len(across) >= 0.9 and tp / len(planted) >= 0.9, (method, tp, len(across))
    if method == "phash":
        assert not within and "within A 0" in out and "within B 0" in out
    else:
        # wavelet-knn's relative rule also links two sky tiles of rocket.jpg inside B (mean absolute
        # difference 10 of 255): today's path (the comparator's A ∪ B search) finds that pair too
        files = sorted(str(f) for f in (root / "a").iterdir()) + sorted(str(f) for f in (root / "b").iterdir())
        _, x = knn_rows(np.stack([read_image(f) for f in files]), 16, "pywt", "cpu")
        oracle = {(files[i], files[j]) for i, j in knn_duplicates(x, n_neighbours=10).pairs}
        assert found == oracle and len(within) <= 1
    removed = (tmp_path / "o" / "remove.txt").read_text().splitlines()
    assert removed and all("/b/" in r for r in removed)        # A's images are kept, B's copies go


def test_every_input_kind_gives_the_same_pairs(folder, tmp_path, capsys):
    """folder:, imagefolder: (a class sub-folder), wds: (tar shards) and a plain path: one answer."""
    shards = tmp_path / "shards"
    shards.mkdir()
    files = sorted((folder / "images").iterdir())
    for s in range(2):
        with tarfile.open(shards / f"s{s}.tar", "w") as tar:
            for f in files[s * len(files) // 2:(s + 1) * len(files) // 2]:
                data = f.read_bytes()
                info = tarfile.TarInfo(f.name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    results = {}
    for kind, where in [("plain", folder), ("folder", f"folder:{folder}"), ("imagefolder", f"imagefolder:{folder}"),
                        ("wds", f"wds:{shards}")]:
        code, _, err = _run(capsys, where, "--out", tmp_path / kind)
        assert code == 0, err
        rows = _csv(tmp_path / kind / "duplicates.csv")[1:]
        results[kind] = sorted((a.rsplit("/", 1)[-1].rsplit(":", 1)[-1], b.rsplit("/", 1)[-1].rsplit(":", 1)[-1])
                               for a, b, _, _ in rows)
    assert results["plain"] and all(r == results["plain"] for r in results.values())


def test_hf_input(folder, tmp_path, capsys):
    datasets = pytest.importorskip("datasets")
    files = sorted(str(f) for f in (folder / "images").iterdir())
    ds = datasets.Dataset.from_dict({"image": files}).cast_column("image", datasets.Image())
    ds.save_to_disk(str(tmp_path / "hf"))
    code, _, err = _run(capsys, f"hf:{tmp_path / 'hf'}", "--out", tmp_path / "o")
    assert code == 0, err
    assert len(_csv(tmp_path / "o" / "duplicates.csv")) > 1


# --------------------------------------------------------------------------- bad input


def test_unreadable_image_is_one_warning_and_listed_as_skipped(folder, tmp_path, capsys):
    import shutil

    root = tmp_path / "bad"
    shutil.copytree(folder, root)
    (root / "duplicates.csv").unlink()
    broken = root / "images" / "0050.png"
    broken.write_bytes(broken.read_bytes()[:200])                # truncated, in the middle
    code, out, err = _run(capsys, root, "--out", tmp_path / "o", "--workers", "2")
    assert code == 0, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "warning:" in lines[0] and "0050.png" in lines[0]
    skipped = _csv(tmp_path / "o" / "duplicates.skipped.csv")
    assert len(skipped) == 2 and skipped[1][0] == str(broken)
    assert "1 unreadable image skipped" in out
    assert all(str(broken) not in r for row in _csv(tmp_path / "o" / "duplicates.csv") for r in row)


def _one_line_error(capsys, *argv, says):
    code, _out, err = _run(capsys, *argv)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:") and says in lines[0], err
    assert "Traceback" not in err


def test_empty_folder_is_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    _one_line_error(capsys, tmp_path / "empty", "--out", tmp_path / "o", says="no images found")


def test_dir2_equal_to_dir_is_one_line(folder, tmp_path, capsys):
    _one_line_error(capsys, folder, f"folder:{folder}/", "--out", tmp_path / "o", says="same data")


def test_unknown_keep_policy_is_one_line(folder, tmp_path, capsys):
    _one_line_error(capsys, folder, "--keep", "newest", "--out", tmp_path / "o", says="--keep must be one of")


def test_unknown_method_and_missing_folder_are_one_line(folder, tmp_path, capsys):
    _one_line_error(capsys, folder, "--method", "dhash", "--out", tmp_path / "o", says="--method must be one of")
    _one_line_error(capsys, tmp_path / "nowhere", "--out", tmp_path / "o", says="no such folder")
