"""The first-party sections of ``bench report``, as a ``bench_report_sections`` hook.

Each section reads only the run directory (records, their tables and saved artefacts) and
the dataset images behind them, and appears only when the run holds its method. Whatever a
section cannot draw (artefact not saved, images unavailable, too few extractors for a
matrix) becomes a visible note, so partial runs still render what exists.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from bench import records as R
from bench.hookspecs import hookimpl
from bench.report import ReportSection, RunData, esc, img_html, markdown_html, new_figure, table_html

#: how many clusters / groups / prototypes a montage shows
TOP = 8


@hookimpl
def bench_report_sections(run: RunData) -> list[ReportSection]:
    makers = (leaderboard_section, datasets_section, fidelity_section, comparator_section, protosim_section,
              multicut_section, wavelet_section, dna_section, qrp_section)
    return [s for s in (make(run) for make in makers) if s is not None]


# --------------------------------------------------------------------------- shared helpers


def _first_by_cell(recs: list[R.Record]) -> list[R.Record]:
    """One record per (dataset, extractor, config): the lowest seed (artefacts are per seed)."""
    best: dict[tuple, R.Record] = {}
    for r in sorted(recs, key=lambda r: r.seed):
        best.setdefault((r.dataset.name, r.dataset.revision, r.dataset.limit, r.features.extractor,
                         r.config_hash), r)
    return list(best.values())


def _failed(sec: ReportSection, recs: list[R.Record]) -> None:
    for r in recs:
        if r.status != "ok":
            sec.note(f"{r.method.name} on {r.dataset.name} / {r.features.extractor} seed {r.seed} failed: "
                     f"{r.error}")


def _artefact_notes(sec: ReportSection, run: RunData, rec: R.Record) -> dict[str, Any]:
    art = run.artefacts(rec)
    for p in art.problems:
        sec.note(f"{run.label(rec)}: {p}")
    return art


def _method_section(run: RunData, method: str, title: str, intro: str
                    ) -> tuple[ReportSection, list[str], list[R.Record]] | None:
    """A method's section: None when the run has no record of it; else the section (failed cells
    noted), its first paragraph, and one ok summariser record per cell to draw."""
    every = run.by_method(method)
    if not every:
        return None
    sec = ReportSection(title, key=method)
    _failed(sec, every)
    ok = [r for r in run.by_method(method, ok=True) if "summariser" in r.method.roles]
    return sec, [f'<p class="small">{intro}</p>'], _first_by_cell(ok)


def _dataset_title(dname: str, limit: int | None) -> str:
    return f"{dname}" + (f" (limit {limit})" if limit else "")


def _images_or_note(sec: ReportSection, run: RunData, rec: R.Record, what: str) -> bool:
    if run.source(rec) is not None:
        return True
    sec.note(f"{run.label(rec)}: {what} not drawn: {run.source_note(rec)}")
    return False


def _class_of(src, i: int) -> str:
    if src is None or src.labels is None:
        return ""
    lab = int(src.labels[i])
    if lab < 0:
        return "unlabelled"
    names = src.class_names
    return names[lab] if names and lab < len(names) else str(lab)


def _group_of(src, i: int) -> str:
    if src is None or src.groups is None:
        return ""
    g = int(src.groups[i])
    names = src.group_names
    return names[g] if names and 0 <= g < len(names) else str(g)


def _majority(src, idx: list[int]) -> str:
    if src is None or src.labels is None or not idx:
        return ""
    names = [_class_of(src, i) for i in idx if 0 <= i < src.n]
    if not names:
        return ""
    vals, counts = np.unique(names, return_counts=True)
    return f"majority {vals[np.argmax(counts)]} ({counts.max()}/{len(names)})"


# --------------------------------------------------------------------------- leaderboard


def leaderboard_section(run: RunData) -> ReportSection:
    from bench import leaderboard

    sec = ReportSection("Leaderboard", key="leaderboard")
    for p in run.problems:
        sec.note(p)
    files = leaderboard.build(run.records)
    parts = ['<p class="small">The run\'s records through <code>bench.leaderboard</code> (the same tables '
             "<code>bench leaderboard</code> writes); method statistics and tables fold out below each "
             "dataset.</p>"]
    for name in sorted(files):
        if name.endswith(".md") and name != "README.md":
            parts.append(markdown_html(files[name]))
    n_err = sum(r.status != "ok" for r in run.records)
    if n_err:
        sec.note(f"{n_err} of {len(run.records)} cells failed; their errors are listed under 'Failed cells'")
    sec.html = "\n".join(parts)
    return sec


# --------------------------------------------------------------------------- dataset samples


def datasets_section(run: RunData) -> ReportSection:
    sec = ReportSection("Datasets", key="datasets")
    seen: dict[tuple, R.Record] = {}
    for r in run.records:
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
                rows.append((f"group {_group_of(src, int(idx[0]))} ({len(idx)})", idx[::step].tolist()))
        if src.labels is not None:
            for lab in np.unique(src.labels)[:12]:
                idx = np.flatnonzero(src.labels == lab)
                rows.append((f"class {_class_of(src, int(idx[0]))} ({len(idx)})", idx[:12].tolist()))
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
    recs = [r for r in run.records if "comparator" in r.method.roles]
    ladders = [r for r in recs if r.tables.get("fidelity_ladder")]
    if not ladders:
        shift = [r for r in recs if r.dataset.name == "synth-shift"]
        if not shift:
            return None
        sec = ReportSection("Fidelity curves: score vs true shift", key="fidelity")
        _failed(sec, shift)
        sec.note("no comparator record on synth-shift holds a fidelity ladder")
        return sec
    sec = ReportSection("Fidelity curves: score vs true shift", key="fidelity")
    _failed(sec, [r for r in recs if r.dataset.name == "synth-shift" or r.tables.get("fidelity_ladder")])
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
        ax.set_title(_dataset_title(dname, lim))
        ax.legend(fontsize=7, loc="upper left")
        ax.grid(alpha=0.3)
        parts.append(img_html(fig, f"{dname}: fidelity of every comparator (score vs true proportion)"))
        parts.append("<details><summary>raw scores</summary>"
                     + table_html([raw_rows[p] for p in sorted(raw_rows)]) + "</details>")
    sec.html = "\n".join(parts)
    return sec


def comparator_section(run: RunData) -> ReportSection | None:
    """Null vs between scores of comparators on datasets without a ladder."""
    recs = [r for r in run.ok_records if "comparator" in r.method.roles
            and not r.tables.get("fidelity_ladder") and "score_null" in r.metrics]
    if not recs:
        return None
    sec = ReportSection("Comparator scores: null vs between", key="comparators")
    by_ds: dict[tuple, list[R.Record]] = defaultdict(list)
    for r in _first_by_cell(recs):
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
        parts.append(img_html(fig, _dataset_title(dname, lim) + ": comparator scores"))
    sec.html = "\n".join(parts)
    return sec


# --------------------------------------------------------------------------- protosim


def protosim_section(run: RunData) -> ReportSection | None:
    made = _method_section(run, "protosim", "ProtoSim: dataset-specific and shared prototypes",
                           "Per dataset, the prototypes specific to each group (over the specificity threshold of one "
                           "group's share) and the most used shared ones: their top images and, where the plugin saved "
                           "its figures, the attention of the prototype over the patches.")
    if made is None:
        return None
    sec, parts, recs = made
    for rec in recs:
        art = _artefact_notes(sec, run, rec)
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
        for fpath in art.get("figures") or []:
            p = Path(fpath)
            p = p if p.is_absolute() else run.path(rec).parent / p
            if p.exists():
                parts.append(img_html(p.read_bytes(), f"{p.stem}: top images (upper row) and attention "
                                                      "overlays (lower row)"))
                shown += 1
            else:
                sec.note(f"{run.label(rec)}: prototype figure {fpath} is missing (it lives outside the run "
                         "directory; set protosim.figures_dir inside --out to keep it)")
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
        if not _images_or_note(sec, run, rec, "prototype images"):
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


# --------------------------------------------------------------------------- multicut


def _codes(art: dict[str, Any]) -> np.ndarray | None:
    for key in ("codes", "cluster_ids", "multicut_codes"):
        if key in art:
            return np.asarray(art[key]).reshape(-1)
    return None


def variation_of_information(a: np.ndarray, b: np.ndarray) -> float:
    """VI = H(a) + H(b) − 2 I(a; b) in nats (Meilă 2007), on raw cluster ids."""
    from sklearn.metrics import mutual_info_score

    def h(x):
        _, c = np.unique(x, return_counts=True)
        p = c / c.sum()
        return float(-(p * np.log(p)).sum())

    return max(0.0, h(a) + h(b) - 2.0 * float(mutual_info_score(a, b)))


def multicut_section(run: RunData) -> ReportSection | None:
    made = _method_section(run, "multicut", "Multicut: largest clusters and VI between extractors",
                           "Minimum-cost multicut decides the number of clusters itself. Montages show the largest "
                           "clusters (rows), labelled with their majority class; the heat map is the variation of "
                           "information (nats) between the clusterings of one dataset by different extractors.")
    if made is None:
        return None
    sec, parts, recs = made
    codes_by_ds: dict[tuple, dict[str, np.ndarray]] = defaultdict(dict)
    for rec in recs:
        art = _artefact_notes(sec, run, rec)
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
        if not _images_or_note(sec, run, rec, "cluster montages"):
            continue
        src = run.source(rec)
        ids, counts = np.unique(codes, return_counts=True)
        rows = []
        for c in ids[np.argsort(-counts, kind="stable")][:TOP]:
            idx = np.flatnonzero(codes == c).tolist()
            rows.append((f"cluster {c}: {len(idx)} images, {_majority(src, idx)}", idx))
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
        parts.append(img_html(fig, _dataset_title(dname, lim)
                              + ": variation of information between extractors' clusterings"))
    sec.html = "\n".join(parts)
    return sec


# --------------------------------------------------------------------------- wavelet


def wavelet_section(run: RunData) -> ReportSection | None:
    made = _method_section(run, "wavelet", "Wavelet: redundant and influential groups",
                           "Algorithm 1 clusters images in wavelet space. A <b>redundant</b> group is a cluster of "
                           "images with one label (the first is kept, the rest could be dropped); an "
                           "<b>influential</b> group mixes labels (images near a decision boundary).")
    if made is None:
        return None
    sec, parts, recs = made
    for rec in recs:
        art = _artefact_notes(sec, run, rec)
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
            if not _images_or_note(sec, run, rec, f"{kind} groups"):
                parts.append(table_html(run.table(rec, f"wavelet_{kind}_groups"), max_rows=TOP))
                continue
            src = run.source(rec)
            order = sorted(range(len(groups)), key=lambda g: -len(groups[g]))[:TOP]
            rows = []
            for g in order:
                label = (_class_of(src, groups[g][0]) if kind == "redundant"
                         else ", ".join(sorted({_class_of(src, i) for i in groups[g] if 0 <= i < src.n})))
                rows.append((f"group {g}: {len(groups[g])} images ({label})", groups[g]))
            cap = ("largest redundant groups (first image kept)" if kind == "redundant"
                   else "largest influential groups")
            img = run.montage(rec, rows)
            if img is not None:
                parts.append(img_html(img, cap))
    sec.html = "\n".join(parts)
    return sec


# --------------------------------------------------------------------------- dna


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
    made = _method_section(run, "dna", "DNA: per-layer and top-neuron differences",
                           "Distributions of neuron activations. Per dataset: per-layer descriptors of the histograms. "
                           "Between datasets seen through one extractor: the neuron Fréchet distance of the per-neuron "
                           "Gaussians each DNA stored, averaged per layer and for the most different neurons.")
    if made is None:
        return None
    sec, parts, recs = made
    gauss: dict[str, list[tuple[R.Record, list, np.ndarray, np.ndarray]]] = defaultdict(list)
    for rec in recs:
        art = _artefact_notes(sec, run, rec)
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


# --------------------------------------------------------------------------- qrp


def qrp_section(run: RunData) -> ReportSection | None:
    made = _method_section(run, "qrp", "QRP: expert breakdown",
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
