"""Running under ``torchrun``: the process group, shard ranges and collectives the suite uses.

``torchrun`` (``torch.distributed.run``) is the engine: it starts the processes and sets
``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT``; :func:`init` joins the
group it describes (gloo on CPU, NCCL on CUDA). Every helper here is a no-op in a single
process, so code written against it runs unchanged without torchrun.

Which work is collective: feature extraction (each rank writes its own shard of the feature
store) and the roles of methods with ``distributed = True`` — ProtoSim (DDP training) and
k-means (assignment local, centroid sums all-reduced). Everything else runs on rank 0 inside
:func:`solo` while the other ranks move on to the next collective step.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from bench.errors import BenchError

#: a method that is not collective runs on rank 0 alone while the others wait at the next
#: collective; give it hours, not gloo's 30-minute default
TIMEOUT = datetime.timedelta(hours=12)


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched() -> bool:
    """True when this process was started by torchrun (or an equivalent) with more than one rank."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


_local = threading.local()
#: pids of the other ranks on this host, learned when joining the group (see :func:`shutdown`)
_local_peers: list[int] = []


def _solo_depth() -> int:
    return getattr(_local, "solo", 0)


def active() -> bool:
    """True inside a process group of more than one rank, outside :func:`solo`."""
    return _solo_depth() == 0 and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@contextlib.contextmanager
def solo() -> Iterator[None]:
    """Run a block on this rank alone: every helper here behaves as in a single process, so
    code that would otherwise enter a collective (and wait forever for the other ranks) does not."""
    _local.solo = _solo_depth() + 1
    try:
        yield
    finally:
        _local.solo -= 1


def context() -> Context:
    if active():
        return Context(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    if _solo_depth() and dist.is_available() and dist.is_initialized():
        return Context(dist.get_rank(), 1, int(os.environ.get("LOCAL_RANK", "0")))
    return Context()


def init(device: torch.device) -> Context:
    """Join the process group torchrun describes (idempotent); returns this rank's context.

    On CUDA each rank takes ``cuda:LOCAL_RANK``; callers should use :func:`local_device`.
    """
    if not launched() or (dist.is_available() and dist.is_initialized()):
        return context()
    if device.type == "cuda":
        check_one_gpu_per_process(int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
    here = (socket.gethostname(), os.getpid())
    everyone: list = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, here)
    _local_peers[:] = [pid for host, pid in everyone if host == here[0] and pid != here[1]]
    return context()


def check_one_gpu_per_process(per_node: int) -> None:
    """NCCL needs one GPU per process; say so in one line instead of a failed rendezvous."""
    visible = torch.cuda.device_count()
    if per_node > visible:
        raise BenchError(f"{per_node} processes per node on CUDA need {per_node} GPUs but {visible} are visible "
                         "(NCCL needs one GPU per process); use --nproc-per-node gpu, or --device cpu for gloo")


def local_device(device: torch.device) -> torch.device:
    """``cuda`` → ``cuda:LOCAL_RANK`` under torchrun; anything else unchanged."""
    if device.type == "cuda" and launched():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def shutdown(*, failed: bool = False, wait_s: float = 60.0) -> None:
    """Leave the process group.

    ``failed``: this rank is about to exit non-zero on purpose (a run with failed cells).
    torchrun takes any non-zero exit for a crash and sends SIGTERM to the ranks still running,
    even one that has finished and is only tearing down; so first wait, at most ``wait_s``,
    for the other ranks on this host to exit on their own.
    """
    if active():
        dist.destroy_process_group()
    if failed:
        deadline = time.monotonic() + wait_s
        while any(_running(pid) for pid in _local_peers) and time.monotonic() < deadline:
            time.sleep(0.05)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def barrier() -> None:
    if active():
        dist.barrier()


def shard_range(n: int, rank: int, world_size: int, *, align: int = 1) -> tuple[int, int]:
    """Contiguous [start, stop) of ``n`` items for ``rank``; boundaries are multiples of ``align``
    (the batch size), so every rank sees exactly the batches a single process would."""
    blocks = -(-n // align)
    start = min(n, (blocks * rank // world_size) * align)
    stop = min(n, (blocks * (rank + 1) // world_size) * align)
    return start, stop


def comm_device() -> torch.device:
    """Where the backend reduces: CUDA for NCCL, CPU for gloo."""
    if active() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over ranks, returned on ``t``'s device (``t`` itself alone). Moves the tensor to the
    backend's device and back when they differ."""
    if not active():
        return t
    moved = t.to(comm_device())
    dist.all_reduce(moved, op=dist.ReduceOp.SUM)
    if moved.data_ptr() == t.data_ptr():
        return t
    return t.copy_(moved)


def broadcast_object(obj: object, src: int = 0) -> object:
    """``obj`` of rank ``src`` on every rank (no-op alone)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_rows(local: np.ndarray, start: int, n_total: int) -> np.ndarray:
    """Every rank's rows ``[start, start + len(local))`` of a 1-D integer array, on every rank
    (for per-image codes, never for features). Alone: ``local`` itself."""
    if not active():
        return local
    full = torch.zeros(n_total, dtype=torch.int64)
    full[start:start + len(local)] = torch.as_tensor(local, dtype=torch.int64)
    return all_reduce_sum(full).numpy()


class SharedError(BenchError):
    """A user error every rank raises alike (rank 0's own, broadcast, or found in what all ranks
    gathered): rank 0 prints the one line and carries the exit status; the others leave quietly,
    so the line is neither repeated nor lost to torchrun stopping rank 0 when a peer fails first."""


def on_main(fn, *, share: bool = False):
    """``fn()`` on rank 0 alone (inside :func:`solo`) while the others wait; a BenchError there is
    raised on every rank (as :class:`SharedError`), so no rank waits at a collective rank 0 never
    reaches. Returns the value on rank 0, and on the others too with ``share`` (else None)."""
    if not active():
        return fn()
    value, error = None, None
    if context().is_main:
        try:
            with solo():
                value = fn()
        except BenchError as exc:
            error = str(exc)
    error = broadcast_object(error)
    if error is not None:
        raise SharedError(error)
    return broadcast_object(value) if share else value


def all_gather_object(obj: object) -> list:
    """Every rank's ``obj``, in rank order, on every rank (for small things; alone: ``[obj]``)."""
    if not active():
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_object(obj: object) -> list | None:
    """Every rank's ``obj`` in rank order on rank 0, None on the others (alone: ``[obj]``)."""
    if not active():
        return [obj]
    out: list | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out
