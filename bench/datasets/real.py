"""Real datasets read from local roots (never downloaded): folders of images and CIFAR pickles
(read by an unpickler that admits only arrays, lists, bytes and str: a crafted batch runs nothing).

Folder datasets only *list* files at load time (sorted relative paths, so the order and the
revision are deterministic); pixels are decoded lazily by ``ImageSource.loader(i)``.
The revision hashes the sorted relative paths and file sizes — not the pixels (too slow
for ImageNet) and not mtimes (so one copy of ImageNet on two machines gets one revision).

Image size: the harness stacks images into batches, so every folder image is returned
as a ``size``×``size`` RGB uint8 array (default 256): shorter side resized to ``size``
(PIL bicubic, antialiased), then centre-cropped. Extractors then apply their own exact
preprocessing; for the usual "resize ≥ crop, centre crop" pipelines the square centre
crop loses no pixel those pipelines would keep.

Known duplicates: a ``duplicates.csv`` in the folder (header ``path_a,path_b[,kind]``, paths
relative to the folder, as ``bench.datasets.neardup.write_folder`` writes it) becomes the
source's ``duplicate_pairs``, so duplicate precision / recall are graded on a user's own folder;
its bytes enter the revision, so changed ground truth never reuses old records.

Unreadable files: a corrupt or truncated image raises a one-line ``DataError`` naming
the file when it is read (never silently replaced). ``bench.datasets.drop_unreadable``
decodes every file up front and returns the source without them, listing what it
skipped in ``notes["skipped_files"]``. Only regular files are read: a named pipe would block
``open()`` forever and a device would stream forever, so an entry named like an image that is
not a regular file (or a dangling link) is skipped at listing with one warning line. An image
whose aspect ratio is beyond 1:``MAX_ASPECT`` is refused before it is decoded (a 1×100000 strip
scaled to a shorter side of 256 would need ~20 GB).

Pixels: EXIF orientation is applied, and transparent pixels are composited on white (as the
packaged clip-art is), so the hidden RGB under alpha never reaches a model.
"""

from __future__ import annotations

import csv
import hashlib
import os
import pickle
import posixpath
import stat
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bench.config import dataset_root, env_var
from bench.datasets.base import DatasetSpec, ImageSource, content_revision
from bench.errors import BenchError, DataError

if TYPE_CHECKING:
    from PIL import Image

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm",
                              ".pgm", ".pbm"})
DEFAULT_SIZE = 256
#: the longer side may be at most this many times the shorter one (checked before decoding): scaling
#: the shorter side to 256 then allocates at most 256 × 65,536 RGB pixels (50 MB)
MAX_ASPECT = 256
#: how files become pixels (EXIF orientation, alpha on white); in every file-backed revision, so
#: features cached under the older decoding are never reused
DECODE_REVISION = "decode=exif+alpha-white"


