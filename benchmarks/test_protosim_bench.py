"""ProtoSim at the paper's size (K 8192, ViT-S/16 tokens: D 384, 197 global / 37 local tokens,
2 + 8 crops, DINO head out 65536) on CPU at a reduced batch.

* one full training step (teacher + student ProtoSim, block, head, DINO loss, backward, AdamW,
  EMA) on ViT-S-shaped tokens (the frozen backbone runs once per crop and is not part of it);
  peak RSS measured in a fresh process, dense vs ``chunk_tokens`` (checkpointed chunks);
* the layer alone against the reference formulation (``ProtoAttention``: (B, K, N) logits,
  ``F.gumbel_softmax(dim=1)``, ``aᵀ·P``) on the same tokens;
* the batched multi-crop augmentation against a per-image torchvision.transforms.v2 pipeline
  (DINO's ``DataAugmentationDINO`` on tensors) on the same images.

What the GPU path avoids: the backbone runs once per crop for student and teacher together
(frozen and identical), the teacher runs under no_grad (its (tokens, K) tensors are freed at
once), the Gumbel-softmax stays fp32 while block/head run in bf16, and with ``chunk_tokens``
the student's (tokens, K) logits/noise/softmax are rebuilt chunk by chunk in backward
(activation checkpointing with the same RNG state) instead of being stored — the dense
(B·crops·T, K) tensors (≈ 723 M floats per copy at batch 128) are never all alive.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2 as T
from bench_protosim.augment import MultiCrop
from bench_protosim.layer import ProtoSimLayer, step_memory_bytes

K, D, TG, TL, NL, OUT = 8192, 384, 197, 37, 8, 65536
B = 4                       # reduced from the paper's 128 for CPU
RESULTS: dict[str, dict] = {}

STEP = textwrap.dedent("""
    import json, resource, sys, time, torch
    from bench_protosim.dino import DINOLoss, clip_gradients, ema_update, param_groups
    from bench_protosim.layer import ProtoSimNet
    K, D, TG, TL, NL, OUT, B, chunk = {K}, {D}, {TG}, {TL}, {NL}, {OUT}, {B}, {chunk}
    torch.manual_seed(0)
    student = ProtoSimNet(dim=D, n_prototypes=K, norm=torch.nn.LayerNorm(D, eps=1e-6), out_dim=OUT)
    teacher = ProtoSimNet(dim=D, n_prototypes=K, norm=torch.nn.LayerNorm(D, eps=1e-6), out_dim=OUT)
    teacher.load_state_dict(student.state_dict()); teacher.requires_grad_(False).eval()
    opt = torch.optim.AdamW(param_groups(student), lr=5e-5)
    loss_fn = DINOLoss(OUT, n_crops=2 + NL)
    tg, tl = torch.randn(2 * B, TG, D), torch.randn(NL * B, TL, D)

    def step(hard, tg, tl):
        with torch.no_grad():
            t_out = teacher(tg, hard=False, chunk_tokens=chunk)
        s_out = torch.cat([student(tg, hard=hard, chunk_tokens=chunk),
                           student(tl, hard=hard, chunk_tokens=chunk)])
        loss = loss_fn(s_out, t_out)
        opt.zero_grad(set_to_none=True); loss.backward(); clip_gradients(student, 3.0); opt.step()
        ema_update(teacher, student, 0.996)
        return float(loss)

    # warm-up on 2 images: optimizer state and GEMM buffers, not the full dense tensors
    step(False, torch.cat([tg[:2], tg[B:B + 2]]), tl[:2 * NL])
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for i in range(2):
        t0 = time.perf_counter(); step(i % 2 == 1, tg, tl); times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({{"step_s": min(times), "peak_rss_mb": peak / 1024,
                      "step_extra_rss_mb": (peak - base) / 1024}}))
