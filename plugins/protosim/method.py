"""``protosim``: the Summariser (prototypes, codes, probe embedding, dataset-specific analysis)
and the Comparator (how differently two datasets use one jointly learned pool of prototypes).

Deviations from the reference, all documented in the parameters: the DINO head starts from
random weights (timm ViT weights carry no DINO head); the frozen backbone runs once per crop
in eval mode and is shared by student and teacher (the reference keeps drop-path 0.1 active in
the frozen student backbone); the Gumbel-softmax runs in fp32 under bf16 autocast; with
``prototype_init="kmeans"`` (the CPU quick preset) the prototypes start from k-means centroids of
the backbone's tokens instead of U[0, 1) (init.py says why).
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from bench_protosim.analysis import (
    Assignments,
    assign_all,
    cls_proportion,
    group_image_counts,
    group_token_counts,
    jensen_shannon,
    prototype_types,
    rank_shared,
    rank_specific,
    save_grid,
    top_images,
)
from bench_protosim.data import Backbone, ImageTable
from bench_protosim.findings import protosim_findings
from bench_protosim.train import CHECKPOINT, TrainConfig, Trainer, TrainResult

from bench.api import Comparator, Comparison, DataView, Summariser, Summary
from bench.distributed import local_device
from bench.errors import BenchError
from bench.runstore import check_writable_dir, inside, safe_name

#: a CPU preset: ~1,200 images of 64×64 through tiny-vit in well under a minute
QUICK_PARAMS: dict[str, Any] = {
    "n_prototypes": 512, "epochs": 2, "hard_epoch": 1, "batch_size": 64, "lr": 5e-4,
    "out_dim": 1024, "head_hidden_dim": 256, "head_bottleneck_dim": 64,
    "global_crop_size": 32, "local_crop_size": 16, "n_local_crops": 2,
    # a few dozen steps barely move U[0, 1) prototypes; start from k-means of the tokens (init.py)
    "prototype_init": "kmeans",
}


#: the planted-concept check: the top images of this many most specific prototypes of the planted group
PLANTED_PROTOTYPES, PLANTED_IMAGES = 6, 5


def planted_concept(view: DataView, table: ImageTable) -> tuple[int, np.ndarray, str] | None:
    """(group, per-image mask, concept) of a concept the dataset's generator planted in one group
    only (``notes["planted"]``, e.g. people in synth-passnet's ImageNet-like source), or None."""
    planted = (view.source.notes or {}).get("planted")
    names = view.source.concept_names or []
    if not planted or view.concepts is None or planted["concept"] not in names \
            or planted["group"] not in table.group_names:
        return None
    mask = view.concepts[:, names.index(planted["concept"])].astype(bool)
    return table.group_names.index(planted["group"]), mask, planted["concept"]


def _top_share(counts: np.ndarray) -> float:
    """Share of all occurrences taken by the most used prototype."""
    return float(counts.sum(0).max() / max(counts.sum(), 1))


def _safe(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z_]+", "_", str(name)).strip("_") or "group"


class _ProtoSimBase:
    """Shared parameters (defaults = paper / reference; see the reference note §3)."""

    requires: ClassVar[frozenset[str]] = frozenset({"images"})
    quick_params: ClassVar[dict[str, Any]] = QUICK_PARAMS
    #: run resources: recorded, but never part of the comparability key (an I/O choice must not split rows)
    resources: ClassVar[frozenset[str]] = frozenset({"num_workers", "memory_limit_gb", "checkpoint_dir",
                                                     "resume", "figures_dir"})
    #: ``--set protosim.score=…`` (before the parameter stopped hiding ``Comparator.score()``)
    renamed_params: ClassVar[dict[str, str]] = {"score": "difference"}

    def __init__(
        self, *,
        n_prototypes: int = 8192,
        epochs: int = 20,
        hard_epoch: int = 15,
        batch_size: int = 128,
        lr: float = 5e-5,
        lr_schedule: str = "paper",
        base_lr: float = 5e-4,
        warmup_epochs: int = 10,
        weight_decay: float = 0.04,
        weight_decay_end: float = 0.4,
        clip_grad: float = 3.0,
        freeze_last_layer: int = 1,
        momentum_teacher: float = 0.996,
        student_temp: float = 0.1,
        teacher_temp: float = 0.04,
        center_momentum: float = 0.9,
        out_dim: int = 65536,
        head_hidden_dim: int = 2048,
        head_bottleneck_dim: int = 256,
        head_layers: int = 3,
        norm_last_layer: bool = True,
        block_heads: int = 1,
        drop_path: float = 0.1,
        tau: float = 1.0,
        global_crop_size: int = 224,
        local_crop_size: int = 96,
        n_local_crops: int = 8,
        global_crop_scale: tuple[float, float] = (0.4, 1.0),
        local_crop_scale: tuple[float, float] = (0.05, 0.4),
        chunk_tokens: int | None = None,
        amp: bool = True,
        head_checkpoint: str | None = None,
        balanced: bool = False,
        prototype_init: str = "uniform",
        num_workers: int = 0,
        memory_limit_gb: float | None = None,
        specific_threshold: float = 0.95,
        specific_level: str = "image",
        size_normalised: bool = False,
        stats_weights: str = "student",
        difference: str = "jensen_shannon",
        checkpoint_dir: str | None = None,
        resume: bool = True,
        figures_dir: str | None = None,
        n_top_images: int = 6,
        n_figure_prototypes: int = 3,
    ):
        self.n_prototypes = n_prototypes
        self.epochs = epochs
        self.hard_epoch = hard_epoch
        self.batch_size = batch_size
        self.lr = lr
        self.lr_schedule = lr_schedule
        self.base_lr = base_lr
        self.warmup_epochs = warmup_epochs
        self.weight_decay = weight_decay
        self.weight_decay_end = weight_decay_end
        self.clip_grad = clip_grad
        self.freeze_last_layer = freeze_last_layer
        self.momentum_teacher = momentum_teacher
        self.student_temp = student_temp
        self.teacher_temp = teacher_temp
        self.center_momentum = center_momentum
        self.out_dim = out_dim
        self.head_hidden_dim = head_hidden_dim
        self.head_bottleneck_dim = head_bottleneck_dim
        self.head_layers = head_layers
        self.norm_last_layer = norm_last_layer
        self.block_heads = block_heads
        self.drop_path = drop_path
        self.tau = tau
        self.global_crop_size = global_crop_size
        self.local_crop_size = local_crop_size
        self.n_local_crops = n_local_crops
        self.global_crop_scale = global_crop_scale
        self.local_crop_scale = local_crop_scale
        self.chunk_tokens = chunk_tokens
        self.amp = amp
        self.head_checkpoint = head_checkpoint
        self.balanced = balanced
        self.prototype_init = prototype_init
        self.num_workers = num_workers
        self.memory_limit_gb = memory_limit_gb
        self.specific_threshold = specific_threshold
        self.specific_level = specific_level
        self.size_normalised = size_normalised
        self.stats_weights = stats_weights
        self.difference = difference
        self.checkpoint_dir = checkpoint_dir
        self.resume = resume
        self.figures_dir = figures_dir
        self.n_top_images = n_top_images
        self.n_figure_prototypes = n_figure_prototypes

    # ------------------------------------------------------------------ validation
    def check_params(self) -> None:
        """The folders (run resources) before any work: a regular file there would only fail
        after feature extraction and training."""
        self._check_folders()

    def _check_folders(self) -> None:
        for p in ("checkpoint_dir", "figures_dir"):
            v = getattr(self, p)
            if v is None:
                continue
            if not isinstance(v, (str, Path)) or not str(v):
                raise BenchError(f"protosim: {p} must be a folder path, got {v!r}")
            check_writable_dir(Path(v), f"protosim: {p}")

    def _validate(self) -> None:
        name = "protosim"
        self._check_folders()

        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise BenchError(f"{name}: {msg}")

        for p in ("n_prototypes", "epochs", "batch_size", "out_dim", "head_hidden_dim", "head_bottleneck_dim",
                  "global_crop_size", "local_crop_size", "block_heads", "n_top_images"):
            v = getattr(self, p)
            need(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1,
                 f"{p} must be an integer >= 1, got {v!r}")
        for p in ("hard_epoch", "n_local_crops", "warmup_epochs", "freeze_last_layer", "num_workers",
                  "n_figure_prototypes"):
            v = getattr(self, p)
            need(isinstance(v, (int, np.integer)) and v >= 0, f"{p} must be an integer >= 0, got {v!r}")
        for p in ("lr", "base_lr", "student_temp", "teacher_temp", "tau"):
            v = getattr(self, p)
            need(isinstance(v, (int, float)) and np.isfinite(v) and v > 0, f"{p} must be > 0, got {v!r}")
        for p in ("momentum_teacher", "center_momentum"):
            v = getattr(self, p)
            need(0 <= v <= 1, f"{p} must be in [0, 1], got {v!r}")
        need(0.5 <= self.specific_threshold < 1,
             f"specific_threshold must be in [0.5, 1), got {self.specific_threshold!r}")
        need(self.lr_schedule in ("paper", "reference"),
             f"lr_schedule must be 'paper' or 'reference', got {self.lr_schedule!r}")
        need(self.lr_schedule == "paper" or self.warmup_epochs < self.epochs,
             f"warmup_epochs ({self.warmup_epochs}) must be smaller than epochs ({self.epochs})")
        need(self.specific_level in ("image", "token"),
             f"specific_level must be 'image' or 'token', got {self.specific_level!r}")
        need(self.stats_weights in ("student", "teacher"),
             f"stats_weights must be 'student' or 'teacher', got {self.stats_weights!r}")
        need(self.prototype_init in ("uniform", "kmeans"),
             f"prototype_init must be 'uniform' or 'kmeans', got {self.prototype_init!r}")
        need(self.difference in ("jensen_shannon", "specific_share"),
             f"difference must be 'jensen_shannon' or 'specific_share', got {self.difference!r}")
        need(self.chunk_tokens is None or (isinstance(self.chunk_tokens, int) and self.chunk_tokens >= 1),
             f"chunk_tokens must be None or an integer >= 1, got {self.chunk_tokens!r}")
        for p in ("global_crop_scale", "local_crop_scale"):
            v = getattr(self, p)
            ok = isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v)
            need(ok and 0 < v[0] <= v[1] <= 1, f"{p} must be (lo, hi) with 0 < lo <= hi <= 1, got {v!r}")

    # ------------------------------------------------------------------ the shared pipeline
    def _run(self, table: ImageTable, view: DataView, seed: int, role: str) -> dict[str, Any] | None:
        """Train (or resume) on ``table``, then count prototype use per group.

        A given ``checkpoint_dir`` holds one sub-folder per training, ``{role}-{fingerprint}``:
        the summariser and every training of the comparator's evaluation (between, null draws)
        each resume their own checkpoint, whichever role the setting was given to.

        Under torchrun (an active process group) every rank trains (DDP) and rank 0 alone
        analyses; the other ranks get None.
        """
        self._validate()
        device = local_device(torch.device(view.device if str(view.device) != "auto" else
                                           ("cuda" if torch.cuda.is_available() else "cpu")))
        backbone = Backbone(view.extractor, device)
        ckpt = Path(self.checkpoint_dir or tempfile.mkdtemp(prefix="protosim-"))
        cfg = TrainConfig.from_params(self.get_params())
        trainer = Trainer(cfg, backbone, table, seed=seed, checkpoint_dir=ckpt, resume=self.resume,
                          progress=bool(getattr(view, "progress", False)), num_workers=self.num_workers,
                          memory_limit_gb=self.memory_limit_gb)
        if self.checkpoint_dir:   # the fingerprint covers data, parameters, seed and backbone
            ckpt = inside(ckpt, ckpt / safe_name(f"{role}-{trainer.fingerprint()}"))
            trainer.checkpoint_dir = ckpt
        try:
            result = trainer.run()
        except BaseException:
            if not self.checkpoint_dir:
                shutil.rmtree(ckpt, ignore_errors=True)
            raise
        if not trainer.ctx.is_main:
            if not self.checkpoint_dir:
                shutil.rmtree(ckpt, ignore_errors=True)
            return None
        if not self.checkpoint_dir:  # a temp dir nobody can resume from: keep the figures, not the weights
            (ckpt / CHECKPOINT).unlink(missing_ok=True)
        stats_net = result.student if self.stats_weights == "student" else result.teacher
        assigned = assign_all(table, backbone, stats_net, result.teacher, batch_size=view.batch_size,
                              amp=self.amp, chunk_tokens=self.chunk_tokens,
                              progress=bool(getattr(view, "progress", False)))
        images = group_image_counts(assigned.instance_counts, table.groups, table.n_groups)
        tokens = group_token_counts(assigned.instance_counts, table.groups, table.n_groups)
        sizes = np.bincount(table.groups, minlength=table.n_groups)
        basis = images if self.specific_level == "image" else tokens
        types = prototype_types(basis, self.specific_threshold,
                                group_sizes=sizes if self.size_normalised else None)
        # figures go where the harness keeps this run's files, so reports find them later
        run_files = getattr(view, "artefact_dir", None)
        figures_dir = Path(self.figures_dir) if self.figures_dir else (
            Path(run_files) / "protosim-figures" if run_files else ckpt / "figures")
        return {"backbone": backbone, "result": result, "assigned": assigned, "image_counts": images,
                "token_counts": tokens, "group_sizes": sizes, "types": types, "basis": basis,
                "checkpoint_dir": ckpt, "temporary": not self.checkpoint_dir, "stats_net": stats_net,
                "figures_dir": figures_dir}


