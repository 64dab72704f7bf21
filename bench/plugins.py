"""Plugin manager: loads entry points of group ``bench`` with per-plugin error isolation.

pluggy's own ``load_setuptools_entrypoints`` lets one failing import take the host down
(pluggy#174); we load each entry point in its own try/except, record name, version,
status and error for ``bench plugins``, and re-raise only in strict mode.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import os
from dataclasses import dataclass, field

import pluggy

from bench import hookspecs
from bench.errors import BenchError
from bench.registry import Registry

ENTRY_POINT_GROUP = "bench"
#: harness modules registered like any plugin (pytest's default_plugins)
BUILTIN_PLUGINS = ("bench.datasets.builtin", "bench.extractors.builtin", "bench.baselines")


@dataclass
class PluginInfo:
    name: str
    distribution: str
    version: str
    status: str            # "ok" | "error" | "disabled"
    error: str = ""
    hooks: list[str] = field(default_factory=list)


@dataclass
class Registries:
    summarisers: Registry
    comparators: Registry
    datasets: Registry
    extractors: Registry
    experts: Registry
    plugins: list[PluginInfo]
    manager: pluggy.PluginManager


def _hooks_of(pm: pluggy.PluginManager, plugin: object) -> list[str]:
    return sorted(h.name for h in (pm.get_hookcallers(plugin) or []))


def load(strict: bool = False, entry_points: list[md.EntryPoint] | None = None) -> Registries:
    """Create the plugin manager, load built-ins and entry points, fill the registries.

    ``strict`` turns a broken plugin into an error instead of a reported skip.
    ``BENCH_DISABLE_PLUGINS=a,b`` skips the named entry points.
    """
    pm = pluggy.PluginManager("bench")
    pm.add_hookspecs(hookspecs)
    infos: list[PluginInfo] = []
    from bench import __version__

    for modname in BUILTIN_PLUGINS:
        module = importlib.import_module(modname)
        pm.register(module, name=modname)
        infos.append(PluginInfo(modname, "bench", __version__, "ok", hooks=_hooks_of(pm, module)))

    disabled = {s.strip() for s in os.environ.get("BENCH_DISABLE_PLUGINS", "").split(",") if s.strip()}
    eps = entry_points if entry_points is not None else list(md.entry_points(group=ENTRY_POINT_GROUP))
    for ep in sorted(eps, key=lambda e: e.name):
        dist = getattr(ep, "dist", None)
        dist_name = dist.name if dist is not None else "?"
        dist_version = dist.version if dist is not None else "?"
        if ep.name in disabled:
            infos.append(PluginInfo(ep.name, dist_name, dist_version, "disabled"))
            continue
        if pm.has_plugin(ep.name):
            continue
        try:
            plugin = ep.load()
            pm.register(plugin, name=ep.name)
            pm.check_pending()
        except Exception as exc:  # a third-party plugin may fail in any way
            if pm.has_plugin(ep.name):
                pm.unregister(name=ep.name)
            if strict:
                raise BenchError(f"plugin {ep.name!r} ({dist_name} {dist_version}) failed to load: "
                                 f"{type(exc).__name__}: {exc}") from exc
            infos.append(PluginInfo(ep.name, dist_name, dist_version, "error",
                                    error=f"{type(exc).__name__}: {exc}".splitlines()[0]))
            continue
        infos.append(PluginInfo(ep.name, dist_name, dist_version, "ok", hooks=_hooks_of(pm, plugin)))

    regs = Registries(Registry("method"), Registry("comparator"), Registry("dataset"),
                      Registry("extractor"), Registry("expert"), infos, pm)
    for hook, registry in (("bench_register_summarisers", regs.summarisers),
                           ("bench_register_comparators", regs.comparators),
                           ("bench_register_datasets", regs.datasets),
                           ("bench_register_extractors", regs.extractors),
                           ("bench_register_experts", regs.experts)):
        for impl in reversed(getattr(pm.hook, hook).get_hookimpls()):
            try:
                impl.function(registry)
            except Exception as exc:
                if strict or impl.plugin_name in BUILTIN_PLUGINS:
                    raise
                for info in infos:
                    if info.name == impl.plugin_name:
                        info.status, info.error = "error", f"{hook}: {type(exc).__name__}: {exc}"
    for registry in (regs.summarisers, regs.comparators, regs.datasets, regs.extractors, regs.experts):
        registry.freeze()
    return regs


def method_names(regs: Registries) -> list[str]:
    """Every runnable method name (summariser, comparator or both)."""
    return sorted(set(regs.summarisers.names()) | set(regs.comparators.names()))