def not_regular(path: str | os.PathLike) -> str | None:
    """None for a regular file (symlinks followed), else what it is, for a one-line message."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            return f"a symbolic link to {os.readlink(path)}, which does not exist"
        return "missing"
    except OSError as e:
        return f"unreadable ({e.strerror or e})"
    if stat.S_ISREG(st.st_mode):
        return None
    if stat.S_ISFIFO(st.st_mode):
        return "a named pipe (FIFO), not a regular file"
    if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        return "a device, not a regular file"
    if stat.S_ISSOCK(st.st_mode):
        return "a socket, not a regular file"
    if stat.S_ISDIR(st.st_mode):
        return "a folder, not a file"
    return "not a regular file"


_warned: set[str] = set()


def warn(message: str) -> None:
    """One ``warning: …`` line on stderr (workers too: they share the terminal), once per process
    however often the same folder is listed or the same file read."""
    if message not in _warned:
        _warned.add(message)
        print(f"warning: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- files


def _walk(root: Path) -> list[str]:
    """Sorted relative paths of image files under ``root`` (recursive, hidden entries skipped).

    Symlinked folders are followed, but one that leads back to a folder above it (a loop,
    which would list forever) is a one-line DataError naming the link. An entry named like an
    image that is not a regular file (a FIFO, a device, a dangling link) is skipped, with one
    warning line for the whole listing.
    """
    out: list[str] = []
    skipped: list[str] = []
    try:
        top = os.stat(root)
    except OSError as e:
        raise DataError(f"cannot list {root}: {e.strerror or e}") from None
    stack = [(root, frozenset({(top.st_dev, top.st_ino)}))]
    while stack:
        folder, above = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError as e:
            raise DataError(f"cannot list {folder}: {e.strerror or e}") from None
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                is_dir = entry.is_dir()
                st = entry.stat() if is_dir else None
            except OSError as e:
                raise DataError(f"cannot read {entry.path}: {e.strerror or e} (a symbolic link loop? remove "
                                "or fix the link)") from None
            if st is not None:
                ident = (st.st_dev, st.st_ino)
                if ident in above:
                    raise DataError(f"{entry.path} leads back to {os.path.realpath(entry.path)}, a folder above "
                                    "it: a symbolic link loop; remove or fix the link")
                stack.append((Path(entry.path), above | {ident}))
            elif os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS:
                try:
                    regular = entry.is_file()   # links followed; no extra stat for plain files
                except OSError:
                    regular = False
                if regular:
                    out.append(os.path.relpath(entry.path, root))
                else:
                    skipped.append(f"{entry.path} ({not_regular(entry.path) or 'not a regular file'})")
    if skipped:
        skipped.sort()
        more = f" and {len(skipped) - 3} more" if len(skipped) > 3 else ""
        warn(f"skipped {len(skipped)} entr{'y' if len(skipped) == 1 else 'ies'} named like images that "
             f"cannot be read as files: {'; '.join(skipped[:3])}{more}")
    out.sort()
    return out


def files_revision(root: Path, relpaths: list[str], extra: str = "") -> str:
    """Hash of the sorted relative paths and sizes of the files (not pixels, not mtimes)."""
    h = hashlib.sha256(extra.encode())
    for rel in relpaths:
        try:
            size = os.stat(root / rel).st_size
        except OSError:
            size = -1
        h.update(f"{rel}\0{size}\n".encode())
    return h.hexdigest()[:16]


def to_uint8_rgb(img) -> Image.Image:
    """A PIL image as 8-bit RGB, high-bit-depth grey scaled from its nominal range, not clipped.

    ``Image.convert("RGB")`` clips 16- and 32-bit grey values at 255 (a 0–65535 gradient comes
    out nearly white) and floats at 1 (nearly black). The nominal range, as scikit-image's
    ``img_as_ubyte`` and torchvision's dtype conversions define it: unsigned integers
    0 … 2**bits − 1 (bits from the file: 16 for ``I;16*`` and 16-bit PNG/TIFF read as ``I``,
    else 32), signed 32-bit integers 0 … 2**31 − 1 (negatives → 0), floats 0 … 1 (clipped).
    Fixed per format, never per image, so equal values give equal pixels in every file.
    """
    from PIL import Image

    mode = img.mode
    if not (mode == "F" or mode == "I" or mode.startswith("I;")):
        return img.convert("RGB")
    values = np.asarray(img)
    if mode == "F":
        scaled = np.clip(np.nan_to_num(values.astype(np.float64), nan=0.0), 0.0, 1.0) * 255.0
    else:
        bits = 16 if mode.startswith("I;16") or img.format == "PNG" else 32
        tags = getattr(img, "tag_v2", None)
        if mode == "I" and tags is not None and tags.get(258):
            bits = min(int(b) for b in tags.get(258)) or bits
        top = 2**31 - 1 if bits >= 32 else 2**bits - 1
        scaled = np.clip(values.astype(np.float64), 0, top) * (255.0 / top)
    grey = np.rint(scaled).astype(np.uint8)
    return Image.fromarray(np.repeat(grey[..., None], 3, axis=-1), "RGB")


def check_shape(width: int, height: int, what) -> None:
    """Refuse an image whose resize would allocate without bound, before it is decoded."""
    short, long = min(width, height), max(width, height)
    if short < 1:
        raise DataError(f"cannot read image {what}: it is {width}×{height} pixels (empty)")
    if long > MAX_ASPECT * short:
        raise DataError(f"image {what} is {width}×{height} pixels, an aspect ratio beyond 1:{MAX_ASPECT} (scaling "
                        "its shorter side allocates in proportion to it); crop it or remove the file")


def _upright(img, opened):
    """``img`` (decoded from ``opened``) turned as ``opened``'s EXIF orientation says, as viewers
    show it; applied after the RGB conversion, which needs the file's own mode and format."""
    from PIL import Image

    try:
        orientation = opened.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - a damaged EXIF block is ignored, as viewers do
        return img
    method = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}.get(orientation)
    return img if method is None else img.transpose(method)


