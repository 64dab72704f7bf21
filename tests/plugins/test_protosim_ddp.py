"""ProtoSim under DDP: per-sample randomness that ignores how a global batch is split over ranks,
and 2-process training (torchrun, gloo, CPU) against the single-process run of the same global batch.

Tolerance of the 2-process run: every weight within atol 1e-6 + rtol 1e-5 of the single
process (measured ≤ 1.2e-7: float reduction order in the gradient all-reduce and the centre
sum only), the centre within 1e-6, losses within rtol 1e-6. One exception: the attention's key
bias, whose gradient is zero in exact arithmetic (softmax ignores a shift of all logits), so
Adam turns float noise into steps of up to lr each; it is only held to lr × steps.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from bench_protosim.augment import MultiCrop
from bench_protosim.layer import ProtoSimNet
from bench_protosim.method import ProtoSim
from bench_protosim.shard import Shard, draw
from protosim_ddp_worker import FIT, RUNS, SEED, TINY, final_state, make_trainer, tiny_view

from bench.testing import needs_gloo

WORKER = Path(__file__).with_name("protosim_ddp_worker.py")
pytestmark = pytest.mark.usefixtures("one_thread")


def _halves(total: int) -> list[Shard]:
    return [Shard(0, total // 2, total), Shard(total // 2, total, total)]


def test_shards_tile_a_crop_major_draw():
    full = torch.arange(3 * 8 * 5)                                   # 3 crops × 8 rows × 5 tokens
    parts = [draw(s, 3 * 4, torch.arange, per_row=5) for s in _halves(8)]
    for s, part in zip(_halves(8), parts):
        assert torch.equal(part, full[s.positions(3 * 4, per_row=5)])
        assert torch.equal(part.view(3, 4, 5), full.view(3, 8, 5)[:, s.lo:s.hi])
    assert torch.equal(torch.sort(torch.cat(parts)).values, full)


def test_sharded_multicrop_gives_each_image_its_single_process_crops():
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (6, 20, 24, 3), dtype=np.uint8))
    sizes = torch.tensor([[20, 24], [12, 24], [20, 9]] * 2)
    aug = MultiCrop(global_size=16, local_size=8, n_local=2)
    torch.manual_seed(5)
    full = aug(images, sizes)
    for s in _halves(6):
        torch.manual_seed(5)
        part = aug(images[s.lo:s.hi], sizes[s.lo:s.hi], shard=s)
        for a, b in zip(full, part):
            torch.testing.assert_close(b, a[s.lo:s.hi], rtol=0, atol=1e-6)


@pytest.mark.parametrize("chunk_tokens", [None, 7])
def test_sharded_forward_matches_the_full_batch(chunk_tokens):
    """Gumbel noise (whole or chunked, chunks straddling the ranks) and drop-path masks."""
    torch.manual_seed(0)
    net = ProtoSimNet(dim=12, n_prototypes=6, norm=torch.nn.LayerNorm(12), out_dim=5, head_hidden_dim=8,
                      head_bottleneck_dim=4, block_heads=2, drop_path=0.5).train()
    tok_g, tok_l = torch.randn(2 * 6, 5, 12), torch.randn(3 * 6, 2, 12)   # crop-major, global batch 6
    kw = {"hard": True, "gumbel": True, "chunk_tokens": chunk_tokens}
    torch.manual_seed(1)
    full = net([tok_g, tok_l], **kw)
    for s in _halves(6):
        mine = [t.unflatten(0, (-1, 6))[:, s.lo:s.hi].flatten(0, 1) for t in (tok_g, tok_l)]
        torch.manual_seed(1)
        part = net(mine, shard=s, **kw)
        torch.testing.assert_close(part.unflatten(0, (5, 3)), full.unflatten(0, (5, 6))[:, s.lo:s.hi])


def test_block_is_timms_block():
    """``ProtoSimNet._block`` re-states timm's Block.forward to shard its drop-path draws."""
    net = ProtoSimNet(dim=12, n_prototypes=6, norm=torch.nn.LayerNorm(12), out_dim=5, head_hidden_dim=8,
                      head_bottleneck_dim=4, block_heads=2, drop_path=0.5).train()
    x = torch.randn(7, 5, 12)
    torch.manual_seed(2)
    ours = net._block(x, None)
    torch.manual_seed(2)
    assert torch.equal(ours, net.block(x))


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("protosim-ddp")
    out = work / "result.pt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(WORKER), str(work / "runs"), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return torch.load(out, weights_only=False)


def _assert_same_training(single: dict, multi: dict) -> None:
    steps = TINY["epochs"] * 24 // TINY["batch_size"]
    for part in ("student", "teacher"):
        for name, one in single[part].items():
            a, b = one, multi[part][name]
            if name.endswith("attn.qkv.bias"):                       # (q, k, v) biases
                (q, k, v), (qb, kb, vb) = a.chunk(3), b.chunk(3)
                assert (k - kb).abs().max() <= TINY["lr"] * steps
                a, b = torch.cat([q, v]), torch.cat([qb, vb])
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=f"{part} {name}")
    torch.testing.assert_close(multi["center"], single["center"], rtol=0, atol=1e-6)
    assert single["epoch"] == multi["epoch"] == TINY["epochs"] - 1
    for a, b in zip(single["history"][1:], multi["history"][1:], strict=True):   # [0]: before training
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)
        assert a["hard"] == b["hard"]


@needs_gloo
@pytest.mark.parametrize("run", list(RUNS))
def test_two_processes_match_the_single_process_run(two_processes, run, tmp_path):
    make_trainer(tmp_path, **RUNS[run]).run()
    _assert_same_training(final_state(tmp_path), two_processes["states"][run])
    # every rank ends with bit-identical student and teacher (synced gradients, local EMA)
    assert len({r[run] for r in two_processes["ranks"]}) == 1


@needs_gloo
def test_two_processes_resume_and_checkpoint_on_rank_zero(two_processes):
    assert two_processes["stopped_at_epoch"] == 1 and two_processes["resumed_from_epoch"] == 0
    resumed, full = two_processes["states"]["resumed"], two_processes["states"]["chunk"]
    for part in ("student", "teacher"):
        for name, value in full[part].items():
            assert torch.equal(resumed[part][name], value), name
    assert torch.equal(resumed["center"], full["center"]) and resumed["history"] == full["history"]
    assert len({r["resumed"] for r in two_processes["ranks"]}) == 1
    assert two_processes["files"] == {run: ["checkpoint.safetensors"] for run in [*RUNS, "resumed"]}
    assert "divisible by the 2 ranks" in two_processes["odd_batch_error"]


@needs_gloo
def test_fit_trains_on_every_rank_and_reports_on_rank_zero(two_processes):
    main, other = (r["codes"] for r in two_processes["ranks"])
    assert other is None
    single = ProtoSim(**FIT).fit(tiny_view(), seed=SEED).summary_
    np.testing.assert_array_equal(main, single.codes)
