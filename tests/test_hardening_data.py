"""Hardening round 3 (issue 30), the data-input surface: what a file's content, a full disk or a
hostile input can do to folders, ``wds:``, ``hf:``, CIFAR batches, the data pipeline and the
feature cache. One test per problem id; each ends in one line (or a warning) within seconds."""

from __future__ import annotations

import errno
import io
import json
import os
import pickle
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench import pipeline
from bench.datasets import resolve
from bench.datasets.real import folder_source, read_image
from bench.datasets.streams import _braces
from bench.errors import BenchError, DataError
from bench.extractors.pixels import PixelsExtractor
from bench.features import FeatureStore

pytestmark = pytest.mark.usefixtures("one_thread")


def _png(size=(12, 10), mode="RGB", color=(200, 40, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="PNG")
    return buf.getvalue()


def _add(tar, name, data: bytes):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _shard(path: Path, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            _add(tar, name, data)
    return path


def _folder(root: Path, n=4) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (16, 12), (30 * i, 90, 200 - 30 * i)).save(root / f"{i:02d}.png")
    return root


def _one_line(e) -> str:
    text = str(e.value)
    assert "\n" not in text and "Traceback" not in text
    return text


# --------------------------------------------------------------------------- high


def test_h1_extreme_aspect_ratio_is_bounded(tmp_path):
    """A 1×100000 strip would be scaled to 25,600,000×256 (~20 GB); it is refused before any
    resize, in a folder, as a wds member and on the GPU-decode path (header only)."""
    root = _folder(tmp_path / "A")
    Image.new("L", (100000, 1), 128).save(root / "thin.png")
    Image.new("L", (1, 100000), 128).save(root / "tall.png")
    for name in ("thin.png", "tall.png"):
        with pytest.raises(DataError, match="aspect ratio beyond 1:256") as e:
            read_image(root / name, 8)   # size 8: the unfixed code allocates only ~20 MB here
        assert name in _one_line(e)
        with pytest.raises(DataError, match="aspect ratio"):
            read_image(root / name, None)   # the native decode the exact resize starts from
        blob = torch.frombuffer(bytearray((root / name).read_bytes()), dtype=torch.uint8)
        with pytest.raises(DataError, match="aspect ratio"):
            pipeline._check_header(blob, str(root / name))
    assert read_image(root / "00.png", 8).shape == (8, 8, 3)   # ordinary images are untouched
    _shard(tmp_path / "shards" / "s.tar", {"k0.png": _png(), "k1.png": (root / "thin.png").read_bytes()})
    src = resolve(f"wds:{tmp_path}/shards").load(seed=0)
    with pytest.raises(DataError, match=r"s\.tar:k1\.png is 100000×1 pixels"):
        src.native(1, 8)


def test_h2_full_shm_ends_with_one_line(tmp_path):
    """A worker whose batch cannot be placed in shared memory made the main process wait forever:
    the worker now exits and the run ends with one line (in a subprocess: the unfixed code hangs)."""
    script = tmp_path / "shm.py"
    script.write_text(
        "from types import SimpleNamespace\n"
        "from bench import pipeline\n"
        "from bench.errors import BenchError\n"
        "class Full:\n"
        "    def __reduce__(self):\n"
        "        raise RuntimeError('unable to allocate shared memory(shm) for file </torch_1_2>: '\n"
        "                           'No space left on device (28)')\n"
        "pipeline._Batches.__getitem__ = lambda self, k: Full()\n"
        "src = SimpleNamespace(n=4, name='fake')\n"
        "try:\n"
        "    list(pipeline.DataPipeline(src, batch_size=2, workers=1))\n"
        "except BenchError as e:\n"
        "    print('ONE LINE:', e)\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    try:
        out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, env=env,
                             check=False)
    except subprocess.TimeoutExpired:
        pytest.fail("the data pipeline hung on a full /dev/shm")
    assert f"ONE LINE: {pipeline.SHM_FULL}" in out.stdout, out.stdout + out.stderr
    assert "Traceback" not in out.stderr


def test_h2_small_shm_falls_back_to_fewer_workers(tmp_path, monkeypatch, capsys):
    """When /dev/shm cannot hold one batch per worker the pipeline uses fewer (here 0: in-process)
    and says so in one line; the batches are the same."""
    src = folder_source(_folder(tmp_path / "A", 5))
    monkeypatch.setattr(pipeline, "shm_free", lambda path=None: 100_000)
    monkeypatch.setattr(pipeline, "_warned", set())   # said once per process: not yet in this one
    monkeypatch.setattr(pipeline, "worker_loader", lambda *a, **k: pytest.fail("no workers fit"))
    got = [images for _, images in pipeline.DataPipeline(src, batch_size=2, workers=2)]
    err = capsys.readouterr().err
    assert "room for the batches of 0 of 2 data-loading workers" in err and len(err.strip().splitlines()) == 1
    monkeypatch.undo()
    same = [images for _, images in pipeline.DataPipeline(src, batch_size=2, workers=0)]
    assert all(np.array_equal(a, b) for a, b in zip(got, same))


def test_h2_stuck_read_ends_with_one_line(tmp_path, monkeypatch):
    """A batch that never comes (a read that does not return) ends the run after
    ``BENCH_LOADER_TIMEOUT`` seconds with one line instead of waiting forever."""
    src = folder_source(_folder(tmp_path / "A", 4))
    monkeypatch.setenv("BENCH_LOADER_TIMEOUT", "1")
    monkeypatch.setattr(pipeline._Batches, "__getitem__", lambda self, k: time.sleep(3))   # forked: workers see it
    t = time.perf_counter()
    with pytest.raises(BenchError, match="no batch came from the data-loading workers in 1 s") as e:
        list(pipeline.DataPipeline(src, batch_size=2, workers=1))
    _one_line(e)
    assert time.perf_counter() - t < 30


def test_h5_huge_labels_are_remapped_dense(tmp_path):
    """Labels 10^9 (.cls) and 10^12 (.json) allocated a class-name list by value; they are now
    dense indices into the sorted unique labels."""
    _shard(tmp_path / "w" / "s.tar", {
        "k0.png": _png(), "k0.cls": b"1000000000",
        "k1.png": _png(), "k1.json": json.dumps({"label": 10**12}).encode(),
        "k2.png": _png(), "k2.cls": b"7",
        "k3.png": _png()})
    src = resolve(f"wds:{tmp_path}/w").load(seed=0)
    assert src.class_names == ["7", "1000000000", "1000000000000"]
    assert src.labels.tolist() == [1, 2, 0, -1]


def test_h5_hf_int_label_is_remapped_dense(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"image": [{"bytes": _png(), "path": None}] * 3, "label": [10**12, 3, 10**12]},
                                    features=datasets.Features({"image": datasets.Image(),
                                                                "label": datasets.Value("int64")}))
    ds.save_to_disk(str(tmp_path / "saved"))
    src = resolve(f"hf:{tmp_path}/saved").load(seed=0)
    assert src.class_names == ["3", "1000000000000"] and src.labels.tolist() == [1, 0, 1]


