"""Saved dataset summaries (``bench summarise A --save A.bench``): summarise a reference set once,
compare it against many.

A ``.bench`` file is an ``.npz`` archive (read with ``allow_pickle=False``, so loading runs no
code) holding each comparator's dataset-level statistics as arrays, plus one JSON document
(``__meta__``) that describes it: the format version, the dataset (name, revision, size, class
names), the extractor's cache key (library, architecture, weights hash, preprocessing) and
precision, and per method its version, science parameters and the statistics' keys. Comparing it
with another dataset first checks that everything that changes the numbers matches, and names
the first field that does not.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from bench.errors import BenchError
from bench.runstore import jsonable, save_npz_atomic

FORMAT = "bench-summary"
FORMAT_VERSION = 1
SUFFIX = ".bench"
META = "__meta__"


@dataclass
class SavedSummary:
    """What a ``.bench`` file holds: metadata and, per method, its statistics."""

    dataset: dict[str, Any]
    features: dict[str, Any]
    methods: dict[str, dict[str, Any]]            # name → {"version", "params"}
    statistics: dict[str, dict[str, Any]]         # name → the comparator's summarise() output
    bench_version: str = ""
    created: str = ""
    path: Path | None = field(default=None, compare=False)


def save(summary: SavedSummary, path: Path) -> Path:
    """Write ``summary`` atomically; arrays under ``method/key``, everything else in ``__meta__``."""
    path = Path(path)
    if path.suffix != SUFFIX:
        raise BenchError(f"--save {str(path)!r}: a saved summary's name must end in {SUFFIX}")
    arrays: dict[str, np.ndarray] = {}
    values: dict[str, dict[str, Any]] = {}
    for method, stats in summary.statistics.items():
        values[method] = {}
        for key, value in stats.items():
            if "/" in key:
                raise BenchError(f"{method}: statistic names may not contain '/': {key!r}")
            if isinstance(value, np.ndarray):
                arrays[f"{method}/{key}"] = value
            else:
                values[method][key] = jsonable(value)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "bench_version": summary.bench_version,
            "created": summary.created or datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "dataset": jsonable(summary.dataset), "features": jsonable(summary.features),
            "methods": jsonable(summary.methods), "values": values}
    arrays[META] = np.frombuffer(json.dumps(meta, sort_keys=True).encode("utf-8"), dtype=np.uint8)
    save_npz_atomic(path, arrays)
    return path


def load(path: Path | str) -> SavedSummary:
    """Read a ``.bench`` file (no code runs); ONE-line BenchError when it is not a readable summary."""
    path = Path(path)
    if not path.is_file():
        raise BenchError(f"saved summary {str(path)!r} does not exist; make one with "
                         f"`bench summarise DATASET --save {path.name}`")
    import zipfile

    if not zipfile.is_zipfile(path):
        raise BenchError(f"{str(path)!r} is not a readable bench summary (not an .npz archive)")
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(bytes(z[META]).decode("utf-8"))
            arrays = {k: z[k] for k in z.files if k != META}
    except (OSError, ValueError, KeyError, EOFError, UnicodeDecodeError) as exc:
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "pickle" in why:   # numpy's advice to allow pickles is not ours to give
            why = "it holds Python objects, which bench never unpickles"
        raise BenchError(f"{str(path)!r} is not a readable bench summary ({why})") from None
    if meta.get("format") != FORMAT:
        raise BenchError(f"{str(path)!r} is not a bench summary (format {meta.get('format')!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise BenchError(f"{str(path)!r} has summary format version {meta.get('format_version')}; this bench reads "
                         f"version {FORMAT_VERSION}: summarise the dataset again")
    stats: dict[str, dict[str, Any]] = {m: dict(v) for m, v in meta.get("values", {}).items()}
    for key, value in arrays.items():
        method, _, name = key.partition("/")
        stats.setdefault(method, {})[name] = value
    return SavedSummary(dataset=meta["dataset"], features=meta["features"], methods=meta["methods"],
                        statistics=stats, bench_version=meta.get("bench_version", ""),
                        created=meta.get("created", ""), path=path)


def _first_difference(saved: Any, current: Any, where: str) -> str | None:
    if isinstance(saved, dict) and isinstance(current, dict):
        for key in sorted(set(saved) | set(current)):
            found = _first_difference(saved.get(key), current.get(key), f"{where}.{key}")
            if found:
                return found
        return None
    return None if saved == current else f"{where}: saved {saved!r}, now {current!r}"


def check_matches(summary: SavedSummary, *, features: dict[str, Any], methods: dict[str, dict[str, Any]]) -> None:
    """ONE-line BenchError naming the first thing that differs between the saved summary and the
    comparison about to be made (extractor cache key, precision, a method's version or parameters)."""
    name = summary.path.name if summary.path else "the saved summary"
    diff = _first_difference(summary.features, jsonable(features), "features")
    if diff:
        raise BenchError(f"{name} was made with other features ({diff}); summarise again with the same "
                         "--extractor, --weights and --precision, or compare with those")
    for method, info in methods.items():
        if method not in summary.methods:
            raise BenchError(f"{name} holds no summary for method {method!r} (it has: "
                             f"{', '.join(summary.methods) or 'none'}); pass --methods "
                             f"{','.join(summary.methods)} or summarise again with --methods {method}")
        diff = _first_difference(summary.methods[method], jsonable(info), method)
        if diff:
            raise BenchError(f"{name}: {diff}; summarise again with the same method version and --set values")
