"""Training ProtoSim on a frozen backbone with the DINO objective; checkpoint and resume.

Randomness: every epoch runs under ``torch.manual_seed(f(seed, epoch))`` inside
``torch.random.fork_rng`` (the caller's RNG is untouched), so an epoch depends only on the
state saved at the end of the previous one, and a run resumed from a checkpoint continues
exactly as the uninterrupted run would have.

Under ``torchrun`` (an active process group) every rank trains: the student is wrapped in
DistributedDataParallel, each rank takes its contiguous share of every global batch (all ranks
draw the same permutation), per-sample randomness is drawn for the global batch and sliced
(shard.py), the DINO centre and the logged loss are global means, the teacher EMA runs on
every rank from the synced student, and rank 0 alone writes the checkpoint that every rank
resumes from. Two processes thus reproduce the single-process run of the same global batch up
to float reduction order.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from bench_protosim.augment import MultiCrop
from bench_protosim.data import Backbone, ImageTable, batch_loader
from bench_protosim.dino import (
    DINOLoss,
    cancel_last_layer_gradients,
    clip_gradients,
    cosine_scheduler,
    ema_update,
    param_groups,
)
from bench_protosim.init import kmeans_prototypes
from bench_protosim.layer import ProtoSimNet, step_memory_bytes
from bench_protosim.shard import Shard
from torch.nn.parallel import DistributedDataParallel

from bench import distributed
from bench.errors import BenchError

log = logging.getLogger("bench.protosim")

#: tensors as safetensors, everything else as JSON in its header: loading never unpickles
CHECKPOINT = "checkpoint.safetensors"
#: the pickle format of earlier versions: never loaded (unpickling a placed file can run code)
LEGACY_CHECKPOINT = "checkpoint.pt"
CHECKPOINT_VERSION = 2
_META_KEY = "bench_protosim"


@dataclass
class TrainConfig:
    """Everything that changes the trained weights (defaults: the paper / reference run)."""

    n_prototypes: int = 8192
    epochs: int = 20
    hard_epoch: int = 15
    batch_size: int = 128
    lr: float = 5e-5
    lr_schedule: str = "paper"
    base_lr: float = 5e-4
    warmup_epochs: int = 10
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    clip_grad: float = 3.0
    freeze_last_layer: int = 1
    momentum_teacher: float = 0.996
    student_temp: float = 0.1
    teacher_temp: float = 0.04
    center_momentum: float = 0.9
    out_dim: int = 65536
    head_hidden_dim: int = 2048
    head_bottleneck_dim: int = 256
    head_layers: int = 3
    norm_last_layer: bool = True
    block_heads: int = 1
    drop_path: float = 0.1
    tau: float = 1.0
    global_crop_size: int = 224
    local_crop_size: int = 96
    n_local_crops: int = 8
    global_crop_scale: tuple[float, float] = (0.4, 1.0)
    local_crop_scale: tuple[float, float] = (0.05, 0.4)
    chunk_tokens: int | None = None
    amp: bool = True
    head_checkpoint: str | None = None
    balanced: bool = False
    prototype_init: str = "uniform"

    @classmethod
    def from_params(cls, params: dict) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        cfg = cls(**{k: v for k, v in params.items() if k in names})
        cfg.global_crop_scale = tuple(cfg.global_crop_scale)
        cfg.local_crop_scale = tuple(cfg.local_crop_scale)
        return cfg


@dataclass
class TrainResult:
    student: ProtoSimNet
    teacher: ProtoSimNet
    history: list[dict] = field(default_factory=list)
    resumed_from_epoch: int = -1
    seconds: float = 0.0


def lr_schedule(cfg: TrainConfig, batch: int, steps: int) -> np.ndarray:
    """``paper``: constant ``lr`` (5e-5). ``reference``: DINO's warm-up to base_lr·batch/256
    then cosine to ``lr`` (the reference's min_lr, which is the paper's 5e-5)."""
    if cfg.lr_schedule == "paper":
        return np.full(cfg.epochs * steps, cfg.lr)
    return cosine_scheduler(cfg.base_lr * batch / 256.0, cfg.lr, cfg.epochs, steps,
                            warmup_epochs=cfg.warmup_epochs)


def available_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 1 << 62


def check_memory(cfg: TrainConfig, backbone: Backbone, batch: int, device: torch.device,
                 limit_gb: float | None) -> int:
    """Fail early, with the estimate, when one training step cannot fit in memory."""
    need = step_memory_bytes(batch_size=batch, n_prototypes=cfg.n_prototypes,
                             tokens_global=backbone.n_tokens(cfg.global_crop_size),
                             tokens_local=backbone.n_tokens(cfg.local_crop_size),
                             n_local_crops=cfg.n_local_crops,
                             out_dim=cfg.out_dim, dim=backbone.dim, chunk_tokens=cfg.chunk_tokens)
    have = int(limit_gb * 2**30) if limit_gb is not None else available_bytes(device)
    if need > have:
        raise BenchError(
            f"protosim: K={cfg.n_prototypes} needs about {need / 2**30:.1f} GiB per training step "
            f"(batch {batch}, {2 + cfg.n_local_crops} crops, dense tokens×K assignment) but only "
            f"{have / 2**30:.1f} GiB is free on {device.type}; lower n_prototypes or batch_size, "
            f"or set chunk_tokens (e.g. 16384) to recompute the assignment in chunks")
    return need


def load_dino_heads(path: str, student: ProtoSimNet, teacher: ProtoSimNet) -> None:
    """The reference starts from DINO's full checkpoint (e.g. ``dino_deitsmall16_pretrain_full_checkpoint
    .pth``): its student head into the student, its teacher head into the teacher. The centre is
    not restored (it starts at 0, as in the reference)."""
    from pathlib import Path

    if not Path(path).is_file():
        raise BenchError(f"protosim: head_checkpoint {path!r} is not a file (a DINO full checkpoint)")
    import argparse

    try:
        # weights only, plus argparse.Namespace: DINO stores its command line under "args" (a plain
        # attribute bag, so admitting it runs no code)
        with torch.serialization.safe_globals([argparse.Namespace]):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch.load raises many types; reported in one line
        why = ("it holds Python objects besides tensors, refused without running them"
               if "weights only" in str(exc).lower() else type(exc).__name__)
        raise BenchError(f"protosim: cannot read head_checkpoint {path!r} ({why})") from None
    if not isinstance(state, dict):
        raise BenchError(f"protosim: head_checkpoint {path!r} is not a DINO full checkpoint (a dict)")
    for part, net in (("student", student), ("teacher", teacher)):
        if part not in state:
            raise BenchError(f"protosim: head_checkpoint {path!r} has no {part!r} entry (not a DINO full "
                             "checkpoint)")
        names = {key.removeprefix("module."): value for key, value in state[part].items()}
        head = {key.removeprefix("head."): value for key, value in names.items() if key.startswith("head.")}
        want = net.head.state_dict()
        bad = [k for k in want if k not in head or head[k].shape != want[k].shape]
        bad += sorted(set(head) - set(want))
        if bad:
            raise BenchError(f"protosim: the {part} head in {path!r} does not fit out_dim / head_hidden_dim "
                             f"/ head_bottleneck_dim / head_layers (first mismatch: {bad[0]})")
        net.head.load_state_dict(head)


def _epoch_seed(seed: int, epoch: int) -> int:
    return int.from_bytes(hashlib.sha256(f"protosim:{seed}:{epoch}".encode()).digest()[:8], "little") >> 1


class Trainer:
    """One ProtoSim training run on ``table`` through ``backbone``."""

    def __init__(self, cfg: TrainConfig, backbone: Backbone, table: ImageTable, *, seed: int,
                 checkpoint_dir: str | Path, resume: bool = True, progress: bool = False,
                 num_workers: int = 0, memory_limit_gb: float | None = None,
                 on_step: Callable[[int, int, float], None] | None = None):
        """With an active process group (outside ``bench.distributed.solo()``) every rank of it
        must run this: they train together."""
        self.cfg = cfg
        self.backbone = backbone
        self.table = table
        self.seed = seed
        self.device = backbone.device
        self.checkpoint_dir = Path(checkpoint_dir)
        self.resume = resume
        self.progress = progress
        self.num_workers = num_workers
        self.memory_limit_gb = memory_limit_gb
        self.on_step = on_step
        self.batch = min(cfg.batch_size, table.n)
        self.steps = max(table.n // self.batch, 1)  # drop_last, as DINO
        self.amp = cfg.amp and self.device.type == "cuda"
        self.ddp = distributed.active()
        self.ctx = distributed.context() if self.ddp else distributed.Context()
        self.shard: Shard | None = None
        if self.ddp:
            if self.batch % self.ctx.world_size:
                raise BenchError(f"protosim: the global batch ({self.batch} = min(batch_size, images)) must be "
                                 f"divisible by the {self.ctx.world_size} ranks; change batch_size")
            self.shard = Shard(*distributed.shard_range(self.batch, self.ctx.rank, self.ctx.world_size),
                               self.batch)
            log.info("protosim: rank %d of %d trains rows %d:%d of every global batch of %d (DDP)",
                     self.ctx.rank, self.ctx.world_size, self.shard.lo, self.shard.hi, self.batch)

    def fingerprint(self) -> str:
        blob = {"config": asdict(self.cfg), "seed": self.seed, "data": self.table.fingerprint(),
                "backbone": self.backbone.cache_key(), "version": CHECKPOINT_VERSION}
        return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]

    # ------------------------------------------------------------------ build
    def _build(self) -> tuple[ProtoSimNet, ProtoSimNet]:
        cfg = self.cfg
        student = ProtoSimNet(dim=self.backbone.dim, n_prototypes=cfg.n_prototypes, norm=self.backbone.norm,
                              out_dim=cfg.out_dim, block_heads=cfg.block_heads, drop_path=cfg.drop_path,
                              head_layers=cfg.head_layers, head_hidden_dim=cfg.head_hidden_dim,
                              head_bottleneck_dim=cfg.head_bottleneck_dim,
                              norm_last_layer=cfg.norm_last_layer)
        teacher = copy.deepcopy(student).requires_grad_(False)
        if cfg.head_checkpoint:
            load_dino_heads(cfg.head_checkpoint, student, teacher)
        student.to(self.device)
        teacher.to(self.device)
        return student.train(), teacher.eval()  # teacher: no drop-path; its Gumbel noise stays on

    @torch.no_grad()
    def _init_from_kmeans(self, student: ProtoSimNet, teacher: ProtoSimNet) -> None:
        """Student and teacher prototypes ← k-means of the tokens (init.py); under DDP rank 0
        clusters alone and every rank takes its centroids."""
        centroids, error = None, None
        if self.ctx.is_main:
            try:
                with distributed.solo():
                    centroids = kmeans_prototypes(self.backbone, self.table, self.cfg.n_prototypes,
                                                  seed=self.seed)
            except BenchError as exc:  # told to every rank, so none waits for centroids that never come
                error = str(exc)
        if self.ddp:
            centroids, error = distributed.broadcast_object((centroids, error))
        if error:
            raise BenchError(error)
        for net in (student, teacher):
            net.protosim.prototypes.copy_(centroids.to(net.protosim.prototypes.device))

    def _epoch_rows(self, epoch: int) -> torch.Tensor:
        n, total = self.table.n, self.steps * self.batch
        if self.cfg.balanced and self.table.n_groups > 1:
            counts = np.bincount(self.table.groups, minlength=self.table.n_groups).astype(np.float64)
            w = torch.from_numpy(1.0 / counts[self.table.groups])
            rows = torch.multinomial(w, total, replacement=True)
        else:
            rows = torch.randperm(n)[:total]
        return rows.view(self.steps, self.batch)

    # ------------------------------------------------------------------ run
    def run(self) -> TrainResult:
        cfg = self.cfg
        t0 = time.perf_counter()
        # the global batch also under DDP: a rank's smaller share plus the global batch's transient
        # Gumbel noise (shard.py) stays below it
        check_memory(cfg, self.backbone, self.batch, self.device, self.memory_limit_gb)
        fork_devices = []
        if self.device.type == "cuda":
            index = self.device.index
            fork_devices = [index if index is not None else torch.cuda.current_device()]
        with torch.random.fork_rng(devices=fork_devices):
            torch.manual_seed(_epoch_seed(self.seed, -1))
            student, teacher = self._build()
            optimizer = torch.optim.AdamW(param_groups(student), lr=cfg.lr, weight_decay=cfg.weight_decay)
            loss_fn = DINOLoss(cfg.out_dim, n_crops=2 + cfg.n_local_crops, student_temp=cfg.student_temp,
                               teacher_temp=cfg.teacher_temp, center_momentum=cfg.center_momentum,
                               distributed=self.ddp)
            loss_fn.to(self.device)
            resumed = self._load(student, teacher, optimizer, loss_fn)
            if resumed is None and cfg.prototype_init == "kmeans":
                self._init_from_kmeans(student, teacher)
            history: list[dict] = [{"epoch": -1, "loss": None, "diversity": student.protosim.diversity(),
                                    "hard": False}]
            start = 0
            if resumed is not None:
                history = resumed["history"]
                start = resumed["epoch"] + 1
            if self.ddp and distributed.broadcast_object(start) != start:
                raise BenchError(f"protosim: rank {self.ctx.rank} found another checkpoint in {self.checkpoint_dir} "
                                 "than rank 0; under torchrun checkpoint_dir must be on a filesystem all ranks share")
            net = self._wrap(student)
            schedules = (lr_schedule(cfg, self.batch, self.steps),
                         cosine_scheduler(cfg.weight_decay, cfg.weight_decay_end, cfg.epochs, self.steps),
                         cosine_scheduler(cfg.momentum_teacher, 1.0, cfg.epochs, self.steps))
            augment = MultiCrop(global_size=cfg.global_crop_size, local_size=cfg.local_crop_size,
                                n_local=cfg.n_local_crops, global_scale=cfg.global_crop_scale,
                                local_scale=cfg.local_crop_scale, mean=self.backbone.mean,
                                std=self.backbone.std)
            with _Bar(self.progress and self.ctx.is_main, cfg.epochs * self.steps, start * self.steps) as bar:
                for epoch in range(start, cfg.epochs):
                    torch.manual_seed(_epoch_seed(self.seed, epoch))
                    row = self._epoch(epoch, net, student, teacher, optimizer, loss_fn, augment, schedules, bar)
                    history.append(row)
                    self._save(epoch, student, teacher, optimizer, loss_fn, history)
        return TrainResult(student.eval(), teacher.eval(), history,
                           resumed_from_epoch=-1 if resumed is None else resumed["epoch"],
                           seconds=time.perf_counter() - t0)

    def _wrap(self, student: ProtoSimNet) -> torch.nn.Module:
        """The student as trained: under DDP its gradients (prototypes, block, head) are averaged
        over the ranks, which is the single-process gradient as each rank's loss is the mean
        over an equal share of the batch. Clipping, the last-layer freeze, the optimizer and the
        EMA act on the unwrapped student: the same parameters, identical on every rank."""
        if not self.ddp:
            return student
        if self.device.type == "cuda":
            index = self.device.index if self.device.index is not None else torch.cuda.current_device()
            return DistributedDataParallel(student, device_ids=[index])
        return DistributedDataParallel(student)

    def _epoch(self, epoch, net, student, teacher, optimizer, loss_fn, augment, schedules, bar) -> dict:
        """One epoch; ``net`` is the student as called (DDP-wrapped under torchrun), ``student`` the module."""
        cfg = self.cfg
        lrs, wds, moms = schedules
        hard = epoch >= cfg.hard_epoch
        rows = self._epoch_rows(epoch)
        if self.shard is not None:
            rows = rows[:, self.shard.lo:self.shard.hi]
        loader = batch_loader(self.table, [r.numpy() for r in rows], num_workers=self.num_workers,
                              pin_memory=self.device.type == "cuda")
        losses = []
        net.train()
        for it, (images, sizes) in enumerate(loader):
            step = epoch * self.steps + it
            for i, group in enumerate(optimizer.param_groups):
                group["lr"] = lrs[step]
                if i == 0:
                    group["weight_decay"] = wds[step]
            crops = augment(images.to(self.device, non_blocking=True), sizes, shard=self.shard)
            with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                tokens = [self.backbone.tokens(torch.cat(crops[:2]))]
                if cfg.n_local_crops:
                    tokens.append(self.backbone.tokens(torch.cat(crops[2:])))
                kw = {"gumbel": True, "tau": cfg.tau, "chunk_tokens": cfg.chunk_tokens, "shard": self.shard}
                with torch.no_grad():
                    t_out = teacher(tokens[0], hard=False, **kw)      # the teacher stays soft Gumbel
                loss = loss_fn(net(tokens, hard=hard, **kw), t_out)
            if self.ddp:  # the global batch's loss: logged, and every rank stops together on a bad one
                value = float(distributed.all_reduce_sum(loss.detach().double())) / self.ctx.world_size
            else:
                value = float(loss.detach())
            if not math.isfinite(value):
                raise BenchError(f"protosim: the loss became {value} at epoch {epoch}, step {it}; "
                                 "lower lr or disable amp")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.clip_grad:
                clip_gradients(student, cfg.clip_grad)
            cancel_last_layer_gradients(epoch, student, cfg.freeze_last_layer)
            optimizer.step()
            ema_update(teacher, student, float(moms[step]))
            losses.append(value)
            bar.advance(epoch, value)
            if self.on_step is not None:
                self.on_step(epoch, it, value)
        return {"epoch": epoch, "loss": float(np.mean(losses)), "diversity": student.protosim.diversity(),
                "teacher_diversity": teacher.protosim.diversity(), "hard": hard, "lr": float(lrs[step]),
                "weight_decay": float(wds[step]), "momentum": float(moms[step]), "steps": len(losses)}

    # ------------------------------------------------------------------ checkpoints
    def _save(self, epoch, student, teacher, optimizer, loss_fn, history) -> None:
        """Rank 0 writes (the state is the same on every rank); the barrier makes the file
        complete before any rank goes on."""
        if self.ctx.is_main:
            self._write(epoch, student, teacher, optimizer, loss_fn, history)
        if self.ddp:
            distributed.barrier()

    def _write(self, epoch, student, teacher, optimizer, loss_fn, history) -> None:
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        state = {"epoch": epoch, "student": student.state_dict(), "teacher": teacher.state_dict(),
                 "optimizer": optimizer.state_dict(), "center": loss_fn.center.detach(),
                 "history": history, "config": asdict(self.cfg), "seed": self.seed}
        path = self.checkpoint_dir / CHECKPOINT
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
        write_checkpoint(tmp, state, fingerprint=self.fingerprint())
        os.replace(tmp, path)  # a crash mid-write leaves the previous epoch's checkpoint intact

    def _load(self, student, teacher, optimizer, loss_fn) -> dict | None:
        """The saved state when this run's checkpoint exists. The run identity (fingerprint of
        config, seed, data and backbone) is checked from the JSON header before any tensor is
        read; another run's checkpoint is an error, not a fresh start, because a fresh start
        would overwrite it at the end of the first epoch."""
        path = self.checkpoint_dir / CHECKPOINT
        legacy = self.checkpoint_dir / LEGACY_CHECKPOINT
        if self.resume and not path.exists() and legacy.exists() and self.ctx.is_main:
            log.warning("protosim: ignoring %s: checkpoints in the old pickle format are never loaded (unpickling "
                        "a file can run code); training starts afresh and writes %s", legacy, CHECKPOINT)
        if not self.resume or not path.exists():
            return None
        state = read_checkpoint(path, fingerprint=self.fingerprint())
        student.load_state_dict(state["student"])
        teacher.load_state_dict(state["teacher"])
        optimizer.load_state_dict(state["optimizer"])
        loss_fn.center.copy_(state["center"].to(self.device))
        return state


# ---------------------------------------------------------------------- checkpoint files


def _pack(obj, tensors: dict[str, torch.Tensor], storages: set[int]):
    """JSON for ``obj`` with every tensor moved into ``tensors`` (named t0, t1 …). Dicts and
    tuples are tagged so that int keys (optimizer state) and tuples (betas) come back as saved."""
    if isinstance(obj, torch.Tensor):
        name = f"t{len(tensors)}"
        t = obj.detach().to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr in storages and t.numel():  # safetensors refuses tensors that share memory
            t = t.clone()
        storages.add(t.untyped_storage().data_ptr())
        tensors[name] = t
        return {"tensor": name}
    if isinstance(obj, dict):
        return {"dict": [[k, _pack(v, tensors, storages)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"tuple": [_pack(v, tensors, storages) for v in obj]}
    if isinstance(obj, list):
        return [_pack(v, tensors, storages) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"protosim: cannot checkpoint a {type(obj).__name__}")


def _unpack(obj, get: Callable[[str], torch.Tensor]):
    if isinstance(obj, list):
        return [_unpack(v, get) for v in obj]
    if isinstance(obj, dict):
        (tag, value), = obj.items()
        if tag == "tensor":
            return get(value)
        if tag == "tuple":
            return tuple(_unpack(v, get) for v in value)
        if tag == "dict":
            return {k: _unpack(v, get) for k, v in value}
        raise ValueError(f"unknown entry {tag!r}")
    return obj


def write_checkpoint(path: Path, state: dict, *, fingerprint: str) -> None:
    """``state`` (tensors, optimizer state, history …) as one safetensors file whose header
    holds the version, the run fingerprint and the JSON of everything that is not a tensor."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    body = _pack(state, tensors, set())
    meta = {"version": CHECKPOINT_VERSION, "fingerprint": fingerprint, "state": body}
    save_file(tensors, str(path), metadata={_META_KEY: json.dumps(meta)})


