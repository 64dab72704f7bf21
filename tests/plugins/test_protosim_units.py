"""ProtoSim building blocks against known answers: torch's gumbel_softmax, hand-computed DINO
loss / EMA / centring, torchvision's colour ops and resize, the 95 % rule on a hand-made table."""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from bench_protosim import augment as A
from bench_protosim.analysis import (
    cls_proportion,
    jensen_shannon,
    prototype_types,
    rank_shared,
    rank_specific,
    wilson_lower,
)
from bench_protosim.dino import (
    DINOLoss,
    cancel_last_layer_gradients,
    clip_gradients,
    cosine_scheduler,
    ema_update,
    param_groups,
)
from bench_protosim.layer import (
    ProtoSimLayer,
    ProtoSimNet,
    WeightNormLinear,
    gumbel_noise,
    gumbel_softmax,
    step_memory_bytes,
)
from scipy.spatial.distance import jensenshannon
from scipy.stats import gumbel_r, kstest

from bench.errors import BenchError

# ----------------------------------------------------------------------------- layer


@pytest.mark.parametrize("hard", [False, True])
def test_gumbel_softmax_matches_torch(hard):
    logits = torch.randn(7, 11)
    torch.manual_seed(3)
    ref = F.gumbel_softmax(logits, tau=1.0, hard=hard, dim=-1)
    torch.manual_seed(3)
    torch_noise = -torch.empty_like(logits).exponential_().log()     # the draw F.gumbel_softmax makes
    ours = gumbel_softmax(logits, tau=1.0, hard=hard, dim=-1, noise=torch_noise)
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)


def test_gumbel_noise_is_standard_gumbel():
    torch.manual_seed(0)
    sample = gumbel_noise(torch.empty(200_000)).double().numpy()
    assert kstest(sample, gumbel_r.cdf).pvalue > 0.01
    assert sample.mean() == pytest.approx(np.euler_gamma, abs=0.01)


def test_hard_assignment_is_one_hot_with_straight_through_gradient():
    torch.manual_seed(0)
    layer = ProtoSimLayer(16, 8)
    z = torch.randn(2, 5, 8)
    out = layer(z, hard=True, gumbel=False)
    ids = layer.assign(z)
    torch.testing.assert_close(out, layer.prototypes[ids].detach())  # every token → its prototype
    a = gumbel_softmax(layer.logits(z), hard=True, gumbel=False)
    assert torch.equal(a.detach().sum(-1), torch.ones(2, 5))
    assert set(a.detach().unique().tolist()) == {0.0, 1.0}

    # straight-through: the gradient w.r.t. the logits is the soft one
    logits = torch.randn(4, 6, requires_grad=True)
    w = torch.randn(4, 6)
    (gumbel_softmax(logits, hard=True, gumbel=False) * w).sum().backward()
    g_hard = logits.grad.clone()
    logits.grad = None
    (gumbel_softmax(logits, hard=False, gumbel=False) * w).sum().backward()
    torch.testing.assert_close(g_hard, logits.grad)
    assert g_hard.abs().sum() > 0

    # and the prototypes get gradient in hard mode
    layer.zero_grad()
    layer(z, hard=True, gumbel=True).pow(2).sum().backward()
    assert layer.prototypes.grad is not None and layer.prototypes.grad.abs().sum() > 0


def test_soft_layer_is_attention_weighted_prototypes():
    torch.manual_seed(1)
    layer = ProtoSimLayer(6, 4)
    layer.prototypes.data.mul_(0.1)
    z = torch.randn(3, 2, 4)
    a = torch.softmax(z @ layer.prototypes.detach().t(), dim=-1)   # a = softmax(p zᵀ) over prototypes
    torch.testing.assert_close(layer(z, gumbel=False).detach(), a @ layer.prototypes.detach())


