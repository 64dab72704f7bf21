"""Algorithm 2 on a similarity matrix S: eigen-gap choice of n_c and spectral clustering.

The paper counts the gaps larger than gamma between consecutive eigenvalues of "the graph
Laplacian of S" and uses that count as n_c (gamma = 0.4 gives n_c = 454 on 500 CIFAR-100
fish). With values like that only the unnormalised Laplacian L = D - S fits (a normalised
one has its spectrum in [0, 2]), so that is what :func:`eigengap_count` uses, on S as
given (SSIM may be negative). Spectral clustering follows von Luxburg's tutorial (Ng,
Jordan & Weiss): affinity max(S, 0) without self-loops, the k smallest eigenvectors of
the symmetric normalised Laplacian, rows scaled to unit length, then k-means.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg as sla

from bench.errors import BenchError


def laplacian_eigenvalues(s: np.ndarray) -> np.ndarray:
    """Ascending eigenvalues of L = D - S (the diagonal of S cancels out)."""
    s = np.asarray(s, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] != s.shape[1]:
        raise BenchError(f"wavelet: a similarity matrix must be square, got shape {s.shape}")
    lap = np.diag(s.sum(axis=1)) - s
    return sla.eigvalsh((lap + lap.T) / 2, check_finite=False)


def eigengap_count(eigenvalues: np.ndarray, gamma: float = 0.4) -> int:
    """n_c = number of consecutive eigenvalue gaps larger than gamma (at least 1)."""
    if not gamma > 0:
        raise BenchError(f"wavelet: the eigen-gap threshold gamma must be > 0, got {gamma!r}")
    return max(1, int(np.sum(np.diff(np.sort(eigenvalues)) > gamma)))


def spectral_embedding(s: np.ndarray, k: int) -> np.ndarray:
    """(n, k) rows of the NJW embedding: unit-length rows of the k smallest eigenvectors of
    I - D^-1/2 A D^-1/2 with A = max(S, 0), zero diagonal."""
    a = np.clip(np.asarray(s, dtype=np.float64), 0.0, None)
    np.fill_diagonal(a, 0.0)
    a = (a + a.T) / 2
    deg = a.sum(axis=1)
    inv_sqrt = 1.0 / np.sqrt(np.maximum(deg, np.finfo(np.float64).tiny))
    inv_sqrt[deg <= 0] = 0.0                   # isolated images: own eigenvector below
    lap = np.eye(len(a)) - inv_sqrt[:, None] * a * inv_sqrt[None, :]
    _, vecs = sla.eigh(lap, subset_by_index=[0, k - 1], check_finite=False)
    norms = np.linalg.norm(vecs, axis=1, keepdims=True)
    return vecs / np.where(norms > 0, norms, 1.0)
