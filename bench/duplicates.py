"""``bench duplicates DIR [DIR2]``: near-duplicate groups within a set, and leakage across two.

Both methods need only a small image, so only a small image is decoded: JPEGs at reduced scale
(libjpeg's DCT scaling through PIL's ``Image.draft``, the largest 1/2, 1/4 or 1/8 scale still at
least ``DECODE_SIDE`` px a side), other formats once at full size, in the DataLoader workers of
:mod:`bench.pipeline`, which hash the batch themselves so only codes cross processes. No extractor.

* ``phash``: imagededup's 64-bit PHash (:func:`bench.baselines.phash_bits`' steps on the reduced
  decode); pairs within Hamming distance 10, exact (faiss binary range search, query blocks).
* ``wavelet``: wavelet-knn's rows (the Haar approximation band at 16 px of the centre square,
  centred, unit length; ``knn_rows`` in the wavelet plugin) and its per-pair rule (exact distance
  0, or below 0.5 × the closer image's typical neighbour distance; ``knn_duplicates``). Neighbours
  come from an exact flat search up to ``EXACT_MAX_ROWS`` images; above, from an IVF index on a
  64-D PCA of the rows with every candidate re-ranked by its exact distance, because an exact
  search is quadratic in N (measured against exact in ``benchmarks/test_duplicates_bench.py``).

Memory: the codes (8 B per image for phash, 768 float32 = 3 KB for wavelet), each image's
neighbour list (wavelet: 5, or 10 with DIR2, ids and distances), its pixel count and sharpness; everything
else is one block at a time. Unreadable images are skipped with one warning each and listed in
the CSV's sidecar. With DIR2, candidates and the rule run on DIR ∪ DIR2 (wavelet: 10 neighbours,
as the wavelet comparator's cross-set search), and pairs are split into within and across.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import io
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np
import torch

from bench.baselines import PHASH_BLOCK, PHASH_SIDE, pair_components
from bench.datasets.base import ImageSource
from bench.errors import BenchError, DataError

METHODS = ("wavelet", "phash")
KEEP_POLICIES = ("first", "largest", "sharpest")
#: imagededup's default PHash threshold (inclusive), as the ``phash`` baseline
PHASH_MAX_DISTANCE = 10
#: wavelet-knn: approximation band side, the thumbnail whose level-1 Haar band that is, the rule
WAVELET_SIDE, WAVELET_THUMB, WAVELET_THRESHOLD = 16, 32, 0.5
#: neighbours per image: the wavelet summariser's 5 within one set, the comparator's 10 across two
NEIGHBOURS_WITHIN, NEIGHBOURS_ACROSS = 5, 10
#: JPEGs are decoded at the smallest DCT scale that keeps at least this many pixels a side
DECODE_SIDE = 32
#: up to this many images the wavelet neighbours are exact (a flat search is cheap); above, IVF
EXACT_MAX_ROWS = 4096
PCA_DIM, IVF_NPROBE = 64, 8
#: rows the PCA is fitted on (enough for 64 components; bounded so memory stays flat in N)
PCA_TRAIN_ROWS = 8192
#: query rows per faiss call: bounds the result buffers whatever N
SEARCH_BLOCK = 16384
#: images per worker item: large enough that the per-item cost of the loader is small
ITEM_ROWS = 128
GALLERY_GROUPS, GALLERY_MEMBERS, GALLERY_THUMB = 40, 8, 112


@dataclass
class Side:
    """One input: what the user typed and the loaded source."""

    label: str
    text: str
    source: ImageSource


@dataclass
class Codes:
    """The hash of every readable image, in input order (``rows``: index into the union of the sides)."""

    codes: np.ndarray             # (n, 8) uint8 packed PHash bits or (n, 768) float32 wavelet rows
    rows: np.ndarray              # (n,) global row of each code
    pixels: np.ndarray            # (n,) pixel count from the file header
    sharpness: np.ndarray         # (n,) variance of the Laplacian of the reduced decode (0 if not asked)
    skipped: list[tuple[str, str]]   # (image, reason) of each unreadable image
    seconds: float


@dataclass
class Found:
    """What a run found: pairs of positions into ``Codes`` rows (i < j), each pair's distance, groups."""

    pairs: np.ndarray
    distance: np.ndarray          # phash: Hamming bits; wavelet: distance / typical neighbour distance
    group: np.ndarray             # (n,) group id per image, -1 alone
    seconds: float
    search: str                   # how the neighbours were found
    statistics: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------- inputs


