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

Errors are one line: a shard that is not a readable tar, a sample without an image, an ``hf:``
path that is neither a saved dataset nor parquet, an image that does not decode (naming the
shard and member, or the row).
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


def _braces(pattern: str) -> list[str]:
    """Expand ``{000..009}`` ranges and ``{a,b}`` lists (webdataset's shard notation)."""
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
    return [p for item in items for p in _braces(head + item + tail)]


def shard_paths(where: str, *, check: bool = True) -> list[str]:
    """The shard files: every ``*.tar`` in a folder (sorted), or a brace pattern's expansion."""
    path = Path(where).expanduser()
    if path.is_dir():
        shards = sorted(glob.glob(str(path / "*.tar")))
    elif "{" in where:
        shards = [str(Path(p).expanduser()) for p in _braces(where)]
        missing = [p for p in shards if not os.path.isfile(p)]
        if missing and check:
            raise BenchError(f"wds: {len(missing)} of {len(shards)} shards of {where} are missing "
                             f"(first: {missing[0]})")
    else:
        shards = [str(path)] if path.is_file() else []
    if not shards and check:
        raise BenchError(f"wds: no .tar shards at {where}; give a folder of shards or a pattern such as "
                         "/data/train-{000000..000099}.tar")
    return shards


def _index_shard(shard: str) -> dict[str, dict[str, tuple[int, int]]]:
    """{sample key: {suffix: (data offset, size)}} from the tar headers (data is skipped)."""
    samples: dict[str, dict[str, tuple[int, int]]] = {}
    try:
        with tarfile.open(shard, mode="r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                folder, base = os.path.split(member.name)
                if base.startswith(".") or "." not in base:
                    continue
                stem, suffix = base.split(".", 1)   # webdataset: the key ends at the first dot
                key = f"{folder}/{stem}" if folder else stem
                samples.setdefault(key, {})[suffix.lower()] = (member.offset_data, member.size)
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


def _decode(data: bytes, what: str, size: int | None) -> np.ndarray:
    """``read_image`` on in-memory bytes; its one-line error names ``what`` (shard:member or row)."""
    from bench.datasets.real import read_image

    buf = io.BytesIO(data)
    try:
        return read_image(buf, size)
    except DataError as e:
        raise DataError(str(e).replace(str(buf), what)) from None


def wds_source(where: str, *, name: str | None = None, size: int = 256) -> ImageSource:
    shards = shard_paths(where)
    rows: list[tuple[int, str, tuple[int, int]]] = []
    labels: list[int] = []
    groups: list[str | None] = []
    h = hashlib.sha256(f"wds|size={size}|pixels=native".encode())
    for s, shard in enumerate(shards):
        for key, members in _index_shard(shard).items():
            image = next((sfx for sfx in IMAGE_SUFFIXES if sfx in members), None)
            if image is None:
                raise BenchError(f"wds: sample {key!r} in shard {shard} has no image member "
                                 f"(expected {key}.jpg|png|webp; found {', '.join(sorted(members)) or 'nothing'})")
            label, group = -1, None
            if "cls" in members:
                text = _read_member(shard, *members["cls"]).decode(errors="replace").strip()
                label = int(text) if re.fullmatch(r"-?\d+", text) else -1
            if "json" in members:
                try:
                    meta = json.loads(_read_member(shard, *members["json"]))
                except ValueError:
                    raise BenchError(f"wds: {shard}:{key}.json is not valid JSON") from None
                if isinstance(meta, dict):
                    lab = meta.get("label", meta.get("cls"))
                    label = int(lab) if isinstance(lab, (int, np.integer)) else label
                    group = meta.get("group") if isinstance(meta.get("group"), str) else None
            rows.append((s, f"{key}.{image}", members[image]))
            labels.append(label)
            groups.append(group)
            h.update(f"{os.path.basename(shard)}|{key}.{image}|{members[image][1]}\n".encode())
    if not rows:
        raise DataError(f"wds: the shards at {where} hold no samples")

    def native(i: int, size: int | None = None) -> np.ndarray:
        s, member, (offset, length) = rows[i]
        what = f"{shards[s]}:{member}"
        return _decode(_read_member(shards[s], offset, length), what, size)

    def encoded(i: int) -> bytes:
        s, _, (offset, length) = rows[i]
        return _read_member(shards[s], offset, length)

    lab = np.asarray(labels, dtype=np.int64)
    has_labels = bool((lab >= 0).any())
    group_names = sorted({g for g in groups if g is not None})
    return ImageSource(
        name=name or f"{WDS_PREFIX}{where}", revision=h.hexdigest()[:16], n=len(rows),
        loader=lambda i: native(i, size), native=native, encoded=encoded,
        ids=[f"{os.path.basename(shards[s])}:{m}" for s, m, _ in rows],
        labels=lab if has_labels else None,
        class_names=[str(k) for k in range(int(lab.max()) + 1)] if has_labels else None,
        groups=np.asarray([group_names.index(g) if g in group_names else 0 for g in groups], dtype=np.int64)
        if group_names else None,
        group_names=group_names or None,
        notes={"shards": len(shards), "unlabelled": -1, "image_size": size},
    )


# --------------------------------------------------------------------------- Hugging Face datasets


def _load_hf(path: Path):
    try:
        import datasets
    except ImportError:
        raise BenchError("hf: needs the 'datasets' package (pip install 'bench[hf]' or pip install datasets)") \
            from None
    parquet = sorted(glob.glob(str(path / "**" / "*.parquet"), recursive=True)) if path.is_dir() else \
        ([str(path)] if path.suffix == ".parquet" else [])
    if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "state.json").exists()
                          or (path / "dataset_dict.json").exists()):
        try:
            ds = datasets.load_from_disk(str(path))
        except (FileNotFoundError, ValueError, OSError) as e:
            raise BenchError(f"hf: {path} is not a dataset saved with save_to_disk ({type(e).__name__})") from None
        if isinstance(ds, datasets.DatasetDict):
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


def hf_source(where: str, *, name: str | None = None, size: int = 256) -> ImageSource:
    import datasets

    path = Path(where).expanduser()
    if not path.exists():
        raise BenchError(f"hf: {path} does not exist")
    ds = _load_hf(path)
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
        labels = np.asarray(ds[label_col], dtype=np.int64)
        feat = features[label_col]
        class_names = list(feat.names) if isinstance(feat, datasets.ClassLabel) else \
            [str(k) for k in range(int(labels.max()) + 1)]
    if "group" in features:
        vals = [str(v) for v in ds["group"]]
        group_names = sorted(set(vals))
        groups = np.asarray([group_names.index(v) for v in vals], dtype=np.int64)
    fingerprint = getattr(ds, "_fingerprint", "") or ""

    def native(i: int, size: int | None = None) -> np.ndarray:
        cell = raw[int(i)][image_col]
        what = f"{path} row {i}"
        if isinstance(cell, dict) and cell.get("bytes") is not None:
            return _decode(cell["bytes"], what, size)
        if isinstance(cell, dict) and cell.get("path"):
            from bench.datasets.real import read_image

            return read_image(cell["path"], size)
        raise DataError(f"hf: {what} has no image bytes or path")

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
        revision=hashlib.sha256(f"hf|{fingerprint}|{len(ds)}|size={size}|pixels=native".encode()).hexdigest()[:16],
        n=len(ds), loader=lambda i: native(i, size), native=native, encoded=encoded,
        ids=[str(i) for i in range(len(ds))],
        labels=labels, class_names=class_names, groups=groups, group_names=group_names,
        notes={"image_size": size, "image_column": image_col},
    )
