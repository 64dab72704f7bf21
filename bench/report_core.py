"""The core sections of ``bench report`` (leaderboard, dataset samples, comparator fidelity and
null-vs-between scores), registered as a built-in plugin through the same
``bench_report_sections`` hook a third-party plugin uses (datasette's default plugins).
Method-specific sections live in their plugins."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from bench import records as R
from bench.hookspecs import hookimpl
from bench.reporting import (
    ReportSection,
    RunData,
    class_of,
    dataset_title,
    esc,
    first_by_cell,
    group_of,
    img_html,
    new_figure,
    note_failed,
    table_html,
)

#: sample images per group / class row
TOP = 8


@hookimpl(tryfirst=True)
def bench_report_sections(run: RunData) -> list[ReportSection]:
    makers = (comparison_section, leaderboard_section, datasets_section, fidelity_section, comparator_section)
    return [s for s in (make(run) for make in makers) if s is not None]


# --------------------------------------------------------------------------- leaderboard


def leaderboard_section(run: RunData) -> ReportSection | None:
    from bench import leaderboard

    if not run.cells and not run.problems:
        return None   # a bench compare directory: the comparison section says it all
    sec = ReportSection("Leaderboard", key="leaderboard")
    for p in run.problems:
        sec.note(p)
    parts = ['<p class="small">The run\'s records through <code>bench.leaderboard</code> (the same tables '
             "<code>bench leaderboard</code> writes); method statistics and tables fold out below each "
             "dataset.</p>"]
    parts += [leaderboard.to_html(board) for board in leaderboard.aggregate(run.records)]
    n_err = sum(r.status != "ok" for r in run.cells)
    if n_err:
        sec.note(f"{n_err} of {len(run.cells)} cells failed; their errors are listed under 'Failed cells'")
    sec.html = "\n".join(parts)
    return sec


# --------------------------------------------------------------------------- dataset samples


def datasets_section(run: RunData) -> ReportSection | None:
    if not run.cells:
        return None
    sec = ReportSection("Datasets", key="datasets")
    seen: dict[tuple, R.Record] = {}
    for r in run.cells:
        seen.setdefault((r.dataset.name, r.dataset.revision, r.dataset.limit), r)
    parts = []
    for rec in seen.values():
        src = run.source(rec)
        lim = f", limited to {rec.dataset.limit}" if rec.dataset.limit else ""
        parts.append(f"<h3>{esc(rec.dataset.name)}</h3><p class='small'>{rec.dataset.n} images{esc(lim)}, "
                     f"revision <code>{esc(rec.dataset.revision)}</code></p>")
        if src is None:
            sec.note(f"{rec.dataset.name}: sample images not drawn: {run.source_note(rec)}")
            continue
        rows = []
        if src.groups is not None and len(np.unique(src.groups)) > 1:
            for g in np.unique(src.groups)[:TOP]:
                idx = np.flatnonzero(src.groups == g)
                step = max(1, len(idx) // 12)
                rows.append((f"group {group_of(src, int(idx[0]))} ({len(idx)})", idx[::step].tolist()))
        if src.labels is not None:
            for lab in np.unique(src.labels)[:12]:
                idx = np.flatnonzero(src.labels == lab)
                rows.append((f"class {class_of(src, int(idx[0]))} ({len(idx)})", idx[:12].tolist()))
        if not rows:
            rows = [("images", list(range(min(src.n, 12))))]
        img = run.montage(rec, rows)
        if img is not None:
            parts.append(img_html(img, f"{rec.dataset.name}: sample images per group / class"))
    sec.html = "\n".join(parts)
    return sec


# --------------------------------------------------------------------------- comparators


def fidelity_section(run: RunData) -> ReportSection | None:
    """Every comparator's score against the true mixing proportion, one plot per ladder dataset."""
    recs = [r for r in run.cells if "comparator" in r.method.roles]
    ladders = [r for r in recs if r.tables.get("fidelity_ladder")]
    if not ladders:
        shift = [r for r in recs if r.dataset.name == "synth-shift"]
        if not shift:
            return None
        sec = ReportSection("Fidelity curves: score vs true shift", key="fidelity")
        note_failed(sec, shift)
        sec.note("no comparator record on synth-shift holds a fidelity ladder")
        return sec
    sec = ReportSection("Fidelity curves: score vs true shift", key="fidelity")
    note_failed(sec, [r for r in recs if r.dataset.name == "synth-shift" or r.tables.get("fidelity_ladder")])
    by_ds: dict[tuple, dict[tuple, list[R.Record]]] = defaultdict(lambda: defaultdict(list))
    for r in ladders:
        by_ds[(r.dataset.name, r.dataset.revision, r.dataset.limit)][(r.method.name, r.features.extractor,
                                                                      r.config_hash)].append(r)
    parts = ['<p class="small">Score of each comparator between the reference and a mix with the true '
             "proportion p of shifted images. Scores have different units, so each curve is scaled to its "
             "own ends, (s(p) − s(0)) / (s(1) − s(0)): a faithful comparator rises monotonically from 0 to 1 "
             "whatever its direction. Raw scores in the table; ρ = the harness' fidelity_spearman.</p>"]
    for (dname, _, lim), cells in by_ds.items():
        fig = new_figure(6.4, 3.8)
        ax = fig.add_subplot()
        raw_rows: dict[float, dict[str, Any]] = {}
        for (method, extractor, _), rs in sorted(cells.items()):
            ladder = defaultdict(list)
            for r in rs:
                for step in r.tables["fidelity_ladder"]:
                    if step.get("score") is not None:
                        ladder[float(step["proportion"])].append(float(step["score"]))
            if not ladder:
                sec.note(f"{method} / {extractor} on {dname}: the ladder holds no finite score")
                continue
            props = np.array(sorted(ladder))
            scores = np.array([np.mean(ladder[p]) for p in props])
            span = scores[-1] - scores[0]
            if not np.isfinite(span) or abs(span) < 1e-12:
                span = (scores.max() - scores.min()) or 1.0
            rho = [r.metrics["fidelity_spearman"].value for r in rs if "fidelity_spearman" in r.metrics]
            rho = [v for v in rho if v is not None]
            rho_txt = f", ρ={np.mean(rho):.2f}" if rho else ""
            name = f"{method} / {extractor}"
            ax.plot(props, (scores - scores[0]) / span, marker="o", ms=3, label=f"{name}{rho_txt}")
            for p, s in zip(props, scores):
                raw_rows.setdefault(float(p), {"proportion": float(p)})[name] = float(s)
        ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1, label="ideal (linear)")
        ax.set_xlabel("true proportion of shifted images")
        ax.set_ylabel("score, scaled to its ends")
        ax.set_title(dataset_title(dname, lim))
        ax.legend(fontsize=7, loc="upper left")
        ax.grid(alpha=0.3)
        parts.append(img_html(fig, f"{dname}: fidelity of every comparator (score vs true proportion)"))
        parts.append("<details><summary>raw scores</summary>"
                     + table_html([raw_rows[p] for p in sorted(raw_rows)]) + "</details>")
    sec.html = "\n".join(parts)
    return sec


