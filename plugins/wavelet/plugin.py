"""Entry point ``wavelet = "bench_wavelet.plugin"``: registers the Summariser and Comparator."""

from __future__ import annotations

import bench


@bench.hookimpl
def bench_register_summarisers(registry):
    registry.add("wavelet", "bench_wavelet.methods:WaveletSummariser", origin="bench_wavelet.plugin")


@bench.hookimpl
def bench_register_comparators(registry):
    registry.add("wavelet", "bench_wavelet.methods:WaveletComparator", origin="bench_wavelet.plugin")


@bench.hookimpl
def bench_report_sections(run):
    """This plugin's section of ``bench report`` (None when the run has no wavelet record)."""
    from .report import wavelet_section

    return wavelet_section(run)
