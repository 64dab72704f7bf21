"""Dataset registry helpers: name → spec resolution, stratified ``--limit``, unreadable files.

The registered specs live in :mod:`bench.datasets.builtin`; ``imagefolder:PATH``,
``synth-scale:N``, ``wds:DIR`` (webdataset tar shards) and ``hf:PATH`` (a Hugging Face dataset
saved locally, or parquet files) are not registered but resolved by :func:`get_spec` from their prefix.
"""

from __future__ import annotations

import numpy as np

from bench.datasets.base import DatasetSpec, ImageSource, content_revision
from bench.errors import BenchError, DataError

IMAGEFOLDER_PREFIX = "imagefolder:"
FOLDER_PREFIX = "folder:"
WDS_PREFIX = "wds:"
HF_PREFIX = "hf:"


def resolve(name: str) -> DatasetSpec | None:
    """A spec built from the name itself (``imagefolder:PATH`` with class sub-folders, ``folder:PATH``
    unlabelled), or None for registry names."""
    if name.startswith(IMAGEFOLDER_PREFIX):
        from bench.datasets.real import imagefolder_spec

        path = name[len(IMAGEFOLDER_PREFIX):]
        if not path:
            raise BenchError("imagefolder: needs a folder, e.g. imagefolder:/data/my_images "
                             "(laid out as <folder>/<class>/<image>.jpg)")
        return imagefolder_spec(path)
    if name.startswith(FOLDER_PREFIX):
        from bench.datasets.real import folder_spec

        path = name[len(FOLDER_PREFIX):]
        if not path:
            raise BenchError("folder: needs a folder, e.g. folder:/data/production_images")
        return folder_spec(path)
    if name.startswith("synth-scale:"):
        from bench.datasets.synth import synth_scale_spec

        return synth_scale_spec(name)
    if name.startswith(WDS_PREFIX) or name.startswith(HF_PREFIX):
        from bench.datasets.streams import stream_spec

        return stream_spec(name)
    return None


def get_spec(registry, name: str) -> DatasetSpec:
    """The spec for ``name``: ``imagefolder:PATH`` or a registered name (unknown → did-you-mean)."""
    return resolve(name) or registry.get(name)


def concat(a: ImageSource, b: ImageSource, *, names: tuple[str, str] = ("A", "B")) -> ImageSource:
    """A ∪ B as one source: rows of ``a`` then ``b``, ``groups`` 0 / 1 named ``names``, labels
    merged by class name (a class of one side only keeps its name), duplicates and concepts dropped."""
    labels = class_names = None
    if a.labels is not None and b.labels is not None and a.class_names and b.class_names:
        class_names = sorted(set(a.class_names) | set(b.class_names))
        remap = [np.asarray([class_names.index(c) for c in s.class_names], dtype=np.int64) for s in (a, b)]
        labels = np.concatenate([np.where(s.labels >= 0, r[np.clip(s.labels, 0, None)], -1)
                                 for s, r in zip((a, b), remap)])

    def load(i: int) -> np.ndarray:
        return a.image(i) if i < a.n else b.image(i - a.n)

    array = None
    if a.array is not None and b.array is not None and a.array.shape[1:] == b.array.shape[1:]:
        array = np.concatenate([a.array, b.array])

    def native(i: int) -> np.ndarray:
        side, j = (a, i) if i < a.n else (b, i - a.n)
        return side.native(j) if side.native is not None else side.image(j)

    # without one array, images may differ in size (28 px vs 32 px, two folders): each is resized
    # once from its own pixels by the extractor's transform, as either side alone would be
    return ImageSource(
        name=f"{a.name} + {b.name}", revision=content_revision(extra=f"{a.revision}+{b.revision}"),
        n=a.n + b.n, array=array, loader=None if array is not None else load,
        native=None if array is not None else native,
        ids=[f"{names[0]}/{x}" for x in (a.ids or map(str, range(a.n)))]
        + [f"{names[1]}/{x}" for x in (b.ids or map(str, range(b.n)))],
        labels=labels, class_names=class_names,
        groups=np.repeat(np.array([0, 1], dtype=np.int64), [a.n, b.n]), group_names=list(names),
        notes={"parts": [a.name, b.name]},
    )


def load_source(spec: DatasetSpec, limit_n: int | None = None) -> ImageSource:
    """A dataset's images as a run uses them: loaded with seed 0, then the stratified, seeded
    ``--limit`` subsample. The report re-loads images the same way, so they match the records."""
    source = spec.load(seed=0)
    if limit_n is not None and limit_n < source.n:
        source = limit(source, limit_n, seed=0)
    return source


def _strata(source: ImageSource) -> np.ndarray:
    """Stratum id per image: (label, group) when both exist, else label, else group, else one."""
    keys = [k for k in (source.labels, source.groups) if k is not None]
    if not keys:
        return np.zeros(source.n, dtype=np.int64)
    stacked = np.stack([np.asarray(k, dtype=np.int64) for k in keys], axis=1)
    return np.unique(stacked, axis=0, return_inverse=True)[1].reshape(-1)


def limit(source: ImageSource, n: int, seed: int = 0) -> ImageSource:
    """A seeded subsample of ``n`` images, stratified by label (and group when both exist).

    Each stratum gets its proportional share, rounded by largest remainder (ties broken
    by the seed), so class and group proportions are kept to within one image. Rows keep
    their original order. ``n >= source.n`` returns the source unchanged.
    """
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise BenchError(f"--limit must be a positive integer, got {n!r}")
    if n >= source.n:
        return source
    rng = np.random.default_rng(seed)
    strata = _strata(source)
    sizes = np.bincount(strata)
    quota = n * sizes / source.n
    take = np.floor(quota).astype(np.int64)
    short = n - int(take.sum())
    order = np.lexsort((rng.random(len(sizes)), -(quota - take)))   # largest remainder first
    take[order[:short]] += 1
    chosen = [rng.choice(np.flatnonzero(strata == s), size=int(k), replace=False)
              for s, k in enumerate(take) if k]
    return source.subset(np.sort(np.concatenate(chosen)), name=source.name)


def drop_unreadable(source: ImageSource, *, progress: bool = False) -> ImageSource:
    """Decode every image; return the source without the unreadable ones.

    The skipped files are listed in ``notes["skipped_files"]`` (id and reason) so a run
    can report them. Raises DataError when no image is readable. In-memory sources are
    returned unchanged.
    """
    if source.array is not None:
        return source
    from bench.progress import track

    good, skipped = [], []
    for i in track(range(source.n), description=f"checking {source.name}", enabled=progress):
        try:
            source.image(i)
            good.append(i)
        except DataError as e:
            skipped.append({"id": source.ids[i] if source.ids else str(i), "error": str(e)})
    if not skipped:
        return source
    if not good:
        raise DataError(f"{source.name}: none of its {source.n} images can be read (first: {skipped[0]['error']})")
    out = source.subset(np.asarray(good), name=source.name)
    out.notes["skipped_files"] = skipped
    return out


__all__ = ["DatasetSpec", "ImageSource", "concat", "drop_unreadable", "get_spec", "limit", "load_source", "resolve"]
