"""Datasets: a DatasetSpec (registered, cheap) builds an ImageSource (loaded, with ground truth).

An ImageSource yields images as uint8 RGB arrays plus whatever ground truth exists:
class labels, multi-hot concept vectors, the sub-dataset ("group") of each image and
planted near-duplicate pairs. ``revision`` changes whenever the content changes; it is
part of every cache key and record.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bench.errors import BenchError


@dataclass
class ImageSource:
    """A loaded dataset. Either ``array`` (N, H, W, 3) uint8 is set, or ``loader(i)``."""

    name: str
    revision: str
    n: int
    array: np.ndarray | None = None
    loader: Callable[[int], np.ndarray] | None = None
    ids: list[str] | None = None
    labels: np.ndarray | None = None
    class_names: list[str] | None = None
    concepts: np.ndarray | None = None          # (N, C) bool
    concept_names: list[str] | None = None
    concept_groups: dict[str, list[int]] | None = None   # group name → concept columns
    groups: np.ndarray | None = None            # (N,) int: which sub-dataset
    group_names: list[str] | None = None
    duplicate_pairs: np.ndarray | None = None   # (P, 2) int planted near-duplicates
    notes: dict[str, Any] = field(default_factory=dict)   # e.g. listed planted edge cases
    #: image ``i`` decoded at its original size (file-backed sources): the data pipeline resizes
    #: it once, straight to the extractor's input, instead of using the fixed-size ``image(i)``
    native: Callable[[int], np.ndarray] | None = None
    #: the file of each image, when there is one (lets the pipeline decode JPEGs on the GPU)
    paths: list[str] | None = None
    #: image ``i``'s stored bytes (a tar member, a parquet cell) for sources without ``paths``: lets a
    #: reader that needs a small image decode a JPEG at reduced scale (``bench duplicates``)
    encoded: Callable[[int], bytes] | None = None

    def image(self, i: int) -> np.ndarray:
        """Image ``i`` as an (H, W, 3) uint8 array."""
        if self.array is not None:
            return self.array[i]
        if self.loader is None:
            raise BenchError(f"dataset {self.name!r} has neither an array nor a loader")
        return self.loader(i)

    def subset(self, indices: np.ndarray, *, name: str | None = None) -> ImageSource:
        """A new source with rows ``indices`` (e.g. a stratified ``--limit``)."""
        idx = np.asarray(indices, dtype=np.int64)

        def take(a):
            return None if a is None else a[idx]

        pos = {int(j): k for k, j in enumerate(idx)}
        pairs = None
        if self.duplicate_pairs is not None:
            kept = [(pos[a], pos[b]) for a, b in self.duplicate_pairs if a in pos and b in pos]
            pairs = np.asarray(kept, dtype=np.int64).reshape(-1, 2)
        parent = self
        sub = ImageSource(
            name=name or self.name,
            revision=hashlib.sha256(f"{self.revision}:{idx.tobytes().hex()}".encode()).hexdigest()[:16],
            n=len(idx),
            array=take(self.array),
            loader=None if self.array is not None else (lambda i: parent.image(int(idx[i]))),
            ids=None if self.ids is None else [self.ids[i] for i in idx],
            labels=take(self.labels), class_names=self.class_names,
            concepts=take(self.concepts), concept_names=self.concept_names,
            concept_groups=self.concept_groups,
            groups=take(self.groups), group_names=self.group_names,
            duplicate_pairs=pairs, notes=dict(self.notes),
            native=None if self.native is None else (lambda i: parent.native(int(idx[i]))),
            paths=None if self.paths is None else [self.paths[i] for i in idx],
            encoded=None if self.encoded is None else (lambda i: parent.encoded(int(idx[i]))),
        )
        return sub


@dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset: a name, a description and a function that loads it.

    ``load(seed)`` returns an ImageSource. ``ready()`` returns None when the dataset can
    be loaded, else a one-line reason (e.g. the environment variable to set).
    ``ladder`` marks datasets made of several sources mixed at known proportions
    (``synth-shift``): then ``load_ladder()`` returns (reference, [(proportion, source)]).
    """

    name: str
    description: str
    load: Callable[..., ImageSource]
    ready: Callable[[], str | None] = lambda: None
    embedded: bool = False
    ladder: Callable[..., tuple[ImageSource, list[tuple[float, ImageSource]]]] | None = None


def content_revision(*arrays: np.ndarray | None, extra: str = "") -> str:
    """A short hash of dataset content, used as its revision."""
    h = hashlib.sha256(extra.encode())
    for array in arrays:
        if array is not None:
            a = np.ascontiguousarray(array)
            h.update(str(a.shape).encode() + str(a.dtype).encode())
            h.update(a.tobytes())
    return h.hexdigest()[:16]
