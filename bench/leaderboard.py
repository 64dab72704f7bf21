"""Leaderboard: a pure, deterministic function of the stored records.

``aggregate(records)`` builds the tables as data (one :class:`DatasetBoard` per dataset revision
and limit); ``to_markdown``, ``to_csv`` and ``to_html`` render them. Rows are grouped by
comparability key, so records that differ in method version, params, dataset revision,
extractor/preprocessing or metric definitions never share a row. Within a row the seeds are
aggregated as mean ± sample std; a metric missing in any seed gives an empty cell (no silent
partial means). Column order and directions come from the metric registry
(:data:`bench.metrics.METRICS`).
"""

from __future__ import annotations

import csv
import html
import io
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from bench.errors import BenchError
from bench.metrics import HIGHER_IS_BETTER, METRICS_VERSION, metric_order
from bench.records import Record
from bench.runstore import RunStore, safe_name, write_atomic


@dataclass
class Value:
    """A mean ± sample std over the seeds of a row (None when any seed lacks it); ``skipped``
    counts non-finite values (only a hand-edited record has them), left out and said so."""

    mean: float | None
    std: float | None
    n: int
    skipped: int = 0

    def text(self, *, spread: bool = True) -> str:
        note = f" ({self.skipped} non-finite skipped)" if self.skipped else ""
        if self.mean is None:
            return note.strip()
        return (f"{self.mean:.3f} ± {self.std:.3f}" if spread and self.n > 1 else f"{self.mean:.3f}") + note


@dataclass
class Row:
    """One comparability key: a method with its params on one dataset through one extractor."""

    method: str
    version: str
    extractor: str
    preset: str
    key: str
    seeds: list[int]
    metrics: dict[str, Value]
    time_s: Value
    statistics: dict[str, Value] = field(default_factory=dict)
    #: the lowest seed's method tables: name → rows
    tables: dict[str, list[dict]] = field(default_factory=dict)
    table_seed: int = 0
    #: the metric definitions the row was scored under (part of its key); an older one is labelled
    metrics_version: str = METRICS_VERSION
    #: the method's parameters (part of its key): rows of one method differ here
    params: dict = field(default_factory=dict)


@dataclass
class DatasetBoard:
    name: str
    revision: str
    limit: int | None
    metrics: list[str]
    rows: list[Row]
    errors: list[str]

    @property
    def stem(self) -> str:
        return safe_name(self.name) + (f"-limit{self.limit}" if self.limit else "")


def _mean_std(values: list[float | None]) -> Value:
    """Mean ± std of the seeds' values: a missing one blanks the cell (no silent partial mean), a
    non-finite one (a crafted ``"NaN"``) is skipped and counted, so one bad file cannot blank a row."""
    if not values or any(v is None for v in values):
        return Value(None, None, len(values))
    finite = [float(v) for v in values if math.isfinite(v)]
    skipped = len(values) - len(finite)
    if not finite:
        return Value(None, None, 0, skipped)
    mean = sum(finite) / len(finite)
    std = math.sqrt(sum((v - mean) ** 2 for v in finite) / (len(finite) - 1)) if len(finite) > 1 else 0.0
    return Value(mean, std, len(finite), skipped)


def aggregate(records: list[Record]) -> list[DatasetBoard]:
    """Records → one board per (dataset, revision, limit), rows sorted. Pure: same records, same boards."""
    cells: dict[tuple, list[Record]] = defaultdict(list)
    for rec in records:
        if rec.kind != "cell":   # bench compare's records are not leaderboard cells
            continue
        key = (rec.dataset.name, rec.dataset.revision, rec.dataset.limit, rec.features.extractor,
               rec.method.name, rec.comparability_key)
        cells[key].append(rec)
    by_dataset: dict[tuple, list[tuple]] = defaultdict(list)
    for key in sorted(cells, key=lambda k: tuple(str(x) for x in k)):
        by_dataset[key[:3]].append(key)

    boards = []
    for (dname, drev, dlimit), keys in sorted(by_dataset.items(), key=lambda kv: tuple(str(x) for x in kv[0])):
        names: set[str] = set()
        for key in keys:
            for rec in cells[key]:
                names |= set(rec.metrics)
        metrics = metric_order(names)
        rows, errors = [], []
        for key in keys:
            recs = sorted(cells[key], key=lambda r: r.seed)
            errors += [f"`{r.method.name}` / `{r.features.extractor}` seed {r.seed}: {r.error}"
                       for r in recs if r.status != "ok"]
            ok = [r for r in recs if r.status == "ok"]
            if not ok:
                continue
            first = ok[0]
            row = Row(method=first.method.name, version=first.method.version, extractor=first.features.extractor,
                      preset=first.preset, key=key[-1], seeds=[r.seed for r in ok],
                      metrics={m: _mean_std([r.metrics[m].value if m in r.metrics else None for r in ok])
                               for m in metrics},
                      time_s=_mean_std([sum(r.timings_s.values()) for r in ok]),
                      metrics_version=first.metrics_version, params=dict(first.method.params))
            for s in sorted(set().union(*(set(r.statistics) for r in ok))):
                row.statistics[s] = _mean_std([r.statistics.get(s) for r in ok])
            row.tables = {name: trows for name, trows in sorted(first.tables.items()) if trows}
            row.table_seed = first.seed
            rows.append(row)
        boards.append(DatasetBoard(dname, drev, dlimit, metrics, rows, errors))
    return boards


