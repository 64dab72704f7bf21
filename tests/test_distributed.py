"""Past one process: sharded extraction, all-reduced k-means, the torchrun launcher, grid shards.

The two-process tests start the real engine (``torch.distributed.run``) with the gloo backend
on CPU and compare with the single-process run of the same command.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sklearn.cluster import KMeans as SkKMeans

from bench import distributed
from bench.baselines import faiss_kmeans
from bench.cli import _without_launcher
from bench.features import ShardedRows
from bench.kmeans import initial_indices, lloyd
from bench.plan import shard_cells
from bench.testing import needs_gloo


@given(n=st.integers(0, 500), world=st.integers(1, 9), align=st.integers(1, 70))
def test_shard_ranges_tile_the_rows_at_batch_boundaries(n, world, align):
    bounds = [distributed.shard_range(n, r, world, align=align) for r in range(world)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    for (_, stop), (start, _) in itertools.pairwise(bounds):
        assert stop == start
    assert all(a <= b and (a % align == 0 or a == n) for a, b in bounds)


@given(n_cells=st.integers(0, 60), n=st.integers(1, 8))
def test_grid_shards_cover_every_cell_exactly_once(n_cells, n):
    cells = [(f"d{i % 3}", f"m{i % 5}", i) for i in range(n_cells)]
    covered = [c for i in range(n) for c in shard_cells(cells, (i, n))]
    assert sorted(covered) == sorted(cells)
    assert shard_cells(cells, (0, n)) == shard_cells(list(cells), (0, n))   # deterministic


@given(sizes=st.lists(st.integers(1, 9), min_size=1, max_size=4), data=st.data())
def test_sharded_rows_read_like_the_joined_array(sizes, data):
    parts = [np.random.default_rng(i).normal(size=(m, 3)).astype(np.float32) for i, m in enumerate(sizes)]
    joined = np.concatenate(parts)
    rows = ShardedRows(parts, list(np.cumsum([0, *sizes[:-1]])))
    idx = np.asarray(data.draw(st.lists(st.integers(0, len(joined) - 1), max_size=12)), dtype=np.int64)
    np.testing.assert_array_equal(rows[idx], joined[idx])
    np.testing.assert_array_equal(rows[1:], joined[1:])
    np.testing.assert_array_equal(np.asarray(rows), joined)
    assert rows.shape == joined.shape and len(rows) == len(joined)


def test_launcher_options_are_stripped_before_relaunch():
    argv = ["run", "--launcher", "torchrun", "--methods", "kmeans", "--nproc-per-node=2", "--seeds", "0,1"]
    assert _without_launcher(argv) == ["run", "--methods", "kmeans", "--seeds", "0,1"]


def test_solo_hides_the_process_group():
    with distributed.solo():
        assert not distributed.active() and distributed.context().world_size == 1
    assert distributed.context().world_size == 1   # no group in the test process either


@pytest.fixture(scope="module")
def blobs():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(12, 8)) * 5
    return (centres[rng.integers(0, 12, 2000)] + rng.normal(size=(2000, 8))).astype(np.float32)


def test_lloyd_equals_sklearn_lloyd_from_the_same_start(blobs):
    ours = lloyd(blobs, 12, niter=15, seed=4)
    ref = SkKMeans(12, init=blobs[initial_indices(len(blobs), 12, 4)], n_init=1, max_iter=15, tol=0.0,
                   algorithm="lloyd").fit(blobs)
    np.testing.assert_array_equal(ours.codes, ref.labels_)
    np.testing.assert_allclose(ours.centroids, ref.cluster_centers_, atol=1e-4)
    assert ours.inertia == pytest.approx(ref.inertia_, rel=1e-5)


def test_faiss_and_torch_backends_agree(blobs):
    codes, centroids, inertia = faiss_kmeans(blobs, 12, niter=15, seed=4)
    ours = lloyd(blobs, 12, niter=15, seed=4)
    np.testing.assert_array_equal(codes, ours.codes)
    np.testing.assert_allclose(centroids, ours.centroids, atol=1e-4)
    assert inertia == pytest.approx(ours.inertia, rel=1e-5)


def test_lloyd_starts_from_the_seeded_rows(blobs):
    full = lloyd(blobs, 12, niter=0, seed=1)
    np.testing.assert_array_equal(full.centroids, blobs[initial_indices(len(blobs), 12, 1)])


def _bench(args: list[str], cwd: Path, nproc: int | None = None, env: dict | None = None,
           timeout: int = 600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "bench", "run", *args, "--no-progress", "--device", "cpu"]  # gloo
    if nproc:
        cmd += ["--launcher", "torchrun", "--nproc-per-node", str(nproc)]
    return subprocess.run(cmd, check=False, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def _arrays(records_dir: Path, method: str) -> dict[str, np.ndarray]:
    (npz,) = records_dir.glob(f"*/*/{method}@*/*/seed0.artefacts.npz")
    return dict(np.load(npz))


@needs_gloo
def test_torchrun_run_matches_one_process_and_resumes_a_lost_shard(tmp_path):
    args = ["--methods", "kmeans,fd", "--datasets", "synth-passnet", "--limit", "300", "--batch-size", "32"]
    one = _bench([*args, "--cache-dir", "c1", "--out", "r1"], tmp_path)
    assert one.returncode == 0, one.stderr
    two = _bench([*args, "--cache-dir", "c2", "--out", "r2"], tmp_path, nproc=2)
    assert two.returncode == 0, two.stderr + two.stdout
    assert two.stdout.count("bench run") == 1   # one summary table: rank 0 speaks

    (single,) = (tmp_path / "c1").glob("*.npy")
    (manifest,) = (tmp_path / "c2").glob("*.manifest.json")
    shards = json.loads(manifest.read_text())["shards"]
    assert [(s["start"], s["stop"]) for s in shards] == [(0, 160), (160, 300)]   # batch-aligned
    sharded = np.concatenate([np.load(tmp_path / "c2" / s["file"]) for s in shards])
    np.testing.assert_array_equal(np.load(single), sharded)   # identical, not just close

    a, b = _arrays(tmp_path / "r1", "kmeans"), _arrays(tmp_path / "r2", "kmeans")
    np.testing.assert_array_equal(a["codes"], b["codes"])
    np.testing.assert_allclose(a["centroids"], b["centroids"], atol=1e-4)
    rec = {d: json.loads(next((tmp_path / d).glob("*/*/fd@*/*/seed0.json")).read_text()) for d in ("r1", "r2")}
    # the same features; FD's linear algebra may round its last digits with the threads a rank gets
    m1, m2 = rec["r1"]["metrics"], rec["r2"]["metrics"]
    assert m1.keys() == m2.keys()
    for k in m1:
        assert m1[k]["value"] == pytest.approx(m2[k]["value"], rel=1e-12), k

    # rank 1 "lost" its shard: the rerun recomputes that shard only
    shard0, shard1 = (tmp_path / "c2" / s["file"] for s in shards)
    before = shard0.stat().st_mtime_ns
    shard1.unlink()
    manifest.unlink()
    again = _bench([*args, "--cache-dir", "c2", "--out", "r3"], tmp_path, nproc=2)
    assert again.returncode == 0, again.stderr
    assert shard0.stat().st_mtime_ns == before and shard1.exists() and manifest.exists()
    np.testing.assert_array_equal(_arrays(tmp_path / "r3", "kmeans")["codes"], a["codes"])


@needs_gloo
def test_torchrun_protosim_trains_both_roles_with_ddp_and_matches_one_process(tmp_path):
    """The headline method under torchrun: its summariser and every comparator training of the
    evaluation run on both ranks (DDP); rank 0's record matches the one-process record."""
    args = ["--methods", "protosim", "--datasets", "synth-passnet", "--limit", "160", "--cache-dir", "c"]
    one = _bench([*args, "--out", "r1"], tmp_path)
    assert one.returncode == 0, one.stderr
    two = _bench([*args, "--out", "r2"], tmp_path, nproc=2, env={"BENCH_LOG": "INFO"})
    assert two.returncode == 0, two.stderr + two.stdout
    for rank in (0, 1):   # the summariser, then the comparator's null and between pairs
        assert two.stderr.count(f"rank {rank} of 2 trains rows") == 3, two.stderr
    rec = {d: json.loads(next((tmp_path / d).glob("*/*/protosim@*/*/seed0.json")).read_text()) for d in ("r1", "r2")}
    assert rec["r2"]["status"] == "ok" and set(rec["r1"]["metrics"]) == set(rec["r2"]["metrics"])
    for name, metric in rec["r1"]["metrics"].items():
        assert rec["r2"]["metrics"][name]["value"] == pytest.approx(metric["value"], rel=1e-3, abs=1e-3), name


