"""``bench report RUN_DIR``: one self-contained HTML page of what a run found.

The page is built only from what the run directory holds (records, ``*.artefacts.npz`` /
``*.artefacts.json``) plus the embedded or configured dataset images behind them, so it can
be regenerated at any time and opened from disk: images are PNG data URIs, no script, no
stylesheet or font from elsewhere. Every section comes from the ``bench_report_sections``
hook; the first-party ones live in :mod:`bench.report_sections` and use the same hook a
third-party plugin does. A section that cannot draw something says so in a visible note.
"""

from __future__ import annotations

import base64
import html
import importlib
import io
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bench import records as R
from bench.errors import BenchError

if TYPE_CHECKING:  # pragma: no cover
    from bench.datasets.base import ImageSource
    from bench.plugins import Registries

#: the module holding the first-party sections (registered like a plugin, always first)
BUILTIN_SECTIONS = "bench.report_sections"
DEFAULT_NAME = "report.html"


# --------------------------------------------------------------------------- what a hook returns


@dataclass
class ReportFigure:
    """An image with a caption: a matplotlib Figure, PNG bytes, a PIL image or a uint8 array."""

    image: Any
    caption: str = ""


@dataclass
class ReportSection:
    """One section of the page.

    title:   heading (also the table-of-contents entry).
    html:    an HTML fragment, trusted as given: escape your own text (:func:`esc`), embed
             images with :func:`img_html`.
    figures: images shown after ``html`` (ReportFigure, or a bare figure / PNG / PIL image).
    notes:   what the section could not show and why; rendered as visible warnings.
    key:     anchor id (default: derived from the title).
    """

    title: str
    html: str = ""
    figures: list[Any] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    key: str = ""

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)


# --------------------------------------------------------------------------- the run


class Artefacts(dict):
    """A record's saved artefacts (npz arrays and JSON values merged); ``problems`` lists
    artefact files that exist but cannot be read."""

    def __init__(self, *args: Any, files: list[Path] | None = None, problems: list[str] | None = None):
        super().__init__(*args)
        self.files = files or []
        self.problems = problems or []


