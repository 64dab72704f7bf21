"""2-D wavelet coefficients per image: PyWavelets (the oracle) and a torch port (GPU path).

Row i of the coefficient matrix W is the vectorised ``wavedec2`` of image i, in PyWavelets'
order ``[cA_L, (cH_L, cV_L, cD_L), ..., (cH_1, cV_1, cD_1)]``, each array (h, w, 3) flattened
in C order. The torch port reproduces PyWavelets' extension modes and downsampling phase
exactly, so both paths give the same matrix (tested to 1e-5 in float32, 1e-10 in float64).
"""

from __future__ import annotations

import numpy as np
import pywt
import torch
import torch.nn.functional as F

from bench.errors import BenchError

#: extension modes the torch port implements (all PyWavelets modes but the smooth/anti ones)
TORCH_MODES = ("zero", "constant", "symmetric", "reflect", "periodic", "periodization")
COEFFICIENTS = ("all", "approximation")
#: the paper's CIFAR setting: 32×32×3 images, all level-1 coefficients
PAPER_COEFFICIENTS = 3072


def check_wavelet(wavelet: str, mode: str, level: int, coefficients: str = "all") -> pywt.Wavelet:
    """Validate the decomposition parameters with one clear line each."""
    if wavelet not in pywt.wavelist(kind="discrete"):
        raise BenchError(f"wavelet: unknown discrete wavelet {wavelet!r}; e.g. 'db1' (Haar), 'db2', 'sym4'")
    if mode not in pywt.Modes.modes:
        raise BenchError(f"wavelet: unknown extension mode {mode!r}; one of {', '.join(pywt.Modes.modes)}")
    if not isinstance(level, (int, np.integer)) or isinstance(level, bool) or level < 1:
        raise BenchError(f"wavelet: level must be an integer >= 1, got {level!r}")
    if coefficients not in (*COEFFICIENTS, "auto"):
        raise BenchError(f"wavelet: coefficients must be 'auto' or one of {COEFFICIENTS}, got {coefficients!r}")
    return pywt.Wavelet(wavelet)


def coefficient_count(shape: tuple[int, int], wavelet: str = "db1", level: int = 1, mode: str = "symmetric",
                      coefficients: str = "all", channels: int = 3) -> int:
    """Length of one image's coefficient vector (equals the pixel count for Haar on even sizes)."""
    w = pywt.Wavelet(wavelet)
    h, wd = shape
    total = 0
    for _ in range(level):
        h, wd = pywt.dwt_coeff_len(h, w.dec_len, mode), pywt.dwt_coeff_len(wd, w.dec_len, mode)
        total += 3 * h * wd
    return (h * wd + (total if coefficients == "all" else 0)) * channels


def resolve_coefficients(shape: tuple[int, int], wavelet: str, level: int, mode: str, coefficients: str,
                         max_coefficients: int = PAPER_COEFFICIENTS) -> tuple[int, str]:
    """(level, coefficients) to use. ``"auto"``: all coefficients at ``level`` if they number at
    most ``max_coefficients`` (CIFAR: 3,072, exactly the paper's run); for larger images the
    approximation band of the first level from ``level`` on that fits (the paper: "no need to
    extract the wavelet coefficients on a very fine level" for larger images)."""
    check_wavelet(wavelet, mode, level, coefficients)
    if coefficients != "auto":
        return level, coefficients
    if coefficient_count(shape, wavelet, level, mode, "all") <= max_coefficients:
        return level, "all"
    wav = pywt.Wavelet(wavelet)
    deepest = max(min(pywt.dwt_max_level(s, wav.dec_len) for s in shape), level)
    for lev in range(level, deepest + 1):
        if coefficient_count(shape, wavelet, lev, mode, "approximation") <= max_coefficients:
            return lev, "approximation"
    return deepest, "approximation"


def wavedec2_pywt(images: np.ndarray, wavelet: str = "db1", level: int = 1, mode: str = "symmetric",
                  coefficients: str = "all") -> np.ndarray:
    """(B, H, W, C) images → (B, d) float64 coefficient rows with PyWavelets (reference path)."""
    wav = check_wavelet(wavelet, mode, level, coefficients)
    x = np.asarray(images, dtype=np.float64)
    if x.ndim == 3:
        x = x[..., None]
    coeffs = pywt.wavedec2(x, wav, mode=mode, level=level, axes=(1, 2))
    parts = [coeffs[0].reshape(len(x), -1)]
    if coefficients == "all":
        parts += [c.reshape(len(x), -1) for details in coeffs[1:] for c in details]
    return np.concatenate(parts, axis=1)


