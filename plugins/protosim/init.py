"""Prototype initialisation from the data (``prototype_init="kmeans"``, a documented deviation).

The reference starts the prototypes at U[0, 1) (``torch.rand``) and trains ~10⁵ steps. A
CPU-sized run trains a few dozen: the prototypes barely move (the mean cosine similarity
stays at its initial 0.75), and the argmax over near-random prototypes puts a third of all
patch tokens on one prototype. Starting instead from spherical k-means centroids of the
backbone's tokens (faiss) makes the first hard assignment a k-means assignment of the
tokens, and the DINO training refines it, as vector-quantiser codebooks are commonly
initialised from k-means.

Centroids are unit vectors scaled to the tokens' mean norm. For unit centroids c_k,
argmax_k z·c_k is the spherical k-means assignment of z (the nearest centroid of z/‖z‖), and
the common scale keeps the logits' range that of the reference's tokens·prototypes.
"""

from __future__ import annotations

import math

import faiss
import numpy as np
import torch
from bench_protosim.data import Backbone, ImageTable

from bench.errors import BenchError

#: faiss' default: at most this many sampled points per centroid are clustered
POINTS_PER_CENTROID = 256


def sample_rows(n: int, k: int, tokens_per_image: int, seed: int) -> np.ndarray:
    """Images whose tokens are clustered: all of them, or a seeded random subset with about
    ``POINTS_PER_CENTROID · k`` tokens (more would be subsampled by faiss anyway)."""
    want = math.ceil(POINTS_PER_CENTROID * k / max(tokens_per_image, 1))
    if want >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=want, replace=False))


@torch.no_grad()
def backbone_tokens(backbone: Backbone, table: ImageTable, rows: np.ndarray, batch_size: int) -> np.ndarray:
    """(len(rows)·T, D) float32 tokens of ``rows`` (eval preprocessing, every token)."""
    parts = []
    for start in range(0, len(rows), batch_size):
        idx = rows[start:start + batch_size]
        tok = backbone.tokens(backbone.preprocess(table.images(idx)))
        parts.append(tok.reshape(-1, tok.shape[-1]).float().cpu().numpy())
    return np.concatenate(parts)


def kmeans_prototypes(backbone: Backbone, table: ImageTable, k: int, *, seed: int, niter: int = 20,
                      batch_size: int = 256) -> torch.Tensor:
    """(k, D) prototypes: spherical k-means centroids of the tokens, scaled to their mean norm."""
    rows = sample_rows(table.n, k, backbone.n_tokens(backbone.input_size), seed)
    x = backbone_tokens(backbone, table, rows, batch_size)
    if len(x) < k:
        raise BenchError(f"protosim: prototype_init='kmeans' needs at least n_prototypes={k} tokens, "
                         f"the data has {len(x)}; lower n_prototypes or use prototype_init='uniform'")
    if not np.isfinite(x).all():
        raise BenchError("protosim: the backbone's tokens contain NaN or inf; cannot initialise prototypes")
    scale = float(np.linalg.norm(x, axis=1).mean())
    # min_points_per_centroid=1: fewer than faiss' 39 points per centroid is allowed (checked above),
    # without its warning on the console
    km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, spherical=True,
                      max_points_per_centroid=POINTS_PER_CENTROID, min_points_per_centroid=1)
    km.train(np.ascontiguousarray(x))
    centroids = km.centroids / np.maximum(np.linalg.norm(km.centroids, axis=1, keepdims=True), 1e-12)
    return torch.from_numpy(centroids * scale).float()