def _on_white(img):
    """Transparent pixels composited on white (RGBA, LA, PA, palette or RGB with tRNS)."""
    from PIL import Image

    if img.mode in ("I", "F") or img.mode.startswith("I;") or not img.has_transparency_data:
        return img
    rgba = img.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")


def read_image(path, size: int | None = DEFAULT_SIZE, *, what: str | None = None) -> np.ndarray:
    """Decode one image to RGB uint8; ``size``: shorter side → size, centre crop to a square.

    ``path`` is a file path or a binary file object (``what`` names it in messages). A corrupt or
    truncated file, a path that is not a regular file, or an extreme aspect ratio raises a
    one-line DataError naming it; an image over PIL's decompression-bomb warning size is one
    warning line.
    """
    from PIL import Image, UnidentifiedImageError

    what = what or str(path)
    if isinstance(path, (str, os.PathLike)):
        kind = not_regular(path)
        if kind == "missing":
            raise DataError(f"image file {path} has disappeared since the dataset was listed")
        if kind is not None:
            raise DataError(f"cannot read image {path}: it is {kind}; remove it")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                check_shape(*opened.size, what)
                img = _upright(to_uint8_rgb(_on_white(opened)), opened)  # a full decode: truncation shows here
        for w in caught:
            if issubclass(w.category, Image.DecompressionBombWarning):
                warn(f"image {what} has {opened.size[0] * opened.size[1] / 1e6:.0f} Mpx, over PIL's "
                     f"decompression-bomb warning size ({Image.MAX_IMAGE_PIXELS / 1e6:.0f} Mpx); decoding it anyway")
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        if size is not None:
            w, h = img.size
            scale = size / min(w, h)
            nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
            if (nw, nh) != (w, h):
                img = img.resize((nw, nh), Image.BICUBIC, reducing_gap=None)
            left, top = (nw - size) // 2, (nh - size) // 2
            img = img.crop((left, top, left + size, top + size))
        return np.asarray(img, dtype=np.uint8).copy()
    except FileNotFoundError:
        raise DataError(f"image file {what} has disappeared since the dataset was listed") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"cannot read image {what}: {msg} (corrupt or truncated? remove or replace the file)") \
            from None


DUPLICATES_CSV = "duplicates.csv"


def read_duplicates_csv(root: Path, relpaths: list[str]) -> tuple[np.ndarray, str] | None:
    """Known duplicate pairs of a folder from ``root/duplicates.csv``: ((P, 2) indices into
    ``relpaths``, a hash of the file's bytes), or None without the file.

    A row naming anything that is not an image of the folder is one DataError naming the file
    and the line: a typo must not silently lower recall.
    """
    path = root / DUPLICATES_CSV
    if not os.path.lexists(path):
        return None
    if path.is_symlink() and not _inside(path, root):
        # its content would be echoed in messages and records: a handed-over folder must not read other files
        raise DataError(f"{path} is a symbolic link to a file outside {root}; copy the pairs into the folder")
    kind = not_regular(path)
    if kind is not None:
        raise DataError(f"{path} is {kind}; the known pairs must be a regular CSV file")
    try:
        raw = path.read_bytes()
        rows = list(csv.reader(raw.decode("utf-8-sig").splitlines()))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot read {path}: {e} (expected UTF-8 CSV with header path_a,path_b[,kind])") from None
    header = [c.strip() for c in rows[0]] if rows else []
    if header[:2] != ["path_a", "path_b"]:
        raise DataError(f"{path}, line 1: the header must be path_a,path_b[,kind]")
    index = {rel: i for i, rel in enumerate(relpaths)}
    pairs = []
    for line, row in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in row):
            continue
        if len(row) < 2:
            raise DataError(f"{path}, line {line}: expected path_a,path_b[,kind], got {','.join(row)!r}")
        ends = []
        for cell in row[:2]:
            rel = posixpath.normpath(cell.strip())
            if rel not in index:
                raise DataError(f"{path}, line {line}: {cell.strip()!r} is not an image of {root} (paths are "
                                f"relative to that folder, e.g. {relpaths[0]!r})")
            ends.append(index[rel])
        if ends[0] == ends[1]:
            raise DataError(f"{path}, line {line}: {row[0].strip()!r} is paired with itself")
        pairs.append(ends)
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 2), hashlib.sha256(raw).hexdigest()[:16]


