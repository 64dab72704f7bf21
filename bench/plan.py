"""The plan of a run: the configuration, checked whole before any work starts.

Unknown names, datasets that are not ready, bad numbers (seeds, limit, batch size), an output or
cache folder that is a file, ``--set`` values of the wrong type and parameter values a method
refuses (``check_params``, for every cell's preset) each end the run here with one line, so a
typo never costs a half-finished grid. The plan then lists the cells (dataset × method × seed,
``--shard`` applied).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bench.context import SharedConfig, check_seed, validate_shared
from bench.datasets.base import DatasetSpec
from bench.errors import BenchError
from bench.factory import Setting, create_method, method_classes, parse_setting, resolve_settings
from bench.plugins import Registries

DEFAULT_METHODS = ("kmeans", "fd")
DEFAULT_DATASETS = ("synth-passnet",)


@dataclass
class RunConfig(SharedConfig):
    """``bench run``'s options beyond the shared ones (:class:`bench.context.SharedConfig`)."""

    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    datasets: list[str] = field(default_factory=lambda: list(DEFAULT_DATASETS))
    seeds: list[int] = field(default_factory=lambda: [0])
    resume: bool = False
    shard: tuple[int, int] | None = None


@dataclass(frozen=True)
class Cell:
    dataset: str
    method: str
    seed: int


@dataclass
class Plan:
    config: RunConfig
    specs: dict[str, DatasetSpec]
    #: {method: {role: {param: value}}} from ``--set``, type-checked
    params: dict[str, dict[str, dict[str, Any]]]
    cells: list[Cell]

    def preset(self, dataset: str) -> str:
        if self.config.preset != "auto":
            return self.config.preset
        return "quick" if self.specs[dataset].embedded else "paper"


def shard_cells(cells: list, shard: tuple[int, int] | None) -> list:
    """Deterministic shard i of n of the grid (for job arrays; no process group needed)."""
    if shard is None:
        return cells
    i, n = shard
    return [c for k, c in enumerate(cells) if k % n == i]


def _unique(items: list) -> list:
    return list(dict.fromkeys(items))


def make_plan(cfg: RunConfig, regs: Registries) -> Plan:
    """Validate ``cfg`` against the registries (ONE-line BenchError for the first problem) → :class:`Plan`."""
    from bench.datasets import get_spec

    cfg.methods, cfg.datasets, cfg.seeds = _unique(cfg.methods), _unique(cfg.datasets), _unique(cfg.seeds)
    for m in cfg.methods:
        method_classes(regs, m)   # unknown names suggest the closest, lazy classes are checked
    specs = {d: get_spec(regs.datasets, d) for d in cfg.datasets}
    for d, spec in specs.items():
        reason = spec.ready()
        if reason:
            raise BenchError(f"dataset {d!r} is not ready: {reason}")
    for s in cfg.seeds:
        check_seed(s, "--seeds")
    validate_shared(cfg, regs)
    settings = [s if isinstance(s, Setting) else parse_setting(s) for s in cfg.settings]
    params = resolve_settings(regs, settings, cfg.methods)
    plan = Plan(cfg, specs, params, [])
    for preset in {plan.preset(d) for d in cfg.datasets}:
        for m in cfg.methods:   # every cell's method objects, built and checked now, not mid-grid
            create_method(regs, m, preset=preset, params=params.get(m))
    cells = [Cell(d, m, s) for d in cfg.datasets for m in cfg.methods for s in cfg.seeds]
    plan.cells = shard_cells(cells, cfg.shard)
    return plan
