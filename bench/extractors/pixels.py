"""``pixels``: raw pixels as features (resized, scaled to [0, 1]); the no-model baseline."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bench.errors import BenchError
from bench.extractors.base import Extractor


class PixelsExtractor(Extractor):
    """Images resized to ``size``×``size`` (bilinear, antialiased), flattened to features.

    Layers: ``"pooled"`` (B, 3·size²), ``"image"`` (B, 3, size, size).
    """

    name = "pixels"

    def __init__(self, *, weights: str | None = None, device: str | torch.device = "cpu", size: int = 32):
        if weights is not None:
            raise BenchError("the 'pixels' extractor has no weights; drop --weights")
        super().__init__(weights=None, device=device)
        self.size = size

    @property
    def data_config(self) -> dict[str, Any]:
        return {"input_size": (3, self.size, self.size), "interpolation": "bilinear", "crop_pct": 1.0,
                "crop_mode": "squash", "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}

    def preprocess(self, images: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True,
                              align_corners=False)
        return x

    def forward(self, batch: torch.Tensor, layers: Sequence[str] = ("pooled",)) -> dict[str, torch.Tensor]:
        self.check_layers(layers)
        return {layer: batch.flatten(1) if layer == "pooled" else batch for layer in layers}

    @property
    def layer_names(self) -> list[str]:
        return ["image"]

    def cache_key(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size, "resize": "bilinear-antialias"}
