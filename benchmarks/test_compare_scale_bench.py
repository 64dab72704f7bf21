"""Issue 26's "Done when" at scale: the null and the interval of ``bench compare`` from block states.

* Feature level: fd and dna on N vs N rows of 384-D features (``BENCH_SCALE_ROWS``, default
  1,000,000; the small size ``BENCH_SCALE_ROWS_SMALL``, default 100,000, for the flat-memory
  check), 200 block permutations and 100 block-bootstrap resamples, each size and comparator in a
  fresh process so its peak RSS (``ru_maxrss``) is its own. FD: a float32 feature file read a chunk
  of rows at a time with ``pread`` (the feature store's memmap would add the file's pages, which
  are file-backed and reclaimable, to RSS) through ``gaussian_block_sums`` and
  ``FrechetDistance.finalize``, blocks as ``bench compare`` sizes them. DNA: per-block per-neuron
  1000-bin histograms of synthetic activations (i.i.d. Gaussian rows, so a block's rows are drawn
  where they are binned, over ranges fixed before binning), scored by ``DNAComparator.finalize``.
* End to end: two folders of Fashion-MNIST test images as JPEGs, ``bench compare A B --extractor
  efficientnet-lite0 --methods fd,dna,multicut,wavelet --no-cache`` at the defaults vs
  ``--permutations 1 --bootstrap 0`` (``BENCH_E2E_IMAGES`` per folder, default 270).

Numbers and how they were read: benchmarks/RESULTS_issue26.md.
"""

from __future__ import annotations

import glob
import json
import os
import resource
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

ROWS = int(os.environ.get("BENCH_SCALE_ROWS", "1000000"))
ROWS_SMALL = int(os.environ.get("BENCH_SCALE_ROWS_SMALL", "100000"))
DIM = int(os.environ.get("BENCH_SCALE_DIM", "384"))
PERMS, BOOT = 200, 100
E2E_IMAGES = int(os.environ.get("BENCH_E2E_IMAGES", "270"))

