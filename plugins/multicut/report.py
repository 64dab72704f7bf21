"""multicut's section of ``bench report``: the plugin renders its own records and artefacts
through the ``bench_report_sections`` hook (the core report knows none of its keys)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from bench.metrics import variation_of_information
from bench.reporting import (
    TOP,
    ReportSection,
    RunData,
    artefacts_with_notes,
    dataset_title,
    esc,
    images_or_note,
    img_html,
    majority,
    method_section,
    new_figure,
    table_html,
)


def _codes(art: dict[str, Any]) -> np.ndarray | None:
    for key in ("codes", "cluster_ids", "multicut_codes"):
        if key in art:
            return np.asarray(art[key]).reshape(-1)
    return None


def multicut_section(run: RunData) -> ReportSection | None:
    made = method_section(run, "multicut", "Multicut: largest clusters and VI between extractors",
                           "Minimum-cost multicut decides the number of clusters itself. Montages show the largest "
                           "clusters (rows), labelled with their majority class; the heat map is the variation of "
                           "information (nats) between the clusterings of one dataset by different extractors.")
    if made is None:
        return None
    sec, parts, recs = made
    codes_by_ds: dict[tuple, dict[str, np.ndarray]] = defaultdict(dict)
    for rec in recs:
        art = artefacts_with_notes(sec, run, rec)
        parts.append(f"<h3>{esc(run.label(rec))}</h3>")
        parts.append(table_html(run.table(rec, "multicut_cluster_statistics")))
        sizes = art.get("cluster_sizes")
        if sizes is not None and len(np.asarray(sizes)):
            sizes = np.asarray(sizes)
            fig = new_figure(5.0, 2.4)
            ax = fig.add_subplot()
            ax.bar(np.arange(1, min(len(sizes), 40) + 1), sizes[:40], color="#2457a6")
            ax.set_xlabel("cluster rank")
            ax.set_ylabel("images")
            ax.set_title(f"{len(sizes)} clusters", fontsize=9)
            parts.append(img_html(fig, "cluster sizes, largest first"))
        codes = _codes(art)
        if codes is None:
            sec.note(f"{run.label(rec)}: cluster ids were not saved (artefact 'codes'), so no montages "
                     "or VI; showing the largest-cluster table")
            parts.append(table_html(run.table(rec, "multicut_largest_clusters")))
            continue
        if len(codes) != rec.dataset.n:
            sec.note(f"{run.label(rec)}: {len(codes)} cluster ids for {rec.dataset.n} images; skipped")
            continue
        ds_key = (rec.dataset.name, rec.dataset.revision, rec.dataset.limit)
        codes_by_ds[ds_key][rec.features.extractor] = codes
        if not images_or_note(sec, run, rec, "cluster montages"):
            continue
        src = run.source(rec)
        ids, counts = np.unique(codes, return_counts=True)
        rows = []
        for c in ids[np.argsort(-counts, kind="stable")][:TOP]:
            idx = np.flatnonzero(codes == c).tolist()
            rows.append((f"cluster {c}: {len(idx)} images, {majority(src, idx)}", idx))
        img = run.montage(rec, rows)
        if img is not None:
            parts.append(img_html(img, "largest clusters (first 12 members each)"))
    for (dname, _, lim), by_ext in codes_by_ds.items():
        if len(by_ext) < 2:
            sec.note(f"{dname}: the VI matrix needs multicut records of one dataset through at least two "
                     f"extractors; this run has {', '.join(by_ext)}")
            continue
        names = sorted(by_ext)
        vi = np.array([[variation_of_information(by_ext[a], by_ext[b]) for b in names] for a in names])
        fig = new_figure(1.6 + 0.8 * len(names), 1.2 + 0.7 * len(names))
        ax = fig.add_subplot()
        im = ax.imshow(vi, cmap="viridis")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        for i in range(len(names)):
            for j in range(len(names)):
                ax.text(j, i, f"{vi[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if vi[i, j] < vi.max() / 2 else "black")
        fig.colorbar(im, ax=ax, label="VI (nats)")
        parts.append(img_html(fig, dataset_title(dname, lim)
                              + ": variation of information between extractors' clusterings"))
    sec.html = "\n".join(parts)
    return sec
