"""The run store: the one owner of a run directory's on-disk format.

A run directory holds one JSON record per cell, at
``{root}/{dataset}@{rev}/{extractor}[+w{weights}][-{precision}]/{method}@{ver}/{config_hash}/seed{n}.json``
(``bench compare`` records under ``{root}/compare/{A}@{rev}--{B}@{rev}/…``),
with the cell's artefacts beside it (``seed{n}.artefacts.npz`` / ``.json``, arrays and JSON only,
never pickles) and, for a crashed method, ``seed{n}.traceback.txt``. Every write is atomic
(temp file named with the process id, then ``os.replace``); every read is tolerant (a corrupt
file is listed in ``problems``, never fatal). The runner, the leaderboard, the report, resume
and the feature store all go through here; nothing else writes or globs run files.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.errors import BenchError
from bench.records import Record

#: a record file name: ``seed0.json``, ``seed-1.json``; an error kept beside an ok record adds ``.error``
RECORD_NAME = re.compile(r"seed-?\d+\.json")
ERROR_NAME = re.compile(r"seed-?\d+\.error\.json")


#: characters that end or break a path component (the separator, NUL), and ':' as always
_UNSAFE = re.compile(r"[/:\x00]")
#: longer components (in bytes) are shortened with a hash: file systems stop at 255, so only a
#: name that could never be written changes
_MAX_COMPONENT = 255


def safe_name(name: str) -> str:
    """Any name as ONE harmless path component (``imagefolder:/a/b`` → ``imagefolder__a_b``).

    A dataset name, revision or version may come from a file a user was handed: separators
    become ``_``, ``.``/``..``/empty become underscores, and an over-long name keeps a hash, so
    no component can leave or break its folder. Ordinary names map as they always did."""
    text = _UNSAFE.sub("_", str(name))
    if text.strip(".") == "":
        text = "_" * max(len(text), 1)
    if len(text.encode("utf-8", "surrogatepass")) > _MAX_COMPONENT:
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        text = text.encode("utf-8", "surrogatepass")[:_MAX_COMPONENT - 17].decode("utf-8", "ignore") + "-" + digest
    return text


def inside(root: Path, path: Path) -> Path:
    """``path`` when it lies under ``root`` (compared lexically, so a user's own symlinks still
    work), else a one-line BenchError: nothing bench writes may land outside its root."""
    root_n, path_n = os.path.normpath(os.path.abspath(root)), os.path.normpath(os.path.abspath(path))
    if os.path.commonpath([root_n, path_n]) != root_n:
        raise BenchError(f"refusing to write {str(path)!r}: it lies outside {str(root)!r}")
    return Path(path)


def _write_failed(tmp: Path, path: Path, exc: BaseException) -> None:
    """Remove a half-written temp file; a full disk or file-size limit becomes one line."""
    try:
        tmp.unlink(missing_ok=True)
    except OSError:
        pass
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", -1)):
        raise BenchError(f"disk full or file too large: cannot write {str(path)!r} "
                         f"({exc.strerror or exc}); nothing was replaced") from exc


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write ``data`` so readers see the old file or the whole new one (temp name carries the pid);
    a failed write leaves no temp file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    mode = "wb" if isinstance(data, bytes) else "w"
    try:
        with open(tmp, mode, **({} if isinstance(data, bytes) else {"encoding": "utf-8"})) as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:   # also Ctrl-C: never leave the temp file
        _write_failed(tmp, path, exc)
        raise


def save_npz_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez_compressed`` through a temp file (see :func:`write_atomic`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    try:
        np.savez_compressed(tmp, **arrays)
        os.replace(tmp, path)
    except BaseException as exc:
        _write_failed(tmp, path, exc)
        raise


def check_writable_dir(path: Path, what: str) -> Path:
    """``path`` as a directory we can create and write, or ONE line saying why not (checked before any work)."""
    path = Path(path)
    for parent in (path, *path.parents):
        if parent.exists():
            if not parent.is_dir():
                raise BenchError(f"{what} {str(path)!r} cannot be a directory: {str(parent)!r} is a file")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise BenchError(f"{what} {str(path)!r} is not writable ({str(parent)!r} is read-only)")
            break
    return path


def record_dir(root: Path, record: Record) -> Path:
    """The folder of a record's seeds: everything that must match for resume, except the seed.

    Every component goes through :func:`safe_name` (a revision or version read from a saved
    summary is as untrusted as a name) and the result must lie under ``root``."""
    features = safe_name(record.features.extractor)
    if record.features.weights:
        features += f"+w{safe_name(record.features.weights[:12])}"
    if record.features.precision != "fp32":
        features += f"-{safe_name(record.features.precision)}"
    data = f"{safe_name(record.dataset.name)}@{safe_name(record.dataset.revision)}"
    base = Path(root)
    if record.dataset_b is not None:   # bench compare A B: under compare/, A--B
        data = f"{data}--{safe_name(record.dataset_b.name)}@{safe_name(record.dataset_b.revision)}"
        base = base / "compare"
    method = f"{safe_name(record.method.name)}@{safe_name(record.method.version)}"
    return inside(root, base / safe_name(data) / safe_name(features) / safe_name(method)
                  / safe_name(record.config_hash))


def record_path(root: Path, record: Record) -> Path:
    return record_dir(root, record) / f"seed{int(record.seed)}.json"


def sidecar(record_file: Path, suffix: str) -> Path:
    """``seed0.json`` → ``seed0.{suffix}`` (artefacts, traceback, …)."""
    record_file = Path(record_file)
    return record_file.with_name(f"{record_file.stem}.{suffix}")


def artefact_dir(record_file: Path) -> Path:
    """Where a method may write files for the report (figures …)."""
    return sidecar(record_file, "files")


@dataclass
class Loaded:
    """Records read from a run directory: every readable one with its path, and what could not be read."""

    records: list[Record] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


class RunStore:
    """One run directory (``bench run --out``)."""

    def __init__(self, root: Path | str):
        self.root = Path(root)

    # -- records ------------------------------------------------------------------------------
    def path(self, record: Record) -> Path:
        return record_path(self.root, record)

    def save(self, record: Record) -> Path:
        """Write ``record`` atomically. An ``error`` record never replaces an ``ok`` one: it goes
        beside it as ``seed{n}.error.json``, so a failing rerun loses no result."""
        path = self.path(record)
        if record.status != "ok":
            old = self.read(path)
            if old is not None and old.status == "ok":
                path = sidecar(path, "error.json")
        elif sidecar(path, "error.json").exists():
            sidecar(path, "error.json").unlink(missing_ok=True)
        write_atomic(path, record.model_dump_json(indent=1) + "\n")
        return path

    @staticmethod
    def read(path: Path) -> Record | None:
        """The record at ``path``, or None when it is missing or unreadable."""
        try:
            return Record.model_validate_json(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError, UnicodeDecodeError):
            return None

    def finished(self, record: Record) -> Record | None:
        """The stored ``ok`` record of the same cell (for ``--resume``), else None."""
        old = self.read(self.path(record))
        return old if old is not None and old.status == "ok" else None

    def record_files(self) -> list[Path]:
        """Every record file under the root, in path order (errors kept beside ok records excluded)."""
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.rglob("seed*.json") if RECORD_NAME.fullmatch(p.name))

    def load(self) -> Loaded:
        """Every readable record (sorted by path, so the order is deterministic); unreadable ones in ``problems``."""
        out = Loaded()
        for p in self.record_files():
            try:
                out.records.append(Record.model_validate_json(p.read_text(encoding="utf-8")))
                out.paths.append(p)
            except (OSError, ValueError, UnicodeDecodeError) as exc:
                why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                out.problems.append(f"unreadable record {p.relative_to(self.root)}: {why}")
        return out

    # -- artefacts ----------------------------------------------------------------------------
    def save_artefacts(self, record_file: Path, artefacts: dict[str, Any], kind: str = "artefacts") -> None:
        """Arrays → ``seedN.{kind}.npz``, the JSON-able rest → ``seedN.{kind}.json`` (both atomic)."""
        arrays = {k: np.asarray(v) for k, v in artefacts.items() if isinstance(v, np.ndarray)}
        other = {k: v for k, v in artefacts.items() if k != "tables" and not isinstance(v, np.ndarray)}
        if arrays:
            save_npz_atomic(sidecar(record_file, f"{kind}.npz"), arrays)
        if other:
            write_atomic(sidecar(record_file, f"{kind}.json"), json.dumps(jsonable(other), indent=1, sort_keys=True))

    @staticmethod
    def load_artefacts(record_file: Path, kind: str = "artefacts") -> tuple[dict[str, Any], list[Path], list[str]]:
        """(values, files read, problems) of a record's artefacts; npz read with ``allow_pickle=False``."""
        values: dict[str, Any] = {}
        files, problems = [], []
        npz = sidecar(record_file, f"{kind}.npz")
        if npz.exists():
            try:
                with np.load(npz, allow_pickle=False) as z:
                    values.update({k: z[k] for k in z.files})
                files.append(npz)
            except (OSError, ValueError, EOFError) as exc:
                why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                problems.append(f"unreadable {npz.name}: {why}")
        js = sidecar(record_file, f"{kind}.json")
        if js.exists():
            try:
                loaded = json.loads(js.read_text(encoding="utf-8"))
                if isinstance(loaded, dict):
                    values.update(loaded)
                files.append(js)
            except (OSError, ValueError) as exc:
                problems.append(f"unreadable {js.name}: {str(exc).splitlines()[0]}")
        return values, files, problems

    def save_traceback(self, record_file: Path, text: str) -> Path:
        path = sidecar(record_file, "traceback.txt")
        write_atomic(path, text)
        return path


def jsonable(obj: Any) -> Any:
    """Numpy / torch / Path values → plain JSON types (params, tables, artefacts); non-finite floats → None."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    if isinstance(obj, Path) or type(obj).__name__ == "device":
        return str(obj)
    return repr(obj)
