"""Test kit for plugin authors (a pytest plugin: ``pytest -p bench.testing``).

Fixtures ``tiny_source`` and ``tiny_view`` give a small, deterministic dataset with
labels, concepts, groups and planted duplicates, seen through the ``pixels`` extractor;
``check_method`` (in :mod:`bench.conformance`) runs the contract checks on a method.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch.distributed as dist

from bench.api import DataView
from bench.datasets.base import ImageSource, content_revision
from bench.extractors.pixels import PixelsExtractor
from bench.factory import create_view

#: marks tests that start two gloo processes with torchrun (plugins' DDP tests too)
needs_gloo = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with gloo is not available")


def make_tiny_source(n: int = 60, *, n_classes: int = 3, size: int = 16, seed: int = 0,
                     name: str = "tiny") -> ImageSource:
    """Blobs of one colour per class on noise; two groups; the last 4 images duplicate 0..3."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % n_classes
    palette = rng.integers(0, 256, size=(n_classes, 3))
    images = rng.integers(0, 60, size=(n, size, size, 3)).astype(np.uint8)
    for i, c in enumerate(labels):
        images[i, size // 4: 3 * size // 4, size // 4: 3 * size // 4] = palette[c]
    groups = (np.arange(n) >= n // 2).astype(np.int64)
    images[n - 4:] = images[:4]
    labels[n - 4:] = labels[:4]
    pairs = np.stack([np.arange(4), np.arange(n - 4, n)], axis=1)
    concepts = np.zeros((n, n_classes + 1), dtype=bool)
    concepts[np.arange(n), labels] = True
    concepts[:, n_classes] = groups == 0
    return ImageSource(
        name=name, revision=content_revision(images), n=n, array=images,
        labels=labels.astype(np.int64), class_names=[f"class{c}" for c in range(n_classes)],
        concepts=concepts, concept_names=[f"class{c}" for c in range(n_classes)] + ["first-half"],
        concept_groups={"class": list(range(n_classes)), "half": [n_classes]},
        groups=groups, group_names=["a", "b"], duplicate_pairs=pairs,
    )


def make_tiny_view(n: int = 60, **kwargs) -> DataView:
    return create_view(make_tiny_source(n, **kwargs), PixelsExtractor(size=8))


@pytest.fixture
def tiny_source() -> ImageSource:
    return make_tiny_source()


@pytest.fixture
def tiny_view() -> DataView:
    return make_tiny_view()
