"""The difference atlas: *where* A and B differ, region by region, with error control.

A ∪ B is partitioned into K regions by k-means on the pooled features (K from n, recorded), without
looking at which side an image came from. For each region the share of B is compared with B's share
overall: under "no difference" the side labels are exchangeable, so a region's count of B images is
hypergeometric given the partition — the exact permutation distribution, whose two-sided p-value
is Fisher's exact test. Benjamini–Hochberg controls the false discovery rate across regions; each
region names its majority class (where labels exist) and representative images of each side.

As a comparator its score is the total-variation distance between A's and B's distributions over
the regions (½ Σ_r |a_r/n_A − b_r/n_B|), with a permutation null and interval drawn by relabelling
the clustered images; its p-value is Simes' combination of the regions' exact p-values (the smallest
BH-adjusted one), so it is not floored by the number of draws. It stands beside the other
comparators in a compare and is adjusted with them.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from scipy import stats as sps

from bench.api import Comparator, Comparison, DataView, Finding, comparison_key
from bench.atlas_map import embedding_name, point_map
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


def region_table(codes: np.ndarray, side: np.ndarray, labels: np.ndarray | None, class_names: list[str] | None,
                 x: np.ndarray, centroids: np.ndarray, n_images: int = 4) -> list[dict[str, Any]]:
    """One row per region: counts, shares, Fisher's exact p, BH-adjusted p, majority class, and the
    images of each side nearest the region's centre; sorted by adjusted p."""
    n_a, n_b = int((side == 0).sum()), int((side == 1).sum())
    rows = []
    for r in range(len(centroids)):
        members = np.flatnonzero(codes == r)
        if len(members) == 0:
            continue
        a_r, b_r = int((side[members] == 0).sum()), int((side[members] == 1).sum())
        p = float(sps.fisher_exact([[a_r, n_a - a_r], [b_r, n_b - b_r]])[1])
        row: dict[str, Any] = {"region": r, "n_a": a_r, "n_b": b_r,
                               "share_a": a_r / n_a, "share_b": b_r / n_b,
                               "more_in": "B" if b_r / n_b > a_r / n_a else "A", "p_value": p}
        if labels is not None:
            lab = labels[members]
            lab = lab[lab >= 0]
            if len(lab):
                top = np.bincount(lab).argmax()
                row["majority_class"] = class_names[top] if class_names else str(top)
                row["class_share"] = float((lab == top).mean())
        d = ((x[members] - centroids[r]) ** 2).sum(1)
        order = members[np.argsort(d, kind="stable")]
        row["images_a"] = [int(i) for i in order[side[order] == 0][:n_images]]
        row["images_b"] = [int(i) - n_a for i in order[side[order] == 1][:n_images]]
        rows.append(row)
    for row, q in zip(rows, benjamini_hochberg(np.asarray([r["p_value"] for r in rows]))):
        row["p_adjusted"] = float(q)
    rows.sort(key=lambda r: (r["p_adjusted"], r["p_value"], r["region"]))
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
        rows = region_table(codes, side, labels, names, x, centroids)
        significant = [r for r in rows if r["p_adjusted"] < self.fdr]
        score = _tv(codes, k, (side == 0).astype(np.float64), (side == 1).astype(np.float64))
        images = []
        for r in significant[:6]:
            what = f"region {r['region']}" + (f" ({r['majority_class']})" if "majority_class" in r else "")
            images.append((f"{what}: more in {r['more_in']}, q={r['p_adjusted']:.2g} — A", "a", r["images_a"]))
            images.append((f"{what} — B", "b", r["images_b"]))
        table = [{k_: v for k_, v in r.items() if not k_.startswith("images_")} for r in rows]
        findings = [Finding(f"regions of A ∪ B that one side fills more (K={k}, Fisher exact, BH at FDR "
                            f"{self.fdr:g}: {len(significant)} significant)", rows=table, images=images)]
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
