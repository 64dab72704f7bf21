"""Real images that ship in ordinary packages, so they need no download once installed.

=====================  =====================================================================
``fashion-mnist``      Zalando's Fashion-MNIST train (60,000) / ``fashion-mnist-test`` (10,000),
                       28×28 grey, 10 classes; Debian ``dataset-fashion-mnist`` (MIT), read from
                       ``/usr/share/datasets/fashion-mnist`` or ``$BENCH_FASHION_MNIST_ROOT``
``openclipart``        ≈6,900 public-domain clip-art PNGs in 22 category folders (labels); Debian
                       ``openclipart-png``, from ``/usr/share/openclipart/png`` or ``$BENCH_OPENCLIPART_ROOT``
``clipart-passnet``    two disjoint seeded samples of openclipart, one with people, one without
                       (the ImageNet-vs-PASS case study on real images; :func:`load_clipart_passnet`)
``lfw-pair``           scikit-image's ``lfw_subset``: 100 LFW faces and 100 non-faces, as two groups
=====================  =====================================================================

Fashion-MNIST is read from its idx files (``.gz`` or plain) with numpy, never unpickled; the
header's magic number and sizes are checked. Clip art is RGBA with a transparent background:
every PNG is composited on a fixed white background (:data:`CLIPART_BACKGROUND`), then fitted
whole into a ``size``×``size`` square (aspect kept, bicubic) and padded with the same white, so
no part of a drawing is cropped away. Files that are symbolic links to a drawing in another
category folder (the Debian package cross-lists ≈1,200) are listed once, under the folder that
holds the file itself; the link's folders become concepts (``category:<name>``). The 17
drawings larger than :data:`CLIPART_MAX_PIXELS` (up to 231 Mpx: gigabytes to decode) are left
out, listed in ``notes["skipped_files"]``.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
from pathlib import Path

import numpy as np

from bench.config import dataset_root, env_var
from bench.datasets.base import DatasetSpec, ImageSource, content_revision
from bench.errors import BenchError, DataError

FASHION_MNIST_DEBIAN = Path("/usr/share/datasets/fashion-mnist")
OPENCLIPART_DEBIAN = Path("/usr/share/openclipart/png")
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot"]
#: clip art is drawn on this colour (white: how clip art is printed and shown)
CLIPART_BACKGROUND = (255, 255, 255)
CLIPART_SIZE = 256
#: the construction of clipart-passnet (fixed: the dataset does not change with the run's seed)
CLIPART_PASSNET_SEED = 0
CLIPART_PASSNET_N = 400          # images per source
CLIPART_PASSNET_PEOPLE = 100     # people drawings in the "with-people" source (its base rate: 1/4)
PEOPLE = "people"
#: drawings with more pixels than this (PNG header) are left out of openclipart
CLIPART_MAX_PIXELS = 4096 * 4096


def _root(key: str, debian: Path, apt: str, marker) -> tuple[Path | None, str | None]:
    """(folder, None) or (None, one line naming the apt package or the variable to set)."""
    configured, origin = dataset_root(key)
    root = configured or debian
    if marker(root):
        return root, None
    if configured is not None:
        return None, f"{root} (from {origin}) does not hold the {key} files; unset it to use {debian} " \
                     f"(`apt-get install {apt}`) or point {env_var(key)} at the right folder"
    return None, f"not installed: `apt-get install {apt}` (Debian/Ubuntu; installs {debian}), " \
                 f"or set {env_var(key)} to a folder holding the same files"


# --------------------------------------------------------------------------- Fashion-MNIST


def _idx_file(root: Path, stem: str) -> Path:
    for cand in (root / f"{stem}.gz", root / stem):
        if cand.is_file():
            return cand
    raise BenchError(f"fashion-mnist: {root / stem}(.gz) is missing; `apt-get install dataset-fashion-mnist` "
                     f"or set {env_var('fashion-mnist')}")


def read_idx(path: Path) -> np.ndarray:
    """An idx file (the MNIST format: magic 0x0000 08 ndim, big-endian sizes, uint8 data)."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read {path}: {e} (corrupt? reinstall dataset-fashion-mnist)") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path} is not a uint8 idx file (bad magic number)")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).astype(np.int64)
    start = 4 + 4 * ndim
    if len(raw) - start != int(np.prod(dims)):
        raise DataError(f"{path}: header says {tuple(dims)} but holds {len(raw) - start} bytes (truncated?)")
    return np.frombuffer(raw, dtype=np.uint8, offset=start).reshape(tuple(dims))


