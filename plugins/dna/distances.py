"""Distances between DNAs: EMD per neuron, NFD per neuron, FD per layer, and how to aggregate.

EMD (vdna): for normalised histograms p, q of N bins, Σ_k |Σ_{j≤k} (p_j − q_j)| — the
1-Wasserstein distance with bins one unit apart ("bin units", at most N − 1). Times the bin
width 2σ_c/N it is the W1 in activation units of neuron c.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from bench.errors import BenchError, DataError

from .dna import DNA, GaussianDNA, HistogramDNA, LayerGaussianDNA, iter_activations
from .histogram import PRECISIONS, as_channels, histogram_fast

if TYPE_CHECKING:  # pragma: no cover
    from bench.api import DataView

#: a neuron set: layer → neuron indices (all neurons of a layer when the value is None)
NeuronSet = Mapping[str, Sequence[int] | np.ndarray | None]
UNITS = ("bins", "activation")


def emd_rows(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """EMD in bin units between matching rows of two count arrays (..., N), float64."""
    ps = p.sum(dim=-1, keepdim=True, dtype=torch.float64)
    qs = q.sum(dim=-1, keepdim=True, dtype=torch.float64)
    if (ps == 0).any() or (qs == 0).any():
        raise DataError("dna: a histogram has no samples; EMD needs at least one activation per neuron")
    # the same operations as (p / ps − q / qs).cumsum().abs().sum(), in place: two temporaries
    # fewer of (neurons × bins) float64, a third of a block-state draw's EMD time
    diff = p.to(torch.float64) / ps
    diff.sub_(q.to(torch.float64) / qs)
    return diff.cumsum_(dim=-1).abs_().sum(dim=-1)


def emd_per_neuron(d1: HistogramDNA, d2: HistogramDNA, *, unit: str = "bins") -> dict[str, torch.Tensor]:
    """{layer: (C,) float64} EMD per neuron, in bin units or activation units."""
    if unit not in UNITS:
        raise BenchError(f"dna: unit must be one of {', '.join(UNITS)}, got {unit!r}")
    d1.check_compatible(d2)
    out = {}
    for layer in d1.layers:
        e = emd_rows(d1.counts[layer], d2.counts[layer].to(d1.counts[layer].device))
        if unit == "activation":
            if d1.ranges is None:
                raise BenchError("dna: these DNAs carry no ranges (e.g. written by vdna); "
                                 "EMD in activation units needs them — use unit='bins'")
            e = e * torch.from_numpy(d1.ranges.bin_width(layer, d1.bins)).to(e.device)
        out[layer] = e
    return out


def nfd_per_neuron(d1: GaussianDNA | LayerGaussianDNA, d2: GaussianDNA | LayerGaussianDNA) -> dict[str, torch.Tensor]:
    """Neuron Fréchet distance (μ1−μ2)² + v1 + v2 − 2√(v1 v2) per neuron (covariance diagonal
    for layer Gaussians, as vdna)."""
    g1 = d1.to_gaussian() if isinstance(d1, LayerGaussianDNA) else d1
    g2 = d2.to_gaussian() if isinstance(d2, LayerGaussianDNA) else d2
    g1.check_compatible(g2)
    out = {}
    for layer in g1.layers:
        m1, v1 = g1.mu[layer], g1.var[layer]
        m2, v2 = g2.mu[layer].to(m1.device), g2.var[layer].to(m1.device)
        out[layer] = (m1 - m2) ** 2 + v1 + v2 - 2 * torch.sqrt(v1 * v2)
    return out


def frechet_distance(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor) -> float:
    """The harness' Fréchet distance (:func:`bench.baselines.frechet_distance`, FID's formula) of
    two Gaussians given as tensors on any device; computed in float64 on the CPU."""
    from bench.baselines import frechet_distance as fd

    return fd(*(t.detach().to("cpu", torch.float64).numpy() for t in (mu1, sigma1, mu2, sigma2)))


def fd_per_layer(d1: LayerGaussianDNA, d2: LayerGaussianDNA) -> dict[str, float]:
    """Fréchet distance of each layer's full-covariance Gaussians (vdna's FD; mean over layers
    when aggregated)."""
    d1.check_compatible(d2)
    return {k: frechet_distance(d1.mu[k], d1.sigma[k], d2.mu[k], d2.sigma[k]) for k in d1.layers}


# --------------------------------------------------------------------------- aggregation


def check_neurons(neurons: NeuronSet, dna_neurons: Mapping[str, int]) -> dict[str, np.ndarray]:
    """Validate a neuron set against a DNA's layers → {layer: sorted unique int64 indices}."""
    if not isinstance(neurons, Mapping) or not neurons:
        raise BenchError("dna: neurons must be a non-empty mapping layer → list of neuron indices")
    out = {}
    for layer, idx in neurons.items():
        if layer not in dna_neurons:
            raise BenchError(f"dna: neuron selection names layer {layer!r}, not one of {', '.join(dna_neurons)}")
        c = dna_neurons[layer]
        arr = np.arange(c) if idx is None else np.unique(np.asarray(idx, dtype=np.int64).reshape(-1))
        if arr.size == 0:
            continue
        if arr.min() < 0 or arr.max() >= c:
            raise BenchError(f"dna: neuron index out of range for layer {layer!r} with {c} neurons")
        out[layer] = arr
    if not out:
        raise BenchError("dna: the neuron selection is empty")
    return out