def test_h7_fifo_device_and_dangling_link_are_skipped_or_refused(tmp_path, capsys):
    """An entry named like an image that is not a regular file would block open() (a FIFO) or
    stream forever (a device): one warning, skipped. A shard like that is one error."""
    root = _folder(tmp_path / "A", 3)
    os.mkfifo(root / "pipe.png")
    (root / "zero.png").symlink_to("/dev/zero")
    (root / "gone.png").symlink_to(root / "nothing-here.png")
    src = folder_source(root)
    assert src.ids == ["00.png", "01.png", "02.png"]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: skipped 3 entries")
    assert "pipe.png (a named pipe" in err[0] and "zero.png (a device" in err[0] and "gone.png (a symbolic" in err[0]
    with pytest.raises(DataError, match="named pipe"):
        read_image(root / "pipe.png")   # made after the listing: refused, never opened
    (tmp_path / "w").mkdir()
    _shard(tmp_path / "w" / "a.tar", {"k0.png": _png()})
    os.mkfifo(tmp_path / "w" / "s.tar")
    with pytest.raises(BenchError, match=r"s\.tar is a named pipe") as e:
        resolve(f"wds:{tmp_path}/w").load(seed=0)
    _one_line(e)
    with pytest.raises(BenchError, match="named pipe"):
        resolve(f"wds:{tmp_path}/w/s.tar").load(seed=0)


# --------------------------------------------------------------------------- medium