""")


def _run_step(chunk: int | None) -> dict:
    """A fresh process; a fixed mmap threshold makes glibc hand freed tensors back, so peak RSS
    follows live memory instead of the allocator's high-water mark."""
    code = STEP.format(K=K, D=D, TG=TG, TL=TL, NL=NL, OUT=OUT, B=B, chunk=chunk)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("chunk", [None, 512])
def test_train_step_paper_size(benchmark, chunk):
    """One step at K 8192 / ViT-S tokens / out 65536, batch 4: time and peak memory."""
    result = benchmark.pedantic(_run_step, args=(chunk,), rounds=1, iterations=1)
    sizes = dict(n_prototypes=K, tokens_global=TG, tokens_local=TL, n_local_crops=NL, out_dim=OUT, dim=D,
                 chunk_tokens=chunk)
    est = step_memory_bytes(batch_size=B, **sizes)
    paper = step_memory_bytes(batch_size=128, **sizes)
    benchmark.extra_info.update(result, estimate_mb=est / 2**20, paper_batch_estimate_gb=paper / 2**30)
    RESULTS[f"step_chunk_{chunk}"] = dict(benchmark.extra_info)
    assert result["step_s"] > 0


@pytest.fixture(scope="module")
def tokens():
    torch.manual_seed(0)
    return torch.randn(2 * B, TG, D)