def _fashion_ready() -> str | None:
    return _root("fashion-mnist", FASHION_MNIST_DEBIAN, "dataset-fashion-mnist",
                 lambda r: (r / "train-labels-idx1-ubyte.gz").is_file() or (r / "train-labels-idx1-ubyte").is_file()
                 )[1]


def load_fashion_mnist(split: str = "train") -> ImageSource:
    """Fashion-MNIST; grey copied to RGB, 28×28 kept (extractors resize with their own transform)."""
    root, reason = _root("fashion-mnist", FASHION_MNIST_DEBIAN, "dataset-fashion-mnist",
                         lambda r: r.is_dir())
    if root is None:
        raise BenchError(f"fashion-mnist: {reason}")
    prefix = "train" if split == "train" else "t10k"
    grey = read_idx(_idx_file(root, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_idx_file(root, f"{prefix}-labels-idx1-ubyte")).astype(np.int64)
    if grey.ndim != 3 or labels.ndim != 1 or len(grey) != len(labels) or labels.max(initial=0) > 9:
        raise DataError(f"fashion-mnist in {root}: images {grey.shape} and labels {labels.shape} do not match")
    images = np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=3))
    images.setflags(write=False)
    name = "fashion-mnist" if split == "train" else "fashion-mnist-test"
    return ImageSource(name=name, revision=content_revision(images, labels, extra=name), n=len(images),
                       array=images, ids=[f"{prefix}/{i:05d}" for i in range(len(images))], labels=labels,
                       class_names=list(FASHION_MNIST_CLASSES), notes={"root": str(root), "split": split})


# --------------------------------------------------------------------------- openclipart


def _clipart_ready() -> str | None:
    return _root("openclipart", OPENCLIPART_DEBIAN, "openclipart-png", lambda r: (r / PEOPLE).is_dir())[1]


def png_pixels(path: str) -> int:
    """width × height from a PNG's IHDR chunk (0 when the file is not a PNG: decoding reports it)."""
    try:
        with open(path, "rb") as f:
            head = f.read(24)
    except OSError:
        return 0
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n":
        return 0
    w, h = struct.unpack(">II", head[16:24])
    return int(w) * int(h)


def scan_clipart(root: Path) -> tuple[list[str], np.ndarray, list[str], np.ndarray, list[dict]]:
    """Sorted relative paths of the drawings (files, not links), their category label, the
    category names, (N, C) membership of every category folder that holds the file or a link
    to it, and the drawings left out for their size."""
    categories = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    files: dict[str, str] = {}        # real path → relative path
    member: dict[str, set[int]] = {}  # real path → categories listing it
    for c, cat in enumerate(categories):
        for folder, dirs, names in os.walk(root / cat):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for fname in names:
                if not fname.lower().endswith(".png") or fname.startswith("."):
                    continue
                path = os.path.join(folder, fname)
                real = os.path.realpath(path)
                if not os.path.isfile(real):
                    continue
                member.setdefault(real, set()).add(c)
                if not os.path.islink(path):
                    files[real] = os.path.relpath(path, root)
    skipped = [{"id": files[r], "error": f"{png_pixels(r)} pixels > {CLIPART_MAX_PIXELS}"}
               for r in files if png_pixels(r) > CLIPART_MAX_PIXELS]
    too_big = {s["id"] for s in skipped}
    order = sorted((r for r in files if files[r] not in too_big), key=files.get)
    if not order:
        raise DataError(f"openclipart: no PNG files under {root}")
    rel = [files[r] for r in order]
    labels = np.asarray([categories.index(p.split(os.sep)[0]) for p in rel], dtype=np.int64)
    concepts = np.zeros((len(order), len(categories)), dtype=bool)
    for i, real in enumerate(order):
        concepts[i, sorted(member[real])] = True
    return rel, labels, categories, concepts, sorted(skipped, key=lambda s: s["id"])


