"""Plugin manager: loads entry points of group ``bench`` with per-plugin error isolation.

pluggy's own ``load_setuptools_entrypoints`` lets one failing import take the host down
(pluggy#174); we load each entry point in its own try/except, record name, version,
status and error for ``bench plugins``, and re-raise only in strict mode.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import logging
import os
import signal
import threading
from dataclasses import dataclass, field

import pluggy

from bench import hookspecs
from bench.errors import BenchError
from bench.registry import Registry

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "bench"
#: the distribution whose entry points are first-party (``plugins/``): they load before any other
FIRST_PARTY = "bench"
#: harness modules registered like any plugin (pytest's default_plugins)
BUILTIN_PLUGINS = ("bench.datasets.builtin", "bench.extractors.builtin", "bench.baselines", "bench.atlas",
                   "bench.report_core")


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
    taken: dict[str, tuple[str, str]] = {}   # entry-point name → (distribution, value) that holds it
    # first-party entry points first, so a third-party one can never take their names
    for ep in sorted(eps, key=lambda e: (_dist_of(e)[0] != FIRST_PARTY, e.name)):
        dist_name, dist_version = _dist_of(ep)
        if ep.name in disabled:
            infos.append(PluginInfo(ep.name, dist_name, dist_version, "disabled"))
            continue
        if ep.name in taken or pm.has_plugin(ep.name):
            holder = taken.get(ep.name, ("bench", ep.name))
            if holder == (dist_name, ep.value):   # the same entry point seen twice (one distribution on two paths)
                continue
            error = (f"entry point name {ep.name!r} is already taken by {holder[0]} ({holder[1]}); "
                     f"this one ({ep.value}) is skipped")
            if strict:
                raise BenchError(f"plugin {ep.name!r} ({dist_name} {dist_version}): {error}")
            log.warning("plugin %r of %s %s not loaded: %s", ep.name, dist_name, dist_version, error)
            infos.append(PluginInfo(ep.name, dist_name, dist_version, "error", error=error))
            continue
        taken[ep.name] = (dist_name, ep.value)
        try:
            plugin = _load_entry_point(ep)
            pm.register(plugin, name=ep.name)
            pm.check_pending()
        except _CtrlC:
            raise KeyboardInterrupt from None
        except (Exception, SystemExit, KeyboardInterrupt) as exc:  # a third-party plugin may fail in any way
            if pm.has_plugin(ep.name):
                pm.unregister(name=ep.name)
            if strict:
                raise BenchError(f"plugin {ep.name!r} ({dist_name} {dist_version}) failed to load: "
                                 f"{_describe(exc)}") from exc
            infos.append(PluginInfo(ep.name, dist_name, dist_version, "error", error=_describe(exc).splitlines()[0]))
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


def _dist_of(ep: md.EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    return (dist.name, dist.version) if dist is not None else ("?", "?")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"SystemExit: the plugin called sys.exit({exc.code!r}) while being imported"
    if isinstance(exc, KeyboardInterrupt):
        return "KeyboardInterrupt raised by the plugin while being imported"
    return f"{type(exc).__name__}: {exc}"


class _CtrlC(KeyboardInterrupt):
    """A real Ctrl-C that arrived while a plugin was imported: never swallowed."""


def _load_entry_point(ep: md.EntryPoint):
    """``ep.load()``; a ``SystemExit`` / ``KeyboardInterrupt`` the plugin raises itself is its own
    failure, but a real Ctrl-C meanwhile (SIGINT, seen by a handler set for the import) still stops bench."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        return ep.load()   # no way to tell the two apart here: the plugin's own ones are still caught

    def ctrl_c(signum, frame):
        raise _CtrlC

    signal.signal(signal.SIGINT, ctrl_c)
    try:
        return ep.load()
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


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
