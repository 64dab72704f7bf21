"""Issue 26 item 5: comparator states across torchrun ranks, and ``bench summarise`` under torchrun.

The two-process tests start the real engine (``torch.distributed.run``, gloo on CPU). A ``.bench``
written by two ranks must equal one process's bit for bit (every member but the creation time), and
``bench compare`` against either must give the same p-value and interval exactly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench import statistics as S
from bench.cli import main
from bench.errors import BenchError
from bench.testing import needs_gloo

WORKER = Path(__file__).with_name("summarise_ranks_worker.py")
#: a real embedded dataset through the offline pixels extractor; FD (rows: fewer images than
#: dimensions) and DNA (histograms per block)
DATA = ["--limit", "120", "--extractor", "pixels", "--methods", "fd,dna", "--no-progress", "--workers", "0",
        "--device", "cpu", "--batch-size", "32"]


def _torchrun(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False, env=env)


def _members(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _meta(arrays: dict[str, np.ndarray]) -> dict:
    meta = json.loads(bytes(arrays["__meta__"]).decode())
    meta.pop("created")
    return meta


def _p_and_ci(out: Path) -> dict[str, tuple]:
    found = {}
    for path in (out / "compare").rglob("*.json"):
        rec = json.loads(path.read_text())
        if rec.get("kind") == "comparison":
            m = rec["metrics"]
            found[rec["method"]["name"]] = (m["score"]["value"], m["p_value"]["value"], m["ci_low"]["value"],
                                            m["ci_high"]["value"])
    return found


@needs_gloo
def test_summarise_under_torchrun_writes_the_one_process_bench(tmp_path):
    one = tmp_path / "one.bench"
    assert main(["summarise", "digits", "--save", str(one), "--cache-dir", str(tmp_path / "c1"),
                 "--out", str(tmp_path / "r1"), *DATA]) == 0
    two = tmp_path / "two.bench"
    run = _torchrun(["-m", "bench", "summarise", "digits", "--save", str(two), "--cache-dir", "c2", "--out", "r2",
                     *DATA], tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert run.stdout.count("wrote ") == 1   # rank 0 alone writes and speaks
    assert list((tmp_path / "c2").glob("*.shard1of2.npy"))   # the features were extracted in shards

    a, b = _members(one), _members(two)
    assert sorted(a) == sorted(b)
    assert any(k.startswith("fd/state.") for k in a) and any(k.startswith("dna/state.") for k in a)
    assert _meta(a) == _meta(b)   # the description, but for its creation time
    for k in set(a) - {"__meta__"}:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)   # exactly, not close

    # the null and interval from A's saved block states and B's: DNA's (FD's come from the same
    # arrays, compared above; its 3072-D eigenproblems per draw would take minutes on two cores);
    # the torchrun one compares on rank 0 alone
    draws = ["synth-shift", "--bootstrap", "10", "--permutations", "19", "--no-cache", *DATA, "--methods", "dna"]
    assert main(["compare", str(one), "--out", str(tmp_path / "cmp-one"), *draws]) == 0
    run = _torchrun(["-m", "bench", "compare", str(two), "--out", "cmp-two", *draws], tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert run.stdout.count("decision at") == 1   # one table: rank 0's
    results = [_p_and_ci(tmp_path / "cmp-one"), _p_and_ci(tmp_path / "cmp-two")]
    assert set(results[0]) == {"dna"}
    assert results[0] == results[1]   # score, p, CI equal bit for bit


@needs_gloo
def test_block_states_merge_across_ranks_bit_for_bit_and_refuse_another_version(tmp_path):
    """Blocks of several random images (their rows cross both ranks' shards): FD's float sums and
    DNA's counts computed by two ranks equal rank 0's alone; a rank with another version of the
    comparator stops every rank with the same one line."""
    out = tmp_path / "result.json"
    run = _torchrun([str(WORKER), str(out)], tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(out.read_text())
    for name in ("fd", "dna"):
        together, alone = result["keys"][name]
        assert together == alone and "state.block_sizes" in together
        assert max(result["sizes"][name]) > 1, name
    assert result["differ"] == []
    first, second = result["mismatch"]
    assert first == second and first.startswith("fd: rank 1's block states do not merge with rank 0's")
    assert "method: rank 0 fd 1, rank 1 fd 2" in first and "\n" not in first


def test_rank_states_are_placed_and_checked():
    """In one process: placing blocks is exact; any difference between ranks is one line."""
    rng = np.random.default_rng(0)
    full = {"sum": rng.normal(size=(7, 3)), "count": np.arange(7.0)}
    parts = [(np.arange(0, 4), {k: v[:4] for k, v in full.items()}), (np.arange(4, 4), {}),
             (np.arange(4, 7), {k: v[4:] for k, v in full.items()})]
    merged = S.place_rank_states(parts, 7, "fd")
    for k in full:
        assert merged[k].tobytes() == full[k].tobytes()
    with pytest.raises(BenchError, match="do not tile the 8 blocks once each"):
        S.place_rank_states(parts, 8, "fd")
    with pytest.raises(BenchError, match="blocks outside the 6 blocks"):
        S.place_rank_states(parts, 6, "fd")

    base = dict(bench="0.1.0", method="dna 1", params={"bins": 50}, extractor={"name": "pixels"}, context="ab")
    infos = [S.rank_state_info({k: v[:4] for k, v in full.items()}, **base), S.rank_state_info({}, **base)]
    S.check_rank_states(infos, "dna")   # a rank without blocks sends no arrays
    for key, other in (("extractor", {"name": "tiny-vit"}), ("context", "cd"), ("bench", "0.2.0")):
        bad = S.rank_state_info({k: v[4:] for k, v in full.items()}, **{**base, key: other})
        with pytest.raises(BenchError, match=f"rank 1's block states do not merge with rank 0's \\({key}:") as e:
            S.check_rank_states([infos[0], bad], "dna")
        assert "\n" not in str(e.value)
    wider = S.rank_state_info({"sum": np.zeros((3, 4)), "count": np.zeros(3)}, **base)
    with pytest.raises(BenchError, match=r"\(arrays:"):
        S.check_rank_states([infos[0], wider], "dna")


@needs_gloo
def test_summarise_under_torchrun_bad_input_is_one_line_from_rank_0(tmp_path):
    """Rank 0 alone meets the problem (its comparator's own statistics): every rank stops, the line
    is printed once, no rank waits at a collective, and rank 0's status is 2 (torchrun's own is 1)."""
    run = _torchrun(["-m", "bench", "summarise", "digits", "--save", "x.bench", "--cache-dir", "c", "--out", "r",
                     *DATA, "--methods", "dna", "--set", "dna.ranges=union"], tmp_path, timeout=120)
    text = run.stdout + run.stderr
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert errors == ["error: dna: ranges='union' needs B's images too; a saved summary needs ranges='reference' "
                      "or a ranges file"], text[-3000:]
    assert run.returncode == 1 and "exitcode: 2) local_rank: 0" in text, text[-3000:]
    assert not (tmp_path / "x.bench").exists()
