"""The ProtoSim layer and the network that follows it (van Noord, ICCV 2023; ``Nanne/ProtoSim``).

Tokens z (B, T, D) → logits z·Pᵀ over K prototypes → Gumbel-softmax over the prototype axis
(temperature 1) → every token replaced by aᵀP. As in the reference code, the layer is followed
by one trainable 1-head transformer block, a second pass of the backbone's frozen final norm,
and the DINO head on the class token (without that block, patch prototypes get no gradient).
"""

from __future__ import annotations

import copy
import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


def gumbel_noise(like: torch.Tensor) -> torch.Tensor:
    """Standard Gumbel noise -log(-log U), U ~ U[0, 1): the distribution of torch's
    ``-log(Exponential(1))`` draw, about 3× cheaper on CPU than ``exponential_``."""
    u = torch.empty_like(like, memory_format=torch.legacy_contiguous_format).uniform_()
    return u.log_().neg_().log_().neg_()


def gumbel_softmax(logits: torch.Tensor, *, tau: float = 1.0, hard: bool = False, gumbel: bool = True,
                   dim: int = -1, noise: torch.Tensor | None = None) -> torch.Tensor:
    """``F.gumbel_softmax`` (identical given the same ``noise``), plus ``gumbel=False``.

    ``gumbel=False`` is the reference's deterministic mode: a plain softmax, straight-through
    one-hot when ``hard``. Hard mode returns y_hard - sg(y_soft) + y_soft: one-hot values,
    the soft gradient.
    """
    if gumbel:
        logits = logits + (gumbel_noise(logits) if noise is None else noise)
    y_soft = (logits / tau).softmax(dim)
    if not hard:
        return y_soft
    index = y_soft.argmax(dim, keepdim=True)
    y_hard = torch.zeros_like(logits, memory_format=torch.legacy_contiguous_format).scatter_(dim, index, 1.0)
    return y_hard - y_soft.detach() + y_soft


class ProtoSimLayer(nn.Module):
    """K prototypes; replaces each token by its (Gumbel-)attention-weighted prototype.

    Prototypes start as U[0, 1) (``torch.rand``) and are never normalised; logits are the raw
    dot product, without 1/√d, exactly as ``ProtoAttention`` in the reference code.
    """

    def __init__(self, n_prototypes: int, dim: int):
        super().__init__()
        self.prototypes = nn.Parameter(torch.rand(n_prototypes, dim))

    @property
    def n_prototypes(self) -> int:
        return self.prototypes.shape[0]

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        """Raw token-to-prototype logits (..., K), in fp32 even under autocast."""
        with torch.autocast(device_type=z.device.type, enabled=False):
            return z.float() @ self.prototypes.float().t()

    def _quantise(self, flat: torch.Tensor, hard: bool, gumbel: bool, tau: float) -> torch.Tensor:
        with torch.autocast(device_type=flat.device.type, enabled=False):
            a = gumbel_softmax(self.logits(flat), tau=tau, hard=hard, gumbel=gumbel, dim=-1)
            return a @ self.prototypes.float()

    def forward(self, z: torch.Tensor, *, hard: bool = False, gumbel: bool = True, tau: float = 1.0,
                chunk_tokens: int | None = None) -> torch.Tensor:
        """(B, T, D) → (B, T, D) prototype embeddings ẑ = aᵀP.

        ``chunk_tokens`` bounds memory: the (tokens, K) logits/noise/softmax are built one chunk
        at a time and, when gradients are needed, recomputed in backward (activation
        checkpointing, same RNG state, so the same Gumbel noise) instead of stored.
        """
        shape = z.shape
        flat = z.reshape(-1, shape[-1])
        if chunk_tokens is None or flat.shape[0] <= chunk_tokens:
            out = self._quantise(flat, hard, gumbel, tau)
        elif torch.is_grad_enabled():
            out = torch.cat([checkpoint(self._quantise, c, hard, gumbel, tau, use_reentrant=False)
                             for c in flat.split(chunk_tokens)])
        else:
            out = torch.cat([self._quantise(c, hard, gumbel, tau) for c in flat.split(chunk_tokens)])
        return out.reshape(shape)

    @torch.no_grad()
    def assign(self, z: torch.Tensor, *, chunk_tokens: int = 65536) -> torch.Tensor:
        """Deterministic per-token prototype id: argmax of the raw logits, no noise (analysis)."""
        flat = z.reshape(-1, z.shape[-1])
        ids = torch.cat([self.logits(c).argmax(-1) for c in flat.split(chunk_tokens)])
        return ids.reshape(z.shape[:-1])

    @torch.no_grad()
    def diversity(self) -> float:
        """Mean pairwise cosine similarity between prototypes (paper Fig. 6), in O(K·D)."""
        p = F.normalize(self.prototypes.float(), dim=1)
        k = p.shape[0]
        if k < 2:
            return float("nan")
        total = p.sum(0).pow(2).sum()
        return float((total - k) / (k * (k - 1)))


