"""ProtoSim's section of ``bench report``: the plugin renders its own records and artefacts
through the ``bench_report_sections`` hook (the core report knows none of its keys)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.errors import BenchError
from bench.reporting import (
    ReportSection,
    RunData,
    artefacts_with_notes,
    esc,
    images_or_note,
    img_html,
    method_section,
    new_figure,
)


def protosim_section(run: RunData) -> ReportSection | None:
    made = method_section(run, "protosim", "ProtoSim: dataset-specific and shared prototypes",
                           "Per dataset, the prototypes specific to each group (over the specificity threshold of one "
                           "group's share) and the most used shared ones: their top images and, where the plugin saved "
                           "its figures, the attention of the prototype over the patches.")
    if made is None:
        return None
    sec, parts, recs = made
    for rec in recs:
        art = artefacts_with_notes(sec, run, rec)
        parts.append(f"<h3>{esc(run.label(rec))}</h3>")
        groups = run.table(rec, "protosim_groups")
        if groups:
            fig = new_figure(5.0, 2.6)
            ax = fig.add_subplot()
            x = np.arange(len(groups))
            ax.bar(x - 0.2, [g.get("prototypes_used", 0) for g in groups], 0.4, label="used")
            ax.bar(x + 0.2, [g.get("specific_prototypes", 0) for g in groups], 0.4, label="specific")
            ax.set_xticks(x, [str(g.get("group")) for g in groups])
            ax.set_ylabel("prototypes")
            ax.legend(fontsize=7)
            parts.append(img_html(fig, "prototypes used by / specific to each group"))
        planted = run.table(rec, "protosim_planted")
        if planted:
            hits, seen = sum(r.get("with_concept", 0) for r in planted), sum(r.get("top_images", 0) for r in planted)
            base = rec.statistics.get("planted_base_rate")
            rate = f"; {base:.0%} of that group's images do" if base is not None and np.isfinite(base) else ""
            parts.append(f"<p>Planted concept <code>{esc(str(planted[0].get('concept')))}</code> (only in "
                         f"{esc(str(planted[0].get('group')))}): {hits}/{seen} top images of its "
                         f"{len(planted)} most specific prototypes show it{rate}.</p>")
        shown = 0
        figures = art.get("figures") or []
        if not isinstance(figures, list):
            sec.note(f"{run.label(rec)}: the artefacts' figures are not a list of files; none embedded")
            figures = []
        for fpath in figures:
            try:
                png = run.png_file(rec, fpath, "prototype figure")
            except BenchError as exc:   # outside the run, not a PNG, missing: a note, the rest still shows
                sec.note(f"{run.label(rec)}: {exc}")
                continue
            parts.append(img_html(png, f"{Path(str(fpath)).stem}: top images (upper row) and attention "
                                       "overlays (lower row)"))
            shown += 1
        if shown:
            continue
        # no figure files: draw the top images ourselves (no attention maps without the model)
        top = art.get("top_images") or {}
        specific = art.get("specific_prototypes") or {}
        shared = art.get("shared_prototypes") or []
        if not top and not specific and not shared:
            sec.note(f"{run.label(rec)}: no prototype artefacts (figures, top_images) were saved")
            continue
        sec.note(f"{run.label(rec)}: attention overlays need the saved figures; showing top images only")
        if not images_or_note(sec, run, rec, "prototype images"):
            continue
        rows = []
        for label, protos in [*((f"specific to {g}", v) for g, v in specific.items()), ("shared", shared)]:
            rows += [(f"{label}: prototype {p}", top.get(str(p), [])) for p in protos[:3]]
        img = run.montage(rec, rows)
        if img is None:
            sec.note(f"{run.label(rec)}: the prototypes have no top images")
        else:
            parts.append(img_html(img, "top images per prototype"))
    sec.html = "\n".join(parts)
    return sec