SCRIPT = textwrap.dedent("""
    import json, os, resource, sys, tempfile, time
    import numpy as np
    from bench import statistics as S
    from bench.baselines import FrechetDistance, gaussian_block_sums
    from bench_dna.plugin import DNAComparator

    which, n, d, perms, boot = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    cpu = lambda: sum(resource.getrusage(resource.RUSAGE_SELF)[:2])   # CPU seconds: less load-bound than wall
    out = {"which": which, "n_per_side": n, "dim": d, "permutations": perms, "bootstrap": boot,
           "load_avg_start": os.getloadavg()}
    rng = np.random.default_rng(0)
    shift = np.full(d, 0.02)

    class Rows:
        '''Rows of a float32 (N, D) file read with pread: no mapped pages in RSS.'''
        def __init__(self, path, n, d):
            self.fd, self.n, self.d = os.open(path, os.O_RDONLY), n, d
        def __len__(self):
            return self.n
        def __getitem__(self, s):
            if not isinstance(s, slice):   # positions: one pread per run of consecutive rows
                s = np.asarray(s)
                cuts = np.flatnonzero(np.diff(s) != 1) + 1
                return np.concatenate([self[int(r[0]):int(r[-1]) + 1] for r in np.split(s, cuts)])
            start, stop = max(0, s.start or 0), min(self.n, self.n if s.stop is None else s.stop)
            buf = os.pread(self.fd, (stop - start) * self.d * 4, start * self.d * 4)
            return np.frombuffer(buf, dtype=np.float32).reshape(stop - start, self.d)

    if which == "fd":
        tmp = tempfile.NamedTemporaryFile(suffix=".f32", dir=os.environ.get("BENCH_SCALE_TMP"), delete=False)
        try:
            t = time.perf_counter()
            step = 50_000
            for s in range(0, 2 * n, step):
                rows = rng.standard_normal((min(step, 2 * n - s), d), dtype=np.float32)
                if s >= n:
                    rows += shift.astype(np.float32)
                tmp.write(rows.tobytes())
            tmp.close()
            out["write_s"] = time.perf_counter() - t
            rss0 = peak()
            t0, c0 = time.perf_counter(), cpu()
            blocks = S.make_blocks(n, n, S.block_size(n, n, 8 * (d * d + d + 1)), seed=0)
            states = gaussian_block_sums(Rows(tmp.name, 2 * n, d), blocks.of, blocks.count)
            fdc = FrechetDistance()
            draws = S.AdditiveDraws(blocks, states, lambda a, b: fdc.finalize(a, b, context={}))
        finally:
            os.unlink(tmp.name)
    else:
        bins = 1000
        dna = DNAComparator(bins=bins)
        context = {"layers": ["pooled"], "neurons": {"pooled": d}, "selected": None}
        rss0 = peak()
        t0, c0 = time.perf_counter(), cpu()
        blocks = S.make_blocks(n, n, S.block_size(n, n, dna.state_bytes(None, context)), seed=0)
        lo, hi = -4.8, 4.8                      # fixed before binning (A's ±4σ widened ×1.2)
        counts = np.zeros((blocks.count, d, bins), dtype=np.int32)   # as DNAComparator.block_states
        offset = (np.arange(d) * bins)[None, :]
        for k in range(blocks.count):
            # a block's rows drawn and binned a batch at a time, as DNABuilder bins them (a whole block
            # of 11,628 rows at once would add ~120 MB of temporaries at 1M that DNA itself never holds)
            for done in range(0, int(blocks.size[k]), 4096):
                x = rng.standard_normal((min(4096, int(blocks.size[k]) - done), d), dtype=np.float32)
                if blocks.side[k] == 1:
                    x += shift.astype(np.float32)
                b = np.clip(((x - lo) * (bins / (hi - lo))).astype(np.int64), 0, bins - 1)
                counts[k] += np.bincount((b + offset).ravel(), minlength=d * bins).reshape(d, bins).astype(np.int32)
        draws = S.AdditiveDraws(blocks, {"counts:pooled": counts}, lambda a, b: dna.finalize(a, b, context=context),
                                own=True)   # as Comparator.draws: the int32 counts become float32 in place
        del counts
    t1, c1 = time.perf_counter(), cpu()
    out["rss_before_states_mb"] = rss0
    out["rss_states_mb"] = peak()
    out["states_s"], out["states_cpu_s"] = t1 - t0, c1 - c0
    out["blocks"] = blocks.describe()
    out["block_count"] = int(blocks.count)
    out["state_mb"] = sum(v.nbytes for v in draws.arrays.values()) / 2**20
    score = draws.observed()
    null = S.permutation_null(draws, perms, seed=0)
    t2 = time.perf_counter()
    b = S.bootstrap(draws, boot, seed=0)
    t3 = time.perf_counter()
    ci = S.basic_interval(score, b)
    out.update({"score": score, "p": S.p_value(score, null, 1.0), "ci": [ci.low, ci.high],
                "null_s": t2 - t1, "bootstrap_s": t3 - t2, "draws_s": t3 - t1, "total_s": t3 - t0,
                "per_draw_s": (t3 - t1) / max(1, perms + boot), "draws_cpu_s": cpu() - c1,
                "rss_peak_mb": peak(), "cpu_s": sum(resource.getrusage(resource.RUSAGE_SELF)[:2]),
                "load_avg": os.getloadavg()})
    print(json.dumps(out))
""")