class ProtoSim(_ProtoSimBase, Summariser):
    """Learn K prototypes on the union of a view's groups; report codes, probe features and
    which prototypes are specific to one group (dataset) or shared."""

    name: ClassVar[str] = "protosim"
    version: ClassVar[str] = "1"
    #: under torchrun the runner calls fit on every rank: all train (DDP), rank 0 reports
    distributed: ClassVar[bool] = True

    def fit(self, data: DataView, *, seed: int = 0) -> ProtoSim:
        table = ImageTable.from_view(data)
        run = self._run(table, data, seed, "summariser")
        if run is None:  # a rank > 0: its share of the training is done; rank 0 holds the summary
            self.summary_ = None
            return self
        run["planted"] = planted_concept(data, table)
        self._fitted = {"table": table, "backbone": run["backbone"], "stats_net": run["stats_net"],
                        "instance_counts": run["assigned"].instance_counts}
        self.train_result_: TrainResult = run["result"]
        self.types_ = run["types"]
        self.summary_ = self._summary(table, run)
        figures_inside_ckpt = run["figures_dir"].is_relative_to(run["checkpoint_dir"])
        if run["temporary"] and not (self.summary_.artefacts["figures"] and figures_inside_ckpt):
            shutil.rmtree(run["checkpoint_dir"], ignore_errors=True)
            self.summary_.artefacts["checkpoint_dir"] = None
        return self

    # ------------------------------------------------------------------ on demand
    def save_prototype_grid(self, prototypes: list[int], path: str | Path, *,
                            n_images: int | None = None) -> Path:
        """Top images and attention maps of any prototypes of the fitted model, as one PNG."""
        if not hasattr(self, "_fitted"):
            raise BenchError("protosim: call fit() before save_prototype_grid()")
        f = self._fitted
        k = f["stats_net"].protosim.n_prototypes
        bad = [p for p in prototypes if not 0 <= int(p) < k]
        if bad:
            raise BenchError(f"protosim: prototype ids {bad} are outside 0..{k - 1}")
        titles = [f"prototype {int(p)}" for p in prototypes]
        return save_grid(Path(path), f["table"], f["backbone"], f["stats_net"], f["instance_counts"],
                         [int(p) for p in prototypes], titles, n_images or self.n_top_images)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_fitted", None)  # holds the extractor and images; not part of the result
        return state

    # ------------------------------------------------------------------ summary
    def _summary(self, table: ImageTable, run: dict[str, Any]) -> Summary:
        a: Assignments = run["assigned"]
        types = run["types"]
        basis = run["basis"]
        history = run["result"].history
        k = self.n_prototypes
        g = table.n_groups
        names = table.group_names
        prop = cls_proportion(a.cls_counts, a.spatial_counts)
        used_prop = prop[~np.isnan(prop)]
        specific_lists = ({names[j]: rank_specific(types, basis, j).tolist() for j in range(g)}
                          if g > 1 else {})
        shared_list = rank_shared(types, basis).tolist() if g > 1 else []

        stats: dict[str, float] = {
            "n_groups": float(g),
            "n_prototypes_used": float(types.used.sum()),
            "n_prototypes_dead": float(k - types.used.sum()),
            "n_cls_codes": float(len(np.unique(a.codes))),
            "n_spatial_prototypes_used": float((a.spatial_counts.sum(0) > 0).sum()),
            "cls_only_prototypes": float((used_prop == 1).sum()),
            "spatial_only_prototypes": float((used_prop == 0).sum()),
            "cls_proportion_between_0_and_0.9": float(((used_prop > 0) & (used_prop < 0.9)).sum()),
            # the reference run's skew: one prototype took 84 % of patch tokens, one 29 % of CLS
            "top_spatial_prototype_share": _top_share(a.spatial_counts),
            "top_cls_prototype_share": _top_share(a.cls_counts),
            "initial_diversity": float(history[0]["diversity"]),
            "final_diversity": float(history[-1]["diversity"]),
            "final_loss": float("nan") if history[-1]["loss"] is None else float(history[-1]["loss"]),
            "epochs_trained": float(len(history) - 1),
            "train_seconds": float(run["result"].seconds),
        }
        if g > 1:
            stats["n_shared"] = float(types.shared.sum())
            stats["n_specific"] = float(types.specific.sum())
            stats["share_specific"] = float(types.specific.sum() / max(types.used.sum(), 1))
            for j in range(g):
                stats[f"n_specific_{_safe(names[j])}"] = float(len(specific_lists[names[j]]))
            tok = run["token_counts"]
            stats["usage_js_divergence_bits"] = jensen_shannon(tok[0], tok[1]) if g == 2 else float("nan")
        planted_rows = []
        if g > 1 and run.get("planted") is not None:
            j, mask, concept = run["planted"]
            for r, p in enumerate(specific_lists[names[j]][:PLANTED_PROTOTYPES]):
                rows = top_images(a.instance_counts, int(p), PLANTED_IMAGES)
                planted_rows.append({"group": names[j], "rank": r, "prototype": int(p), "concept": concept,
                                     "top_images": len(rows), "with_concept": int(mask[rows].sum())})
            shown_n = sum(row["top_images"] for row in planted_rows)
            # share of the top images of the most specific prototypes that show the planted concept,
            # beside the share of the group's images that do (what a prototype blind to it would get)
            stats["planted_top_images_share"] = (sum(row["with_concept"] for row in planted_rows) / shown_n
                                                 if shown_n else float("nan"))
            stats["planted_base_rate"] = float(mask[table.groups == j].mean())

        # figures: most specific prototypes of each group, then the most frequent shared ones
        fig_dir = run["figures_dir"]
        figures, shown = [], {}
        if self.n_figure_prototypes > 0:
            top = self.n_figure_prototypes
            sets = [(f"specific-{_safe(n)}", specific_lists[n][:top]) for n in specific_lists]
            if g > 1:
                sets.append(("shared", shared_list[:self.n_figure_prototypes]))
            else:
                freq = np.argsort(-a.instance_counts.getnnz(axis=0), kind="stable")
                sets.append(("most-frequent", freq[:self.n_figure_prototypes].tolist()))
            for label, protos in sets:
                if not protos:
                    continue
                titles = []
                for p in protos:
                    per = ", ".join(f"{names[j]} {int(basis[j, p])}" for j in range(g))
                    titles.append(f"prototype {p} ({per}; share {types.share[p]:.2f})")
                    shown[str(p)] = top_images(a.instance_counts, p, self.n_top_images).tolist()
                figures.append(str(save_grid(fig_dir / f"protosim-{label}.png", table, run["backbone"],
                                             run["stats_net"], a.instance_counts, protos, titles,
                                             self.n_top_images)))

        hist_counts, edges = np.histogram(used_prop, bins=10, range=(0.0, 1.0))
        unit = "images" if self.specific_level == "image" else "tokens"
        tables = {
            "protosim_groups": [
                {"group": names[j], "n_images": int(run["group_sizes"][j]),
                 "prototypes_used": int((basis[j] > 0).sum()),
                 "specific_prototypes": len(specific_lists.get(names[j], [])),
                 "cls_codes": len(np.unique(a.codes[table.groups == j]))} for j in range(g)],
            "protosim_training": [{k2: (float(v) if isinstance(v, (float, np.floating)) else v)
                                   for k2, v in row.items()} for row in history],
            "protosim_specific": [
                {"group": names[j], "rank": r, "prototype": int(p), "share": float(types.share[p]),
                 f"{unit}_in_group": int(basis[j, p]), f"{unit}_total": int(basis[:, p].sum()),
                 "top_images": " ".join(map(str, top_images(a.instance_counts, int(p), self.n_top_images)))}
                for j in range(g) for r, p in enumerate(specific_lists.get(names[j], [])[:10])],
            "protosim_planted": planted_rows,
            "protosim_cls_proportion": [{"bin_low": float(edges[i]), "bin_high": float(edges[i + 1]),
                                         "prototypes": int(hist_counts[i])} for i in range(10)],
        }
        inst = a.instance_counts
        artefacts: dict[str, Any] = {
            "tables": tables,
            "group_names": list(names),
            "group_image_counts": run["image_counts"],
            "group_token_counts": run["token_counts"],
            "group_cls_counts": a.cls_counts,
            "group_spatial_counts": a.spatial_counts,
            "instance_counts_indptr": inst.indptr.astype(np.int64),
            "instance_counts_indices": inst.indices.astype(np.int32),
            "instance_counts_data": inst.data.astype(np.int32),
            "prototype_owner": types.owner.astype(np.int64),
            "prototype_share": types.share.astype(np.float64),
            "cls_proportion": prop,
            "specific_prototypes": specific_lists,
            "shared_prototypes": shared_list,
            "specific_rule": {"threshold": self.specific_threshold, "level": self.specific_level,
                              "size_normalised": self.size_normalised, "comparison": ">"},
            "prototypes": run["stats_net"].protosim.prototypes.detach().float().cpu().numpy(),
            "stats_weights": self.stats_weights,
            "history": history,
            "top_images": shown,
            "figures": figures,
            "figures_dir": str(fig_dir),
            "checkpoint_dir": str(run["checkpoint_dir"]),
        }
        if a.position_counts is not None:
            artefacts["token_position_counts"] = a.position_counts
        return Summary(codes=a.codes, embedding=a.embedding, statistics=stats, artefacts=artefacts)


