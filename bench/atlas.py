"""The difference atlas: *where* A and B differ, region by region, with error control.

A ∪ B is partitioned into K regions by k-means on the pooled features (K from n, recorded), without
looking at which side an image came from. A difference can be finer or coarser than one k-means
cell (a class split over two cells, or a shift spread over a family of classes), so the regions
are also joined into a tree (Ward's linkage of the K centres, again without the sides) and every
node below the root is a region too: the K cells and the K − 2 unions above them. For each region
the share of B is compared with B's share overall: under "no difference" the side labels are
exchangeable, so a region's count of B images is hypergeometric given the partition — the exact
permutation distribution, whose two-sided p-value is Fisher's exact test. Benjamini–Hochberg
controls the false discovery rate across all 2K − 2 regions (nested regions are positively
dependent, where BH stays valid); each region names its majority class (where labels exist) and
representative images of each side.

As a comparator its score is the total-variation distance between A's and B's distributions over
the K cells (½ Σ_r |a_r/n_A − b_r/n_B|), with a permutation null and interval drawn by relabelling
the clustered images; its p-value is Simes' combination of the regions' exact p-values (the smallest
BH-adjusted one), so it is not floored by the number of draws. It stands beside the other
comparators in a compare and is adjusted with them.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from scipy import stats as sps

from bench.api import Comparator, Comparison, DataView, Finding, comparison_key
from bench.atlas_map import embedding_name, point_map, region_label, region_name
from bench.baselines import faiss_kmeans
from bench.errors import BenchError, DataError
from bench.hookspecs import hookimpl
from bench.statistics import Draws, benjamini_hochberg, make_blocks


def region_count(n: int) -> int:
    """K from the number of images: about 40 per region, between 2 and 30."""
    return int(np.clip(round(n / 40), 2, 30))


def _tv(codes: np.ndarray, k: int, w_a: np.ndarray, w_b: np.ndarray) -> float:
    ca = np.bincount(codes, weights=w_a, minlength=k)
    cb = np.bincount(codes, weights=w_b, minlength=k)
    return float(0.5 * np.abs(ca / ca.sum() - cb / cb.sum()).sum())


class RegionDraws(Draws):
    """Total variation over fixed regions for any relabelling (or reweighting) of the images."""

    def __init__(self, blocks, codes: np.ndarray, k: int):
        self.blocks, self.codes, self.k = blocks, codes, k

    def score(self, w_a: np.ndarray, w_b: np.ndarray) -> float:
        return _tv(self.codes, self.k, np.asarray(w_a, np.float64), np.asarray(w_b, np.float64))


def region_tree(centroids: np.ndarray) -> list[np.ndarray]:
    """The cells each region covers: region r < K is cell r, region K + i the union Ward's linkage of
    the centres makes at its i-th merge; the root (everything) is left out. Side-blind, like the cells."""
    from scipy.cluster.hierarchy import linkage

    k = len(centroids)
    nodes = [np.array([r]) for r in range(k)]
    if k > 2:
        for left, right, _, _ in linkage(np.asarray(centroids, np.float64), method="ward")[:-1]:
            nodes.append(np.sort(np.r_[nodes[int(left)], nodes[int(right)]]))
    return nodes


def region_table(codes: np.ndarray, side: np.ndarray, labels: np.ndarray | None, class_names: list[str] | None,
                 x: np.ndarray, centroids: np.ndarray, n_images: int = 4,
                 nodes: list[np.ndarray] | None = None) -> list[dict[str, Any]]:
    """One row per region (``nodes``: the cells each covers; default the cells alone): counts,
    shares, Fisher's exact p, BH-adjusted p, majority class, and the images of each side nearest the
    region's centre; sorted by adjusted p, then the smaller region first."""
    n_a, n_b = int((side == 0).sum()), int((side == 1).sum())
    nodes = nodes if nodes is not None else [np.array([r]) for r in range(len(centroids))]
    rows = []
    for r, cells in enumerate(nodes):
        members = np.flatnonzero(np.isin(codes, cells))
        if len(members) == 0:
            continue
        a_r, b_r = int((side[members] == 0).sum()), int((side[members] == 1).sum())
        p = float(sps.fisher_exact([[a_r, n_a - a_r], [b_r, n_b - b_r]])[1])
        row: dict[str, Any] = {"region": r, "cells": [int(c) for c in cells], "n_a": a_r, "n_b": b_r,
                               "share_a": a_r / n_a, "share_b": b_r / n_b,
                               "more_in": "B" if b_r / n_b > a_r / n_a else "A", "p_value": p}
        if labels is not None:
            lab = labels[members]
            lab = lab[lab >= 0]
            if len(lab):
                top = np.bincount(lab).argmax()
                row["majority_class"] = class_names[top] if class_names else str(top)
                row["class_share"] = float((lab == top).mean())
        centre = centroids[cells[0]] if len(cells) == 1 else x[members].mean(0)
        d = ((x[members] - centre) ** 2).sum(1)
        order = members[np.argsort(d, kind="stable")]
        row["images_a"] = [int(i) for i in order[side[order] == 0][:n_images]]
        row["images_b"] = [int(i) - n_a for i in order[side[order] == 1][:n_images]]
        rows.append(row)
    for row, q in zip(rows, benjamini_hochberg(np.asarray([r["p_value"] for r in rows]))):
        row["p_adjusted"] = float(q)
    rows.sort(key=lambda r: (r["p_adjusted"], r["p_value"], len(r["cells"]), r["region"]))
    return rows