def aggregate(per_neuron: Mapping[str, torch.Tensor], *, neurons: NeuronSet | None = None,
              weights: Mapping[str, torch.Tensor | np.ndarray] | None = None) -> float:
    """Mean over the selected neurons, all layers concatenated (vdna's default: wide layers
    weigh more); ``weights`` gives a weighted mean (the paper's neuron combinations)."""
    sizes = {k: int(v.numel()) for k, v in per_neuron.items()}
    sel = check_neurons(neurons, sizes) if neurons is not None else {k: None for k in per_neuron}
    num, den = 0.0, 0.0
    for layer, idx in sel.items():
        v = per_neuron[layer].to(torch.float64)
        w = None
        if weights is not None:
            if layer not in weights:
                continue
            w = torch.as_tensor(np.asarray(weights[layer], dtype=np.float64), device=v.device)
            if w.shape != v.shape:
                raise BenchError(f"dna: weights of layer {layer!r} have shape {tuple(w.shape)}, "
                                 f"need {tuple(v.shape)}")
            if (w < 0).any():
                raise BenchError("dna: neuron weights must be non-negative")
        if idx is not None:
            t = torch.as_tensor(idx, device=v.device)
            v = v[t]
            w = None if w is None else w[t]
        if w is None:
            num += float(v.sum())
            den += v.numel()
        else:
            num += float((v * w).sum())
            den += float(w.sum())
    if den == 0:
        raise BenchError("dna: the neuron weights / selection sum to zero")
    return num / den


def per_layer_means(per_neuron: Mapping[str, torch.Tensor], neurons: NeuronSet | None = None) -> dict[str, float]:
    sel = check_neurons(neurons, {k: int(v.numel()) for k, v in per_neuron.items()}) if neurons else None
    out = {}
    for layer, values in per_neuron.items():
        if sel is not None and layer not in sel:
            continue
        v = values if sel is None else values[torch.as_tensor(sel[layer], device=values.device)]
        out[layer] = float(v.to(torch.float64).mean())
    return out


def top_neurons(per_neuron: Mapping[str, torch.Tensor], k: int = 20,
                neurons: NeuronSet | None = None) -> list[dict]:
    """The k neurons with the largest values: [{layer, neuron, value}], largest first."""
    sel = check_neurons(neurons, {n: int(v.numel()) for n, v in per_neuron.items()}) if neurons else None
    rows = []
    for layer, v in per_neuron.items():
        vals = v.detach().to("cpu", torch.float64).numpy()
        idx = np.arange(vals.size) if sel is None else sel.get(layer, np.zeros(0, dtype=np.int64))
        rows.extend((float(vals[i]), layer, int(i)) for i in idx)
    rows.sort(key=lambda r: (-r[0], r[1], r[2]))
    return [{"layer": layer, "neuron": i, "value": val} for val, layer, i in rows[:k]]


# --------------------------------------------------------------------------- image-level