def read_checkpoint(path: Path, *, fingerprint: str | None = None) -> dict:
    """The state written by :func:`write_checkpoint`, tensors on the CPU. With ``fingerprint``,
    a checkpoint of another run (or version) is refused from the header alone, before any
    tensor is read. Nothing is unpickled."""
    from safetensors import safe_open

    def unreadable(why: str) -> BenchError:
        return BenchError(f"protosim: cannot read checkpoint {path} ({why}); delete it or use resume=False")

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = json.loads((f.metadata() or {}).get(_META_KEY, "null"))
            if not isinstance(meta, dict) or "state" not in meta:
                raise unreadable("not a protosim checkpoint")
            if meta.get("version") != CHECKPOINT_VERSION:
                raise unreadable(f"format version {meta.get('version')!r}, this bench writes {CHECKPOINT_VERSION}")
            if fingerprint is not None and meta.get("fingerprint") != fingerprint:
                raise BenchError(f"protosim: the checkpoint in {path.parent} is from a different run (data, "
                                 "parameters, seed or backbone differ); use another checkpoint_dir or resume=False")
            names = set(f.keys())

            def get(name: str) -> torch.Tensor:
                if name not in names:
                    raise ValueError(f"tensor {name!r} is missing")
                return f.get_tensor(name)

            state = _unpack(meta["state"], get)
    except BenchError:
        raise
    except Exception as exc:  # noqa: BLE001 - safetensors / json raise many types; reported in one line
        raise unreadable(type(exc).__name__) from None
    if not isinstance(state, dict) or not {"epoch", "student", "teacher", "optimizer", "center",
                                           "history"} <= set(state):
        raise unreadable("entries are missing")
    return state


class _Bar:
    """A rich progress bar over training steps showing epoch and running loss (off in tests)."""

    def __init__(self, enabled: bool, total: int, completed: int):
        self.enabled, self.total, self.completed = enabled, total, completed
        self._progress = None

    def __enter__(self) -> _Bar:
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(TextColumn("[bold]protosim[/] epoch {task.fields[epoch]}"), BarColumn(),
                                      MofNCompleteColumn(), TextColumn("loss {task.fields[loss]:.4f}"),
                                      TimeElapsedColumn(), TimeRemainingColumn(), transient=True)
            self._progress.__enter__()
            self._task = self._progress.add_task("train", total=self.total, completed=self.completed,
                                                 epoch=0, loss=float("nan"))
        return self

    def advance(self, epoch: int, loss: float) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=1, epoch=epoch, loss=loss)

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)
