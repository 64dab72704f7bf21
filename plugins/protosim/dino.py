"""DINO training pieces, as in ``facebookresearch/dino`` ``main_dino.py`` / ``utils.py``.

Loss with centring and temperatures, teacher EMA, cosine schedules, per-parameter gradient
clipping and the last-layer freeze of the first epoch.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.distributed import all_reduce_sum, context


class DINOLoss(nn.Module):
    """Cross-entropy between the centred, sharpened teacher and the student over view pairs.

    The teacher sees the 2 global crops, the student every crop; each (teacher view q,
    student view v ≠ q) pair is one term, and the loss is the mean over terms of the batch
    mean of -Σ q·log softmax(s/τ_s). The centre is an EMA of the teacher's batch mean; with
    ``distributed`` (every rank of the process group calls the loss on its share of the batch)
    that mean is over the global batch, so all ranks keep one centre.
    """

    def __init__(self, out_dim: int, *, n_crops: int, student_temp: float = 0.1, teacher_temp: float = 0.04,
                 center_momentum: float = 0.9, distributed: bool = False):
        super().__init__()
        self.distributed = distributed
        self.n_crops = n_crops
        self.student_temp = student_temp
        self.teacher_temp = teacher_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def forward(self, student_output: torch.Tensor, teacher_output: torch.Tensor) -> torch.Tensor:
        """student_output (n_crops·B, out), teacher_output (2·B, out), both crop-major."""
        student_out = (student_output.float() / self.student_temp).chunk(self.n_crops)
        teacher_out = F.softmax((teacher_output.float() - self.center) / self.teacher_temp, dim=-1)
        teacher_out = teacher_out.detach().chunk(2)
        total = student_output.new_zeros((), dtype=torch.float32)
        n_terms = 0
        for iq, q in enumerate(teacher_out):
            for v, s in enumerate(student_out):
                if v == iq:
                    continue
                total = total + torch.sum(-q * F.log_softmax(s, dim=-1), dim=-1).mean()
                n_terms += 1
        self.update_center(teacher_output)
        return total / n_terms

    @torch.no_grad()
    def update_center(self, teacher_output: torch.Tensor) -> None:
        """center ← m·center + (1 - m)·mean(teacher outputs), the sum all-reduced under DDP (as DINO)."""
        total = teacher_output.float().sum(dim=0, keepdim=True)
        count = len(teacher_output)
        if self.distributed:
            all_reduce_sum(total)
            count *= context().world_size
        batch_center = total / count
        self.center.mul_(self.center_momentum).add_(batch_center, alpha=1 - self.center_momentum)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher ← m·teacher + (1 - m)·student over the student's trainable parameters only.

    Frozen parameters are equal in both networks here (one backbone, one frozen norm), so the
    reference's EMA over all parameters would not move them either.
    """
    t_params = dict(teacher.named_parameters())
    for name, p in student.named_parameters():
        if p.requires_grad:
            t_params[name].mul_(momentum).add_(p.detach(), alpha=1 - momentum)


def cosine_scheduler(base_value: float, final_value: float, epochs: int, niter_per_ep: int,
                     warmup_epochs: int = 0, start_warmup_value: float = 0.0) -> np.ndarray:
    """DINO's per-iteration schedule: linear warm-up, then half a cosine to ``final_value``."""
    warmup_iters = warmup_epochs * niter_per_ep
    warmup = np.linspace(start_warmup_value, base_value, warmup_iters) if warmup_iters > 0 else np.array([])
    iters = np.arange(epochs * niter_per_ep - warmup_iters)
    cos = np.cos(np.pi * iters / max(len(iters), 1))
    schedule = final_value + 0.5 * (base_value - final_value) * (1 + cos)
    schedule = np.concatenate((warmup, schedule))
    assert len(schedule) == epochs * niter_per_ep
    return schedule


def clip_gradients(model: nn.Module, clip: float) -> None:
    """DINO's clipping: each parameter's gradient norm separately capped at ``clip``."""
    for p in model.parameters():
        if p.grad is not None:
            norm = p.grad.detach().norm(2)
            coef = clip / (norm + 1e-6)
            p.grad.mul_(torch.clamp(coef, max=1.0))


def cancel_last_layer_gradients(epoch: int, model: nn.Module, freeze_last_layer: int) -> None:
    """DINO freezes the head's last layer for the first ``freeze_last_layer`` epochs."""
    if epoch >= freeze_last_layer:
        return
    for name, p in model.named_parameters():
        if "last_layer" in name:
            p.grad = None


def param_groups(model: nn.Module) -> list[dict]:
    """Weight decay on ≥2-D weights (prototypes included), none on biases and norms (DINO)."""
    regularised, not_regularised = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.endswith(".bias") or p.ndim == 1:
            not_regularised.append(p)
        else:
            regularised.append(p)
    return [{"params": regularised}, {"params": not_regularised, "weight_decay": 0.0}]