def input_name(text: str) -> str:
    """What the user typed as a dataset name: a prefixed name stays, a folder → ``folder:``, a .tar
    → ``wds:``, a .parquet → ``hf:``; anything else is looked up among the registered datasets."""
    if text.split(":", 1)[0] in ("imagefolder", "folder", "wds", "hf") and ":" in text:
        return text
    path = Path(text).expanduser()
    if path.is_dir():
        return f"folder:{text}"
    if path.is_file() and path.suffix in (".tar", ".parquet"):
        return f"{'wds' if path.suffix == '.tar' else 'hf'}:{text}"
    return text


def _where(name: str) -> str:
    _prefix, _, rest = name.partition(":")
    return str(Path(rest).expanduser().resolve()) if rest else name


def open_sides(a: str, b: str | None) -> list[Side]:
    """The inputs, loaded (files listed, nothing decoded); DIR2 naming DIR's data is one error."""
    from bench.datasets import resolve

    names = [input_name(t) for t in (a, b) if t is not None]
    if len(names) == 2 and _where(names[0]) == _where(names[1]):
        raise BenchError(f"DIR2 {b!r} is the same data as DIR {a!r}: give two different sets, or one to find "
                         "duplicates within it")
    sides = []
    for label, text, name in zip(("A", "B"), (a, b), names):
        spec = resolve(name)
        if spec is None:
            from bench import plugins

            regs = plugins.load()
            if name not in regs.datasets:
                raise BenchError(f"{'DIR' if label == 'A' else 'DIR2'} {text!r}: no such folder, file or dataset")
            spec = regs.datasets.get(name)
        reason = spec.ready()
        if reason:
            raise BenchError(f"{text!r} is not ready: {reason}")
        source = spec.load(seed=0)
        if source.n == 0:
            raise DataError(f"{text!r} holds no images")
        sides.append(Side(label, text, source))
    return sides


def image_name(source: ImageSource, i: int) -> str:
    """How an image is named in the CSV, the lists and warnings: its file, else source and id."""
    if source.paths is not None:
        return source.paths[i]
    return f"{source.name}:{source.ids[i] if source.ids else i}"


# --------------------------------------------------------------------------- decoding and hashing (workers)


def reduced_image(source: ImageSource, i: int, side: int = DECODE_SIDE):
    """Image ``i`` as 8-bit RGB, JPEGs decoded at the smallest DCT scale ≥ ``side`` px a side, and
    its pixel count at full size (from the header)."""
    from PIL import Image, UnidentifiedImageError

    from bench.datasets.real import to_uint8_rgb

    if source.paths is None and source.encoded is None:          # in memory, or a loader only
        arr = (source.native or source.image)(i)
        return Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8)).convert("RGB"), arr.shape[0] * arr.shape[1]
    what = image_name(source, i)
    try:
        fp = source.paths[i] if source.paths is not None else io.BytesIO(source.encoded(i))
        with Image.open(fp) as opened:
            pixels = opened.size[0] * opened.size[1]
            opened.draft("RGB", (side, side))
            return to_uint8_rgb(opened), pixels
    except FileNotFoundError:
        raise DataError(f"image file {what} has disappeared since the dataset was listed") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"cannot read image {what}: {msg}") from None


def phash_grey(img) -> np.ndarray:
    """PHash's input: the RGB image resized to 32×32 with LANCZOS, *then* grey (imagededup's order)."""
    from PIL import Image

    return np.asarray(img.resize((PHASH_SIDE, PHASH_SIDE), Image.LANCZOS).convert("L"), dtype=np.float64)


#: the first 8 rows of scipy's DCT-II on 32 points (norm=None: 2 Σ x_n cos(π k (2n + 1) / 64))
_DCT_ROWS = 2.0 * np.cos(np.pi * np.arange(PHASH_BLOCK)[:, None] * (2 * np.arange(PHASH_SIDE) + 1) / (2 * PHASH_SIDE))


