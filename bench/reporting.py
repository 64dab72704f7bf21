"""The public report contract: what a ``bench_report_sections`` hook receives and returns.

A plugin's section reads a :class:`RunData` (a run directory's records, their artefacts and the
dataset images behind them) and returns :class:`ReportSection` objects; the HTML helpers here
(``esc``, ``img_html``, ``table_html``, ``new_figure``) build its fragment. ``bench.report``
renders the page; this module knows no method.
"""

from __future__ import annotations

import base64
import html
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bench import records as R
from bench.errors import BenchError
from bench.runstore import RunStore, record_path

if TYPE_CHECKING:  # pragma: no cover
    from bench.datasets.base import ImageSource
    from bench.registry import Registry

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
    ``problems`` lists record files that could not be read. ``datasets`` (the dataset registry)
    lets sections draw the images behind the records; without it they say so in a note.
    """

    def __init__(self, run_dir: Path, records: list[R.Record], paths: list[Path], *,
                 datasets: Registry | None = None, problems: list[str] | None = None):
        self.run_dir = Path(run_dir)
        self.records = records
        self._paths = {id(r): p for r, p in zip(records, paths)}
        self.datasets = datasets
        self.problems = problems or []
        self._artefacts: dict[Path, Artefacts] = {}
        self._sources: dict[tuple, ImageSource | None] = {}
        self._source_notes: dict[tuple, str] = {}

    @classmethod
    def load(cls, run_dir: Path | str, *, datasets: Registry | None = None) -> RunData:
        """Read a run directory; a missing directory or one without readable records is a BenchError."""
        root = Path(run_dir)
        if not root.exists():
            raise BenchError(f"no run directory {str(root)!r}; pass the --out directory of a `bench run`")
        if not root.is_dir():
            raise BenchError(f"{str(root)!r} is not a directory; pass the --out directory of a `bench run`")
        loaded = RunStore(root).load()
        if not loaded.records and not loaded.problems:
            raise BenchError(f"no run records (seed*.json) under {str(root)!r}; "
                             f"run `bench run --out {root}` first")
        if not loaded.records:
            raise BenchError(f"none of the {len(loaded.problems)} records under {str(root)!r} can be read "
                             f"({loaded.problems[0]})")
        return cls(root, loaded.records, loaded.paths, datasets=datasets, problems=loaded.problems)

    @property
    def ok_records(self) -> list[R.Record]:
        return [r for r in self.records if r.status == "ok"]

    @property
    def comparisons(self) -> list[R.Record]:
        """``bench compare`` records (kind ``comparison``); method sections read ``cells``."""
        return [r for r in self.records if r.kind == "comparison"]

    @property
    def cells(self) -> list[R.Record]:
        return [r for r in self.records if r.kind == "cell"]

    def path(self, record: R.Record) -> Path:
        return self._paths.get(id(record)) or record_path(self.run_dir, record)

    def by_method(self, name: str, *, ok: bool = False) -> list[R.Record]:
        """The benchmark cells of method ``name`` (comparisons have their own section)."""
        return [r for r in (self.ok_records if ok else self.records) if r.method.name == name and r.kind == "cell"]

    def table(self, record: R.Record, name: str) -> list[dict[str, Any]]:
        return list(record.tables.get(name) or [])

    def artefacts(self, record: R.Record) -> Artefacts:
        """Arrays from ``seed{n}.artefacts.npz`` and values from ``seed{n}.artefacts.json``."""
        path = self.path(record)
        if path not in self._artefacts:
            values, files, problems = RunStore.load_artefacts(path)
            self._artefacts[path] = Artefacts(values, files=files, problems=problems)
        return self._artefacts[path]

    def png_file(self, record: R.Record, name: Any, what: str = "figure") -> bytes:
        """The bytes of a PNG file a record's artefacts name (relative to the record's folder).

        Artefacts are files anyone could edit, so only a regular PNG file inside the run directory
        (after symlinks) is read; anything else is a one-line BenchError for the section's notes."""
        if not isinstance(name, (str, os.PathLike)) or not str(name):
            raise BenchError(f"{what} {name!r} is not a file name; skipped")
        path = Path(name)
        path = path if path.is_absolute() else self.path(record).parent / path
        real, root = path.resolve(), self.run_dir.resolve()
        if not real.is_relative_to(root):
            raise BenchError(f"{what} {name} lies outside the run directory and is not embedded (keep a "
                             "method's figures folder inside --out)")
        if not real.exists():
            raise BenchError(f"{what} {name} is missing")
        if not real.is_file():
            raise BenchError(f"{what} {name} is not a regular file; skipped")
        if real.stat().st_size > MAX_FIGURE_BYTES:
            raise BenchError(f"{what} {name} is larger than {MAX_FIGURE_BYTES >> 20} MB; skipped")
        try:
            data = real.read_bytes()
        except OSError as exc:
            raise BenchError(f"{what} {name} cannot be read ({exc.strerror or exc}); skipped") from None
        if not data.startswith(PNG_MAGIC):
            raise BenchError(f"{what} {name} is not a PNG file; skipped")
        return data

    def label(self, record: R.Record) -> str:
        """``dataset / extractor · seed n`` (+ the limit), for headings and captions."""
        lim = f" (limit {record.dataset.limit})" if record.dataset.limit else ""
        return f"{record.dataset.name}{lim} / {record.features.extractor} · seed {record.seed}"

    # images -------------------------------------------------------------------------------
    @staticmethod
    def _dataset_key(record: R.Record, side: str = "a") -> tuple:
        d = record.dataset_b if side == "b" and record.dataset_b is not None else record.dataset
        return (d.name, d.revision, d.limit)

    def source(self, record: R.Record, side: str = "a") -> ImageSource | None:
        """The images the record was made from, or None (then :meth:`source_note` says why).

        Re-loads the dataset (seed 0, the runner's ``--limit`` subsample) and checks that its
        revision is the record's, so a changed dataset is never drawn as if it were the run's.
        """
        key = self._dataset_key(record, side)
        if key in self._sources:
            return self._sources[key]
        name, revision, lim = key
        src, note = None, ""
        try:
            from bench.datasets import get_spec, load_source

            spec = get_spec(self.datasets, name) if self.datasets is not None else None
            reason = "no dataset registry was given to the report" if spec is None else spec.ready()
            if reason:
                note = f"images of {name!r} are not available here: {reason}"
            else:
                loaded = load_source(spec, lim)   # the run's own convention: seed 0, then --limit
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

    def source_note(self, record: R.Record, side: str = "a") -> str:
        self.source(record, side)
        return self._source_notes.get(self._dataset_key(record, side), "")

    def montage(self, record: R.Record, rows: list[tuple[str, list[int]]], *, thumb: int = 40,
                max_per_row: int = 12, label_width: int = 150, side: str = "a"):
        """A PIL image: one labelled row of thumbnails per (label, image indices) pair.

        Indices are positions in the record's (limited) dataset. Returns None when the images
        are unavailable or no index is valid.
        """
        from PIL import Image, ImageDraw

        src = self.source(record, side)
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
#: the largest figure file a report embeds (a method's own figures are a few hundred kB)
MAX_FIGURE_BYTES = 32 << 20


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


