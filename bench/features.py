"""FeatureStore: features computed once per (dataset, extractor, weights, transform, layer,
dtype), memory-mapped, written atomically, reused by every method and across runs.

The key is a hash of the dataset revision and the extractor's ``cache_key()`` (library,
architecture, weights hash, preprocessing, precision) plus layer and dtype, and for file-backed
sources how the pipeline makes pixels (one exact resize from the originals), so changing any
input that changes the output changes the file name (CLIP_benchmark's stale-cache bug).

Writes are incremental: rows go batch by batch into a memory-mapped ``.npy`` under a temporary
name, renamed into place only when complete (a killed run leaves no partial file). A write that
fails (disk full, file too large) is one line and leaves no temporary file; temporary files of
killed runs (their process gone, or untouched for a day) are removed when a store is opened.
Reads are validated against the key's sidecar (rows, width, dtype); a cache file that cannot be
read or does not match is moved aside (``*.bad.npy``) with one warning line and recomputed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from bench import distributed
from bench.errors import BenchError
from bench.pipeline import check_batch_size, worker_errors
from bench.runstore import check_writable_dir, safe_name, write_atomic

if TYPE_CHECKING:  # pragma: no cover
    from bench.datasets.base import ImageSource
    from bench.extractors.base import Extractor

#: bump when the pooling or storage convention changes
STORE_VERSION = "1"


#: temporary files of our writers: ``.{stem}.tmp{pid}.npy`` (features) and ``.{name}.{pid}.tmp`` (sidecars)
_TMP = re.compile(r"^\..+\.tmp(\d+)\.npy$|^\..+\.(\d+)\.tmp$")
#: a temporary file is stale when its process is gone here and it is this old (a live writer
#: touches it every batch), or when it is this much older whatever its pid (another node's)
STALE_DEAD_SECONDS, STALE_ANY_SECONDS = 600, 86_400


def default_cache_dir() -> Path:
    """``$BENCH_CACHE/features`` (default ``~/.cache/bench/features``); a BENCH_CACHE that is a file
    or read-only is one line here, before any work, as ``--cache-dir`` is."""
    env = os.environ.get("BENCH_CACHE")
    if env:
        return check_writable_dir(Path(env).expanduser(), "BENCH_CACHE") / "features"
    return Path.home() / ".cache" / "bench" / "features"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def clean_stale(root: Path, now: float | None = None) -> list[str]:
    """Remove the temporary files killed runs left in ``root``; the names removed."""
    now = time.time() if now is None else now
    gone = []
    try:
        entries = list(os.scandir(root))
    except OSError:
        return gone
    for entry in entries:
        m = _TMP.match(entry.name)
        if m is None:
            continue
        try:
            age = now - entry.stat(follow_symlinks=False).st_mtime
            pid = int(m.group(1) or m.group(2))
            if age > STALE_ANY_SECONDS or (age > STALE_DEAD_SECONDS and not _alive(pid)):
                os.unlink(entry.path)
                gone.append(entry.name)
        except OSError:
            continue
    return gone


@contextlib.contextmanager
def cache_write(path: Path, *temps: Path) -> Iterator[None]:
    """A failed cache write (disk full, ``ulimit -f``, read-only) → ONE line; ``temps`` removed."""
    try:
        yield
    except OSError as e:
        for tmp in temps:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
        why = {28: "the disk is full", 27: "the file is too large for this process (ulimit -f?)",
               122: "the disk quota is exceeded"}.get(e.errno, e.strerror or str(e))
        raise BenchError(f"cannot write the feature cache {path}: {why}; free space, point --cache-dir or "
                         "BENCH_CACHE elsewhere, or pass --no-cache") from None


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
        if self.root is not None:
            clean_stale(self.root)
        self._memory: dict[str, np.ndarray] = {}
        self.computed = 0  # number of extraction passes, for tests and run summaries

    def key(self, source: ImageSource, extractor: Extractor, layer: str) -> str:
        parts = {"store": STORE_VERSION, "dataset": source.name, "revision": source.revision,
                 "n": source.n, "extractor": extractor.cache_key(), "layer": layer, "dtype": self.dtype}
        pipeline = getattr(extractor, "pipeline", None)
        if pipeline is not None and getattr(source, "native", None) is not None:
            parts["pixels"] = pipeline(source).describe()   # absent for in-memory sources: keys unchanged
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
        check_batch_size(batch_size)
        key = self.key(source, extractor, layer)
        if key in self._memory:
            return self._memory[key]
        path = self.path(source, extractor, layer)
        feats = self._load(path) if path is not None else None
        if feats is None and collective and distributed.active() and path is not None:
            self._extract_sharded(path, source, extractor, layer, device, batch_size, progress)
            feats = self._load(path)
        if feats is None:
            if path is None:
                feats = self._extract(source, extractor, layer, np.arange(source.n), device, batch_size, progress)
            else:
                self._extract(source, extractor, layer, np.arange(source.n), device, batch_size, progress, out=path)
                feats = np.load(path, mmap_mode="r")
                self._describe(path, source, extractor, layer, feats.shape[1])
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
            return self._checked(path, *self._expected_shape(path))
        manifest = self._manifest(path)
        if not manifest.exists():
            return None
        try:
            shards = [s for s in json.loads(manifest.read_text())["shards"] if s["stop"] > s["start"]]
        except (ValueError, KeyError, TypeError, OSError) as e:
            _move_aside(manifest, f"unreadable manifest ({type(e).__name__})")
            return None
        width = self._expected_shape(path)[1]
        parts = [self._checked(path.parent / s["file"], s["stop"] - s["start"], width) for s in shards]
        if any(p is None for p in parts):
            _move_aside(manifest, "a shard it lists is missing or damaged")
            return None
        return ShardedRows(parts, [s["start"] for s in shards])

    @staticmethod
    def _expected_shape(path: Path) -> tuple[int | None, int | None]:
        """(rows, width) the key's sidecar promises (None for what it does not say; sidecars written
        before the width was stored have rows only)."""
        try:
            side = json.loads(path.with_suffix(".json").read_text())
        except (OSError, ValueError):
            return None, None
        out = []
        for field in ("n", "d"):
            try:
                out.append(int(side[field]))
            except (KeyError, TypeError, ValueError):
                out.append(None)
        return out[0], out[1]

    def _checked(self, path: Path, rows: int | None, width: int | None = None) -> np.ndarray | None:
        """The memory-mapped features at ``path`` if they are a 2-D array of this store's dtype with
        ``rows`` rows and ``width`` columns; otherwise the file is moved aside (one warning line)
        and None returned."""
        if not path.exists():
            return None
        try:
            feats = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            _move_aside(path, f"unreadable ({type(e).__name__})")
            return None
        problem = None
        if feats.ndim != 2:
            problem = f"{feats.ndim}-D, expected 2-D"
        elif feats.dtype != np.dtype(self.dtype):
            problem = f"dtype {feats.dtype}, expected {self.dtype}"
        elif rows is not None and feats.shape[0] != rows:
            problem = f"{feats.shape[0]} rows, expected {rows}"
        elif width is not None and feats.shape[1] != width:
            problem = f"{feats.shape[1]} features wide, expected {width}"
        if problem:
            del feats
            _move_aside(path, problem)
            return None
        return feats

    def _describe(self, path: Path, source, extractor, layer: str, width: int) -> None:
        side = path.with_suffix(".json")
        with cache_write(side, side.with_name(f".{side.name}.{os.getpid()}.tmp")):
            write_atomic(side, json.dumps(
                {"dataset": source.name, "revision": source.revision, "n": source.n, "d": width, "layer": layer,
                 "dtype": self.dtype, "extractor": extractor.cache_key()}, indent=1, default=str))

    def _extract_sharded(self, path, source, extractor, layer, device, batch_size, progress) -> None:
        ctx = distributed.context()
        bounds = [distributed.shard_range(source.n, r, ctx.world_size, align=batch_size)
                  for r in range(ctx.world_size)]
        start, stop = bounds[ctx.rank]
        mine = self._shard_path(path, ctx.rank, ctx.world_size)
        if self._checked(mine, stop - start) is None and stop > start:
            self._extract(source, extractor, layer, np.arange(start, stop), device, batch_size,
                          progress and ctx.is_main, out=mine)
        distributed.barrier()
        if ctx.is_main:
            shards = [{"file": self._shard_path(path, r, ctx.world_size).name, "start": a, "stop": b}
                      for r, (a, b) in enumerate(bounds)]
            manifest = self._manifest(path)
            with cache_write(manifest, manifest.with_name(f".{manifest.name}.{os.getpid()}.tmp")):
                write_atomic(manifest, json.dumps({"n": source.n, "shards": shards}, indent=1))
            widths = [np.load(path.parent / s["file"], mmap_mode="r").shape[1]
                      for s in shards if s["stop"] > s["start"]]
            self._describe(path, source, extractor, layer, widths[0] if widths else 0)
        distributed.barrier()

    def _extract(self, source, extractor, layer, indices: np.ndarray, device, batch_size, progress,
                 out: Path | None = None) -> np.ndarray | None:
        """Features of rows ``indices``: in memory (``out`` None), or written batch by batch into a
        ``.npy`` at ``out`` (:class:`_RowWriter`; renamed into place only once every row is written)."""
        self.computed += 1
        n = len(indices)
        feats: np.ndarray | None = None
        tmp = None if out is None else out.with_name(f".{out.stem}.tmp{os.getpid()}.npy")
        if tmp is not None:
            with cache_write(out.parent):
                tmp.parent.mkdir(parents=True, exist_ok=True)
        try:
            pos = 0
            batches = extractor.iter_layers(source, indices, [layer], device=device, batch_size=batch_size,
                                            progress=progress)
            with worker_errors():
                for batch in batches:
                    rows = pool(batch[layer]).float().cpu().numpy().astype(self.dtype, copy=False)
                    if tmp is None:
                        feats = np.empty((n, rows.shape[1]), dtype=self.dtype) if feats is None else feats
                        feats[pos:pos + len(rows)] = rows
                    else:
                        with cache_write(out, tmp):
                            feats = _RowWriter(tmp, (n, rows.shape[1]), self.dtype) if feats is None else feats
                            feats[pos:pos + len(rows)] = rows
                    pos += len(rows)
            if tmp is None:
                return feats if feats is not None else np.zeros((0, 0), dtype=self.dtype)
            with cache_write(out, tmp):
                if feats is None:
                    np.save(tmp, np.zeros((0, 0), dtype=self.dtype))
                if isinstance(feats, _RowWriter):
                    feats.close()
                os.replace(tmp, out)  # atomic: readers see the whole file or none
            tmp = None
            return None
        finally:
            if isinstance(feats, _RowWriter):
                with contextlib.suppress(OSError):   # a close that fails to flush: the file goes anyway
                    feats.close()
            if tmp is not None:  # interrupted (error, Ctrl-C, dead worker): keep only complete files
                tmp.unlink(missing_ok=True)


class _RowWriter:
    """Consecutive rows written into a ``.npy`` file with plain file writes. The written pages sit
    in the OS page cache, outside this process's resident memory; a writable memmap kept every
    page it wrote resident (+140 MB of peak RSS at 200,000 × 192 float32 rows)."""

    def __init__(self, path: Path, shape: tuple[int, int], dtype: str):
        sized = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)  # header, file of full size
        self._offset, self._row_bytes, self._dtype = sized.offset, shape[1] * np.dtype(dtype).itemsize, dtype
        del sized
        self._fh = open(path, "r+b")

    def __setitem__(self, rows: slice, values: np.ndarray) -> None:
        self._fh.seek(self._offset + rows.start * self._row_bytes)
        self._fh.write(np.ascontiguousarray(values, dtype=self._dtype).tobytes())

    def close(self) -> None:
        self._fh.close()


def _move_aside(path: Path, why: str) -> None:
    """Rename a damaged cache file to ``*.bad.<suffix>`` (kept for inspection) with one warning line."""
    bad = path.with_name(f"{path.stem}.bad{path.suffix}")
    try:
        os.replace(path, bad)
    except OSError:
        path.unlink(missing_ok=True)
    print(f"warning: feature cache {path.name} is {why}; moved aside to {bad.name}, recomputing",
          file=sys.stderr)
