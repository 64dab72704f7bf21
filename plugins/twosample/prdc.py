"""``prdc``: precision, recall, density and coverage (Naeem et al. 2020) of B against A.

A is the reference ("real"), B the other set ("fake"), as the ``prdc`` package names them. Each
image's ball has its k-th nearest neighbour *of its own side* (itself excluded) as radius:

- precision: B's share inside some ball of A;     recall: A's share inside some ball of B;
- density: B's mean count of A balls holding it, over k;
- coverage: A's share whose ball holds some image of B.

**score = 1 − coverage**: 0 when every image of A has B nearby, up to 1; coverage is the one of the
four that both sides move (a missing mode of A lowers it, and extra B images cannot raise it past 1)
and it is robust to outliers. The other three are in ``statistics``. Per-image flags: A's images no
B image covers (``uncovered_a``) and B's images outside every ball of A (``outside_b``).

**Draws.** Radii depend on which images form a side, so a draw recomputes them, from a k-NN graph
of A ∪ B built once (each image's ``L`` nearest others, O(n² d) for the exact distances): a node's
radius is the distance at which its list has met k images of its side, and every image inside a
ball lies before that point of the list, so precision, recall, density and coverage of any
relabelling are read off the lists in O(n L) per draw. A node whose list holds fewer than k of its
side is searched in full (exact). A bootstrap resample counts a repeated neighbour as often as it
is drawn, but never a node's own copies (a copy is not a neighbour; it would make the radius 0).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from bench.api import Comparator, Comparison, DataView, Finding
from bench.errors import BenchError, DataError
from bench.statistics import Draws, make_blocks

from .common import positive_int, side_features, top_rows

#: bytes of one distance chunk (rows × n float64): 128 MiB, at most 1,024 rows
CHUNK_BYTES = 2**27


def chunk_rows(n: int) -> int:
    return max(1, min(1024, CHUNK_BYTES // (8 * n)))
#: longest neighbour list kept per image (n × L distances and indices)
MAX_LIST = 512


def distances(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Euclidean distances, float64 (the ``prdc`` package's ``sklearn`` pairwise distances)."""
    d2 = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * (x @ y.T)
    return np.sqrt(np.clip(d2, 0, None))


