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

from bench import distributed
from bench.runstore import safe_name, write_atomic

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


class ShardedRows:
    """The shards a torchrun extraction wrote, read as one (N, D) array without joining them:
    indexing reads only the rows asked for (each shard is memory-mapped), so a rank that wants
    its own rows never loads the others'."""

    def __init__(self, parts: list[np.ndarray], starts: list[int]):
        self.parts, self.starts = parts, np.asarray(starts)
        self.shape = (int(self.starts[-1]) + len(parts[-1]), parts[0].shape[1])
        self.dtype = parts[0].dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows) -> np.ndarray:
        idx = np.arange(len(self))[rows] if isinstance(rows, slice) else np.asarray(rows, dtype=np.int64)
        out = np.empty((len(idx), self.shape[1]), dtype=self.dtype)
        shard = np.searchsorted(self.starts, idx, side="right") - 1
        for k in np.unique(shard):
            mine = shard == k
            out[mine] = self.parts[k][idx[mine] - self.starts[k]]
        return out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        full = self[:]
        return full if dtype is None else full.astype(dtype, copy=False)


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
        dataset = safe_name(source.name)
        return self.root / f"{dataset}-{extractor.name}-{layer}-{self.key(source, extractor, layer)}.npy"

    def features(self, source: ImageSource, extractor: Extractor, *, layer: str = "pooled",
                 device: str | torch.device = "cpu", batch_size: int = 64,
                 progress: bool = False, collective: bool = False) -> np.ndarray | ShardedRows:
        """(N, D) features of ``source``, extracted once and then read from disk.

        ``collective=True`` under torchrun (every rank calls it): each rank extracts and writes
        its own contiguous shard, rank 0 writes the manifest after a barrier, and every rank then
        reads the features from disk; ranks never exchange features. Shards already on disk are
        kept, so a rerun after a lost rank redoes only that rank's shard.
        """
        key = self.key(source, extractor, layer)
        if key in self._memory:
            return self._memory[key]
        path = self.path(source, extractor, layer)
        feats = self._load(path) if path is not None else None
        if feats is None and collective and distributed.active() and path is not None:
            self._extract_sharded(path, source, extractor, layer, device, batch_size, progress)
            feats = self._load(path)
        if feats is None:
            feats = self._extract(source, extractor, layer, np.arange(source.n), device, batch_size, progress)
            if path is not None:
                self._save(path, feats)
                self._describe(path, source, extractor, layer)
                feats = np.load(path, mmap_mode="r")
        self._memory[key] = feats
        return feats

    # -- disk layout: one .npy, or shards + manifest written by a torchrun job -----------------
    @staticmethod
    def _manifest(path: Path) -> Path:
        return path.with_suffix(".manifest.json")

    @staticmethod
    def _shard_path(path: Path, rank: int, world_size: int) -> Path:
        return path.with_name(f"{path.stem}.shard{rank}of{world_size}.npy")

    def _load(self, path: Path) -> np.ndarray | ShardedRows | None:
        if path.exists():
            return np.load(path, mmap_mode="r")
        manifest = self._manifest(path)
        if not manifest.exists():
            return None
        shards = [s for s in json.loads(manifest.read_text())["shards"] if s["stop"] > s["start"]]
        return ShardedRows([np.load(path.parent / s["file"], mmap_mode="r") for s in shards],
                           [s["start"] for s in shards])

    @staticmethod
    def _save(path: Path, feats: np.ndarray) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.npy")
        np.save(tmp, feats)
        os.replace(tmp, path)  # atomic: readers see the whole file or none

    def _describe(self, path: Path, source, extractor, layer: str) -> None:
        write_atomic(path.with_suffix(".json"), json.dumps(
            {"dataset": source.name, "revision": source.revision, "n": source.n, "layer": layer,
             "dtype": self.dtype, "extractor": extractor.cache_key()}, indent=1, default=str))

    def _extract_sharded(self, path, source, extractor, layer, device, batch_size, progress) -> None:
        ctx = distributed.context()
        bounds = [distributed.shard_range(source.n, r, ctx.world_size, align=batch_size)
                  for r in range(ctx.world_size)]
        start, stop = bounds[ctx.rank]
        mine = self._shard_path(path, ctx.rank, ctx.world_size)
        if not mine.exists() and stop > start:
            self._save(mine, self._extract(source, extractor, layer, np.arange(start, stop), device, batch_size,
                                           progress and ctx.is_main))
        distributed.barrier()
        if ctx.is_main:
            shards = [{"file": self._shard_path(path, r, ctx.world_size).name, "start": a, "stop": b}
                      for r, (a, b) in enumerate(bounds)]
            write_atomic(self._manifest(path), json.dumps({"n": source.n, "shards": shards}, indent=1))
            self._describe(path, source, extractor, layer)
        distributed.barrier()

    def _extract(self, source, extractor, layer, indices: np.ndarray, device, batch_size, progress) -> np.ndarray:
        self.computed += 1
        chunks = []
        for out in extractor.iter_layers(source, indices, [layer], device=device,
                                         batch_size=batch_size, progress=progress):
            chunks.append(pool(out[layer]).float().cpu().numpy())
        if not chunks:
            return np.zeros((0, 0), dtype=self.dtype)
        return np.concatenate(chunks).astype(self.dtype, copy=False)
