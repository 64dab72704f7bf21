"""The atlas's map: A ∪ B in 2-D, drawn in the compare report as inline SVG without script.

Compare time, from the features (:func:`point_map` → :class:`bench.api.PointMap`):

* near-duplicate pairs across the sides (:func:`cross_pairs`): an image of A and an image of B that
  are each other's nearest neighbour on the other side, at a feature distance no larger than the
  1st percentile of the within-side nearest-neighbour distances (A's and B's images pooled, exact
  copies at distance 0 left out), i.e. closer than 99 % of the images are to their nearest
  neighbour on their own side;
* the points drawn: the ``MAX_LINKS`` closest pairs' images first, then a seeded random sample of the
  rest, ``MAX_POINTS`` in all, in a random order so that neither side is drawn over the other;
* a 2-D embedding of the drawn points (UMAP when installed, PCA otherwise; the page says which);
* each outlined region's polygon: the convex hull of the ``HULL_SHARE`` of its drawn points nearest
  its median in the map (one far point does not stretch it over the whole map).

Report time (:func:`map_html`): points coloured by side, the links, the outlines with their labels,
and per point a hover panel (CSS ``:hover``, as the page has no script) with its thumbnail, a
``THUMB`` px JPEG read from the side's images, and side, index and region. Size budget: about 2 kB a
point with thumbnails (measured: 1.7 kB, 3.4 MB for 2,000 Fashion-MNIST points), 0.2 kB without;
the Chromium test holds it to 2.5 kB a point.
"""

from __future__ import annotations

import base64
import importlib.util
import io
from collections.abc import Callable
from typing import Any

import numpy as np

from bench.api import PointMap

#: at most this many points drawn (a seeded sample; the linked pairs' images first)
MAX_POINTS = 2000
#: at most this many duplicate links drawn (the closest pairs)
MAX_LINKS = 200
#: at most this many regions outlined (the caller's order: most significant first)
MAX_OUTLINES = 12
#: a pair is linked when closer than this percentile of the within-side nearest-neighbour distances
NN_PERCENTILE = 1.0
#: the share of a region's drawn points its outline encloses (those nearest its median)
HULL_SHARE = 0.9
#: thumbnails: side in px and JPEG quality (a hover preview, not the image)
THUMB, JPEG_QUALITY = 48, 70
#: neighbour search: exact up to this many images; above, candidates from a PCA_DIM-D projection,
#: re-ranked by their exact distance (an exact search is quadratic in n)
EXACT_MAX_ROWS, PCA_DIM, CANDIDATES, BLOCK = 8192, 64, 8, 512


# --------------------------------------------------------------------------- embedding


def embedding_name() -> str:
    return "UMAP" if importlib.util.find_spec("umap") is not None else "PCA"


def embed_2d(x: np.ndarray, seed: int) -> np.ndarray:
    """A 2-D embedding of the features: UMAP when it is installed, PCA otherwise (named on the page)."""
    x = np.asarray(x, np.float32)
    if len(x) < 3:
        return np.c_[np.arange(len(x), dtype=np.float32), np.zeros(len(x), np.float32)]
    if embedding_name() == "UMAP":
        import umap

        return umap.UMAP(n_components=2, random_state=seed, n_neighbors=min(15, len(x) - 1)).fit_transform(x)
    import warnings

    from sklearn.decomposition import PCA

    with warnings.catch_warnings():   # identical rows: a 0/0 explained-variance ratio, which is not used
        warnings.simplefilter("ignore", RuntimeWarning)
        xy = PCA(n_components=min(2, x.shape[1]), random_state=seed).fit_transform(x)
    return np.c_[xy, np.zeros((len(x), 2 - xy.shape[1]))] if xy.shape[1] < 2 else xy


# --------------------------------------------------------------------------- duplicate pairs


def _search_space(x: np.ndarray, seed: int) -> np.ndarray:
    """The rows the candidates are searched in: x itself, or its PCA_DIM-D projection when n is large."""
    if len(x) <= EXACT_MAX_ROWS or x.shape[1] <= PCA_DIM:
        return np.ascontiguousarray(x, np.float32)
    rows = np.random.default_rng(seed).choice(len(x), min(len(x), 8192), replace=False)
    mean = x[rows].mean(0)
    _, _, vt = np.linalg.svd(x[rows] - mean, full_matrices=False)
    return np.ascontiguousarray((x - mean) @ vt[:PCA_DIM].T, np.float32)


