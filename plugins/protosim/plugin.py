"""bench plugin entry point: registers ``protosim`` as a Summariser and as a Comparator."""

from __future__ import annotations

import bench


@bench.hookimpl
def bench_register_summarisers(registry) -> None:
    registry.add("protosim", "bench_protosim.method:ProtoSim", origin="bench_protosim")


@bench.hookimpl
def bench_register_comparators(registry) -> None:
    registry.add("protosim", "bench_protosim.method:ProtoSimComparator", origin="bench_protosim")


@bench.hookimpl
def bench_report_sections(run):
    """This plugin's section of ``bench report`` (None when the run has no protosim record)."""
    from .report import protosim_section

    return protosim_section(run)
