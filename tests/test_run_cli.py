"""`bench run` end to end on the embedded datasets, resume, bad input, leaderboard."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from bench import leaderboard, records
from bench.cli import main
from bench.runstore import RECORD_NAME, RunStore

REPO = Path(__file__).resolve().parent.parent


def _records(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(root.rglob("seed*.json"))
            if RECORD_NAME.fullmatch(p.name)]


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "results"
    code = main(["run", "--methods", "kmeans,fd", "--datasets", "synth-passnet,digits", "--out", str(out),
                 "--no-progress"])
    return code, out


def test_run_writes_records_and_beats_chance(default_run, capsys):
    code, out = default_run
    assert code == 0
    recs = _records(out)
    assert len(recs) == 4 and all(r["status"] == "ok" for r in recs)
    for r in recs:
        assert re.fullmatch(r"[0-9a-f]{16}", r["comparability_key"]) and r["environment"]["torch"]
        if (REPO / ".git").exists():   # a source checkout: the record names its commit
            assert re.fullmatch(r"[0-9a-f]{40}", r["git"]["hash"]) and isinstance(r["git"]["dirty"], bool)
        if r["method"]["name"] == "kmeans":
            assert r["metrics"]["nmi"]["value"] > r["metrics"]["nmi_random"]["value"] + 0.1
            assert r["metrics"]["probe_acc"]["higher_is_better"] is True
        else:
            assert r["metrics"]["score_between"]["value"] > r["metrics"]["score_null"]["value"]


def test_resume_skips_finished_cells_and_redoes_missing(default_run, capsys):
    _, out = default_run
    paths = sorted(out.rglob("seed0.json"))
    before = {p: p.stat().st_mtime_ns for p in paths}
    paths[0].unlink()
    assert main(["run", "--methods", "kmeans,fd", "--datasets", "synth-passnet,digits", "--out", str(out),
                 "--resume", "--no-progress"]) == 0
    assert "3 resumed" in capsys.readouterr().out
    assert paths[0].exists()
    assert all(p.stat().st_mtime_ns == t for p, t in before.items() if p != paths[0])


def test_leaderboard_is_pure_and_deterministic(default_run, tmp_path):
    _, out = default_run
    a = leaderboard.build(RunStore(out).load().records)
    b = leaderboard.build(list(reversed(RunStore(out).load().records)))
    assert a == b and "synth-passnet.md" in a and "results.csv" in a
    assert main(["leaderboard", str(out), "-o", str(tmp_path / "lb")]) == 0
    assert (tmp_path / "lb" / "synth-passnet.md").read_text() == a["synth-passnet.md"]


def test_leaderboard_never_mixes_comparability_keys(default_run):
    _, out = default_run
    recs = [r for r in RunStore(out).load().records if r.method.name == "kmeans" and r.dataset.name == "digits"]
    other = recs[0].model_copy(deep=True)
    other.method.params = {**other.method.params, "k": 3}
    other.comparability_key = records.comparability_key(other)
    table = leaderboard.build(recs + [other])["digits.md"]
    assert table.count(f"| kmeans {recs[0].method.version}") == 2
    # each row names the parameters that set it apart from the other
    assert table.count(f"| kmeans {recs[0].method.version} · k=3 |") == 1
    assert f"### kmeans · k=3 / {other.features.extractor}" in table


def test_a_row_scored_under_older_metric_definitions_is_labelled(default_run):
    _, out = default_run
    recs = [r for r in RunStore(out).load().records if r.method.name == "fd" and r.dataset.name == "digits"]
    old = recs[0].model_copy(deep=True)
    old.metrics_version = "1"
    old.comparability_key = records.comparability_key(old)
    assert old.comparability_key != recs[0].comparability_key
    table = leaderboard.build(recs + [old])["digits.md"]
    assert table.count(f"| fd {old.method.version} (metrics v1) |") == 1
    assert table.count(f"| fd {old.method.version} |") == 1 and "older metric definitions" in table


def test_committed_leaderboard_regenerates_byte_for_byte():
    committed = REPO / "leaderboards"
    files = leaderboard.build(RunStore(committed / "records").load().records)
    for name, text in files.items():
        assert (committed / name).read_text(encoding="utf-8") == text, f"leaderboards/{name} is stale"


@pytest.mark.parametrize("args, message", [
    (["run", "--methods", "kmeens"], "Did you mean 'kmeans'"),
    (["run", "--datasets", "synth-pasnet"], "Did you mean 'synth-passnet'"),
    (["run", "--extractor", "tiny-vi"], "Did you mean 'tiny-vit'"),
    (["run", "--datasets", "imagenet"], "BENCH_IMAGENET_ROOT"),
    (["run", "--datasets", "imagefolder:/no/such/dir"], "/no/such/dir"),
    (["run", "--device", "cuda:7"] if not __import__("torch").cuda.is_available() else ["run", "--device", "tpu"],
     "device"),
    (["run", "--launcher", "torchrun", "--nproc-per-node", "64", "--device", "cuda"], "GPUs"),
    (["run", "--set", "kmeans.k=5000", "--datasets", "digits", "--methods", "kmeans", "--no-cache"],
     "larger than the number of images"),
    (["run", "--set", "kmeans.nope=1", "--methods", "kmeans"], "unknown parameter 'nope'"),
    (["leaderboard", "/no/such/records"], "no records directory"),
])
def test_bad_input_is_one_line(args, message, capsys, tmp_path):
    code = main(args + ["--out", str(tmp_path / "r")] if args[0] == "run" else args)
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert code == 2
    assert message in text and "Traceback" not in text
    failed = _records(tmp_path / "r") if (tmp_path / "r").exists() else []
    for rec in failed:   # a cell whose input was bad (K > N): the grid finished, the record says why
        assert rec["status"] == "error" and rec["error_kind"] == "input" and message in rec["error"]


def test_interrupted_run_resumes(tmp_path, monkeypatch):
    from bench.baselines import FrechetDistance

    calls = {"n": 0}
    original = FrechetDistance.compare

    def flaky(self, a, b, *, seed=0):
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt
        return original(self, a, b, seed=seed)

    monkeypatch.setattr(FrechetDistance, "compare", flaky)
    args = ["run", "--methods", "kmeans,fd", "--datasets", "digits", "--out", str(tmp_path), "--no-progress"]
    assert main(args) == 130
    assert len(_records(tmp_path)) == 1  # kmeans finished before the interrupt; nothing half-written
    assert not list(tmp_path.rglob("*.tmp"))
    assert main(args + ["--resume"]) == 0
    assert len(_records(tmp_path)) == 2


def test_nan_features_fail_the_cell_with_one_line(tmp_path, monkeypatch):
    from bench.extractors.pixels import PixelsExtractor

    original = PixelsExtractor.forward

    def nan_forward(self, batch, layers=("pooled",)):
        out = original(self, batch, layers)
        out["pooled"][0, 0] = float("nan")
        return out

    monkeypatch.setattr(PixelsExtractor, "forward", nan_forward)
    code = main(["run", "--methods", "kmeans", "--datasets", "digits", "--extractor", "pixels", "--no-cache",
                 "--out", str(tmp_path), "--no-progress"])
    assert code == 2
    (rec,) = _records(tmp_path)
    assert rec["status"] == "error" and "NaN" in rec["error"]


def test_limit_and_shard(tmp_path):
    assert main(["run", "--methods", "kmeans", "--datasets", "digits", "--limit", "200", "--seeds", "0,1,2",
                 "--shard", "1/2", "--out", str(tmp_path), "--no-progress"]) == 0
    recs = _records(tmp_path)
    assert [r["seed"] for r in recs] == [1] and recs[0]["dataset"]["n"] == 200
    assert recs[0]["dataset"]["limit"] == 200
    assert np.isfinite(recs[0]["metrics"]["nmi"]["value"])