def test_chunked_checkpointed_layer_matches_dense():
    """Checkpointed chunks recompute the same Gumbel noise in backward: same output, same gradient."""
    torch.manual_seed(0)
    layer = ProtoSimLayer(32, 8)
    z = torch.randn(3, 7, 8)
    flat = z.reshape(-1, 8)
    torch.manual_seed(5)
    dense = torch.cat([layer._quantise(c, True, True, 1.0) for c in flat.split(4)]).reshape(z.shape)
    dense.square().sum().backward()
    g_dense = layer.prototypes.grad.clone()
    layer.zero_grad()
    torch.manual_seed(5)
    chunked = layer(z, hard=True, chunk_tokens=4)
    chunked.square().sum().backward()
    torch.testing.assert_close(chunked, dense)
    torch.testing.assert_close(layer.prototypes.grad, g_dense)
    with torch.no_grad():
        torch.testing.assert_close(layer(z, gumbel=False, chunk_tokens=4), layer(z, gumbel=False))


def test_initial_prototype_diversity_is_three_quarters():
    torch.manual_seed(0)
    layer = ProtoSimLayer(512, 384)
    p = F.normalize(layer.prototypes.detach(), dim=1)
    sim = p @ p.t()
    brute = (sim.sum() - sim.diagonal().sum()) / (512 * 511)
    assert layer.diversity() == pytest.approx(float(brute), abs=1e-5)
    assert layer.diversity() == pytest.approx(0.75, abs=0.01)   # E[x]^2 / E[x^2] = 0.25 / (1/3)


def test_gradient_flows_only_into_prototypes_block_and_head():
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=24,
                            depth=1, num_heads=2, num_classes=0, dynamic_img_size=True).eval()
    net = ProtoSimNet(dim=24, n_prototypes=10, norm=vit.norm, out_dim=16, head_hidden_dim=12,
                      head_bottleneck_dim=6)
    with torch.no_grad():
        tok = vit.forward_features(torch.randn(2, 3, 32, 32))
    out = net(tok, hard=False)
    assert tok.shape == (2, 17, 24) and out.shape == (2, 16)
    out.square().sum().backward()
    assert all(p.grad is None for p in vit.parameters())
    assert all(p.grad is None for p in net.norm.parameters())          # the frozen norm, applied again
    trainable = dict(net.trainable_named_parameters())
    assert "protosim.prototypes" in trainable and any(k.startswith("block.") for k in trainable)
    for name, p in trainable.items():
        assert p.grad is not None, name
    assert net.protosim.prototypes.grad.abs().sum() > 0
    # weight-norm gain of the last layer stays frozen (norm_last_layer)
    assert not net.head.last_layer.weight_g.requires_grad


# ----------------------------------------------------------------------------- DINO


def test_dino_loss_hand_computed():
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0]])            # teacher: 2 global crops, batch 1
    s = torch.tensor([[0.5, 0.0], [0.0, 0.0], [1.0, -1.0]])  # student: 3 crops
    loss_fn = DINOLoss(2, n_crops=3, student_temp=1.0, teacher_temp=0.5, center_momentum=0.9)
    loss = loss_fn(s, t)
    e = math.exp(2.0)
    q1, q2 = [e / (e + 1), 1 / (e + 1)], [1 / (e + 1), e / (e + 1)]

    def ce(q, logits):
        lse = math.log(sum(math.exp(v) for v in logits))
        return -sum(qi * (li - lse) for qi, li in zip(q, logits))

    expected = (ce(q1, [0.0, 0.0]) + ce(q1, [1.0, -1.0]) + ce(q2, [0.5, 0.0]) + ce(q2, [1.0, -1.0])) / 4
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    # centring: c ← 0.9·0 + 0.1·mean(teacher outputs)
    torch.testing.assert_close(loss_fn.center, torch.tensor([[0.05, 0.05]]))
    loss_fn(s, torch.tensor([[3.0, 1.0], [1.0, 1.0]]))
    expected = torch.tensor([[0.9 * 0.05 + 0.1 * 2.0, 0.9 * 0.05 + 0.1 * 1.0]])
    torch.testing.assert_close(loss_fn.center, expected)


def test_ema_updates_trainable_parameters_only():
    student = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.LayerNorm(2))
    teacher = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.LayerNorm(2))
    student[1].requires_grad_(False)
    with torch.no_grad():
        student[0].weight.fill_(1.0)
        teacher[0].weight.fill_(3.0)
        student[1].weight.fill_(5.0)
        teacher[1].weight.fill_(7.0)
    ema_update(teacher, student, 0.75)
    torch.testing.assert_close(teacher[0].weight, torch.full((2, 2), 0.75 * 3 + 0.25 * 1))
    torch.testing.assert_close(teacher[1].weight, torch.full((2,), 7.0))


