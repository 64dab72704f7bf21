"""Extractors: a frozen backbone plus its exact preprocessing.

An Extractor maps uint8 RGB images to pooled features (``"pooled"``), all tokens
(``"tokens"``) or named intermediate layers. ``cache_key()`` lists every input that
changes its output (library, architecture, weights hash, preprocessing, dtype); the
FeatureStore keys features by it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from bench.errors import BenchError


@contextlib.contextmanager
def full_fp32() -> Iterator[None]:
    """Turn TF32 off for convolutions and matmuls: stored features are full float32 on every
    GPU, so they match the CPU and do not change with the batch size (cuDNN picks TF32 conv
    kernels by default on Ampere and later, which moves features by ~1e-3)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


class Extractor:
    """Base class. Subclasses set ``model`` and implement ``preprocess`` and ``forward``."""

    name: ClassVar[str] = ""
    #: the frozen torch module (None for model-free extractors such as ``pixels``)
    model: Any = None
    #: True for backbones whose tokens are (B, T, D) with a class token first (ViTs)
    has_tokens: ClassVar[bool] = False

    def __init__(self, *, weights: str | None = None, device: str | torch.device = "cpu"):
        self.weights = weights
        self.device = torch.device(device)

    # --- to implement ---------------------------------------------------------------
    def preprocess(self, images: np.ndarray) -> torch.Tensor:
        """uint8 (B, H, W, 3) → float tensor (B, 3, h, w) exactly as the weights expect."""
        raise NotImplementedError

    def forward(self, batch: torch.Tensor, layers: Sequence[str] = ("pooled",)) -> dict[str, torch.Tensor]:
        """Preprocessed batch on ``self.device`` → {layer: activations}.

        ``"pooled"`` → (B, D); ``"tokens"`` → (B, T, D); intermediate layers → (B, C, ...)
        channels on axis 1 (for token layers (B, C, T)).
        """
        raise NotImplementedError

    @property
    def layer_names(self) -> list[str]:
        """Named intermediate layers this extractor can return, shallow to deep."""
        return []

    def cache_key(self) -> dict[str, Any]:
        """Every input that changes the output; hashed by the FeatureStore."""
        raise NotImplementedError

    @property
    def data_config(self) -> dict[str, Any]:
        """The preprocessing, timm ``resolve_model_data_config`` style: ``input_size`` (3, h, w),
        ``interpolation``, ``crop_pct``, ``crop_mode``, ``mean``, ``std``. Methods that make their
        own crops (ProtoSim) normalise them with this ``mean``/``std``."""
        return dict(getattr(self, "_data_config", None) or {})

    @data_config.setter
    def data_config(self, value: dict[str, Any]) -> None:
        self._data_config = dict(value)

    # --- shared ---------------------------------------------------------------------
    def available_layers(self) -> list[str]:
        """Every layer name ``forward`` accepts."""
        return ["pooled"] + (["tokens"] if self.has_tokens else []) + list(self.layer_names)

    def check_layers(self, layers: Sequence[str]) -> None:
        """Raise ONE line naming the available layers if any of ``layers`` is unknown."""
        if isinstance(layers, str):
            raise BenchError(f"{self.name}: layers must be a list of names, got the string {layers!r}")
        available = self.available_layers()
        bad = [k for k in layers if k not in available]
        if bad:
            raise BenchError(f"extractor {self.name!r}: unknown layer(s) {', '.join(map(repr, bad))}; "
                             f"available: {', '.join(available)}")

    @torch.no_grad()
    def tokens(self, batch: torch.Tensor) -> torch.Tensor:
        """Preprocessed batch (B, 3, h, w) on ``self.device`` → final tokens (B, T, D), class token
        first. ViTs accept crops of other sizes than ``data_config["input_size"]``."""
        if not self.has_tokens:
            raise BenchError(f"extractor {self.name!r} has no token outputs (not a ViT); "
                             "use a ViT extractor such as tiny-vit or dino-vits16")
        return self.forward(batch, ["tokens"])["tokens"]

    def to(self, device: str | torch.device) -> Extractor:
        self.device = torch.device(device)
        model = getattr(self, "model", None)
        if model is not None:
            model.to(self.device)
        return self

    @torch.no_grad()
    def iter_layers(self, source, indices: np.ndarray, layers: Sequence[str], *,
                    device: str | torch.device = "cpu", batch_size: int = 64,
                    progress: bool = False) -> Iterator[dict[str, torch.Tensor]]:
        """Stream activations of ``layers`` for ``source`` rows ``indices``."""
        from bench.progress import track

        self.to(device)
        starts = range(0, len(indices), batch_size)
        for start in track(starts, description=f"{self.name} {','.join(layers)}", enabled=progress):
            rows = indices[start:start + batch_size]
            images = np.stack([source.image(int(i)) for i in rows])
            batch = self.preprocess(images).to(self.device, non_blocking=True)
            with full_fp32():
                out = self.forward(batch, layers)
            yield out
