"""Datasets stored as webdataset tar shards (``wds:DIR`` or a brace pattern) or as a Hugging Face
``datasets`` dataset saved locally (``hf:PATH``: ``save_to_disk`` output, or parquet files).

Both are read in place, never unpacked. Tar shards are indexed once at load (member headers
only: name, offset, size; data is skipped), so image ``i`` is one seek and one read; an HF
dataset is Arrow, memory-mapped by ``datasets``. Either way the source is random-access, so the
data pipeline splits its rows over DataLoader workers and the FeatureStore over torchrun ranks
exactly as for folders, and results do not depend on either count.

webdataset layout: a sample is the members sharing a key (the name up to its first dot):
``KEY.jpg|jpeg|png|webp`` the image, ``KEY.cls`` an integer label, ``KEY.json`` metadata whose
``label``/``cls`` is the label and ``group`` the sub-dataset. HF: the first ``Image`` column (or one
named ``image``/``img``), labels from a ``ClassLabel`` column (or ``label``/``labels``), groups
from a ``group`` column.

Errors are one line: a shard that is not a readable tar (or is gzip-compressed, or is not a
regular file), a sample without an image, a label that is neither an integer nor a class name,
a member over its size budget, a brace pattern naming more than ``MAX_SHARDS`` shards, an
``hf:`` path that is neither a saved dataset nor parquet, an image that does not decode (naming
the shard and member, or the row).

Labels become dense indices 0..K−1 into their sorted unique values (integers, or strings as
class names); −1 (or no label) is unlabelled. Nothing is ever allocated by a label's value.
An image member is decoded straight from its byte range of the shard, never read whole first.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import re
import tarfile
from pathlib import Path

import numpy as np

from bench.datasets.base import DatasetSpec, ImageSource
from bench.errors import BenchError, DataError

WDS_PREFIX, HF_PREFIX = "wds:", "hf:"
IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp")
#: a brace pattern may name at most this many shards (a typo such as {0..999999999} would list 10^9)
MAX_SHARDS = 100_000
#: size budgets of the members bench reads: an image, and a .cls/.json label (read whole)
MAX_IMAGE_MEMBER_BYTES = 512 * 2**20
MAX_LABEL_MEMBER_BYTES = 2**20
GZIP_SUFFIXES = (".tar.gz", ".tgz")


def dense_labels(values: list, what: str) -> tuple[np.ndarray | None, list[str] | None]:
    """Labels (int, str or None per row) → dense indices into the sorted unique values, and those
    values as class names; (None, None) when no row is labelled. A label of 10**12 is one class
    like any other: nothing is allocated by value."""
    known = [v for v in values if v is not None]
    if not known:
        return None, None
    kinds = {type(v) for v in known}
    if len(kinds) > 1:
        a = next(v for v in known if isinstance(v, int))
        b = next(v for v in known if isinstance(v, str))
        raise DataError(f"{what}: labels mix integers and class names (e.g. {a!r} and {b!r}); use one kind")
    names = sorted(set(known))
    index = {v: k for k, v in enumerate(names)}
    return (np.asarray([-1 if v is None else index[v] for v in values], dtype=np.int64),
            [str(v) for v in names])


def _label(value, what: str):
    """One label value → int, str or None (unlabelled: None, -1, NaN); anything else is one line."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (float, np.floating)):
        if np.isnan(value):
            return None
        if float(value).is_integer():
            value = int(value)
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        value = int(value)
        if value == -1:
            return None
        if value < 0:
            raise DataError(f"{what}: label {value} is negative (-1 means unlabelled)")
        return value
    raise DataError(f"{what}: label {value!r} is neither an integer nor a class name")


def stream_spec(name: str) -> DatasetSpec:
    """Spec for ``wds:…`` or ``hf:…`` (resolved by name, not registered)."""
    if name.startswith(WDS_PREFIX):
        where = name[len(WDS_PREFIX):]
        if not where:
            raise BenchError("wds: needs a folder of .tar shards or a brace pattern, e.g. wds:/data/shards "
                             "or wds:/data/train-{000000..000099}.tar")
        return DatasetSpec(name=name, description=f"webdataset tar shards {where}",
                           load=lambda seed=0, **kw: wds_source(where, name=name),
                           ready=lambda: None if shard_paths(where, check=False) else f"no .tar shards at {where}")
    where = name[len(HF_PREFIX):]
    if not where:
        raise BenchError("hf: needs a folder written by datasets' save_to_disk, or parquet file(s), "
                         "e.g. hf:/data/my_dataset")
    return DatasetSpec(name=name, description=f"Hugging Face dataset saved at {where}",
                       load=lambda seed=0, **kw: hf_source(where, name=name),
                       ready=lambda: None if Path(where).expanduser().exists() else f"{where} does not exist")