def image_emd(view: DataView, dna: HistogramDNA, *, unit: str = "bins", neurons: NeuronSet | None = None,
              precision: str = "float64", max_elements: int = 2**24) -> np.ndarray:
    """Mean EMD of every image's own DNA to ``dna`` (image ↔ dataset), streamed: (n,) float64.

    Each image's histograms use the dataset DNA's ranges and sample convention, so the value
    equals ``aggregate(emd_per_neuron(DNA(image), dna))`` without holding per-image DNAs.
    """
    if unit not in UNITS:
        raise BenchError(f"dna: unit must be one of {', '.join(UNITS)}, got {unit!r}")
    if dna.ranges is None:
        raise BenchError("dna: image distances need a DNA with stored ranges")
    sel = check_neurons(neurons, dna.neurons) if neurons is not None else {k: None for k in dna.layers}
    out: list[np.ndarray] = []
    for acts in iter_activations(view, dna.layers):
        b = next(iter(acts.values())).shape[0]
        num = torch.zeros(b, dtype=torch.float64)
        den = 0
        for layer, idx in sel.items():
            x = as_channels(acts[layer], layer)
            if x.shape[1] != dna.neurons[layer]:
                raise DataError(f"dna: layer {layer!r} has {x.shape[1]} channels, the DNA {dna.neurons[layer]}")
            if idx is not None:
                x = x[:, torch.as_tensor(idx, device=x.device)]
            if dna.sample == "image_mean":
                x = x.mean(dim=2, keepdim=True).to(torch.float64)
            mu, sigma = dna.ranges.norm(layer, x.device)
            ref = dna.counts[layer].to(x.device)
            width = torch.from_numpy(dna.ranges.bin_width(layer, dna.bins)).to(x.device)
            if idx is not None:
                t = torch.as_tensor(idx, device=x.device)
                mu, sigma, ref, width = mu[t], sigma[t], ref[t], width[t]
            chunk = max(1, max_elements // max(1, x.shape[1] * dna.bins))
            for s in range(0, b, chunk):
                xs = x[s:s + chunk]
                h = histogram_fast(xs, mu, sigma, dna.bins, group=torch.arange(xs.shape[0]),
                                   n_groups=xs.shape[0], dtype=PRECISIONS[precision])
                e = emd_rows(h, ref.expand_as(h))
                if unit == "activation":
                    e = e * width
                num[s:s + xs.shape[0]] += e.sum(dim=1).cpu()
            den += x.shape[1]
        out.append((num / den).numpy())
    if not out:
        raise DataError("dna: no images to compare")
    return np.concatenate(out)


def distance(d1: DNA, d2: DNA, *, metric: str = "emd", neurons: NeuronSet | None = None,
             weights: Mapping | None = None, how: str = "mean") -> float | dict[str, float] | dict[str, torch.Tensor]:
    """One entry point for every DNA distance, mirroring vdna's aggregation switches.

    metric: "emd" (bins), "emd_act" (activation units), "nfd", "fd" (layer Gaussians);
    how: "mean" (one number), "layer" ({layer: mean}), "neuron" ({layer: (C,) values}).
    FD is per layer: "mean" gives the mean of per-layer FDs (vdna), "layer" the dict.
    """
    if how not in ("mean", "layer", "neuron"):
        raise BenchError(f"dna: how must be 'mean', 'layer' or 'neuron', got {how!r}")
    if metric == "fd":
        if not isinstance(d1, LayerGaussianDNA) or not isinstance(d2, LayerGaussianDNA):
            raise BenchError("dna: FD needs layer-gaussian DNAs")
        if how == "neuron":
            raise BenchError("dna: FD is defined per layer, not per neuron; use metric='nfd'")
        fds = fd_per_layer(d1, d2)
        if neurons is not None:
            fds = {k: v for k, v in fds.items() if k in check_neurons(neurons, d1.neurons)}
        return fds if how == "layer" else float(np.mean(list(fds.values())))
    if metric in ("emd", "emd_act"):
        if not isinstance(d1, HistogramDNA) or not isinstance(d2, HistogramDNA):
            raise BenchError("dna: EMD needs histogram DNAs")
        per = emd_per_neuron(d1, d2, unit="bins" if metric == "emd" else "activation")
    elif metric == "nfd":
        if not isinstance(d1, (GaussianDNA, LayerGaussianDNA)) or not isinstance(d2, (GaussianDNA, LayerGaussianDNA)):
            raise BenchError("dna: NFD needs gaussian or layer-gaussian DNAs")
        per = nfd_per_neuron(d1, d2)
    else:
        raise BenchError(f"dna: metric must be one of emd, emd_act, nfd, fd; got {metric!r}")
    if how == "neuron":
        if neurons is None:
            return per
        sel = check_neurons(neurons, {k: int(v.numel()) for k, v in per.items()})
        return {k: per[k][torch.as_tensor(i, device=per[k].device)] for k, i in sel.items()}
    if how == "layer":
        return per_layer_means(per, neurons)
    return aggregate(per, neurons=neurons, weights=weights)
