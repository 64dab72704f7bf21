"""Extraction from a folder of real-size JPEGs against its two limits, same files, same run.

A folder of ``BENCH_JPEG_N`` (default 4,000; the closing measurement used 20,000) 500×375
JPEGs of ~64 KB (``benchmarks/jpeg_folder.py``, made once under ``BENCH_JPEG_DIR``, default
/tmp/jpeg20k). Three numbers per model (tiny-vit; deit-s with random weights loaded from a file):

* decode limit: ``read_image`` (decode, resize, crop, as the issue measured it) over the files in
  as many processes as there are cores (2 here), nothing else running;
* forward limit: ``model(x)`` on already-preprocessed batches, torch's threads on every core;
* harness: the ``bench run`` path (registry factory → ``configure(workers=cores)`` →
  ``FeatureStore.features``): decode in worker processes, one exact resize, forward, pooling.

Target: harness ≥ 0.8 × min(decode, forward). The machine is shared, so each round measures the
three back to back and the ratio is taken per round (median over rounds); the load average is
recorded beside it. ``test_report`` prints everything.
"""

from __future__ import annotations

import os
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from bench import plugins
from bench.datasets.real import imagefolder_source, read_image
from bench.features import FeatureStore
from bench.pipeline import default_workers
from benchmarks.jpeg_folder import make_folder

N = int(os.environ.get("BENCH_JPEG_N", "4000"))
ROOT = Path(os.environ.get("BENCH_JPEG_DIR", "/tmp/jpeg20k"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "2"))
BATCH = 64
RESULTS: dict[str, list[dict]] = {}


@pytest.fixture(scope="module")
def source():
    make_folder(ROOT, N, procs=default_workers())
    src = imagefolder_source(ROOT)
    return src.subset(np.arange(min(N, src.n)))


@pytest.fixture(scope="module")
def deit_weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "deit_s_random.pth"
    torch.save(timm.create_model("deit_small_patch16_224", pretrained=False, num_classes=0).state_dict(), path)
    return str(path)


def _decode(path):
    return read_image(path).shape


def decode_rate(paths: list[str], procs: int) -> float:
    with Pool(procs) as pool:
        pool.map(_decode, paths[:procs * 2])
        t0 = time.perf_counter()
        pool.map(_decode, paths, chunksize=16)
        return len(paths) / (time.perf_counter() - t0)


def forward_rate(ext, n: int) -> float:
    """Images/s of the bare model on preprocessed batches (``n`` images, at least 2 batches)."""
    _, h, w = ext.transform.input_size
    x = ext.transform.normalise(torch.randint(0, 256, (BATCH, 3, h, w), dtype=torch.uint8))
    steps = max(2, n // BATCH)
    with torch.inference_mode():
        ext.model(x)
        t0 = time.perf_counter()
        for _ in range(steps):
            ext.model(x)
    return steps * BATCH / (time.perf_counter() - t0)


def harness_rate(ext, source) -> float:
    t0 = time.perf_counter()
    feats = FeatureStore(None).features(source, ext, batch_size=BATCH)
    rate = source.n / (time.perf_counter() - t0)
    assert feats.shape[0] == source.n and np.isfinite(np.asarray(feats[:8])).all()
    return rate


def _measure(benchmark, name, ext, source, n_forward):
    paths = source.paths
    rounds: list[dict] = []

    def one_round():
        load = os.getloadavg()[0]
        d = decode_rate(paths, default_workers())
        f = forward_rate(ext, n_forward)
        h = harness_rate(ext, source)
        rounds.append({"decode": d, "forward": f, "harness": h, "ratio": h / min(d, f), "load": load})

    benchmark.pedantic(one_round, rounds=ROUNDS, iterations=1)
    RESULTS[name] = rounds
    med = float(np.median([r["ratio"] for r in rounds]))
    benchmark.extra_info.update(images=source.n, rounds=rounds, ratio_median=med)
    return med


@pytest.mark.benchmark(group="pipeline")
def test_tiny_vit_from_jpegs(benchmark, source):
    ext = plugins.load().extractors.get("tiny-vit")().configure(workers=default_workers())
    harness_rate(ext, source.subset(np.arange(BATCH)))  # warm-up
    _measure(benchmark, "tiny-vit", ext, source, n_forward=4096)


@pytest.mark.benchmark(group="pipeline")
def test_deit_s_from_jpegs(benchmark, source, deit_weights):
    ext = plugins.load().extractors.get("deit-s")(weights=deit_weights).configure(workers=default_workers())
    sub = source.subset(np.arange(min(source.n, int(os.environ.get("BENCH_DEIT_N", "512")))))
    harness_rate(ext, sub.subset(np.arange(BATCH)))
    _measure(benchmark, "deit-s", ext, sub, n_forward=256)


def test_report():
    for name, rounds in RESULTS.items():
        for r in rounds:
            print(f"\n{name}: decode limit {r['decode']:.0f} img/s ({default_workers()} processes), forward limit "
                  f"{r['forward']:.0f} img/s, harness {r['harness']:.0f} img/s -> ratio {r['ratio']:.3f} "
                  f"(load average {r['load']:.1f})")