def test_weight_norm_linear_matches_torch():
    torch.manual_seed(0)
    ours = WeightNormLinear(5, 3)
    ref = torch.nn.utils.parametrizations.weight_norm(torch.nn.Linear(5, 3, bias=False))
    with torch.no_grad():
        ref.parametrizations.weight.original1.copy_(ours.weight_v)
        ref.parametrizations.weight.original0.fill_(1.0)
    x = torch.randn(4, 5)
    torch.testing.assert_close(ours(x), ref(x))


def test_schedules_clipping_and_last_layer_freeze():
    s = cosine_scheduler(0.996, 1.0, epochs=3, niter_per_ep=4)
    assert len(s) == 12 and s[0] == pytest.approx(0.996) and s[-1] == pytest.approx(1.0, abs=1e-4)
    assert np.all(np.diff(s) >= 0)
    w = cosine_scheduler(2.5e-4, 5e-5, epochs=4, niter_per_ep=2, warmup_epochs=2)
    assert w[0] == 0 and w[3] == pytest.approx(2.5e-4) and w[-1] > 5e-5 and w[4] == pytest.approx(2.5e-4)

    lin = torch.nn.Linear(3, 2)
    lin.weight.grad = torch.full((2, 3), 10.0)
    lin.bias.grad = torch.tensor([0.1, 0.0])
    clip_gradients(lin, 3.0)
    assert float(lin.weight.grad.norm()) == pytest.approx(3.0, rel=1e-5)      # clipped per parameter
    torch.testing.assert_close(lin.bias.grad, torch.tensor([0.1, 0.0]))       # small one untouched

    net = ProtoSimNet(dim=8, n_prototypes=4, norm=torch.nn.LayerNorm(8), out_dim=5, head_hidden_dim=6,
                      head_bottleneck_dim=3)
    net(torch.randn(2, 3, 8)).sum().backward()
    cancel_last_layer_gradients(0, net, freeze_last_layer=1)
    assert all(p.grad is None for n, p in net.named_parameters() if "last_layer" in n)
    groups = param_groups(net)
    assert any(p is net.protosim.prototypes for p in groups[0]["params"])     # decayed, as in DINO
    assert all(p.ndim == 1 for p in groups[1]["params"]) and groups[1]["weight_decay"] == 0.0


def test_memory_estimate_is_the_papers_dense_logits():
    # paper size: 128 × (2·197 + 8·37) tokens × 8192 prototypes ≈ 723 M floats per dense copy
    est = step_memory_bytes(batch_size=128, n_prototypes=8192, tokens_global=197, tokens_local=37,
                            n_local_crops=8, out_dim=65536, dim=384, chunk_tokens=None)
    dense_copy = 128 * (2 * 197 + 8 * 37) * 8192 * 4
    assert 4 * dense_copy < est < 6 * dense_copy
    chunked = step_memory_bytes(batch_size=128, n_prototypes=8192, tokens_global=197, tokens_local=37,
                                n_local_crops=8, out_dim=65536, dim=384, chunk_tokens=16384)
    assert chunked < est / 3


# ----------------------------------------------------------------------------- augmentation


def _img(b=3, h=20, w=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, h, w, generator=g)


@pytest.mark.parametrize("name,ours,theirs,factor", [
    ("brightness", A.adjust_brightness, TF.adjust_brightness, 1.3),
    ("contrast", A.adjust_contrast, TF.adjust_contrast, 0.7),
    ("saturation", A.adjust_saturation, TF.adjust_saturation, 1.15),
    ("hue", A.adjust_hue, TF.adjust_hue, -0.08),
])
def test_colour_ops_match_torchvision(name, ours, theirs, factor):
    x = _img()
    got = ours(x, torch.full((3,), factor))
    want = torch.stack([theirs(im, factor) for im in x])
    torch.testing.assert_close(got, want, atol=2e-5, rtol=0)


