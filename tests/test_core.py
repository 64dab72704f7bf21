"""The core's shape and contracts: no import circle, no plugin key in the core, typed method tags
checked at registration, collisions skipped with a report, ``--set`` checked before any work, the
run store (errors beside ok records, tolerant reads, the weights in the path), isolated hooks, and
one clear line for every CLI value a user can get wrong."""

import ast
import json
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import bench
from bench import plugins, records
from bench.api import Comparator, Comparison, Summariser, tags_of
from bench.cli import main
from bench.errors import BenchError
from bench.factory import coerce, create_method, parse_setting
from bench.runstore import RunStore, record_path

REPO = Path(__file__).resolve().parent.parent
FAST = ["--datasets", "digits", "--limit", "120", "--extractor", "pixels", "--no-progress"]


def _records(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in RunStore(root).record_files()]


# --------------------------------------------------------------------------- the shape


def _import_graph() -> dict[str, set[str]]:
    mods = {}
    for p in (REPO / "bench").rglob("*.py"):
        name = ".".join(p.relative_to(REPO).with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = p
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):   # lazy and TYPE_CHECKING ones too
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                subs = {f"{node.module}.{a.name}" for a in node.names} & set(mods)
                graph[m] |= subs | ({node.module} & set(mods) if len(subs) < len(node.names) else set())
            elif isinstance(node, ast.Import):
                graph[m] |= {a.name for a in node.names} & set(mods)
        graph[m].discard(m)
    return graph


def test_bench_import_graph_has_no_circle():
    graph = _import_graph()
    assert "bench.reporting" in graph["bench.hookspecs"] and graph["bench.runner"]   # the walk sees imports
    done: set[str] = set()

    def visit(m: str, path: list[str]) -> None:
        assert m not in path, " -> ".join([*path[path.index(m):], m])
        if m in done:
            return
        for n in sorted(graph[m]):
            visit(n, [*path, m])
        done.add(m)

    for m in sorted(graph):
        visit(m, [])


def test_no_plugin_key_in_the_core():
    key = re.compile(r"protosim_|gaussian_mu|qrp_|multicut_")
    found = [f"{p.relative_to(REPO)}:{i}" for p in (REPO / "bench").rglob("*.py")
             for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if key.search(line)]
    assert found == []


# --------------------------------------------------------------------------- registration


class _Good(Summariser):
    name = "good-test"

    def __init__(self, *, k: int = 3, rate: float = 0.5, flag: bool = False, mode: str = "a",
                 pair: tuple[float, float] = (0.1, 1.0), cap: int | None = None):
        self.k, self.rate, self.flag, self.mode, self.pair, self.cap = k, rate, flag, mode, pair, cap


def test_registry_refuses_what_is_not_a_method_and_malformed_tags():
    regs = plugins.load(entry_points=[])
    with pytest.raises(BenchError, match=r"not a subclass of bench\.api\.Summariser"):
        regs.summarisers._check("x", dict)
    bad = type("Bad", (_Good,), {"requires": "features"})
    with pytest.raises(BenchError, match="tag 'requires'"):
        tags_of(bad)
    with pytest.raises(BenchError, match="quick_params"):
        tags_of(type("Bad", (_Good,), {"quick_params": {"nope": 1}}))
    with pytest.raises(BenchError, match="larger_is_more_different"):
        tags_of(type("BadC", (Comparator,), {"larger_is_more_different": "yes"}))
    assert tags_of(_Good).requires == {"features"} and tags_of(_Good).larger_is_more_different is None


def test_a_plugin_registering_a_builtin_name_is_skipped_and_reported(monkeypatch):
    rogue = types.ModuleType("bench_test_rogue")

    @bench.hookimpl
    def bench_register_summarisers(registry):
        registry.add("rogue-extra", _Good)
        registry.add("kmeans", _Good)

    rogue.bench_register_summarisers = bench_register_summarisers
    monkeypatch.setitem(sys.modules, "bench_test_rogue", rogue)
    import importlib.metadata as md

    eps = [md.EntryPoint(name="rogue", value="bench_test_rogue", group="bench")]
    regs = plugins.load(entry_points=eps)
    info = {p.name: p for p in regs.plugins}["rogue"]
    from bench.baselines import KMeans

    assert regs.summarisers.get("kmeans") is KMeans and "rogue-extra" not in regs.summarisers   # skipped whole
    assert info.status == "error" and "registered twice" in info.error
    assert "bench.baselines" in info.error and "plugin rogue" in info.error                 # both origins
    with pytest.raises(BenchError, match="registered twice"):
        plugins.load(strict=True, entry_points=eps)


# --------------------------------------------------------------------------- --set


