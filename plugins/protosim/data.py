"""Inputs of a ProtoSim run: the frozen ViT backbone of an extractor, and the images of one or
more DataViews as one table with a group (sub-dataset) per image."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from bench.api import DataView
from bench.errors import BenchError


class Backbone:
    """The extractor's frozen ViT: tokens (B, T, D) after its final norm, CLS first (a CNN's
    last feature map, with a pooled token first, for CNN extractors: :meth:`_init_cnn`).

    Uses ``extractor.tokens(batch)`` when the extractor offers it, else the timm
    ``model.forward_features`` (= norm(blocks(embed(x)))); the final ``norm`` module is reused
    after ProtoSim's block, as in the reference code.
    """

    def __init__(self, extractor, device: torch.device):
        model = getattr(extractor, "model", None)
        #: a CNN's tokens: its last feature map's positions, with no class token (deviation below)
        self.cnn = bool(getattr(extractor, "has_tokens", False)) and not getattr(extractor, "has_class_token", True)
        if self.cnn:
            self._init_cnn(extractor, device)
            return
        if model is None or not hasattr(model, "patch_embed"):
            raise BenchError(f"protosim needs a ViT extractor with token outputs (e.g. tiny-vit, a timm "
                             f"ViT); {getattr(extractor, 'name', type(extractor).__name__)!r} has none")
        self.extractor = extractor
        self.model = model
        self.device = device
        extractor.to(device)
        model.eval()
        self.dim = int(getattr(model, "embed_dim", getattr(model, "num_features", 0)))
        self.norm: nn.Module = getattr(model, "norm", None) or nn.Identity()
        self.num_prefix_tokens = int(getattr(model, "num_prefix_tokens", 1))
        ps = model.patch_embed.patch_size
        self.patch_size = int(ps[0] if isinstance(ps, (tuple, list)) else ps)
        cfg = getattr(extractor, "data_config", None)
        if not cfg:
            import timm.data

            cfg = timm.data.resolve_model_data_config(model)
        self.mean = tuple(float(v) for v in cfg.get("mean", (0.485, 0.456, 0.406)))
        self.std = tuple(float(v) for v in cfg.get("std", (0.229, 0.224, 0.225)))
        self.input_size = int(cfg.get("input_size", (3, 224, 224))[-1])
        self._tokens = getattr(extractor, "tokens", None)

    def _init_cnn(self, extractor, device: torch.device) -> None:
        """Deviation from the paper's ViT, for CNN extractors (``has_class_token = False``): the
        tokens are the H·W positions of the CNN's last stage, and the class token ProtoSim's
        block and DINO head read is prepended here as their mean (global average pooling).
        The CNN's last norm is a BatchNorm (per channel, not per token), so the norm reapplied
        after ProtoSim's block is a parameter-free LayerNorm instead of the backbone's."""
        self.extractor = extractor
        self.model = extractor.model
        self.device = device
        extractor.to(device)
        self.model.eval()
        self.dim = int(extractor.num_features)
        self.norm = nn.LayerNorm(self.dim, eps=1e-6, elementwise_affine=False)
        self.num_prefix_tokens = 1
        self.patch_size = int(extractor.token_stride)
        cfg = extractor.data_config
        self.mean = tuple(float(v) for v in cfg["mean"])
        self.std = tuple(float(v) for v in cfg["std"])
        self.input_size = int(cfg["input_size"][-1])
        self._tokens = extractor.tokens

    @torch.no_grad()
    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised images (B, 3, h, w) on the device → (B, T, D) tokens, no autograd."""
        out = self._tokens(x) if callable(self._tokens) else self.model.forward_features(x)
        if out.ndim != 3:
            raise BenchError(f"protosim: the extractor returned tokens of shape {tuple(out.shape)}, "
                             "expected (B, T, D)")
        if self.cnn:
            out = torch.cat([out.mean(1, keepdim=True), out], dim=1)
        return out

    def preprocess(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """The extractor's own evaluation preprocessing (resize + centre crop + normalise)."""
        if len({im.shape for im in images}) == 1:
            x = self.extractor.preprocess(np.stack(images))
        else:
            x = torch.cat([self.extractor.preprocess(im[None]) for im in images])
        return x.to(self.device, non_blocking=True)

    def grid(self, x: torch.Tensor) -> tuple[int, int]:
        if self.cnn:  # "same"-padded strided convolutions: ⌈h / stride⌉
            return -(-x.shape[-2] // self.patch_size), -(-x.shape[-1] // self.patch_size)
        return x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size

    def n_tokens(self, size: int) -> int:
        side = -(-size // self.patch_size) if self.cnn else size // self.patch_size
        return side ** 2 + self.num_prefix_tokens

    def cache_key(self) -> object:
        try:
            return self.extractor.cache_key()
        except NotImplementedError:  # an extractor without a key still trains; resume keys on its name
            return getattr(self.extractor, "name", type(self.extractor).__name__)


class ImageTable:
    """Images of several DataViews, indexed 0..N-1, with a group id and name per image."""

    def __init__(self, parts: list[tuple[DataView, np.ndarray]], group_names: list[str]):
        if not parts or sum(len(v) for v, _ in parts) == 0:
            raise BenchError("protosim: no images to train on (empty dataset)")
        self.parts = parts
        self.group_names = group_names
        self.groups = np.concatenate([np.asarray(g, dtype=np.int64) for _, g in parts])
        self._offsets = np.cumsum([0] + [len(v) for v, _ in parts])
        self.n = int(self._offsets[-1])

    @classmethod
    def from_view(cls, view: DataView) -> ImageTable:
        """One DataView; its ``groups`` (sub-datasets) become the groups, renumbered 0..G-1."""
        raw = view.groups
        if raw is None:
            return cls([(view, np.zeros(len(view), dtype=np.int64))], [view.name])
        values, groups = np.unique(np.asarray(raw), return_inverse=True)
        names_src = view.source.group_names
        names = [str(names_src[v]) if names_src is not None and 0 <= v < len(names_src) else f"group{v}"
                 for v in values]
        return cls([(view, groups.astype(np.int64))], names)

    @classmethod
    def from_pair(cls, a: DataView, b: DataView) -> ImageTable:
        names = [a.name, b.name] if a.name != b.name else [f"{a.name}[a]", f"{b.name}[b]"]
        return cls([(a, np.zeros(len(a), dtype=np.int64)), (b, np.ones(len(b), dtype=np.int64))], names)

    @property
    def n_groups(self) -> int:
        return len(self.group_names)

    def image(self, i: int) -> np.ndarray:
        part = int(np.searchsorted(self._offsets, i, side="right") - 1)
        view = self.parts[part][0]
        return view.source.image(int(view.indices[i - self._offsets[part]]))

    def images(self, idx: Sequence[int]) -> list[np.ndarray]:
        return [self.image(int(i)) for i in idx]

    def batch(self, idx: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 (B, Hmax, Wmax, 3) zero-padded, and the true sizes (B, 2)."""
        ims = self.images(idx)
        sizes = np.array([im.shape[:2] for im in ims], dtype=np.int64)
        if (sizes == sizes[0]).all():
            arr = np.stack(ims)
        else:
            arr = np.zeros((len(ims), sizes[:, 0].max(), sizes[:, 1].max(), 3), dtype=np.uint8)
            for k, im in enumerate(ims):
                arr[k, :im.shape[0], :im.shape[1]] = im
        return torch.from_numpy(arr), torch.from_numpy(sizes)

    def fingerprint(self) -> str:
        """Identity of the images and groups (sources, revisions, rows), for safe resume."""
        h = hashlib.sha256()
        for view, groups in self.parts:
            h.update(json.dumps([view.source.name, view.source.revision, view.source.n]).encode())
            h.update(np.ascontiguousarray(view.indices, dtype=np.int64).tobytes())
            h.update(np.ascontiguousarray(groups, dtype=np.int64).tobytes())
        h.update(json.dumps(self.group_names).encode())
        return h.hexdigest()[:16]


class _BatchDataset(torch.utils.data.Dataset):
    """Map-style dataset whose items are whole batches (a list of table rows → padded uint8)."""

    def __init__(self, table: ImageTable, batches: list[np.ndarray]):
        self.table = table
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int):
        from bench.errors import DataError
        from bench.pipeline import Failed

        try:
            return self.table.batch(self.batches[i])
        except DataError as e:   # raised in the main process as the same one line, no worker traceback
            return Failed(str(e))


def batch_loader(table: ImageTable, batches: list[np.ndarray], *, num_workers: int, pin_memory: bool):
    """Iterate padded uint8 batches through the harness' data pipeline loader (``bench.pipeline``):
    decoding in ``num_workers`` processes, in order, no randomness there (augmentation runs on the
    device under the epoch's seed, so crops do not depend on the worker count); a corrupt file or a
    dead worker ends the run with one line."""
    from bench.pipeline import guarded, worker_loader

    if num_workers <= 0:
        return (table.batch(b) for b in batches)
    return guarded(worker_loader(_BatchDataset(table, batches), workers=num_workers, pin_memory=pin_memory))
