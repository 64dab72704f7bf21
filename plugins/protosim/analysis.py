"""The paper's figures as data: which prototype fires where, per dataset.

Counting follows the reference's ``prepare_analysis.py`` (deterministic argmax of the raw
logits, no Gumbel noise, eval preprocessing) with its bugs fixed: counts are indexed by the
global group id, and a single process writes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from bench_protosim.data import Backbone, ImageTable
from bench_protosim.layer import ProtoSimNet


@dataclass
class Assignments:
    """Per-image results of one pass over the table."""

    codes: np.ndarray              # (N,) class-token prototype id
    embedding: np.ndarray          # (N, D) probe feature: teacher CLS after ProtoSim (hard, no noise)
    instance_counts: sp.csr_matrix  # (N, K) token counts per image (all tokens)
    spatial_counts: np.ndarray     # (G, K) patch-token occurrences per group
    cls_counts: np.ndarray         # (G, K) class-token occurrences per group
    position_counts: np.ndarray | None  # (T, K) per token position, when every image has T tokens
    n_prefix: int


@torch.no_grad()
def assign_all(table: ImageTable, backbone: Backbone, stats_net: ProtoSimNet, probe_net: ProtoSimNet, *,
               batch_size: int, amp: bool, chunk_tokens: int | None = None,
               progress: bool = False) -> Assignments:
    """Backbone once per image; prototype ids from ``stats_net``, probe features from ``probe_net``."""
    from bench.progress import track

    device = backbone.device
    k = stats_net.protosim.n_prototypes
    g = table.n_groups
    pre = backbone.num_prefix_tokens
    codes = np.empty(table.n, dtype=np.int64)
    emb: np.ndarray | None = None
    spatial = np.zeros((g, k), dtype=np.int64)
    cls = np.zeros((g, k), dtype=np.int64)
    pos_counts: np.ndarray | None = None
    pos_ok = True
    rows, cols = [], []
    use_amp = amp and device.type == "cuda"
    starts = range(0, table.n, batch_size)
    for start in track(starts, description="protosim assign", enabled=progress):
        idx = np.arange(start, min(start + batch_size, table.n))
        x = backbone.preprocess(table.images(idx))
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
            tok = backbone.tokens(x)
            feat = probe_net.features(tok, hard=True, gumbel=False, chunk_tokens=chunk_tokens)
        ids = stats_net.protosim.assign(tok).cpu().numpy()            # (B, T)
        if emb is None:
            emb = np.empty((table.n, feat.shape[1]), dtype=np.float32)
        emb[idx] = feat.float().cpu().numpy()
        codes[idx] = ids[:, 0]
        grp = table.groups[idx]
        np.add.at(cls, (grp, ids[:, 0]), 1)
        patch = ids[:, pre:]
        np.add.at(spatial, (np.repeat(grp, patch.shape[1]), patch.ravel()), 1)
        rows.append(np.repeat(idx, ids.shape[1]))
        cols.append(ids.ravel())
        t = ids.shape[1]
        if pos_ok and (pos_counts is None or pos_counts.shape[0] == t):
            if pos_counts is None:
                pos_counts = np.zeros((t, k), dtype=np.int64)
            flat = np.tile(np.arange(t), len(idx)) * k + ids.ravel()
            pos_counts += np.bincount(flat, minlength=t * k).reshape(t, k)
        else:
            pos_ok, pos_counts = False, None
    r = np.concatenate(rows)
    c = np.concatenate(cols)
    inst = sp.csr_matrix((np.ones(len(r), dtype=np.int32), (r, c)), shape=(table.n, k))
    inst.sum_duplicates()
    return Assignments(codes, emb, inst, spatial, cls, pos_counts if pos_ok else None, pre)


def instance_matrix(artefacts: dict) -> sp.csr_matrix:
    """The (images, K) token-count matrix back from a Summary's ``instance_counts_*`` artefacts."""
    indptr = np.asarray(artefacts["instance_counts_indptr"])
    k = len(artefacts["prototype_owner"])
    return sp.csr_matrix((artefacts["instance_counts_data"], artefacts["instance_counts_indices"], indptr),
                         shape=(len(indptr) - 1, k))


def group_image_counts(inst: sp.csr_matrix, groups: np.ndarray, n_groups: int) -> np.ndarray:
    """(G, K): in how many images of each group each prototype occurs (any token)."""
    presence = inst.copy()
    presence.data = np.ones_like(presence.data)
    return group_token_counts(presence, groups, n_groups)


def group_token_counts(inst: sp.csr_matrix, groups: np.ndarray, n_groups: int) -> np.ndarray:
    """(G, K): how many tokens of each group's images each prototype took."""
    n = len(groups)
    onehot = sp.csr_matrix((np.ones(n), (groups, np.arange(n))), shape=(n_groups, n))
    return np.asarray((onehot @ inst).todense()).astype(np.int64)


@dataclass
class PrototypeTypes:
    owner: np.ndarray      # (K,) group holding the largest share, -1 if unused
    share: np.ndarray      # (K,) that largest share, NaN if unused
    specific: np.ndarray   # (K,) bool
    shared: np.ndarray     # (K,) bool
    used: np.ndarray       # (K,) bool