# --------------------------------------------------------------------------- helpers for method sections

#: how many clusters / groups / prototypes a montage shows
TOP = 8


def first_by_cell(recs: list[R.Record]) -> list[R.Record]:
    """One record per (dataset, extractor, config): the lowest seed (artefacts are per seed)."""
    best: dict[tuple, R.Record] = {}
    for r in sorted(recs, key=lambda r: r.seed):
        best.setdefault((r.dataset.name, r.dataset.revision, r.dataset.limit, r.features.extractor,
                         r.config_hash), r)
    return list(best.values())


def note_failed(sec: ReportSection, recs: list[R.Record]) -> None:
    for r in recs:
        if r.status != "ok":
            sec.note(f"{r.method.name} on {r.dataset.name} / {r.features.extractor} seed {r.seed} failed: "
                     f"{r.error}")


def artefacts_with_notes(sec: ReportSection, run: RunData, rec: R.Record) -> dict[str, Any]:
    art = run.artefacts(rec)
    for p in art.problems:
        sec.note(f"{run.label(rec)}: {p}")
    return art


def method_section(run: RunData, method: str, title: str, intro: str
                    ) -> tuple[ReportSection, list[str], list[R.Record]] | None:
    """A method's section: None when the run has no record of it; else the section (failed cells
    noted), its first paragraph, and one ok summariser record per cell to draw."""
    every = run.by_method(method)
    if not every:
        return None
    sec = ReportSection(title, key=method)
    note_failed(sec, every)
    ok = [r for r in run.by_method(method, ok=True) if "summariser" in r.method.roles]
    return sec, [f'<p class="small">{intro}</p>'], first_by_cell(ok)


def dataset_title(dname: str, limit: int | None) -> str:
    return f"{dname}" + (f" (limit {limit})" if limit else "")


def images_or_note(sec: ReportSection, run: RunData, rec: R.Record, what: str) -> bool:
    if run.source(rec) is not None:
        return True
    sec.note(f"{run.label(rec)}: {what} not drawn: {run.source_note(rec)}")
    return False


def class_of(src, i: int) -> str:
    if src is None or src.labels is None:
        return ""
    lab = int(src.labels[i])
    if lab < 0:
        return "unlabelled"
    names = src.class_names
    return names[lab] if names and lab < len(names) else str(lab)


def group_of(src, i: int) -> str:
    if src is None or src.groups is None:
        return ""
    g = int(src.groups[i])
    names = src.group_names
    return names[g] if names and 0 <= g < len(names) else str(g)


def majority(src, idx: list[int]) -> str:
    if src is None or src.labels is None or not idx:
        return ""
    names = [class_of(src, i) for i in idx if 0 <= i < src.n]
    if not names:
        return ""
    vals, counts = np.unique(names, return_counts=True)
    return f"majority {vals[np.argmax(counts)]} ({counts.max()}/{len(names)})"
