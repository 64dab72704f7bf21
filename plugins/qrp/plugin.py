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
