"""DNA's section of ``bench report``: the plugin renders its own records and artefacts
through the ``bench_report_sections`` hook (the core report knows none of its keys)."""

from __future__ import annotations

import itertools
from collections import defaultdict
from typing import Any

import numpy as np

from bench import records as R
from bench.reporting import (
    ReportSection,
    RunData,
    artefacts_with_notes,
    esc,
    img_html,
    method_section,
    new_figure,
)


def _dna_layers(art: dict[str, Any], rec: R.Record) -> list[tuple[str, int]] | None:
    meta = art.get("dna_meta") or {}
    layers = (meta.get("bench") or {}).get("layers")
    counts = meta.get("neurons_list") or {}
    if layers and all(k in counts for k in layers):
        return [(k, int(counts[k])) for k in layers]
    rows = rec.tables.get("dna_layers") or []
    if rows and all("layer" in r and "neurons" in r for r in rows):
        return [(str(r["layer"]), int(r["neurons"])) for r in rows]
    return None


def _nfd(mu_a, var_a, mu_b, var_b) -> np.ndarray:
    """Neuron Fréchet distance per neuron: (μa − μb)² + va + vb − 2√(va vb) (the DNA paper's NFD)."""
    va, vb = np.clip(var_a, 0, None), np.clip(var_b, 0, None)
    return (mu_a - mu_b) ** 2 + va + vb - 2 * np.sqrt(va * vb)


def dna_section(run: RunData) -> ReportSection | None:
    made = method_section(run, "dna", "DNA: per-layer and top-neuron differences",
                           "Distributions of neuron activations. Per dataset: per-layer descriptors of the histograms. "
                           "Between datasets seen through one extractor: the neuron Fréchet distance of the per-neuron "
                           "Gaussians each DNA stored, averaged per layer and for the most different neurons.")
    if made is None:
        return None
    sec, parts, recs = made
    gauss: dict[str, list[tuple[R.Record, list, np.ndarray, np.ndarray]]] = defaultdict(list)
    for rec in recs:
        art = artefacts_with_notes(sec, run, rec)
        parts.append(f"<h3>{esc(run.label(rec))}</h3>")
        rows = run.table(rec, "dna_layers")
        cols = [c for c in ("mean_entropy_bits", "mean_occupied_bins", "mean_activation", "mean_std")
                if rows and all(isinstance(r.get(c), (int, float)) for r in rows)]
        if cols:
            fig = new_figure(min(3.0 * len(cols), 12), 2.6)
            axes = fig.subplots(1, len(cols), squeeze=False)[0]
            for ax, c in zip(axes, cols):
                ax.bar([str(r["layer"]) for r in rows], [r[c] for r in rows], color="#2457a6")
                ax.set_title(c.replace("_", " "), fontsize=8)
                ax.tick_params(axis="x", labelrotation=45, labelsize=7)
            parts.append(img_html(fig, "per-layer descriptors of the DNA"))
        else:
            sec.note(f"{run.label(rec)}: no per-layer table (dna_layers) in the record")
        layers = _dna_layers(art, rec)
        if "gaussian_mu" in art and "gaussian_var" in art and layers is not None:
            mu = np.asarray(art["gaussian_mu"], dtype=np.float64)
            var = np.asarray(art["gaussian_var"], dtype=np.float64)
            gauss[rec.features.extractor].append((rec, layers, mu, var))
        else:
            sec.note(f"{run.label(rec)}: per-neuron Gaussians (gaussian_mu / gaussian_var) or the layer "
                     "layout were not saved; no differences")
    for extractor, items in gauss.items():
        if len(items) < 2:
            sec.note(f"{extractor}: differences need DNAs of at least two datasets through one extractor; "
                     f"this run has {items[0][0].dataset.name} only (the dna comparator's own per-layer "
                     "detail is not stored in records)")
            continue
        ref = items[0]
        for other in items[1:]:
            if ref[1] != other[1] or ref[2].shape != other[2].shape:
                sec.note(f"{extractor}: {ref[0].dataset.name} and {other[0].dataset.name} tap different "
                         "layers")
                continue
            d = _nfd(ref[2], ref[3], other[2], other[3])
            names = [f"{layer}:{j}" for layer, n in ref[1] for j in range(n)]
            bounds = np.cumsum([0] + [n for _, n in ref[1]])
            per_layer = [float(d[a:b].mean()) for a, b in itertools.pairwise(bounds)]
            top = np.argsort(-d, kind="stable")[:20]
            fig = new_figure(10, 3.0)
            ax1, ax2 = fig.subplots(1, 2)
            ax1.bar([k for k, _ in ref[1]], per_layer, color="#2457a6")
            ax1.set_title("mean NFD per layer", fontsize=9)
            ax1.tick_params(axis="x", labelrotation=45, labelsize=7)
            ax2.bar(range(len(top)), d[top], color="#c0392b")
            ax2.set_xticks(range(len(top)), [names[i] for i in top], rotation=60, ha="right", fontsize=6)
            ax2.set_title(f"top {len(top)} neurons by NFD", fontsize=9)
            parts.append(img_html(fig, f"{extractor}: {ref[0].dataset.name} vs {other[0].dataset.name}"))
    sec.html = "\n".join(parts)
    return sec
