"""The ``multicut`` Summariser and Comparator (Prasse et al., WACV 2025).

Images form a complete graph with cost w = logit(p) + logit(cal) per pair (see
:mod:`bench_multicut.costs`); GAEC then Kernighan–Lin with joins decide the partition, so
the number of clusters is an output, steered by ``cal``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from bench_multicut import costs as C
from bench_multicut import solver as S
from bench_multicut import stats as T
from bench_multicut.findings import multicut_findings

from bench.api import Comparator, Comparison, DataView, Summariser, Summary, check_finite, comparison_key
from bench.errors import BenchError, DataError
from bench.statistics import Draws

GRAPHS = ("auto", "complete", "knn")
BACKENDS = ("own", "bioimage")
#: kl_inner_iterations="auto" on the sparse graph: moves per cluster pair. Random partners make
#: every vertex a border vertex, so uncapped KL costs O(|A ∪ B|²) per pair with a giant
#: cluster (768 s at 50k); at n = 5,000 the cap changes the energy by 2e-5 relative.
SPARSE_INNER_ITERATIONS = 100
#: bytes per complete-graph edge that bioimage-cpp needs (measured: 2.9 GB at n = 4,000)
BIOIMAGE_BYTES_PER_EDGE = 360


@dataclass
class Fitted:
    """Everything one multicut run produces, before it is packed into a Summary."""

    codes: np.ndarray
    result: S.MulticutResult
    cal: float
    cal_source: str
    pair_stats: C.PairStats
    graph: str
    n_edges: int
    timings: dict[str, float] = field(default_factory=dict)


def _extractor_names(view: DataView) -> tuple[str, str]:
    """(registry name, architecture) of the view's extractor, to look up the default cal."""
    ext = view.extractor
    name = str(getattr(ext, "name", "") or "")
    arch = str(getattr(ext, "arch", "") or "")
    if not arch:
        try:
            key = ext.cache_key()
        except NotImplementedError:  # an extractor without a cache key still has a name
            key = {}
        if isinstance(key, dict):
            arch = str(key.get("arch", "") or key.get("model", ""))
    return name, arch