def test_grayscale_blur_and_resize_match_torchvision():
    x = _img()
    torch.testing.assert_close(A.grayscale(x), TF.rgb_to_grayscale(x), atol=1e-6, rtol=0)
    sig = torch.tensor([0.5, 1.0, 1.7])
    got = A.gaussian_blur(x, sig, 7)
    want = torch.stack([TF.gaussian_blur(im, [7, 7], [float(s), float(s)]) for im, s in zip(x, sig)])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    # a crop resized up (1 sample per bin) is plain bilinear resizing with half-pixel centres
    box = torch.tensor([[4.0, 2.0, 16.0, 14.0]] * 3)
    up = A.crop_resize(x, box, 30, sampling_ratio=1)
    ref = F.interpolate(x[:, :, 2:14, 4:16], size=(30, 30), mode="bilinear", align_corners=False)
    torch.testing.assert_close(up[:, :, 2:-2, 2:-2], ref[:, :, 2:-2, 2:-2], atol=1e-5, rtol=0)


def test_random_resized_crop_boxes_follow_torchvision_rule():
    torch.manual_seed(0)
    sizes = torch.tensor([[64, 64], [40, 90], [90, 40], [3, 200]] * 50)
    boxes = A.random_resized_crop_boxes(sizes, (0.05, 0.4))
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 2] <= sizes[:, 1]).all() and (boxes[:, 3] <= sizes[:, 0]).all() and (w > 0).all()
    area = (w * h) / (sizes[:, 0] * sizes[:, 1])
    normal = sizes[:, 0] > 3
    assert area[normal].max() <= 0.45 and area[normal].min() >= 0.03
    # an impossible aspect falls back to the central crop of ratio 4/3, like torchvision
    assert torch.all(h[~normal] == 3) and torch.all(w[~normal] == 4) and torch.all(boxes[~normal, 0] == 98)


def test_multicrop_shapes_and_padding():
    torch.manual_seed(0)
    images = torch.zeros(2, 40, 50, 3, dtype=torch.uint8)
    images[0, :20, :30] = 200                          # image 0 is 20×30, zero-padded
    sizes = torch.tensor([[20, 30], [40, 50]])
    aug = A.MultiCrop(global_size=16, local_size=8, n_local=3, mean=(0.5,) * 3, std=(0.5,) * 3)
    crops = aug(images, sizes)
    assert [tuple(c.shape) for c in crops] == [(2, 3, 16, 16)] * 2 + [(2, 3, 8, 8)] * 3
    assert all(torch.isfinite(c).all() for c in crops)
    torch.manual_seed(1)
    a = A.MultiCrop(global_size=16, local_size=8, n_local=1)(images, sizes)
    torch.manual_seed(1)
    b = A.MultiCrop(global_size=16, local_size=8, n_local=1)(images, sizes)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


# ----------------------------------------------------------------------------- analysis


def test_95_percent_rule_on_a_hand_made_table():
    counts = np.array([[96, 95, 50, 0, 1, 20, 0],
                       [4, 5, 50, 0, 0, 0, 3]])
    t = prototype_types(counts, 0.95)
    #               96/100 → specific; 95/100 is not "over 95 %"; 50/50 shared; unused; 1/1; 20/20; 3/3
    assert t.specific.tolist() == [True, False, False, False, True, True, True]
    assert t.shared.tolist() == [False, True, True, False, False, False, False]
    assert t.used.tolist() == [True, True, True, False, True, True, True]
    assert t.owner.tolist() == [0, 0, 0, -1, 0, 0, 1]
    # most specific first by the Wilson lower bound of the share: 96/100 (0.90) > 20/20 (0.84) > 1/1 (0.21)
    assert rank_specific(t, counts, 0).tolist() == [0, 5, 4]
    assert rank_specific(t, counts, 1).tolist() == [6]
    assert rank_shared(t, counts).tolist() == [1, 2]                 # equally frequent: lower id first
    # size-normalised: group 1 is 30× smaller, so 4 of its images weigh like 120
    tn = prototype_types(counts, 0.95, group_sizes=np.array([3000, 100]))
    assert not tn.specific[0] and tn.specific[6]
    # one dataset: nothing is "specific", everything used is shared (summarisation)
    single = prototype_types(counts[:1], 0.95)
    assert not single.specific.any() and single.shared.sum() == 5


