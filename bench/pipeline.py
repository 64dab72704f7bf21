"""DataPipeline: the one road from stored bytes to model input.

Every consumer of images (feature extraction, DNA's layer streaming, ProtoSim's crops, the
pixel and wavelet readers) iterates batches of a source through :class:`DataPipeline`:

* **Workers.** File-backed sources are decoded in torch ``DataLoader`` worker processes
  (``workers`` of them; 0 decodes in-process), with prefetch and, on CUDA, pinned memory.
  An item is a whole batch of rows, computed by the same function whatever the worker count,
  and the loader returns items in order, so the output never depends on ``workers``.
  In-memory sources (the embedded datasets) have nothing to decode and stay in-process.
* **One exact resize.** With an extractor transform (:class:`~bench.extractors.transforms.Preprocess`)
  and a source that can decode its original pixels (``ImageSource.native``), each image is
  decoded at full size and resized/cropped once, straight to the extractor's input size
  (timm ``resolve_data_config`` semantics), in the worker. The batch comes back as uint8
  (B, 3, h, w); the extractor only normalises it.
* **GPU JPEG decode.** On CUDA, for sources that list their files, workers only read bytes;
  JPEGs are decoded in batches by ``torchvision.io.decode_jpeg(device="cuda")`` and resized on
  the GPU. A file that is not a JPEG, or that nvJPEG refuses, is decoded on the CPU instead
  (one file at a time), and a file that no decoder reads raises the usual one-line DataError.
* **Errors.** A DataError in a worker (corrupt file) comes back as data and is raised in the
  main process as the same one line; a worker that dies ends the run with one line.
* **Shared memory.** Workers hand batches over through ``/dev/shm``. When it cannot hold one
  batch per worker, fewer workers are used (0: decode in-process), with one warning line. A
  worker that still cannot place a batch there (torch's queue thread would only print and leave
  the main process waiting forever) exits, and the run ends with one line; a batch that takes
  longer than ``BENCH_LOADER_TIMEOUT`` seconds (a read that never returns) ends it too.
"""

from __future__ import annotations

import contextlib
import errno
import io
import mmap
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from bench.errors import BenchError, DataError

