"""QRP, quantized reverse probing (Laina, Asano & Vedaldi, ICLR 2022) as a bench Summariser.

How interpretable is a representation? Quantise its standardised features with k-means
(K = 1000), then predict the cluster id from human-readable binary concepts with a linear
probe; the information that survives (NMI, AMI, top-1, mAP of the probe on held-out images)
is the score. The concepts come from experts registered through ``bench_register_experts``.

One **run** is one clustering: faiss k-means with its own seed (``n_iter`` iterations, best
objective of ``n_redo`` restarts), a fresh stratified split and one reverse probe on it. The
statistics are mean ± sample std (ddof=1) over ``n_clusterings`` runs, the paper's "mean ± σ
over 5 clusterings"; ``n_redo`` is its "best of 5 runs" inside each clustering (reference
note, option (a)). Scores are fractions in [0, 1] (the paper prints percentages).
"""

from __future__ import annotations

from functools import partial
from typing import Any, ClassVar

import numpy as np
import torch

from bench.api import ConceptGroup, DataView, Summariser, Summary, check_finite
from bench.errors import BenchError, DataError

from .probe import AVERAGE_METHOD, ProbeConfig, reverse_probe, stratified_split
from .quantise import faiss_gpu_available, faiss_kmeans, resolve_k, standardise, torch_kmeans

RUN_DEFINITION = (
    "one run = one clustering: faiss k-means on the standardised features (n_iter iterations, "
    "best objective of n_redo restarts, its own seed), a new stratified 80/20 split (20% of train "
    "for validation) and one reverse probe trained on it; statistics are mean and sample std "
    "(ddof=1) over n_clusterings runs"
)
METRICS = ("nmi", "ami", "top1", "map", "mi_nats")
RUN_INT_COLUMNS = ("run", "kmeans_seed", "split_seed", "probe_seed", "best_epoch", "n_dropped", "n_test")
RUN_COLUMNS = RUN_INT_COLUMNS[:4] + METRICS + ("ce", "h_clusters", "inertia") + RUN_INT_COLUMNS[4:]


def _run_seeds(seed: int, run: int) -> tuple[int, int, int]:
    """Independent (k-means, split, probe) seeds for run ``run`` of a fit with ``seed``."""
    a, b, c = np.random.SeedSequence([int(seed) % 2**32, int(run)]).generate_state(3)
    return int(a) % 2**31, int(b) % 2**31, int(c) % 2**31