def comparator_section(run: RunData) -> ReportSection | None:
    """Null vs between scores of comparators on datasets without a ladder."""
    recs = [r for r in run.ok_records if "comparator" in r.method.roles and r.kind == "cell"
            and not r.tables.get("fidelity_ladder") and "score_null" in r.metrics]
    if not recs:
        return None
    sec = ReportSection("Comparator scores: null vs between", key="comparators")
    by_ds: dict[tuple, list[R.Record]] = defaultdict(list)
    for r in first_by_cell(recs):
        by_ds[(r.dataset.name, r.dataset.limit)].append(r)
    parts = ['<p class="small">Each comparator on two random halves of one dataset (null: same distribution) '
             "and on its two groups / class halves (between). A useful score separates the bars.</p>"]
    for (dname, lim), rs in by_ds.items():
        fig = new_figure(min(2.0 + 1.6 * len(rs), 12), 2.8)
        axes = fig.subplots(1, len(rs), squeeze=False)[0]
        for ax, r in zip(axes, rs):
            vals = [r.metrics[k].value if k in r.metrics else None for k in ("score_null", "score_between")]
            ax.bar(["null", "between"], [v if v is not None else 0.0 for v in vals],
                   color=["#9aa5b1", "#2457a6"])
            ax.set_title(f"{r.method.name} / {r.features.extractor}", fontsize=8)
            ax.tick_params(labelsize=7)
        parts.append(img_html(fig, dataset_title(dname, lim) + ": comparator scores"))
    sec.html = "\n".join(parts)
    return sec


# --------------------------------------------------------------------------- bench compare