def _inside(path: Path, root: Path) -> bool:
    """Whether ``path``, links resolved, lies under ``root`` (links resolved)."""
    try:
        return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(root))
    except (OSError, ValueError):
        return False


def _folder_source(name: str, root: Path, relpaths: list[str], *, labels=None, class_names=None,
                   groups=None, group_names=None, size: int = DEFAULT_SIZE, roots: list[Path] | None = None,
                   notes: dict | None = None, revision: str | None = None,
                   duplicates: tuple[np.ndarray, str] | None = None) -> ImageSource:
    """An ImageSource over files; ``roots[i]`` (optional) is the root of file ``i``; ``duplicates``
    from :func:`read_duplicates_csv` (its hash enters the revision)."""
    paths = [str((roots[i] if roots else root) / rel) for i, rel in enumerate(relpaths)]
    extra = f"{name}|size={size}|pixels=native|{DECODE_REVISION}"
    extra += f"|duplicates={duplicates[1]}" if duplicates else ""

    def loader(i: int) -> np.ndarray:
        return read_image(paths[i], size)

    def native(i: int) -> np.ndarray:
        return read_image(paths[i], None)

    # "pixels=native": extractors see each file resized once from its original pixels (bench.pipeline)
    return ImageSource(
        name=name, revision=revision or files_revision(root, relpaths, extra=extra),
        n=len(paths), loader=loader, native=native, paths=paths, ids=list(relpaths), labels=labels,
        class_names=class_names,
        groups=groups, group_names=group_names, duplicate_pairs=duplicates[0] if duplicates else None,
        notes={"root": str(root), "image_size": size, **(notes or {}),
               **({"duplicates_csv": str(root / DUPLICATES_CSV)} if duplicates else {})},
    )


# --------------------------------------------------------------------------- layouts


def _need_dir(path: Path, what: str) -> Path:
    if not path.exists():
        raise BenchError(f"{what}: {path} does not exist")
    if not path.is_dir():
        raise BenchError(f"{what}: {path} is not a folder")
    return path


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError as e:
        raise DataError(f"cannot read {entry.path}: {e.strerror or e} (a symbolic link loop? remove or fix "
                        "the link)") from None


def scan_class_folders(root: Path, what: str) -> tuple[list[str], np.ndarray, list[str]]:
    """``root/<class>/**/<image>``: sorted relative paths, labels, class names (sorted folders)."""
    _need_dir(root, what)
    try:
        classes = sorted(e.name for e in os.scandir(root) if not e.name.startswith(".") and _is_dir(e))
    except OSError as e:
        raise DataError(f"{what}: cannot list {root}: {e.strerror or e}") from None
    relpaths: list[str] = []
    labels: list[int] = []
    for k, cls in enumerate(classes):
        files = _walk(root / cls)
        relpaths += [f"{cls}/{f}" for f in files]
        labels += [k] * len(files)
    if not relpaths:
        loose = [f for f in _walk(root) if "/" not in f]
        hint = f" ({len(loose)} images lie directly in it: put them in class sub-folders)" if loose else ""
        raise DataError(f"{what}: no images found under {root}; expected {root}/<class>/<image>.jpg|png"
                        f"{hint}")
    return relpaths, np.asarray(labels, dtype=np.int64), classes


def imagefolder_source(root: str | Path, *, name: str | None = None, size: int = DEFAULT_SIZE) -> ImageSource:
    """Any ``root/<class>/<image>`` tree (torchvision ImageFolder layout); classes = sorted folders;
    known duplicates from ``root/duplicates.csv`` when it exists."""
    root = Path(root).expanduser()
    name = name or f"imagefolder:{root}"
    relpaths, labels, classes = scan_class_folders(root, name)
    return _folder_source(name, root, relpaths, labels=labels, class_names=classes, size=size,
                          duplicates=read_duplicates_csv(root, relpaths))


def imagefolder_spec(path: str, *, size: int = DEFAULT_SIZE) -> DatasetSpec:
    """Spec for ``imagefolder:PATH`` (resolved by name, not registered)."""
    name = f"imagefolder:{path}"
    root = Path(path).expanduser()

    def ready() -> str | None:
        if not root.is_dir():
            return f"{root} is not a folder; expected {root}/<class>/<image>.jpg|png"
        return None

    return DatasetSpec(
        name=name, description=f"images under {root.resolve()}, one sub-folder per class",
        load=lambda seed=0, **kw: imagefolder_source(root, name=name, size=kw.get("size", size)),
        ready=ready,
    )