def test_wilson_lower_bound():
    # the Wilson 95 % interval of 96/100 is [0.9016, 0.9843]
    assert wilson_lower(np.array([0.96]), np.array([100]))[0] == pytest.approx(0.9016, abs=1e-4)
    assert wilson_lower(np.array([1.0]), np.array([1]))[0] == pytest.approx(1 / (1 + 1.96**2))


def test_cls_proportion_and_jensen_shannon():
    prop = cls_proportion(np.array([[2, 0, 0]]), np.array([[2, 5, 0]]))
    assert prop[0] == 0.5 and prop[1] == 0 and np.isnan(prop[2])
    p, q = np.array([3, 1, 0, 4]), np.array([0, 2, 2, 4])
    assert jensen_shannon(p, q) == pytest.approx(jensenshannon(p, q, base=2) ** 2)
    assert jensen_shannon(p, p) == pytest.approx(0.0) and jensen_shannon([1, 0], [0, 1]) == pytest.approx(1.0)


def test_memory_check_raises_one_line_error():
    from bench_protosim.train import TrainConfig, check_memory

    class _BB:
        dim = 384
        num_prefix_tokens = 1

        def n_tokens(self, size):
            return (size // 16) ** 2 + 1

    with pytest.raises(BenchError, match=r"K=8192 needs about \d+\.\d GiB.*chunk_tokens") as err:
        check_memory(TrainConfig(), _BB(), 128, torch.device("cpu"), limit_gb=1.0)
    assert "\n" not in str(err.value)
    check_memory(TrainConfig(n_prototypes=16, batch_size=2), _BB(), 2, torch.device("cpu"), limit_gb=1.0)


def test_dino_heads_load_from_a_full_checkpoint(tmp_path):
    """As the reference: DINO's student head into the student, its teacher head into the teacher."""
    from bench_protosim.train import load_dino_heads

    def net():
        return ProtoSimNet(dim=8, n_prototypes=4, norm=torch.nn.LayerNorm(8), out_dim=5, head_hidden_dim=6,
                           head_bottleneck_dim=3)

    torch.manual_seed(0)
    s_src, t_src = net(), net()
    ckpt = {"student": {**{f"module.head.{k}": v for k, v in s_src.head.state_dict().items()},
                        "module.backbone.cls_token": torch.zeros(1, 1, 8)},
            "teacher": {f"head.{k}": v for k, v in t_src.head.state_dict().items()}, "epoch": 99,
            "args": argparse.Namespace(arch="vit_small", lr=0.0005, out_dim=5)}   # as DINO's main_dino.py saves
    path = tmp_path / "dino_full_checkpoint.pth"
    torch.save(ckpt, path)
    student, teacher = net(), net()
    load_dino_heads(str(path), student, teacher)
    for a, b in zip(student.head.state_dict().values(), s_src.head.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(teacher.head.state_dict().values(), t_src.head.state_dict().values()):
        assert torch.equal(a, b)
    wrong = ProtoSimNet(dim=8, n_prototypes=4, norm=torch.nn.LayerNorm(8), out_dim=7, head_hidden_dim=6,
                        head_bottleneck_dim=3)
    with pytest.raises(BenchError, match="does not fit out_dim"):
        load_dino_heads(str(path), wrong, net())
    with pytest.raises(BenchError, match="not a file"):
        load_dino_heads(str(tmp_path / "missing.pth"), net(), net())
    # anything else is refused without running it, and the message never suggests weights_only=False
    marker = tmp_path / "pwned"
    torch.save({**ckpt, "args": _Payload(marker)}, tmp_path / "crafted.pth")
    with pytest.raises(BenchError, match="Python objects besides tensors") as err:
        load_dino_heads(str(tmp_path / "crafted.pth"), net(), net())
    assert not marker.exists() and "weights_only" not in str(err.value)


class _Payload:
    """Unpickling this runs ``os.system`` and leaves a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)
