"""What DNA says differs between A and B (``bench compare``), and A's reference DNA as plain
arrays for a saved summary (``bench summarise A --save A.bench``).

Findings: the layers whose neurons differ most, the neurons that differ most, and those
neurons' histograms of A and B side by side (the DNA paper's per-neuron view).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from bench.api import Finding

from .dna import HistogramDNA, LayerGaussianDNA
from .histogram import Ranges

#: neurons whose histograms the finding draws
DRAWN = 6


def _histograms_figure(ha: HistogramDNA, hb: HistogramDNA, top: list[dict]) -> np.ndarray:
    """(H, W, 3) uint8: each top neuron's normalised histograms of A and B over its range."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2.2 * len(top), 2.0), dpi=80, layout="constrained")
    canvas = FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(top), squeeze=False)[0]
    for ax, row in zip(axes, top):
        layer, j = row["layer"], int(row["neuron"])
        lo, hi = ha.ranges.bounds(layer) if ha.ranges is not None else (np.zeros(1), np.ones(1))
        for dna, name, colour in ((ha, "A", "#2457a6"), (hb, "B", "#c0392b")):
            counts = dna.counts[layer][j].detach().to("cpu", torch.float64).numpy()
            edges = np.linspace(lo[j], hi[j], len(counts) + 1)
            ax.stairs(counts / max(counts.sum(), 1), edges, color=colour, label=name)
        ax.set_title(f"{layer}:{j} ({row['value']:.3g})", fontsize=7)
        ax.tick_params(labelsize=6)
    axes[0].legend(fontsize=6)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def dna_findings(detail: dict[str, Any], ha: HistogramDNA | None, hb: HistogramDNA | None, *,
                 unit: str) -> list[Finding]:
    per_layer = sorted(detail.get("per_layer", {}).items(), key=lambda kv: -kv[1])
    out = [Finding(f"layers whose neurons differ most ({unit})",
                   rows=[{"layer": k, "mean distance": v} for k, v in per_layer])]
    top = list(detail.get("top_neurons") or [])
    if top:
        finding = Finding(f"neurons that differ most ({unit})", rows=top)
        if ha is not None and hb is not None:
            finding.figures["histograms"] = _histograms_figure(ha, hb, top[:DRAWN])
        out.append(finding)
    return out


# --------------------------------------------------------------------------- saved summaries


def reference_to_dict(ref: dict[str, Any]) -> dict[str, Any]:
    """A's reference (``DNAComparator._reference``) → arrays and JSON values (no objects)."""
    out: dict[str, Any] = {"layers": list(ref["layers"]), "kinds": list(ref["kinds"]),
                           "ranges_from": ref["ranges_from"], "ext": ref["ext"], "n": int(ref["n"]),
                           "neurons": {k: int(v) for k, v in ref["neurons"].items()}, "detail": ref["detail"],
                           "selected": None if ref["selected"] is None else
                           {k: np.asarray(v).tolist() for k, v in ref["selected"].items()}}
    ranges: Ranges | None = ref["ranges"]
    if ranges is not None:
        out["ranges_convention"] = {"mode": ranges.mode, "scale": ranges.scale}
        for k in ranges.layers:
            out[f"range_min:{k}"], out[f"range_max:{k}"] = ranges.mins[k], ranges.maxs[k]
    ha: HistogramDNA | None = ref["ha"]
    ga: LayerGaussianDNA = ref["ga"]
    if ha is not None:
        out["histogram_meta"] = {"bins": ha.bins, "num_images": ha.num_images, "sample": ha.sample,
                                 "source": ha.source}
        for k in ha.layers:
            out[f"counts:{k}"] = ha.counts[k].detach().to("cpu", torch.int64).numpy()
    out["gaussian_meta"] = {"num_images": ga.num_images, "sample": ga.sample, "source": ga.source}
    for k in ga.layers:
        out[f"mu:{k}"] = ga.mu[k].detach().to("cpu", torch.float64).numpy()
        out[f"sigma:{k}"] = ga.sigma[k].detach().to("cpu", torch.float64).numpy()
    return out


def reference_from_dict(d: dict[str, Any], comparator: Any) -> dict[str, Any]:
    """The inverse of :func:`reference_to_dict`, with the comparator's parameters for what is recomputed."""
    layers, kinds = list(d["layers"]), tuple(d["kinds"])
    neurons = {k: int(v) for k, v in d["neurons"].items()}
    ranges = None
    if "ranges_convention" in d:
        conv = d["ranges_convention"]
        ranges = Ranges({k: d[f"range_min:{k}"] for k in layers}, {k: d[f"range_max:{k}"] for k in layers},
                        mode=conv["mode"], scale=conv["scale"])
    common = {"neurons": neurons, "extractor": d["ext"]}
    ha = None
    if "histogram" in kinds:
        m = d["histogram_meta"]
        ha = HistogramDNA(**common, num_images=m["num_images"], sample=m["sample"], source=m["source"],
                          counts={k: torch.from_numpy(np.asarray(d[f"counts:{k}"], dtype=np.int64)) for k in layers},
                          bins=int(m["bins"]), ranges=ranges)
    m = d["gaussian_meta"]
    ga = LayerGaussianDNA(**common, num_images=m["num_images"], sample=m["sample"], source=m["source"],
                          mu={k: torch.from_numpy(np.asarray(d[f"mu:{k}"], dtype=np.float64)) for k in layers},
                          sigma={k: torch.from_numpy(np.asarray(d[f"sigma:{k}"], dtype=np.float64)) for k in layers})
    selected = None if d.get("selected") is None else {k: np.asarray(v, dtype=np.int64)
                                                       for k, v in d["selected"].items()}
    base = (tuple(layers), kinds, comparator.bins, ranges.digest() if ranges is not None else None,
            comparator.sample, comparator.precision)
    return {"layers": layers, "kinds": kinds, "ranges": ranges, "ranges_from": d["ranges_from"], "base": base,
            "pass_b": None, "ha": ha, "ga": ga, "neurons": neurons, "selected": selected,
            "detail": dict(d.get("detail") or {}), "ext": d["ext"], "n": int(d["n"])}