def folder_source(root: str | Path, *, name: str | None = None, size: int = DEFAULT_SIZE) -> ImageSource:
    """Every image under ``root`` (recursive), unlabelled: a user's own folder for ``bench compare``;
    known duplicates from ``root/duplicates.csv`` when it exists."""
    root = Path(root).expanduser()
    name = name or f"folder:{root}"
    _need_dir(root, name)
    relpaths = _walk(root)
    if not relpaths:
        raise DataError(f"{name}: no images found under {root} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
    return _folder_source(name, root, relpaths, size=size, duplicates=read_duplicates_csv(root, relpaths))


def folder_spec(path: str, *, size: int = DEFAULT_SIZE) -> DatasetSpec:
    """Spec for ``folder:PATH`` (resolved by name, not registered)."""
    name = f"folder:{path}"
    root = Path(path).expanduser()

    def ready() -> str | None:
        return None if root.is_dir() else f"{root} is not a folder of images"

    return DatasetSpec(name=name, description=f"every image under {root.resolve()}, unlabelled",
                       load=lambda seed=0, **kw: folder_source(root, name=name, size=kw.get("size", size)),
                       ready=ready)


# --------------------------------------------------------------------------- roots


class Root:
    """A configured dataset root: env var / config key ``key``, and the layout expected."""

    def __init__(self, key: str, layout: str, check: Callable[[Path], Path | None]):
        self.key, self.layout, self.check = key, layout, check

    def find(self) -> tuple[Path | None, str | None]:
        """(data folder, None) when usable, else (None, one-line reason)."""
        root, origin = dataset_root(self.key)
        hint = f"(or roots.{self.key} = \"...\" in bench.toml)"
        if root is None:
            return None, f"set {env_var(self.key)} {hint} to {self.layout}"
        if not root.is_dir():
            return None, f"{root} (from {origin}) is not a folder; set {env_var(self.key)} {hint} to {self.layout}"
        found = self.check(root)
        if found is None:
            return None, f"{root} (from {origin}) does not look right; expected {self.layout}"
        return found, None

    def get(self) -> Path:
        found, reason = self.find()
        if found is None:
            raise BenchError(reason)
        return found

    def ready(self) -> str | None:
        return self.find()[1]


def _first_dir(*candidates: Path) -> Path | None:
    return next((c for c in candidates if c.is_dir()), None)


def _ilsvrc_split(split: str) -> Callable[[Path], Path | None]:
    def check(root: Path) -> Path | None:
        for base in (root, root / "Data" / "CLS-LOC", root / "ILSVRC" / "Data" / "CLS-LOC"):
            if (base / split).is_dir():
                return base
        return None
    return check


IMAGENET = Root("imagenet", "the ILSVRC-2012 folder holding train/<wnid>/*.JPEG (and val/<wnid>/*.JPEG; "
                "Kaggle's ILSVRC/Data/CLS-LOC/ layout also works)", _ilsvrc_split("train"))
IMAGENET_VAL = Root("imagenet", "the ILSVRC-2012 folder holding val/<wnid>/*.JPEG (val images sorted into "
                    "class folders, e.g. by valprep.sh)", _ilsvrc_split("val"))
PASS = Root("pass", "the PASS images: a folder of *.jpg, or the extracted PASS.*.tar folders", lambda r: r)


def _cifar_check(folder: str, marker: str) -> Callable[[Path], Path | None]:
    def check(root: Path) -> Path | None:
        for base in (root / folder, root):
            if (base / marker).is_file():
                return base
        return None
    return check


CIFAR10 = Root("cifar10", "the folder holding cifar-10-batches-py/ (data_batch_1..5, test_batch, "
               "batches.meta) or that folder itself", _cifar_check("cifar-10-batches-py", "batches.meta"))
CIFAR100 = Root("cifar100", "the folder holding cifar-100-python/ (train, test, meta) or that folder itself",
                _cifar_check("cifar-100-python", "meta"))


def _fastai_check(prefix: str) -> Callable[[Path], Path | None]:
    def check(root: Path) -> Path | None:
        if (root / "train").is_dir():
            return root
        for sub in ("2-320", "2-160", "2", "-320", "-160", ""):
            if (root / f"{prefix}{sub}" / "train").is_dir():
                return root / f"{prefix}{sub}"
        return None
    return check


IMAGENETTE = Root("imagenette", "the extracted imagenette2(-320|-160) folder holding train/<wnid>/*.JPEG",
                  _fastai_check("imagenette"))
IMAGEWOOF = Root("imagewoof", "the extracted imagewoof2(-320|-160) folder holding train/<wnid>/*.JPEG",
                 _fastai_check("imagewoof"))

IMAGENETTE_NAMES = {
    "n01440764": "tench", "n02102040": "English springer", "n02979186": "cassette player",
    "n03000684": "chain saw", "n03028079": "church", "n03394916": "French horn", "n03417042": "garbage truck",
    "n03425413": "gas pump", "n03445777": "golf ball", "n03888257": "parachute",
}
IMAGEWOOF_NAMES = {
    "n02086240": "Shih-Tzu", "n02087394": "Rhodesian ridgeback", "n02088364": "beagle",
    "n02089973": "English foxhound", "n02093754": "Border terrier", "n02096294": "Australian terrier",
    "n02099601": "golden retriever", "n02105641": "Old English sheepdog", "n02111889": "Samoyed",
    "n02115641": "dingo",
}


# --------------------------------------------------------------------------- loaders


def _wnid_names(base: Path, wnids: list[str]) -> list[str]:
    """``wnid`` → ``wnid (readable)`` when LOC_synset_mapping.txt lies in ``base`` or above it."""
    for folder in [base, *list(base.parents)[:3]]:
        cand = folder / "LOC_synset_mapping.txt"
        if cand.is_file():
            mapping = {}
            for line in cand.read_text().splitlines():
                wnid, _, text = line.partition(" ")
                mapping[wnid] = text.split(",")[0].strip()
            return [f"{w} ({mapping[w]})" if w in mapping else w for w in wnids]
    return list(wnids)


def load_imagenet(split: str = "train", *, size: int = DEFAULT_SIZE) -> ImageSource:
    base = (IMAGENET if split == "train" else IMAGENET_VAL).get()
    name = "imagenet" if split == "train" else "imagenet-val"
    relpaths, labels, wnids = scan_class_folders(base / split, name)
    return _folder_source(name, base / split, relpaths, labels=labels, class_names=_wnid_names(base, wnids),
                          size=size, notes={"split": split})


def load_pass(*, size: int = DEFAULT_SIZE) -> ImageSource:
    """PASS: every image under the root (flat or in extracted tar folders); no labels."""
    root = PASS.get()
    relpaths = _walk(root)
    if not relpaths:
        raise DataError(f"pass: no images found under {root}; expected {PASS.layout}")
    return _folder_source("pass", root, relpaths, size=size)


def load_passnet(*, size: int = DEFAULT_SIZE) -> ImageSource:
    """ImageNet (train) ∪ PASS, groups kept; PASS images carry label −1 (unlabelled)."""
    inet, pss = load_imagenet("train", size=size), load_pass(size=size)
    roots = [Path(inet.notes["root"])] * inet.n + [Path(pss.notes["root"])] * pss.n
    labels = np.concatenate([inet.labels, np.full(pss.n, -1, dtype=np.int64)])
    groups = np.repeat(np.arange(2, dtype=np.int64), [inet.n, pss.n])
    src = _folder_source("passnet", roots[0], list(inet.ids) + list(pss.ids), labels=labels,
                         class_names=inet.class_names, groups=groups, group_names=["imagenet", "pass"],
                         size=size, roots=roots, notes={"unlabelled": -1},
                         revision=hashlib.sha256(f"passnet|{inet.revision}|{pss.revision}".encode()).hexdigest()[:16])
    src.ids = [f"imagenet/{p}" for p in inet.ids] + [f"pass/{p}" for p in pss.ids]
    return src


def _safe_dtype(*args) -> np.dtype:
    """``numpy.dtype`` for numeric types only (an object dtype would unpickle arbitrary objects)."""
    dt = np.dtype(*args)
    if dt.kind not in "biuf" or dt.fields is not None:
        raise pickle.UnpicklingError(f"dtype {dt} is not a plain numeric array type")
    return dt


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles written by Python 3 use it for ``bytes``."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode is admitted only for latin1 text")
    return text.encode("latin1")