# --------------------------------------------------------------------------- webdataset


def _brace_count(pattern: str) -> int:
    """How many names ``_braces(pattern)`` gives, counted without listing them."""
    m = re.search(r"\{([^{}]*)\}", pattern)
    if not m:
        return 1
    body, head, tail = m.group(1), pattern[:m.start()], pattern[m.end():]
    rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if rng:
        a, b = rng.groups()
        return max(0, int(b) - int(a) + 1) * _brace_count(head + a + tail)
    return sum(_brace_count(head + item + tail) for item in body.split(","))


def _braces(pattern: str) -> list[str]:
    """Expand ``{000..009}`` ranges and ``{a,b}`` lists (webdataset's shard notation); more than
    ``MAX_SHARDS`` names is one line (counted before any is listed)."""
    count = _brace_count(pattern)
    if count > MAX_SHARDS:
        raise BenchError(f"wds: {pattern} names {count:,} shards, more than {MAX_SHARDS:,}; a typo in a "
                         "{first..last} range?")
    return _expand(pattern)


def _expand(pattern: str) -> list[str]:
    m = re.search(r"\{([^{}]*)\}", pattern)
    if not m:
        return [pattern]
    body, head, tail = m.group(1), pattern[:m.start()], pattern[m.end():]
    rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if rng:
        a, b = rng.groups()
        items = [str(i).zfill(len(a)) for i in range(int(a), int(b) + 1)]
    else:
        items = body.split(",")
    return [p for item in items for p in _expand(head + item + tail)]


def shard_paths(where: str, *, check: bool = True) -> list[str]:
    """The shard files: every ``*.tar`` in a folder (sorted), or a brace pattern's expansion.

    ``check``: a missing shard, a shard that is not a regular file (a FIFO would block the read),
    or gzip-compressed shards in the folder are one line; without it they are left out.
    """
    from bench.datasets.real import not_regular

    path = Path(where).expanduser()
    if path.is_dir():
        shards = sorted(glob.glob(str(path / "*.tar")))
        packed = sorted(p for sfx in GZIP_SUFFIXES for p in glob.glob(str(path / f"*{sfx}")))
        if packed and check:
            raise BenchError(f"wds: {path} holds {len(packed)} gzip-compressed shard(s) (first: "
                             f"{os.path.basename(packed[0])}); bench reads uncompressed .tar shards in place: "
                             "gunzip them")
    elif "{" in where:
        shards = [str(Path(p).expanduser()) for p in _braces(where)]
        missing = [p for p in shards if not os.path.lexists(p)]
        if missing and check:
            raise BenchError(f"wds: {len(missing)} of {len(shards)} shards of {where} are missing "
                             f"(first: {missing[0]})")
    else:
        shards = [str(path)] if os.path.lexists(path) else []
    kinds = {p: not_regular(p) for p in shards}
    odd = [p for p, kind in kinds.items() if kind is not None]
    if odd and check:
        raise BenchError(f"wds: shard {odd[0]} is {kinds[odd[0]]}; shards must be regular .tar files")
    shards = [p for p in shards if kinds[p] is None]
    if not shards and check:
        raise BenchError(f"wds: no .tar shards at {where}; give a folder of shards or a pattern such as "
                         "/data/train-{000000..000099}.tar")
    return shards


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _index_shard(shard: str) -> dict[str, dict[str, tuple[int, int]]]:
    """{sample key: {suffix: (data offset, size)}} from the tar headers (data is skipped). An image
    or label member over its size budget is one line here, before anything is read."""
    samples: dict[str, dict[str, tuple[int, int]]] = {}
    try:
        with open(shard, "rb") as fh:
            if fh.read(2) == b"\x1f\x8b":
                raise BenchError(f"wds: shard {shard} is gzip-compressed; bench reads uncompressed .tar shards in "
                                 "place: gunzip it")
        with tarfile.open(shard, mode="r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                folder, base = os.path.split(member.name)
                if base.startswith(".") or "." not in base:
                    continue
                stem, suffix = base.split(".", 1)   # webdataset: the key ends at the first dot
                suffix = suffix.lower()
                budget = MAX_IMAGE_MEMBER_BYTES if suffix in IMAGE_SUFFIXES else \
                    MAX_LABEL_MEMBER_BYTES if suffix in ("cls", "json") else None
                if budget is not None and member.size > budget:
                    raise DataError(f"wds: {shard}:{member.name} is {_size(member.size)}, over the {_size(budget)} "
                                    f"bench reads for one .{suffix} member; remove or re-encode it")
                key = f"{folder}/{stem}" if folder else stem
                samples.setdefault(key, {})[suffix] = (member.offset_data, member.size)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise BenchError(f"wds: shard {shard} is not a readable tar file ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}); re-create or remove it") from None
    return samples


def _read_member(shard: str, offset: int, size: int) -> bytes:
    with open(shard, "rb") as f:
        f.seek(offset)
        data = f.read(size)
    if len(data) != size:
        raise DataError(f"wds: shard {shard} is truncated (a member ends past the end of the file)")
    return data


class _Member(io.RawIOBase):
    """Bytes ``[offset, offset + size)`` of an open shard as a seekable, read-only file: PIL
    decodes a member from it without the member being read into memory first."""

    def __init__(self, fh, offset: int, size: int):
        super().__init__()
        self._fh, self._start, self._size, self._pos = fh, offset, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = 0) -> int:
        self._pos = max(0, pos + (0, self._pos, self._size)[whence])
        return self._pos

    def readinto(self, b) -> int:
        n = max(0, min(len(b), self._size - self._pos))
        if n == 0:
            return 0
        self._fh.seek(self._start + self._pos)
        got = self._fh.readinto(memoryview(b)[:n])
        self._pos += got
        return got