def test_m6_hf_datasets_that_gave_tracebacks(tmp_path):
    """String labels are class names, None is unlabelled, a dataset with no splits or no rows is
    one line (these were ValueError, TypeError and IndexError tracebacks)."""
    datasets = pytest.importorskip("datasets")
    img = {"bytes": _png(), "path": None}
    feats = {"image": datasets.Image(), "label": datasets.Value("string")}
    datasets.Dataset.from_dict({"image": [img] * 3, "label": ["dog", "cat", "dog"]},
                               features=datasets.Features(feats)).save_to_disk(str(tmp_path / "str"))
    src = resolve(f"hf:{tmp_path}/str").load(seed=0)
    assert src.class_names == ["cat", "dog"] and src.labels.tolist() == [1, 0, 1]
    datasets.Dataset.from_dict({"image": [img] * 3, "label": [2, None, 5]},
                               features=datasets.Features({**feats, "label": datasets.Value("int64")})
                               ).save_to_disk(str(tmp_path / "none"))
    src = resolve(f"hf:{tmp_path}/none").load(seed=0)
    assert src.class_names == ["2", "5"] and src.labels.tolist() == [0, -1, 1]
    (tmp_path / "nosplits").mkdir()
    (tmp_path / "nosplits" / "dataset_dict.json").write_text(json.dumps({"splits": []}))
    with pytest.raises(BenchError) as e:
        resolve(f"hf:{tmp_path}/nosplits").load(seed=0)
    assert "hf:" in _one_line(e)
    datasets.Dataset.from_dict({"image": [], "label": []}, features=datasets.Features(feats)).save_to_disk(
        str(tmp_path / "empty"))
    with pytest.raises(DataError, match="has no rows") as e:
        resolve(f"hf:{tmp_path}/empty").load(seed=0)
    _one_line(e)


def test_m8_cached_features_of_wrong_width_are_recomputed(tmp_path, capsys):
    """A cache file of the right rows and dtype but the wrong width was used silently (NMI 0.000):
    the sidecar now stores D, and a mismatch is moved aside and recomputed."""
    src = folder_source(_folder(tmp_path / "A", 4))
    ext = PixelsExtractor(size=4).configure(workers=0)
    store = FeatureStore(tmp_path / "cache")
    good = np.array(store.features(src, ext, batch_size=2))   # a copy: the file is overwritten below
    path = store.path(src, ext, "pooled")
    assert json.loads(path.with_suffix(".json").read_text())["d"] == good.shape[1] == 48
    np.save(path, np.zeros((4, 5), np.float32))
    again = FeatureStore(tmp_path / "cache")
    assert np.array_equal(np.asarray(again.features(src, ext, batch_size=2)), good) and again.computed == 1
    assert "5 features wide, expected 48" in capsys.readouterr().err


def _sparse_shard(path: Path, name: str, size: int) -> None:
    """A tar whose one member declares ``size`` bytes of zeros, written sparse (no disk used)."""
    info = tarfile.TarInfo(name)
    info.size = size
    with open(path, "wb") as f:
        f.write(info.tobuf(format=tarfile.GNU_FORMAT))
        f.seek(512 + -(-size // 512) * 512 + 1024 - 1)
        f.write(b"\0")


def test_m9_large_wds_member_is_refused_and_decoded_from_a_bounded_stream(tmp_path):
    """A member declared 1 GiB was read whole (per worker, per read) before PIL rejected it: it is
    now refused when indexing; members under the budget decode from their byte range."""
    import tracemalloc

    (tmp_path / "big").mkdir()
    _sparse_shard(tmp_path / "big" / "s.tar", "k0.png", 2**30)
    with pytest.raises(DataError, match=r"s\.tar:k0\.png is 1\.0 GiB, over the") as e:
        resolve(f"wds:{tmp_path}/big").load(seed=0)
    _one_line(e)
    (tmp_path / "mid").mkdir()
    _sparse_shard(tmp_path / "mid" / "s.tar", "k0.png", 64 * 2**20)
    src = resolve(f"wds:{tmp_path}/mid").load(seed=0)
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match=r"cannot read image .*s\.tar:k0\.png"):
            src.native(0, 8)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20, f"{peak / 2**20:.0f} MiB read for a 64 MiB member that is not an image"


def _cifar(base: Path, labels: list[int], rows: int, classes: int = 10) -> None:
    base.mkdir(parents=True, exist_ok=True)
    data = np.zeros((rows, 3072), np.uint8)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(base / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": labels}, f)
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(classes)]}, f)


@pytest.mark.parametrize("labels, rows, match", [([1, 2, 3, 4, 5], 20, "5 'labels' for 20 images"),
                                                 ([0, 99, 1, 2], 4, "holds 99, outside 0..9")])
