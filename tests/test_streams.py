"""webdataset tar shards (``wds:``), Hugging Face datasets saved locally (``hf:``) and the lazily
rendered ``synth-scale:N``: same pixels and features as the folder they were made from, split
over workers like folders, and one-line errors for bad shards and paths."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from bench.datasets import resolve
from bench.datasets.real import imagefolder_source
from bench.datasets.streams import _braces
from bench.errors import BenchError, DataError
from bench.extractors.timm_models import TinyViTExtractor
from bench.features import FeatureStore


def _jpeg(rng, w, h) -> bytes:
    coarse = rng.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(coarse).resize((w, h), Image.BICUBIC).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _add(tar, name, data: bytes):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The same 10 JPEGs as a class folder and as 2 tar shards (cls + json with a group)."""
    root = tmp_path_factory.mktemp("streams")
    rng = np.random.default_rng(0)
    blobs = [_jpeg(rng, 200 + 30 * (i % 3), 150 + 20 * (i % 2)) for i in range(10)]
    for i, b in enumerate(blobs):
        (root / "folder" / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        (root / "folder" / f"c{i % 2}" / f"{i:03d}.jpg").write_bytes(b)
    (root / "shards").mkdir()
    order = sorted(range(10), key=lambda i: (i % 2, i))   # the folder's order: class, then name
    for s in range(2):
        with tarfile.open(root / "shards" / f"train-{s:02d}.tar", "w") as tar:
            for i in order[s * 5:(s + 1) * 5]:
                _add(tar, f"s{i:03d}.jpg", blobs[i])
                _add(tar, f"s{i:03d}.cls", str(i % 2).encode())
                _add(tar, f"s{i:03d}.json", json.dumps({"group": "a" if i < 5 else "b"}).encode())
    return root, blobs, order


def test_wds_reads_shards_in_place_with_labels_and_groups(data):
    root, _, order = data
    src = resolve(f"wds:{root}/shards").load(seed=0)
    assert src.n == 10 and list(src.labels) == [i % 2 for i in order]
    assert src.group_names == ["a", "b"] and list(src.groups) == [0 if i < 5 else 1 for i in order]
    same = resolve("wds:" + str(root / "shards" / "train-{00..01}.tar")).load(seed=0)
    assert same.revision == src.revision


@pytest.mark.parametrize("workers", [0, 2])
def test_wds_features_equal_the_folder_features(data, workers):
    root, _, _ = data
    ext = TinyViTExtractor().configure(workers=workers)
    a = np.asarray(FeatureStore(None).features(imagefolder_source(root / "folder"), ext, batch_size=3))
    b = np.asarray(FeatureStore(None).features(resolve(f"wds:{root}/shards").load(seed=0), ext, batch_size=3))
    assert np.array_equal(a, b)


def test_braces():
    assert _braces("d/x-{08..10}.tar") == ["d/x-08.tar", "d/x-09.tar", "d/x-10.tar"]
    assert _braces("{a,b}-{1..2}") == ["a-1", "a-2", "b-1", "b-2"]


def test_bad_shards_are_one_line(tmp_path, data):
    _, blobs, _ = data
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.tar").write_bytes(b"this is not a tar archive" * 40)
    with pytest.raises(BenchError, match=r"shard .*x\.tar is not a readable tar") as e:
        resolve(f"wds:{tmp_path}/junk").load(seed=0)
    assert "\n" not in str(e.value)
    (tmp_path / "noimg").mkdir()
    with tarfile.open(tmp_path / "noimg" / "a.tar", "w") as tar:
        _add(tar, "k1.jpg", blobs[0])
        _add(tar, "k2.cls", b"1")
    with pytest.raises(BenchError, match=r"sample 'k2' in shard .* has no image member"):
        resolve(f"wds:{tmp_path}/noimg").load(seed=0)
    with pytest.raises(BenchError, match=r"no \.tar shards"):
        resolve(f"wds:{tmp_path}/empty-nothing").load(seed=0)
    with pytest.raises(BenchError, match=r"shards of .* are missing"):
        resolve("wds:" + str(tmp_path / "junk" / "y-{0..3}.tar")).load(seed=0)


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_member_names_shard_and_member(tmp_path, data, workers):
    _, blobs, _ = data
    (tmp_path / "bad").mkdir()
    with tarfile.open(tmp_path / "bad" / "a.tar", "w") as tar:
        for i in range(4):
            _add(tar, f"k{i}.jpg", blobs[i] if i != 2 else blobs[i][:200])
    src = resolve(f"wds:{tmp_path}/bad").load(seed=0)
    with pytest.raises(DataError) as e:
        FeatureStore(None).features(src, TinyViTExtractor().configure(workers=workers), batch_size=2)
    assert "a.tar:k2.jpg" in str(e.value) and "\n" not in str(e.value) and "BytesIO" not in str(e.value)


def test_hf_saved_dataset_and_parquet(tmp_path, data):
    datasets = pytest.importorskip("datasets")
    root, blobs, order = data
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["c0", "c1"]),
                               "group": datasets.Value("string")})
    ds = datasets.Dataset.from_dict({"image": [{"bytes": blobs[i], "path": None} for i in order],
                                     "label": [i % 2 for i in order],
                                     "group": ["a" if i < 5 else "b" for i in order]}, features=feats)
    ds.save_to_disk(str(tmp_path / "saved"))
    (tmp_path / "pq").mkdir()
    ds.to_parquet(str(tmp_path / "pq" / "part-0.parquet"))
    ext = TinyViTExtractor().configure(workers=2)
    ref = np.asarray(FeatureStore(None).features(imagefolder_source(root / "folder"), ext, batch_size=4))
    for where in ("saved", "pq"):
        src = resolve(f"hf:{tmp_path / where}").load(seed=0)
        assert src.n == 10 and src.class_names == ["c0", "c1"] and src.group_names == ["a", "b"]
        assert np.array_equal(np.asarray(FeatureStore(None).features(src, ext, batch_size=4)), ref)


def test_hf_bad_paths_are_one_line(tmp_path):
    pytest.importorskip("datasets")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("hello")
    with pytest.raises(BenchError, match="neither a dataset saved with save_to_disk"):
        resolve(f"hf:{tmp_path / 'plain'}").load(seed=0)
    with pytest.raises(BenchError, match="does not exist"):
        resolve(f"hf:{tmp_path / 'missing'}").load(seed=0)


def test_synth_scale_is_lazy_deterministic_and_random_access():
    src = resolve("synth-scale:50000").load(seed=0)
    assert src.array is None and src.n == 50000 and src.labels[13] == 1
    a = src.image(49_999)
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, resolve("synth-scale:50000").load(seed=0).image(49_999))
    assert not np.array_equal(a, resolve("synth-scale:50000").load(seed=1).image(49_999))
    with pytest.raises(BenchError, match="positive image count"):
        resolve("synth-scale:lots")
