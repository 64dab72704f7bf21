"""``bench report RUN_DIR``: one self-contained HTML page of what a run found.

The page is built only from what the run directory holds (records and artefacts, read through
:mod:`bench.runstore`) plus the dataset images behind them, so it can be regenerated at any time
and opened from disk: images are PNG data URIs, no script, no stylesheet or font from elsewhere.
Every section comes from the ``bench_report_sections`` hook, called through pluggy once per
plugin so one that raises becomes a visible one-line note: the core's own sections
(:mod:`bench.report_core`) are a built-in plugin, each method plugin renders its own. The
contract types (``ReportSection``, ``RunData`` …) are in :mod:`bench.reporting`.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from bench.errors import BenchError
from bench.reporting import ReportFigure, ReportSection, RunData, esc, img_html
from bench.runstore import write_atomic

if TYPE_CHECKING:  # pragma: no cover
    from bench.plugins import Registries

DEFAULT_NAME = "report.html"


def _slug(text: str) -> str:
    return re.sub(r"[^0-9a-z]+", "-", text.lower()).strip("-") or "section"


def collect_sections(run: RunData, regs: Registries) -> list[ReportSection]:
    """Every plugin's ``bench_report_sections``, in hook order (the core's first), each isolated."""
    from bench.plugins import call_each

    sections: list[ReportSection] = []
    for plugin_name, result, exc in call_each(regs.manager, "bench_report_sections", run=run):
        if exc is not None:
            msg = f"{type(exc).__name__}: {exc}".splitlines()[0]
            sections.append(ReportSection(f"{plugin_name} (section failed)",
                                          notes=[f"the plugin's bench_report_sections raised {msg}"]))
            continue
        if result is None:
            continue
        for sec in result if isinstance(result, (list, tuple)) else [result]:
            if not isinstance(sec, ReportSection):
                sections.append(ReportSection(f"{plugin_name} (bad section)", notes=[
                    f"bench_report_sections returned a {type(sec).__name__}, "
                    "not a bench.reporting.ReportSection"]))
            else:
                sections.append(sec)
    seen: set[str] = set()
    for sec in sections:
        key = _slug(sec.key or sec.title)
        base, n = key, 2
        while key in seen:
            key, n = f"{base}-{n}", n + 1
        seen.add(key)
        sec.key = key
    return sections


STYLE = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;color:#1d232b;background:#f6f7f9}
header{background:#1f2a37;color:#fff;padding:18px 28px}header h1{margin:0 0 4px;font-size:22px}
header p{margin:2px 0;color:#c9d3de}header code{background:#33465a;color:#fff}
nav{padding:10px 28px;background:#fff;border-bottom:1px solid #dde2e8}
nav a{margin-right:14px;color:#2457a6;text-decoration:none;white-space:nowrap}
main{padding:8px 28px 40px;max-width:1400px}
section{background:#fff;border:1px solid #dde2e8;border-radius:6px;padding:12px 18px;margin:16px 0}
h2{margin:4px 0 10px;font-size:19px}h3{font-size:16px;margin:16px 0 6px}h4{margin:12px 0 4px}
table{border-collapse:collapse;margin:6px 0 10px;font-size:12.5px;display:block;overflow-x:auto;
max-width:100%}
th,td{border:1px solid #dde2e8;padding:3px 7px;text-align:left;vertical-align:top}th{background:#eef1f5}
figure{display:inline-block;margin:6px 14px 10px 0;vertical-align:top}
figure img{max-width:100%;border:1px solid #e4e8ee}figcaption{font-size:12px;color:#55606c;max-width:640px}
.note{background:#fff6e0;border-left:4px solid #e0a100;padding:5px 10px;margin:6px 0}
.small{font-size:12px;color:#55606c}details{margin:6px 0}summary{cursor:pointer;color:#2457a6}
code{background:#eef1f5;padding:0 3px;border-radius:3px;font-size:12px}
"""


def render_html(run: RunData, sections: list[ReportSection]) -> str:
    """The whole page: header, table of contents, sections (notes, HTML, figures)."""
    from bench import __version__

    datasets = sorted({d.name for r in run.records for d in (r.dataset, r.dataset_b) if d is not None})
    methods = sorted({r.method.name for r in run.records})
    extractors = sorted({r.features.extractor for r in run.records})
    n_err = sum(r.status != "ok" for r in run.records)
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>bench report: {esc(run.run_dir.name or run.run_dir)}</title>",
             f"<style>{STYLE}</style></head><body>",
             f"<header><h1>bench report</h1><p>run directory <code>{esc(run.run_dir)}</code> · "
             f"{len(run.records)} records ({n_err} failed) · datasets {esc(', '.join(datasets))} · methods "
             f"{esc(', '.join(methods))} · extractors {esc(', '.join(extractors))}</p>"
             f"<p>bench {esc(__version__)} · generated "
             f"{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}</p></header>",
             "<nav>" + "".join(f'<a href="#{esc(s.key)}">{esc(s.title)}</a>' for s in sections) + "</nav>",
             "<main>"]
    for sec in sections:
        parts.append(f'<section id="{esc(sec.key)}" class="report-section" data-section="{esc(sec.key)}">')
        parts.append(f"<h2>{esc(sec.title)}</h2>")
        parts += [f'<p class="note missing">{esc(n)}</p>' for n in sec.notes]
        parts.append(sec.html)
        for fig in sec.figures:
            try:
                if isinstance(fig, ReportFigure):
                    parts.append(img_html(fig.image, fig.caption))
                else:
                    parts.append(img_html(fig))
            except BenchError as exc:
                parts.append(f'<p class="note missing">{esc(exc)}</p>')
        parts.append("</section>")
    parts.append("</main></body></html>")
    return "\n".join(parts) + "\n"


def build_report(run_dir: Path | str, out: Path | str | None = None, *, regs: Registries) -> Path:
    """Render ``run_dir`` to ``out`` (default ``RUN_DIR/report.html``); returns the path."""
    run = RunData.load(run_dir, datasets=regs.datasets)
    page = render_html(run, collect_sections(run, regs))
    path = Path(out) if out is not None else run.run_dir / DEFAULT_NAME
    if path.is_dir():
        path = path / DEFAULT_NAME
    try:
        write_atomic(path, page)
    except OSError as exc:
        raise BenchError(f"cannot write the report to {str(path)!r}: {exc.strerror or exc}") from exc
    return path
