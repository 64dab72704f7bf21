"""Extractors: a frozen backbone plus its exact preprocessing.

An Extractor maps uint8 RGB images to pooled features (``"pooled"``), all tokens
(``"tokens"``) or named intermediate layers. ``cache_key()`` lists every input that
changes its output (library, architecture, weights hash, preprocessing, dtype); the
FeatureStore keys features by it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import numpy as np
import torch


class Extractor:
    """Base class. Subclasses set ``model`` and implement ``preprocess`` and ``forward``."""

    name: ClassVar[str] = ""
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

    # --- shared ---------------------------------------------------------------------
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
            yield self.forward(batch, layers)