def read_clipart(path: str | Path, size: int = CLIPART_SIZE) -> np.ndarray:
    """A PNG composited on :data:`CLIPART_BACKGROUND`, fitted whole into size×size, padded."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as opened:
            rgba = opened.convert("RGBA")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot read image {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") \
            from None
    canvas = Image.new("RGBA", rgba.size, (*CLIPART_BACKGROUND, 255))
    rgb = Image.alpha_composite(canvas, rgba).convert("RGB")
    w, h = rgb.size
    scale = size / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    rgb = rgb.resize((nw, nh), Image.BICUBIC, reducing_gap=None)
    out = Image.new("RGB", (size, size), CLIPART_BACKGROUND)
    out.paste(rgb, ((size - nw) // 2, (size - nh) // 2))
    return np.asarray(out, dtype=np.uint8).copy()


def _clipart_root() -> Path:
    root, reason = _root("openclipart", OPENCLIPART_DEBIAN, "openclipart-png", lambda r: (r / PEOPLE).is_dir())
    if root is None:
        raise BenchError(f"openclipart: {reason}")
    return root


def _clipart_revision(root: Path, rel: list[str], extra: str) -> str:
    h = hashlib.sha256(extra.encode())
    for p in rel:
        try:
            size = os.stat(root / p).st_size
        except OSError:
            size = -1
        h.update(f"{p}\0{size}\n".encode())
    return h.hexdigest()[:16]


def load_openclipart(*, size: int = CLIPART_SIZE) -> ImageSource:
    """Every drawing, labelled by its category folder; decoded lazily."""
    root = _clipart_root()
    rel, labels, cats, concepts, skipped = scan_clipart(root)
    paths = [str(root / p) for p in rel]
    return ImageSource(
        name="openclipart", revision=_clipart_revision(root, rel, f"openclipart|size={size}|bg=white"),
        n=len(rel), loader=lambda i: read_clipart(paths[i], size), ids=rel, labels=labels, class_names=cats,
        concepts=concepts, concept_names=[f"category:{c}" for c in cats],
        concept_groups={"category": list(range(len(cats)))},
        notes={"root": str(root), "image_size": size, "background": CLIPART_BACKGROUND, "skipped_files": skipped},
    )


def clipart_passnet_rows(labels: np.ndarray, people: np.ndarray, *, n: int = CLIPART_PASSNET_N,
                         n_people: int = CLIPART_PASSNET_PEOPLE, seed: int = CLIPART_PASSNET_SEED
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the two sources: ``with`` = ``n_people`` people drawings + ``n − n_people`` others,
    ``without`` = ``n`` others; the others of both are one seeded draw without replacement from
    the drawings no people folder lists: a seeded systematic sample of that pool ordered by
    category (so it keeps the pool's category mix), split between the sources by the same
    systematic rule (so both keep it); rows sorted."""
    rng = np.random.default_rng(seed)
    pool = np.flatnonzero(~people)
    need = 2 * n - n_people
    if people.sum() < n_people or len(pool) < need:
        raise DataError(f"clipart-passnet needs {n_people} people drawings and {need} others; the openclipart "
                        f"folder has {int(people.sum())} and {len(pool)}")
    with_people = np.sort(rng.choice(np.flatnonzero(people), size=n_people, replace=False))
    others = rng.permutation(pool)
    # stratify by category: order the shuffled pool by category, then deal rows round-robin
    others = others[np.argsort(labels[others], kind="stable")]
    step = len(others) / need
    picked = others[np.floor(np.arange(need) * step + rng.random() * step).astype(np.int64) % len(others)]
    # the same systematic rule splits the sample (still ordered by category) into the two sources
    step_a = need / (n - n_people)
    in_a = np.zeros(need, dtype=bool)
    in_a[np.floor(np.arange(n - n_people) * step_a + rng.random() * step_a).astype(np.int64) % need] = True
    a_others, b = picked[in_a], picked[~in_a]
    return np.sort(np.concatenate([with_people, a_others])), np.sort(b)


