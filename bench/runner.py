"""The run grid: the plan's cells, one record per cell, on one extractor.

``Runner`` executes a :class:`bench.plan.Plan` (validated whole before any work): it loads each
dataset once, then runs each cell — view → fit / compare → harness metrics → record — and writes
the record and artefacts through the run store. A failing cell writes an ``error`` record (beside,
never over, an earlier ``ok`` one) and the grid goes on; ``resume`` skips cells already ``ok``.

Distributed policy (torchrun): every rank walks the same cells; a method whose tags say
``distributed`` runs ``fit`` / ``compare`` on every rank, the rest only on rank 0, and only
rank 0 evaluates and writes.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import resource
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench import __version__, distributed, plugins, records
from bench.api import DataView, tags_of
from bench.datasets import load_source
from bench.datasets.base import ImageSource
from bench.errors import BenchError
from bench.evaluate import Evaluator, evaluate_comparator, validate_summary
from bench.factory import create_method, create_view
from bench.features import FeatureStore, default_cache_dir
from bench.metrics import HIGHER_IS_BETTER, METRICS_VERSION
from bench.plan import Cell, Plan, RunConfig, make_plan, resolve_device
from bench.runstore import RunStore, artefact_dir, jsonable

log = logging.getLogger("bench")

__all__ = ["CellResult", "RunConfig", "Runner", "split_params"]


@dataclass
class CellResult:
    record: records.Record
    path: Path
    skipped: bool = False


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


def _file_sha256(path: str) -> str:
    h = hashlib.sha256()
    p = Path(path)
    files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
    for f in files:
        with open(f, "rb") as fh:
            for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def split_params(methods) -> tuple[dict[str, Any], dict[str, Any]]:
    """(science parameters, run resources) of a method's role objects, JSON-ready. Only the first
    enter the config hash and the comparability key (:attr:`bench.api.Tags.resources`)."""
    params: dict[str, Any] = {}
    resources: dict[str, Any] = {}
    for obj in methods:
        spare = tags_of(type(obj)).resources
        for k, v in obj.get_params().items():
            (resources if k in spare else params)[k] = jsonable(v)
    return params, resources


def _float_or_none(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if np.isfinite(f) else None


class Runner:
    def __init__(self, config: RunConfig, *, regs: plugins.Registries | None = None,
                 echo: Callable[[str], None] = print):
        self.cfg = config
        self.echo = echo
        self.regs = regs or plugins.load(strict=config.strict_plugins)
        self.plan: Plan = make_plan(config, self.regs)
        self.device = resolve_device(config.device)
        self.ctx = distributed.init(self.device)   # a no-op unless started by torchrun
        self.device = distributed.local_device(self.device)
        store_root = None if config.no_cache else (config.cache_dir or default_cache_dir())
        self.store = FeatureStore(store_root)
        self.runs = RunStore(config.out)
        self.evaluator = Evaluator()
        self._weights_sha = _file_sha256(config.weights) if config.weights and Path(config.weights).exists() else None

    # -- the grid --------------------------------------------------------------------------
    def run(self) -> list[CellResult]:
        """Every cell of the plan. Under torchrun every rank calls this: the results (and records)
        are rank 0's; other ranks return an empty list."""
        factory = self.regs.extractors.get(self.cfg.extractor)
        extractor = factory(weights=self.cfg.weights, device=self.device)
        extractor.configure(workers=self.cfg.workers, precision=self.cfg.precision, decode=self.cfg.decode)
        results: list[CellResult] = []
        sources: dict[str, ImageSource] = {}
        for cell in self.plan.cells:
            if cell.dataset not in sources:
                sources[cell.dataset] = self._load_source(cell.dataset)
                if self.ctx.world_size > 1:
                    self._extract_collectively(sources[cell.dataset], extractor,
                                               [c.method for c in self.plan.cells if c.dataset == cell.dataset])
            result = self._run_cell(cell, sources[cell.dataset], extractor)
            if result is not None:
                results.append(result)
        return results

    def _load_source(self, dataset: str) -> ImageSource:
        spec = self.plan.specs[dataset]
        source = load_source(spec, self.cfg.limit)
        if source.n == 0:
            raise BenchError(f"dataset {spec.name!r} has no images")
        if self.cfg.limit is not None and source.n == self.cfg.limit:
            self.echo(f"warning: --limit {self.cfg.limit} on {spec.name}: records are marked with the limit "
                      "and never share a leaderboard row with full runs")
        return source

    def _extract_collectively(self, source: ImageSource, extractor, methods: list[str]) -> None:
        """Under torchrun: every rank extracts its shard of the pooled features, before any method
        (which may then run on rank 0 alone) asks for them."""
        needs = any("features" in tags_of(type(obj)).requires for m in set(methods)
                    for obj in create_method(self.regs, m, params=self.plan.params.get(m)).values())
        if needs and self.store.root is not None:
            self.store.features(source, extractor, layer="pooled", device=self.device,
                                batch_size=self.cfg.batch_size, progress=self.cfg.progress and self.ctx.is_main,
                                collective=True)

    def _view(self, source: ImageSource, extractor, artefacts: Path | None = None) -> DataView:
        return create_view(source, extractor, self.store, device=self.device, batch_size=self.cfg.batch_size,
                           progress=self.cfg.progress, artefact_dir=artefacts, experts=self.regs.experts)

    # -- one cell ---------------------------------------------------------------------------
    def _base_record(self, cell: Cell, source: ImageSource, extractor, roles, preset: str) -> records.Record:
        first = next(iter(roles.values()))
        dist, dist_version = _distribution_of(type(first))
        params, resources = split_params(roles.values())
        spec = self.plan.specs[cell.dataset]
        rec = records.Record(
            method=records.MethodInfo(name=cell.method, version=str(first.version), distribution=dist,
                                      dist_version=dist_version, roles=sorted(roles), params=params,
                                      resources=resources),
            dataset=records.DatasetInfo(name=spec.name, revision=source.revision, n=source.n,
                                        limit=self.cfg.limit, embedded=spec.embedded),
            features=records.FeatureInfo(extractor=self.cfg.extractor, cache_key=jsonable(extractor.cache_key()),
                                         weights=self._weights_sha, precision=self.cfg.precision),
            seed=cell.seed, preset=preset, device=str(self.device), bench_version=__version__,
            metrics_version=METRICS_VERSION, environment=records.environment(), git=records.git_info(),
        )
        rec.config_hash = records.config_hash(rec.method, preset)
        rec.comparability_key = records.comparability_key(rec)
        return rec

    def _run_cell(self, cell: Cell, source: ImageSource, extractor) -> CellResult | None:
        preset = self.plan.preset(cell.dataset)
        roles = create_method(self.regs, cell.method, preset=preset, params=self.plan.params.get(cell.method))
        # a role tagged ``distributed`` runs on every rank (fit / every compare call of the
        # evaluation, in the same order); the rest of the cell runs on rank 0 alone
        collective = {role for role, obj in roles.items() if tags_of(type(obj)).distributed}
        if not self.ctx.is_main and not collective:
            return None   # rank 0 runs it; this rank goes on to the next collective step
        rec = self._base_record(cell, source, extractor, roles, preset)
        path = self.runs.path(rec)
        finished = self.runs.finished(rec) if self.cfg.resume else None
        if collective:
            finished = distributed.broadcast_object(finished)   # every rank skips it, or none does
        if finished is not None:
            return CellResult(finished, path, skipped=True) if self.ctx.is_main else None
        spec = self.plan.specs[cell.dataset]
        if not self.ctx.is_main:   # train along; rank 0 evaluates and records
            self._follow(roles, collective, spec, self._view(source, extractor), cell.seed)
            return None
        view = self._view(source, extractor, artefacts=artefact_dir(path))
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        metrics: dict[str, float] = {}
        seed = cell.seed

        def summarise() -> None:
            if any("features" in tags_of(type(o)).requires for o in roles.values()):
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
                    metrics.update(self._evaluate_summary(est.summary_, view, cell.method, seed, rec, path))

        def compare() -> None:
            t0 = time.perf_counter()
            with contextlib.nullcontext() if "comparator" in collective else distributed.solo():
                cmetrics, detail = evaluate_comparator(roles["comparator"], view, seed=seed, spec=spec)
            rec.timings_s["compare"] = time.perf_counter() - t0
            metrics.update(cmetrics)
            if "ladder" in detail:
                rec.tables["fidelity_ladder"] = detail["ladder"]
            if "between_detail" in detail:
                self.runs.save_artefacts(path, {"comparison": detail["between_detail"]}, kind="comparison")

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
        saved = self.runs.save(rec)
        self._notify(rec, saved)
        return CellResult(rec, saved)

    def _notify(self, rec: records.Record, path: Path) -> None:
        """``bench_record_written`` of every plugin, each isolated: a raising hook is one warning."""
        for name, _, exc in plugins.call_each(self.regs.manager, "bench_record_written", record=rec, path=str(path)):
            if exc is not None:
                self.echo(f"warning: plugin {name}'s bench_record_written raised {plugins.first_line(exc)}")

    def _follow(self, roles, collective: set[str], spec, view: DataView, seed: int) -> None:
        """A rank > 0's part of a cell: the collective roles' calls, in rank 0's order."""
        if "summariser" in collective:
            with contextlib.suppress(BenchError):   # rank 0 meets the same error and records it
                roles["summariser"].fit(view, seed=seed)
        if "comparator" in collective and distributed.broadcast_object(None):   # rank 0 says whether
            with contextlib.suppress(BenchError):
                evaluate_comparator(roles["comparator"], view, seed=seed, spec=spec)

    def _attempt(self, step: Callable[[], None], rec: records.Record, path: Path) -> bool:
        """Run one step of a cell; a failure becomes the record's one-line error (the traceback of an
        unexpected one goes next to the record) and the grid goes on."""
        try:
            step()
            return True
        except BenchError as exc:
            rec.status, rec.error, rec.error_kind = "error", str(exc), "input"
        except Exception as exc:  # noqa: BLE001 - a method bug must not end the grid
            rec.status, rec.error, rec.error_kind = "error", f"{type(exc).__name__}: {exc}".splitlines()[0], "crash"
            log_path = self.runs.save_traceback(path, traceback.format_exc())
            rec.error += f" (traceback: {log_path})"
        return False

    def _evaluate_summary(self, summary, view: DataView, method: str, seed: int, rec: records.Record,
                          path: Path) -> dict[str, float]:
        """Harness metrics of a fitted summariser; its statistics, tables and artefacts into the record."""
        validate_summary(summary, len(view), method)
        t0 = time.perf_counter()
        metrics = self.evaluator.summary(summary, view, seed=seed)
        rec.timings_s["evaluate"] = time.perf_counter() - t0
        rec.statistics.update({k: _float_or_none(v) for k, v in summary.statistics.items()})
        tables = summary.artefacts.get("tables") or {}
        rec.tables.update({k: jsonable(v) for k, v in tables.items()})
        artefacts = dict(summary.artefacts)
        if summary.codes is not None:
            artefacts.setdefault("codes", np.asarray(summary.codes))
        self.runs.save_artefacts(path, artefacts)
        return metrics
