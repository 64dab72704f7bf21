"""The data pipeline: worker-count independence, the one exact resize, GPU-decode selection and
fallback (exercised with torchvision's CPU decoder), precision keys, bad input, the feature store."""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from bench import pipeline
from bench.datasets.real import imagefolder_source
from bench.errors import BenchError, DataError
from bench.extractors.timm_models import TinyViTExtractor
from bench.extractors.transforms import from_timm_config
from bench.features import FeatureStore
from bench.pipeline import DataPipeline, check_workers


def _smooth(rng, w, h):
    coarse = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    img = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), dtype=np.int16)
    return np.clip(img + rng.normal(0, 6, size=(h, w, 3)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """12 JPEGs of mixed real-world sizes (500×375 like ImageNet, portrait, small) and one PNG."""
    root = tmp_path_factory.mktemp("jpegs")
    rng = np.random.default_rng(0)
    sizes = [(500, 375), (375, 500), (320, 240), (500, 333)]
    for i in range(12):
        cls = root / f"c{i % 2}"
        cls.mkdir(exist_ok=True)
        w, h = sizes[i % len(sizes)]
        Image.fromarray(_smooth(rng, w, h)).save(cls / f"{i:02d}.jpg", quality=90)
    Image.fromarray(_smooth(rng, 300, 200)).save(root / "c1" / "zz.png")
    return root


@pytest.fixture(scope="module")
def tiny():
    return TinyViTExtractor()


def _feats(ext, src, workers, **kw):
    ext.configure(workers=workers, **kw)
    try:
        return np.asarray(FeatureStore(None).features(src, ext, batch_size=4))
    finally:
        ext.configure(workers=0, precision="fp32", decode="auto")


def test_features_are_bit_identical_for_0_1_2_workers(folder, tiny):
    src = imagefolder_source(folder)
    f0, f1, f2 = (_feats(tiny, src, w) for w in (0, 1, 2))
    assert f0.shape == (13, tiny.model.num_features * tiny.model.grid ** 2)
    assert np.array_equal(f0, f1) and np.array_equal(f0, f2)


def test_in_memory_sources_stay_in_process_and_unchanged(tiny):
    """Embedded datasets: same batches and numbers as the pre-pipeline loop (stack, preprocess)."""
    from bench.datasets.synth import make_synth_passnet

    src = make_synth_passnet(0, n_per_source=8)
    pipe = DataPipeline(src, batch_size=5, workers=3, transform=tiny.transform)
    assert pipe.workers == 0 and not pipe.exact
    feats = _feats(tiny, src, 2)
    with torch.no_grad():
        ref = torch.cat([tiny.model.grid_pool(tiny.model.forward_features(tiny.preprocess(src.array[i:i + 4])),
                                              (64, 64)) for i in range(0, src.n, 4)]).numpy()
    assert np.array_equal(feats, ref)
    assert "pixels" not in json.dumps(FeatureStore(None).key(src, tiny, "pooled"))


def test_one_exact_resize_matches_timm_transform_on_500x375(folder):
    """DeiT-S eval transform (bicubic, crop_pct 0.875 → resize 256, crop 224) from the original
    500×375 pixels vs timm's own PIL pipeline. Tolerance: both resize uint8 → uint8 with antialias,
    so pixels differ by at most a few grey levels (max ≤ 3/255 before normalising) and by < 0.5 grey
    level on average; the old path (resize to 256 square, then resize again) is further off."""
    import timm
    from timm.data import create_transform, resolve_data_config

    model = timm.create_model("deit_small_patch16_224", pretrained=False, num_classes=0)
    cfg = resolve_data_config({}, model=model)
    ref_tf = create_transform(**cfg)
    pre = from_timm_config(cfg)
    src = imagefolder_source(folder)
    jpgs = [i for i, p in enumerate(src.paths) if p.endswith(".jpg") and Image.open(p).size == (500, 375)]
    assert len(jpgs) >= 3
    pipe = DataPipeline(src, jpgs, batch_size=8, workers=0, transform=pre)
    assert pipe.exact
    (_, batch), = list(pipe)
    ours = batch.float() / 255
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    theirs = torch.stack([ref_tf(Image.open(src.paths[i]).convert("RGB")) for i in jpgs]) * std + mean
    diff = (ours - theirs).abs()
    assert diff.max() <= 3 / 255 + 1e-6 and diff.mean() < 0.5 / 255
    old = pre.geometry(torch.from_numpy(np.stack([src.image(i) for i in jpgs])).permute(0, 3, 1, 2))
    assert (old.float() / 255 - theirs).abs().mean() > diff.mean()


def test_gpu_decode_path_selection_and_per_file_fallback(folder, tiny):
    """decode="gpu" reads bytes in workers and decodes JPEGs with torchvision's decode_jpeg (here on
    the CPU device, the same code path as CUDA); the PNG falls back to PIL. Same features within
    one grey level of decoder difference."""
    src = imagefolder_source(folder)
    assert DataPipeline(src, transform=tiny.transform, device="cpu").mode == "exact"
    assert DataPipeline(src, transform=tiny.transform, decode="gpu").mode == "bytes"
    assert DataPipeline(src, transform=None, decode="gpu").mode == "plain"  # pixels: no exact resize
    pil = [b for _, b in DataPipeline(src, batch_size=5, workers=0, transform=tiny.transform)]
    dev = [b for _, b in DataPipeline(src, batch_size=5, workers=2, transform=tiny.transform, decode="gpu")]
    for a, b in zip(pil, dev):
        assert a.shape == b.shape and (a.int() - b.int()).abs().max() <= 2
    with pytest.raises(BenchError, match="decode must be one of"):
        DataPipeline(src, decode="nvjpeg")


def test_gpu_decode_falls_back_per_file(folder, tiny, monkeypatch):
    import bench.pipeline as P

    src = imagefolder_source(folder)
    calls = []

    def refuse_batch(blobs, keys, device):  # the device decoder refuses everything
        calls.append(len(keys))
        return {}

    monkeypatch.setattr(P, "decode_jpegs", refuse_batch)
    fallback = [b for _, b in DataPipeline(src, batch_size=5, workers=0, transform=tiny.transform, decode="gpu")]
    cpu = [b for _, b in DataPipeline(src, batch_size=5, workers=0, transform=tiny.transform)]
    assert calls and all(torch.equal(a, b) for a, b in zip(cpu, fallback))


@pytest.fixture()
def corrupt_folder(tmp_path):
    rng = np.random.default_rng(1)
    for i in range(6):
        (tmp_path / "a").mkdir(exist_ok=True)
        Image.fromarray(_smooth(rng, 120, 90)).save(tmp_path / "a" / f"{i}.jpg")
    good = (tmp_path / "a" / "3.jpg").read_bytes()
    (tmp_path / "a" / "3.jpg").write_bytes(good[:len(good) // 3])  # truncated
    return tmp_path


@pytest.mark.parametrize("workers,decode", [(0, "auto"), (2, "auto"), (2, "gpu")])
def test_corrupt_jpeg_gives_one_line_naming_the_file(corrupt_folder, tiny, workers, decode, capfd):
    src = imagefolder_source(corrupt_folder)
    store = FeatureStore(corrupt_folder / "cache")
    tiny.configure(workers=workers)
    # the device-decode path on the CPU device (configure refuses gpu without CUDA)
    tiny.config = dataclasses.replace(tiny.config, decode=decode)
    try:
        with pytest.raises(DataError) as err:
            store.features(src, tiny, batch_size=2)
    finally:
        tiny.configure(workers=0, decode="auto")
    msg = str(err.value)
    assert "3.jpg" in msg and "\n" not in msg
    assert "Traceback" not in capfd.readouterr().err
    assert not list((corrupt_folder / "cache").glob("*.npy"))   # nothing partial cached


def test_bad_workers_and_batch_size_are_one_line(folder, tiny):
    with pytest.raises(BenchError, match="--workers must be an integer >= 0"):
        check_workers(-1)
    with pytest.raises(BenchError, match="--workers"):
        tiny.configure(workers=-1)
    with pytest.raises(BenchError, match="--batch-size must be a positive integer"):
        FeatureStore(None).features(imagefolder_source(folder), tiny, batch_size=0)
    with pytest.raises(BenchError, match="--precision must be one of fp32, bf16, fp16"):
        tiny.configure(precision="int8")


_KILL_SCRIPT = """
import os, signal, sys
import numpy as np
from bench.datasets.real import imagefolder_source
from bench.extractors.timm_models import TinyViTExtractor
from bench.features import FeatureStore
from bench.errors import BenchError
src = imagefolder_source(sys.argv[1])
native = src.native
def dying(i):
    if i == 7 and os.getpid() != MAIN:
        os.kill(os.getpid(), signal.SIGKILL)
    return native(i)
MAIN = os.getpid()
src.native = dying
ext = TinyViTExtractor().configure(workers=2)
try:
    FeatureStore(sys.argv[2]).features(src, ext, batch_size=2)
except BenchError as e:
    print("error:", e)
    sys.exit(2)
"""


def test_killed_worker_ends_with_one_line_and_no_partial_cache(folder, tmp_path):
    cache = tmp_path / "cache"
    proc = subprocess.run([sys.executable, "-c", _KILL_SCRIPT, str(folder), str(cache)], capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1 and "worker died" in lines[0]
    assert "Traceback" not in proc.stderr
    assert not list(cache.glob("*.npy")) and not list(cache.glob(".*.npy"))


_SLOW_SCRIPT = """
import sys, time
from bench.datasets.real import imagefolder_source
from bench.pipeline import DataPipeline
src = imagefolder_source(sys.argv[1])
native = src.native
def slow(i):
    time.sleep(0.5)
    return native(i)
src.native = slow
from bench.extractors.transforms import from_timm_config
from bench.extractors.timm_models import TINY_VIT_DATA
for rows, batch in DataPipeline(src, batch_size=1, workers=2, transform=from_timm_config(TINY_VIT_DATA)):
    print("batch", flush=True)
"""


def test_ctrl_c_stops_workers_promptly(folder):
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_SCRIPT, str(folder)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "batch"
    children = _children(proc.pid)
    assert children, "the pipeline should run worker processes"
    proc.send_signal(signal.SIGINT)
    t0 = time.monotonic()
    proc.wait(timeout=30)
    assert time.monotonic() - t0 < 15 and proc.returncode != 0
    time.sleep(0.5)
    assert not [c for c in children if _alive(c)]


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        pytest.skip("needs /proc/PID/task/PID/children")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


def test_precision_is_in_the_cache_key_and_bf16_stays_close(folder, tiny):
    src = imagefolder_source(folder)
    key32 = tiny.cache_key()
    assert key32["dtype"] == "float32"
    f32 = _feats(tiny, src, 0)
    tiny.configure(precision="bf16")
    try:
        assert tiny.cache_key()["dtype"] == "bfloat16"
        assert FeatureStore(None).key(src, tiny, "pooled") != (tiny.configure(precision="fp32") and
                                                               FeatureStore(None).key(src, tiny, "pooled"))
    finally:
        tiny.configure(precision="fp32")
    fbf = _feats(tiny, src, 0, precision="bf16")
    assert fbf.dtype == np.float32
    cos = (f32 * fbf).sum(1) / np.linalg.norm(f32, axis=1) / np.linalg.norm(fbf, axis=1)
    assert cos.min() > 0.99 and not np.array_equal(f32, fbf)


def test_feature_store_writes_the_file_and_moves_damaged_files_aside(folder, tiny, tmp_path, capfd):
    src = imagefolder_source(folder)
    store = FeatureStore(tmp_path)
    feats = np.array(store.features(src, tiny, batch_size=5))   # a copy: the file is rewritten below
    path = store.path(src, tiny, "pooled")
    # written batch by batch with file writes (batches of 5 rows): the same rows as in memory
    assert np.array_equal(feats, FeatureStore(None).features(src, tiny, batch_size=7))
    del store
    assert path.exists() and not list(tmp_path.glob(".*tmp*"))
    for damage in ("truncate", "rows"):
        blob = path.read_bytes()
        path.unlink()   # a new inode: earlier memory maps of the file stay valid
        if damage == "truncate":
            path.write_bytes(blob[:200])
        else:
            np.save(path, feats[:-1])
        again = FeatureStore(tmp_path)
        out = np.array(again.features(src, tiny, batch_size=5))
        assert again.computed == 1 and np.array_equal(out, feats)
        del again
        err = [ln for ln in capfd.readouterr().err.splitlines() if ln.strip()]
        assert len(err) == 1 and err[0].startswith("warning: feature cache") and "moved aside" in err[0]
        assert path.with_name(f"{path.stem}.bad.npy").exists()
    reread = FeatureStore(tmp_path)
    assert np.array_equal(np.asarray(reread.features(src, tiny, batch_size=5)), feats) and reread.computed == 0


@pytest.mark.parametrize("workers", [0, 2])
def test_images_of_different_sizes_come_in_order_in_runs_of_one_size(workers):
    from bench.datasets.base import ImageSource

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (s, s, 3), dtype=np.uint8) for s in (8, 8, 6, 6, 6, 8, 10)]
    src = ImageSource(name="mixed", revision="r", n=len(images), loader=lambda i: images[i])
    got = list(DataPipeline(src, batch_size=4, workers=workers))
    assert [len(r) for r, _ in got] == [2, 2, 1, 1, 1]          # batches [8 8 6 6] [6 8 10] split by size
    rows = np.concatenate([r for r, _ in got])
    np.testing.assert_array_equal(rows, np.arange(len(images)))
    for r, batch in got:
        for k, i in enumerate(r):
            np.testing.assert_array_equal(batch[k], images[i])


def test_default_workers_share_the_cores_among_torchrun_ranks(monkeypatch):
    monkeypatch.setattr(pipeline, "usable_cores", lambda: 16)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert check_workers(None) == 16
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert check_workers(None) == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "32")
    assert check_workers(None) == 1
