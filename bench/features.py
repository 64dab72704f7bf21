"""FeatureStore: features computed once per (dataset, extractor, weights, transform, layer,
dtype), memory-mapped, written atomically, reused by every method and across runs.

The key is a hash of the dataset revision and the extractor's ``cache_key()`` (library,
architecture, weights hash, preprocessing) plus layer and dtype, so changing any input
that changes the output changes the file name (CLIP_benchmark's stale-cache bug).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:  # pragma: no cover
    from bench.datasets.base import ImageSource
    from bench.extractors.base import Extractor

#: bump when the pooling or storage convention changes
STORE_VERSION = "1"


def default_cache_dir() -> Path:
    return Path(os.environ.get("BENCH_CACHE", Path.home() / ".cache" / "bench")) / "features"


def pool(activation: torch.Tensor) -> torch.Tensor:
    """(B, C, ...) → (B, C) by averaging every position after the channel axis."""
    return activation if activation.ndim == 2 else activation.flatten(2).mean(dim=2)


class FeatureStore:
    """Disk cache of (N, D) float32 features; ``root=None`` keeps them in memory only."""

    def __init__(self, root: str | Path | None = None, *, dtype: str = "float32"):
        self.root = Path(root) if root is not None else None
        self.dtype = dtype
        self._memory: dict[str, np.ndarray] = {}
        self.computed = 0  # number of extraction passes, for tests and run summaries

    def key(self, source: ImageSource, extractor: Extractor, layer: str) -> str:
        parts = {"store": STORE_VERSION, "dataset": source.name, "revision": source.revision,
                 "n": source.n, "extractor": extractor.cache_key(), "layer": layer, "dtype": self.dtype}
        blob = json.dumps(parts, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:24]

    def path(self, source: ImageSource, extractor: Extractor, layer: str) -> Path | None:
        if self.root is None:
            return None
        dataset = source.name.replace(":", "_").replace("/", "_")
        return self.root / f"{dataset}-{extractor.name}-{layer}-{self.key(source, extractor, layer)}.npy"

    def features(self, source: ImageSource, extractor: Extractor, *, layer: str = "pooled",
                 device: str | torch.device = "cpu", batch_size: int = 64,
                 progress: bool = False) -> np.ndarray:
        key = self.key(source, extractor, layer)
        if key in self._memory:
            return self._memory[key]
        path = self.path(source, extractor, layer)
        if path is not None and path.exists():
            feats = np.load(path, mmap_mode="r")
            self._memory[key] = feats
            return feats
        feats = self._extract(source, extractor, layer, device, batch_size, progress)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}.npy")
            np.save(tmp, feats)
            os.replace(tmp, path)  # atomic: readers see the whole file or none
            path.with_suffix(".json").write_text(json.dumps(
                {"dataset": source.name, "revision": source.revision, "n": source.n, "layer": layer,
                 "dtype": self.dtype, "extractor": extractor.cache_key()}, indent=1, default=str))
            feats = np.load(path, mmap_mode="r")
        self._memory[key] = feats
        return feats

    def _extract(self, source, extractor, layer, device, batch_size, progress) -> np.ndarray:
        self.computed += 1
        chunks = []
        indices = np.arange(source.n)
        for out in extractor.iter_layers(source, indices, [layer], device=device,
                                         batch_size=batch_size, progress=progress):
            chunks.append(pool(out[layer]).float().cpu().numpy())
        if not chunks:
            return np.zeros((0, 0), dtype=self.dtype)
        return np.concatenate(chunks).astype(self.dtype, copy=False)
