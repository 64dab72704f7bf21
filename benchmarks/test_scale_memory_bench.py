"""Peak memory is flat in the dataset size: ``synth-scale:N`` (images rendered on demand) through
the pipeline (worker processes) into the FeatureStore's memory-mapped file, then FD and DNA
(first half vs second half) and k-means on the stored features, in a fresh process per N.
Reported: peak RSS of the main process after each step and the largest worker's, for N =
``BENCH_SCALE_SMALL`` (20,000) and ``BENCH_SCALE_LARGE`` (200,000). Extraction must stay within
10 %; FD (which streams the store a chunk of rows at a time) and DNA (which streams activations)
within 10 % plus the pages of the memory-mapped feature file they read (N·D·4 bytes, reported as
``features_mb``: file-backed, reclaimable); k-means holds that (N, D) float32 matrix, which is the
method's own need, not the pipeline's. Features: ``pixels`` at 8×8 (192-D), so the run fits in
minutes on two shared cores; the pipeline and the store do not depend on the extractor.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

SMALL = int(os.environ.get("BENCH_SCALE_SMALL", "20000"))
LARGE = int(os.environ.get("BENCH_SCALE_LARGE", "200000"))

SCRIPT = textwrap.dedent("""
    import json, resource, sys, tempfile, time
    import numpy as np
    from bench.api import DataView
    from bench.baselines import FrechetDistance
    from bench.datasets import resolve
    from bench.extractors.pixels import PixelsExtractor
    from bench.features import FeatureStore
    from bench.kmeans import lloyd
    from bench_dna.plugin import DNAComparator
    peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    n = int(sys.argv[1])
    src = resolve(f"synth-scale:{n}").load(seed=0)
    ext = PixelsExtractor(size=8).configure(workers=2)
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        store = FeatureStore(d)
        feats = store.features(src, ext, batch_size=256)
        t1 = time.perf_counter()
        rss = {"extract": peak()}
        view = DataView(src, ext, store, batch_size=256)
        a, b = view.subset(np.arange(n // 2)), view.subset(np.arange(n // 2, n))
        fd = FrechetDistance().compare(a, b).score
        rss["fd"] = peak()
        t2 = time.perf_counter()
        emd = DNAComparator(range_images=256).compare(a, b).score   # the quick preset: one pass
        t3 = time.perf_counter()
        rss["dna"] = peak()
        fit = lloyd(np.asarray(feats), 12, niter=5, seed=0)
        rss["kmeans"] = peak()
        workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps({"n": n, "extract_s": t1 - t0, "dna_s": t3 - t2, "fd": fd, "dna": emd,
                      **{f"rss_{k}_mb": v for k, v in rss.items()}, "rss_worker_max_mb": workers / 1024,
                      "features_mb": feats.shape[0] * feats.shape[1] * 4 / 2**20}))
""")


def _run(n: int) -> dict:
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(n)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.benchmark(group="memory")
def test_peak_rss_is_flat_in_dataset_size(benchmark):
    small = _run(SMALL)
    large = benchmark.pedantic(lambda: _run(LARGE), rounds=1, iterations=1)
    benchmark.extra_info.update(small=small, large=large)
    print(f"\nsmall {json.dumps(small)}\nlarge {json.dumps(large)}")
    assert large["rss_extract_mb"] <= 1.10 * small["rss_extract_mb"]
    assert large["rss_worker_max_mb"] <= 1.10 * small["rss_worker_max_mb"]
    # FD, DNA and k-means: flat apart from the pages of the feature file they read
    for step in ("fd", "dna", "kmeans"):
        assert large[f"rss_{step}_mb"] - large["features_mb"] <= 1.10 * small[f"rss_{step}_mb"], step
