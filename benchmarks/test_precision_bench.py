"""How far bf16 extraction moves what bench reports (issue #14): ``synth-passnet`` through the
offline ``tiny-vit``, ``bench run --precision fp32`` vs ``--precision bf16`` (autocast on the
device the run uses, here the CPU), seed 0, no feature cache. Reported: the cosine of each image's
pooled bf16 features to its fp32 features, kmeans NMI, and fd's and DNA's between / null scores.
The last test prints the table (the README quotes it).
"""

from __future__ import annotations

import numpy as np
import pytest

from bench import plugins
from bench.cli import main
from bench.datasets import load_source
from bench.extractors.timm_models import TinyViTExtractor
from bench.features import FeatureStore
from bench.runstore import RunStore

PRECISIONS = ("fp32", "bf16")
ROWS = (("kmeans", "nmi"), ("fd", "score_between"), ("fd", "score_null"), ("dna", "score_between"),
        ("dna", "score_null"))
RESULTS: dict[str, dict[str, float]] = {}


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.benchmark(group="precision")
def test_run(benchmark, precision, tmp_path):
    out = tmp_path / precision
    args = ["run", "--methods", "kmeans,fd,dna", "--datasets", "synth-passnet", "--precision", precision,
            "--out", str(out), "--no-cache", "--no-progress"]
    code = benchmark.pedantic(main, args=(args,), rounds=1, iterations=1)
    assert code == 0
    recs = {r.method.name: r for r in RunStore(out).load().records}
    RESULTS[precision] = {f"{m} {k}": recs[m].metrics[k].value for m, k in ROWS}
    benchmark.extra_info.update(RESULTS[precision])


def test_feature_cosine_and_report():
    source = load_source(plugins.load().datasets.get("synth-passnet"))
    feats = {}
    for precision in PRECISIONS:
        ext = TinyViTExtractor().configure(precision=precision)
        feats[precision] = np.asarray(FeatureStore(None).features(source, ext, batch_size=64), dtype=np.float64)
    a, b = feats["fp32"], feats["bf16"]
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    print(f"\nbf16 vs fp32 on synth-passnet ({len(a)} images, tiny-vit, CPU autocast)")
    print(f"pooled-feature cosine: min {cos.min():.5f}, mean {cos.mean():.5f}")
    print(f"{'':22}{'fp32':>10}{'bf16':>10}{'rel. change':>13}")
    for name in RESULTS["fp32"]:
        x, y = RESULTS["fp32"][name], RESULTS["bf16"][name]
        print(f"{name:22}{x:>10.4f}{y:>10.4f}{(y - x) / abs(x):>13.2%}")
    assert cos.min() > 0.99
