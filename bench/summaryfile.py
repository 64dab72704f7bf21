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
import re
import stat
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bench.errors import BenchError
from bench.runstore import jsonable, save_npz_atomic

FORMAT = "bench-summary"
#: 2: comparators with a state path also save A's block states (``state.*``) and their context
FORMAT_VERSION = 2
READS = (1, 2)
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


#: the most a saved summary may ask us to hold: per member and in all (a 3 MB zip can declare 3 GB)
MEMBER_BUDGET = 2**30
TOTAL_BUDGET = 4 * 2**30
#: a JSON document larger than this is not a summary's description
META_BUDGET = 64 * 2**20
_MEMBER = re.compile(r"^[A-Za-z0-9_.:+-]+/[A-Za-z0-9_.:+-]+\.npy$")
_REVISION = re.compile(r"^[0-9a-f]{8,64}$")


class _Dataset(BaseModel):
    """The part of ``__meta__`` that names A (its revision goes into record paths)."""

    model_config = ConfigDict(extra="allow", strict=True)
    name: str = Field(min_length=1, max_length=500)
    revision: str = Field(pattern=_REVISION.pattern)
    n: int = Field(ge=2, le=10**12)
    limit: int | None = None
    embedded: bool = False
    spec: str = ""
    class_names: list[str] | None = None


class _Method(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    version: str
    params: dict[str, Any]


class _Meta(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    format: str
    format_version: int
    bench_version: str = ""
    created: str = ""
    dataset: _Dataset
    features: dict[str, Any]
    methods: dict[str, _Method]
    values: dict[str, dict[str, Any]] = Field(default_factory=dict)


def _fail(path: Path, why: str) -> BenchError:
    return BenchError(f"{str(path)!r} is not a readable bench summary ({why})")


def _npy_header(z: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> tuple[tuple, np.dtype]:
    """Shape and dtype from a member's .npy header, read without inflating the member."""
    with z.open(info) as f:
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"npy format version {version}")
        except (ValueError, OSError, EOFError) as exc:
            raise _fail(path, f"member {info.filename!r} has no valid array header: {exc}") from None
    if dtype.hasobject or dtype.kind not in "biuf":
        raise _fail(path, f"member {info.filename!r} holds {dtype} values, not numbers")
    return shape, dtype


def load(path: Path | str, methods: list[str] | None = None) -> SavedSummary:
    """Read a ``.bench`` file (no code runs); ONE-line BenchError when it is not a readable summary.

    The zip directory and every .npy header are checked against a budget before anything is
    inflated, the description is validated against a schema, and only the members of ``methods``
    (all by default) are read."""
    path = Path(path)
    try:
        st = path.stat()
    except OSError:
        raise BenchError(f"saved summary {str(path)!r} does not exist; make one with "
                         f"`bench summarise DATASET --save {path.name}`") from None
    if not stat.S_ISREG(st.st_mode):
        raise BenchError(f"saved summary {str(path)!r} is not a regular file")
    try:
        z = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError):
        raise _fail(path, "not an .npz archive") from None
    with z:
        infos = {i.filename: i for i in z.infolist()}
        if META + ".npy" not in infos:
            raise _fail(path, "no __meta__ member")
        meta_info = infos.pop(META + ".npy")
        if meta_info.file_size > META_BUDGET:
            raise _fail(path, f"its description is {meta_info.file_size:,} bytes")
        wanted: dict[str, zipfile.ZipInfo] = {}
        total = 0
        for name, info in infos.items():
            if not _MEMBER.match(name):
                raise _fail(path, f"unexpected member {name!r}")
            if methods is not None and name.partition("/")[0] not in methods:
                continue
            shape, dtype = _npy_header(z, info, path)
            size = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
            if size > MEMBER_BUDGET or info.file_size > MEMBER_BUDGET + 2**16:
                raise _fail(path, f"member {name!r} would take {max(size, info.file_size) / 2**20:,.0f} MiB "
                                  f"(at most {MEMBER_BUDGET / 2**20:,.0f} MiB)")
            total += size
            wanted[name] = info
        if total > TOTAL_BUDGET:
            raise _fail(path, f"its arrays would take {total / 2**30:.1f} GiB (at most {TOTAL_BUDGET / 2**30:.0f})")
        try:
            with z.open(meta_info) as f:
                raw = np.lib.format.read_array(f, allow_pickle=False)
            if raw.dtype != np.uint8 or raw.ndim != 1:
                raise ValueError("the description is not a byte string")
            meta_obj = json.loads(raw.tobytes().decode("utf-8"))
            arrays = {}
            for name, info in wanted.items():
                with z.open(info) as f:
                    arrays[name[: -len(".npy")]] = np.lib.format.read_array(f, allow_pickle=False)
        except (OSError, ValueError, EOFError, UnicodeDecodeError, zipfile.BadZipFile) as exc:
            why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if "pickle" in why:   # numpy's advice to allow pickles is not ours to give
                why = "it holds Python objects, which bench never unpickles"
            raise _fail(path, why) from None
    if not isinstance(meta_obj, dict) or meta_obj.get("format") != FORMAT:
        what = meta_obj.get("format") if isinstance(meta_obj, dict) else type(meta_obj).__name__
        raise BenchError(f"{str(path)!r} is not a bench summary (format {what!r})")
    version = meta_obj.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise _fail(path, f"field format_version: {version!r} is not an integer")
    if version not in READS:
        raise BenchError(f"{str(path)!r} has summary format version {version!r}; this bench reads version "
                         f"{', '.join(map(str, READS))}: summarise the dataset again")
    try:
        meta = _Meta.model_validate(meta_obj)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(x) for x in err["loc"])
        raise _fail(path, f"field {where}: {err['msg']}") from None
    stats: dict[str, dict[str, Any]] = {m: dict(v) for m, v in meta.values.items()
                                        if methods is None or m in methods}
    for key, value in arrays.items():
        method, _, name = key.partition("/")
        if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
            raise _fail(path, f"{key} contains NaN or inf")
        stats.setdefault(method, {})[name] = value
    return SavedSummary(dataset=meta.dataset.model_dump(), features=meta.features,
                        methods={k: v.model_dump() for k, v in meta.methods.items()},
                        statistics=stats, bench_version=meta.bench_version, created=meta.created, path=path)


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
    saved_ext, now_ext = summary.features.get("extractor"), features.get("extractor")
    if saved_ext != now_ext:
        raise BenchError(f"{name} was made with extractor {saved_ext!r}, this comparison uses {now_ext!r}; "
                         f"pass --extractor {saved_ext} or summarise again with --extractor {now_ext}")
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
