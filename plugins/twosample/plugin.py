"""Registers the ``kid``, ``prdc`` and ``c2st`` comparators with bench."""

from __future__ import annotations

import bench


@bench.hookimpl
def bench_register_comparators(registry):
    registry.add("kid", "bench_twosample.kid:KernelInceptionDistance")
    registry.add("prdc", "bench_twosample.prdc:PRDC")
    registry.add("c2st", "bench_twosample.c2st:C2ST")


@bench.hookimpl
def bench_report_sections(run):
    """This plugin's section of ``bench report`` (None when the run has no kid, prdc or c2st record)."""
    from .report import twosample_section

    return twosample_section(run)
