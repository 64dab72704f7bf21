"""The plan of a run: the configuration, checked whole before any work starts.

Unknown names, datasets that are not ready, bad numbers (seeds, limit, batch size), an output or
cache folder that is a file, ``--set`` values of the wrong type and parameter values a method
refuses (``check_params``, for every cell's preset) each end the run here with one line, so a
typo never costs a half-finished grid. The plan then lists the cells (dataset × method × seed,
``--shard`` applied).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench.datasets.base import DatasetSpec
from bench.errors import BenchError
from bench.factory import Setting, create_method, method_classes, parse_setting, resolve_settings
from bench.plugins import Registries
from bench.runstore import check_writable_dir

DEFAULT_METHODS = ("kmeans", "fd")
DEFAULT_DATASETS = ("synth-passnet",)
DEFAULT_EXTRACTOR = "tiny-vit"
PRECISIONS = ("fp32", "bf16", "fp16")
MAX_SEED = 2**32 - 1   # numpy's SeedSequence takes more, but torch.manual_seed and faiss take 32/64 bits


@dataclass
class RunConfig:
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    datasets: list[str] = field(default_factory=lambda: list(DEFAULT_DATASETS))
    extractor: str = DEFAULT_EXTRACTOR
    weights: str | None = None
    device: str = "auto"
    seeds: list[int] = field(default_factory=lambda: [0])
    limit: int | None = None
    out: Path = Path("results")
    resume: bool = False
    preset: str = "auto"          # auto | paper | quick
    #: ``--set`` strings (``METHOD[.ROLE].PARAM=VALUE``) or parsed :class:`Setting` objects
    settings: list[str | Setting] = field(default_factory=list)
    batch_size: int = 64
    precision: str = "fp32"       # fp32 | bf16 | fp16: in the extractor's cache key and the record path
    workers: int | None = None    # decode workers (None: one per core); a run resource, not in any key
    decode: str = "auto"          # JPEG decode: auto (GPU on CUDA) | cpu | gpu; a run resource
    cache_dir: Path | None = None
    no_cache: bool = False
    progress: bool = False
    strict_plugins: bool = False
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


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BenchError(f"--device {device} was asked for but torch sees no CUDA device; use --device cpu or auto")
    if device != "cpu" and not device.startswith("cuda"):
        raise BenchError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N")
    try:
        return torch.device(device)
    except RuntimeError:
        raise BenchError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None


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
    regs.extractors.get(cfg.extractor)
    for d, spec in specs.items():
        reason = spec.ready()
        if reason:
            raise BenchError(f"dataset {d!r} is not ready: {reason}")
    for s in cfg.seeds:
        if not 0 <= s <= MAX_SEED:
            raise BenchError(f"--seeds must be integers from 0 to {MAX_SEED}, got {s}")
    if cfg.limit is not None and cfg.limit < 2:
        raise BenchError(f"--limit must be at least 2, got {cfg.limit}")
    if cfg.batch_size < 1:
        raise BenchError(f"--batch-size must be at least 1, got {cfg.batch_size}")
    if cfg.workers is not None:
        from bench.pipeline import check_workers

        check_workers(cfg.workers)
    if cfg.decode not in ("auto", "cpu", "gpu"):
        raise BenchError(f"--decode must be auto, cpu or gpu, got {cfg.decode!r}")
    if cfg.precision not in PRECISIONS:
        raise BenchError(f"--precision must be one of {', '.join(PRECISIONS)}, got {cfg.precision!r}")
    if cfg.preset not in ("auto", "paper", "quick"):
        raise BenchError(f"--preset must be auto, paper or quick, got {cfg.preset!r}")
    check_writable_dir(cfg.out, "--out")
    if cfg.cache_dir is not None and not cfg.no_cache:
        check_writable_dir(cfg.cache_dir, "--cache-dir")
    settings = [s if isinstance(s, Setting) else parse_setting(s) for s in cfg.settings]
    params = resolve_settings(regs, settings, cfg.methods)
    plan = Plan(cfg, specs, params, [])
    for preset in {plan.preset(d) for d in cfg.datasets}:
        for m in cfg.methods:   # every cell's method objects, built and checked now, not mid-grid
            create_method(regs, m, preset=preset, params=params.get(m))
    cells = [Cell(d, m, s) for d in cfg.datasets for m in cfg.methods for s in cfg.seeds]
    plan.cells = shard_cells(cells, cfg.shard)
    return plan