class ProtoSimComparator(_ProtoSimBase, Comparator):
    """Train one pool of prototypes on A ∪ B; the difference is how differently A and B use it.

    ``difference="jensen_shannon"`` (default): the Jensen–Shannon divergence, in bits (0 … 1), between
    the two datasets' token-level prototype-usage histograms. ``difference="specific_share"``: the
    share of used prototypes that are dataset-specific. Both are always in ``statistics``.
    """

    name: ClassVar[str] = "protosim"
    version: ClassVar[str] = "1"
    larger_is_more_different: ClassVar[bool] = True
    #: every comparison trains the prototypes: bench compare's null is a few split halves of each side
    null_kind: ClassVar[str] = "split-half"
    null_draws: ClassVar[int] = 3
    #: under torchrun the runner calls compare on every rank: all train (DDP), rank 0 scores
    distributed: ClassVar[bool] = True

    def compare(self, a: DataView, b: DataView, *, seed: int = 0) -> Comparison:
        if len(a) == 0 or len(b) == 0:
            raise BenchError("protosim: cannot compare an empty dataset")
        table = ImageTable.from_pair(a, b)
        run = self._run(table, a, seed, "comparator")
        if run is None:  # a rank > 0: its share of the training is done; rank 0 holds the score
            return Comparison(score=float("nan"))
        if run["temporary"]:
            shutil.rmtree(run["checkpoint_dir"], ignore_errors=True)
        types = run["types"]
        tok = run["token_counts"]
        js = jensen_shannon(tok[0], tok[1])
        img_js = jensen_shannon(run["image_counts"][0], run["image_counts"][1])
        share = float(types.specific.sum() / max(types.used.sum(), 1))
        stats = {"jensen_shannon_bits": js, "image_jensen_shannon_bits": img_js, "specific_share": share,
                 "n_specific_a": float((types.specific & (types.owner == 0)).sum()),
                 "n_specific_b": float((types.specific & (types.owner == 1)).sum()),
                 "n_shared": float(types.shared.sum()), "n_used": float(types.used.sum())}
        detail = {"specific_a": rank_specific(types, run["basis"], 0).tolist(),
                  "specific_b": rank_specific(types, run["basis"], 1).tolist(),
                  "shared": rank_shared(types, run["basis"]).tolist(),
                  "token_counts": tok, "image_counts": run["image_counts"],
                  "history": run["result"].history, "difference": self.difference}
        score = js if self.difference == "jensen_shannon" else share
        return Comparison(score=float(score), detail=detail, statistics=stats,
                          findings=protosim_findings({**run, "table": table}, detail, len(a), self.n_top_images))