def load_clipart_passnet(*, size: int = CLIPART_SIZE) -> ImageSource:
    """``clipart-passnet``: group ``with-people`` then ``without-people``, decoded into memory."""
    root = _clipart_root()
    rel, labels, cats, concepts, skipped = scan_clipart(root)
    people = concepts[:, cats.index(PEOPLE)]
    rows_a, rows_b = clipart_passnet_rows(labels, people)
    rows = np.concatenate([rows_a, rows_b])
    images = np.stack([read_clipart(root / rel[i], size) for i in rows])
    images.setflags(write=False)
    groups = np.repeat(np.arange(2, dtype=np.int64), [len(rows_a), len(rows_b)])
    sub_concepts = concepts[rows]
    revision = content_revision(images, labels[rows], groups,
                                extra=f"clipart-passnet/1|seed={CLIPART_PASSNET_SEED}|size={size}")
    return ImageSource(
        name="clipart-passnet", revision=revision, n=len(rows), array=images,
        ids=[f"{('with-people', 'without-people')[g]}/{rel[i]}" for g, i in zip(groups, rows)],
        labels=labels[rows], class_names=cats, concepts=sub_concepts,
        concept_names=[f"category:{c}" for c in cats], concept_groups={"category": list(range(len(cats)))},
        groups=groups, group_names=["with-people", "without-people"],
        notes={"root": str(root), "image_size": size, "background": CLIPART_BACKGROUND,
               "seed": CLIPART_PASSNET_SEED, "n_per_source": CLIPART_PASSNET_N,
               "n_people": CLIPART_PASSNET_PEOPLE, "skipped_files": skipped,
               "planted": {"concept": f"category:{PEOPLE}", "group": "with-people",
                           "what": "people drawings occur in the with-people source only"}},
    )


# --------------------------------------------------------------------------- scikit-image


def load_lfw_pair() -> ImageSource:
    """scikit-image's bundled ``lfw_subset``: 100 faces then 100 non-faces, 25×25 grey → RGB."""
    try:
        from skimage import data
    except ImportError:
        raise BenchError("lfw-pair needs scikit-image: `pip install scikit-image`") from None
    grey = np.round(data.lfw_subset() * 255.0).clip(0, 255).astype(np.uint8)
    images = np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=3))
    images.setflags(write=False)
    groups = np.repeat(np.arange(2, dtype=np.int64), [100, 100])
    return ImageSource(name="lfw-pair", revision=content_revision(images, groups, extra="lfw-pair"),
                       n=len(images), array=images, ids=[f"{('face', 'non-face')[g]}/{i:03d}"
                                                          for i, g in enumerate(groups)],
                       labels=groups.copy(), class_names=["face", "non-face"], groups=groups,
                       group_names=["faces", "non-faces"], notes={"origin": "skimage.data.lfw_subset"})


def _skimage_ready() -> str | None:
    try:
        import skimage  # noqa: F401
    except ImportError:
        return "needs scikit-image: `pip install scikit-image` (or `pip install -e \".[test]\"`)"
    return None


def packaged_specs() -> list[DatasetSpec]:
    """Specs of the package-shipped real datasets (cheap: nothing is read until ``load``)."""
    return [
        DatasetSpec("fashion-mnist", "Fashion-MNIST train, 60,000 28×28, 10 classes (Debian dataset-fashion-mnist)",
                    lambda seed=0: load_fashion_mnist("train"), _fashion_ready),
        DatasetSpec("fashion-mnist-test", "Fashion-MNIST test, 10,000 (Debian dataset-fashion-mnist)",
                    lambda seed=0: load_fashion_mnist("test"), _fashion_ready),
        DatasetSpec("openclipart", "public-domain clip art, category folders as labels, on white "
                    "(Debian openclipart-png)", lambda seed=0, **kw: load_openclipart(**kw), _clipart_ready),
        DatasetSpec("clipart-passnet", "openclipart: a source with people ∪ a disjoint one without, groups "
                    "with-people/without-people (Debian openclipart-png)",
                    lambda seed=0, **kw: load_clipart_passnet(**kw), _clipart_ready),
        DatasetSpec("lfw-pair", "scikit-image lfw_subset: 100 faces ∪ 100 non-faces as two groups, 25×25",
                    lambda seed=0: load_lfw_pair(), _skimage_ready),
    ]
