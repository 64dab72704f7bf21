"""DNA histogram filling (ours: one fused numba pass or one torch index_add per layer) vs vdna's
per-channel ``torch.histc`` loop.

Same batches, same ranges, same bins (1000), on CPU: ViT-B/16-sized taps (768 neurons, 197
tokens, batches of 32 images). The counts of every variant are checked equal to the loop's
before timing. The last test builds the DNA of 10,000 images through a streamed source and
reports peak memory against a 1,000-image build (bounded memory: activations are never held).
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from bench_dna.histogram import Ranges, histogram_fast, histogram_histc

C, T, B, BINS, LAYERS = 768, 197, 32, 1000, 2
RESULTS: dict[str, float] = {}


@pytest.fixture(scope="module")
def batches():
    g = torch.Generator().manual_seed(0)
    acts = [torch.randn(B, C, T, generator=g) * (1 + i) for i in range(LAYERS)]
    lo = np.array([float(a.amin()) for a in acts])
    hi = np.array([float(a.amax()) for a in acts])
    ranges = Ranges({f"l{i}": np.full(C, lo[i]) for i in range(LAYERS)},
                    {f"l{i}": np.full(C, hi[i]) for i in range(LAYERS)}, mode="centre")
    return acts, ranges


def _fast(acts, ranges, dtype=torch.float64, backend="auto"):
    return [histogram_fast(x, *ranges.norm(f"l{i}"), BINS, dtype=dtype, backend=backend)[0]
            for i, x in enumerate(acts)]


def _histc(acts, ranges):
    return [histogram_histc(x, *ranges.norm(f"l{i}"), BINS) for i, x in enumerate(acts)]


def test_same_counts(batches):
    acts, ranges = batches
    slow = _histc(acts, ranges)
    for backend in ("auto", "torch"):
        assert all(torch.equal(f, s) for f, s in zip(_fast(acts, ranges, backend=backend), slow))


@pytest.mark.benchmark(group="dna-histogram")
def test_fast_histogram(benchmark, batches):
    _fast(*batches)  # numba compiles (or loads its cache) on the first call
    benchmark.pedantic(_fast, args=batches, rounds=5, iterations=1)
    RESULTS["fast"] = benchmark.stats.stats.min


@pytest.mark.benchmark(group="dna-histogram")
def test_fast_histogram_torch_backend(benchmark, batches):
    benchmark.pedantic(_fast, args=(*batches, torch.float64, "torch"), rounds=5, iterations=1)
    RESULTS["torch"] = benchmark.stats.stats.min


@pytest.mark.benchmark(group="dna-histogram")
def test_fast_histogram_float32(benchmark, batches):
    benchmark.pedantic(_fast, args=(*batches, torch.float32, "torch"), rounds=5, iterations=1)
    RESULTS["fast32"] = benchmark.stats.stats.min


@pytest.mark.benchmark(group="dna-histogram")
def test_histc_loop(benchmark, batches):
    benchmark.pedantic(_histc, args=batches, rounds=2, iterations=1)
    RESULTS["histc"] = benchmark.stats.stats.min


def test_report_ratio():
    histc = RESULTS["histc"]
    speedup = histc / RESULTS["fast"]
    print(f"\nDNA histogram fill, {LAYERS}×({B}×{C}×{T}) per call, {torch.get_num_threads()} threads: "
          f"default {RESULTS['fast'] * 1e3:.0f} ms ({speedup:.1f}x), torch index_add {RESULTS['torch'] * 1e3:.0f} ms "
          f"({histc / RESULTS['torch']:.1f}x), torch float32 {RESULTS['fast32'] * 1e3:.0f} ms "
          f"({histc / RESULTS['fast32']:.1f}x), per-channel histc loop {histc * 1e3:.0f} ms")
    assert speedup >= 10


STREAM = textwrap.dedent('''
    import json, resource, sys, time
    import numpy as np, torch
    from bench.api import DataView
    from bench.datasets.base import ImageSource
    from bench.extractors.base import Extractor
    from bench.features import FeatureStore
    from bench_dna import build_from_view, compute_ranges
    from bench_dna.storage import saved_size

    class Net(Extractor):
        name = "bench-tokens"
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.model = torch.nn.ModuleList([torch.nn.Linear(48, 192)] +
                                             [torch.nn.Linear(192, 192) for _ in range(3)]).eval()
        def preprocess(self, images):
            return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255)
        def forward(self, batch, layers):
            t = torch.nn.functional.unfold(batch, 4, stride=4).transpose(1, 2)  # 16x16 -> 16 tokens
            t = torch.cat([t.mean(1, keepdim=True), t], 1)
            out = {}
            for i, m in enumerate(self.model):
                t = torch.nn.functional.gelu(m(t)) if i else m(t)
                out[f"block{i}"] = t.transpose(1, 2)
            return {k: out[k] for k in layers}
        @property
        def layer_names(self):
            return [f"block{i}" for i in range(4)]
        def cache_key(self):
            return {"name": self.name}

    n = int(sys.argv[1])
    def load(i):
        return np.random.default_rng(i).integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
    src = ImageSource(name="stream", revision="1", n=n, loader=load)
    view = DataView(src, Net(), FeatureStore(None), batch_size=64)
    layers = view.extractor.layer_names
    t0 = time.perf_counter()
    ranges = compute_ranges(view, layers)
    dna = build_from_view(view, layers=layers, ranges=ranges, kinds=("histogram", "layer-gaussian")).histogram()
    elapsed = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"n": n, "seconds": elapsed, "peak_rss_mb": peak, "dna_mb": saved_size(dna) / 1e6}))
''')


def _stream(n: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(os.cpu_count() or 1))
    out = subprocess.run([sys.executable, "-c", STREAM, str(n)], capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_streaming_memory_is_bounded():
    small, large = _stream(1_000), _stream(10_000)
    print(f"\nDNA (ranges pass + histogram/covariance pass, 4×192 neurons, 17 tokens) of 1k images: peak RSS "
          f"{small['peak_rss_mb']:.0f} MB ({small['seconds']:.1f} s); of 10k images: peak RSS "
          f"{large['peak_rss_mb']:.0f} MB ({large['seconds']:.1f} s); DNA file {large['dna_mb']:.2f} MB")
    assert large["peak_rss_mb"] - small["peak_rss_mb"] < 50  # nothing grows with N
