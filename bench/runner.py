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
import logging
import resource
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench import distributed, plugins, records
from bench.api import DataView, tags_of
from bench.context import RunContext
from bench.datasets import load_source
from bench.datasets.base import ImageSource
from bench.errors import BenchError
from bench.evaluate import Evaluator, evaluate_comparator, validate_summary
from bench.factory import create_method
from bench.metrics import HIGHER_IS_BETTER
from bench.plan import Cell, Plan, RunConfig, make_plan
from bench.runstore import artefact_dir, jsonable

log = logging.getLogger("bench")

__all__ = ["CellResult", "RunConfig", "Runner"]


@dataclass
class CellResult:
    record: records.Record
    path: Path
    skipped: bool = False


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


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
        self.context = RunContext(config, self.regs)
        self.device, self.ctx = self.context.device, self.context.dist
        self.store, self.runs = self.context.store, self.context.runs
        self.evaluator = Evaluator()

    # -- the grid --------------------------------------------------------------------------
    def run(self) -> list[CellResult]:
        """Every cell of the plan. Under torchrun every rank calls this: the results (and records)
        are rank 0's; other ranks return an empty list."""
        extractor = self.context.extractor
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
        return self.context.view(source, artefacts=artefacts)

    # -- one cell ---------------------------------------------------------------------------
    def _base_record(self, cell: Cell, source: ImageSource, roles, preset: str) -> records.Record:
        spec = self.plan.specs[cell.dataset]
        return self.context.record(method=cell.method, roles=roles, seed=cell.seed, preset=preset,
                                   dataset=records.DatasetInfo(name=spec.name, revision=source.revision, n=source.n,
                                                               limit=self.cfg.limit, embedded=spec.embedded))

    def _run_cell(self, cell: Cell, source: ImageSource, extractor) -> CellResult | None:
        preset = self.plan.preset(cell.dataset)
        roles = create_method(self.regs, cell.method, preset=preset, params=self.plan.params.get(cell.method))
        # a role tagged ``distributed`` runs on every rank (fit / every compare call of the
        # evaluation, in the same order); the rest of the cell runs on rank 0 alone
        collective = {role for role, obj in roles.items() if tags_of(type(obj)).distributed}
        if not self.ctx.is_main and not collective:
            return None   # rank 0 runs it; this rank goes on to the next collective step
        rec = self._base_record(cell, source, roles, preset)
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