#: what ``numpy.ndarray`` resolves to: only a tag for ``_reconstruct``, not callable (so a pickle
#: cannot build arrays of another dtype by calling it)
_NDARRAY = object()


def _reconstruct(subtype, shape, dtype) -> np.ndarray:
    """numpy's pickle entry point for arrays (state set afterwards by ``ndarray.__setstate__``)."""
    if subtype is not _NDARRAY:
        raise pickle.UnpicklingError("only plain numpy arrays are part of a CIFAR batch")
    return np.ndarray.__new__(np.ndarray, shape, _safe_dtype(dtype))


def _frombuffer(buf, dtype, shape, order) -> np.ndarray:
    """numpy's protocol-5 pickle entry point for arrays."""
    arr = np.frombuffer(buf, dtype=_safe_dtype(dtype))
    return arr.reshape(shape, order="F" if order == "F" else "C")


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles only what CIFAR batches hold: dicts, lists, str, bytes, ints and numeric numpy
    arrays. Any other global (``os.system``, ``builtins.eval`` …) is refused before it is
    looked up, so a crafted batch file cannot run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,   # numpy 1 pickles
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,  # numpy 2 pickles
        ("numpy.core.numeric", "_frombuffer"): _frombuffer,        # protocol 5
        ("numpy._core.numeric", "_frombuffer"): _frombuffer,
        ("numpy", "ndarray"): _NDARRAY,
        ("numpy", "dtype"): _safe_dtype,
        ("_codecs", "encode"): _latin1_encode,                     # bytes in protocol 2 from python 3
    }

    def find_class(self, module: str, name: str):
        found = self.ALLOWED.get((module, name))
        if found is None:
            raise pickle.UnpicklingError(f"refused global {module}.{name} (not part of a CIFAR batch)")
        return found

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("persistent ids are not part of a CIFAR batch")