class NeighbourGraph:
    """Each image's ``length`` nearest other images of A ∪ B, sorted by distance."""

    def __init__(self, x: np.ndarray, length: int):
        n = len(x)
        self.x = x
        length = min(n - 1, length)
        self.complete = length == n - 1
        self.idx = np.empty((n, length), dtype=np.int64)
        self.dist = np.empty((n, length))
        chunk = chunk_rows(n)
        for s in range(0, n, chunk):
            d = distances(x[s:s + chunk], x)
            rows = np.arange(len(d))
            d[rows, s + rows] = np.inf          # a node is not its own neighbour
            part = np.argpartition(d, length - 1, axis=1)[:, :length] if length < n - 1 else \
                np.argsort(d, axis=1, kind="stable")[:, :length]
            dp = np.take_along_axis(d, part, axis=1)
            order = np.argsort(dp, axis=1, kind="stable")
            self.idx[s:s + chunk] = np.take_along_axis(part, order, axis=1)
            self.dist[s:s + chunk] = np.take_along_axis(dp, order, axis=1)

    def _full(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        d = distances(self.x[row:row + 1], self.x)[0]
        d[row] = np.inf
        order = np.argsort(d, kind="stable")[:-1]
        return order, d[order]

    def balls(self, rows: np.ndarray, w_own: np.ndarray, w_other: np.ndarray, k: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For the images ``rows`` of one side: radius (k-th neighbour of the side, counted with the
        weights ``w_own``), whether the ball holds an image of the other side, and for every node the
        ``w_own``-weighted count of these balls holding it (nonzero only on the other side)."""
        idx, dist = self.idx[rows], self.dist[rows]
        cum = np.cumsum(w_own[idx], axis=1)
        found = cum[:, -1] >= k if cum.shape[1] else np.zeros(len(rows), dtype=bool)
        radius = np.empty(len(rows))
        radius[found] = dist[found, np.argmax(cum[found] >= k, axis=1)]
        inside = (w_other[idx] > 0) & (dist < radius[:, None])
        inside[~found] = False
        holds = inside.any(axis=1)
        counts = np.bincount(idx[inside], weights=np.broadcast_to(w_own[rows][:, None], inside.shape)[inside],
                             minlength=len(w_own))
        for r in np.flatnonzero(~found):   # fewer than k of the side in the list: search in full
            if self.complete:
                raise DataError(f"prdc: needs more than k={k} images per side")
            order, d = self._full(int(rows[r]))
            c = np.cumsum(w_own[order])
            if c[-1] < k:
                raise DataError(f"prdc: needs more than k={k} images per side")
            radius[r] = d[np.argmax(c >= k)]
            hit = order[(w_other[order] > 0) & (d < radius[r])]
            holds[r] = len(hit) > 0
            np.add.at(counts, hit, w_own[rows[r]])
        return radius, holds, counts


def prdc_from_graph(graph: NeighbourGraph, w_a: np.ndarray, w_b: np.ndarray, k: int) -> dict[str, Any]:
    """Precision, recall, density, coverage of the weighted sides, and the per-node flags."""
    w_a, w_b = np.asarray(w_a, np.float64), np.asarray(w_b, np.float64)
    ra, rb = np.flatnonzero(w_a), np.flatnonzero(w_b)
    n_a, n_b = w_a.sum(), w_b.sum()
    radius_a, covered_a, in_a_balls = graph.balls(ra, w_a, w_b, k)
    _, _, in_b_balls = graph.balls(rb, w_b, w_a, k)
    return {"precision": float(w_b[rb] @ (in_a_balls[rb] > 0) / n_b),
            "recall": float(w_a[ra] @ (in_b_balls[ra] > 0) / n_a),
            "density": float(w_b[rb] @ in_a_balls[rb] / (k * n_b)),
            "coverage": float(w_a[ra] @ covered_a / n_a),
            "rows_a": ra, "covered_a": covered_a, "radius_a": radius_a, "rows_b": rb,
            "inside_a_b": in_a_balls[rb] > 0}


def list_length(n_a: int, n_b: int, k: int) -> int:
    """Long enough that a random side of the smaller size usually meets k of its own in the list."""
    n = n_a + n_b
    return int(min(MAX_LIST, max(32, 3 * k * n // max(1, min(n_a, n_b)) + 16)))


class GraphDraws(Draws):
    """1 − coverage of any reweighting of A ∪ B from one neighbour graph (module docstring)."""

    def __init__(self, blocks, graph: NeighbourGraph, k: int):
        self.blocks, self.graph, self.k = blocks, graph, k

    def score(self, w_a: np.ndarray, w_b: np.ndarray) -> float:
        return 1.0 - prdc_from_graph(self.graph, w_a, w_b, self.k)["coverage"]


class PRDC(Comparator):
    """Precision, recall, density and coverage of B against A; score = 1 − coverage."""

    name: ClassVar[str] = "prdc"
    version: ClassVar[str] = "1"
    larger_is_more_different: ClassVar[bool] = True

    def __init__(self, *, k: int = 5, layer: str = "pooled"):
        self.k = k
        self.layer = layer

    def check_params(self) -> None:
        positive_int(self.k, "k", "prdc")
        if not isinstance(self.layer, str):
            raise BenchError(f"prdc: layer must be a layer name, got {self.layer!r}")

    def _graph(self, a: DataView, b: DataView) -> tuple[NeighbourGraph, int, int]:
        self.check_params()
        x, n_a = side_features(a, b, self.layer, "prdc", minimum=self.k + 1)
        n_b = len(x) - n_a
        return NeighbourGraph(x, list_length(n_a, n_b, self.k)), n_a, n_b

    def compare(self, a: DataView, b: DataView, *, seed: int = 0) -> Comparison:
        graph, n_a, n_b = self._graph(a, b)
        side = np.r_[np.zeros(n_a), np.ones(n_b)]
        got = prdc_from_graph(graph, 1.0 - side, side, self.k)
        uncovered_a = np.flatnonzero(~got["covered_a"])
        outside_b = np.flatnonzero(~got["inside_a_b"])
        stats = {m: got[m] for m in ("precision", "recall", "density", "coverage")}
        statistics = {**stats, "k": float(self.k), "n_uncovered_a": float(len(uncovered_a)),
                      "n_outside_b": float(len(outside_b)), "n_a": float(n_a), "n_b": float(n_b)}
        detail = {**stats, "k": self.k, "uncovered_a": uncovered_a, "outside_b": outside_b,
                  "radius_a": got["radius_a"], "score": "1 − coverage"}
        return Comparison(score=1.0 - got["coverage"], detail=detail, statistics=statistics,
                          findings=_findings(stats, uncovered_a, outside_b, got["radius_a"], n_a, n_b, self.k))

    def draws(self, a: DataView, b: DataView, blocks, *, seed: int = 0) -> GraphDraws:
        """The k-NN graph of A ∪ B, built once (one image per block); a draw relabels its nodes."""
        graph, n_a, n_b = self._graph(a, b)
        return GraphDraws(make_blocks(n_a, n_b, 1, seed), graph, self.k)


def _findings(stats: dict[str, float], uncovered_a: np.ndarray, outside_b: np.ndarray, radius_a: np.ndarray,
              n_a: int, n_b: int, k: int) -> list[Finding]:
    """The four numbers, then every flagged image (A's by largest radius first: the sparsest parts
    of A that B misses; B's in index order); montages of the first :data:`SHOWN` of each."""
    out = [Finding(f"precision, recall, density, coverage (k = {k}; score = 1 − coverage)",
                   rows=[{"statistic": m, "value": v} for m, v in stats.items()])]
    order = uncovered_a[np.argsort(-radius_a[uncovered_a], kind="stable")]
    for side, flagged, title, rows in (
            ("a", order, f"images of A no image of B covers ({len(uncovered_a)} of {n_a})",
             [{"image": int(i), "radius": float(radius_a[i])} for i in order]),
            ("b", outside_b, f"images of B outside every ball of A ({len(outside_b)} of {n_b})",
             [{"image": int(i)} for i in outside_b])):
        total = len(flagged)
        images = [(f"{label} of {total}", side, idx) for label, idx in
                  top_rows(flagged[:SHOWN], 10, lambda s, c: f"{s + 1}–{s + len(c)}")]
        out.append(Finding(title, side=side, rows=rows, images=images))
    return out


#: flagged images of each side drawn in the report
SHOWN = 50
