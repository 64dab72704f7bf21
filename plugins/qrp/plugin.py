"""Registration of the qrp plugin: the ``qrp`` Summariser and its concept experts."""

from __future__ import annotations

import bench


@bench.hookimpl
def bench_register_summarisers(registry):
    registry.add("qrp", "bench_qrp.method:QRP")


@bench.hookimpl
def bench_register_experts(registry):
    registry.add("ground-truth", "bench_qrp.experts:GroundTruthExpert")
    registry.add("clip-zeroshot", "bench_qrp.experts:ClipZeroShotExpert")


@bench.hookimpl
def bench_report_sections(run):
    """This plugin's section of ``bench report`` (None when the run has no qrp record)."""
    from .report import qrp_section

    return qrp_section(run)
