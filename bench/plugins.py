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
BUILTIN_PLUGINS = ("bench.datasets.builtin", "bench.extractors.builtin", "bench.baselines", "bench.report_core")


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

    from bench.api import Comparator, Expert, Summariser, tags_of

    regs = Registries(Registry("method", base_cls=Summariser, check=tags_of),
                      Registry("comparator", base_cls=Comparator, check=tags_of), Registry("dataset"),
                      Registry("extractor"), Registry("expert", base_cls=Expert), infos, pm)
    hooks = (("bench_register_summarisers", regs.summarisers), ("bench_register_comparators", regs.comparators),
             ("bench_register_datasets", regs.datasets), ("bench_register_extractors", regs.extractors),
             ("bench_register_experts", regs.experts))
    # one plugin at a time, in load order (built-ins first): a plugin whose registration fails
    # or collides with a name already taken is skipped whole, and `bench plugins` says why
    for info in infos:
        if info.status != "ok":
            continue
        plugin = pm.get_plugin(info.name)
        staged: list[tuple[Registry, str]] = []
        try:
            for hook, registry in hooks:
                before = set(registry.names())
                registry.registering = info.name
                try:
                    _call_one(pm, hook, plugin, registry=registry)
                finally:   # what it added before failing is taken back too
                    registry.registering = None
                    staged += [(registry, n) for n in set(registry.names()) - before]
        except Exception as exc:  # a third-party plugin may fail in any way
            for registry, n in staged:
                registry.discard(n)
            if strict or info.name in BUILTIN_PLUGINS:
                raise
            info.status, info.error = "error", f"{hook}: {first_line(exc)}; plugin skipped"
            pm.unregister(plugin)
    for _, registry in hooks:
        registry.freeze()
    return regs


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _call_one(pm: pluggy.PluginManager, hook: str, plugin: object, **kwargs):
    """Call ``hook`` of ``plugin`` alone, through pluggy (so argument matching works as documented)."""
    others = [p for p in pm.get_plugins() if p is not plugin]
    return pm.subset_hook_caller(hook, remove_plugins=others)(**kwargs)


def call_each(pm: pluggy.PluginManager, hook: str, **kwargs):
    """Call ``hook`` once per implementing plugin, isolated: yields (plugin name, result, exception).

    Order: ``tryfirst`` implementations, then the rest in registration order (built-ins first),
    then ``trylast``; one plugin that raises never stops the others."""
    impls = getattr(pm.hook, hook).get_hookimpls()
    ordered = ([i for i in reversed(impls) if i.tryfirst] + [i for i in impls if not (i.tryfirst or i.trylast)]
               + [i for i in reversed(impls) if i.trylast])
    for impl in ordered:
        try:
            result = _call_one(pm, hook, impl.plugin, **kwargs)
        except Exception as exc:  # noqa: BLE001 - isolated by design; the caller reports it
            yield impl.plugin_name, None, exc
            continue
        yield impl.plugin_name, result[0] if isinstance(result, list) and len(result) == 1 else None, None


def method_names(regs: Registries) -> list[str]:
    """Every runnable method name (summariser, comparator or both)."""
    return sorted(set(regs.summarisers.names()) | set(regs.comparators.names()))
