"""Registers the ``multicut`` Summariser and Comparator with bench."""

from __future__ import annotations

import bench


@bench.hookimpl
def bench_register_summarisers(registry):
    registry.add("multicut", "bench_multicut.method:Multicut")


@bench.hookimpl
def bench_register_comparators(registry):
    registry.add("multicut", "bench_multicut.method:MulticutComparator")
