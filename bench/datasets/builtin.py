"""Built-in datasets, registered through the same pluggy hook a third-party plugin uses.

Embedded (no download, generated or bundled): ``synth-passnet``, ``synth-shift``,
``digits``. Real datasets read from configured local roots (see :mod:`bench.config`):
``imagenet``, ``imagenet-val``, ``pass``, ``passnet``, ``cifar10(-test)``,
``cifar100(-test)``, ``imagenette``, ``imagewoof``; ``imagefolder:PATH`` is resolved by
:func:`bench.datasets.get_spec`. Real datasets shipped by packages (Debian, scikit-image):
``fashion-mnist(-test)``, ``openclipart``, ``clipart-passnet``, ``lfw-pair``
(:mod:`bench.datasets.packaged`).
"""

from __future__ import annotations

import numpy as np

import bench
from bench.datasets.base import DatasetSpec, ImageSource, content_revision
from bench.datasets.packaged import packaged_specs
from bench.datasets.real import real_specs
from bench.datasets.synth import make_synth_passnet, make_synth_shift, synth_shift_ladder

DIGITS_SIZE = 32


def load_digits(seed: int = 0) -> ImageSource:
    """scikit-learn's bundled 8×8 handwritten digits (1797 images, values 0–16).

    Scaled to 0–255 and upscaled 4× to 32×32 by *nearest neighbour* (pixel replication:
    exact, no resampling library involved), grey copied to RGB. The seed is unused: the
    data are fixed.
    """
    from sklearn.datasets import load_digits as sk_load_digits

    data = sk_load_digits()
    grey = np.round(data.images * (255.0 / 16.0)).astype(np.uint8)
    factor = DIGITS_SIZE // grey.shape[1]
    big = grey.repeat(factor, axis=1).repeat(factor, axis=2)
    images = np.ascontiguousarray(np.repeat(big[..., None], 3, axis=3))
    labels = data.target.astype(np.int64)
    return ImageSource(
        name="digits", revision=content_revision(images, labels, extra="digits/nearest32"), n=len(images),
        array=images, ids=[f"digits/{i:04d}" for i in range(len(images))], labels=labels,
        class_names=[str(d) for d in range(10)], notes={"upscale": "nearest, 8x8 -> 32x32"},
    )


def embedded_specs() -> list[DatasetSpec]:
    return [
        DatasetSpec("synth-passnet", "an ImageNet-like source (mostly objects, with people) ∪ a PASS-like "
                    "one (mostly scenes, no people), 64×64, labels, concepts, groups, planted duplicates",
                    lambda seed=0, **kw: make_synth_passnet(seed, **kw), embedded=True),
        DatasetSpec("synth-shift", "objects mixed with scenes at known proportions 0, 0.1, …, 1 (ladder) "
                    "plus an objects-only reference",
                    lambda seed=0, **kw: make_synth_shift(seed, **kw), embedded=True,
                    ladder=lambda seed=0, **kw: synth_shift_ladder(seed, **kw)),
        DatasetSpec("digits", "scikit-learn handwritten digits, 1797 images, 10 classes, 32×32",
                    load_digits, embedded=True),
    ]


@bench.hookimpl
def bench_register_datasets(registry):
    for spec in embedded_specs() + real_specs() + packaged_specs():
        registry.add(spec.name, spec, origin="bench.datasets.builtin")