def run_scale(which: str, n: int, d: int = DIM, perms: int = PERMS, boot: int = BOOT) -> dict:
    """One size of one comparator in a fresh process (its own peak RSS)."""
    res = subprocess.run([sys.executable, "-c", SCRIPT, which, str(n), str(d), str(perms), str(boot)],
                         capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(res.stderr[-3000:])
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.benchmark(group="compare-scale")
@pytest.mark.parametrize("which", ["fd", "dna"])
def test_feature_level_scale(benchmark, which):
    """N vs N rows, 200 permutations + 100 resamples: ≤ 10 min; peak RSS ≤ 4 GB and within +10 %."""
    small = run_scale(which, ROWS_SMALL)
    large = benchmark.pedantic(lambda: run_scale(which, ROWS), rounds=1, iterations=1)
    benchmark.extra_info.update(small=small, large=large)
    print(f"\n{which} small {json.dumps(small)}\n{which} large {json.dumps(large)}")
    assert large["total_s"] <= 600
    assert large["rss_peak_mb"] <= 4096
    assert large["rss_peak_mb"] <= 1.10 * small["rss_peak_mb"]


# --------------------------------------------------------------------------- end to end


def write_folders(root: Path, n: int) -> tuple[Path, Path]:
    """Two disjoint folders of ``n`` Fashion-MNIST test images each, as JPEGs (seeded choice)."""
    from PIL import Image

    from bench import plugins
    from bench.datasets import get_spec

    src = get_spec(plugins.load().datasets, "fashion-mnist-test").load(seed=0)
    pick = np.random.default_rng(26).choice(src.n, 2 * n, replace=False)
    dirs = (root / "A", root / "B")
    for side, folder in enumerate(dirs):
        folder.mkdir(parents=True, exist_ok=True)
        for j, i in enumerate(pick[side * n:(side + 1) * n]):
            Image.fromarray(np.asarray(src.array[i])).save(folder / f"{j:04d}.jpg", quality=95)
    return dirs


def compare_once(a: Path, b: Path, out: Path, extra: list[str]) -> dict:
    """Wall time of one ``bench compare`` and each comparator's timings from its record."""
    cmd = [str(Path(sys.executable).with_name("bench")), "compare", f"folder:{a}", f"folder:{b}",
           "--extractor", "efficientnet-lite0", "--methods", "fd,dna,multicut,wavelet", "--no-cache",
           "--out", str(out), "--no-progress", *extra]
    load = os.getloadavg()
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    # the command's CPU seconds (user + system): on a shared machine far steadier than its wall time
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    if res.returncode != 0:
        raise RuntimeError(res.stdout[-2000:] + res.stderr[-3000:])
    per = {}
    for path in glob.glob(str(out / "compare" / "**" / "seed0.json"), recursive=True):
        rec = json.loads(Path(path).read_text())
        per[rec["method"]["name"]] = {
            "timings_s": rec.get("timings_s"), "peak_memory_mb": rec.get("peak_memory_mb"),
            "p_value": rec.get("metrics", {}).get("p_value"),
            "score": rec.get("metrics", {}).get("score"), "null": rec.get("tables", {}).get("null"),
            "ci": rec.get("tables", {}).get("ci")}
    return {"wall_s": wall, "cpu_s": cpu, "load_avg_start": load, "load_avg_end": os.getloadavg(), "per_method": per,
            "stdout_tail": res.stdout[-1500:]}


@pytest.mark.benchmark(group="compare-e2e")
def test_end_to_end_defaults_vs_one_draw(benchmark, tmp_path):
    """Default permutations and bootstrap cost ≤ 1.5× one draw and no bootstrap (both --no-cache)."""
    a, b = write_folders(tmp_path / "images", E2E_IMAGES)
    one = compare_once(a, b, tmp_path / "one", ["--permutations", "1", "--bootstrap", "0"])
    full = benchmark.pedantic(lambda: compare_once(a, b, tmp_path / "full", []), rounds=1, iterations=1)
    ratio = full["wall_s"] / one["wall_s"]
    benchmark.extra_info.update(one=one, full=full, ratio=ratio, cpu_ratio=full["cpu_s"] / one["cpu_s"])
    print(f"\nend to end: one draw {one['wall_s']:.1f} s, defaults {full['wall_s']:.1f} s, ratio {ratio:.2f} "
          f"(CPU {one['cpu_s']:.1f} s vs {full['cpu_s']:.1f} s, ratio {full['cpu_s'] / one['cpu_s']:.2f}; "
          f"load {one['load_avg_start'][0]:.1f} → {full['load_avg_end'][0]:.1f})")
    print(json.dumps({"one": one["per_method"], "full": full["per_method"]}, indent=1, default=str))
    assert ratio <= 1.5