class _MulticutParams:
    """Parameters shared by the Summariser and the Comparator (paper defaults)."""

    def __init__(self, *, cal: float | str | None = None, graph: str = "auto", knn: int = 30,
                 knn_random: int = 100, max_dense_gb: float = 8.0, kl: bool = True,
                 kl_outer_iterations: int = 100, kl_inner_iterations: int | str | None = "auto",
                 backend: str = "own", layer: str = "pooled"):
        self.cal = cal
        self.graph = graph
        self.knn = knn
        self.knn_random = knn_random
        self.max_dense_gb = max_dense_gb
        self.kl = kl
        self.kl_outer_iterations = kl_outer_iterations
        self.kl_inner_iterations = kl_inner_iterations
        self.backend = backend
        self.layer = layer

    def _check(self) -> None:
        C.check_cal(self.cal)
        if self.graph not in GRAPHS:
            raise BenchError(f"multicut: graph must be one of {', '.join(GRAPHS)}, got {self.graph!r}")
        if not isinstance(self.kl, bool):
            raise BenchError(f"multicut: kl must be True or False, got {self.kl!r}")
        if self.backend not in BACKENDS:
            raise BenchError(f"multicut: backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if isinstance(self.knn, bool) or not isinstance(self.knn, int) or self.knn < 1:
            raise BenchError(f"multicut: knn must be a positive integer, got {self.knn!r}")
        if isinstance(self.knn_random, bool) or not isinstance(self.knn_random, int) or self.knn_random < 0:
            raise BenchError(f"multicut: knn_random must be an integer >= 0, got {self.knn_random!r}")
        if not isinstance(self.max_dense_gb, (int, float)) or not self.max_dense_gb > 0:
            raise BenchError(f"multicut: max_dense_gb must be a positive number, got {self.max_dense_gb!r}")
        if isinstance(self.kl_outer_iterations, bool) or not isinstance(self.kl_outer_iterations, int) \
                or self.kl_outer_iterations < 0:
            raise BenchError(f"multicut: kl_outer_iterations must be an integer >= 0, "
                             f"got {self.kl_outer_iterations!r}")
        inner = self.kl_inner_iterations
        bad_int = isinstance(inner, bool) or not isinstance(inner, int) or inner < 1
        if inner is not None and inner != "auto" and bad_int:
            raise BenchError(f"multicut: kl_inner_iterations must be None, 'auto' or an integer >= 1, "
                             f"got {inner!r}")

    def _dense_bytes(self, n: int) -> int:
        if self.backend == "bioimage":
            return BIOIMAGE_BYTES_PER_EDGE * n * (n - 1) // 2
        # float32 cost matrix + one working copy (GAEC's, then KL's cluster-ordered one);
        # on CUDA the same again on the host, where KL runs
        return 8 * n * n

    def _choose_graph(self, n: int) -> str:
        need = self._dense_bytes(n)
        fits = need <= self.max_dense_gb * 2**30
        if self.graph == "complete" and not fits:
            raise BenchError(
                f"multicut: the complete graph on N={n} images needs about {need / 2**30:.1f} GB "
                f"(limit max_dense_gb={self.max_dense_gb}); use graph='knn' (a k-nearest-neighbour "
                f"graph, not the paper's) or raise max_dense_gb")
        if self.graph == "knn" or (self.graph == "auto" and not fits):
            return "knn"
        return "complete"

    def _inner(self, graph: str) -> int | None:
        if self.kl_inner_iterations == "auto":
            return None if graph == "complete" else SPARSE_INNER_ITERATIONS
        return self.kl_inner_iterations

    def _resolve_cal(self, view: DataView, pair_stats: C.PairStats) -> tuple[float, str]:
        if self.cal == "auto":
            return C.adaptive_cal(pair_stats.mean_p), f"0.94 - 0.98*mu (mu={pair_stats.mean_p:.4f})"
        if self.cal is not None:
            return float(self.cal), "parameter"
        value, why = C.default_cal(*_extractor_names(view))
        if value is None:
            return C.adaptive_cal(pair_stats.mean_p), f"{why}: 0.94 - 0.98*mu (mu={pair_stats.mean_p:.4f})"
        return value, why

    def _run(self, x: np.ndarray, view: DataView, seed: int) -> Fitted:
        """Costs + solve on features ``x`` (rows of ``view``'s images, possibly a union)."""
        self._check()
        n = len(x)
        if n == 0:
            raise DataError("multicut: no images to cluster")
        check_finite(x, what="multicut features")
        device = torch.device(view.device)
        graph = self._choose_graph(n)
        extra: dict[str, float] = {}
        t0 = time.perf_counter()
        xn = C.normalise(x, device)
        if graph == "complete":
            W, pair_stats = C.similarity_matrix(xn)
            cal, cal_source = self._resolve_cal(view, pair_stats)
            C.costs_(W, pair_stats, cal)
            t_costs = time.perf_counter() - t0
            n_edges = n * (n - 1) // 2
            if self.backend == "bioimage":
                uv, w = S.dense_to_edges(W.cpu().numpy())
                del W
                result = S.solve_bioimage(n, uv, w, kl=self.kl, outer_iterations=self.kl_outer_iterations)
            else:
                result = S.solve_dense(W, kl=self.kl, outer_iterations=self.kl_outer_iterations,
                                       inner_iterations=self._inner(graph))
        else:
            pair_stats = C.pair_stats_chunked(xn)
            t_stats = time.perf_counter()
            cal, cal_source = self._resolve_cal(view, pair_stats)
            uv, s = C.knn_edges(xn, self.knn)
            t_knn = time.perf_counter()
            w = C.costs_(torch.from_numpy(s), pair_stats, cal).double().numpy()
            far, scale = C.random_far_edges(n, self.knn_random, uv, seed)
            if len(far):
                s_far = torch.from_numpy(C.pair_similarity(xn, far))
                uv = np.concatenate([uv, far])
                w = np.concatenate([w, scale * C.costs_(s_far, pair_stats, cal).double().numpy()])
            t_costs = time.perf_counter() - t0
            extra = {"pair_stats": t_stats - t0, "knn": t_knn - t_stats}
            n_edges = len(uv)
            solve = S.solve_bioimage if self.backend == "bioimage" else S.solve_sparse
            kwargs = {} if self.backend == "bioimage" else {"inner_iterations": self._inner(graph)}
            result = solve(n, uv, w, kl=self.kl, outer_iterations=self.kl_outer_iterations, **kwargs)
        timings = {"costs": t_costs, **extra, **result.timings}
        return Fitted(result.labels, result, cal, cal_source, pair_stats, graph, n_edges, timings)


class Multicut(_MulticutParams, Summariser):
    """Minimum-cost multicut clustering of pooled embeddings (number of clusters is an output).

    cal:        None → the paper's value for the extractor (README table: CLIP ViT-B/32 0.5,
                DINOv2 0.6, ConvNeXt V2 / ResNet-50 / ViT-B/32 / VGG19-BN 0.7, Inception-
                ResNet-v2 0.5; tiny-vit and pixels 0.3, see ``costs.OFFLINE_CAL``; any other
                extractor: the mean rule); a number in (0, 1); or "auto" → 0.94 − 0.98 μ.
                Larger cal → fewer, larger clusters.
    graph:      "complete" (the paper), "knn" (a sparse graph, not the paper's: the exact k
                nearest neighbours plus ``knn_random`` random partners per image whose costs
                are scaled to stand for all other pairs; the reported energy is then on that
                graph), or "auto" (complete while it fits max_dense_gb).
    knn, knn_random: k neighbours and r random partners per image of the sparse graph
                (knn_random=0: plain kNN, which loses all repulsion and merges each
                connected component).
    max_dense_gb: memory the complete graph may take (two float32 n×n matrices).
    kl:         run Kernighan–Lin after GAEC (the paper does; False is its GAEC ablation).
    kl_outer_iterations / kl_inner_iterations: andres' numberOfOuterIterations (100) and
                numberOfInnerIterations, the cap on moves per cluster pair (own backend
                only): None = unlimited (the reference); "auto" = None on the complete graph,
                100 on the sparse one (see SPARSE_INNER_ITERATIONS).
    backend:    "own" (dense torch GAEC + numba KLj) or "bioimage" (bioimage-cpp, ~360 B/edge).
    """

    name: ClassVar[str] = "multicut"
    version: ClassVar[str] = "2"   # one version for both roles: 2 = the comparator scores AMI
    requires: ClassVar[frozenset[str]] = frozenset({"features"})
    quick_params: ClassVar[dict] = {}

    def fit(self, data: DataView, *, seed: int = 0) -> Multicut:
        self._check()
        if len(data) == 0:
            raise DataError("multicut: the dataset is empty")
        fitted = self._run(data.features(self.layer), data, seed)
        self.fitted_ = fitted
        self.summary_ = _summary(fitted, data, _extractor_names(data)[0] or "?")
        return self


def _summary(f: Fitted, view: DataView, extractor: str) -> Summary:
    codes = f.codes
    table5 = T.cluster_statistics(codes)
    stats: dict[str, float] = {
        **table5,
        "energy": f.result.energy,
        "energy_gaec": f.result.energy_gaec,
        "n_clusters_gaec": float(f.result.n_clusters_gaec),
        "cal": f.cal,
        "mean_p": f.pair_stats.mean_p,
        "similarity_min": f.pair_stats.s_min,
        "similarity_max": f.pair_stats.s_max,
        "complete_graph": 1.0 if f.graph == "complete" else 0.0,
        "n_edges": float(f.n_edges),
        **{f"time_{k}_s": float(v) for k, v in f.timings.items()},
    }
    groups = view.groups
    names = view.source.group_names if view.source is not None else None
    if groups is not None and len(np.unique(groups)) > 1:
        mix = T.group_mixing(codes, groups)
        stats.update({f"group_{k}": v for k, v in mix.items()})
    row = {"dataset": view.name, "extractor": extractor, "n_images": len(codes),
           "n_clusters": int(table5["n_clusters"]), "min_size": int(table5["min_size"]),
           "median_size": table5["median_size"], "mean_size": round(table5["mean_size"], 2),
           "max_size": int(table5["max_size"]), "pct_size_1": round(table5["pct_size_1"], 3),
           "energy": f.result.energy, "cal": f.cal, "graph": f.graph}
    largest = T.largest_clusters(codes, view.labels, getattr(view.source, "class_names", None),
                                 groups, names)
    artefacts: dict[str, Any] = {
        "tables": {"multicut_cluster_statistics": [row], "multicut_largest_clusters": largest},
        "cluster_sizes": T.cluster_sizes(codes),
        "cal_source": f.cal_source,
        "graph": f.graph,
        "energy_unit": ("sum of the costs w = logit(p) + logit(cal) of the cut edges of the "
                        f"{f.graph} graph; lower is better"),
    }
    return Summary(codes=codes, statistics=stats, artefacts=artefacts)


class ClusterDraws(Draws):
    """AMI(side, cluster) of any relabelling (or reweighting) of the clustered images of A ∪ B."""

    def __init__(self, blocks, codes: np.ndarray):
        self.blocks, self.codes = blocks, codes

    def score(self, w_a: np.ndarray, w_b: np.ndarray) -> float:
        ca = np.repeat(self.codes, np.rint(w_a).astype(np.int64))
        cb = np.repeat(self.codes, np.rint(w_b).astype(np.int64))
        source = np.r_[np.zeros(len(ca), dtype=np.int64), np.ones(len(cb), dtype=np.int64)]
        return float(T.group_mixing(np.concatenate([ca, cb]), source)["adjusted_mutual_information"])



class MulticutComparator(_MulticutParams, Comparator):
    """Cluster A ∪ B jointly and measure how much the clusters know about the source.

    score = adjusted mutual information AMI(source, cluster) (scikit-learn, chance-corrected,
    normalised by the smaller entropy, in practice H(source): 0 when the clusters ignore the
    source, 1 when every cluster holds one source). **Larger means more different.**

    Version 1 scored the adjusted *pure share* (images in one-source clusters): on overlapping
    sources the multicut finds a few large clusters, none pure, so that score was blind
    (synth-passnet: between 0.002, null -0.002) although the clusters were 72 % vs 24 % one
    source; AMI reads those proportions (between 0.122, null 0.008). The detail keeps the pure
    share, its chance level and the normalised mixing H(source | cluster)/H(source).
    """

    name: ClassVar[str] = "multicut"
    version: ClassVar[str] = "2"   # 2: score = AMI(source, cluster) (was the adjusted pure share)
    requires: ClassVar[frozenset[str]] = frozenset({"features"})
    larger_is_more_different: ClassVar[bool] = True
    quick_params: ClassVar[dict] = {}

    def _union(self, a: DataView, b: DataView, seed: int):
        """The multicut of A ∪ B (the last one is kept: a compare's draws and its findings share it)."""
        self._check()
        if len(a) == 0 or len(b) == 0:
            raise DataError(f"multicut: cannot compare an empty dataset (sizes {len(a)} and {len(b)})")
        xa, xb = a.features(self.layer), b.features(self.layer)
        if xa.shape[1] != xb.shape[1]:
            raise DataError(f"multicut: feature sizes differ ({xa.shape[1]} vs {xb.shape[1]}); "
                            "compare datasets through the same extractor")
        key = comparison_key(self, a, b, seed)
        last = self.__dict__.get("_last_union")
        if last is None or last[0] != key:
            self.__dict__["_last_union"] = (key, self._run(np.concatenate([xa, xb]), a, seed))
        return self.__dict__["_last_union"][1], xa, xb

    def draws(self, a: DataView, b: DataView, blocks, *, seed: int = 0) -> ClusterDraws:
        """The multicut of A ∪ B, solved once without the side labels; a draw relabels its images
        (so the permutation test is exact given the clustering)."""
        from bench.statistics import make_blocks

        fitted, _, _ = self._union(a, b, seed)
        return ClusterDraws(make_blocks(len(a), len(b), 1, seed), np.asarray(fitted.codes))

    def compare(self, a: DataView, b: DataView, *, seed: int = 0) -> Comparison:
        fitted, xa, xb = self._union(a, b, seed)
        source = np.r_[np.zeros(len(xa), dtype=np.int64), np.ones(len(xb), dtype=np.int64)]
        mix = T.group_mixing(fitted.codes, source)
        table5 = T.cluster_statistics(fitted.codes)
        detail = {**mix, "n_clusters": int(table5["n_clusters"]), "cal": fitted.cal,
                  "cal_source": fitted.cal_source, "graph": fitted.graph, "energy": fitted.result.energy,
                  "codes": fitted.codes}
        statistics = {**{k: float(v) for k, v in mix.items()}, **table5, "energy": fitted.result.energy,
                      "cal": fitted.cal}
        return Comparison(score=mix["adjusted_mutual_information"], detail=detail, statistics=statistics,
                          findings=multicut_findings(fitted.codes, len(xa)))