def test_set_values_are_type_checked_against_the_constructor():
    assert coerce(_Good, "k", "20", method="g") == 20
    assert coerce(_Good, "rate", "2", method="g") == 2.0 and coerce(_Good, "flag", "true", method="g") is True
    assert coerce(_Good, "mode", "nfd", method="g") == "nfd" and coerce(_Good, "mode", "12", method="g") == "12"
    assert coerce(_Good, "pair", "[0.2, 3]", method="g") == (0.2, 3.0)
    assert coerce(_Good, "cap", "none", method="g") is None and coerce(_Good, "cap", "4", method="g") == 4
    for param, text in (("k", "2.7"), ("k", "true"), ("k", "abc"), ("flag", "1"), ("pair", "[1]"), ("rate", "x")):
        with pytest.raises(BenchError, match=f"expected .*got '{re.escape(text)}'"):
            coerce(_Good, param, text, method="g")
    with pytest.raises(BenchError, match="unknown parameter 'nope'"):
        coerce(_Good, "nope", "1", method="g")
    assert parse_setting("dna.comparator.distance=nfd").role == "comparator"
    for text in ("kmeans", "kmeans.k", "dna.teacher.k=1", "a.b.c.d=1"):
        with pytest.raises(BenchError):
            parse_setting(text)


@pytest.mark.parametrize("setting, message", [
    ("kmeans.k=2.7", "expected int | None, got '2.7'"),
    ("kmeans.k=true", "expected int | None, got 'true'"),
    ("kmeans.k=abc", "expected int | None, got 'abc'"),
    ("kmeans.niter=-5", "niter must be at least 1, got -5"),
    ("kmeans.summariser.nope=1", "unknown parameter 'nope'"),
    ("kmeans.comparator.k=1", "kmeans has no comparator role"),
])
def test_bad_set_fails_before_any_work(setting, message, tmp_path, capsys, monkeypatch):
    from bench.features import FeatureStore

    def no_extraction(*args, **kwargs):
        raise AssertionError("extraction started before --set was checked")

    monkeypatch.setattr(FeatureStore, "features", no_extraction)
    code = main(["run", "--methods", "kmeans,fd", "--set", setting, "--out", str(tmp_path / "r"), *FAST])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1
    assert not (tmp_path / "r").exists()


def test_set_without_role_goes_to_the_role_that_has_it(tmp_path, capsys):
    """``dna.distance`` is the comparator's parameter: the grid runs, both dna roles and kmeans."""
    code = main(["run", "--methods", "kmeans,dna", "--set", "dna.distance=nfd", "--set", "dna.range_images=64",
                 "--out", str(tmp_path), *FAST])
    assert code == 0, capsys.readouterr()
    dna = [r for r in _records(tmp_path) if r["method"]["name"] == "dna"]
    assert len(dna) == 1 and dna[0]["status"] == "ok" and dna[0]["method"]["params"]["distance"] == "nfd"
    assert "score_between" in dna[0]["metrics"]


def test_run_resources_never_enter_the_comparability_key():
    regs = plugins.load()
    from bench.context import split_params

    a = create_method(regs, "protosim", preset="quick")
    io = {"num_workers": 3, "checkpoint_dir": "/tmp/x"}
    b = create_method(regs, "protosim", preset="quick", params={"summariser": io, "comparator": io})
    (pa, ra), (pb, rb) = split_params(a.values()), split_params(b.values())
    assert pa == pb and ra != rb and "num_workers" in rb and "num_workers" not in pb


# --------------------------------------------------------------------------- the run store


def _record(status="ok", seed=0, **features) -> records.Record:
    rec = records.Record(method=records.MethodInfo(name="m", version="1"),
                         dataset=records.DatasetInfo(name="imagefolder:/a/b", revision="r", n=3),
                         features=records.FeatureInfo(extractor="e", **features), seed=seed, status=status,
                         error=None if status == "ok" else "boom")
    rec.config_hash = records.config_hash(rec.method, "paper")
    return rec


def test_an_error_never_replaces_an_ok_record(tmp_path):
    store = RunStore(tmp_path)
    ok_path = store.save(_record())
    err_path = store.save(_record("error"))
    assert err_path != ok_path and err_path.name == "seed0.error.json"
    assert store.read(ok_path).status == "ok" and store.finished(_record()).status == "ok"
    assert [r.status for r in store.load().records] == ["ok"]
    store.save(_record())                        # a later ok rerun clears the stale error
    assert not err_path.exists()
    assert not list(tmp_path.rglob("*.tmp"))


def test_weights_and_precision_are_in_the_record_path(tmp_path):
    plain = record_path(tmp_path, _record())
    mine = record_path(tmp_path, _record(weights="ab" * 32))
    half = record_path(tmp_path, _record(precision="bf16"))
    assert len({plain, mine, half}) == 3 and "imagefolder__a_b@r" in str(plain)
    assert "e+wababab" in str(mine) and "e-bf16" in str(half)


