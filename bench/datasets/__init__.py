"""Dataset registry helpers: name → spec resolution, stratified ``--limit``, unreadable files.

The registered specs live in :mod:`bench.datasets.builtin`; ``imagefolder:PATH``,
``synth-scale:N``, ``wds:DIR`` (webdataset tar shards) and ``hf:PATH`` (a Hugging Face dataset
saved locally, or parquet files) are not registered but resolved by :func:`get_spec` from their prefix.
"""

from __future__ import annotations

import numpy as np

from bench.datasets.base import DatasetSpec, ImageSource
from bench.errors import BenchError, DataError

IMAGEFOLDER_PREFIX = "imagefolder:"
WDS_PREFIX = "wds:"
HF_PREFIX = "hf:"


def resolve(name: str) -> DatasetSpec | None:
    """A spec built from the name itself (``imagefolder:PATH``), or None for registry names."""
    if name.startswith(IMAGEFOLDER_PREFIX):
        from bench.datasets.real import imagefolder_spec

        path = name[len(IMAGEFOLDER_PREFIX):]
        if not path:
            raise BenchError("imagefolder: needs a folder, e.g. imagefolder:/data/my_images "
                             "(laid out as <folder>/<class>/<image>.jpg)")
        return imagefolder_spec(path)
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


__all__ = ["DatasetSpec", "ImageSource", "drop_unreadable", "get_spec", "limit", "resolve"]