#: upper bound of the default worker count (beyond it decode rarely scales on one node)
MAX_DEFAULT_WORKERS = 32
DECODE_MODES = ("auto", "cpu", "gpu")
SHM_PATH = "/dev/shm"
SHM_FULL = "shared memory full: use --workers 0 or enlarge /dev/shm (e.g. docker run --shm-size 8g)"
#: seconds one batch may take before the run ends (a read that never returns); $BENCH_LOADER_TIMEOUT
DEFAULT_LOADER_TIMEOUT = 600
#: one byte shared with forked workers: why the last worker gave up (0 none, 1 shared memory, 2 other)
_WORKER_FAULT = mmap.mmap(-1, 1)
_warned: set[tuple] = set()


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def default_workers() -> int:
    """As many decode workers as usable cores (the main process mostly waits on the device),
    shared among the ranks torchrun starts on this node (``LOCAL_WORLD_SIZE``): 8 ranks on 16
    cores get 2 each, not 16 each."""
    try:
        ranks = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        ranks = 1
    return max(1, min(MAX_DEFAULT_WORKERS, usable_cores() // ranks))


def check_workers(workers: int | None) -> int:
    """``None`` → the default; a negative or non-integer count → ONE line."""
    if workers is None:
        return default_workers()
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 0:
        raise BenchError(f"--workers must be an integer >= 0 (0 decodes in the main process), got {workers!r}")
    return int(workers)


def check_decode(decode: str, device: torch.device | str | None) -> str:
    """``--decode gpu`` on a run without a CUDA device is ONE line, not a quiet CPU decode."""
    if decode not in DECODE_MODES:
        raise BenchError(f"--decode must be one of {', '.join(DECODE_MODES)}, got {decode!r}")
    if decode == "gpu" and device is not None and torch.device(device).type != "cuda":
        raise BenchError(f"--decode gpu needs a CUDA device, but this run's device is {device}; use --device cuda, "
                         "or --decode auto|cpu")
    return decode


def loader_timeout() -> float:
    try:
        return max(1.0, float(os.environ.get("BENCH_LOADER_TIMEOUT", DEFAULT_LOADER_TIMEOUT)))
    except ValueError:
        return float(DEFAULT_LOADER_TIMEOUT)


def check_batch_size(batch_size: Any) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise BenchError(f"--batch-size must be a positive integer, got {batch_size!r}")
    return int(batch_size)


# --------------------------------------------------------------------------- items


@dataclass
class Failed:
    """A DataError raised in a worker, carried back as data (no worker traceback is printed)."""

    message: str


def _is_jpeg(data: torch.Tensor) -> bool:
    return len(data) > 3 and data[:3].tolist() == [0xFF, 0xD8, 0xFF]


class _Batches(torch.utils.data.Dataset):
    """Map-style dataset whose item ``k`` is batch ``k`` of ``rows``, fully prepared.

    ``mode``: "plain" → uint8 (B, H, W, 3) numpy from ``source.image``; "exact" → uint8
    (B, 3, h, w) tensor, each image decoded at full size then resized once by ``geometry``;
    "bytes" → the raw file bytes of each row (decoded by the main process on the GPU).
    """

    def __init__(self, source, rows: np.ndarray, batch_size: int, mode: str,
                 geometry: Callable[[torch.Tensor], torch.Tensor] | None):
        self.source, self.rows, self.batch_size = source, rows, batch_size
        self.mode, self.geometry = mode, geometry

    def __len__(self) -> int:
        return (len(self.rows) + self.batch_size - 1) // self.batch_size

    def batch_rows(self, k: int) -> np.ndarray:
        return self.rows[k * self.batch_size:(k + 1) * self.batch_size]

    def __getitem__(self, k: int):
        rows = self.batch_rows(k)
        try:
            if self.mode == "plain":
                return _stack_runs([self.source.image(int(i)) for i in rows])
            if self.mode == "exact":
                return torch.cat([exact_resize(self.source.native(int(i)), self.geometry) for i in rows])
            blobs = [read_bytes(self.source.paths[int(i)]) for i in rows]
            for i, blob in zip(rows, blobs):
                _check_header(blob, self.source.paths[int(i)])
            # one tensor (one shared-memory segment) per batch rather than one per file
            return torch.cat(blobs), torch.tensor([len(b) for b in blobs], dtype=torch.int64)
        except DataError as e:
            return Failed(str(e))


@dataclass
class Runs:
    """A plain batch whose images differ in size: consecutive runs of one size, each stacked."""

    runs: list[np.ndarray]


def _stack_runs(images: list[np.ndarray]) -> np.ndarray | Runs:
    """One (B, H, W, 3) array, or, when sizes differ (A ∪ B of 28 and 32 px), a :class:`Runs`:
    the order is kept, so consumers see the same images in the same order, in smaller batches."""
    if all(im.shape == images[0].shape for im in images):
        return np.stack(images)
    cuts = [k for k in range(1, len(images)) if images[k].shape != images[k - 1].shape]
    return Runs([np.stack(images[lo:hi]) for lo, hi in zip([0, *cuts], [*cuts, len(images)])])


def exact_resize(image: np.ndarray, geometry: Callable[[torch.Tensor], torch.Tensor],
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """One (H, W, 3) uint8 image at its original size → (1, 3, h, w) uint8, resized once."""
    from bench.extractors.transforms import to_uint8_batch

    return geometry(to_uint8_batch(image[None], device))


def _check_header(blob: torch.Tensor, path: str) -> None:
    """Refuse, from the header alone, an image whose decode or resize on the device would allocate
    without bound (extreme aspect ratio, decompression bomb); files PIL cannot identify pass on
    to the CPU decoder and its own one-line error."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    from bench.datasets.real import check_shape

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(blob.numpy().tobytes())) as im:
                size = im.size
    except Image.DecompressionBombError as e:
        raise DataError(f"cannot read image {path}: {e}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return
    check_shape(*size, path)


def read_bytes(path: str) -> torch.Tensor:
    """A file's bytes as a uint8 tensor (what ``decode_jpeg`` takes); a missing file or one that is
    not a regular file (a FIFO would block) → DataError."""
    from bench.datasets.real import not_regular

    kind = not_regular(path)
    if kind is not None and kind != "missing":
        raise DataError(f"cannot read image {path}: it is {kind}; remove it")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise DataError(f"image file {path} has disappeared since the dataset was listed") from None
    except OSError as e:
        raise DataError(f"cannot read image {path}: {e.strerror or e}") from None
    return torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.zeros(0, dtype=torch.uint8)


def _worker_init(_worker_id: int) -> None:
    # decoding is one image per worker at a time: one thread each, no oversubscription
    torch.set_num_threads(1)
    # a batch the queue thread cannot send (shared memory full) is only printed by default, and the
    # main process then waits for it forever: exit instead, so the main process sees a dead worker
    import multiprocessing.queues

    multiprocessing.queues.Queue._on_queue_feeder_error = staticmethod(_feeder_failed)
    # the worker's resource-sharer thread hands tensors' file descriptors to the main process; when the
    # main process stops the workers (another worker died, Ctrl-C) mid-hand-over, that thread reports
    # the broken pipe through sys.excepthook as a traceback on the shared stderr: shutdown noise
    sys.excepthook = _quiet_broken_pipes(sys.excepthook)


def _quiet_broken_pipes(hook):
    def excepthook(kind, value, tb):
        if not issubclass(kind, (BrokenPipeError, ConnectionResetError, EOFError)):
            hook(kind, value, tb)
    return excepthook


def _feeder_failed(e: BaseException, _obj: Any) -> None:
    """In a worker: its batch could not be sent. Say why through the shared byte, then exit."""
    text = str(e)
    shm = getattr(e, "errno", None) == errno.ENOSPC or "shared memory" in text or "No space left" in text
    _WORKER_FAULT[0] = 1 if shm else 2
    os._exit(3)


# --------------------------------------------------------------------------- the pipeline


class DataPipeline:
    """Batches of ``source`` rows ``indices``, decoded in ``workers`` processes.

    Iterating yields ``(rows, images)``: the row indices of the batch, and either uint8
    (B, H, W, 3) numpy (no ``transform``, or a source without native decode) or uint8
    (B, 3, h, w) torch already at the model's input size (``exact``; on ``device`` when
    decoded on the GPU). ``exact`` says which, before iterating.
    """

    def __init__(self, source, indices: Sequence[int] | np.ndarray | None = None, *, batch_size: int = 64,
                 workers: int | None = None, transform=None, device: str | torch.device = "cpu",
                 decode: str = "auto", prefetch: int = 4):
        self.source = source
        self.rows = np.arange(source.n) if indices is None else np.asarray(indices, dtype=np.int64)
        self.batch_size = check_batch_size(batch_size)
        self.device = torch.device(device)
        self.transform = transform
        self.prefetch = max(1, int(prefetch))
        if decode not in DECODE_MODES:   # "gpu" on the CPU device runs the device path there (tests do)
            raise BenchError(f"decode must be one of {', '.join(DECODE_MODES)}, got {decode!r}")
        in_memory = getattr(source, "array", None) is not None
        self.workers = 0 if in_memory else check_workers(workers)
        self.exact = (transform is not None and getattr(transform, "fixed_size", False)
                      and getattr(source, "native", None) is not None and not in_memory)
        self.gpu_decode = self.exact and getattr(source, "paths", None) is not None and (
            decode == "gpu" or (decode == "auto" and self.device.type == "cuda"))
        self.mode = "bytes" if self.gpu_decode else ("exact" if self.exact else "plain")

    def __len__(self) -> int:
        return (len(self.rows) + self.batch_size - 1) // self.batch_size

    def describe(self) -> dict[str, Any]:
        """What changes the pixels (not how fast): part of the feature-cache key."""
        return {"input": "native-exact-resize" if self.exact else "source-image"}

    def __iter__(self) -> Iterator[tuple[np.ndarray, Any]]:
        geometry = self.transform.geometry if self.exact else None
        data = _Batches(self.source, self.rows, self.batch_size, self.mode, geometry)
        for k, item in enumerate(self._loader(data)):
            if isinstance(item, Failed):
                raise DataError(item.message)
            rows = data.batch_rows(k)
            if isinstance(item, Runs):
                start = 0
                for run in item.runs:
                    yield rows[start:start + len(run)], run
                    start += len(run)
                continue
            yield rows, (self._decode_on_device(item, rows) if self.mode == "bytes" else item)

    def _loader(self, data: _Batches) -> Iterator[Any]:
        workers = shm_workers(self.workers, self._item_bytes()) if self.workers else 0
        if workers == 0:
            return (data[k] for k in range(len(data)))
        return guarded(worker_loader(data, workers=workers,
                                     pin_memory=self.device.type == "cuda" and self.mode != "bytes",
                                     prefetch=shm_prefetch(self.prefetch, workers, self._item_bytes()),
                                     timeout=loader_timeout()))

    def _item_bytes(self) -> int:
        """Rough size of one batch in shared memory."""
        per_image = 100_000 if self.mode == "bytes" else (
            3 * int(np.prod(self.transform.input_size[1:])) if self.mode == "exact" else 3 * 256 * 256)
        return self.batch_size * per_image

    def _decode_on_device(self, packed: tuple[torch.Tensor, torch.Tensor], rows: np.ndarray) -> torch.Tensor:
        """JPEG bytes → nvJPEG in one call → one exact resize per image on the device; any file
        nvJPEG does not take is decoded on the CPU (PIL) and resized on the device the same way."""
        data, lengths = packed
        ends = np.cumsum(lengths.numpy())
        blobs = [data[e - n:e] for e, n in zip(ends, lengths.tolist())]
        geometry = self.transform.geometry
        out: list[torch.Tensor | None] = [None] * len(blobs)
        jpeg = [k for k, b in enumerate(blobs) if _is_jpeg(b)]
        decoded: dict[int, torch.Tensor] = {}
        if jpeg:
            decoded = decode_jpegs([blobs[k] for k in jpeg], jpeg, self.device)
        for k in range(len(blobs)):
            img = decoded.get(k)
            if img is None:  # not a JPEG, or the device decoder refused it: CPU decode (or its DataError)
                arr = self.source.native(int(rows[k]))
                out[k] = exact_resize(arr, geometry, self.device)
            else:
                out[k] = geometry(img[None])
        return torch.cat(out)  # type: ignore[arg-type]


def decode_jpegs(blobs: list[torch.Tensor], keys: list[int], device: torch.device) -> dict[int, torch.Tensor]:
    """``torchvision.io.decode_jpeg`` on ``device`` for a batch; on failure, file by file, leaving
    out the ones it cannot decode (grey-scale and CMYK come back as 3 channels via mode RGB)."""
    import warnings

    with warnings.catch_warnings():  # torchvision 0.29 flags its image io as moving to torchcodec
        warnings.simplefilter("ignore", DeprecationWarning)
        from torchvision.io import ImageReadMode, decode_jpeg

        try:
            images = decode_jpeg(blobs, mode=ImageReadMode.RGB, device=device)
            return dict(zip(keys, images))
        except (RuntimeError, ValueError):
            pass
        out = {}
        for key, blob in zip(keys, blobs):
            try:
                out[key] = decode_jpeg(blob, mode=ImageReadMode.RGB, device=device)
            except (RuntimeError, ValueError):
                continue
        return out


def shm_free(path: str | None = None) -> int | None:
    """Free bytes in the shared-memory mount workers pass batches through (None: unknown)."""
    import shutil

    try:
        return shutil.disk_usage(path or SHM_PATH).free
    except OSError:
        return None


def shm_workers(workers: int, item_bytes: int) -> int:
    """As many of ``workers`` as half the free shared memory holds one batch each (containers often
    mount a small /dev/shm); fewer, down to 0 (decode in-process), with one warning line."""
    free = shm_free()
    if free is None or workers == 0:
        return workers
    fit = int(min(workers, free // 2 // max(1, item_bytes)))
    if fit < workers and (workers, fit) not in _warned:
        _warned.add((workers, fit))
        print(f"warning: {SHM_PATH} has {free / 2**20:.1f} MiB free, room for the batches of {fit} of {workers} "
              f"data-loading workers; using {fit}{' (decoding in the main process)' if fit == 0 else ''}. "
              "Enlarge /dev/shm (e.g. docker run --shm-size 8g) for speed", file=sys.stderr, flush=True)
    return fit


def shm_prefetch(prefetch: int, workers: int, item_bytes: int, path: str | None = None) -> int:
    """Batches prefetched per worker, lowered so that all of them fit in half the free shared
    memory (containers often mount a small /dev/shm; workers pass batches through it)."""
    free = shm_free(path)
    if free is None:
        return prefetch
    return int(max(1, min(prefetch, free // 2 // max(1, workers * item_bytes))))


def worker_loader(dataset: torch.utils.data.Dataset, *, workers: int, pin_memory: bool = False,
                  prefetch: int = 4, timeout: float = 0) -> torch.utils.data.DataLoader:
    """The DataLoader every consumer uses: items are whole batches, in order, ``workers`` processes
    (each one thread), prefetching ``prefetch`` batches each. Forked where the platform allows, so
    sources with closures (folder loaders) need no pickling. No randomness: its generator is private."""
    import multiprocessing as mp

    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
    return torch.utils.data.DataLoader(dataset, batch_size=None, shuffle=False, num_workers=workers,
                                       pin_memory=pin_memory, prefetch_factor=prefetch,
                                       persistent_workers=False, worker_init_fn=_worker_init,
                                       multiprocessing_context=ctx, timeout=timeout,
                                       generator=torch.Generator().manual_seed(0))


@contextlib.contextmanager
def worker_errors() -> Iterator[None]:
    """Turn torch's "DataLoader worker ... killed/exited" RuntimeError into ONE line. torch raises it
    from a SIGCHLD handler wherever the main process happens to be (mid-forward too), so every frame
    that drives a worker loader (the pipeline, ``Extractor.iter_layers``, the FeatureStore) wraps
    its loop in this."""
    try:
        yield
    except RuntimeError as e:
        text = str(e).strip().splitlines()
        first = text[0].strip() if text else type(e).__name__
        if first.startswith("DataLoader timed out"):
            free = shm_free()
            if free is not None and free < 2**20:
                raise BenchError(SHM_FULL) from None
            raise BenchError(f"no batch came from the data-loading workers in {loader_timeout():.0f} s (a read that "
                             "never returns, e.g. a hung network file system?); rerun with --workers 0 to see the "
                             "file, or raise BENCH_LOADER_TIMEOUT") from None
        if not first.startswith("DataLoader worker"):
            raise
        if _WORKER_FAULT[0] == 1:
            raise BenchError(SHM_FULL) from None
        if _WORKER_FAULT[0] == 2:
            raise BenchError("a data-loading worker could not hand its batch to the main process; rerun with "
                             "--workers 0") from None
        raise BenchError(f"a data-loading worker died ({first}); the run stopped and nothing partial was "
                         "cached; rerun (with fewer --workers if memory ran out)") from None


def guarded(items) -> Iterator[Any]:
    """Iterate a worker loader: a dead worker → ONE line; workers shut down when the iteration ends
    or is interrupted (Ctrl-C, an error downstream)."""
    _WORKER_FAULT[0] = 0
    it = iter(items)
    try:
        with worker_errors():
            yield from it
    finally:
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
