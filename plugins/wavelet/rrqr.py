"""Column selection of Algorithm 1: pivoted QR of W and the condition-number cap tau.

The paper keeps the largest m such that the first m pivoted columns of W have condition
number < tau. cond(W[:, P[:k]]) equals cond(R[:k, :k]) exactly, and it is non-decreasing in
k (adding a column can only widen the singular-value range), so m is found by bisection on
R alone, without re-factorising. |R11 / Rkk| is a lower bound on cond(R[:k, :k]); it only
prunes the search range, the decision always uses the exact 2-norm condition number.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg as sla
from scipy.linalg import blas
from scipy.sparse.linalg import ArpackError, ArpackNoConvergence, LinearOperator, eigsh
from threadpoolctl import threadpool_limits

from bench.errors import BenchError

#: leading blocks up to this size get a dense SVD; larger ones use Lanczos on R^T R and its inverse
DENSE_COND_MAX = 768
QR_METHODS = ("geqp3", "gram")
#: ARPACK residual tolerance; eigenvalue errors are of order tol² relative, far below any tau decision
LANCZOS_TOL = 1e-10


@dataclass
class ColumnSelection:
    """Which columns of W Algorithm 1 keeps, and why."""

    columns: np.ndarray          # indices into W's columns, pivot order
    n_constant: int              # constant columns dropped before the QR
    rrqr_applied: bool
    m: int                       # number of kept columns
    cond: float                  # cond of the kept columns (nan when no QR was run)
    n_cond_evaluations: int
    r_diagonal: np.ndarray | None


def triangular_cond(r: np.ndarray, *, dense_max: int = DENSE_COND_MAX) -> float:
    """2-norm condition number of an upper-triangular matrix.

    Dense SVD for small blocks; otherwise Lanczos (ARPACK) for the largest eigenvalue of
    RᵀR and of (RᵀR)⁻¹ = R⁻¹R⁻ᵀ (two triangular solves per step), converged to machine
    precision (ARPACK residual 1e-10). Falls back to the dense SVD if ARPACK does not converge.
    """
    k = r.shape[0]
    diag = np.abs(np.diag(r))
    if k == 0:
        return 1.0
    if not np.all(diag > 0):
        return float("inf")
    if k <= dense_max:
        s = sla.svdvals(r, check_finite=False)
        return float(s[0] / s[-1]) if s[-1] > 0 else float("inf")
    rf = np.asfortranarray(r, dtype=np.float64)
    big = LinearOperator((k, k), dtype=np.float64,
                         matvec=lambda v: blas.dtrmv(rf, blas.dtrmv(rf, v), trans=1))
    inv = LinearOperator((k, k), dtype=np.float64,
                         matvec=lambda v: blas.dtrsv(rf, blas.dtrsv(rf, v, trans=1)))
    v0 = np.ones(k) / np.sqrt(k)
    try:
        # matrix-vector products are memory-bound: one BLAS thread is faster than several
        with threadpool_limits(1, user_api="blas"):
            smax2 = eigsh(big, k=1, which="LA", tol=LANCZOS_TOL, v0=v0, ncv=min(k, 24), maxiter=20 * k,
                          return_eigenvectors=False)[0]
            inv_smin2 = eigsh(inv, k=1, which="LA", tol=LANCZOS_TOL, v0=v0, ncv=min(k, 24),
                              maxiter=20 * k, return_eigenvectors=False)[0]
    except (ArpackNoConvergence, ArpackError):
        return triangular_cond(r, dense_max=k)
    return float(np.sqrt(smax2 * inv_smin2))


def tau_rule(r: np.ndarray, tau: float, *, dense_max: int = DENSE_COND_MAX) -> tuple[int, float, int]:
    """Largest m with cond(R[:m, :m]) < tau, from the R factor of a pivoted QR.

    Returns (m, cond(R[:m, :m]), number of exact condition-number evaluations).
    """
    if not tau > 1:
        raise BenchError(f"wavelet: tau must be > 1 (a condition-number cap), got {tau!r}")
    kmax = min(r.shape)
    if kmax == 0:
        return 0, float("nan"), 0
    diag = np.abs(np.diag(r)[:kmax])
    with np.errstate(divide="ignore"):
        lower = diag[0] / np.minimum.accumulate(diag) if diag[0] > 0 else np.full(kmax, np.inf)
    # cond(R_k) >= lower[k-1]; so m < the first k whose lower bound reaches tau
    hi = int(np.argmax(lower >= tau)) if np.any(lower >= tau) else kmax   # candidate count
    evaluations = 0
    cache: dict[int, float] = {}

    def cond(k: int) -> float:
        nonlocal evaluations
        if k not in cache:
            evaluations += 1
            cache[k] = 1.0 if k == 1 else triangular_cond(r[:k, :k], dense_max=dense_max)
        return cache[k]

    if hi == 0:                       # a zero first pivot: nothing to keep
        return 0, float("nan"), 0
    if cond(hi) < tau:
        m = hi
    else:
        lo, up = 1, hi                # invariant: cond(lo) < tau <= cond(up)
        while up - lo > 1:
            mid = (lo + up) // 2
            if cond(mid) < tau:
                lo = mid
            else:
                up = mid
        m = lo
    return m, cond(m), evaluations


def pivoted_r(w: np.ndarray, columns: np.ndarray | None = None, *, method: str = "gram",
              tau: float = 1e5) -> tuple[np.ndarray, np.ndarray]:
    """R (k×d', k = min(n, d')) and the permutation of a QR with column pivoting of w[:, columns].

    ``geqp3``: ``scipy.linalg.qr(pivoting=True)`` (LAPACK geqp3, as MATLAB's ``qr``).
    ``gram``: pivoted Cholesky (LAPACK pstrf, also through scipy) of WᵀW: the same R and
    pivots in exact arithmetic (diagonal pivoting on the Gram matrix picks the column with
    the largest residual norm, as QR with column pivoting does) at BLAS-3 speed; geqp3's
    norm updates are BLAS-2 and took 5-45 s for 5,000 × 3,072 on this shared 2-core machine.
    It stops once a pivot R_kk < R_11 / (10 tau), where |R_11 / R_kk| already proves
    cond >= tau, and zeroes the rest. Squaring the condition number costs about
    eps · cond² relative accuracy in the kept block: fine up to tau ~ 1e7.
    """
    cols = np.arange(w.shape[1]) if columns is None else np.asarray(columns)
    k = min(w.shape[0], len(cols))
    if method == "geqp3":
        wf = np.empty((w.shape[0], len(cols)), dtype=np.float64, order="F")
        np.take(w, cols, axis=1, out=wf)      # one Fortran copy, factorised in place
        r, piv = sla.qr(wf, mode="r", pivoting=True, overwrite_a=True, check_finite=False)
        del wf
        return np.triu(r[:k]), piv
    if method == "gram":
        g = w.T @ w                                 # numpy uses syrk for this product
        if len(cols) < w.shape[1]:
            g = g[np.ix_(cols, cols)]
        stop = float(np.max(np.diag(g))) / (10.0 * tau) ** 2
        c, piv, rank, info = sla.lapack.dpstrf(np.asfortranarray(g), lower=0, tol=stop, overwrite_a=1)
        if info < 0:
            raise BenchError(f"wavelet: pivoted Cholesky failed (LAPACK info={info})")
        r = np.triu(c)
        r[rank:, :] = 0.0
        return r[:k], piv - 1
    raise BenchError(f"wavelet: qr must be one of {QR_METHODS}, got {method!r}")


def select_columns(w: np.ndarray, *, tau: float = 1e5, n_columns: int | None = None, rrqr: str = "auto",
                   qr: str = "gram", dense_max: int = DENSE_COND_MAX) -> ColumnSelection:
    """Algorithm 1, lines 5-9: drop constant columns, then pivoted QR and the tau rule.

    ``rrqr="auto"`` runs the QR only when n > d (the paper's rule), ``"always"`` forces it,
    ``"never"`` keeps every non-constant column. ``n_columns`` keeps a fixed number of leading
    pivoted columns instead of the tau rule (the reference ``main.m`` keeps 500).
    """
    if rrqr not in ("auto", "always", "never"):
        raise BenchError(f"wavelet: rrqr must be 'auto', 'always' or 'never', got {rrqr!r}")
    n, d = w.shape
    varying = np.flatnonzero(w.max(axis=0) > w.min(axis=0))
    n_constant = d - len(varying)
    apply = len(varying) > 0 and (rrqr == "always" or (rrqr == "auto" and n > d))
    if not apply:
        return ColumnSelection(varying, n_constant, False, len(varying), float("nan"), 0, None)
    if qr == "gram" and tau > 1e7 and n_columns is None:
        raise BenchError(f"wavelet: qr='gram' squares the condition number; use qr='geqp3' for tau={tau:g} > 1e7")
    if not tau > 1:
        raise BenchError(f"wavelet: tau must be > 1 (a condition-number cap), got {tau!r}")
    r, piv = pivoted_r(w, varying, method=qr, tau=tau if n_columns is None else 1e7)
    if n_columns is not None:
        if not isinstance(n_columns, (int, np.integer)) or n_columns < 1:
            raise BenchError(f"wavelet: n_columns must be a positive integer or None, got {n_columns!r}")
        m = min(int(n_columns), *r.shape)
        c = triangular_cond(r[:m, :m], dense_max=dense_max)
        m_sel, c_m, evals = m, c, 1
    else:
        m_sel, c_m, evals = tau_rule(r, tau, dense_max=dense_max)
    return ColumnSelection(varying[piv[:m_sel]], n_constant, True, m_sel, c_m, evals, np.abs(np.diag(r)).copy())
