"""``bench duplicates`` against imagededup's PHash and the reduced-scale decode limit (issue 29).

Files: ``BENCH_DUP_N`` (default 20,000) JPEGs of 500×375 (``benchmarks/jpeg_folder.py``'s images,
written once under ``BENCH_DUP_ALL``, default /tmp/dupbench/all, and linked into the test folder)
of which 500 are planted copies of distinct originals, 100 per kind: an exact copy of the file,
JPEG quality 50, a 2-px shift, brightness +10 %, a 95 % centre crop resized back (the kinds of
``bench.datasets.neardup``). Same run, same files, back to back per round (``BENCH_ROUNDS``, 2):

* decode limit: every file opened and decoded at reduced scale (``Image.draft`` to ≥ 32 px, as the
  verb does), converted to RGB, in 2 processes (a ``multiprocessing.Pool``), nothing else; measured
  before and after each verb run (the cores are shared with other work) and compared with their mean;
* imagededup 0.3.3 ``PHash().encode_images`` + ``find_duplicates(max_distance_threshold=10)`` with
  its default workers (all cores), in the first ``BENCH_IMAGEDEDUP_ROUNDS`` (1) rounds;
* ``bench duplicates DIR --method phash`` and ``--method wavelet``, in-process through the CLI
  (listing, decoding, hashing, search, CSV, report), 2 decoding workers.

Precision and recall on the planted pairs for all three. ``test_wavelet_ivf_against_exact``: the
wavelet pairs of the IVF search against an exact flat search on the same codes.

``test_scale`` (``BENCH_DUP_SCALE``, default "10000,100000" images, each a folder of links to the
first originals plus the 500 planted): each run in a fresh process; wall time of the verb per
image and the peak RSS of that process (its VmHWM), less the code matrix it holds (N × 3,072 B for wavelet,
N × 8 B for phash). ``test_report`` prints everything.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import pytest

from benchmarks.jpeg_folder import CLASSES, make_folder

N = int(os.environ.get("BENCH_DUP_N", "20000"))
ALL = Path(os.environ.get("BENCH_DUP_ALL", "/tmp/dupbench/all"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "2"))
IMAGEDEDUP_ROUNDS = int(os.environ.get("BENCH_IMAGEDEDUP_ROUNDS", "1"))
SCALE = [int(s) for s in os.environ.get("BENCH_DUP_SCALE", "10000,100000").split(",") if s]
PER_KIND = 100
KINDS = ("exact", "jpeg50", "shift2", "brightness10", "crop95")
PROCS = 2
RESULTS: dict[str, object] = {}


def _original(i: int) -> Path:
    return ALL / f"c{i % CLASSES:02d}" / f"{i:07d}.jpg"


def build_folder(n_total: int) -> tuple[Path, set[tuple[str, str]]]:
    """``n_total`` JPEGs under /tmp/dupbench/nN: links to the first originals, and 500 planted copies
    (written once). Returns the folder and the planted pairs as relative paths (sorted tuples)."""
    from PIL import Image

    from bench.datasets.neardup import perturb

    n_orig = n_total - PER_KIND * len(KINDS)
    make_folder(ALL, n_orig, procs=PROCS)
    root = ALL.parent / f"n{n_total}"
    truth = ALL.parent / f"n{n_total}.planted.json"
    if truth.exists():
        return root, {tuple(p) for p in json.loads(truth.read_text())}
    shutil.rmtree(root, ignore_errors=True)
    for c in range(CLASSES):
        (root / f"c{c:02d}").mkdir(parents=True)
    for i in range(n_orig):
        os.symlink(_original(i), root / _original(i).relative_to(ALL))
    (root / "planted").mkdir()
    chosen = np.random.default_rng(29).choice(n_orig, size=PER_KIND * len(KINDS), replace=False)
    pairs = []
    for k, i in enumerate(chosen):
        kind = KINDS[k // PER_KIND]
        copy = root / "planted" / f"{kind}-{k:04d}.jpg"
        if kind == "exact":
            shutil.copyfile(_original(int(i)), copy)
        else:
            with Image.open(_original(int(i))) as im:
                pixels = np.asarray(im.convert("RGB"))
            Image.fromarray(perturb(pixels, kind)).save(copy, format="JPEG", quality=90)
        pairs.append(tuple(sorted((str(_original(int(i)).relative_to(ALL)), str(copy.relative_to(root))))))
    truth.write_text(json.dumps(pairs))
    return root, set(pairs)


def _reduced_decode(path: str) -> int:
    from PIL import Image

    with Image.open(path) as im:
        im.draft("RGB", (32, 32))
        return im.convert("RGB").size[0]


def decode_limit(paths: list[str]) -> float:
    with Pool(PROCS) as pool:
        pool.map(_reduced_decode, paths[:64])
        t0 = time.perf_counter()
        pool.map(_reduced_decode, paths, chunksize=64)
        return len(paths) / (time.perf_counter() - t0)


def scores(found: set, planted: set) -> dict[str, float]:
    hit = len(found & planted)
    return {"precision": hit / max(1, len(found)), "recall": hit / len(planted), "pairs": len(found)}


def imagededup_run(root: Path, planted: set) -> dict:
    from imagededup.methods import PHash

    ph = PHash(verbose=False)
    t0 = time.perf_counter()
    encodings = ph.encode_images(str(root), recursive=True)
    dups = ph.find_duplicates(encoding_map=encodings, max_distance_threshold=10)
    seconds = time.perf_counter() - t0
    found = {tuple(sorted((a, b))) for a, others in dups.items() for b in others}
    return {"seconds": seconds, "rate": len(encodings) / seconds, **scores(found, planted)}


def bench_run(root: Path, method: str, out: Path, planted: set, n: int) -> dict:
    from bench.cli import main

    t0 = time.perf_counter()
    assert main(["duplicates", str(root), "--method", method, "--out", str(out), "--workers", str(PROCS)]) == 0
    seconds = time.perf_counter() - t0
    with open(out / "duplicates.csv", newline="") as fh:
        rows = list(csv.reader(fh))[1:]
    found = {tuple(sorted((os.path.relpath(a, root), os.path.relpath(b, root)))) for a, b, _, _ in rows}
    return {"seconds": seconds, "rate": n / seconds, **scores(found, planted)}


@pytest.fixture(scope="module")
def folder():
    return build_folder(N)


@pytest.mark.benchmark(group="duplicates")
def test_throughput(benchmark, folder, tmp_path):
    root, planted = folder
    paths = sorted(str(p) for p in root.rglob("*.jpg"))
    assert len(paths) == N
    rounds: list[dict] = []

    def one_round():
        # the cores are shared: each verb run sits between two decode-limit runs and is compared with
        # their mean; imagededup (several times slower) runs in the first IMAGEDEDUP_ROUNDS rounds
        r = {"load": os.getloadavg()[0], "decodes": [decode_limit(paths)]}
        for method in ("phash", "wavelet"):
            r[method] = bench_run(root, method, tmp_path / method, planted, N)
            r["decodes"].append(decode_limit(paths))
            r[method]["decode"] = float(np.mean(r["decodes"][-2:]))
        if len(rounds) < IMAGEDEDUP_ROUNDS:
            r["imagededup"] = imagededup_run(root, planted)
        rounds.append(r)

    benchmark.pedantic(one_round, rounds=ROUNDS, iterations=1)
    RESULTS["throughput"] = rounds
    benchmark.extra_info.update(images=N, rounds=rounds)


def test_wavelet_ivf_against_exact(folder):
    from bench.datasets.real import folder_source
    from bench.duplicates import NEIGHBOURS_WITHIN, Side, find_pairs, hash_sides

    root, _ = folder
    codes = hash_sides([Side("A", str(root), folder_source(root))], "wavelet", workers=PROCS)
    exact = find_pairs(codes, "wavelet", n_neighbours=NEIGHBOURS_WITHIN, exact_max=10**9)
    ivf = find_pairs(codes, "wavelet", n_neighbours=NEIGHBOURS_WITHIN)
    a, b = set(map(tuple, exact.pairs.tolist())), set(map(tuple, ivf.pairs.tolist()))
    RESULTS["ivf"] = {"exact_pairs": len(a), "ivf_pairs": len(b), "recall": len(a & b) / max(1, len(a)),
                      "precision": len(a & b) / max(1, len(b)), "exact_s": exact.seconds, "ivf_s": ivf.seconds,
                      "search": ivf.search}


RUNNER = """
import json, sys, time
import bench.duplicates  # imports (torch, faiss) outside the timing, as in the in-process runs
from bench.cli import main
t0 = time.perf_counter()
code = main(sys.argv[1:])
seconds = time.perf_counter() - t0
# VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec, so it would report the forking pytest's size
hwm = int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0])
print(json.dumps({"code": code, "seconds": seconds, "rss_kb": hwm}))
"""


@pytest.mark.parametrize("method", ["wavelet", "phash"])
@pytest.mark.parametrize("n", SCALE)
def test_scale(n, method, tmp_path):
    root, planted = build_folder(n)
    argv = ["duplicates", str(root), "--method", method, "--out", str(tmp_path), "--workers", str(PROCS)]
    proc = subprocess.run([sys.executable, "-c", RUNNER, *argv], capture_output=True, text=True, check=True)
    run = json.loads(proc.stdout.strip().splitlines()[-1])
    assert run["code"] == 0
    with open(tmp_path / "duplicates.csv", newline="") as fh:
        found = {tuple(sorted((os.path.relpath(a, root), os.path.relpath(b, root))))
                 for a, b, _, _ in list(csv.reader(fh))[1:]}
    code_bytes = n * (3072 if method == "wavelet" else 8)
    RESULTS.setdefault("scale", {})[(method, n)] = {
        **run, "ms_per_image": 1e3 * run["seconds"] / n, "rss_mb": run["rss_kb"] / 1024,
        "rss_less_codes_mb": (run["rss_kb"] * 1024 - code_bytes) / 2**20, "codes_mb": code_bytes / 2**20,
        "load": os.getloadavg()[0], **scores(found, planted)}


def test_report():
    rounds = RESULTS.get("throughput", [])
    idd = next((r["imagededup"] for r in rounds if "imagededup" in r), None)
    if idd:
        print(f"\n{N} JPEGs 500x375: imagededup PHash {idd['rate']:.0f} img/s (P {idd['precision']:.3f} "
              f"R {idd['recall']:.3f}, {idd['pairs']} pairs)")
    for k, r in enumerate(rounds):
        print(f"round {k} (load average {r['load']:.1f}): reduced-scale decode limit "
              f"{', '.join(f'{d:.0f}' for d in r['decodes'])} img/s ({PROCS} processes)")
        for m in ("phash", "wavelet"):
            b = r[m]
            vs = f"{b['rate'] / idd['rate']:.2f}x imagededup, " if idd else ""
            print(f"  bench duplicates --method {m}: {b['rate']:.0f} img/s = {vs}{b['rate'] / b['decode']:.2f}x the "
                  f"decode limit around it ({b['decode']:.0f}); P {b['precision']:.3f} R {b['recall']:.3f} "
                  f"({b['pairs']} pairs)")
    for m in ("phash", "wavelet"):
        if rounds:
            vs = f", {np.median([r[m]['rate'] for r in rounds]) / idd['rate']:.2f}x imagededup" if idd else ""
            print(f"median over rounds, {m}: {np.median([r[m]['rate'] / r[m]['decode'] for r in rounds]):.2f}x "
                  f"decode limit{vs}")
    if "ivf" in RESULTS:
        v = RESULTS["ivf"]
        print(f"\nwavelet search, {N} images: exact {v['exact_s']:.1f} s ({v['exact_pairs']} pairs), {v['search']} "
              f"{v['ivf_s']:.1f} s ({v['ivf_pairs']} pairs): recall {v['recall']:.4f}, precision {v['precision']:.4f}")
    for (m, n), s in sorted(RESULTS.get("scale", {}).items()):
        print(f"\nscale {m} n={n}: {s['seconds']:.1f} s, {s['ms_per_image']:.3f} ms/image, peak RSS "
              f"{s['rss_mb']:.0f} MB (less the {s['codes_mb']:.0f} MB code matrix: {s['rss_less_codes_mb']:.0f} MB); "
              f"P {s['precision']:.3f} R {s['recall']:.3f} "
              f"(load average {s['load']:.1f})")