def _nearest(x: np.ndarray, z: np.ndarray, base: np.ndarray, query: np.ndarray,
             exclude_self: bool) -> tuple[np.ndarray, np.ndarray]:
    """Each query row's nearest base row (rows of x) and its exact distance (float64, so an exact copy
    is at 0): the CANDIDATES nearest in z, re-ranked exactly."""
    import faiss

    k = min(len(base), CANDIDATES + int(exclude_self))
    index = faiss.IndexFlatL2(z.shape[1])
    index.add(np.ascontiguousarray(z[base]))
    _, cand = index.search(np.ascontiguousarray(z[query]), k)
    cand = np.where(cand >= 0, base[np.maximum(cand, 0)], -1)
    if exclude_self:
        cand[cand == query[:, None]] = -1
    best = np.full(len(query), -1, np.int64)
    dist = np.full(len(query), np.inf)
    for s in range(0, len(query), BLOCK):
        c = cand[s:s + BLOCK]
        q = x[query[s:s + BLOCK]].astype(np.float64)
        d = np.sqrt(((q[:, None, :] - x[np.maximum(c, 0)].astype(np.float64)) ** 2).sum(-1))
        d[c < 0] = np.inf
        j = d.argmin(1)
        rows = np.arange(len(c))
        best[s:s + BLOCK], dist[s:s + BLOCK] = np.where(np.isfinite(d[rows, j]), c[rows, j], -1), d[rows, j]
    return best, dist


def cross_pairs(x: np.ndarray, side: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray, float]:
    """Near-duplicate pairs across the sides: (pairs (p, 2) rows of x, A's first, closest first; their
    distances; the threshold). A pair is a mutual nearest neighbour across the sides at a distance no
    larger than the NN_PERCENTILE-th percentile of the within-side nearest-neighbour distances (those
    above 0: a side's exact copies would otherwise make it 0, and a re-encoded copy across would be missed)."""
    x = np.asarray(x)
    side = np.asarray(side)
    a_rows, b_rows = np.flatnonzero(side == 0), np.flatnonzero(side == 1)
    empty = (np.zeros((0, 2), np.int64), np.zeros(0), float("nan"))
    if min(len(a_rows), len(b_rows)) < 2:
        return empty
    z = _search_space(x, seed)
    within = np.concatenate([_nearest(x, z, rows, rows, True)[1] for rows in (a_rows, b_rows)])
    within = within[np.isfinite(within) & (within > 0)]   # exact copies within a side would make it 0
    threshold = float(np.percentile(within, NN_PERCENTILE)) if len(within) else 0.0   # then exact copies only
    b_of_a, d_ab = _nearest(x, z, b_rows, a_rows, False)
    a_of_b, _ = _nearest(x, z, a_rows, b_rows, False)
    nearest_a = np.full(len(x), -1, np.int64)
    nearest_a[b_rows] = a_of_b
    keep = (b_of_a >= 0) & (nearest_a[np.maximum(b_of_a, 0)] == a_rows) & (d_ab <= threshold)
    pairs = np.c_[a_rows[keep], b_of_a[keep]]
    order = np.argsort(d_ab[keep], kind="stable")
    return pairs[order], d_ab[keep][order], threshold


# --------------------------------------------------------------------------- the map


def _outline(xy: np.ndarray) -> list[list[float]]:
    """Convex hull of the HULL_SHARE of the points nearest their median; [] when there is no area."""
    from scipy.spatial import ConvexHull, QhullError

    if len(xy) >= 3:
        d = ((xy - np.median(xy, 0)) ** 2).sum(1)
        xy = xy[np.argsort(d, kind="stable")[:max(3, int(np.ceil(HULL_SHARE * len(xy))))]]
    if len(xy) < 3:
        return []
    try:
        return [[float(u), float(v)] for u, v in xy[ConvexHull(xy).vertices]]
    except QhullError:   # all on a line
        return []


def region_name(r: dict[str, Any]) -> str:
    """"region 36 (cells 14, 18, 22): Sneaker": the id, the cells of a union, the majority class."""
    cells = r.get("cells") or [r["region"]]
    what = f"region {r['region']}" + (f" (cells {', '.join(map(str, cells))})" if len(cells) > 1 else "")
    return what + (f": {r['majority_class']}" if r.get("majority_class") is not None else "")


