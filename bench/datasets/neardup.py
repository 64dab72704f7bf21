"""A near-duplicate benchmark from real photographs bundled with scikit-image (no download).

Originals are non-overlapping ``tile``×``tile`` crops of the photographs that ship inside
``skimage/data`` (astronaut, coffee, chelsea, retina, …), skipping near-flat tiles (standard
deviation below ``min_std``) and any tile within ``min_mae`` (mean absolute difference, 0–255)
of one already picked: two adjacent tiles of evenly lit sky differ by 3.5, less than the median
JPEG-50 copy (5.3), and would be real duplicates the ground truth does not list.
Copies of ``per_kind`` distinct originals are planted for each perturbation
the issue names (#19): an exact copy, JPEG quality 50, a 2-px shift (edge-padded), brightness
+10 % (clipped), and a 95 % centre crop resized back (bicubic). Every planted pair is listed;
originals are distinct tiles, so the pairs are the whole ground truth.

:func:`write_folder` writes the images as an ``imagefolder:`` tree with a ``duplicates.csv``,
so the same benchmark runs through ``bench run --datasets imagefolder:DIR``.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.errors import BenchError

#: bundled colour / grey photographs (no synthetic test patterns, no text pages)
PHOTOS = ("astronaut.png", "coffee.png", "chelsea.png", "retina.jpg", "rocket.jpg", "motorcycle_left.png",
          "hubble_deep_field.jpg", "camera.png", "horse.png", "coins.png", "moon.png", "brick.png", "grass.png",
          "gravel.png", "ihc.png", "cell.png", "page.png")
KINDS = ("exact", "jpeg50", "shift2", "brightness10", "crop95")


@dataclass
class NearDuplicateSet:
    images: np.ndarray            # (n, tile, tile, 3) uint8: originals first, then copies
    pairs: np.ndarray             # (P, 2) (original, copy) indices
    kinds: list[str]              # perturbation of each pair
    origin: list[str]             # "photo.png@y,x" of every image (copies: of their original)


def _photos() -> list[tuple[str, np.ndarray]]:
    import skimage
    from PIL import Image

    root = Path(skimage.__file__).parent / "data"
    out = []
    for name in PHOTOS:
        path = root / name
        if path.exists():
            with Image.open(path) as im:
                out.append((name, np.asarray(im.convert("RGB"), dtype=np.uint8)))
    return out


def original_tiles(n: int, *, tile: int = 128, min_std: float = 20.0, min_mae: float = 8.0,
                   seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """``n`` distinct non-flat tiles, drawn round-robin over the photographs in a seeded order,
    each at least ``min_mae`` from every tile picked before it."""
    per_photo = []
    for name, img in _photos():
        h, w = img.shape[:2]
        tiles = [(y, x) for y in range(0, h - tile + 1, tile) for x in range(0, w - tile + 1, tile)
                 if img[y:y + tile, x:x + tile].astype(np.float32).std() >= min_std]
        order = np.random.default_rng([seed, len(per_photo)]).permutation(len(tiles))
        per_photo.append([(name, img, *tiles[k]) for k in order])
    picked: list[tuple] = []
    pixels = np.empty((n, tile * tile * 3), dtype=np.float32)
    depth = 0
    while len(picked) < n and any(depth < len(p) for p in per_photo):
        for name, img, y, x in (p[depth] for p in per_photo if depth < len(p)):
            if len(picked) == n:
                break
            flat = img[y:y + tile, x:x + tile].reshape(-1).astype(np.float32)
            if picked and np.abs(pixels[:len(picked)] - flat).mean(1).min() < min_mae:
                continue
            pixels[len(picked)] = flat
            picked.append((name, img, y, x))
        depth += 1
    if len(picked) < n:
        raise BenchError(f"only {len(picked)} distinct non-flat {tile}px tiles in the bundled photographs, "
                         f"asked for {n}")
    images = np.stack([img[y:y + tile, x:x + tile] for _, img, y, x in picked])
    return images, [f"{name}@{y},{x}" for name, _, y, x in picked]


def perturb(img: np.ndarray, kind: str) -> np.ndarray:
    """One planted copy of ``img`` (H, W, 3 uint8)."""
    from PIL import Image

    if kind == "exact":
        return img.copy()
    if kind == "jpeg50":
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=50)
        buf.seek(0)
        with Image.open(buf) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    if kind == "shift2":
        h, w = img.shape[:2]
        return np.pad(img, ((2, 0), (2, 0), (0, 0)), mode="edge")[:h, :w].copy()
    if kind == "brightness10":
        return np.clip(np.rint(img.astype(np.float32) * 1.1), 0, 255).astype(np.uint8)
    if kind == "crop95":
        h, w = img.shape[:2]
        ch, cw = round(0.95 * h), round(0.95 * w)
        top, left = (h - ch) // 2, (w - cw) // 2
        crop = Image.fromarray(img[top:top + ch, left:left + cw])
        return np.asarray(crop.resize((w, h), Image.BICUBIC), dtype=np.uint8).copy()
    raise BenchError(f"unknown perturbation {kind!r}; one of {', '.join(KINDS)}")


def make_near_duplicates(n_originals: int = 200, per_kind: int = 20, *, tile: int = 128,
                         kinds: tuple[str, ...] = KINDS, seed: int = 0) -> NearDuplicateSet:
    """``n_originals`` tiles plus ``per_kind`` copies of each kind, each of a different original."""
    if per_kind * len(kinds) > n_originals:
        raise BenchError(f"{per_kind} copies × {len(kinds)} kinds need at least that many originals, "
                         f"got {n_originals}")
    originals, origin = original_tiles(n_originals, tile=tile, seed=seed)
    chosen = np.random.default_rng([seed, 1]).choice(n_originals, size=per_kind * len(kinds), replace=False)
    copies, pairs, kind_list = [], [], []
    for k, src in enumerate(chosen):
        kind = kinds[k // per_kind]
        copies.append(perturb(originals[src], kind))
        pairs.append((int(src), n_originals + k))
        kind_list.append(kind)
        origin.append(origin[src])
    images = np.concatenate([originals, np.stack(copies)]) if copies else originals
    return NearDuplicateSet(images, np.asarray(pairs, dtype=np.int64).reshape(-1, 2), kind_list, origin)


def write_folder(data: NearDuplicateSet, root: Path) -> Path:
    """``root/images/NNNN.png`` (one class) and ``root/duplicates.csv`` (path_a, path_b, kind)."""
    from PIL import Image

    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    names = [f"images/{i:04d}.png" for i in range(len(data.images))]
    for name, img in zip(names, data.images):
        Image.fromarray(img).save(root / name)
    with open(root / "duplicates.csv", "w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow(["path_a", "path_b", "kind"])
        for (a, b), kind in zip(data.pairs, data.kinds):
            out.writerow([names[a], names[b], kind])
    return root