def _decode_member(shard: str, offset: int, size: int, what: str, out_size: int | None) -> np.ndarray:
    """One image member decoded from its byte range of the shard (a bounded stream)."""
    from bench.datasets.real import read_image

    try:
        fh = open(shard, "rb")
    except OSError as e:
        raise DataError(f"wds: cannot read shard {shard}: {e.strerror or e}") from None
    with fh:
        if os.fstat(fh.fileno()).st_size < offset + size:
            raise DataError(f"wds: shard {shard} is truncated (a member ends past the end of the file)")
        return read_image(io.BufferedReader(_Member(fh, offset, size)), out_size, what=what)


def _decode(data: bytes, what: str, size: int | None) -> np.ndarray:
    """``read_image`` on in-memory bytes; its one-line error names ``what`` (shard:member or row)."""
    from bench.datasets.real import read_image

    return read_image(io.BytesIO(data), size, what=what)


def wds_source(where: str, *, name: str | None = None, size: int = 256) -> ImageSource:
    from bench.datasets.real import DECODE_REVISION

    shards = shard_paths(where)
    rows: list[tuple[int, str, tuple[int, int]]] = []
    labels: list[int | str | None] = []
    groups: list[str | None] = []
    h = hashlib.sha256(f"wds|size={size}|pixels=native|{DECODE_REVISION}".encode())
    for s, shard in enumerate(shards):
        for key, members in _index_shard(shard).items():
            image = next((sfx for sfx in IMAGE_SUFFIXES if sfx in members), None)
            if image is None:
                raise BenchError(f"wds: sample {key!r} in shard {shard} has no image member "
                                 f"(expected {key}.jpg|png|webp; found {', '.join(sorted(members)) or 'nothing'})")
            label, group = None, None
            if "cls" in members:
                text = _read_member(shard, *members["cls"]).decode(errors="replace").strip()
                if not re.fullmatch(r"-?\d+", text):
                    raise DataError(f"wds: {shard}:{key}.cls is {text[:40]!r}, not an integer label")
                label = _label(int(text), f"wds: {shard}:{key}.cls")
            if "json" in members:
                try:
                    meta = json.loads(_read_member(shard, *members["json"]))
                except ValueError:
                    raise BenchError(f"wds: {shard}:{key}.json is not valid JSON") from None
                if isinstance(meta, dict):
                    lab = meta.get("label", meta.get("cls"))
                    if lab is not None:
                        label = _label(lab, f"wds: {shard}:{key}.json")
                    group = meta.get("group") if isinstance(meta.get("group"), str) else None
            rows.append((s, f"{key}.{image}", members[image]))
            labels.append(label)
            groups.append(group)
            h.update(f"{os.path.basename(shard)}|{key}.{image}|{members[image][1]}\n".encode())
    if not rows:
        raise DataError(f"wds: the shards at {where} hold no samples")

    def native(i: int, size: int | None = None) -> np.ndarray:
        s, member, (offset, length) = rows[i]
        return _decode_member(shards[s], offset, length, f"{shards[s]}:{member}", size)

    def encoded(i: int) -> bytes:
        s, _, (offset, length) = rows[i]
        return _read_member(shards[s], offset, length)

    lab, class_names = dense_labels(labels, f"wds: {where}")
    group_names = sorted({g for g in groups if g is not None})
    return ImageSource(
        name=name or f"{WDS_PREFIX}{where}", revision=h.hexdigest()[:16], n=len(rows),
        loader=lambda i: native(i, size), native=native, encoded=encoded,
        ids=[f"{os.path.basename(shards[s])}:{m}" for s, m, _ in rows],
        labels=lab, class_names=class_names,
        groups=np.asarray([group_names.index(g) if g in group_names else 0 for g in groups], dtype=np.int64)
        if group_names else None,
        group_names=group_names or None,
        notes={"shards": len(shards), "unlabelled": -1, "image_size": size},
    )