class WeightNormLinear(nn.Module):
    """Bias-free linear layer with weight w = g·v/‖v‖ per output row (``nn.utils.weight_norm``).

    Written out (not ``torch.nn.utils.parametrize``) so fitted models pickle, and with the
    parameter names of DINO checkpoints (``weight_g``, ``weight_v``).
    """

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        v = nn.Linear(in_dim, out_dim, bias=False).weight.detach()   # PyTorch's default init
        self.weight_v = nn.Parameter(v.clone())
        self.weight_g = nn.Parameter(torch.ones(out_dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight_g * self.weight_v / self.weight_v.norm(dim=1, keepdim=True)
        return F.linear(x, w)


class DINOHead(nn.Module):
    """DINO's projection head: MLP → L2 normalise → weight-normalised linear (no bias).

    With ``norm_last_layer`` the weight-norm gain stays 1 (frozen), as in DINO.
    """

    def __init__(self, in_dim: int, out_dim: int, *, nlayers: int = 3, hidden_dim: int = 2048,
                 bottleneck_dim: int = 256, norm_last_layer: bool = True):
        super().__init__()
        nlayers = max(nlayers, 1)
        if nlayers == 1:
            self.mlp = nn.Linear(in_dim, bottleneck_dim)
        else:
            layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim), nn.GELU()]
            for _ in range(nlayers - 2):
                layers += [nn.Linear(hidden_dim, hidden_dim), nn.GELU()]
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
            self.mlp = nn.Sequential(*layers)
        self.apply(self._init_weights)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim)
        if norm_last_layer:
            self.last_layer.weight_g.requires_grad_(False)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(self.mlp(x), dim=-1, p=2)
        return self.last_layer(x)


class ProtoSimNet(nn.Module):
    """Backbone tokens → ProtoSim → 1-head block → frozen backbone norm (again) → CLS → head.

    The backbone itself stays outside: it is frozen and identical for student and teacher, so
    its tokens are computed once per crop and shared. ``norm`` is a frozen copy of the
    backbone's final norm (the reference applies that same frozen module a second time).
    """

    def __init__(self, *, dim: int, n_prototypes: int, norm: nn.Module, out_dim: int, block_heads: int = 1,
                 drop_path: float = 0.1, head_layers: int = 3, head_hidden_dim: int = 2048,
                 head_bottleneck_dim: int = 256, norm_last_layer: bool = True):
        super().__init__()
        from timm.models.vision_transformer import Block

        self.protosim = ProtoSimLayer(n_prototypes, dim)
        self.block = Block(dim, num_heads=block_heads, mlp_ratio=4.0, qkv_bias=True, drop_path=drop_path,
                           norm_layer=partial(nn.LayerNorm, eps=1e-6))
        self.norm = copy.deepcopy(norm).requires_grad_(False)
        self.head = DINOHead(dim, out_dim, nlayers=head_layers, hidden_dim=head_hidden_dim,
                             bottleneck_dim=head_bottleneck_dim, norm_last_layer=norm_last_layer)

    def features(self, tokens: torch.Tensor, *, hard: bool = False, gumbel: bool = True, tau: float = 1.0,
                 chunk_tokens: int | None = None) -> torch.Tensor:
        """The representation of the paper's linear probe: the D-dim CLS after block + norm."""
        z = self.protosim(tokens, hard=hard, gumbel=gumbel, tau=tau, chunk_tokens=chunk_tokens)
        z = self.norm(self.block(z))
        return z[:, 0]

    def forward(self, tokens: torch.Tensor, **kw) -> torch.Tensor:
        return self.head(self.features(tokens, **kw))

    def trainable_named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad]


def step_memory_bytes(*, batch_size: int, n_prototypes: int, tokens_global: int, tokens_local: int,
                      n_local_crops: int, out_dim: int, dim: int, chunk_tokens: int | None) -> int:
    """Rough peak bytes of one training step, dominated by the dense (tokens, K) tensors.

    Student: logits, Gumbel noise, soft and straight-through assignment kept for backward
    (4 fp32 copies) for all crops' tokens, or for one chunk when checkpointed; teacher: the
    2 global crops, transient (no grad). Plus head outputs (logits, softmax, grad).
    """
    student_tokens = batch_size * (2 * tokens_global + n_local_crops * tokens_local)
    live = student_tokens if chunk_tokens is None else min(chunk_tokens, student_tokens)
    dense = 4 * live * n_prototypes * 4
    teacher = 2 * min(batch_size * 2 * tokens_global, chunk_tokens or math.inf) * n_prototypes * 4
    head = 3 * batch_size * (2 + n_local_crops) * out_dim * 4
    tokens = 3 * student_tokens * dim * 4
    return int(dense + teacher + head + tokens)