class DifferenceAtlas(Comparator):
    """Regions of A ∪ B (k-means on pooled features) that one side fills more than the other; see the
    module docstring. ``k=None`` picks K from n (:func:`region_count`)."""

    name: ClassVar[str] = "atlas"
    version: ClassVar[str] = "1"
    requires: ClassVar[frozenset[str]] = frozenset({"features"})
    larger_is_more_different: ClassVar[bool] = True

    def __init__(self, *, k: int | None = None, niter: int = 25, layer: str = "pooled", fdr: float = 0.05):
        self.k = k
        self.niter = niter
        self.layer = layer
        self.fdr = fdr

    def check_params(self) -> None:
        if self.k is not None and (isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 2):
            raise BenchError(f"atlas: k must be an integer >= 2 or None (chosen from n), got {self.k!r}")
        if not 0 < self.fdr < 1:
            raise BenchError(f"atlas: fdr must be between 0 and 1, got {self.fdr!r}")

    def _regions(self, a: DataView, b: DataView, seed: int):
        """The partition of A ∪ B (the last one is kept: draws and findings of one compare share it)."""
        self.check_params()
        key = comparison_key(self, a, b, seed)
        last = self.__dict__.get("_last")
        if last is not None and last[0] == key:
            return last[1]
        if len(a) < 2 or len(b) < 2:
            raise DataError(f"atlas: needs at least 2 images per side, got {len(a)} and {len(b)}")
        x = np.concatenate([a.features(self.layer), b.features(self.layer)]).astype(np.float32)
        k = min(self.k or region_count(len(x)), len(x))
        codes, centroids, _ = faiss_kmeans(x, k, niter=self.niter, seed=seed)
        out = (x, codes, centroids, k)
        self.__dict__["_last"] = (key, out)
        return out

    def draws(self, a: DataView, b: DataView, blocks, *, seed: int = 0) -> RegionDraws:
        _, codes, _, k = self._regions(a, b, seed)
        return RegionDraws(make_blocks(len(a), len(b), 1, seed), codes, k)

    def compare(self, a: DataView, b: DataView, *, seed: int = 0) -> Comparison:
        x, codes, centroids, k = self._regions(a, b, seed)
        side = np.r_[np.zeros(len(a), np.int64), np.ones(len(b), np.int64)]
        labels = None
        if a.labels is not None and b.labels is not None and a.source is b.source:
            labels = np.concatenate([a.labels, b.labels])
        names = list(a.source.class_names or []) if labels is not None else None
        rows = region_table(codes, side, labels, names, x, centroids, nodes=region_tree(centroids))
        significant = [r for r in rows if r["p_adjusted"] < self.fdr]
        score = _tv(codes, k, (side == 0).astype(np.float64), (side == 1).astype(np.float64))
        images = []
        for r in significant[:6]:
            images.append((f"{region_label(r)} — A", "a", r["images_a"]))
            images.append((f"{region_name(r)} — B", "b", r["images_b"]))
        table = [{k_: v for k_, v in r.items() if not k_.startswith("images_")} for r in rows]
        findings = [Finding(f"regions of A ∪ B that one side fills more ({k} k-means cells and the {len(rows) - k} "
                            f"unions of their tree; Fisher exact, BH at FDR {self.fdr:g}: {len(significant)} "
                            f"significant)", rows=table, images=images)]
        points = point_map(x, side, codes, significant, seed)
        findings.append(Finding("map of A ∪ B", points=points, rows=[
            {"embedding": embedding_name(), "images": len(x), "drawn": len(points.xy),
             "duplicate links": len(points.links),
             "outlined": ", ".join(f"region {o['region']}" for o in points.outlines)}]))
        stats = {"k": float(k), "significant_regions": float(len(significant)),
                 "min_region_q": float(rows[0]["p_adjusted"]) if rows else 1.0}
        # Simes' global test over the regions (valid under positive dependence): the smallest BH q
        simes = min((r["p_adjusted"] for r in rows), default=1.0)
        return Comparison(score=score, detail={"regions": rows, "codes": codes, "k": k}, statistics=stats,
                          findings=findings, p_value=simes)


@hookimpl
def bench_register_comparators(registry):
    registry.add("atlas", DifferenceAtlas)