# --------------------------------------------------------------------------- renderers


def _arrow(metric: str) -> str:
    hib = HIGHER_IS_BETTER.get(metric)
    return " ↑" if hib is True else " ↓" if hib is False else ""


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _md(text: str) -> str:
    """Text from records (class names, errors, dataset names) safe in Markdown: ``<``, ``>`` and
    ``&`` escaped outside `code` spans (inside one they show as written), so a crafted name never
    becomes HTML on a page that renders it; an odd backtick count escapes everything."""
    parts = str(text).split("`")
    if len(parts) % 2 == 0:
        return html.escape(str(text), quote=False)
    return "`".join(p if i % 2 else html.escape(p, quote=False) for i, p in enumerate(parts))


def _md_cell(text: str) -> str:
    return _md(text).replace("|", "/").replace("\r", " ").replace("\n", " ")


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_md_cell(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _main_header(board: DatasetBoard) -> list[str]:
    return ["method", "extractor", "seeds"] + [m + _arrow(m) for m in board.metrics] + ["time s", "key"]


def _older(row: Row) -> bool:
    """Scored under older metric definitions (a record that names none is not labelled)."""
    return bool(row.metrics_version) and row.metrics_version != METRICS_VERSION


def _variant(board: DatasetBoard, row: Row) -> str:
    """What sets the row apart from the board's other rows of its method and extractor: the
    parameters whose values differ among them (set ones only), e.g. `` · select_concept=…``."""
    peers = [r for r in board.rows if (r.method, r.extractor) == (row.method, row.extractor) and r is not row]
    differing = sorted(k for k, v in row.params.items() for p in peers if p.params.get(k) != v and v is not None)
    return "".join(f" · {k}={row.params[k]}" for k in dict.fromkeys(differing))


def _main_cells(board: DatasetBoard, row: Row) -> list[str]:
    older = f" (metrics v{row.metrics_version})" if _older(row) else ""
    return ([f"{row.method} {row.version}{_variant(board, row)}{older}", row.extractor, ",".join(map(str, row.seeds))]
            + [row.metrics[m].text() for m in board.metrics] + [row.time_s.text(spread=False), f"`{row.key[:8]}`"])


def _intro(board: DatasetBoard) -> str:
    return (f"Dataset revision `{board.revision}`" + (f", limited to {board.limit} images" if board.limit else "")
            + ". Metrics are computed by the harness (↑ higher is better, ↓ lower is better); "
            "mean ± std over seeds; `key` is the comparability key"
            + (f"; a row marked (metrics vN) was scored under older metric definitions (now v{METRICS_VERSION}, "
               "see bench/metrics.py)" if any(_older(r) for r in board.rows) else "")
            + ".")


def _md_line(text: str) -> str:
    return _md(text).replace("\r", " ").replace("\n", " ")


def to_markdown(board: DatasetBoard) -> str:
    parts = [f"# {_md_line(board.name)}", "", _md_line(_intro(board)), "",
             _md_table(_main_header(board), [_main_cells(board, r) for r in board.rows])]
    stats = [f"### {_md_line(f'{r.method}{_variant(board, r)} / {r.extractor}')}\n\n"
             + _md_table(["statistic", "value"], [[s, v.text()] for s, v in r.statistics.items()])
             for r in board.rows if r.statistics]
    tables = [f"### {_md_line(f'{r.method}{_variant(board, r)} / {r.extractor}: {name} (seed {r.table_seed})')}\n\n"
              + _md_table(list(trows[0]), [[_cell(tr.get(c)) for c in trows[0]] for tr in trows])
              for r in board.rows for name, trows in r.tables.items()]
    if stats:
        parts += ["", "## Method-reported statistics", "", "\n\n".join(stats)]
    if tables:
        parts += ["", "## Method tables", "", "\n\n".join(tables)]
    if board.errors:
        parts += ["", "## Failed cells", ""] + [f"- {_md_line(e)}" for e in board.errors]
    return "\n".join(parts) + "\n"


def to_csv(boards: list[DatasetBoard]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["dataset", "revision", "limit", "extractor", "method", "method_version", "metrics_version",
                     "preset", "comparability_key", "kind", "name", "mean", "std", "n_seeds"])
    for b in boards:
        for r in b.rows:
            head = [b.name, b.revision, b.limit or "", r.extractor, r.method, r.version, r.metrics_version, r.preset,
                    r.key]
            for kind, values in (("metric", r.metrics), ("statistic", r.statistics)):
                for name, v in values.items():
                    if v.mean is not None:
                        writer.writerow([*head, kind, name, f"{v.mean:.6g}", f"{v.std:.6g}", v.n])
    return buf.getvalue()


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    def cell(text: str, tag: str) -> str:
        parts = text.split("`")   # `code` spans of the Markdown cells
        inner = "".join(f"<code>{html.escape(p)}</code>" if i % 2 else html.escape(p) for i, p in enumerate(parts))
        return f"<{tag}>{inner}</{tag}>"

    head = "".join(cell(h, "th") for h in header)
    body = "".join("<tr>" + "".join(cell(c, "td") for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def to_html(board: DatasetBoard) -> str:
    """One board as an HTML fragment (the report's leaderboard section); statistics, method tables
    and failed cells fold into ``<details>``."""
    esc = html.escape
    parts = [f"<h3>{esc(board.name)}</h3>", f"<p>{esc(_intro(board))}</p>",
             _html_table(_main_header(board), [_main_cells(board, r) for r in board.rows])]
    stats = [r for r in board.rows if r.statistics]
    if stats:
        parts.append("<details><summary>Method-reported statistics</summary>")
        for r in stats:
            parts.append(f"<h5>{esc(r.method + _variant(board, r))} / {esc(r.extractor)}</h5>"
                         + _html_table(["statistic", "value"], [[s, v.text()] for s, v in r.statistics.items()]))
        parts.append("</details>")
    if any(r.tables for r in board.rows):
        parts.append("<details><summary>Method tables</summary>")
        for r in board.rows:
            for name, trows in r.tables.items():
                title = f"{r.method}{_variant(board, r)} / {r.extractor}: {name} (seed {r.table_seed})"
                parts.append(f"<h5>{esc(title)}</h5>"
                             + _html_table(list(trows[0]), [[_cell(tr.get(c)) for c in trows[0]] for tr in trows]))
        parts.append("</details>")
    if board.errors:
        parts.append("<details><summary>Failed cells</summary><ul>"
                     + "".join(f"<li>{esc(e)}</li>" for e in board.errors) + "</ul></details>")
    return "\n".join(parts)


def build(records: list[Record]) -> dict[str, str]:
    """Records → {relative file name: content}: one Markdown page per dataset, an index and a CSV."""
    boards = aggregate(records)
    files = {f"{b.stem}.md": to_markdown(b) for b in boards}
    index = ["# Leaderboards", "", "Generated by `bench leaderboard` from stored records; do not edit by hand.", "",
             "| dataset | revision | rows |", "|---|---|---|"]
    index += [f"| [{_md_cell(b.name)}]({quote(b.stem)}.md) | {_md_cell(f'`{b.revision}`')} | {len(b.rows)} |"
              for b in boards]
    files["README.md"] = "\n".join(index) + "\n"
    files["results.csv"] = to_csv(boards)
    return files


def write(results_dir: Path, out_dir: Path) -> tuple[list[Path], list[str]]:
    """Regenerate ``out_dir`` from the records under ``results_dir``: (files written, unreadable records).

    Pages of datasets that no longer have records are removed (only ``*.md`` pages this function
    writes, never other files), so the folder always shows exactly the records. With no readable
    record at all nothing is touched: a folder of corrupt files must not wipe an existing leaderboard."""
    loaded = RunStore(results_dir).load()
    if not loaded.records:
        why = (f"none of the {len(loaded.problems)} records under {str(results_dir)!r} can be read "
               f"({loaded.problems[0]})" if loaded.problems else f"no run records under {str(results_dir)!r}")
        raise BenchError(f"{why}; nothing written to {str(out_dir)!r}")
    files = build(loaded.records)
    out_dir = Path(out_dir)
    if out_dir.is_dir():
        for old in out_dir.glob("*.md"):
            if old.name not in files and old.read_text(encoding="utf-8", errors="replace").find(
                    "Metrics are computed by the harness") >= 0:
                old.unlink()
    written = []
    for name, text in files.items():
        path = out_dir / name
        write_atomic(path, text)
        written.append(path)
    return written, loaded.problems
