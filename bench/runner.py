"""The run grid: methods × datasets × seeds on one extractor, one record per cell.

Everything is resolved and validated before any work starts (unknown names, missing
roots, unavailable devices), so a typo never costs a half-finished run. Each finished
cell is written atomically; ``resume`` skips cells whose record already says ``ok``.
A failing cell writes an ``error`` record and the grid goes on.
"""

from __future__ import annotations

import contextlib
import json
import logging
import resource
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench import __version__, distributed, plugins, records
from bench.api import Comparator, DataView, Summariser
from bench.datasets.base import DatasetSpec, ImageSource
from bench.errors import BenchError, UnknownNameError
from bench.evaluate import evaluate_comparator, evaluate_summary, validate_summary
from bench.features import FeatureStore, default_cache_dir
from bench.metrics import HIGHER_IS_BETTER, METRICS_VERSION, linear_probe_accuracy

log = logging.getLogger("bench")

DEFAULT_METHODS = ("kmeans", "fd")
DEFAULT_DATASETS = ("synth-passnet",)
DEFAULT_EXTRACTOR = "tiny-vit"


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
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    batch_size: int = 64
    cache_dir: Path | None = None
    no_cache: bool = False
    progress: bool = False
    strict_plugins: bool = False
    shard: tuple[int, int] | None = None
    workers: int | None = None    # decode workers (None: one per core); a run resource, not in any key
    precision: str = "fp32"       # fp32 | bf16 | fp16: in the extractor's cache key
    decode: str = "auto"          # JPEG decode: auto (GPU on CUDA) | cpu | gpu; a run resource


@dataclass
class CellResult:
    record: records.Record
    path: Path
    skipped: bool = False


def check_run_resources(batch_size, workers, precision) -> None:
    """--batch-size, --workers and --precision checked before any work (ONE line each)."""
    from bench.extractors.base import PRECISIONS
    from bench.pipeline import check_batch_size, check_workers

    check_batch_size(batch_size)
    if workers is not None:
        check_workers(workers)
    if precision not in PRECISIONS:
        raise BenchError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BenchError(f"--device {device} was asked for but torch sees no CUDA device; use --device cpu or auto")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise BenchError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N")
    return torch.device(device)


def get_dataset_spec(regs: plugins.Registries, name: str) -> DatasetSpec:
    from bench.datasets import get_spec

    return get_spec(regs.datasets, name)


def _distribution_of(cls: type) -> tuple[str, str]:
    top = cls.__module__.split(".")[0]
    dists = metadata.packages_distributions().get(top, [])
    if dists:
        try:
            return dists[0], metadata.version(dists[0])
        except metadata.PackageNotFoundError:
            pass
    return top, ""


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def shard_cells(cells: list[tuple], shard: tuple[int, int] | None) -> list[tuple]:
    """Deterministic shard i of n of the grid (for job arrays; no process group needed)."""
    if shard is None:
        return cells
    i, n = shard
    return [c for k, c in enumerate(cells) if k % n == i]