def region_label(r: dict[str, Any]) -> str:
    return f"{region_name(r)}, more in {r['more_in']}, q={float(r['p_adjusted']):.2g}"


def point_map(x: np.ndarray, side: np.ndarray, codes: np.ndarray, regions: list[dict[str, Any]],
              seed: int) -> PointMap:
    """The map of A ∪ B (see the module docstring); rows of ``x`` are A's images, then B's. ``regions``: the
    regions to outline, most significant
    first, dicts with ``region``, ``more_in``, ``p_adjusted``, optional ``majority_class`` and
    ``cells`` (the ids in ``codes`` it covers; default ``[region]``); ``codes``: each image's id."""
    x, side, codes = np.asarray(x), np.asarray(side, np.int64), np.asarray(codes, np.int64)
    n = len(x)
    n_a = int((side == 0).sum())
    pairs, _, threshold = cross_pairs(x, side, seed)
    linked = pairs[:MAX_LINKS]
    rng = np.random.default_rng(seed)
    must = np.unique(linked.ravel())
    rest = np.setdiff1d(np.arange(n), must)
    extra = rng.choice(rest, min(len(rest), max(0, MAX_POINTS - len(must))), replace=False)
    drawn = rng.permutation(np.concatenate([must, extra]).astype(np.int64))
    xy = np.asarray(embed_2d(x[drawn], seed), np.float32)
    where = np.full(n, -1, np.int64)
    where[drawn] = np.arange(len(drawn))
    outlines = []
    for r in regions[:MAX_OUTLINES]:
        members = [int(m) for m in r.get("cells") or [r["region"]]]
        outlines.append({"region": int(r["region"]), "label": region_label(r), "members": members,
                         "polygon": _outline(xy[np.isin(codes[drawn], members)])})
    sampled = (f"all {n} images" if len(drawn) == n else
               f"{len(drawn)} of the {n} images (seeded sample, seed {seed}; every linked pair's images included)")
    rule = (f"{len(pairs)} near-duplicate pairs across A and B (mutual nearest neighbours across the sides on "
            f"the features, at a distance ≤ {threshold:.3g}, the {NN_PERCENTILE:g}st percentile of the within-side "
            f"nearest-neighbour distances above 0)"
            + (f", the closest {MAX_LINKS} linked" if len(pairs) > MAX_LINKS else "")
            if np.isfinite(threshold) else "no near-duplicate pairs sought (a side has under 2 images)")
    note = (f"{embedding_name()} of {sampled}, coloured by side; outlined: the {len(outlines)} most significant "
            f"regions ({HULL_SHARE:.0%} of each region's drawn points, convex hull); lines: {rule}.")
    return PointMap(xy=xy, side=side[drawn], index=np.where(side[drawn] == 0, drawn, drawn - n_a),
                    group=codes[drawn], outlines=outlines, links=where[linked].reshape(-1, 2), note=note)


# --------------------------------------------------------------------------- the record's artefacts

ARRAYS = ("xy", "side", "index", "group", "links")


