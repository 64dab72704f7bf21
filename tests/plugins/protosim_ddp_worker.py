"""Started by ``test_protosim_ddp.py`` under ``torchrun`` (gloo, CPU): tiny ProtoSim training on
every rank; rank 0 saves what the test compares with the single-process run.

Runs, each in its own checkpoint directory under ``workdir``: ``plain`` (whole-batch Gumbel
noise), ``chunk`` (``chunk_tokens`` not aligned with the ranks' rows) and ``resumed`` (the
``chunk`` run stopped in epoch 1 on every rank, then started again from its checkpoint); then
``ProtoSim.fit`` as the runner calls it on every rank (1 epoch).
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import torch
import torch.distributed as dist
from bench_protosim.data import Backbone, ImageTable
from bench_protosim.method import ProtoSim
from bench_protosim.train import CHECKPOINT, TrainConfig, Trainer, read_checkpoint

from bench import distributed
from bench.api import DataView
from bench.errors import BenchError
from bench.extractors.timm_models import TinyViTExtractor
from bench.features import FeatureStore
from bench.testing import make_tiny_source

#: 24 images of 16 px, global batch 8 (3 steps an epoch), the hard switch in the last epoch;
#: drop-path stays at its default 0.1, so every kind of per-sample randomness is exercised
TINY = dict(n_prototypes=16, epochs=3, hard_epoch=2, batch_size=8, lr=5e-4, out_dim=32, head_hidden_dim=16,
            head_bottleneck_dim=8, global_crop_size=16, local_crop_size=8, n_local_crops=1)
RUNS = {"plain": {}, "chunk": {"chunk_tokens": 7}}
FIT = dict(TINY, epochs=1, hard_epoch=1, n_figure_prototypes=0)
SEED = 3


def tiny_view() -> DataView:
    """Tiny images through a 1-block tiny-vit (patch 8), on the CPU."""
    extractor = TinyViTExtractor(model_kwargs=dict(img_size=16, embed_dim=24, depth=1, num_heads=3))
    return DataView(make_tiny_source(24, size=16), extractor, FeatureStore(None))


def make_trainer(checkpoint_dir: Path, **over) -> Trainer:
    """The same trainer in every process."""
    view = tiny_view()
    return Trainer(TrainConfig.from_params({**TINY, **over}), Backbone(view.extractor, torch.device("cpu")),
                   ImageTable.from_view(view), seed=SEED, checkpoint_dir=checkpoint_dir)


def final_state(checkpoint_dir: Path) -> dict:
    state = read_checkpoint(checkpoint_dir / CHECKPOINT)
    return {k: state[k] for k in ("epoch", "student", "teacher", "center", "history")}


def digest(*modules: torch.nn.Module) -> str:
    """Bit-exact identity of the weights, to check that every rank holds the same ones."""
    h = hashlib.sha256()
    for m in modules:
        for t in m.state_dict().values():
            h.update(t.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


class Stop(Exception):
    """Raised on every rank at the same step: an interruption every rank sees."""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("workdir", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    ctx = distributed.init(torch.device("cpu"))
    report: dict = {"world_size": ctx.world_size}
    mine: dict = {}   # per rank, gathered on rank 0

    try:
        make_trainer(args.workdir / "unused", batch_size=7)
    except BenchError as exc:
        report["odd_batch_error"] = str(exc)

    for name, over in RUNS.items():
        result = make_trainer(args.workdir / name, **over).run()
        mine[name] = digest(result.student, result.teacher)

    def stop(epoch: int, it: int, loss: float) -> None:
        if (epoch, it) == (1, 1):
            raise Stop

    broken = make_trainer(args.workdir / "resumed", **RUNS["chunk"])
    broken.on_step = stop
    try:
        broken.run()
    except Stop:
        report["stopped_at_epoch"] = final_state(args.workdir / "resumed")["epoch"] + 1
    distributed.barrier()
    resumed = make_trainer(args.workdir / "resumed", **RUNS["chunk"]).run()
    report["resumed_from_epoch"] = resumed.resumed_from_epoch
    mine["resumed"] = digest(resumed.student, resumed.teacher)

    summary = ProtoSim(**FIT).fit(tiny_view(), seed=SEED).summary_
    mine["codes"] = None if summary is None else summary.codes

    gathered: list[dict] = [{}] * ctx.world_size
    dist.all_gather_object(gathered, mine)
    if ctx.is_main:
        report["ranks"] = gathered
        report["files"] = {d.name: sorted(p.name for p in d.iterdir()) for d in args.workdir.iterdir()}
        report["states"] = {name: final_state(args.workdir / name) for name in [*RUNS, "resumed"]}
        torch.save(report, args.out)
    distributed.shutdown()


if __name__ == "__main__":
    main()