def _reference_layer(z: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """``Nanne/ProtoSim`` ``ProtoAttention``: logits P·zᵀ (B, K, N), Gumbel-softmax over dim 1, aᵀ·P."""
    attn = prototypes @ z.transpose(1, 2)
    attn = F.gumbel_softmax(attn, tau=1, hard=False, dim=1)
    return attn.transpose(1, 2) @ prototypes


@pytest.mark.parametrize("impl", ["reference", "ours", "ours-chunked"])
def test_layer_forward_backward(benchmark, tokens, impl):
    layer = ProtoSimLayer(K, D)

    def run():
        layer.zero_grad(set_to_none=True)
        if impl == "reference":
            out = _reference_layer(tokens, layer.prototypes)
        else:
            out = layer(tokens, hard=False, chunk_tokens=512 if impl == "ours-chunked" else None)
        out.square().mean().backward()

    benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
    RESULTS[f"layer_{impl}"] = {"mean_s": benchmark.stats.stats.mean}


def _v2_pipeline(size: int, scale, blur_p: float, solarize_p: float) -> T.Compose:
    ops = [T.RandomResizedCrop(size, scale=scale, antialias=True), T.RandomHorizontalFlip(),
           T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8), T.RandomGrayscale(p=0.2),
           T.RandomApply([T.GaussianBlur(2 * ((23 * size // 224) // 2) + 1, sigma=(0.1, 2.0))], p=blur_p)]
    if solarize_p:
        ops.append(T.RandomSolarize(128, p=solarize_p))
    ops += [T.ToDtype(torch.float32, scale=True), T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))]
    return T.Compose(ops)


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (16, 224, 224, 3), dtype=torch.uint8, generator=g)


@pytest.mark.parametrize("impl", ["torchvision-v2-per-image", "batched"])
def test_multicrop(benchmark, images, impl):
    """DINO multi-crop (2 × 224 + 8 × 96) of 16 images of 224 px."""
    if impl == "batched":
        aug = MultiCrop()

        def fn():
            return aug(images)
    else:
        g1 = _v2_pipeline(224, (0.4, 1.0), 1.0, 0.0)
        g2 = _v2_pipeline(224, (0.4, 1.0), 0.1, 0.2)
        loc = _v2_pipeline(96, (0.05, 0.4), 0.5, 0.0)
        chw = images.permute(0, 3, 1, 2)

        def fn():
            crops = [torch.stack([g1(im) for im in chw]), torch.stack([g2(im) for im in chw])]
            crops += [torch.stack([loc(im) for im in chw]) for _ in range(8)]
            return crops

    benchmark.pedantic(fn, rounds=2, iterations=1, warmup_rounds=1)
    RESULTS[f"multicrop_{impl}"] = {"mean_s": benchmark.stats.stats.mean}


def test_zz_report():
    """Ratios of the runs above (printed with -s; stored in this test's output)."""
    lines = []
    if {"layer_reference", "layer_ours"} <= RESULTS.keys():
        r = RESULTS["layer_reference"]["mean_s"] / RESULTS["layer_ours"]["mean_s"]
        lines.append(f"layer fwd+bwd: reference/ours time ratio {r:.2f}")
    if {"multicrop_torchvision-v2-per-image", "multicrop_batched"} <= RESULTS.keys():
        r = RESULTS["multicrop_torchvision-v2-per-image"]["mean_s"] / RESULTS["multicrop_batched"]["mean_s"]
        lines.append(f"multi-crop: per-image v2 / batched time ratio {r:.2f}")
    for key in ("step_chunk_None", "step_chunk_512"):
        if key in RESULTS:
            lines.append(f"{key}: {json.dumps({k: round(v, 3) for k, v in RESULTS[key].items()})}")
    print("\n".join(lines))
    assert lines


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("chunk", [None, 16384])
def test_train_step_paper_size_cuda(benchmark, chunk):
    """The paper's full step on GPU: batch 128, K 8192, ViT-S tokens, 2 + 8 crops, out 65536,
    under bf16 autocast as the trainer runs it; time per step and peak CUDA memory."""
    from bench_protosim.dino import DINOLoss, clip_gradients, ema_update, param_groups
    from bench_protosim.layer import ProtoSimNet

    dev, batch = torch.device("cuda"), 128
    torch.manual_seed(0)
    student = ProtoSimNet(dim=D, n_prototypes=K, norm=torch.nn.LayerNorm(D, eps=1e-6), out_dim=OUT).to(dev)
    teacher = ProtoSimNet(dim=D, n_prototypes=K, norm=torch.nn.LayerNorm(D, eps=1e-6), out_dim=OUT).to(dev)
    teacher.load_state_dict(student.state_dict())
    teacher.requires_grad_(False).eval()
    opt = torch.optim.AdamW(param_groups(student), lr=5e-5)
    loss_fn = DINOLoss(OUT, n_crops=2 + NL).to(dev)
    tg, tl = torch.randn(2 * batch, TG, D, device=dev), torch.randn(NL * batch, TL, D, device=dev)

    def step(hard: bool) -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            with torch.no_grad():
                t_out = teacher(tg, hard=False, chunk_tokens=chunk)
            s_out = torch.cat([student(tg, hard=hard, chunk_tokens=chunk), student(tl, hard=hard, chunk_tokens=chunk)])
            loss = loss_fn(s_out, t_out)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        clip_gradients(student, 3.0)
        opt.step()
        ema_update(teacher, student, 0.996)
        torch.cuda.synchronize()

    step(False)
    torch.cuda.reset_peak_memory_stats(dev)
    benchmark.pedantic(step, args=(True,), rounds=3, iterations=1, warmup_rounds=1)
    peak = torch.cuda.max_memory_allocated(dev) / 2**30
    sizes = dict(n_prototypes=K, tokens_global=TG, tokens_local=TL, n_local_crops=NL, out_dim=OUT, dim=D,
                 chunk_tokens=chunk)
    benchmark.extra_info.update(peak_cuda_gb=peak, estimate_gb=step_memory_bytes(batch_size=batch, **sizes) / 2**30,
                                device=torch.cuda.get_device_name(dev))
    print(f"\nprotosim step on {torch.cuda.get_device_name(dev)}, batch {batch}, chunk {chunk}: "
          f"{benchmark.stats.stats.mean * 1000:.0f} ms/step, peak {peak:.1f} GiB "
          f"(estimate {benchmark.extra_info['estimate_gb']:.1f} GiB)")
