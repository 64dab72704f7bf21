import importlib.metadata as md
import sys
import types

import numpy as np
import pytest

from bench import hookimpl, plugins
from bench.api import Summariser, Summary
from bench.errors import BenchError, UnknownNameError
from bench.registry import Registry


def test_registry_did_you_mean_and_collisions():
    reg = Registry("method")
    reg.add("protosim", object)
    with pytest.raises(UnknownNameError, match="Did you mean 'protosim'"):
        reg.get("protosym")
    with pytest.raises(BenchError, match="registered twice"):
        reg.add("protosim", object)


def test_registry_lazy_import():
    reg = Registry("x")
    reg.add("fd", "bench.baselines:FrechetDistance")
    from bench.baselines import FrechetDistance

    assert reg.get("fd") is FrechetDistance


def _ep(name, value):
    return md.EntryPoint(name=name, value=value, group="bench")


def test_broken_plugin_is_reported_not_fatal(monkeypatch):
    good = types.ModuleType("bench_test_good")

    from bench.api import Summariser

    class Dummy(Summariser):
        name, version = "dummy-test", "1"

    @hookimpl
    def bench_register_summarisers(registry):
        registry.add("dummy-test", Dummy)

    good.bench_register_summarisers = bench_register_summarisers
    monkeypatch.setitem(sys.modules, "bench_test_good", good)
    eps = [_ep("good", "bench_test_good"), _ep("broken", "bench_test_does_not_exist_xyz")]
    regs = plugins.load(entry_points=eps)
    status = {p.name: p for p in regs.plugins}
    assert status["good"].status == "ok" and "dummy-test" in regs.summarisers
    assert status["broken"].status == "error" and "No module named" in status["broken"].error
    with pytest.raises(BenchError, match="failed to load"):
        plugins.load(strict=True, entry_points=eps)


def test_builtin_registrations_present():
    regs = plugins.load(entry_points=[])
    assert "kmeans" in regs.summarisers and "fd" in regs.comparators


def test_hookspecs_documented():
    from bench import hookspecs

    for name in dir(hookspecs):
        if name.startswith("bench_"):
            assert getattr(hookspecs, name).__doc__, f"{name} has no docstring"


class _NanRows(Summariser):
    """Two codes and a 4-d embedding from the features, its first ``nan_rows`` rows NaN."""

    name, version = "nan-rows-test", "1"

    def __init__(self, *, nan_rows: int = 3):
        self.nan_rows = nan_rows

    def fit(self, data, *, seed=0):
        feats = np.asarray(data.features(), dtype=np.float64)
        emb = feats[:, :4].copy()
        emb[: self.nan_rows] = np.nan
        self.summary_ = Summary(codes=(feats[:, 0] > np.median(feats[:, 0])).astype(np.int64), embedding=emb)
        return self


class _FiniteRows(_NanRows):
    name = "finite-rows-test"

    def __init__(self, *, nan_rows: int = 0):
        self.nan_rows = nan_rows


def test_bench_check_fails_an_embedding_with_nan_rows(monkeypatch, capsys):
    """``bench check`` on a method whose embedding has NaN rows: that check FAILs (exit 1); the
    same method with finite rows passes every check (exit 0)."""
    from bench.cli import main

    module = types.ModuleType("bench_test_nan_rows")

    @hookimpl
    def bench_register_summarisers(registry):
        registry.add("nan-rows-test", _NanRows)
        registry.add("finite-rows-test", _FiniteRows)

    module.bench_register_summarisers = bench_register_summarisers
    monkeypatch.setitem(sys.modules, "bench_test_nan_rows", module)
    load = plugins.load
    monkeypatch.setattr(plugins, "load", lambda strict=False, entry_points=None: load(
        strict=strict, entry_points=[_ep("nan-rows", "bench_test_nan_rows")]))
    assert main(["check", "nan-rows-test"]) == 1
    text = " ".join(capsys.readouterr().out.split())
    assert "check_fit_returns_self_and_valid_summary: FAIL" in text and "3 rows with NaN or inf (first: row 0)" in text
    assert main(["check", "finite-rows-test"]) == 0, capsys.readouterr().out