def prototype_types(counts: np.ndarray, threshold: float = 0.95, *,
                    group_sizes: np.ndarray | None = None) -> PrototypeTypes:
    """Dataset-specific iff max_d n_d(k) / Σ_d n_d(k) > threshold (paper: "over 95 %").

    ``counts`` (G, K) raw occurrence counts; with ``group_sizes`` each row is first divided by
    its group's size (the size-normalised option, for datasets of very different sizes).
    """
    n = counts.astype(np.float64)
    if group_sizes is not None:
        n = n / np.maximum(np.asarray(group_sizes, dtype=np.float64), 1)[:, None]
    total = n.sum(0)
    used = total > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(used, n.max(0) / np.where(used, total, 1), np.nan)
    owner = np.where(used, n.argmax(0), -1)
    specific = used & (share > threshold) if counts.shape[0] > 1 else np.zeros_like(used)
    return PrototypeTypes(owner, share, specific, used & ~specific, used)


def wilson_lower(share: np.ndarray, n: np.ndarray, z: float = 1.96) -> np.ndarray:
    """Lower end of the Wilson score interval of a proportion ``share`` observed over ``n``."""
    n = np.maximum(np.asarray(n, dtype=np.float64), 1e-12)
    p = np.asarray(share, dtype=np.float64)
    centre = p + z * z / (2 * n)
    margin = z * np.sqrt(np.maximum(p * (1 - p) / n + z * z / (4 * n * n), 0))
    return (centre - margin) / (1 + z * z / n)


def rank_specific(types: PrototypeTypes, counts: np.ndarray, group: int) -> np.ndarray:
    """Prototypes specific to ``group``, most specific first.

    Ordered by the Wilson lower bound of their share (95 %), so a prototype seen in 200 images
    of one dataset and 2 of the other outranks one seen in a single image: with small data,
    rare prototypes pass the 95 % rule by chance. Ties: more occurrences, then lower id.
    """
    ids = np.flatnonzero(types.specific & (types.owner == group))
    lower = wilson_lower(types.share[ids], counts[:, ids].sum(0))
    order = np.lexsort((ids, -counts[group, ids], -lower))
    return ids[order]


def rank_shared(types: PrototypeTypes, counts: np.ndarray) -> np.ndarray:
    """Shared prototypes, most frequent first."""
    ids = np.flatnonzero(types.shared)
    return ids[np.lexsort((ids, -counts[:, ids].sum(0)))]


def cls_proportion(cls_counts: np.ndarray, spatial_counts: np.ndarray) -> np.ndarray:
    """(K,) share of a prototype's occurrences that are class tokens (paper Fig. 9); NaN if unused."""
    c = cls_counts.sum(0).astype(np.float64)
    s = spatial_counts.sum(0).astype(np.float64)
    tot = c + s
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(tot > 0, c / np.where(tot > 0, tot, 1), np.nan)


def jensen_shannon(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen–Shannon divergence in bits (0 = same usage, 1 = disjoint) of two count vectors."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    p, q = p / p.sum(), q / q.sum()
    m = 0.5 * (p + q)

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))

    return 0.5 * kl(p) + 0.5 * kl(q)


def top_images(inst: sp.csr_matrix, prototype: int, n: int) -> np.ndarray:
    """Images with the most tokens assigned to ``prototype`` (ties: lower index first)."""
    col = inst[:, prototype].tocoo()
    if col.nnz == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.lexsort((col.row, -col.data))
    return col.row[order][:n].astype(np.int64)


@torch.no_grad()
def attention_maps(table: ImageTable, backbone: Backbone, net: ProtoSimNet, rows: np.ndarray,
                   prototype: int) -> np.ndarray:
    """(len(rows), gh, gw) noise-free attention a = softmax(z·Pᵀ) of ``prototype`` on patch tokens."""
    if len(rows) == 0:
        return np.zeros((0, 1, 1), dtype=np.float32)
    maps = []
    for i in rows:
        x = backbone.preprocess(table.images([i]))
        tok = backbone.tokens(x)[:, backbone.num_prefix_tokens:]
        a = net.protosim.logits(tok).softmax(-1)[0, :, prototype]
        gh, gw = backbone.grid(x)
        maps.append(a.reshape(gh, gw).float().cpu().numpy())
    return np.stack(maps)


def save_grid(path: Path, table: ImageTable, backbone: Backbone, net: ProtoSimNet, inst: sp.csr_matrix,
              prototypes: list[int], titles: list[str], n_images: int, cell: int = 96) -> Path:
    """One PNG: per prototype a title, a row of its top images and a row of attention overlays
    (the paper's Figs. 4 and 5). Drawn with PIL; the colour map is matplotlib's ``jet``."""
    from matplotlib import colormaps
    from PIL import Image, ImageDraw

    jet = colormaps["jet"]
    head, pad = 14, 2
    width = n_images * (cell + pad) + pad
    height = max(len(prototypes), 1) * (head + 2 * (cell + pad)) + pad
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    y = pad
    for k, title in zip(prototypes, titles):
        draw.text((pad, y), title, fill="black")
        y += head
        rows = top_images(inst, k, n_images)
        maps = attention_maps(table, backbone, net, rows, k)
        for c, (i, amap) in enumerate(zip(rows, maps)):
            x = pad + c * (cell + pad)
            im = Image.fromarray(table.image(int(i))).convert("RGB").resize((cell, cell), Image.BILINEAR)
            canvas.paste(im, (x, y))
            a = Image.fromarray((amap / max(float(amap.max()), 1e-12) * 255).astype(np.uint8))
            a = np.asarray(a.resize((cell, cell), Image.BILINEAR), dtype=np.float32) / 255.0
            heat = Image.fromarray((jet(a)[..., :3] * 255).astype(np.uint8))
            canvas.paste(Image.blend(im, heat, 0.5), (x, y + cell + pad))
            group = table.group_names[table.groups[int(i)]]
            draw.text((x + 2, y + 1), f"#{int(i)} {group}"[:16], fill="white", stroke_width=1,
                      stroke_fill="black")
        y += 2 * (cell + pad)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