# --------------------------------------------------------------------------- Hugging Face datasets


def _no_data_files(state: Path) -> bool:
    """Whether a save_to_disk ``state.json`` lists no Arrow files (a 0-row dataset, which
    ``load_from_disk`` fails to open with an IndexError)."""
    try:
        return json.loads(state.read_text()).get("_data_files") == []
    except (OSError, ValueError, AttributeError):
        return False


def _load_hf(path: Path):
    try:
        import datasets
    except ImportError:
        raise BenchError("hf: needs the 'datasets' package (pip install 'bench[hf]' or pip install datasets)") \
            from None
    from bench.datasets.real import not_regular

    if not path.is_dir() and not_regular(path) is not None:
        raise BenchError(f"hf: {path} is {not_regular(path)}; give a saved dataset folder or parquet file(s)")
    parquet = sorted(glob.glob(str(path / "**" / "*.parquet"), recursive=True)) if path.is_dir() else \
        ([str(path)] if path.suffix == ".parquet" else [])
    odd = next((p for p in parquet if not_regular(p) is not None), None)
    if odd is not None:
        raise BenchError(f"hf: {odd} is {not_regular(odd)}; parquet files must be regular files")
    if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "state.json").exists()
                          or (path / "dataset_dict.json").exists()):
        if _no_data_files(path / "state.json"):
            raise DataError(f"hf: {path} has no rows")
        try:
            ds = datasets.load_from_disk(str(path))
        except Exception as e:  # noqa: BLE001 - datasets raises many kinds; all mean "not a saved dataset"
            detail = str(e).splitlines()[0][:200] if str(e) else ""
            raise BenchError(f"hf: {path} is not a dataset saved with save_to_disk ({type(e).__name__}"
                             f"{': ' + detail if detail else ''})") from None
        if isinstance(ds, datasets.DatasetDict):
            if not ds:
                raise BenchError(f"hf: {path} holds no splits (its dataset_dict.json lists none)")
            split = "train" if "train" in ds else sorted(ds)[0]
            ds = ds[split]
        return ds
    if parquet:
        try:
            return datasets.load_dataset("parquet", data_files=parquet, split="train")
        except Exception as e:  # noqa: BLE001 - arrow raises many kinds; all mean "not readable parquet"
            raise BenchError(f"hf: cannot read the parquet files under {path} ({type(e).__name__})") from None
    raise BenchError(f"hf: {path} is neither a dataset saved with save_to_disk (no dataset_info.json / "
                     "state.json) nor parquet file(s)")