def test_m10_cifar_batch_with_inconsistent_labels_is_refused(tmp_path, monkeypatch, labels, rows, match):
    from bench.datasets.real import load_cifar10

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("BENCH_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    _cifar(tmp_path / "c" / "cifar-10-batches-py", labels, rows)
    monkeypatch.setenv("BENCH_CIFAR10_ROOT", str(tmp_path / "c"))
    with pytest.raises(DataError, match=match) as e:
        load_cifar10("test")
    _one_line(e)


def test_m11_disk_full_during_cache_write_is_one_line(tmp_path, monkeypatch):
    """A full disk (or ``ulimit -f``) while writing features was a traceback and a crash record:
    now one line, and no temporary file is left."""
    from bench import features

    src = folder_source(_folder(tmp_path / "A", 4))
    ext = PixelsExtractor(size=4).configure(workers=0)

    def full(self, rows, values):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(features._RowWriter, "__setitem__", full)
    with pytest.raises(BenchError, match=r"cannot write the feature cache .*the disk is full") as e:
        FeatureStore(tmp_path / "cache").features(src, ext, batch_size=2)
    _one_line(e)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == []


def test_m13_brace_expansion_bounded():
    """``{000000000..999999999}`` expanded 10^9 names (4.7 GB, then MemoryError): counted first."""
    t = time.perf_counter()
    with pytest.raises(BenchError, match="names 1,000,000,000 shards, more than 100,000") as e:
        _braces("s-{000000000..999999999}.tar")
    _one_line(e)
    with pytest.raises(BenchError, match="names 200,000 shards"):
        _braces("{a,b}-{00000..99999}.tar")
    assert time.perf_counter() - t < 1
    assert len(_braces("x-{00000..99999}.tar")) == 100_000


# --------------------------------------------------------------------------- low


def test_l1_bench_cache_that_is_a_file_is_checked_up_front(tmp_path, monkeypatch):
    from bench.features import default_cache_dir

    (tmp_path / "afile").write_text("x")
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "afile"))
    with pytest.raises(BenchError, match=r"BENCH_CACHE .* is a file") as e:
        default_cache_dir()
    _one_line(e)
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "afile" / "below"))
    with pytest.raises(BenchError, match="BENCH_CACHE"):
        default_cache_dir()
    if os.geteuid() != 0:   # root may write anywhere
        (tmp_path / "ro").mkdir(mode=0o555)
        monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "ro"))
        with pytest.raises(BenchError, match="read-only"):
            default_cache_dir()
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "fine"))
    assert default_cache_dir() == tmp_path / "fine" / "features"


def test_l10_stale_cache_temp_files_are_removed(tmp_path):
    """A killed extraction left ``.…tmpPID.npy`` in the cache for good; a store opened later
    removes temp files whose process is gone (or a day old), never a live writer's."""
    cache = tmp_path / "cache"
    cache.mkdir()
    dead = 2**22 + 11   # above Linux's pid_max: no such process
    stale = [cache / f".x-pixels-pooled-abc.tmp{dead}.npy", cache / f".x-pixels-pooled-abc.json.{dead}.tmp"]
    live = cache / f".y-pixels-pooled-abc.tmp{os.getpid()}.npy"
    fresh = cache / f".z-pixels-pooled-abc.tmp{dead}.npy"
    kept = cache / "x-pixels-pooled-abc.npy"
    hour_ago = time.time() - 3600
    for p in (*stale, live, fresh, kept):
        p.write_bytes(b"\0" * 64)
        if p is not fresh:
            os.utime(p, (hour_ago, hour_ago))
    FeatureStore(cache)
    assert sorted(p.name for p in cache.iterdir()) == sorted([live.name, fresh.name, kept.name])


def test_l13_wds_label_and_gzip_problems_are_one_line(tmp_path):
    cases = {"cls-text": {"k0.png": _png(), "k0.cls": b"abc"},
             "cls-negative": {"k0.png": _png(), "k0.cls": b"-7"},
             "mixed": {"k0.png": _png(), "k0.cls": b"3", "k1.png": _png(), "k1.json": b'{"label": "cat"}'}}
    for name, members in cases.items():
        _shard(tmp_path / name / "s.tar", members)
    for name, match in (("cls-text", r"s\.tar:k0\.cls is 'abc', not an integer label"),
                        ("cls-negative", "label -7 is negative"), ("mixed", "labels mix integers and class names")):
        with pytest.raises(DataError, match=match) as e:
            resolve(f"wds:{tmp_path}/{name}").load(seed=0)
        _one_line(e)
    _shard(tmp_path / "names" / "s.tar", {"k0.png": _png(), "k0.json": b'{"label": "cat"}', "k1.png": _png(),
                                          "k1.json": b'{"label": "ant"}'})
    src = resolve(f"wds:{tmp_path}/names").load(seed=0)   # class names in json: a user's labels, not unlabelled
    assert src.class_names == ["ant", "cat"] and src.labels.tolist() == [1, 0]
    import gzip

    raw = _shard(tmp_path / "plain" / "s.tar", {"k0.png": _png()}).read_bytes()
    (tmp_path / "gz").mkdir()
    (tmp_path / "gz" / "s.tar").write_bytes(gzip.compress(raw))
    with pytest.raises(BenchError, match=r"s\.tar is gzip-compressed") as e:
        resolve(f"wds:{tmp_path}/gz").load(seed=0)
    _one_line(e)
    (tmp_path / "tgz").mkdir()
    (tmp_path / "tgz" / "s-0.tar.gz").write_bytes(gzip.compress(raw))
    with pytest.raises(BenchError, match=r"holds 1 gzip-compressed shard\(s\) \(first: s-0\.tar\.gz\)"):
        resolve(f"wds:{tmp_path}/tgz").load(seed=0)


