"""Feature extraction on 1 process against 2 torchrun processes (gloo, CPU) on the same data.

One process uses torch's default intra-op threads (all cores); torchrun gives each of its
processes OMP_NUM_THREADS=1, as it does for users. Reports the speed-up and per-rank peak RSS.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("dist_extract_worker.py")
DATASET, BATCH = "synth-passnet", 64
RESULTS: dict[int, list[dict]] = {}


def _extract(tmp: Path, nproc: int) -> list[dict]:
    store = tmp / f"store{nproc}"
    prefix = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                  "--nproc-per-node", str(nproc)]
    out = subprocess.run([*prefix, str(WORKER), str(store), DATASET, str(BATCH)], capture_output=True, text=True,
                         check=True)
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


@pytest.mark.parametrize("nproc", [1, 2])
def test_sharded_extraction(benchmark, tmp_path, nproc):
    ranks = benchmark.pedantic(_extract, args=(tmp_path, nproc), rounds=1, iterations=1)
    RESULTS[nproc] = ranks
    benchmark.extra_info.update(ranks=ranks)
    assert len(ranks) == nproc and all(r["n"] == 1200 for r in ranks)


def test_report_speedup():
    one, two = RESULTS[1][0]["seconds"], max(r["seconds"] for r in RESULTS[2])
    print(f"\nextraction of {DATASET} (tiny-vit): 1 process {one:.1f}s, 2 processes {two:.1f}s, "
          f"speed-up {one / two:.2f}x; peak RSS per rank: 1 proc {RESULTS[1][0]['peak_rss_mb']:.0f} MB, "
          f"2 procs {', '.join(format(r['peak_rss_mb'], '.0f') for r in RESULTS[2])} MB")
