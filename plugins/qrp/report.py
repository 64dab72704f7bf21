"""QRP's section of ``bench report``: the plugin renders its own records and artefacts
through the ``bench_report_sections`` hook (the core report knows none of its keys)."""

from __future__ import annotations

import numpy as np

from bench.reporting import (
    ReportSection,
    RunData,
    esc,
    img_html,
    method_section,
    new_figure,
    table_html,
)


def qrp_section(run: RunData) -> ReportSection | None:
    made = method_section(run, "qrp", "QRP: expert breakdown",
                           "Quantized reverse probing: how well concept groups, added one at a time, predict the "
                           "K-means cluster of an image (NMI on the test split, mean ± std over clusterings).")
    if made is None:
        return None
    sec, parts, recs = made
    for rec in recs:
        rows = run.table(rec, "qrp_expert_breakdown")
        parts.append(f"<h3>{esc(run.label(rec))}</h3>")
        if not rows:
            sec.note(f"{run.label(rec)}: the record has no qrp_expert_breakdown table")
            continue
        metrics = [m for m in ("nmi", "ami", "top1", "map")
                   if all(isinstance(r.get(m), (int, float)) for r in rows)]
        fig = new_figure(min(2.0 + 1.2 * len(rows), 11), 3.2)
        ax = fig.add_subplot()
        x = np.arange(len(rows))
        w = 0.8 / max(len(metrics), 1)
        for k, m in enumerate(metrics):
            ax.bar(x + (k - (len(metrics) - 1) / 2) * w, [r[m] for r in rows], w,
                   yerr=[r.get(f"{m}_std") or 0.0 for r in rows], capsize=2, label=m)
        ax.set_xticks(x, [f"+{r.get('added', r.get('step'))}" for r in rows], rotation=30, ha="right",
                      fontsize=7)
        ax.set_ylim(0, 1.05)
        ax.legend(fontsize=7, ncol=len(metrics))
        ax.set_title("reverse probe as concept groups are added", fontsize=9)
        parts.append(img_html(fig, "expert breakdown (cumulative concept groups)"))
        parts.append("<details><summary>table</summary>" + table_html(rows) + "</details>")
    sec.html = "\n".join(parts)
    return sec