class RunData:
    """What a report section reads: a run directory's records, artefacts and images.

    ``records`` are every readable record (``ok`` and ``error``), in path order;
    ``problems`` lists record files that could not be read.
    """

    def __init__(self, run_dir: Path, records: list[R.Record], paths: list[Path], *,
                 regs: Registries | None = None, problems: list[str] | None = None):
        self.run_dir = Path(run_dir)
        self.records = records
        self._paths = {id(r): p for r, p in zip(records, paths)}
        self._regs = regs
        self.problems = problems or []
        self._artefacts: dict[Path, Artefacts] = {}
        self._sources: dict[tuple, ImageSource | None] = {}
        self._source_notes: dict[tuple, str] = {}

    @classmethod
    def load(cls, run_dir: Path | str, *, regs: Registries | None = None) -> RunData:
        """Read a run directory; a missing directory or one without records is a BenchError."""
        root = Path(run_dir)
        if not root.exists():
            raise BenchError(f"no run directory {str(root)!r}; pass the --out directory of a `bench run`")
        if not root.is_dir():
            raise BenchError(f"{str(root)!r} is not a directory; pass the --out directory of a `bench run`")
        paths = sorted(p for p in root.rglob("seed*.json") if R.RECORD_NAME.fullmatch(p.name))
        if not paths:
            raise BenchError(f"no run records (seed*.json) under {str(root)!r}; "
                             f"run `bench run --out {root}` first")
        problems: list[str] = []
        try:
            recs = R.load_all(root)
            good = paths
        except ValueError:  # one broken file: read them one by one and report the broken ones
            recs, good = [], []
            for p in paths:
                try:
                    recs.append(R.Record.model_validate_json(p.read_text(encoding="utf-8")))
                    good.append(p)
                except (ValueError, OSError) as exc:
                    problems.append(f"unreadable record {p.relative_to(root)}: {str(exc).splitlines()[0]}")
        if not recs:
            raise BenchError(f"none of the {len(paths)} records under {str(root)!r} can be read "
                             f"({problems[0]})")
        return cls(root, recs, good, regs=regs, problems=problems)

    # records ------------------------------------------------------------------------------
    @property
    def regs(self) -> Registries:
        if self._regs is None:
            from bench import plugins

            self._regs = plugins.load()
        return self._regs

    @property
    def ok_records(self) -> list[R.Record]:
        return [r for r in self.records if r.status == "ok"]

    def path(self, record: R.Record) -> Path:
        return self._paths.get(id(record)) or R.record_path(self.run_dir, record)

    def by_method(self, name: str, *, ok: bool = False) -> list[R.Record]:
        return [r for r in (self.ok_records if ok else self.records) if r.method.name == name]

    def table(self, record: R.Record, name: str) -> list[dict[str, Any]]:
        return list(record.tables.get(name) or [])

    def artefacts(self, record: R.Record) -> Artefacts:
        """Arrays from ``seed{n}.artefacts.npz`` and values from ``seed{n}.artefacts.json``."""
        path = self.path(record)
        if path in self._artefacts:
            return self._artefacts[path]
        stem = path.with_suffix("")
        values: dict[str, Any] = {}
        files, problems = [], []
        npz = stem.parent / f"{stem.name}.artefacts.npz"
        if npz.exists():
            try:
                with np.load(npz, allow_pickle=False) as z:
                    values.update({k: z[k] for k in z.files})
                files.append(npz)
            except (OSError, ValueError, EOFError) as exc:
                why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                problems.append(f"unreadable {npz.name}: {why}")
        js = stem.parent / f"{stem.name}.artefacts.json"
        if js.exists():
            try:
                loaded = json.loads(js.read_text(encoding="utf-8"))
                if isinstance(loaded, dict):
                    values.update(loaded)
                files.append(js)
            except (OSError, ValueError) as exc:
                problems.append(f"unreadable {js.name}: {str(exc).splitlines()[0]}")
        out = Artefacts(values, files=files, problems=problems)
        self._artefacts[path] = out
        return out

    def label(self, record: R.Record) -> str:
        """``dataset / extractor · seed n`` (+ the limit), for headings and captions."""
        lim = f" (limit {record.dataset.limit})" if record.dataset.limit else ""
        return f"{record.dataset.name}{lim} / {record.features.extractor} · seed {record.seed}"

    # images -------------------------------------------------------------------------------
    @staticmethod
    def _dataset_key(record: R.Record) -> tuple:
        return (record.dataset.name, record.dataset.revision, record.dataset.limit)

    def source(self, record: R.Record) -> ImageSource | None:
        """The images the record was made from, or None (then :meth:`source_note` says why).

        Re-loads the dataset (seed 0, the runner's ``--limit`` subsample) and checks that its
        revision is the record's, so a changed dataset is never drawn as if it were the run's.
        """
        key = self._dataset_key(record)
        if key in self._sources:
            return self._sources[key]
        name, revision, lim = key
        src, note = None, ""
        try:
            from bench.datasets import get_spec
            from bench.datasets import limit as limit_source

            spec = get_spec(self.regs.datasets, name)
            reason = spec.ready()
            if reason:
                note = f"images of {name!r} are not available here: {reason}"
            else:
                loaded = spec.load(seed=0)
                if lim is not None and lim < loaded.n:
                    loaded = limit_source(loaded, lim, seed=0)
                if loaded.revision != revision:
                    note = (f"images of {name!r} have revision {loaded.revision}, but the records were made "
                            f"from revision {revision}; not drawing images of another dataset version")
                else:
                    src = loaded
        except Exception as exc:  # noqa: BLE001 - a dataset that fails to load only costs its pictures
            note = f"images of {name!r} could not be loaded: {type(exc).__name__}: {str(exc).splitlines()[0]}"
        self._sources[key] = src
        self._source_notes[key] = note
        return src

    def source_note(self, record: R.Record) -> str:
        self.source(record)
        return self._source_notes.get(self._dataset_key(record), "")

    def montage(self, record: R.Record, rows: list[tuple[str, list[int]]], *, thumb: int = 40,
                max_per_row: int = 12, label_width: int = 150):
        """A PIL image: one labelled row of thumbnails per (label, image indices) pair.

        Indices are positions in the record's (limited) dataset. Returns None when the images
        are unavailable or no index is valid.
        """
        from PIL import Image, ImageDraw

        src = self.source(record)
        if src is None or not rows:
            return None
        pad = 2
        rows = [(label, [int(i) for i in idx if 0 <= int(i) < src.n][:max_per_row]) for label, idx in rows]
        rows = [(label, idx) for label, idx in rows if idx]
        if not rows:
            return None
        width = label_width + max(len(idx) for _, idx in rows) * (thumb + pad) + pad
        canvas = Image.new("RGB", (width, len(rows) * (thumb + pad) + pad), "white")
        draw = ImageDraw.Draw(canvas)
        font = _font()
        for r, (label, idx) in enumerate(rows):
            y = pad + r * (thumb + pad)
            for line, text in enumerate(_wrap(label, label_width // 7, 3)):
                # the bundled font's space is 2 px wide: double it so words stay apart
                draw.text((2, y + 1 + 12 * line), text.replace(" ", "  "), fill="black", font=font)
            for c, i in enumerate(idx):
                im = Image.fromarray(np.asarray(src.image(i), dtype=np.uint8)).convert("RGB")
                resample = Image.NEAREST if max(im.size) <= thumb else Image.BILINEAR
                canvas.paste(im.resize((thumb, thumb), resample), (label_width + pad + c * (thumb + pad), y))
        return canvas


def _font():
    """Pillow's bundled font at 10 px (FreeType), or its bitmap font where FreeType is missing."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=10)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def _wrap(text: str, width: int, lines: int) -> list[str]:
    words, out, cur = str(text).split(), [], ""
    for w in words:
        if cur and len(cur) + 1 + len(w) > width:
            out.append(cur)
            cur = w
        else:
            cur = f"{cur} {w}".strip()
    out.append(cur)
    return [s[:width] for s in out[:lines]]


# --------------------------------------------------------------------------- HTML helpers


def esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def new_figure(width: float = 6.0, height: float = 3.2):
    """A matplotlib Figure on the Agg canvas (no pyplot, no global backend switch)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=80, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def to_png(image: Any) -> bytes:
    """PNG bytes of a matplotlib Figure, PNG bytes, a PIL image or an (H, W[, 3]) uint8 array."""
    if isinstance(image, (bytes, bytearray)):
        if not bytes(image[:8]) == PNG_MAGIC:
            raise BenchError("report figure bytes are not a PNG image")
        return bytes(image)
    buf = io.BytesIO()
    if hasattr(image, "savefig"):
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        if not isinstance(image.canvas, FigureCanvasAgg):
            FigureCanvasAgg(image)
        image.savefig(buf, format="png")
        return buf.getvalue()
    from PIL import Image

    if isinstance(image, np.ndarray):
        image = Image.fromarray(np.asarray(image, dtype=np.uint8))
    if isinstance(image, Image.Image):
        image.save(buf, format="PNG", optimize=True)
        return buf.getvalue()
    raise BenchError(f"a report figure must be a matplotlib Figure, PNG bytes, a PIL image or an array, "
                     f"got {type(image).__name__}")


def img_html(image: Any, caption: str = "") -> str:
    """``<figure>`` with the image as a PNG data URI (and a caption)."""
    data = base64.b64encode(to_png(image)).decode("ascii")
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="data:image/png;base64,{data}" alt="{esc(caption or "figure")}">{cap}</figure>'


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        text = ", ".join(_cell(v) for v in value[:12])
        return text + (f", … ({len(value)})" if len(value) > 12 else "")
    return "" if value is None else str(value)


def table_html(rows: list[dict[str, Any]], columns: list[str] | None = None, *, max_rows: int = 50) -> str:
    """A list of dicts as an HTML table (the first ``max_rows`` rows)."""
    if not rows:
        return ""
    cols = columns or list(dict.fromkeys(k for row in rows for k in row))
    head = "".join(f"<th>{esc(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{esc(_cell(row.get(c)))}</td>" for c in cols) + "</tr>"
                   for row in rows[:max_rows])
    more = f'<p class="small">first {max_rows} of {len(rows)} rows</p>' if len(rows) > max_rows else ""
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{more}"


def _inline(text: str) -> str:
    parts = re.split(r"`([^`]*)`", text)
    return "".join(f"<code>{esc(p)}</code>" if i % 2 else esc(p) for i, p in enumerate(parts))


def markdown_html(md: str) -> str:
    """The Markdown subset ``bench.leaderboard`` writes (headings, pipe tables, lists,
    paragraphs, inline code) as HTML; ``##`` parts fold into ``<details>``."""
    out: list[str] = []
    open_details = False
    lines = md.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("|"):
            block = []
            while i < len(lines) and lines[i].startswith("|"):
                block.append([c.strip() for c in lines[i].strip().strip("|").split("|")])
                i += 1
            head, body = block[0], [r for r in block[1:] if not all(set(c) <= set("-: ") for c in r)]
            th = "".join(f"<th>{_inline(c)}</th>" for c in head)
            trs = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in body)
            out.append(f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>")
            continue
        if line.startswith("## "):
            if open_details:
                out.append("</details>")
            out.append(f"<details><summary>{_inline(line[3:])}</summary>")
            open_details = True
        elif line.startswith("### "):
            out.append(f"<h5>{_inline(line[4:])}</h5>")
        elif line.startswith("# "):
            if open_details:
                out.append("</details>")
                open_details = False
            out.append(f"<h3>{_inline(line[2:])}</h3>")
        elif line.startswith("- "):
            items = []
            while i < len(lines) and lines[i].startswith("- "):
                items.append(f"<li>{_inline(lines[i][2:])}</li>")
                i += 1
            out.append("<ul>" + "".join(items) + "</ul>")
            continue
        elif line.strip():
            out.append(f"<p>{_inline(line)}</p>")
        i += 1
    if open_details:
        out.append("</details>")
    return "\n".join(out)


# --------------------------------------------------------------------------- collecting + rendering


def _slug(text: str) -> str:
    return re.sub(r"[^0-9a-z]+", "-", text.lower()).strip("-") or "section"


def collect_sections(run: RunData) -> list[ReportSection]:
    """Call every ``bench_report_sections`` implementation, built-ins first, each isolated."""
    pm = run.regs.manager
    if not pm.has_plugin(BUILTIN_SECTIONS):
        pm.register(importlib.import_module(BUILTIN_SECTIONS), name=BUILTIN_SECTIONS)
    impls = pm.hook.bench_report_sections.get_hookimpls()
    impls = sorted(impls, key=lambda impl: impl.plugin_name != BUILTIN_SECTIONS)
    sections: list[ReportSection] = []
    for impl in impls:
        try:
            result = impl.function(*[run for _ in impl.argnames])
        except Exception as exc:  # noqa: BLE001 - one broken plugin section must not end the report
            msg = f"{type(exc).__name__}: {exc}".splitlines()[0]
            sections.append(ReportSection(f"{impl.plugin_name} (section failed)",
                                          notes=[f"the plugin's bench_report_sections raised {msg}"]))
            continue
        if result is None:
            continue
        for sec in result if isinstance(result, (list, tuple)) else [result]:
            if not isinstance(sec, ReportSection):
                sections.append(ReportSection(f"{impl.plugin_name} (bad section)", notes=[
                    f"bench_report_sections returned a {type(sec).__name__}, "
                    "not a bench.report.ReportSection"]))
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

    datasets = sorted({r.dataset.name for r in run.records})
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


def build_report(run_dir: Path | str, out: Path | str | None = None, *,
                 regs: Registries | None = None) -> Path:
    """Render ``run_dir`` to ``out`` (default ``RUN_DIR/report.html``); returns the path."""
    run = RunData.load(run_dir, regs=regs)
    sections = collect_sections(run)
    page = render_html(run, sections)
    path = Path(out) if out is not None else run.run_dir / DEFAULT_NAME
    if path.is_dir():
        path = path / DEFAULT_NAME
    try:
        R.write_atomic(path, page)
    except OSError as exc:
        raise BenchError(f"cannot write the report to {str(path)!r}: {exc.strerror or exc}") from exc
    return path


__all__ = ["Artefacts", "ReportFigure", "ReportSection", "RunData", "build_report", "collect_sections", "esc",
           "img_html", "markdown_html", "new_figure", "render_html", "table_html", "to_png"]