def to_artefacts(points: PointMap, prefix: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Arrays for the npz (coordinates as float32) and the JSON-able rest."""
    kinds = {"xy": np.float32, "side": np.uint8, "index": np.int32, "group": np.int32, "links": np.int32}
    arrays = {f"{prefix}_{name}": np.asarray(getattr(points, name), kind) for name, kind in kinds.items()}
    arrays[f"{prefix}_links"] = arrays[f"{prefix}_links"].reshape(-1, 2)
    return arrays, {"n": len(points.xy), "outlines": points.outlines, "note": points.note}


def from_artefacts(art: dict[str, Any], prefix: str, meta: dict[str, Any]) -> PointMap:
    """The map back from a record's artefacts; a ValueError when they do not fit together (they are
    files anyone could edit)."""
    missing = [name for name in ARRAYS if f"{prefix}_{name}" not in art]
    if missing:
        raise ValueError(f"artefact arrays {', '.join(prefix + '_' + m for m in missing)} are missing")
    xy = np.asarray(art[f"{prefix}_xy"], np.float64)
    side, index, group = (np.asarray(art[f"{prefix}_{k}"]).astype(np.int64) for k in ("side", "index", "group"))
    links = np.asarray(art[f"{prefix}_links"]).astype(np.int64).reshape(-1, 2)
    m = len(xy)
    if xy.ndim != 2 or xy.shape[1] != 2 or not np.isfinite(xy).all():
        raise ValueError("the positions are not finite (m, 2) numbers")
    if not (len(side) == len(index) == len(group) == m) or (links.size and (links.min() < 0 or links.max() >= m)):
        raise ValueError("the point arrays do not fit together")
    outlines = []
    for o in meta.get("outlines") or []:
        poly = np.asarray(o.get("polygon") or [], np.float64).reshape(-1, 2)
        if not np.isfinite(poly).all():
            raise ValueError("an outline is not finite numbers")
        outlines.append({"label": str(o.get("label", "")), "members": [int(v) for v in o.get("members") or []],
                         "polygon": poly.tolist()})
    return PointMap(xy=xy, side=side, index=index, group=group, outlines=outlines, links=links,
                    note=str(meta.get("note", "")))


# --------------------------------------------------------------------------- the report's SVG


def thumbnail_uri(image: np.ndarray, size: int = THUMB) -> str:
    """A ``size`` px JPEG data URI of one image (the longer side ``size``)."""
    from PIL import Image

    im = Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB")
    im.thumbnail((size, size), Image.NEAREST if max(im.size) <= size else Image.BILINEAR)
    if max(im.size) < size:   # tiny images (8 px digits): enlarge, pixels kept sharp
        scale = size / max(im.size)
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=JPEG_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


#: the SVG: plot area, then a side panel (legend, hover preview)
PLOT_W, PLOT_H, PANEL_W, PAD = 560, 460, 200, 14
MAP_STYLE = (".pmap{max-width:100%;height:auto;font:11px system-ui,sans-serif;background:#fff;"
             "border:1px solid #e4e8ee}.pmap .pt circle{fill-opacity:.65;stroke:none}"
             ".pmap .a circle,.pmap .ka{fill:#1f77b4}.pmap .b circle,.pmap .kb{fill:#d62728}"
             ".pmap .tip{display:none}.pmap .pt:hover .tip{display:inline}"
             ".pmap .pt:hover circle{fill-opacity:1;stroke:#000;stroke-width:1.5}"
             ".pmap .ln{stroke:#2ca02c;stroke-width:1.2;stroke-opacity:.85}"
             ".pmap .ol{fill:none;stroke:#111;stroke-width:1.4;pointer-events:none}"
             ".pmap .olt{font-size:10px;font-weight:600;paint-order:stroke;stroke:#fff;stroke-width:3px;"
             "pointer-events:none}.pmap .tiptext{font-size:11px}")


def map_html(points: PointMap, thumbnail: Callable[[int, int], str | None], caption: str) -> str:
    """The map as an inline ``<svg>`` (see the module docstring); ``thumbnail(side, index)`` gives a
    point's data URI or None (then its hover panel has text only)."""
    from bench.reporting import esc

    xy = np.asarray(points.xy, np.float64)
    lo, hi = xy.min(0) if len(xy) else np.zeros(2), xy.max(0) if len(xy) else np.ones(2)
    span = np.where(hi - lo > 0, hi - lo, 1.0)

    def at(p: np.ndarray) -> np.ndarray:
        u = (np.asarray(p, np.float64) - lo) / span
        return np.c_[PAD + u[..., 0] * (PLOT_W - 2 * PAD), PAD + (1 - u[..., 1]) * (PLOT_H - 2 * PAD)]

    pos = at(xy) if len(xy) else np.zeros((0, 2))
    outlined: dict[int, str] = {}
    for o in points.outlines:
        for m in o["members"]:
            outlined.setdefault(int(m), o["label"].split(",")[0])
    partner: dict[int, int] = {}
    for i, j in np.asarray(points.links, np.int64).reshape(-1, 2):
        partner[int(i)], partner[int(j)] = int(j), int(i)
    width = PLOT_W + PANEL_W
    tx, ty = PLOT_W + 10, 150
    out = [f'<figure class="pointmap"><svg class="pmap" xmlns="http://www.w3.org/2000/svg" width="{width}" '
           f'height="{PLOT_H}" viewBox="0 0 {width} {PLOT_H}" role="img" aria-label="{esc(caption)}">'
           f"<style>{MAP_STYLE}</style>"
           f'<rect x="0.5" y="0.5" width="{PLOT_W - 1}" height="{PLOT_H - 1}" fill="#fafbfc" stroke="#dde2e8"/>']
    out.append('<g class="links">' + "".join(
        f'<line class="ln" x1="{pos[i, 0]:.1f}" y1="{pos[i, 1]:.1f}" x2="{pos[j, 0]:.1f}" y2="{pos[j, 1]:.1f}"/>'
        for i, j in partner.items() if i < j) + "</g>")
    out.append('<g class="points">')
    sides = np.asarray(points.side, np.int64)
    for k in range(len(xy)):
        s, idx, grp = int(sides[k]), int(points.index[k]), int(points.group[k])
        who = f"{'AB'[s]} #{idx}"
        lines = [who, f"region {grp}" + (f" (outlined: {outlined[grp]})" if grp in outlined else "")]
        if k in partner:
            j = partner[k]
            lines.append(f"near-duplicate of {'AB'[int(sides[j])]} #{int(points.index[j])}")
        uri = thumbnail(s, idx)
        tip = (f'<image href="{uri}" x="{tx}" y="{ty}" width="96" height="96" preserveAspectRatio="xMinYMin meet"/>'
               if uri else "")
        tip += "".join(f'<text class="tiptext" x="{tx}" y="{ty + 112 + 14 * n}">{esc(t)}</text>'
                       for n, t in enumerate(lines))
        out.append(f'<g class="pt {"ab"[s]}" data-side="{"ab"[s]}" data-index="{idx}"><title>{esc(" · ".join(lines))}'
                   f'</title><circle cx="{pos[k, 0]:.1f}" cy="{pos[k, 1]:.1f}" r="3"/><g class="tip">{tip}</g></g>')
    out.append("</g>")
    out.append('<g class="outlines">')
    placed: list[tuple[float, float, float]] = []
    for o in points.outlines:
        poly = at(np.asarray(o["polygon"], np.float64).reshape(-1, 2)) if o["polygon"] else np.zeros((0, 2))
        members = np.isin(np.asarray(points.group), o["members"])
        if len(poly):
            out.append('<polygon class="ol" points="' + " ".join(f"{u:.1f},{v:.1f}" for u, v in poly) + '"/>')
            cx, cy = poly[:, 0].mean(), poly[:, 1].min() - 4
        elif members.any():
            cx, cy = pos[members, 0].mean(), pos[members, 1].mean()
        else:
            continue
        half = 3.1 * len(o["label"]) + 4   # about half the label's width at 10 px
        cx = float(np.clip(cx, half, PLOT_W - half))
        cy = float(np.clip(cy, 12, PLOT_H - 4))
        for _ in range(PLOT_H // 13):   # move down (wrapping to the top) until it overlaps no label placed
            if not any(abs(cy - y) < 12 and abs(cx - x) < half + h for x, y, h in placed):
                break
            cy = cy + 13 if cy + 13 < PLOT_H - 4 else 12.0
        placed.append((cx, cy, half))
        out.append(f'<text class="olt" x="{cx:.1f}" y="{cy:.1f}" text-anchor="middle">{esc(o["label"])}</text>')
    out.append("</g>")
    n_a, n_b = int((sides == 0).sum()), int((sides == 1).sum())
    out.append(f'<g class="legend"><circle class="ka" cx="{tx + 5}" cy="20" r="4"/><text x="{tx + 14}" y="24">'
               f'A ({n_a} drawn)</text><circle class="kb" cx="{tx + 5}" cy="38" r="4"/><text x="{tx + 14}" y="42">'
               f'B ({n_b} drawn)</text><line class="ln" x1="{tx}" y1="56" x2="{tx + 10}" y2="56"/>'
               f'<text x="{tx + 14}" y="60">near-duplicates ({len(partner) // 2})</text>'
               f'<rect x="{tx}" y="68" width="10" height="8" fill="none" stroke="#111"/>'
               f'<text x="{tx + 14}" y="77">outlined regions ({len(points.outlines)})</text>'
               f'<text x="{tx}" y="{ty - 10}" fill="#55606c">hover a point:</text></g>')
    out.append(f'</svg><figcaption>{esc(caption)} {esc(points.note)}</figcaption></figure>')
    return "".join(out)
