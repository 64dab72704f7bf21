"""Per-neuron ranges and histograms: the fast one-scatter-per-layer fill and the slow oracle.

A neuron is a channel of a tapped layer; every spatial position / token of every image is
one sample (vdna's convention). Values are normalised per neuron with the stored range
[a_c, b_c]: z = (x − μ_c) / σ_c, μ_c = (a_c + b_c)/2, σ_c = (b_c − a_c)/2 + 1e-8, clamped to
[−1, 1] (out-of-range values land in the edge bins) and binned with ``torch.histc``'s rule.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from bench.errors import BenchError, DataError

#: vdna adds this to the half-width so a constant neuron does not divide by zero
SIGMA_EPS = 1e-8
RANGE_MODES = ("centre", "zero")


def as_channels(x: torch.Tensor, layer: str) -> torch.Tensor:
    """Activations of one layer → (B, C, P): channels on axis 1, every position a sample.

    Intermediate layers arrive as (B, C, ...), ``pooled`` as (B, D) (one position) and the
    extractor's ``tokens`` as (B, T, D) (channels last, so transposed here).
    """
    if layer == "tokens" and x.ndim == 3:
        x = x.transpose(1, 2)
    if x.ndim == 2:
        return x.unsqueeze(-1)
    if x.ndim < 2:
        raise DataError(f"layer {layer!r} gave activations of shape {tuple(x.shape)}; need (B, C, ...)")
    return x.flatten(2)


# --------------------------------------------------------------------------- ranges


@dataclass
class Ranges:
    """Per-neuron activation ranges of a reference set, and how they are widened.

    ``mins``/``maxs`` are the raw per-neuron minima / maxima (float64). ``mode="centre"``
    widens [min, max] by ``scale`` about its centre (our default: a margin on both sides);
    ``mode="zero"`` multiplies both ends by ``scale`` as vdna does (numbers then match
    vdna, including its pitfall that a positive minimum moves *up* and clips real values).
    """

    mins: dict[str, np.ndarray]
    maxs: dict[str, np.ndarray]
    mode: str = "centre"
    scale: float = 1.2
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.mode not in RANGE_MODES:
            raise BenchError(f"dna: range_mode must be one of {', '.join(RANGE_MODES)}, got {self.mode!r}")
        if not (isinstance(self.scale, (int, float)) and self.scale > 0):
            raise BenchError(f"dna: range_scale must be a positive number, got {self.scale!r}")
        self.scale = float(self.scale)
        self.mins = {k: np.asarray(v, dtype=np.float64).reshape(-1) for k, v in self.mins.items()}
        self.maxs = {k: np.asarray(v, dtype=np.float64).reshape(-1) for k, v in self.maxs.items()}
        if self.mins.keys() != self.maxs.keys():
            raise DataError("dna: ranges have minima and maxima for different layers")
        for k in self.mins:
            if self.mins[k].shape != self.maxs[k].shape:
                raise DataError(f"dna: ranges of layer {k!r} have {self.mins[k].size} minima "
                                f"but {self.maxs[k].size} maxima")

    @property
    def layers(self) -> list[str]:
        return list(self.mins)

    def bounds(self, layer: str) -> tuple[np.ndarray, np.ndarray]:
        """The widened range [a_c, b_c] used for binning (float64)."""
        lo, hi = self._get(layer)
        if self.mode == "zero":
            return lo * self.scale, hi * self.scale
        centre, half = (lo + hi) / 2, (hi - lo) / 2 * self.scale
        return centre - half, centre + half

    def norm(self, layer: str, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """(μ, σ) float64 tensors (C,) on ``device``, exactly as vdna computes them."""
        key = (layer, str(device))
        if key not in self._cache:
            a, b = self.bounds(layer)
            mu = torch.from_numpy((a + b) / 2).to(device)
            sigma = torch.from_numpy((b - a) / 2 + SIGMA_EPS).to(device)
            self._cache[key] = (mu, sigma)
        return self._cache[key]

    def bin_width(self, layer: str, bins: int) -> np.ndarray:
        """Width of one bin in activation units, per neuron: 2σ_c / N."""
        a, b = self.bounds(layer)
        return ((b - a) / 2 + SIGMA_EPS) * 2.0 / bins

    def _get(self, layer: str) -> tuple[np.ndarray, np.ndarray]:
        if layer not in self.mins:
            raise DataError(f"dna: no ranges for layer {layer!r}; ranges cover {', '.join(self.mins)}")
        return self.mins[layer], self.maxs[layer]

    def union(self, other: Ranges) -> Ranges:
        """Element-wise widest range of two reference sets (same layers)."""
        if self.layers != other.layers:
            raise DataError("dna: cannot unite ranges over different layers")
        return Ranges({k: np.minimum(self.mins[k], other.mins[k]) for k in self.mins},
                      {k: np.maximum(self.maxs[k], other.maxs[k]) for k in self.maxs},
                      mode=self.mode, scale=self.scale)

    def with_convention(self, mode: str, scale: float) -> Ranges:
        return Ranges(dict(self.mins), dict(self.maxs), mode=mode, scale=scale)

    def digest(self) -> str:
        """Hash of everything that changes the bins: two DNAs are comparable only if equal."""
        h = hashlib.sha256(f"{self.mode}:{self.scale!r}".encode())
        for k in self.mins:
            h.update(k.encode())
            h.update(self.mins[k].tobytes())
            h.update(self.maxs[k].tobytes())
        return h.hexdigest()[:16]

    def to_json(self) -> dict:
        """vdna's ``activation_ranges.json`` keys (lists instead of {index: value}) + convention."""
        return {"mins_per_neuron": {k: v.tolist() for k, v in self.mins.items()},
                "maxs_per_neuron": {k: v.tolist() for k, v in self.maxs.items()},
                "range_mode": self.mode, "range_scale": self.scale}

    @classmethod
    def from_json(cls, obj: Mapping, *, mode: str | None = None, scale: float | None = None,
                  source: str = "ranges") -> Ranges:
        """Read our layout or vdna's ``activation_ranges.json`` ({layer: {index: value}}).

        vdna's files carry no convention: they are read with vdna's (×1.2 about zero)
        unless ``mode``/``scale`` say otherwise. A file may come from anywhere, so every
        field is checked (layers, numbers, finite, min <= max, widened bounds finite) and a
        problem is one DataError naming it, never a traceback or a meaningless score.
        """
        def bad(msg: str) -> DataError:
            return DataError(f"dna: {source}: {msg}")

        if not isinstance(obj, Mapping):
            raise bad(f"expected a JSON object, got {type(obj).__name__}")
        try:
            raw_min, raw_max = obj["mins_per_neuron"], obj["maxs_per_neuron"]
        except KeyError:
            raise DataError("dna: a ranges file needs 'mins_per_neuron' and 'maxs_per_neuron'") from None
        for key, raw in (("mins_per_neuron", raw_min), ("maxs_per_neuron", raw_max)):
            if not isinstance(raw, Mapping) or not raw:
                raise bad(f"{key} must be an object of layer → values, got {_kind(raw)}")

        def _vec(key: str, layer: str, v) -> np.ndarray:
            where = f"{key}[{layer!r}]"
            if isinstance(v, Mapping):   # vdna: {"0": value, "1": value, …}
                try:
                    index = {int(k): k for k in v}
                except (TypeError, ValueError):
                    raise bad(f"{where} has a non-integer neuron index "
                              f"{next(k for k in v if not _is_int(k))!r}") from None
                if len(index) != len(v) or sorted(index) != list(range(len(index))):
                    raise bad(f"{where} must index neurons 0..{len(index) - 1} without gaps")
                v = [v[index[i]] for i in range(len(index))]
            if not isinstance(v, (list, tuple)) or not v:
                raise bad(f"{where} must be a non-empty list of numbers, got {_kind(v)}")
            if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
                x = next(x for x in v if not isinstance(x, (int, float)) or isinstance(x, bool))
                raise bad(f"{where} holds {_kind(x)}; every value must be a number")
            try:
                arr = np.asarray(v, dtype=np.float64)
            except OverflowError:
                raise bad(f"{where} holds an integer too large for a float") from None
            if not np.isfinite(arr).all():
                raise bad(f"{where} holds {int((~np.isfinite(arr)).sum())} NaN or infinite values")
            return arr

        mins = {str(k): _vec("mins_per_neuron", k, v) for k, v in raw_min.items()}
        maxs = {str(k): _vec("maxs_per_neuron", k, v) for k, v in raw_max.items()}
        if mins.keys() != maxs.keys():
            raise bad(f"minima cover layers {sorted(mins)} but maxima {sorted(maxs)}")
        for k in mins:
            if mins[k].shape != maxs[k].shape:
                raise bad(f"layer {k!r} has {mins[k].size} minima but {maxs[k].size} maxima")
            inverted = int((mins[k] > maxs[k]).sum())
            if inverted:
                raise bad(f"layer {k!r} has {inverted} neurons whose minimum is above their maximum")
        mode = mode or obj.get("range_mode", "zero")
        scale = scale if scale is not None else obj.get("range_scale", 1.2)
        if not isinstance(mode, str):
            raise bad(f"range_mode must be a string, got {_kind(mode)}")
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not np.isfinite(scale):
            raise bad(f"range_scale must be a positive number, got {scale!r}")
        ranges = cls(mins, maxs, mode=mode, scale=scale)
        for k in ranges.layers:   # ±1e308 is finite, but not once widened
            a, b = ranges.bounds(k)
            with np.errstate(over="ignore", invalid="ignore"):
                ok = all(np.isfinite(v).all() for v in (a, b, b - a, a + b))   # μ, σ, bin width
            if not ok:
                raise bad(f"layer {k!r} has values too large to bin (beyond ±1e307 once widened)")
        return ranges

    @classmethod
    def load(cls, path: str, **kwargs) -> Ranges:
        """Ranges from a JSON file: a ranges file, or a saved DNA's ``.json`` (its ``bench.ranges``)."""
        try:
            with open(path, "rb") as f:
                obj = json.loads(f.read().decode("utf-8"))
        except FileNotFoundError:
            raise DataError(f"dna: ranges file {path!r} does not exist") from None
        except IsADirectoryError:
            raise DataError(f"dna: ranges file {path!r} is a folder; pass a .json file") from None
        except UnicodeDecodeError as exc:
            raise DataError(f"dna: ranges file {path!r} is not UTF-8 text (byte {exc.start}); "
                            "expected JSON") from None
        except json.JSONDecodeError as exc:
            raise DataError(f"dna: ranges file {path!r} is not valid JSON ({exc.msg})") from None
        except (OSError, RecursionError, ValueError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            raise DataError(f"dna: cannot read ranges file {path!r}: {why}") from None
        if isinstance(obj, Mapping) and "bench" in obj:
            ours = obj["bench"]
            if not isinstance(ours, Mapping) or not isinstance(ours.get("ranges"), Mapping):
                raise DataError(f"dna: ranges file {path!r}: 'bench' must be a saved DNA's object with 'ranges'")
            obj = ours["ranges"]
        return cls.from_json(obj, source=f"ranges file {path!r}", **kwargs)


def _is_int(text) -> bool:
    try:
        int(text)
    except (TypeError, ValueError):
        return False
    return True


def _kind(value) -> str:
    """What a JSON value is, for an error message (``a string 'x'``, ``an object``, ``null``)."""
    if value is None:
        return "null"
    if isinstance(value, str):
        return f"a string {value[:20]!r}"
    if isinstance(value, bool):
        return f"a boolean {value}"
    if isinstance(value, Mapping):
        return "an object" if value else "an empty object"
    if isinstance(value, (list, tuple)):
        return "a list" if value else "an empty list"
    return type(value).__name__


class RangeAccumulator:
    """Streaming per-neuron min / max over every position of every image."""

    def __init__(self, layers: Iterable[str]):
        self.layers = list(layers)
        self.mins: dict[str, torch.Tensor] = {}
        self.maxs: dict[str, torch.Tensor] = {}
        self.n_images = 0

    def update(self, acts: Mapping[str, torch.Tensor]) -> None:
        for layer in self.layers:
            x = as_channels(acts[layer], layer)
            lo, hi = x.amin(dim=(0, 2)), x.amax(dim=(0, 2))
            if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):
                raise DataError(f"dna: activations of layer {layer!r} contain NaN or inf; "
                                "check the images and the extractor weights")
            if layer in self.mins:
                torch.minimum(self.mins[layer], lo, out=self.mins[layer])
                torch.maximum(self.maxs[layer], hi, out=self.maxs[layer])
            else:
                self.mins[layer], self.maxs[layer] = lo.clone(), hi.clone()
        self.n_images += next(iter(acts.values())).shape[0] if acts else 0

    def result(self, *, mode: str = "centre", scale: float = 1.2) -> Ranges:
        if self.n_images == 0:
            raise DataError("dna: cannot compute ranges from an empty set of images")
        return Ranges({k: _np64(v) for k, v in self.mins.items()},
                      {k: _np64(v) for k, v in self.maxs.items()}, mode=mode, scale=scale)