def phash_codes(greys: np.ndarray) -> np.ndarray:
    """(B, 32, 32) grey → (B, 8) packed PHash bits, :func:`bench.baselines.phash_bits`' rule for the
    whole batch at once: the top-left 8×8 of the 2-D DCT-II as two small matrix products (scipy's
    ``dctn`` computes all 32×32 per image), bit = coefficient ≥ the median of its 63 AC terms."""
    block = _DCT_ROWS @ np.asarray(greys, dtype=np.float64) @ _DCT_ROWS.T
    flat = block.reshape(len(block), -1)
    median = np.median(flat[:, 1:], axis=1, keepdims=True)
    return np.packbits(flat >= median, axis=1)


def wavelet_thumbnail(img) -> np.ndarray:
    """The centre square (what ``read_image`` keeps) area-averaged to 32×32: its level-1 Haar
    approximation is wavelet-knn's 16-px band."""
    from PIL import Image

    w, h = img.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    square = img.crop((left, top, left + s, top + s))
    return np.asarray(square.resize((WAVELET_THUMB, WAVELET_THUMB), Image.BOX), dtype=np.uint8)


def wavelet_rows(thumbs: np.ndarray) -> np.ndarray:
    """(B, 32, 32, 3) uint8 → (B, 768) float32: the level-1 Haar approximation (2×2 sums / 2, in
    PyWavelets' (h, w, c) order), centred and scaled to unit length as ``normalised_rows``."""
    x = np.asarray(thumbs, dtype=np.float64)
    b, h, w, c = x.shape
    band = x.reshape(b, h // 2, 2, w // 2, 2, c).sum(axis=(2, 4)) / 2.0
    rows = band.reshape(b, -1)
    rows -= rows.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(rows, axis=1, keepdims=True)
    return (rows / np.where(norm > 0, norm, 1.0)).astype(np.float32)


def laplacian_variance(img) -> float:
    """Sharpness: the variance of the 4-neighbour Laplacian of the grey image."""
    g = np.asarray(img.convert("L"), dtype=np.float32)
    if min(g.shape) < 3:
        return 0.0
    lap = 4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]
    return float(lap.var())


@dataclass
class Hashed:
    """One worker item: the codes of a block of rows and what was read with them. A plain object,
    so the DataLoader pickles it whole instead of turning each array into a shared-memory tensor."""

    rows: np.ndarray
    codes: np.ndarray
    pixels: np.ndarray
    sharpness: np.ndarray
    failed: list[tuple[str, str]]


def hash_rows(source: ImageSource, rows: range, method: str, sharpness: bool) -> Hashed:
    """Codes of ``rows`` of one source; an unreadable image is reported, not raised."""
    kept, pixels, sharp, codes, failed = [], [], [], [], []
    for i in rows:
        try:
            img, npix = reduced_image(source, i)
        except DataError as e:
            failed.append((image_name(source, i), str(e)))
            continue
        codes.append(phash_grey(img) if method == "phash" else wavelet_thumbnail(img))
        kept.append(i)
        pixels.append(npix)
        sharp.append(laplacian_variance(img) if sharpness else 0.0)
    if method == "phash":
        out = phash_codes(np.asarray(codes, dtype=np.float64).reshape(len(codes), PHASH_SIDE, PHASH_SIDE))
    else:
        out = wavelet_rows(np.asarray(codes, dtype=np.uint8).reshape(len(codes), WAVELET_THUMB, WAVELET_THUMB, 3))
    return Hashed(np.asarray(kept, dtype=np.int64), out, np.asarray(pixels, dtype=np.int64),
                  np.asarray(sharp, dtype=np.float32), failed)


class _HashItems(torch.utils.data.Dataset):
    """Item ``k``: the codes of one block of ``ITEM_ROWS`` rows of one side, computed in the worker."""

    def __init__(self, sides: list[Side], method: str, sharpness: bool, item_rows: int = ITEM_ROWS):
        self.sides, self.method, self.sharpness = sides, method, sharpness
        offsets = np.cumsum([0] + [s.source.n for s in sides])
        self.items = [(k, int(offsets[k]), start, min(start + item_rows, side.source.n))
                      for k, side in enumerate(sides) for start in range(0, side.source.n, item_rows)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int) -> Hashed:
        side, offset, start, stop = self.items[k]
        out = hash_rows(self.sides[side].source, range(start, stop), self.method, self.sharpness)
        out.rows += offset
        return out


