import importlib.metadata as md
import sys
import types

import pytest

from bench import hookimpl, plugins
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
