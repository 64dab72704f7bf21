"""Registers the ``multicut`` Summariser and Comparator with bench."""

from __future__ import annotations

import bench


@bench.hookimpl
def bench_register_summarisers(registry):
    registry.add("multicut", "bench_multicut.method:Multicut")


@bench.hookimpl
def bench_register_comparators(registry):
    registry.add("multicut", "bench_multicut.method:MulticutComparator")


@bench.hookimpl
def bench_report_sections(run):
    """This plugin's section of ``bench report`` (None when the run has no multicut record)."""
    from .report import multicut_section

    return multicut_section(run)
