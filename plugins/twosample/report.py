"""The two-sample comparators' section of ``bench report``: for each ``bench compare`` pair, KID's
terms, PRDC's four numbers and how many images each side has that the other lacks, and C2ST's
out-of-fold P(B) by side. (The core's comparison section already draws every finding's images; this
one puts the three tests' own numbers side by side.)"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from bench import records as R
from bench.reporting import ReportSection, RunData, esc, img_html, new_figure, table_html

METHODS = ("kid", "prdc", "c2st")
PRDC = ("precision", "recall", "density", "coverage")


def _histogram(findings: list[dict]) -> list[dict] | None:
    for f in findings:
        if str(f.get("title", "")).startswith("out-of-fold P(B) by side"):
            return f.get("rows") or None
    return None


def twosample_section(run: RunData) -> ReportSection | None:
    recs = [r for r in run.comparisons if r.method.name in METHODS]
    if not recs:
        return None
    sec = ReportSection("Two-sample tests: KID, PRDC, C2ST", key="twosample")
    parts = ['<p class="small">KID: unbiased MMD² with the cubic kernel (or RBF), 0 in expectation when A and B '
             "do not differ. PRDC: B against A as reference; coverage is A's share with an image of B inside its "
             "k-NN ball (score 1 − coverage). C2ST: a logistic regression telling B from A, each image scored by "
             "the model it was held out of; score = mean logit of B − mean logit of A (an estimate of the "
             "symmetric KL divergence, in nats) or, with statistic=auc, AUC − 0.5; every null draw refits it.</p>"]
    pairs: dict[tuple, list[R.Record]] = defaultdict(list)
    for r in sorted(recs, key=lambda r: (r.method.name, r.seed)):
        pairs[(r.dataset.name, r.dataset_b.name if r.dataset_b else "")].append(r)
    for (na, nb), rs in pairs.items():
        parts.append(f"<h3>A = {esc(na)} vs B = {esc(nb)}</h3>")
        rows = []
        for r in rs:
            if r.status != "ok":
                sec.note(f"{r.method.name} ({na} vs {nb}) failed: {r.error}")
                continue
            m = {k: v.value for k, v in r.metrics.items()}
            row = {"method": r.method.name, "score": m.get("score"), "p": m.get("p_value"),
                   "p adjusted": m.get("p_adjusted")}
            s = r.statistics
            if r.method.name == "kid":
                row.update({"MMD²": s.get("mmd2"), "mean k(A,A)": s.get("mean_k_aa"),
                            "mean k(B,B)": s.get("mean_k_bb"), "mean k(A,B)": s.get("mean_k_ab")})
            elif r.method.name == "prdc":
                row.update({k: s.get(k) for k in PRDC})
                row["A uncovered"] = s.get("n_uncovered_a")
                row["B outside A"] = s.get("n_outside_b")
            else:
                row.update({"logit difference": s.get("logit_difference"), "AUC": s.get("auc"),
                            "accuracy": s.get("accuracy")})
            rows.append(row)
        parts.append(table_html(rows))
        for r in rs:
            if r.status != "ok":
                continue
            if r.method.name == "prdc" and all(k in r.statistics for k in PRDC):
                fig = new_figure(4.0, 2.4)
                ax = fig.add_subplot()
                ax.bar(PRDC, [r.statistics[k] for k in PRDC], color="#2457a6")
                ax.axhline(1.0, color="#9aa5b1", linewidth=0.8)
                ax.set_title(f"PRDC of B against A (k = {r.statistics.get('k', 5):g})", fontsize=9)
                parts.append(img_html(fig, f"{na} vs {nb}: precision, recall, density, coverage"))
            if r.method.name == "c2st":
                hist = _histogram(run.artefacts(r).get("findings") or [])
                if not hist:
                    sec.note(f"c2st ({na} vs {nb}): the probability histogram was not saved")
                    continue
                centres = np.array([(h["from"] + h["to"]) / 2 for h in hist])
                width = float(hist[0]["to"] - hist[0]["from"])
                fig = new_figure(5.0, 2.4)
                ax = fig.add_subplot()
                ax.bar(centres, [h["a"] for h in hist], width=width, alpha=0.6, label="A", color="#2457a6")
                ax.bar(centres, [h["b"] for h in hist], width=width, alpha=0.6, label="B", color="#c0392b")
                ax.set_xlabel("out-of-fold P(B)")
                ax.set_ylabel("images")
                ax.legend(fontsize=8)
                parts.append(img_html(fig, f"{na} vs {nb}: the classifier's out-of-fold P(B), by side"))
    sec.html = "\n".join(parts)
    return sec
