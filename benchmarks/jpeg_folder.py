"""Generate a folder of ImageNet-like JPEGs (500×375, ~60–70 KB) in class sub-folders.

Smooth noise (a coarse random field upsampled bicubically) plus fine grain, saved at quality
90, lands at ImageNet's typical file size, so decode cost is realistic. Deterministic per
(seed, index); runs in parallel processes. ``python -m benchmarks.jpeg_folder DIR N [procs]``.
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

W, H, CLASSES = 500, 375, 10


def render(i: int, seed: int = 0) -> np.ndarray:
    from PIL import Image

    rng = np.random.default_rng([seed, i])
    coarse = rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
    img = np.asarray(Image.fromarray(coarse).resize((W, H), Image.BICUBIC), dtype=np.int16)
    img = img + rng.normal(0, 9, size=(H, W, 3)).astype(np.int16)
    return np.clip(img, 0, 255).astype(np.uint8)


def _write(args: tuple[str, int, int, int]) -> None:
    from PIL import Image

    root, start, stop, seed = args
    for i in range(start, stop):
        path = Path(root) / f"c{i % CLASSES:02d}" / f"{i:07d}.jpg"
        if not path.exists():
            tmp = path.with_name(f".{path.name}.tmp")
            Image.fromarray(render(i, seed)).save(tmp, format="JPEG", quality=90)
            os.replace(tmp, path)


def make_folder(root: str | Path, n: int, procs: int = 2, seed: int = 0) -> Path:
    """``root/cXX/NNNNNNN.jpg`` for i < n (existing files are kept)."""
    root = Path(root)
    for c in range(CLASSES):
        (root / f"c{c:02d}").mkdir(parents=True, exist_ok=True)
    step = max(1, n // (procs * 8))
    jobs = [(str(root), s, min(n, s + step), seed) for s in range(0, n, step)]
    if procs <= 1:
        for job in jobs:
            _write(job)
    else:
        with ProcessPoolExecutor(procs) as pool:
            list(pool.map(_write, jobs))
    return root


if __name__ == "__main__":
    make_folder(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 2)
