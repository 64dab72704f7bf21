"""Every hook a ``bench`` plugin can implement (pluggy project name ``"bench"``).

A plugin is a module (or object) exposed under the entry-point group ``bench``; its
functions are marked with ``bench.hookimpl``. Registration hooks receive a registry
object to fill (the ``tox_register_tox_env(register)`` model): hooks only register,
lifecycles stay in the harness. An implementation may accept fewer arguments than the
spec, so adding a parameter here never breaks an old plugin.

Example plugin (one file plus an entry point, see README)::

    import bench

    @bench.hookimpl
    def bench_register_summarisers(registry):
        registry.add("mymethod", MyMethod)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    from bench.registry import Registry
    from bench.reporting import ReportSection, RunData

hookspec = pluggy.HookspecMarker("bench")
hookimpl = pluggy.HookimplMarker("bench")


@hookspec
def bench_register_summarisers(registry: Registry) -> None:
    """Add Summariser classes: ``registry.add(name, cls)`` or a lazy ``"pkg.mod:Class"``.

    A Summariser subclasses :class:`bench.api.Summariser`: keyword-only constructor,
    ``fit(data: DataView, *, seed) -> self`` setting ``summary_: Summary``.
    """


@hookspec
def bench_register_comparators(registry: Registry) -> None:
    """Add Comparator classes (:class:`bench.api.Comparator`), ``compare(a, b, *, seed)``.

    A method name may be registered as both a Summariser and a Comparator; ``bench run
    --methods NAME`` then runs both roles and stores one record.
    """


@hookspec
def bench_register_datasets(registry: Registry) -> None:
    """Add :class:`bench.datasets.base.DatasetSpec` objects, keyed by dataset name."""


@hookspec
def bench_register_extractors(registry: Registry) -> None:
    """Add Extractor factories: ``registry.add(name, factory)`` where
    ``factory(weights: str | None, device) -> bench.extractors.base.Extractor``."""


@hookspec
def bench_register_experts(registry: Registry) -> None:
    """Add concept experts (:class:`bench.api.Expert`): each turns a DataView into groups
    of binary concepts per image (used by reverse probing)."""


@hookspec
def bench_record_written(record: Any, path: str) -> None:
    """Called after a run record is written atomically to ``path`` (loggers, exporters)."""


@hookspec
def bench_report_sections(run: RunData) -> list[ReportSection] | ReportSection | None:
    """Add sections to ``bench report RUN_DIR``: return a :class:`bench.reporting.ReportSection`
    (title, HTML fragment, figures, notes on what is missing), a list of them, or None when
    the run holds nothing of yours.

    ``run`` is a :class:`bench.reporting.RunData`: the run's records, their saved artefacts
    (``run.artefacts(record)``), tables, and the dataset images behind them
    (``run.source(record)``, ``run.montage(...)``). Read only what the run directory holds:
    a section must render from partial artefacts and say in ``notes`` what it could not
    show. A section that raises is shown as a one-line error, never ending the report.
    """