def _mean_std(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


class QRP(Summariser):
    """Quantized reverse probing. Constructor defaults are the paper's (App. C).

    K-means: ``n_clusters`` (1000), ``n_iter`` (100), ``n_redo`` (5), ``max_points_per_centroid``
    (faiss' 256: trains on at most 256·K points; None = all), ``n_clusterings`` runs (5).
    Small datasets: ``k_rule="fixed"`` raises when K ≥ N; ``"scale"`` uses
    K = min(n_clusters, max(2, N // min_cluster_size)) (50). Probe: ``lr`` 3.5, ``momentum`` 0.9,
    ``weight_decay`` 3e-6, ``epochs`` 100, lr ×0.1 at ``milestones`` (60, 80), ``batch_size`` 512,
    ``test_fraction`` 0.2, ``val_fraction`` 0.2. ``experts``: names in the expert registry,
    ``expert_params``: {name: {param: value}}. ``breakdown``: also probe with the concept
    groups added one at a time (paper Fig. 4). ``on_constant_group``: "error" or "drop".
    """

    name: ClassVar[str] = "qrp"
    version: ClassVar[str] = "1"
    requires: ClassVar[frozenset[str]] = frozenset({"features"})
    #: small embedded datasets on CPU: K from the small-dataset rule, one k-means restart
    quick_params: ClassVar[dict[str, Any]] = {"k_rule": "scale", "n_redo": 1}

    def __init__(self, *, n_clusters: int = 1000, n_clusterings: int = 5, n_redo: int = 5, n_iter: int = 100,
                 max_points_per_centroid: int | None = 256, k_rule: str = "fixed", min_cluster_size: int = 50,
                 experts: tuple[str, ...] = ("ground-truth",), expert_params: dict[str, dict] | None = None,
                 lr: float = 3.5, momentum: float = 0.9, weight_decay: float = 3e-6, epochs: int = 100,
                 milestones: tuple[int, ...] = (60, 80), batch_size: int = 512, test_fraction: float = 0.2,
                 val_fraction: float = 0.2, breakdown: bool = True, on_constant_group: str = "error"):
        self.n_clusters = n_clusters
        self.n_clusterings = n_clusterings
        self.n_redo = n_redo
        self.n_iter = n_iter
        self.max_points_per_centroid = max_points_per_centroid
        self.k_rule = k_rule
        self.min_cluster_size = min_cluster_size
        self.experts = experts
        self.expert_params = expert_params
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.epochs = epochs
        self.milestones = milestones
        self.batch_size = batch_size
        self.test_fraction = test_fraction
        self.val_fraction = val_fraction
        self.breakdown = breakdown
        self.on_constant_group = on_constant_group

    # -- validation -------------------------------------------------------------------------
    def _check_params(self) -> None:
        def positive_int(name: str) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise BenchError(f"qrp: {name} must be a positive integer, got {v!r}")

        for name in ("n_clusterings", "n_redo", "n_iter", "epochs", "batch_size"):
            positive_int(name)
        if self.max_points_per_centroid is not None:
            positive_int("max_points_per_centroid")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise BenchError(f"qrp: lr must be a positive number, got {self.lr!r}")
        if self.on_constant_group not in ("error", "drop"):
            raise BenchError(f"qrp: on_constant_group must be 'error' or 'drop', got {self.on_constant_group!r}")
        if not self._expert_names() or not all(isinstance(e, str) and e for e in self._expert_names()):
            raise BenchError(f"qrp: experts must be a non-empty list of expert names, got {self.experts!r}")
        if self.expert_params is not None and not isinstance(self.expert_params, dict):
            raise BenchError("qrp: expert_params must be a dict {expert name: {param: value}}")

    def _expert_names(self) -> list[str]:
        """``experts`` as a list; a string is read as comma-separated names (``--set qrp.experts=a,b``)."""
        if isinstance(self.experts, str):
            return [e.strip() for e in self.experts.split(",") if e.strip()]
        return list(self.experts or [])

    def probe_config(self) -> ProbeConfig:
        return ProbeConfig(lr=float(self.lr), momentum=float(self.momentum), weight_decay=float(self.weight_decay),
                           epochs=int(self.epochs), milestones=tuple(int(m) for m in self.milestones),
                           batch_size=int(self.batch_size))

    # -- concepts ---------------------------------------------------------------------------
    def concept_groups(self, data: DataView) -> list[tuple[str, ConceptGroup]]:
        """(expert name, group) pairs from the named experts, validated; in expert order."""
        registry = data.experts if data.experts is not None else _own_experts()
        params = self.expert_params or {}
        names = self._expert_names()
        unknown = set(params) - set(names)
        if unknown:
            raise BenchError(f"qrp: expert_params names {sorted(unknown)} that are not in experts={names}")
        out: list[tuple[str, ConceptGroup]] = []
        n = len(data)
        for ename in names:
            expert = registry.get(ename)(**params.get(ename, {}))
            groups = expert.predict(data)
            for g in groups:
                values = np.asarray(g.values)
                if values.ndim != 2 or values.shape != (n, len(g.concept_names)):
                    raise DataError(f"qrp: expert {ename!r} group {g.name!r} has values of shape {values.shape}, "
                                    f"expected ({n}, {len(g.concept_names)})")
                if values.dtype != bool and not np.isin(values, (0, 1)).all():
                    raise DataError(f"qrp: expert {ename!r} group {g.name!r} is not binary")
                values = values.astype(bool)
                if n and (values == values[0]).all():
                    if self.on_constant_group == "error":
                        raise DataError(f"qrp: concept group {g.name!r} of expert {ename!r} is the same for all "
                                        f"{n} images of {data.name!r}, so it carries no information; drop it "
                                        "(on_constant_group='drop') or use another expert")
                    continue
                out.append((ename, ConceptGroup(g.name, list(g.concept_names), values)))
        if not out:
            raise DataError(f"qrp: no concepts for {data.name!r}: the experts {names} gave no "
                            "(non-constant) concept group; add an expert through the bench_register_experts hook "
                            "or choose others with experts=(...)")
        return out

    # -- fit --------------------------------------------------------------------------------
    def fit(self, data: DataView, *, seed: int = 0) -> QRP:
        self._check_params()
        feats = check_finite(data.features(), what=f"features of {data.name!r}")
        n = len(feats)
        if n == 0:
            raise DataError(f"qrp: dataset {data.name!r} is empty")
        k = resolve_k(self.n_clusters, n, k_rule=self.k_rule, min_cluster_size=self.min_cluster_size)
        groups = self.concept_groups(data)
        device = torch.device(data.device)
        x = torch.as_tensor(np.concatenate([g.values for _, g in groups], axis=1).astype(np.uint8), device=device)
        ends = np.cumsum([g.values.shape[1] for _, g in groups])
        prefixes = list(ends) if self.breakdown else [int(ends[-1])]
        z = standardise(feats)
        gpu = device.type == "cuda"
        # faiss-gpu when installed; else the same protocol in torch on the GPU (bench.kmeans)
        quantise = partial(faiss_kmeans, gpu=True) if gpu and faiss_gpu_available() else \
            partial(torch_kmeans, device=str(device)) if gpu else partial(faiss_kmeans, gpu=False)
        cfg = self.probe_config()

        runs: list[dict[str, float]] = []
        steps: list[list[dict[str, float]]] = [[] for _ in prefixes]
        all_codes = np.empty((int(self.n_clusterings), n), dtype=np.int32)
        for run in range(int(self.n_clusterings)):
            km_seed, split_seed, probe_seed = _run_seeds(seed, run)
            km = quantise(z, k, seed=km_seed, n_iter=int(self.n_iter), n_redo=int(self.n_redo),
                          max_points_per_centroid=self.max_points_per_centroid)
            all_codes[run] = km.codes
            split = stratified_split(km.codes, seed=split_seed, test_fraction=float(self.test_fraction),
                                     val_fraction=float(self.val_fraction))
            for j, end in enumerate(prefixes):
                res = reverse_probe(x[:, :int(end)], km.codes, split, n_classes=k, seed=probe_seed, config=cfg)
                steps[j].append(res)
            res = dict(steps[-1][-1])
            res.update(run=run, kmeans_seed=km_seed, split_seed=split_seed, probe_seed=probe_seed,
                       inertia=km.inertia, train_points=km.train_points)
            runs.append(res)

        self.summary_ = self._summary(data, feats, k, groups, prefixes, runs, steps, all_codes, gpu)
        return self

    def _protocol(self, k: int, n: int, gpu: bool) -> list[dict[str, str]]:
        """The definitions behind the numbers, stored in the record beside them."""
        import sklearn

        rule = ("paper: fixed K" if self.k_rule == "fixed" else
                f"scale: K = min(n_clusters, max(2, N // {self.min_cluster_size}))")
        rows = {
            "run": RUN_DEFINITION,
            "k": f"K={k} for N={n} ({rule}); faiss k-means, {self.n_iter} iterations, best of {self.n_redo}, "
                 f"trained on at most {self.max_points_per_centroid or 'all'} points per centroid, "
                 f"{'GPU' if gpu else 'CPU'}",
            "split": f"per cluster: max(1, round({self.test_fraction}·n)) to test, round({self.val_fraction}·rest) "
                     "to validation (1+ kept in train); clusters of one image are dropped",
            "probe": f"linear concepts → K, SGD lr {self.lr} momentum {self.momentum} weight decay "
                     f"{self.weight_decay}, ×0.1 at epochs {list(self.milestones)}, batch {self.batch_size}, "
                     f"{self.epochs} epochs, weights of the lowest validation cross-entropy kept",
            "breakdown": "qrp_expert_breakdown row i: the probe on the concept groups of rows 1..i "
                         "(paper Fig. 4); the last row is the reported score",
            "metrics": f"on the test split: NMI, AMI (scikit-learn {sklearn.__version__}, average_method="
                       f"'{AVERAGE_METHOD}'), top-1, mAP (one-vs-rest AP on softmax, mean over clusters in "
                       "test), mi_nats = H(clusters) − test cross-entropy (nats); fractions, not percent",
        }
        return [{"setting": key, "value": value} for key, value in rows.items()]

    def _summary(self, data, feats, k, groups, prefixes, runs, steps, all_codes, gpu) -> Summary:
        stats: dict[str, float] = {}
        for m in METRICS + ("ce",):
            mean, std = _mean_std([r[m] for r in runs])
            key = "ce_test" if m == "ce" else m
            stats[f"qrp_{key}"], stats[f"qrp_{key}_std"] = mean, std
        stats.update({
            "qrp_h_clusters": float(np.mean([r["h_clusters"] for r in runs])),
            "qrp_k": float(k), "qrp_n_clusterings": float(len(runs)),
            "qrp_n_concepts": float(sum(g.values.shape[1] for _, g in groups)),
            "qrp_n_concept_groups": float(len(groups)),
            "qrp_kmeans_inertia": float(np.mean([r["inertia"] for r in runs])),
            "qrp_kmeans_train_points": float(runs[0]["train_points"]),
            "qrp_kmeans_gpu": float(gpu),
            "qrp_dropped_images": float(np.mean([r["n_dropped"] for r in runs])),
            "qrp_n_test": float(np.mean([r["n_test"] for r in runs])),
            "qrp_best_epoch": float(np.mean([r["best_epoch"] for r in runs])),
        })
        breakdown = []
        names = [f"{e}/{g.name}" for e, g in groups]
        prev_nmi = None
        cumulative = len(prefixes) == len(groups)      # breakdown on: one row per added group
        for j, end in enumerate(prefixes):
            row: dict[str, Any] = {"step": j + 1, "added": names[j] if cumulative else " + ".join(names),
                                   "n_concepts": int(end)}
            for m in METRICS:
                row[m], row[f"{m}_std"] = _mean_std([r[m] for r in steps[j]])
            row["delta_nmi"] = None if prev_nmi is None else row["nmi"] - prev_nmi
            prev_nmi = row["nmi"]
            breakdown.append(row)
        per_run = [{key: int(r[key]) if key in RUN_INT_COLUMNS else float(r[key]) for key in RUN_COLUMNS}
                   for r in runs]
        concept_rows = [{"expert": e, "group": g.name, "n_concepts": len(g.concept_names),
                         "concepts": ", ".join(g.concept_names)} for e, g in groups]
        tables = {"qrp_expert_breakdown": breakdown, "qrp_clusterings": per_run,
                  "qrp_concept_groups": concept_rows, "qrp_protocol": self._protocol(k, len(data), gpu)}
        artefacts: dict[str, Any] = {"tables": tables, "qrp_codes": all_codes}
        # embedding = the extractor's features, so the harness' forward linear probe
        # (probe_acc / probe_acc_backbone) stands beside the reverse probe, as in paper Table 2
        return Summary(codes=all_codes[0].astype(np.int64), embedding=feats, statistics=stats, artefacts=artefacts)


def _own_experts():
    """QRP's own experts, for a view made without the run's expert registry (tests, notebooks)."""
    from bench.registry import Registry

    from .plugin import bench_register_experts

    registry = Registry("expert")
    bench_register_experts(registry)
    return registry