def _fmt(value: Any) -> str:
    return "" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def comparison_section(run: RunData) -> ReportSection | None:
    """``bench compare A B``: per pair, every comparator's score, null, p-value and CI, then what
    each found different (its ``findings``: tables, images of A and B, its own figures)."""
    recs = run.comparisons
    if not recs:
        return None
    sec = ReportSection("Comparison: how A and B differ", key="comparison")
    pairs: dict[tuple, list[R.Record]] = defaultdict(list)
    for r in sorted(recs, key=lambda r: (r.method.name, r.seed)):
        pairs[(r.dataset.name, r.dataset.revision, r.dataset_b.name, r.dataset_b.revision)].append(r)
    parts = ['<p class="small">p: the share of null draws (A ∪ B reassigned at random, or for comparators that '
             "train, split halves of each side) at least as different as A vs B, counting A vs B itself; a small "
             "p says the difference is larger than sampling alone gives. CI: 2.5–97.5 % of the score over "
             "bootstrap resamples.</p>"]
    for (na, _, nb, _), rs in pairs.items():
        first = rs[0]
        parts.append(f"<h3>A = {esc(na)} (n={first.dataset.n}) vs B = {esc(nb)} (n={first.dataset_b.n})</h3>")
        for side, label in (("a", "A"), ("b", "B")):
            img = run.montage(first, [(f"{label}: first images", list(range(12)))], side=side)
            if img is not None:
                parts.append(img_html(img, f"{label} = {na if side == 'a' else nb}"))
            else:
                sec.note(f"{label} images not drawn: {run.source_note(first, side)}")
        rows = []
        for r in rs:
            m = {k: v.value for k, v in r.metrics.items()}
            null = (r.tables.get("null") or [{}])[0]
            rows.append({"method": r.method.name, "score": m.get("score"), "p": m.get("p_value"),
                         "95% CI": f"[{_fmt(m.get('ci_low'))}, {_fmt(m.get('ci_high'))}]" if "ci_low" in m else "",
                         "null": null.get("kind", ""), "draws": null.get("draws"),
                         "status": r.status if r.status == "ok" else f"error: {r.error}"})
        parts.append(table_html(rows))
        for r in rs:
            if r.status != "ok":
                sec.note(f"{r.method.name} failed: {r.error}")
                continue
            parts.append(f"<h4>{esc(r.method.name)}: what differs</h4>")
            art = run.artefacts(r)
            for p in art.problems:
                sec.note(f"{r.method.name}: {p}")
            for k, finding in enumerate(art.get("findings") or []):
                side = {"a": " (A)", "b": " (B)"}.get(finding.get("side") or "", "")
                parts.append(f"<h5>{esc(finding.get('title', ''))}{esc(side)}</h5>")
                parts.append(table_html(finding.get("rows") or [], max_rows=12))
                by_side: dict[str, list] = defaultdict(list)
                for label, img_side, idx in finding.get("images") or []:
                    by_side[img_side].append((label, idx))
                for img_side, rows_ in by_side.items():
                    img = run.montage(r, rows_, side=img_side)
                    if img is not None:
                        parts.append(img_html(img, f"{finding.get('title', '')}: images of "
                                                   f"{'A' if img_side == 'a' else 'B'}"))
                    else:
                        sec.note(f"{r.method.name}: images of {img_side.upper()} not drawn: "
                                 f"{run.source_note(r, img_side) or 'no valid index'}")
                for name in finding.get("figures") or []:
                    key = f"finding{k}_{name}"
                    if key in art:
                        parts.append(img_html(np.asarray(art[key], dtype=np.uint8), f"{finding.get('title')}: {name}"))
                if isinstance(finding.get("points"), dict):
                    parts.append(_point_map(sec, run, r, art, k, finding))
            per_class = r.tables.get("per_class")
            if per_class:
                parts.append("<details><summary>per class</summary>" + table_html(per_class, max_rows=200)
                             + "</details>")
    sec.html = "\n".join(parts)
    return sec


def _point_map(sec: ReportSection, run: RunData, rec: R.Record, art: dict[str, Any], k: int,
               finding: dict[str, Any]) -> str:
    """A finding's map of A ∪ B as inline SVG, each point's thumbnail on hover read from its side's images
    (none, and one note, for a side whose images are not available here)."""
    from bench.atlas_map import from_artefacts, map_html, thumbnail_uri

    try:
        points = from_artefacts(art, f"finding{k}_points", finding["points"])
    except (ValueError, TypeError, KeyError) as exc:
        sec.note(f"{rec.method.name}: the map is not drawn: {exc}")
        return ""
    sources = {}
    for s, side in enumerate("ab"):
        sources[s] = run.source(rec, side) if (points.side == s).any() else None
        if sources[s] is None and (points.side == s).any():
            sec.note(f"{rec.method.name}: the map shows no thumbnails of {side.upper()} on hover: "
                     f"{run.source_note(rec, side) or 'its images are not available'}")

    def thumbnail(s: int, i: int) -> str | None:
        src = sources.get(s)
        return thumbnail_uri(src.image(i)) if src is not None and 0 <= i < src.n else None

    return map_html(points, thumbnail, f"{finding.get('title', '')}:")