@needs_gloo
def test_torchrun_rank0_only_failure_does_not_strand_the_other_rank(tmp_path):
    """Rank 0's evaluation fails (a one-class folder: no probe), so it skips the comparator; the
    other rank must skip the collective comparator training too instead of waiting forever."""
    from PIL import Image

    folder = tmp_path / "one-class" / "only"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(32):
        Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    run = _bench(["--methods", "protosim", "--datasets", f"imagefolder:{folder.parent}", "--preset", "quick",
                  "--set", "protosim.batch_size=16", "--out", "r", "--cache-dir", "c"], tmp_path, nproc=2, timeout=300)
    assert run.returncode == 1, run.stderr   # torchrun's own status when a rank fails …
    assert "exitcode: 2" in run.stderr, run.stderr   # … and bench's: a cell whose input was bad
    assert "<NO_OTHER_FAILURES>" in run.stderr, run.stderr   # rank 1 ended cleanly, not left to crash
    (record,) = (tmp_path / "r").glob("*/*/protosim@*/*/seed0.json")
    rec = json.loads(record.read_text())
    assert rec["status"] == "error" and "2 classes" in rec["error"]


def test_failed_shutdown_waits_for_the_other_local_ranks_to_exit(monkeypatch):
    """A rank exiting non-zero on purpose first lets its peers exit, so torchrun does not SIGTERM
    one that is still tearing down (the race behind the rank-0-only failure test)."""
    import threading

    peer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.5)"])
    reaper = threading.Thread(target=peer.wait)          # torchrun's agent reaps its workers likewise
    reaper.start()
    monkeypatch.setattr(distributed, "_local_peers", [peer.pid])
    distributed.shutdown(failed=False)
    assert peer.poll() is None                            # no wait without a failure status
    distributed.shutdown(failed=True)
    assert not distributed._running(peer.pid)             # returned only once the peer was gone
    reaper.join()
    assert peer.returncode == 0
    assert distributed._running(os.getpid())