class Runner:
    def __init__(self, config: RunConfig, *, regs: plugins.Registries | None = None,
                 echo: Callable[[str], None] = print):
        self.cfg = config
        self.echo = echo
        self.regs = regs or plugins.load(strict=config.strict_plugins)
        self._validate_names()
        check_run_resources(config.batch_size, config.workers, config.precision)
        self.device = resolve_device(config.device)
        self.ctx = distributed.init(self.device)   # a no-op unless started by torchrun
        self.device = distributed.local_device(self.device)
        store_root = None if config.no_cache else (config.cache_dir or default_cache_dir())
        self.store = FeatureStore(store_root)
        self._probe_cache: dict[str, float] = {}

    # -- validation ---------------------------------------------------------------------
    def _validate_names(self) -> None:
        known = plugins.method_names(self.regs)
        for m in self.cfg.methods:
            if m not in known:
                raise UnknownNameError("method", m, known)
        self.specs = {d: get_dataset_spec(self.regs, d) for d in self.cfg.datasets}
        self.regs.extractors.get(self.cfg.extractor)
        for d, spec in self.specs.items():
            reason = spec.ready()
            if reason:
                raise BenchError(f"dataset {d!r} is not ready: {reason}")
        for m in self.cfg.params:
            if m not in self.cfg.methods:
                raise BenchError(f"--set names method {m!r}, which is not in --methods {','.join(self.cfg.methods)}")
        if self.cfg.limit is not None and self.cfg.limit < 2:
            raise BenchError(f"--limit must be at least 2, got {self.cfg.limit}")

    # -- method construction ----------------------------------------------------------------
    def _preset(self, spec: DatasetSpec) -> str:
        if self.cfg.preset != "auto":
            return self.cfg.preset
        return "quick" if spec.embedded else "paper"

    def _roles(self, method: str, preset: str) -> dict[str, Summariser | Comparator]:
        roles: dict[str, Summariser | Comparator] = {}
        for role, registry in (("summariser", self.regs.summarisers), ("comparator", self.regs.comparators)):
            if method in registry:
                cls = registry.get(method)
                obj = cls()
                if preset == "quick":
                    obj.set_params(**getattr(cls, "quick_params", {}))
                obj.set_params(**self.cfg.params.get(method, {}))
                roles[role] = obj
        return roles

    # -- running --------------------------------------------------------------------------
    def run(self) -> list[CellResult]:
        """Every cell of the grid (or of ``--shard``). Under torchrun every rank calls this: the
        results (and records) are rank 0's; other ranks return an empty list."""
        factory = self.regs.extractors.get(self.cfg.extractor)
        extractor = factory(weights=self.cfg.weights, device=self.device)
        extractor.configure(workers=self.cfg.workers, precision=self.cfg.precision, decode=self.cfg.decode)
        cells = [(d, m, s) for d in self.cfg.datasets for m in self.cfg.methods for s in self.cfg.seeds]
        cells = shard_cells(cells, self.cfg.shard)
        results: list[CellResult] = []
        sources: dict[str, ImageSource] = {}
        for dname, method, seed in cells:
            spec = self.specs[dname]
            if dname not in sources:
                sources[dname] = self._load_source(spec)
                if self.ctx.world_size > 1:
                    self._extract_collectively(sources[dname], extractor, [m for d, m, _ in cells if d == dname])
            result = self._run_cell(spec, sources[dname], extractor, method, seed)
            if result is not None:
                results.append(result)
        return results

    def _extract_collectively(self, source: ImageSource, extractor, methods: list[str]) -> None:
        """Under torchrun: every rank extracts its shard of the pooled features, before any method
        (which may then run on rank 0 alone) asks for them."""
        needs = any("features" in getattr(registry.get(m), "requires", ())
                    for m in set(methods) for registry in (self.regs.summarisers, self.regs.comparators)
                    if m in registry)
        if needs and self.store.root is not None:
            self.store.features(source, extractor, layer="pooled", device=self.device,
                                batch_size=self.cfg.batch_size, progress=self.cfg.progress and self.ctx.is_main,
                                collective=True)

    def _load_source(self, spec: DatasetSpec) -> ImageSource:
        from bench.datasets import limit as limit_source

        source = spec.load(seed=0)
        if source.n == 0:
            raise BenchError(f"dataset {spec.name!r} has no images")
        if self.cfg.limit is not None and self.cfg.limit < source.n:
            self.echo(f"warning: --limit {self.cfg.limit} on {spec.name}: records are marked with the limit "
                      "and never share a leaderboard row with full runs")
            source = limit_source(source, self.cfg.limit, seed=0)
        return source

    def _view(self, source: ImageSource, extractor, artefact_dir: Path | None = None) -> DataView:
        return DataView(source, extractor, self.store, device=self.device, batch_size=self.cfg.batch_size,
                        progress=self.cfg.progress, artefact_dir=artefact_dir)

    def _base_record(self, spec, source, extractor, method, seed, roles, preset) -> records.Record:
        first = next(iter(roles.values()))
        dist, dist_version = _distribution_of(type(first))
        params: dict[str, Any] = {}
        for obj in roles.values():
            params.update({k: _jsonable(v) for k, v in obj.get_params().items()})
        rec = records.Record(
            method=records.MethodInfo(name=method, version=str(first.version), distribution=dist,
                                      dist_version=dist_version, roles=sorted(roles), params=params),
            dataset=records.DatasetInfo(name=spec.name, revision=source.revision, n=source.n,
                                        limit=self.cfg.limit, embedded=spec.embedded),
            features=records.FeatureInfo(extractor=self.cfg.extractor,
                                         cache_key=_jsonable(extractor.cache_key())),
            seed=seed, preset=preset, device=str(self.device), bench_version=__version__,
            metrics_version=METRICS_VERSION, environment=records.environment(), git=records.git_info(),
        )
        rec.config_hash = records.config_hash(rec.method, preset)
        rec.comparability_key = records.comparability_key(rec)
        return rec

    def _run_cell(self, spec, source, extractor, method, seed) -> CellResult | None:
        preset = self._preset(spec)
        roles = self._roles(method, preset)
        # a role with ``distributed = True`` runs on every rank (fit / every compare call of the
        # evaluation, in the same order); the rest of the cell runs on rank 0 alone
        collective = {role for role, obj in roles.items() if getattr(obj, "distributed", False)}
        if not self.ctx.is_main and not collective:
            return None   # rank 0 runs it; this rank goes on to the next collective step
        rec = self._base_record(spec, source, extractor, method, seed, roles, preset)
        path = records.record_path(self.cfg.out, rec)
        finished = self._finished(path)
        if collective:
            finished = distributed.broadcast_object(finished)   # every rank skips it, or none does
        if finished is not None:
            return CellResult(finished, path, skipped=True) if self.ctx.is_main else None
        if not self.ctx.is_main:   # train along; rank 0 evaluates and records
            self._follow(roles, collective, spec, source, extractor, seed)
            return None
        view = self._view(source, extractor, artefact_dir=path.with_suffix("").parent / f"{path.stem}.files")
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        metrics: dict[str, float] = {}

        def summarise() -> None:
            if any("features" in getattr(o, "requires", ()) for o in roles.values()):
                t0 = time.perf_counter()
                with distributed.solo():
                    view.features()
                rec.timings_s["features"] = time.perf_counter() - t0
            if "summariser" in roles:
                est = roles["summariser"]
                t0 = time.perf_counter()
                with contextlib.nullcontext() if "summariser" in collective else distributed.solo():
                    est.fit(view, seed=seed)
                rec.timings_s["fit"] = time.perf_counter() - t0
                with distributed.solo():
                    metrics.update(self._evaluate_summary(est.summary_, view, method, seed, rec, path))

        def compare() -> None:
            t0 = time.perf_counter()
            with contextlib.nullcontext() if "comparator" in collective else distributed.solo():
                cmetrics, detail = evaluate_comparator(roles["comparator"], view, seed=seed, spec=spec,
                                                       make_view=lambda s: self._view(s, extractor))
            rec.timings_s["compare"] = time.perf_counter() - t0
            metrics.update(cmetrics)
            if "ladder" in detail:
                rec.tables["fidelity_ladder"] = detail["ladder"]
            if "between_detail" in detail:
                self._save_artefacts(path, {"comparison": detail["between_detail"]}, suffix="comparison")

        ok = self._attempt(summarise, rec, path)
        if "comparator" in roles:
            if "comparator" in collective:   # the other ranks compare along only if rank 0 does
                ok = distributed.broadcast_object(ok)
            if ok:
                self._attempt(compare, rec, path)
        rec.metrics = {k: records.Metric(value=_float_or_none(v), higher_is_better=HIGHER_IS_BETTER.get(k),
                                         n=len(view)) for k, v in metrics.items()}
        rec.peak_memory_mb["rss"] = _peak_rss_mb()
        if self.device.type == "cuda":
            rec.peak_memory_mb["cuda"] = torch.cuda.max_memory_allocated(self.device) / 2**20
        saved = records.save(rec, self.cfg.out)
        self.regs.manager.hook.bench_record_written(record=rec, path=str(saved))
        return CellResult(rec, saved)

    def _follow(self, roles, collective: set[str], spec, source, extractor, seed: int) -> None:
        """A rank > 0's part of a cell: the collective roles' calls, in rank 0's order."""
        view = self._view(source, extractor)
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        if "summariser" in collective:
            with contextlib.suppress(BenchError):   # rank 0 meets the same error and records it
                roles["summariser"].fit(view, seed=seed)
        if "comparator" in collective and distributed.broadcast_object(None):   # rank 0 says whether
            with contextlib.suppress(BenchError):
                evaluate_comparator(roles["comparator"], view, seed=seed, spec=spec,
                                    make_view=lambda s: self._view(s, extractor))

    @staticmethod
    def _attempt(step: Callable[[], None], rec: records.Record, path: Path) -> bool:
        """Run one step of a cell; a failure becomes the record's one-line error (the traceback of an
        unexpected one goes next to the record) and the grid goes on."""
        try:
            step()
            return True
        except BenchError as exc:
            rec.status, rec.error = "error", str(exc)
        except Exception as exc:  # noqa: BLE001 - a method bug must not end the grid
            rec.status, rec.error = "error", f"{type(exc).__name__}: {exc}".splitlines()[0]
            log_path = path.with_suffix(".traceback.txt")
            records.write_atomic(log_path, traceback.format_exc())
            rec.error += f" (traceback: {log_path})"
        return False

    def _evaluate_summary(self, summary, view: DataView, method: str, seed: int, rec: records.Record,
                          path: Path) -> dict[str, float]:
        """Harness metrics of a fitted summariser; its statistics, tables and artefacts into the record."""
        validate_summary(summary, len(view), method)
        t0 = time.perf_counter()
        metrics = evaluate_summary(summary, view, seed=seed, backbone_probe=lambda: self._backbone_probe(view, seed))
        rec.timings_s["evaluate"] = time.perf_counter() - t0
        rec.statistics.update({k: _float_or_none(v) for k, v in summary.statistics.items()})
        tables = summary.artefacts.get("tables") or {}
        rec.tables.update({k: _jsonable(v) for k, v in tables.items()})
        artefacts = dict(summary.artefacts)
        if summary.codes is not None:
            artefacts.setdefault("codes", np.asarray(summary.codes))
        self._save_artefacts(path, artefacts)
        return metrics

    def _finished(self, path: Path) -> records.Record | None:
        """The record at ``path`` if ``--resume`` and it finished ok."""
        if not (self.cfg.resume and path.exists()):
            return None
        try:
            old = records.Record.model_validate_json(path.read_text())
        except ValueError:
            return None   # unreadable: recompute
        return old if old.status == "ok" else None

    def _backbone_probe(self, view: DataView, seed: int) -> float:
        key = f"{view.source.revision}:{seed}"
        if key not in self._probe_cache:
            labelled = view.labels >= 0
            self._probe_cache[key] = linear_probe_accuracy(view.features()[labelled], view.labels[labelled],
                                                           seed=seed)
        return self._probe_cache[key]

    @staticmethod
    def _save_artefacts(record_file: Path, artefacts: dict[str, Any], suffix: str = "artefacts") -> None:
        """Arrays → ``seedN.{suffix}.npz``, the JSON-able rest → ``seedN.{suffix}.json`` (atomic)."""
        arrays = {k: np.asarray(v) for k, v in artefacts.items() if isinstance(v, np.ndarray)}
        other = {k: v for k, v in artefacts.items() if k != "tables" and not isinstance(v, np.ndarray)}
        stem = record_file.with_suffix("")
        if arrays:
            stem.parent.mkdir(parents=True, exist_ok=True)
            tmp = stem.parent / f".{stem.name}.{suffix}.tmp.npz"
            np.savez_compressed(tmp, **arrays)
            tmp.replace(stem.parent / f"{stem.name}.{suffix}.npz")
        if other:
            records.write_atomic(stem.parent / f"{stem.name}.{suffix}.json",
                                 json.dumps(_jsonable(other), indent=1, sort_keys=True))


def _float_or_none(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if np.isfinite(f) else None


def _jsonable(obj: Any) -> Any:
    """Numpy/torch/Path values → plain JSON types (for params, tables and artefacts)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (Path, torch.device)):
        return str(obj)
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return repr(obj)