def test_l14_exif_orientation_and_alpha_on_white(tmp_path):
    """A rotated camera JPEG is read upright; transparent pixels are white, not their hidden RGB."""
    img = Image.new("RGB", (64, 48), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6   # rotate 90° clockwise to display
    img.save(tmp_path / "rot.jpg", exif=exif)
    assert read_image(tmp_path / "rot.jpg", None).shape == (64, 48, 3)
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    rgba.save(tmp_path / "clear.png")
    assert (read_image(tmp_path / "clear.png", None) == 255).all()
    Image.new("LA", (8, 8), (0, 0)).save(tmp_path / "la.png")
    assert (read_image(tmp_path / "la.png", None) == 255).all()
    pal = Image.new("P", (8, 8), 0)
    pal.putpalette([10, 20, 30] + [0] * 765)
    pal.save(tmp_path / "pal.png", transparency=0)
    assert (read_image(tmp_path / "pal.png", None) == 255).all()
    half = Image.new("RGBA", (8, 8), (0, 0, 0, 128))
    half.save(tmp_path / "half.png")
    assert abs(int(read_image(tmp_path / "half.png", None)[0, 0, 0]) - 127) <= 1


def test_l15_decompression_bomb_warning_is_one_line(tmp_path, monkeypatch, capsys, recwarn):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    Image.new("RGB", (40, 40), (1, 2, 3)).save(tmp_path / "big.png")   # 1600 px: over 1000, under 2000
    assert read_image(tmp_path / "big.png", 8).shape == (8, 8, 3)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: image ") and "decompression-bomb" in err[0]
    assert "site-packages" not in err[0] and not [w for w in recwarn if "DecompressionBomb" in str(w.category)]


def test_l16_decode_gpu_on_cpu_is_one_error():
    """``--decode gpu --device cpu`` decoded on the CPU without a word; the run's extractor is
    configured before any work, so this is one line then."""
    with pytest.raises(BenchError, match="--decode gpu needs a CUDA device, but this run's device is cpu") as e:
        PixelsExtractor(device="cpu").configure(decode="gpu")
    _one_line(e)
    assert PixelsExtractor(device="cpu").configure(decode="cpu").decode == "cpu"


def test_l17_duplicates_csv_linked_outside_is_refused_without_echo(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0:root:/root:/bin/bash\n")
    root = _folder(tmp_path / "A", 2)
    (root / "duplicates.csv").symlink_to(secret)
    with pytest.raises(DataError, match="symbolic link to a file outside") as e:
        folder_source(root)
    assert "root:x" not in _one_line(e)
    (root / "duplicates.csv").unlink()
    (root / "duplicates.csv").write_text("root:x:0:0:root:/root:/bin/bash\n")
    with pytest.raises(DataError, match="the header must be") as e:
        folder_source(root)
    assert "root:x" not in _one_line(e)


def test_l19_hf_img_column_with_png_bytes(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"img": [_png(), _png(color=(0, 0, 255))]},
                               features=datasets.Features({"img": datasets.Value("binary")})
                               ).save_to_disk(str(tmp_path / "bin"))
    src = resolve(f"hf:{tmp_path}/bin").load(seed=0)
    assert src.native(1).shape == (10, 12, 3) and src.native(1)[0, 0].tolist() == [0, 0, 255]


def test_l23_dangling_symlink_message(tmp_path):
    (tmp_path / "gone.png").symlink_to(tmp_path / "target.png")
    with pytest.raises(DataError, match=r"gone\.png: it is a symbolic link to .*target\.png, which does not") as e:
        read_image(tmp_path / "gone.png")
    assert "disappeared" not in _one_line(e)
    with pytest.raises(DataError, match="which does not exist"):
        pipeline.read_bytes(str(tmp_path / "gone.png"))