def _np64(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy()


# --------------------------------------------------------------------------- histograms

PRECISIONS = {"float64": torch.float64, "float32": torch.float32}


#: values per block on CPU: a block's passes stay in cache instead of streaming through memory
CPU_BLOCK = 2**15
BACKENDS = ("auto", "torch", "numba")

try:  # optional: one fused pass per layer on CPU (the torch path needs ~7 passes)
    import numba
except ImportError:  # pragma: no cover - depends on the environment
    numba = None

if numba is not None:
    @numba.njit(parallel=True, nogil=True, cache=True)
    def _fill_numba(x, mu, sigma, bins, group, out):  # pragma: no cover - compiled
        """The float64 formula of :func:`histogram_fast` fused in one pass, channels in parallel
        (each thread owns whole channels, so counts never race). Per row, bin indices first
        (a branch-free loop LLVM vectorises), then the counting. Returns the number of NaNs."""
        nb, nc, npos = x.shape
        half = bins / 2.0
        top = bins - 0.5
        bad = 0
        for c in numba.prange(nc):
            m = mu[c]
            s = sigma[c]
            idx = np.empty(npos, np.int64)
            for b in range(nb):
                nan = 0
                for p in range(npos):
                    v = (1.0 + (np.float64(x[b, c, p]) - m) / s) * half
                    nan += v != v
                    idx[p] = np.int64(min(max(v, 0.0), top))
                if nan:
                    bad += nan
                    continue
                g = group[b]
                for p in range(npos):
                    out[g, c, idx[p]] += 1
        return bad


def histogram_fast(x: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor, bins: int, *,
                   group: torch.Tensor | None = None, n_groups: int = 1, out: torch.Tensor | None = None,
                   dtype: torch.dtype = torch.float64, block: int = CPU_BLOCK, backend: str = "auto") -> torch.Tensor:
    """Counts of (B, C, P) activations per (group, neuron, bin), bit-identical to vdna's clamp +
    per-channel ``histc`` but with one ``index_add_`` per block of rows instead of one call per
    neuron. ``group`` (B,) int assigns each image to a histogram (one per image, positives vs
    negatives …); the result is int64 (n_groups, C, bins), added into ``out`` when given.

    Why it is exact: histc computes ⌊(z − lo)·N / (hi − lo)⌋ and puts z == hi into the last bin;
    with lo = −1, hi = 1 this is ⌊(z + 1)·N/2⌋ (halving is exact, so the in-place order below
    gives the same doubles). Clamping v = (z + 1)·N/2 to [0, N − ½] does both vdna's clamp of z
    to [−1, 1] and histc's last-bin rule in one pass. ``addcdiv`` with value 1 is 1 + z/σ,
    exactly div-then-add in one pass. Why blocks: on CPU the passes over a block of ``block``
    values stay in cache (≈3× faster than whole-batch passes), then one ``index_add_`` counts
    the whole batch; on a GPU everything is one block. ``backend="auto"`` uses the fused numba
    kernel (same formula, one pass) for float64 on CPU when numba is installed.
    """
    if backend not in BACKENDS:
        raise BenchError(f"dna: backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    b, c, p = x.shape
    use_numba = dtype == torch.float64 and x.device.type == "cpu" and backend in ("auto", "numba")
    if backend == "numba" and not use_numba:
        raise BenchError("dna: the numba backend runs float64 binning of CPU tensors only")
    if use_numba and numba is None:
        if backend == "numba":
            raise BenchError("dna: backend='numba' needs the numba package")
        use_numba = False
    if use_numba:
        return _histogram_numba(x, mu, sigma, bins, group, n_groups, out)
    if torch.isnan(x).any():  # NaN would become an out-of-range index (a device assert on CUDA)
        raise DataError(f"dna: {int(torch.isnan(x).sum())} activation values are NaN; check the images and "
                        "the extractor weights")
    total = n_groups * c * bins
    itype = torch.int32 if total < 2**31 else torch.int64
    dev = x.device
    if out is None:
        out = torch.zeros((n_groups, c, bins), dtype=torch.int64, device=dev)
    rows = x.reshape(b * c, p)
    mu_r = mu.to(device=dev, dtype=dtype).repeat(b)[:, None]
    sg_r = sigma.to(device=dev, dtype=dtype).repeat(b)[:, None]
    off_r = torch.arange(c, device=dev, dtype=itype).mul_(bins).repeat(b)
    if group is not None:
        off_r += group.to(device=dev, dtype=itype).mul(c * bins).repeat_interleave(c)
    off_r = off_r[:, None]
    step = b * c if dev.type != "cpu" else max(1, block // max(p, 1))
    zbuf = torch.empty((min(step, b * c), p), dtype=dtype, device=dev)
    idx = torch.empty((b * c, p), dtype=itype, device=dev)
    one = torch.ones((), dtype=dtype, device=dev)
    for s in range(0, b * c, step):
        e = min(s + step, b * c)
        z, i = zbuf[: e - s], idx[s:e]
        z.copy_(rows[s:e])
        z.sub_(mu_r[s:e])
        torch.addcdiv(one, z, sg_r[s:e], out=z)
        z.mul_(bins / 2.0).clamp_(0.0, bins - 0.5)
        i.copy_(z)  # truncation = floor on [0, N − ½]
        i.add_(off_r[s:e])
    flat = idx.view(-1)  # one scatter for the whole batch: per-block calls cost more than they save
    out.view(-1).index_add_(0, flat, torch.ones(1, dtype=torch.int64, device=dev).expand(flat.numel()))
    return out


def _histogram_numba(x, mu, sigma, bins, group, n_groups, out):
    if out is None:
        out = torch.zeros((n_groups, x.shape[1], bins), dtype=torch.int64)
    g = np.zeros(x.shape[0], dtype=np.int64) if group is None else group.to("cpu", torch.int64).numpy()
    if g.size and (g.min() < 0 or g.max() >= out.shape[0]):
        raise DataError(f"dna: group ids must lie in 0..{out.shape[0] - 1}")
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
    xs = x.detach()
    xs = (xs if xs.dtype in (torch.float32, torch.float64) else xs.float()).contiguous().numpy()
    bad = _fill_numba(xs, mu.to("cpu", torch.float64).numpy(), sigma.to("cpu", torch.float64).numpy(),
                      int(bins), g, out.numpy())
    if bad:
        raise DataError(f"dna: {bad} activation values are NaN; check the images and the extractor weights")
    return out


def histogram_histc(x: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor, bins: int) -> torch.Tensor:
    """The slow oracle: vdna's per-channel ``torch.histc`` loop in float64. (B, C, P) → (C, bins)."""
    z = (x.to(torch.float64) - mu[None, :, None]) / sigma[None, :, None]
    z = torch.clamp(z, -1.0, 1.0)
    out = torch.zeros((x.shape[1], bins), dtype=torch.int64, device=x.device)
    for c in range(x.shape[1]):
        out[c] = torch.histc(z[:, c].flatten(), bins=bins, min=-1.0, max=1.0).to(torch.int64)
    return out