def _unpickle(path: Path) -> dict:
    """One CIFAR batch through :class:`_CifarUnpickler` (never plain ``pickle.load``)."""
    try:
        with open(path, "rb") as f:
            batch = _CifarUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise BenchError(f"{path} is missing (expected the python-pickle CIFAR batches)") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError,
            OverflowError, MemoryError) as e:
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"{path}: not a readable CIFAR pickle ({detail})") from None
    if not isinstance(batch, dict):
        raise DataError(f"{path}: not a CIFAR batch (a {type(batch).__name__}, expected a dict)")
    return batch


def _field(batch: dict, key: bytes, path: Path):
    if key not in batch:
        raise DataError(f"{path}: not a CIFAR batch (no {key.decode()!r} entry)")
    return batch[key]


def _cifar_images(batches: list[dict], path: Path) -> np.ndarray:
    data = np.concatenate([np.asarray(_field(b, b"data", path), dtype=np.uint8) for b in batches])
    if data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{path}: CIFAR rows must have 3072 values (3×32×32), got shape {data.shape}")
    return np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


def _names(meta: dict, key: bytes, path: Path) -> list[str]:
    return [n.decode() if isinstance(n, bytes) else str(n) for n in _field(meta, key, path)]


def _labels(batches: list[dict], key: bytes, path: Path, rows: int, names: list[str]) -> np.ndarray:
    """The ``key`` labels of ``batches``: one per image row, each an index into ``names``."""
    try:
        labels = np.concatenate([np.asarray(_field(b, key, path), dtype=np.int64).reshape(-1) for b in batches])
    except (TypeError, ValueError, OverflowError):
        raise DataError(f"{path}: CIFAR {key.decode()!r} must be integers") from None
    if len(labels) != rows:
        raise DataError(f"{path}: {len(labels)} {key.decode()!r} for {rows} images (one label per image)")
    bad = (labels < 0) | (labels >= len(names))
    if bad.any():
        raise DataError(f"{path}: {key.decode()!r} holds {int(labels[bad][0])}, outside 0..{len(names) - 1} "
                        f"({len(names)} class names)")
    return labels


def load_cifar10(split: str = "train") -> ImageSource:
    base = CIFAR10.get()
    files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    batches = [_unpickle(base / f) for f in files]
    images = _cifar_images(batches, base)
    classes = _names(_unpickle(base / "batches.meta"), b"label_names", base / "batches.meta")
    labels = _labels(batches, b"labels", base, len(images), classes)
    name = "cifar10" if split == "train" else "cifar10-test"
    return ImageSource(name=name, revision=content_revision(images, labels, extra=name), n=len(images),
                       array=images, labels=labels, class_names=classes, notes={"root": str(base), "split": split})


