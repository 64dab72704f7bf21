"""Neuron selection, the paper's "granular control": compare only neurons tied to an attribute.

Neurons are ranked by how differently they fire on images with and without the attribute:
the EMD (bin units, so neurons with different ranges are on one scale) between the DNA of
the positive and of the negative examples. ``score="snr"`` divides it by the EMD between two
random halves of the same examples, so neurons whose histograms are merely noisy on a small
example set do not rank high. The examples come as two views or as binary labels of one
view (then one streaming pass fills all groups at once).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import torch

from bench.errors import BenchError, DataError

from .distances import emd_per_neuron
from .dna import DNABuilder, HistogramDNA, RangePass, build_from_view
from .histogram import Ranges

if TYPE_CHECKING:  # pragma: no cover
    from bench.api import DataView

SCORES = ("emd", "snr")


def n_selected(top: int | float, total: int) -> int:
    """``top`` as a count (int ≥ 1) or a fraction of all neurons (0 < float < 1)."""
    if isinstance(top, bool) or not isinstance(top, (int, float, np.integer, np.floating)):
        raise BenchError(f"dna: select_top must be a count >= 1 or a fraction in (0, 1), got {top!r}")
    if isinstance(top, (float, np.floating)) and 0 < top < 1:
        return max(1, round(float(top) * total))
    if top >= 1 and float(top).is_integer():
        return min(int(top), total)
    raise BenchError(f"dna: select_top must be a count >= 1 or a fraction in (0, 1), got {top!r}")


def top_k(scores: Mapping[str, torch.Tensor], top: int | float) -> dict[str, np.ndarray]:
    """The ``top`` highest-scoring neurons → {layer: sorted indices} (ties: layer order, index)."""
    layers = list(scores)
    flat = torch.cat([scores[k].detach().to("cpu", torch.float64).reshape(-1) for k in layers]).numpy()
    k = n_selected(top, flat.size)
    order = np.argsort(-flat, kind="stable")[:k]
    bounds = np.cumsum([0] + [scores[layer].numel() for layer in layers])
    out = {}
    for i, layer in enumerate(layers):
        hit = order[(order >= bounds[i]) & (order < bounds[i + 1])] - bounds[i]
        if hit.size:
            out[layer] = np.sort(hit).astype(np.int64)
    return out


def rank_neurons(pos: HistogramDNA, neg: HistogramDNA, *, pos_halves: tuple[HistogramDNA, HistogramDNA] | None = None,
                 neg_halves: tuple[HistogramDNA, HistogramDNA] | None = None,
                 eps: float = 1e-3) -> dict[str, torch.Tensor]:
    """Per-neuron separation of the attribute: EMD(pos, neg), or over within-set noise (snr)."""
    between = emd_per_neuron(pos, neg)
    if pos_halves is None or neg_halves is None:
        return between
    within_p = emd_per_neuron(*pos_halves)
    within_n = emd_per_neuron(*neg_halves)
    return {k: between[k] / ((within_p[k] + within_n[k]) / 2 + eps) for k in between}


def select_neurons(pos: HistogramDNA, neg: HistogramDNA, top: int | float = 100) -> dict[str, np.ndarray]:
    """The ``top`` neurons whose histograms differ most between positives and negatives."""
    return top_k(rank_neurons(pos, neg), top)


def rank_from_labels(view: DataView, labels: np.ndarray, *, ranges: Ranges, layers: list[str], bins: int = 1000,
                     sample: str = "positions", precision: str = "float64", score: str = "emd",
                     seed: int = 0, kinds: tuple[str, ...] = ("histogram",), prefetched: RangePass | None = None
                     ) -> tuple[dict[str, torch.Tensor], DNABuilder, dict]:
    """Rank neurons by a binary attribute of ``view``'s images, in one pass over the view.

    Returns (scores per neuron, the builder, info). The builder's whole-set DNAs (histogram
    = sum of the group histograms, and any other ``kinds``) describe the entire view, so a
    caller comparing this view needs no second pass.
    """
    if score not in SCORES:
        raise BenchError(f"dna: selection score must be one of {', '.join(SCORES)}, got {score!r}")
    y = np.asarray(labels).astype(bool).reshape(-1)
    if y.size != len(view):
        raise DataError(f"dna: {y.size} labels for {len(view)} images")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    need = 2 if score == "snr" else 1
    if n_pos < need or n_neg < need:
        raise DataError(f"dna: neuron selection needs at least {need} image(s) with and without the attribute, "
                        f"got {n_pos} with and {n_neg} without")
    groups = np.where(y, 0, 2 if score == "snr" else 1).astype(np.int64)
    if score == "snr":  # split each side into two random halves (seeded) to measure noise
        rng = np.random.default_rng(seed)
        for side, base in ((y, 0), (~y, 2)):
            idx = np.flatnonzero(side)
            half = rng.permutation(idx)[: idx.size // 2]
            groups[idx] = base
            groups[half] = base + 1
    kinds = tuple(dict.fromkeys(("histogram", *kinds)))
    builder = build_from_view(view, layers=layers, kinds=kinds, bins=bins, ranges=ranges, sample=sample,
                              precision=precision, groups=groups, n_groups=4 if score == "snr" else 2,
                              prefetched=prefetched)
    if score == "snr":
        h = [builder.histogram(g) for g in range(4)]
        scores = rank_neurons(h[0] + h[1], h[2] + h[3], pos_halves=(h[0], h[1]), neg_halves=(h[2], h[3]))
    else:
        scores = rank_neurons(builder.histogram(0), builder.histogram(1))
    return scores, builder, {"n_positive": n_pos, "n_negative": n_neg}


def rank_from_views(pos: DataView, neg: DataView, *, ranges: Ranges, layers: list[str], bins: int = 1000,
                    sample: str = "positions", precision: str = "float64") -> dict[str, torch.Tensor]:
    """Rank neurons from two example sets that differ in the attribute of interest."""
    kw = {"layers": layers, "kinds": ("histogram",), "bins": bins, "ranges": ranges, "sample": sample,
          "precision": precision}
    return rank_neurons(build_from_view(pos, **kw).histogram(), build_from_view(neg, **kw).histogram())
