"""Known duplicate pairs of a user's folder (``duplicates.csv``), graded through ``bench run`` (issue #19)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench import plugins
from bench.cli import main
from bench.datasets import get_spec
from bench.datasets.neardup import make_near_duplicates, write_folder
from bench.errors import DataError
from bench.runstore import RECORD_NAME


@pytest.fixture(scope="module")
def neardup():
    return make_near_duplicates(n_originals=40, per_kind=4, tile=64)


@pytest.fixture
def folder(neardup, tmp_path):
    return write_folder(neardup, tmp_path / "photos")


def _load(prefix: str, root):
    return get_spec(plugins.load().datasets, f"{prefix}{root}").load(seed=0)


@pytest.mark.parametrize("prefix", ["imagefolder:", "folder:"])
def test_duplicates_csv_becomes_the_sources_pairs(neardup, folder, prefix):
    src = _load(prefix, folder)
    assert src.n == len(neardup.images) and src.ids[0] == "images/0000.png"
    assert np.array_equal(src.duplicate_pairs, neardup.pairs)     # names are in image order
    assert src.notes["duplicates_csv"] == str(folder / "duplicates.csv")


def test_duplicates_csv_enters_the_revision(folder):
    before = _load("imagefolder:", folder).revision
    csv = folder / "duplicates.csv"
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join(lines[:-1]) + "\n")                     # one known pair fewer
    after = _load("imagefolder:", folder)
    assert after.revision != before and len(after.duplicate_pairs) == len(lines) - 2
    csv.unlink()
    bare = _load("imagefolder:", folder)
    assert bare.duplicate_pairs is None and bare.revision not in (before, after.revision)


@pytest.mark.parametrize("content, says", [
    ("path_a,path_b,kind\nimages/0000.png,images/9999.png,exact\n", "line 2: 'images/9999.png' is not an image"),
    ("path_a,path_b\nimages/0000.png,images/0001.png\n\nimages/0002.png,0003.png\n", "line 4: '0003.png'"),
    ("a,b\nimages/0000.png,images/0001.png\n", "line 1: the header must be path_a,path_b"),
    ("path_a,path_b\nimages/0000.png\n", "line 2: expected path_a,path_b"),
    ("path_a,path_b\nimages/0001.png,./images/0001.png\n", "line 2: 'images/0001.png' is paired with itself"),
])
def test_bad_duplicates_csv_is_one_error(folder, content, says):
    (folder / "duplicates.csv").write_text(content)
    with pytest.raises(DataError, match=r"duplicates\.csv, ") as err:
        _load("folder:", folder)
    assert says in str(err.value) and "\n" not in str(err.value)


def test_bad_duplicates_csv_through_bench_run_is_one_line(folder, tmp_path, capsys):
    (folder / "duplicates.csv").write_text("path_a,path_b\nimages/0000.png,images/missing.png\n")
    code = main(["run", "--methods", "phash", "--datasets", f"imagefolder:{folder}", "--extractor", "pixels",
                 "--no-cache", "--no-progress", "--out", str(tmp_path / "out")])
    text = capsys.readouterr()
    err = " ".join((text.err + text.out).split())                    # rich wraps long lines
    assert code == 2 and "Traceback" not in err, err
    assert err.count("error:") == 1 and "duplicates.csv, line 2: 'images/missing.png' is not an image" in err


def test_bench_run_grades_duplicates_on_a_folder(folder, tmp_path):
    """wavelet and phash on a one-class folder with duplicates.csv: the record holds their duplicate
    precision / recall against the CSV's pairs (exact and JPEG-50 copies are easy for both)."""
    out = tmp_path / "out"
    code = main(["run", "--methods", "wavelet,phash", "--datasets", f"imagefolder:{folder}", "--extractor",
                 "pixels", "--no-cache", "--no-progress", "--out", str(out)])
    assert code == 0
    recs = {r["method"]["name"]: r for r in (json.loads(p.read_text()) for p in sorted(out.rglob("seed*.json"))
                                             if RECORD_NAME.fullmatch(p.name))}
    assert set(recs) == {"wavelet", "phash"}
    for name, rec in recs.items():
        assert rec["status"] == "ok", rec.get("error")
        m = {k: v["value"] for k, v in rec["metrics"].items()}
        assert m["dup_precision"] >= 0.9 and m["dup_recall"] >= 0.8, (name, m)
        assert "probe_acc" not in m and "nmi" not in m                 # one class: nothing to grade there