# --------------------------------------------------------------------------- torch port


def _extension_index(n: int, left: int, total: int, mode: str, device: torch.device) -> torch.Tensor:
    """Source index of each extended sample t = -left .. total-left-1 (-1 marks a zero sample)."""
    t = torch.arange(-left, total - left, device=device)
    if mode == "symmetric":                    # ... x1 x0 | x0 x1 ... x_{n-1} | x_{n-1} ...
        r = t.remainder(2 * n)
        return torch.where(r < n, r, 2 * n - 1 - r)
    if mode == "reflect":                      # ... x2 x1 | x0 x1 ... x_{n-1} | x_{n-2} ...
        if n == 1:
            return torch.zeros_like(t)
        r = t.remainder(2 * n - 2)
        return torch.where(r < n, r, 2 * n - 2 - r)
    if mode in ("periodic", "periodization"):
        return t.remainder(n)
    if mode == "constant":
        return t.clamp(0, n - 1)
    if mode == "zero":
        return torch.where((t >= 0) & (t < n), t, torch.full_like(t, -1))
    raise BenchError(f"wavelet: mode {mode!r} has no torch port; use one of {', '.join(TORCH_MODES)} "
                     "or the PyWavelets backend")


def _dwt_last(x: torch.Tensor, filt: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One-level DWT along the last axis. ``filt`` is (2, 1, F): flipped dec_lo, dec_hi.

    PyWavelets computes out[o] = sum_j h[j] x_ext[2o + 1 - j] (out length floor((n+F-1)/2));
    in ``periodization`` mode an odd signal first repeats its last sample and
    out[o] = sum_j h[j] x_per[2o + F/2 - j] (length ceil(n/2)).
    """
    n = x.shape[-1]
    flen = filt.shape[-1]
    if mode == "periodization":
        if n % 2:
            x = torch.cat([x, x[..., -1:]], dim=-1)
            n += 1
        n_out = n // 2
        start = flen // 2 - flen + 1           # first needed extended index
    else:
        n_out = (n + flen - 1) // 2
        start = 2 - flen
    total = 2 * n_out + flen - 2
    idx = _extension_index(n, -start, total, mode, x.device)
    lead = x.shape[:-1]
    flat = x.reshape(-1, 1, n)
    if mode == "zero":
        ext = F.pad(flat, (0, 1)).index_select(-1, torch.where(idx < 0, n, idx))
    else:
        ext = flat.index_select(-1, idx)
    y = F.conv1d(ext, filt.to(dtype=x.dtype), stride=2)[..., :n_out]
    return y[:, 0].reshape(*lead, n_out), y[:, 1].reshape(*lead, n_out)


def _dwt2(x: torch.Tensor, filt: torch.Tensor, mode: str) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """One 2-D level on (B, H, W, C): returns cA, (cH, cV, cD) like ``pywt.dwt2`` with axes (1, 2)."""
    xh = x.movedim(1, -1)                                     # H last
    a_h, d_h = (t.movedim(-1, 1) for t in _dwt_last(xh, filt, mode))
    out = {}
    for key, t in (("a", a_h), ("d", d_h)):
        lo, hi = _dwt_last(t.movedim(2, -1), filt, mode)      # W last
        out[key + "a"], out[key + "d"] = lo.movedim(-1, 2), hi.movedim(-1, 2)
    return out["aa"], (out["da"], out["ad"], out["dd"])


def wavedec2_torch(images: torch.Tensor | np.ndarray, wavelet: str = "db1", level: int = 1,
                   mode: str = "symmetric", coefficients: str = "all", *,
                   device: torch.device | str | None = None, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """(B, H, W, C) images → (B, d) coefficient rows on ``device``, equal to :func:`wavedec2_pywt`."""
    wav = check_wavelet(wavelet, mode, level, coefficients)
    x = torch.as_tensor(images)
    dev = torch.device(device) if device is not None else x.device
    x = x.to(device=dev, dtype=dtype)
    if x.ndim == 3:
        x = x[..., None]
    filt = torch.tensor([wav.dec_lo[::-1], wav.dec_hi[::-1]], dtype=dtype, device=dev)[:, None, :]
    details = []
    for _ in range(level):
        x, det = _dwt2(x, filt, mode)
        details.append(det)
    parts = [x.reshape(len(x), -1)]
    if coefficients == "all":
        parts += [c.reshape(len(c), -1) for det in reversed(details) for c in det]
    return torch.cat(parts, dim=1)