def _hf_labels(ds, column: str, feat, path: Path) -> tuple[np.ndarray | None, list[str] | None]:
    """A ``ClassLabel`` column as is (checked against its names; -1 is unlabelled); any other label
    column (integers, class-name strings, None for unlabelled) through :func:`dense_labels`."""
    import datasets

    what = f"hf: {path} column {column!r}"
    values = ds[column]
    if isinstance(feat, datasets.ClassLabel):
        try:
            labels = np.asarray([-1 if v is None else v for v in values], dtype=np.int64)
        except (TypeError, ValueError, OverflowError):
            raise DataError(f"{what}: ClassLabel values must be integers") from None
        bad = (labels < -1) | (labels >= len(feat.names))
        if bad.any():
            raise DataError(f"{what}: label {int(labels[bad][0])} is outside its {len(feat.names)} class names")
        return (labels, list(feat.names)) if (labels >= 0).any() else (None, None)
    return dense_labels([_label(v, what) for v in values], what)


def hf_source(where: str, *, name: str | None = None, size: int = 256) -> ImageSource:
    import datasets

    from bench.datasets.real import DECODE_REVISION

    path = Path(where).expanduser()
    if not os.path.lexists(path):
        raise BenchError(f"hf: {path} does not exist")
    ds = _load_hf(path)
    if len(ds) == 0:
        raise DataError(f"hf: {path} has no rows")
    features = ds.features
    image_col = next((c for c, f in features.items() if isinstance(f, datasets.Image)), None)
    image_col = image_col or next((c for c in ("image", "img") if c in features), None)
    if image_col is None:
        raise BenchError(f"hf: {path} has no image column (columns: {', '.join(features)})")
    label_col = next((c for c, f in features.items() if isinstance(f, datasets.ClassLabel)), None)
    label_col = label_col or next((c for c in ("label", "labels") if c in features), None)
    raw = ds.cast_column(image_col, datasets.Image(decode=False)) if isinstance(features[image_col],
                                                                                 datasets.Image) else ds
    labels = class_names = groups = group_names = None
    if label_col is not None:
        labels, class_names = _hf_labels(ds, label_col, features[label_col], path)
    if "group" in features:
        vals = [str(v) for v in ds["group"]]
        group_names = sorted(set(vals))
        groups = np.asarray([group_names.index(v) for v in vals], dtype=np.int64)
    fingerprint = getattr(ds, "_fingerprint", "") or ""

    def native(i: int, size: int | None = None) -> np.ndarray:
        cell = raw[int(i)][image_col]
        what = f"{path} row {i}"
        if isinstance(cell, dict) and cell.get("bytes") is not None:
            cell = cell["bytes"]
        elif isinstance(cell, dict) and cell.get("path"):
            cell = cell["path"]
        if isinstance(cell, (bytes, bytearray, memoryview)):   # an Image column, or plain binary PNG/JPEG bytes
            return _decode(bytes(cell), what, size)
        if isinstance(cell, str) and cell:
            from bench.datasets.real import read_image

            return read_image(cell, size)
        raise DataError(f"hf: {what} has no image bytes or path (column {image_col!r} holds "
                        f"{type(cell).__name__})")

    def encoded(i: int) -> bytes:
        cell = raw[int(i)][image_col]
        if isinstance(cell, dict) and cell.get("bytes") is not None:
            return cell["bytes"]
        if isinstance(cell, dict) and cell.get("path"):
            try:
                return Path(cell["path"]).read_bytes()
            except OSError as e:
                raise DataError(f"cannot read image {cell['path']} ({path} row {i}): {e.strerror or e}") from None
        raise DataError(f"hf: {path} row {i} has no image bytes or path")

    return ImageSource(
        name=name or f"{HF_PREFIX}{where}",
        revision=hashlib.sha256(f"hf|{fingerprint}|{len(ds)}|size={size}|pixels=native|{DECODE_REVISION}"
                                .encode()).hexdigest()[:16],
        n=len(ds), loader=lambda i: native(i, size), native=native, encoded=encoded,
        ids=[str(i) for i in range(len(ds))],
        labels=labels, class_names=class_names, groups=groups, group_names=group_names,
        notes={"image_size": size, "image_column": image_col},
    )