def load_cifar100(split: str = "train") -> ImageSource:
    """CIFAR-100 with fine labels; the 20 coarse superclasses become a concept group."""
    base = CIFAR100.get()
    batch = _unpickle(base / ("train" if split == "train" else "test"))
    meta = _unpickle(base / "meta")
    images = _cifar_images([batch], base)
    fine_names = _names(meta, b"fine_label_names", base / "meta")
    coarse_names = _names(meta, b"coarse_label_names", base / "meta")
    labels = _labels([batch], b"fine_labels", base, len(images), fine_names)
    coarse = _labels([batch], b"coarse_labels", base, len(images), coarse_names)
    concepts = np.zeros((len(images), len(coarse_names)), dtype=bool)
    concepts[np.arange(len(images)), coarse] = True
    name = "cifar100" if split == "train" else "cifar100-test"
    return ImageSource(name=name, revision=content_revision(images, labels, coarse, extra=name), n=len(images),
                       array=images, labels=labels, class_names=fine_names,
                       concepts=concepts, concept_names=[f"superclass:{c}" for c in coarse_names],
                       concept_groups={"superclass": list(range(len(coarse_names)))},
                       notes={"root": str(base), "split": split})


def load_fastai(root: Root, name: str, readable: dict[str, str], split: str = "train",
                *, size: int = DEFAULT_SIZE) -> ImageSource:
    base = root.get()
    relpaths, labels, wnids = scan_class_folders(base / split, name)
    return _folder_source(name, base / split, relpaths, labels=labels,
                          class_names=[readable.get(w, w) for w in wnids], size=size, notes={"split": split})


def real_specs() -> list[DatasetSpec]:
    """Specs of the real datasets (cheap: nothing is read until ``load``)."""
    both = lambda: IMAGENET.ready() or PASS.ready()  # noqa: E731
    return [
        DatasetSpec("imagenet", "ILSVRC-2012 train (1000 classes), from $BENCH_IMAGENET_ROOT",
                    lambda seed=0, **kw: load_imagenet("train", **kw), IMAGENET.ready),
        DatasetSpec("imagenet-val", "ILSVRC-2012 val in class folders, from $BENCH_IMAGENET_ROOT",
                    lambda seed=0, **kw: load_imagenet("val", **kw), IMAGENET_VAL.ready),
        DatasetSpec("pass", "PASS (no people, no labels), from $BENCH_PASS_ROOT",
                    lambda seed=0, **kw: load_pass(**kw), PASS.ready),
        DatasetSpec("passnet", "ImageNet train ∪ PASS, groups imagenet/pass; PASS labels are -1",
                    lambda seed=0, **kw: load_passnet(**kw), both),
        DatasetSpec("cifar10", "CIFAR-10 train (python pickles), from $BENCH_CIFAR10_ROOT",
                    lambda seed=0: load_cifar10("train"), CIFAR10.ready),
        DatasetSpec("cifar10-test", "CIFAR-10 test (python pickles), from $BENCH_CIFAR10_ROOT",
                    lambda seed=0: load_cifar10("test"), CIFAR10.ready),
        DatasetSpec("cifar100", "CIFAR-100 train, fine labels, superclass concepts, from $BENCH_CIFAR100_ROOT",
                    lambda seed=0: load_cifar100("train"), CIFAR100.ready),
        DatasetSpec("cifar100-test", "CIFAR-100 test, from $BENCH_CIFAR100_ROOT",
                    lambda seed=0: load_cifar100("test"), CIFAR100.ready),
        DatasetSpec("imagenette", "Imagenette train (fastai, 10 easy ImageNet classes), from "
                    "$BENCH_IMAGENETTE_ROOT",
                    lambda seed=0, **kw: load_fastai(IMAGENETTE, "imagenette", IMAGENETTE_NAMES, **kw),
                    IMAGENETTE.ready),
        DatasetSpec("imagewoof", "Imagewoof train (fastai, 10 dog breeds), from $BENCH_IMAGEWOOF_ROOT",
                    lambda seed=0, **kw: load_fastai(IMAGEWOOF, "imagewoof", IMAGEWOOF_NAMES, **kw),
                    IMAGEWOOF.ready),
    ]
