"""wavelet's section of ``bench report``: the plugin renders its own records and artefacts
through the ``bench_report_sections`` hook (the core report knows none of its keys)."""

from __future__ import annotations

from bench.reporting import (
    TOP,
    ReportSection,
    RunData,
    artefacts_with_notes,
    class_of,
    esc,
    images_or_note,
    img_html,
    method_section,
    table_html,
)


def wavelet_section(run: RunData) -> ReportSection | None:
    made = method_section(run, "wavelet", "Wavelet: redundant and influential groups",
                           "Algorithm 1 clusters images in wavelet space. A <b>redundant</b> group is a cluster of "
                           "images with one label (the first is kept, the rest could be dropped); an "
                           "<b>influential</b> group mixes labels (images near a decision boundary).")
    if made is None:
        return None
    sec, parts, recs = made
    for rec in recs:
        art = artefacts_with_notes(sec, run, rec)
        parts.append(f"<h3>{esc(run.label(rec))}</h3>")
        for kind in ("redundant", "influential"):
            groups = art.get(f"{kind}_groups")
            if groups is None:
                sec.note(f"{run.label(rec)}: {kind} groups were not saved (artefact '{kind}_groups')")
                continue
            groups = [list(map(int, g)) for g in groups]
            parts.append(f"<h4>{kind} groups: {len(groups)}</h4>")
            if not groups:
                parts.append(f'<p class="small">no {kind} groups in this run.</p>')
                continue
            if not images_or_note(sec, run, rec, f"{kind} groups"):
                parts.append(table_html(run.table(rec, f"wavelet_{kind}_groups"), max_rows=TOP))
                continue
            src = run.source(rec)
            order = sorted(range(len(groups)), key=lambda g: -len(groups[g]))[:TOP]
            rows = []
            for g in order:
                label = (class_of(src, groups[g][0]) if kind == "redundant"
                         else ", ".join(sorted({class_of(src, i) for i in groups[g] if 0 <= i < src.n})))
                rows.append((f"group {g}: {len(groups[g])} images ({label})", groups[g]))
            cap = ("largest redundant groups (first image kept)" if kind == "redundant"
                   else "largest influential groups")
            img = run.montage(rec, rows)
            if img is not None:
                parts.append(img_html(img, cap))
    sec.html = "\n".join(parts)
    return sec