def test_tolerant_load_lists_corrupt_records(tmp_path):
    store = RunStore(tmp_path)
    store.save(_record())
    bad = tmp_path / "x" / "seed1.json"
    bad.parent.mkdir()
    bad.write_bytes(b"\xff\xfe not json")
    loaded = store.load()
    assert len(loaded.records) == 1 and len(loaded.problems) == 1 and "x/seed1.json" in loaded.problems[0]


# --------------------------------------------------------------------------- hooks and scores


class _NanScore(Comparator):
    name = "nan-test"

    def compare(self, a, b, *, seed=0):
        return Comparison(score=float("nan"))


class _Raiser:
    @bench.hookimpl
    def bench_record_written(self, record, path):
        raise RuntimeError("exporter down")


def test_a_nan_score_is_an_error_and_a_raising_hook_is_one_warning(tmp_path, capsys):
    from bench.plan import RunConfig
    from bench.runner import Runner

    regs = plugins.load()
    regs.comparators._frozen = False
    regs.comparators.add("nan-test", _NanScore)
    regs.manager.register(_Raiser(), name="raiser")
    warnings: list[str] = []
    cfg = RunConfig(methods=["nan-test", "kmeans"], datasets=["digits"], extractor="pixels", limit=120,
                    out=tmp_path, no_cache=True)
    results = Runner(cfg, regs=regs, echo=warnings.append).run()
    by = {r.record.method.name: r.record for r in results}
    assert by["nan-test"].status == "error" and "score is nan" in by["nan-test"].error
    assert by["kmeans"].status == "ok"                          # the grid went on past both
    assert sum("bench_record_written raised RuntimeError: exporter down" in w for w in warnings) == 2


# --------------------------------------------------------------------------- the command line


@pytest.mark.parametrize("extra, message", [
    (["--seeds", "-1"], "--seeds must be integers from 0"),
    (["--seeds", "123456789012345678901"], "--seeds must be integers from 0"),
    (["--nproc-per-node", "abc", "--launcher", "torchrun"], "--nproc-per-node: expected a positive integer or auto"),
    (["--batch-size", "-3"], "--batch-size must be at least 1"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--out", "FILE"], "is a file"),
    (["--cache-dir", "FILE/sub"], "is a file"),
])
def test_bad_cli_values_are_one_line(extra, message, tmp_path, capsys):
    (tmp_path / "FILE").write_text("x")
    extra = [str(tmp_path / e) if e.startswith("FILE") else e for e in extra]
    args = ["run", "--methods", "kmeans", *FAST, *extra]
    if "--out" not in extra:
        args += ["--out", str(tmp_path / "r")]
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


def test_duplicate_names_run_each_cell_once(tmp_path, capsys):
    assert main(["run", "--methods", "kmeans,kmeans", "--seeds", "0,0", "--out", str(tmp_path), *FAST,
                 "--datasets", "digits,digits"]) == 0
    assert len(_records(tmp_path)) == 1


def test_leaderboard_tolerates_a_corrupt_record_and_refuses_an_empty_folder(tmp_path, capsys):
    store = RunStore(tmp_path / "res")
    rec = _record()
    rec.metrics = {"nmi": records.Metric(value=0.5)}
    store.save(rec)
    (tmp_path / "res" / "junk").mkdir()
    (tmp_path / "res" / "junk" / "seed0.json").write_text("{\"status\": ")
    out = tmp_path / "lb"
    assert main(["leaderboard", str(tmp_path / "res"), "-o", str(out)]) == 0
    captured = capsys.readouterr()
    assert "unreadable record junk/seed0.json" in captured.err and (out / "README.md").exists()
    before = {p.name: p.read_text() for p in out.iterdir()}
    (tmp_path / "empty").mkdir()
    assert main(["leaderboard", str(tmp_path / "empty"), "-o", str(out)]) == 2
    assert "no run records" in capsys.readouterr().err
    assert {p.name: p.read_text() for p in out.iterdir()} == before           # nothing emptied
    (tmp_path / "file").write_text("x")
    assert main(["leaderboard", str(tmp_path / "res"), "-o", str(tmp_path / "file")]) == 2
    assert "is a file" in capsys.readouterr().err


def test_stale_dataset_pages_are_removed_but_other_files_kept(tmp_path):
    from bench import leaderboard

    store = RunStore(tmp_path / "res")
    store.save(_record())
    out = tmp_path / "lb"
    out.mkdir()
    (out / "gone.md").write_text("# gone\n\nDataset revision `x`. Metrics are computed by the harness (↑ …)\n")
    (out / "notes.md").write_text("my own notes\n")
    leaderboard.write(tmp_path / "res", out)
    assert not (out / "gone.md").exists() and (out / "notes.md").exists()
    assert np.all([(out / n).exists() for n in ("README.md", "results.csv")])