def hash_sides(sides: list[Side], method: str, *, workers: int | None = None, sharpness: bool = False,
               warn: Callable[[str], None] = lambda m: None) -> Codes:
    """Every image's code, decoded and hashed in ``workers`` DataLoader processes (0: in this one)."""
    from bench.pipeline import check_workers, guarded, worker_loader

    workers = check_workers(workers)
    data = _HashItems(sides, method, sharpness)
    n = sum(s.source.n for s in sides)
    width, dtype = (PHASH_BLOCK * PHASH_BLOCK // 8, np.uint8) if method == "phash" else \
        ((WAVELET_SIDE ** 2) * 3, np.float32)
    codes = np.empty((n, width), dtype=dtype)
    rows, pixels = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
    sharp = np.empty(n, dtype=np.float32)
    skipped: list[tuple[str, str]] = []
    filled = 0
    t0 = time.perf_counter()
    items = (data[k] for k in range(len(data))) if workers == 0 else \
        guarded(worker_loader(data, workers=workers, prefetch=4))
    for item in items:
        m = len(item.rows)
        codes[filled:filled + m] = item.codes
        rows[filled:filled + m], pixels[filled:filled + m] = item.rows, item.pixels
        sharp[filled:filled + m] = item.sharpness
        filled += m
        for name, reason in item.failed:
            warn(f"skipped {name}: {reason}")
            skipped.append((name, reason))
    if filled == 0:
        raise DataError(f"none of the {n} images can be read (first: {skipped[0][1]})")
    return Codes(codes[:filled], rows[:filled], pixels[:filled], sharp[:filled], skipped, time.perf_counter() - t0)


# --------------------------------------------------------------------------- search


def hamming_range_pairs(codes: np.ndarray, max_distance: int, block: int = SEARCH_BLOCK
                        ) -> tuple[np.ndarray, np.ndarray]:
    """All pairs (i < j) of packed binary codes within Hamming ``max_distance`` (inclusive) and their
    distances, sorted: :func:`bench.baselines.hamming_pairs`' exact answer, searched ``block`` queries
    at a time so the result buffers stay bounded."""
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    n = len(codes)
    index = faiss.IndexBinaryFlat(codes.shape[1] * 8)
    index.add(codes)
    pairs, dists = [np.zeros((0, 2), dtype=np.int64)], [np.zeros(0, dtype=np.int64)]
    for start in range(0, n, block):
        lims, dist, found = index.range_search(codes[start:start + block], int(max_distance) + 1)
        query = start + np.repeat(np.arange(len(lims) - 1), np.diff(lims.astype(np.int64)))
        keep = query < found
        pairs.append(np.stack([query[keep], found[keep].astype(np.int64)], axis=1))
        dists.append(np.rint(dist[keep]).astype(np.int64))
    p, d = np.concatenate(pairs), np.concatenate(dists)
    order = np.lexsort((p[:, 1], p[:, 0]))
    return p[order], d[order]


def _drop_self(d2: np.ndarray, idx: np.ndarray, first_row: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each query's own hit removed (or the last column if ties pushed it out), as
    ``nearest_neighbours(exclude_self=True)`` does; the first ``k`` columns kept."""
    rows = first_row + np.arange(len(idx))[:, None]
    keep = idx != rows
    first_self = np.where(keep.all(axis=1), idx.shape[1] - 1, np.argmin(keep, axis=1))
    mask = np.ones_like(keep)
    mask[np.arange(len(idx)), first_self] = False
    return d2[mask].reshape(len(idx), -1)[:, :k], idx[mask].reshape(len(idx), -1)[:, :k]


def neighbours(x: np.ndarray, k: int, *, exact_max: int = EXACT_MAX_ROWS, nprobe: int = IVF_NPROBE,
               block: int = SEARCH_BLOCK, seed: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
    """:func:`search_neighbours` on one BLAS / OpenMP thread: its products are small, and on cores
    other work keeps busy, threads that spin waiting for each other made it 1.4× slower on 2 threads
    (20,000 rows: 3.9 s against 2.8 s; PCA, IVF training and projection 5-20× slower each)."""
    with one_thread():
        return search_neighbours(x, k, exact_max=exact_max, nprobe=nprobe, block=block, seed=seed)


@contextlib.contextmanager
def one_thread():
    """faiss' OpenMP and numpy's BLAS on one thread, restored after."""
    from threadpoolctl import threadpool_limits

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        faiss.omp_set_num_threads(before)


def search_neighbours(x: np.ndarray, k: int, *, exact_max: int = EXACT_MAX_ROWS, nprobe: int = IVF_NPROBE,
                      block: int = SEARCH_BLOCK, seed: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
    """Each row's ``k`` nearest other rows: (Euclidean distances (n, k) float64, ids (n, k), how).

    Exact (faiss flat L2, ``block`` queries at a time) up to ``exact_max`` rows. Above, an IVF index
    (√n lists, ``nprobe`` probed) on a 64-D PCA of the rows (fitted on at most ``PCA_TRAIN_ROWS``;
    the index holds 256 B per image) proposes 2(k+1) candidates, re-ranked by their distance in the
    full rows: a candidate list that misses a true neighbour can
    only make a typical distance larger, and a planted copy sits far closer than any other row.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    n, d = x.shape
    k = min(int(k), n - 1)
    dist = np.empty((n, k), dtype=np.float64)
    ids = np.empty((n, k), dtype=np.int64)
    if n <= exact_max or d <= PCA_DIM:
        index = faiss.IndexFlatL2(d)
        index.add(x)
        for s in range(0, n, block):
            d2, idx = index.search(x[s:s + block], k + 1)
            d2, idx = _drop_self(d2, idx, s, k)
            dist[s:s + len(idx)] = np.sqrt(np.clip(d2, 0, None))
            ids[s:s + len(idx)] = idx
        return dist, ids, "exact"
    rng = np.random.default_rng(seed)
    mean, basis = pca_basis(x[np.sort(rng.choice(n, size=min(n, PCA_TRAIN_ROWS), replace=False))], PCA_DIM)

    def project(rows: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray((rows - mean) @ basis)

    nlist = int(min(max(16, round(np.sqrt(n))), n // 39))
    index = faiss.IndexIVFFlat(faiss.IndexFlatL2(PCA_DIM), PCA_DIM, nlist)
    index.train(project(x[np.sort(rng.choice(n, size=min(n, 40 * nlist), replace=False))]))
    for s in range(0, n, block):
        index.add(project(x[s:s + block]))
    index.nprobe = int(nprobe)
    wide = min(2 * (k + 1), n)
    sq_norm = np.einsum("nd,nd->n", x, x)
    rerank = 512
    for s in range(0, n, block):
        _, cand = index.search(project(x[s:s + block]), wide)
        for r in range(0, len(cand), rerank):
            c = cand[r:r + rerank]
            q = s + r + np.arange(len(c))
            valid = (c >= 0) & (c != q[:, None])
            c = np.where(c >= 0, c, q[:, None])
            dot = np.einsum("bkd,bd->bk", x[c], x[q])
            d2 = np.where(valid, np.clip(sq_norm[q][:, None] + sq_norm[c] - 2.0 * dot, 0, None), np.inf)
            order = np.argsort(d2, axis=1, kind="stable")[:, :k]
            dist[q] = np.sqrt(np.take_along_axis(d2, order, axis=1))
            ids[q] = np.take_along_axis(c, order, axis=1)
    return dist, ids, f"IVF{nlist} on PCA{PCA_DIM}, nprobe {nprobe}, re-ranked exactly"


#: how far (in distance between unit rows) a search distance may be from the exact one: float32
#: faiss distances are off by ~1e-3 at most; only candidates this close to the cut get an exact distance
SEARCH_DISTANCE_SLACK = 1e-2


def pca_basis(sample: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and the ``dim`` leading principal axes (d, dim) of the rows of ``sample``: the
    eigen-decomposition of the d×d covariance (a 768×768 ``eigh``: 0.3 s on one thread, 6.5 s on two
    when other work keeps the cores busy)."""
    mean = sample.mean(axis=0, dtype=np.float64).astype(np.float32)
    centred = sample - mean
    _, vectors = np.linalg.eigh((centred.T @ centred).astype(np.float64))
    return mean, np.ascontiguousarray(vectors[:, ::-1][:, :dim], dtype=np.float32)


def decide_knn_pairs(x: np.ndarray, dist: np.ndarray, ids: np.ndarray, threshold: float = WAVELET_THRESHOLD,
                     block: int = 1 << 16) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """wavelet-knn's rule (``knn_duplicates``) on given neighbour lists: typical distance r_i = the
    median of row i's non-zero neighbour distances; a candidate pair is a duplicate when its exact
    float64 distance is 0 or below ``threshold`` · min(r_i, r_j). Returns (pairs, exact, relative).

    The exact distance is computed only for candidates whose search distance is within
    ``SEARCH_DISTANCE_SLACK`` of the cut (or ~0): the others cannot pass, whatever their last digits."""
    n, k = ids.shape
    masked = np.where(dist > 0, dist, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)     # a row whose neighbours are all copies
        typical = np.nanmedian(masked, axis=1)
    typical = np.where(np.isfinite(typical), typical, np.inf)
    i, j = np.repeat(np.arange(n), k), ids.ravel()
    valid = (j >= 0) & (i != j)
    i, j, d = i[valid], j[valid], dist.ravel()[valid]
    near = d < threshold * np.minimum(typical[i], typical[j]) + SEARCH_DISTANCE_SLACK
    lo, hi = np.minimum(i[near], j[near]), np.maximum(i[near], j[near])
    cand = np.unique(np.stack([lo, hi], axis=1), axis=0).reshape(-1, 2)
    exact = np.empty(len(cand), dtype=np.float64)
    for s in range(0, len(cand), block):
        c = cand[s:s + block]
        diff = np.asarray(x[c[:, 0]], dtype=np.float64) - np.asarray(x[c[:, 1]], dtype=np.float64)
        exact[s:s + len(c)] = np.sqrt((diff * diff).sum(axis=1))
    scale = np.minimum(typical[cand[:, 0]], typical[cand[:, 1]])
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(exact == 0, 0.0, exact / scale)
    keep = (exact == 0) | (rel < threshold)
    return cand[keep], exact[keep], rel[keep]


def find_pairs(codes: Codes, method: str, *, n_neighbours: int, exact_max: int = EXACT_MAX_ROWS) -> Found:
    """Pairs, their distances and groups among the codes."""
    t0 = time.perf_counter()
    n = len(codes.rows)
    if n < 2:
        pairs, distance, how = np.zeros((0, 2), dtype=np.int64), np.zeros(0), "none (fewer than 2 images)"
    elif method == "phash":
        with one_thread():
            pairs, distance = hamming_range_pairs(codes.codes, PHASH_MAX_DISTANCE)
        how = f"exact Hamming range search (≤ {PHASH_MAX_DISTANCE} bits)"
    else:
        dist, ids, how = neighbours(codes.codes, n_neighbours, exact_max=exact_max)
        pairs, _, distance = decide_knn_pairs(codes.codes, dist, ids)
        del dist, ids
    comp = pair_components(n, pairs) if n else np.zeros(0, dtype=np.int64)
    sizes = np.bincount(comp) if n else np.zeros(0, dtype=np.int64)
    multi = sizes[comp] > 1
    # groups numbered in the order of their first image
    firsts = np.unique(comp[multi], return_index=True)[1] if multi.any() else np.zeros(0, dtype=np.int64)
    first_rows = np.flatnonzero(multi)[firsts]
    renumber = np.full(len(sizes), -1, dtype=np.int64)
    renumber[comp[np.sort(first_rows)]] = np.arange(len(first_rows))
    group = np.where(multi, renumber[comp], -1)
    return Found(pairs, np.asarray(distance, dtype=np.float64), group, time.perf_counter() - t0, how)


# --------------------------------------------------------------------------- keep policy


def check_keep(policy: str | None) -> None:
    if policy is not None and policy not in KEEP_POLICIES:
        raise BenchError(f"--keep must be one of {', '.join(KEEP_POLICIES)}, got {policy!r}")


def removal_list(codes: Codes, found: Found, policy: str, n_a: int | None = None) -> list[int]:
    """Positions (into ``codes``) of the images one would remove: all but one of each group. The one
    kept: the first listed, the largest (pixels), or the sharpest (Laplacian variance), among the
    group's images of DIR when it has any (leaked copies in DIR2 go; ``n_a``: rows of DIR)."""
    remove = []
    members = np.flatnonzero(found.group >= 0)
    order = members[np.argsort(found.group[members], kind="stable")]
    bounds = np.flatnonzero(np.diff(found.group[order])) + 1
    for grp in np.split(order, bounds):
        if len(grp) == 0:
            continue
        pool = grp
        if n_a is not None and (codes.rows[grp] < n_a).any():
            pool = grp[codes.rows[grp] < n_a]
        if policy == "first":
            keep = pool[0]
        else:
            score = codes.pixels[pool] if policy == "largest" else codes.sharpness[pool]
            keep = pool[int(np.argmax(score))]      # ties: the first
        remove += [int(i) for i in grp if i != keep]
    return sorted(remove)


# --------------------------------------------------------------------------- the run


@dataclass
class DuplicatesConfig:
    a: str
    b: str | None = None
    method: str = "wavelet"
    out: Path = Path("results/duplicates")
    report: Path | None = None
    keep: str | None = None
    workers: int | None = None
    exact_max: int = EXACT_MAX_ROWS


@dataclass
class DuplicatesResult:
    sides: list[Side]
    codes: Codes
    found: Found
    names: list[str]              # per code position
    remove: list[int] | None
    files: dict[str, Path]

    @property
    def n_a(self) -> int:
        return self.sides[0].source.n

    def side_of(self, positions: np.ndarray) -> np.ndarray:
        """0 for DIR, 1 for DIR2, per code position."""
        return (self.codes.rows[positions] >= self.n_a).astype(np.int64)

    def pair_counts(self) -> dict[str, int]:
        s = self.side_of(self.found.pairs.reshape(-1)).reshape(-1, 2) if len(self.found.pairs) else \
            np.zeros((0, 2), dtype=np.int64)
        return {"within_a": int(((s[:, 0] == 0) & (s[:, 1] == 0)).sum()),
                "across": int((s[:, 0] != s[:, 1]).sum()),
                "within_b": int(((s[:, 0] == 1) & (s[:, 1] == 1)).sum())}


def check_config(cfg: DuplicatesConfig) -> None:
    """Everything a user can get wrong, before any image is read."""
    if cfg.method not in METHODS:
        raise BenchError(f"--method must be one of {', '.join(METHODS)}, got {cfg.method!r}")
    check_keep(cfg.keep)
    from bench.runstore import check_writable_dir

    check_writable_dir(cfg.out, "--out")
    if cfg.report is not None and cfg.report.is_dir():
        raise BenchError(f"--report {str(cfg.report)!r} is a folder; give a file name")


def run(cfg: DuplicatesConfig, warn: Callable[[str], None] = lambda m: None) -> DuplicatesResult:
    """Read, hash, search, decide, write the CSV, its sidecar, the removal list and the report."""
    check_config(cfg)
    sides = open_sides(cfg.a, cfg.b)
    codes = hash_sides(sides, cfg.method, workers=cfg.workers, sharpness=cfg.keep == "sharpest", warn=warn)
    k = NEIGHBOURS_ACROSS if len(sides) == 2 else NEIGHBOURS_WITHIN
    found = find_pairs(codes, cfg.method, n_neighbours=k, exact_max=cfg.exact_max)
    offsets = np.cumsum([0] + [s.source.n for s in sides])
    names = []
    for r in codes.rows:
        side = int(np.searchsorted(offsets, r, side="right") - 1)
        names.append(image_name(sides[side].source, int(r - offsets[side])))
    remove = removal_list(codes, found, cfg.keep, sides[0].source.n if len(sides) == 2 else None) \
        if cfg.keep else None
    result = DuplicatesResult(sides, codes, found, names, remove, {})
    write_outputs(result, cfg)
    return result


def write_outputs(result: DuplicatesResult, cfg: DuplicatesConfig) -> None:
    from bench.runstore import write_atomic

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    f = result.found
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path_a", "path_b", "distance", "group"])
    for (i, j), dist in zip(f.pairs.tolist(), f.distance.tolist()):
        w.writerow([result.names[i], result.names[j], f"{dist:.6g}", int(f.group[i])])
    result.files["csv"] = out / "duplicates.csv"
    write_atomic(result.files["csv"], buf.getvalue())
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "reason"])
    w.writerows(result.codes.skipped)
    result.files["skipped"] = out / "duplicates.skipped.csv"
    write_atomic(result.files["skipped"], buf.getvalue())
    if result.remove is not None:
        result.files["remove"] = out / "remove.txt"
        write_atomic(result.files["remove"], "".join(f"{result.names[i]}\n" for i in result.remove))
    result.files["report"] = Path(cfg.report) if cfg.report is not None else out / "report.html"
    result.files["report"].parent.mkdir(parents=True, exist_ok=True)
    write_atomic(result.files["report"], report_html(result, cfg))


def summary_lines(result: DuplicatesResult, cfg: DuplicatesConfig) -> list[str]:
    """The short summary the CLI prints."""
    f, c = result.found, result.codes
    n = sum(s.source.n for s in result.sides)
    sizes = np.bincount(f.group[f.group >= 0]) if (f.group >= 0).any() else np.zeros(0, dtype=np.int64)
    inputs = " and ".join(f"{s.label} = {s.source.name} (n={s.source.n})" for s in result.sides)
    rate = n / max(c.seconds + f.seconds, 1e-9)
    lines = [f"{inputs} · {cfg.method} · decode+hash {c.seconds:.1f} s, search {f.seconds:.1f} s ({f.search}) · "
             f"{rate:.0f} images/s"]
    counts = result.pair_counts()
    split = f" (within A {counts['within_a']}, across A–B {counts['across']}, within B {counts['within_b']})" \
        if len(result.sides) == 2 else ""
    largest = int(sizes.max()) if len(sizes) else 0
    lines.append(f"{len(sizes)} groups of near-duplicates ({int(sizes.sum())} images, largest {largest}), "
                 f"{len(f.pairs)} pairs{split}")
    if c.skipped:
        lines.append(f"{len(c.skipped)} unreadable image{'s' * (len(c.skipped) != 1)} skipped, listed in "
                     f"{result.files['skipped']}")
    lines.append(f"pairs: {result.files['csv']} · report: {result.files['report']}")
    if result.remove is not None:
        lines.append(f"--keep {cfg.keep}: {len(result.remove)} files one would remove listed in "
                     f"{result.files['remove']} (nothing deleted)")
    return lines


# --------------------------------------------------------------------------- report


def _thumb_uri(result: DuplicatesResult, pos: int) -> str:
    from PIL import Image

    r = int(result.codes.rows[pos])
    side = 0 if r < result.n_a else 1
    src = result.sides[side].source
    try:
        img, _ = reduced_image(src, r - (0 if side == 0 else result.n_a), side=GALLERY_THUMB * 2 // 3)
    except DataError:
        return ""
    img.thumbnail((GALLERY_THUMB, GALLERY_THUMB), Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def report_html(result: DuplicatesResult, cfg: DuplicatesConfig) -> str:
    """One self-contained page: the summary and a gallery of the largest groups."""
    from html import escape as esc

    f = result.found
    removed = set(result.remove or [])
    members = np.flatnonzero(f.group >= 0)
    order = members[np.lexsort((members, f.group[members]))]
    groups = np.split(order, np.flatnonzero(np.diff(f.group[order])) + 1) if len(order) else []
    groups.sort(key=lambda g: (-len(g), int(g[0])))
    cards = []
    for grp in groups[:GALLERY_GROUPS]:
        figs = []
        for pos in grp[:GALLERY_MEMBERS]:
            side = result.sides[int(result.side_of(np.asarray([pos]))[0])].label
            mark = " · remove" if pos in removed else (" · keep" if result.remove is not None else "")
            uri = _thumb_uri(result, int(pos))
            img = f'<img src="{uri}" alt="{esc(result.names[pos])}">' if uri else "(unreadable now)"
            figs.append(f'<figure>{img}<figcaption>{esc(side)}{esc(mark)}<br>'
                        f'{esc(os.path.basename(result.names[pos]))}</figcaption></figure>')
        more = f"<p>… and {len(grp) - GALLERY_MEMBERS} more</p>" if len(grp) > GALLERY_MEMBERS else ""
        cards.append(f'<section><h3>group {int(f.group[grp[0]])} · {len(grp)} images</h3>'
                     f'<div class="row">{"".join(figs)}</div>{more}</section>')
    shown = f"the {min(len(groups), GALLERY_GROUPS)} largest of {len(groups)} groups" if groups else "no groups"
    summary = "".join(f"<li>{esc(line)}</li>" for line in summary_lines(result, cfg))
    return ("<!doctype html><html><head><meta charset='utf-8'><title>bench duplicates</title><style>"
            "body{font-family:sans-serif;margin:1.5em}figure{display:inline-block;margin:4px;width:"
            f"{GALLERY_THUMB + 8}px;vertical-align:top}}figcaption{{font-size:11px;word-break:break-all}}"
            "section{border-top:1px solid #ccc}</style></head><body>"
            f"<h1>bench duplicates · {esc(cfg.method)}</h1><ul>{summary}</ul><h2>Gallery: {esc(shown)}</h2>"
            f"{''.join(cards)}</body></html>")
