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
from bench_protosim.shard import Shard, draw
from torch import nn
from torch.utils.checkpoint import checkpoint


def gumbel_noise(like: torch.Tensor) -> torch.Tensor:
    """Standard Gumbel noise -log(-log U), U ~ U[0, 1): the distribution of torch's
    ``-log(Exponential(1))`` draw, about 3× cheaper on CPU than ``exponential_``."""
    return gumbel_fill_(torch.empty_like(like, memory_format=torch.legacy_contiguous_format))


def gumbel_fill_(u: torch.Tensor) -> torch.Tensor:
    """Overwrite ``u`` with standard Gumbel noise (the draw of :func:`gumbel_noise`)."""
    return u.uniform_().log_().neg_().log_().neg_()


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

    def _quantise(self, flat: torch.Tensor, hard: bool, gumbel: bool, tau: float,
                  keep: torch.Tensor | None = None, n_drawn: int = 0) -> torch.Tensor:
        """``keep``: the Gumbel noise is drawn for ``n_drawn`` tokens of the global batch, of which
        rows ``keep`` are ``flat``'s (without it, for ``flat`` itself)."""
        with torch.autocast(device_type=flat.device.type, enabled=False):
            logits = self.logits(flat)
            noise = None
            if gumbel and keep is not None:
                noise = gumbel_fill_(logits.new_empty(n_drawn, logits.shape[-1]))[keep]
            a = gumbel_softmax(logits, tau=tau, hard=hard, gumbel=gumbel, dim=-1, noise=noise)
            return a @ self.prototypes.float()

    def forward(self, z: torch.Tensor, *, hard: bool = False, gumbel: bool = True, tau: float = 1.0,
                chunk_tokens: int | None = None, shard: Shard | None = None) -> torch.Tensor:
        """(B, T, D) → (B, T, D) prototype embeddings ẑ = aᵀP.

        ``chunk_tokens`` bounds memory: the (tokens, K) logits/noise/softmax are built one chunk
        at a time and, when gradients are needed, recomputed in backward (activation
        checkpointing, same RNG state, so the same Gumbel noise) instead of stored.
        ``shard``: z is this rank's rows of a crop-major global batch; the Gumbel noise is drawn
        chunk by chunk of the global batch's tokens, as the single process draws it, and each
        chunk keeps this rank's tokens (shard.py).
        """
        shape = z.shape
        flat = z.reshape(-1, shape[-1])
        n = flat.shape[0]
        pos = None
        if shard is not None and gumbel:
            n = shard.global_items(shape[0], shape[1])
            pos = shard.positions(shape[0], shape[1])                   # on the CPU: no sync per chunk
        step = n if chunk_tokens is None else chunk_tokens
        run = (partial(checkpoint, self._quantise, use_reentrant=False)
               if step < n and torch.is_grad_enabled() else self._quantise)
        parts = []
        for start in range(0, n, step):
            stop = min(start + step, n)
            if pos is None:
                parts.append(run(flat[start:stop], hard, gumbel, tau))
            else:
                i, j = torch.searchsorted(pos, torch.tensor([start, stop])).tolist()
                keep = (pos[i:j] - start).to(z.device)
                parts.append(run(flat[i:j], hard, gumbel, tau, keep, stop - start))
        out = parts[0] if len(parts) == 1 else torch.cat(parts)
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
                 chunk_tokens: int | None = None, shard: Shard | None = None) -> torch.Tensor:
        """The representation of the paper's linear probe: the D-dim CLS after block + norm.

        ``shard``: tokens are this rank's rows of a global batch (see :class:`ProtoSimLayer`).
        """
        z = self.protosim(tokens, hard=hard, gumbel=gumbel, tau=tau, chunk_tokens=chunk_tokens, shard=shard)
        z = self.norm(self._block(z, shard))
        return z[:, 0]

    def _block(self, x: torch.Tensor, shard: Shard | None) -> torch.Tensor:
        """timm's ``Block.forward``, with the per-sample drop-path masks drawn for the global batch."""
        b = self.block
        x = x + self._drop_path(b.drop_path1, b.ls1(b.attn(b.norm1(x))), shard)
        return x + self._drop_path(b.drop_path2, b.ls2(b.mlp(b.norm2(x))), shard)

    def _drop_path(self, module: nn.Module, x: torch.Tensor, shard: Shard | None) -> torch.Tensor:
        """timm's ``drop_path`` (scale by keep); ``module`` is the block's DropPath or Identity."""
        p = getattr(module, "drop_prob", 0.0)
        if p == 0.0 or not self.training:
            return x
        keep = 1 - p
        mask = draw(shard, x.shape[0], lambda m: x.new_empty((m,) + (1,) * (x.ndim - 1)).bernoulli_(keep))
        if keep > 0.0:
            mask = mask / keep
        return x * mask

    def forward(self, tokens: torch.Tensor | list[torch.Tensor], **kw) -> torch.Tensor:
        """Head outputs; for a list of token batches (crops of different sizes), their outputs
        concatenated, from one call: DDP syncs the gradients of one forward per backward (the
        reason for DINO's ``MultiCropWrapper``)."""
        if isinstance(tokens, torch.Tensor):
            return self.head(self.features(tokens, **kw))
        return torch.cat([self.head(self.features(t, **kw)) for t in tokens])

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
