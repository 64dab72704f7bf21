"""DNA objects (histogram, per-neuron Gaussian, per-layer Gaussian) and their streaming builder.

One pass over a DataView fills every requested kind: per-neuron histograms over every
position of every image (one scatter-add per layer and batch), per-image spatial means for
the Gaussians (merged batch by batch with Chan's update, so nothing is held but the
moments), and optionally the per-image means themselves (the Summariser's embedding).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from bench.errors import BenchError, DataError

from .histogram import PRECISIONS, RangeAccumulator, Ranges, as_channels, histogram_fast

if TYPE_CHECKING:  # pragma: no cover
    from bench.api import DataView

KINDS = ("histogram", "gaussian", "layer-gaussian")
SAMPLES = ("positions", "image_mean")


def _same_extractor(a: Mapping, b: Mapping) -> bool:
    return a.get("name") == b.get("name") and a == b


@dataclass
class DNA:
    """What every DNA kind records: its neurons, how many images, which extractor."""

    kind: ClassVar[str] = ""
    neurons: dict[str, int]
    num_images: int
    extractor: dict[str, Any] = field(default_factory=dict)
    sample: str = "positions"
    source: str = ""

    @property
    def layers(self) -> list[str]:
        return list(self.neurons)

    @property
    def n_neurons(self) -> int:
        return int(sum(self.neurons.values()))

    def check_compatible(self, other: DNA) -> None:
        """Raise a one-line BenchError unless the two DNAs can be compared neuron by neuron."""
        if type(other) is not type(self):
            raise BenchError(f"dna: cannot compare a {self.kind} DNA with a {other.kind} DNA")
        if self.neurons != other.neurons:
            raise BenchError(f"dna: the DNAs tap different neurons ({self.neurons} vs {other.neurons})")
        if not _same_extractor(self.extractor, other.extractor):
            raise BenchError(f"dna: the DNAs come from different extractors "
                             f"({self.extractor.get('name')!r} vs {other.extractor.get('name')!r}, or "
                             "different weights / preprocessing); distances would be meaningless")
        if self.sample != other.sample:
            raise BenchError(f"dna: the DNAs sample activations differently ({self.sample} vs {other.sample})")

    def _meta(self, other: DNA, num_images: int) -> dict[str, Any]:
        return {"neurons": dict(self.neurons), "num_images": num_images, "extractor": dict(self.extractor),
                "sample": self.sample, "source": "+".join(s for s in (self.source, other.source) if s)}


@dataclass
class HistogramDNA(DNA):
    """Per-neuron int64 counts (C, bins) per layer over the stored, widened ranges."""

    kind: ClassVar[str] = "histogram"
    counts: dict[str, torch.Tensor] = field(default_factory=dict)
    bins: int = 1000
    ranges: Ranges | None = None

    @property
    def name(self) -> str:
        return f"histogram-{self.bins}"

    def check_compatible(self, other: DNA) -> None:
        super().check_compatible(other)
        assert isinstance(other, HistogramDNA)
        if self.bins != other.bins:
            raise BenchError(f"dna: histograms have {self.bins} and {other.bins} bins; build both with the same")
        if (self.ranges is None) != (other.ranges is None) or (
                self.ranges is not None and self.ranges.digest() != other.ranges.digest()):
            raise BenchError("dna: the histograms were binned over different neuron ranges; build both "
                             "DNAs with the same ranges (ranges=<reference DNA or ranges file>)")

    def __add__(self, other: HistogramDNA) -> HistogramDNA:
        """The DNA of the union of both image sets (histograms add)."""
        self.check_compatible(other)
        counts = {k: self.counts[k] + other.counts[k].to(self.counts[k].device) for k in self.counts}
        return HistogramDNA(**self._meta(other, self.num_images + other.num_images), counts=counts,
                            bins=self.bins, ranges=self.ranges)

    def to(self, device: torch.device | str) -> HistogramDNA:
        return HistogramDNA(neurons=dict(self.neurons), num_images=self.num_images, extractor=self.extractor,
                            sample=self.sample, source=self.source, bins=self.bins, ranges=self.ranges,
                            counts={k: v.to(device) for k, v in self.counts.items()})

    def stacked(self) -> torch.Tensor:
        """All neurons' counts concatenated in layer order: (Σ C, bins)."""
        return torch.cat([self.counts[k] for k in self.layers])


@dataclass
class GaussianDNA(DNA):
    """Per-neuron mean and unbiased variance of the per-image spatial means (float64)."""

    kind: ClassVar[str] = "gaussian"
    mu: dict[str, torch.Tensor] = field(default_factory=dict)
    var: dict[str, torch.Tensor] = field(default_factory=dict)

    name: ClassVar[str] = "gaussian"

    def __add__(self, other: GaussianDNA) -> GaussianDNA:
        """Pooled Gaussian of the union (Chan et al.'s parallel variance)."""
        self.check_compatible(other)
        n1, n2 = self.num_images, other.num_images
        n = n1 + n2
        mu, var = {}, {}
        for k in self.layers:
            mu[k], var[k] = _pooled_moments(self.mu[k], self.var[k], n1, other.mu[k], other.var[k], n2,
                                            torch.mul)
        return GaussianDNA(**self._meta(other, n), mu=mu, var=var)


@dataclass
class LayerGaussianDNA(DNA):
    """Per-layer mean and full float64 covariance of the per-image spatial means."""

    kind: ClassVar[str] = "layer-gaussian"
    mu: dict[str, torch.Tensor] = field(default_factory=dict)
    sigma: dict[str, torch.Tensor] = field(default_factory=dict)

    name: ClassVar[str] = "layer-gaussian"

    def to_gaussian(self) -> GaussianDNA:
        """The per-neuron Gaussians on the covariance diagonal (what vdna's NFD uses)."""
        return GaussianDNA(neurons=dict(self.neurons), num_images=self.num_images, extractor=self.extractor,
                           sample=self.sample, source=self.source, mu=dict(self.mu),
                           var={k: torch.diagonal(v).clone() for k, v in self.sigma.items()})

    def __add__(self, other: LayerGaussianDNA) -> LayerGaussianDNA:
        """Pooled Gaussian of the union: the mean shift enters as an outer product."""
        self.check_compatible(other)
        n1, n2 = self.num_images, other.num_images
        n = n1 + n2
        mu, sigma = {}, {}
        for k in self.layers:
            mu[k], sigma[k] = _pooled_moments(self.mu[k], self.sigma[k], n1, other.mu[k], other.sigma[k], n2,
                                              torch.outer)
        return LayerGaussianDNA(**self._meta(other, n), mu=mu, sigma=sigma)


# --------------------------------------------------------------------------- streaming builder


class _Moments:
    """Running mean and scatter (diagonal or full) of (B, C) rows, merged per batch (Chan)."""

    def __init__(self, full: bool):
        self.full = full
        self.n = 0
        self.mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None

    def update(self, m: torch.Tensor) -> None:
        nb = m.shape[0]
        bmean = m.mean(dim=0)
        xc = m - bmean
        bm2 = xc.T @ xc if self.full else (xc * xc).sum(dim=0)
        if self.n == 0:
            self.mean, self.m2 = bmean, bm2
        else:
            n = self.n + nb
            delta = bmean - self.mean
            corr = torch.outer(delta, delta) if self.full else delta * delta
            self.mean = self.mean + delta * (nb / n)
            self.m2 = self.m2 + bm2 + corr * (self.n * nb / n)
        self.n += nb

    def cov(self) -> torch.Tensor:
        assert self.m2 is not None
        return self.m2 / (self.n - 1) if self.n > 1 else torch.zeros_like(self.m2)


class DNABuilder:
    """Accumulates the requested DNA kinds from batches of activations, in one pass.

    ``update(acts, group=…)`` takes {layer: (B, C, ...)} activations; histograms need
    ``ranges``. With ``n_groups > 1`` each image's histogram goes to its group (the sum over
    groups is the whole set's DNA); Gaussians always cover the whole set.
    """

    def __init__(self, layers: Sequence[str], *, kinds: Sequence[str] = ("histogram",), bins: int = 1000,
                 ranges: Ranges | None = None, sample: str = "positions", n_groups: int = 1,
                 precision: str = "float64", keep_means: bool = False):
        check_kinds(kinds)
        check_bins(bins)
        if sample not in SAMPLES:
            raise BenchError(f"dna: sample must be one of {', '.join(SAMPLES)}, got {sample!r}")
        if precision not in PRECISIONS:
            raise BenchError(f"dna: precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if "histogram" in kinds and ranges is None:
            raise BenchError("dna: histograms need per-neuron ranges; compute them from a reference set first")
        self.layers = list(layers)
        self.kinds = tuple(kinds)
        self.bins = int(bins)
        self.ranges = ranges
        self.sample = sample
        self.n_groups = int(n_groups)
        self.dtype = PRECISIONS[precision]
        self.keep_means = keep_means
        self.counts: dict[str, torch.Tensor] = {}
        self.moments = {k: _Moments(full="layer-gaussian" in kinds) for k in self.layers}
        self.means: dict[str, list[np.ndarray]] = {k: [] for k in self.layers}
        self.neurons: dict[str, int] = {}
        self.group_images = np.zeros(self.n_groups, dtype=np.int64)
        self.num_images = 0
        #: view positions of the rows in the order they were fed (None: view order)
        self.order: np.ndarray | None = None

    @property
    def needs_means(self) -> bool:
        return self.keep_means or "gaussian" in self.kinds or "layer-gaussian" in self.kinds

    def update(self, acts: Mapping[str, torch.Tensor], group: torch.Tensor | np.ndarray | None = None) -> None:
        b = None
        for layer in self.layers:
            if layer not in acts:
                raise DataError(f"dna: the extractor returned no activations for layer {layer!r}")
            x = as_channels(acts[layer], layer)
            b = x.shape[0]
            self.neurons.setdefault(layer, int(x.shape[1]))
            if x.shape[1] != self.neurons[layer]:
                raise DataError(f"dna: layer {layer!r} changed from {self.neurons[layer]} to {x.shape[1]} channels")
            # spatial mean in the activations' own dtype (as vdna), moments in float64
            need = self.needs_means or self.sample == "image_mean"
            means = x.mean(dim=2).to(torch.float64) if need else None
            if means is not None and not torch.isfinite(means).all():
                raise DataError(f"dna: activations of layer {layer!r} contain NaN or inf; "
                                "check the images and the extractor weights")
            if "histogram" in self.kinds:
                assert self.ranges is not None
                mu, sigma = self.ranges.norm(layer, x.device)
                if mu.numel() != x.shape[1]:
                    raise DataError(f"dna: the ranges have {mu.numel()} neurons for layer {layer!r}, "
                                    f"the activations {x.shape[1]}")
                sample = means[:, :, None] if self.sample == "image_mean" else x
                if layer not in self.counts:
                    self.counts[layer] = torch.zeros((self.n_groups, x.shape[1], self.bins), dtype=torch.int64,
                                                     device=x.device)
                g = None if group is None else torch.as_tensor(group, device=x.device)
                histogram_fast(sample, mu, sigma, self.bins, group=g, n_groups=self.n_groups,
                               out=self.counts[layer], dtype=self.dtype)
            if "gaussian" in self.kinds or "layer-gaussian" in self.kinds:
                self.moments[layer].update(means)
            if self.keep_means:
                self.means[layer].append(means.to(torch.float32).cpu().numpy())
        if b is not None:
            self.num_images += b
            if group is None:
                self.group_images[0] += b
            else:
                self.group_images += np.bincount(np.asarray(torch.as_tensor(group).cpu()),
                                                 minlength=self.n_groups)[: self.n_groups]

    def _meta(self, extractor: Mapping | None, source: str, num_images: int) -> dict[str, Any]:
        if self.num_images == 0:
            raise DataError("dna: no images to build a DNA from (empty dataset or subset)")
        return {"neurons": dict(self.neurons), "num_images": int(num_images), "extractor": dict(extractor or {}),
                "sample": self.sample, "source": source}

    def histogram(self, group: int | None = None, *, extractor: Mapping | None = None,
                  source: str = "") -> HistogramDNA:
        """The histogram DNA of one group, or of all images (``group=None``)."""
        if "histogram" not in self.kinds:
            raise BenchError("dna: this builder did not collect histograms")
        if group is None:
            counts = {k: v.sum(dim=0) for k, v in self.counts.items()}
            n = self.num_images
        else:
            counts = {k: v[group].clone() for k, v in self.counts.items()}
            n = int(self.group_images[group])
        return HistogramDNA(**self._meta(extractor, source, n), counts=counts, bins=self.bins, ranges=self.ranges)

    def gaussian(self, *, extractor: Mapping | None = None, source: str = "") -> GaussianDNA:
        mom = self.moments
        var = {k: (torch.diagonal(m.cov()).clone() if m.full else m.cov()) for k, m in mom.items()}
        return GaussianDNA(**self._meta(extractor, source, self.num_images),
                           mu={k: m.mean for k, m in mom.items()}, var=var)

    def layer_gaussian(self, *, extractor: Mapping | None = None, source: str = "") -> LayerGaussianDNA:
        if "layer-gaussian" not in self.kinds:
            raise BenchError("dna: this builder did not collect full covariances")
        mom = self.moments
        return LayerGaussianDNA(**self._meta(extractor, source, self.num_images),
                                mu={k: m.mean for k, m in mom.items()}, sigma={k: m.cov() for k, m in mom.items()})

    def embedding(self) -> np.ndarray:
        """(N, Σ C) float32 per-image spatial means, layers concatenated."""
        if not self.keep_means:
            raise BenchError("dna: this builder did not keep per-image means")
        fed = np.concatenate([np.concatenate(self.means[k]) for k in self.layers], axis=1)
        if self.order is None:
            return fed
        out = np.empty_like(fed)
        out[self.order] = fed
        return out


def check_kinds(kinds: Sequence[str]) -> None:
    if isinstance(kinds, str) or not kinds or any(k not in KINDS for k in kinds):
        raise BenchError(f"dna: variants must be a non-empty list from {', '.join(KINDS)}, got {kinds!r}")


def check_bins(bins: int) -> None:
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 2:
        raise BenchError(f"dna: bins must be an integer >= 2, got {bins!r}")


# --------------------------------------------------------------------------- from a DataView


#: ``layers=BLOCKS``: every block output of the extractor, vdna's taps (a ResNet's bottlenecks)
BLOCKS = "blocks"


def resolve_layers(view: DataView, layers: Sequence[str] | str | None) -> list[str]:
    """The tapped layers: the extractor's default intermediate layers (None), every block
    output as vdna taps them (``"blocks"``: a ResNet-50's 16 bottlenecks, a ViT's blocks and
    final norm), or the named ones."""
    available = list(view.extractor.layer_names)
    if layers is None:
        return available or ["pooled"]
    if isinstance(layers, str) and layers == BLOCKS:
        blocks = list(getattr(view.extractor, "block_layers", None) or [])
        if not blocks:
            raise BenchError(f"dna: extractor {view.extractor.name!r} declares no block outputs for "
                             f"layers={BLOCKS!r}; name its layers instead: {', '.join(available + ['pooled'])}")
        return blocks
    available += [k for k in getattr(view.extractor, "block_layers", None) or [] if k not in available]
    if isinstance(layers, str):
        layers = [layers]
    layers = list(layers)
    if not layers:
        raise BenchError("dna: layers must name at least one layer")
    known = set(available) | {"pooled", "tokens"}
    bad = [k for k in layers if k not in known]
    if bad:
        raise BenchError(f"dna: unknown layer(s) {', '.join(map(repr, bad))} for extractor "
                         f"{view.extractor.name!r}; available: {', '.join(available + ['pooled', 'tokens'])}")
    if len(set(layers)) != len(layers):
        raise BenchError(f"dna: layers are listed twice in {layers}")
    return layers


def extractor_meta(view: DataView) -> dict[str, Any]:
    """Extractor identity stored with every DNA: name, weights and the full cache key."""
    ext = view.extractor
    key = ext.cache_key()
    return {"name": ext.name, "weights": getattr(ext, "weights", None),
            "cache_key": {k: (v if isinstance(v, (str, int, float, bool, type(None))) else str(v))
                          for k, v in sorted(key.items())}}


def iter_activations(view: DataView, layers: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Batches of {layer: activations} on the view's device. The ``pooled`` layer alone is read
    from the FeatureStore (computed once per dataset and shared with every method); anything
    else streams through the extractor."""
    if list(layers) == ["pooled"]:
        # read from the store a chunk of whole batches at a time (never all N rows: 1.5 GB at 1M × 384-D)
        n, batch = len(view), view.batch_size
        if n == 0:
            return
        d = view.features("pooled", rows=slice(0, 1)).shape[1]
        chunk = batch * max(1, POOLED_CHUNK_BYTES // (4 * d * batch))
        for lo in range(0, n, chunk):
            feats = view.features("pooled", rows=slice(lo, min(n, lo + chunk)))
            for start in range(0, len(feats), batch):
                yield {"pooled": torch.from_numpy(np.ascontiguousarray(feats[start:start + batch])).to(view.device)}
        return
    yield from view.activations(list(layers))


#: bytes of pooled features :func:`iter_activations` reads from the store at once
POOLED_CHUNK_BYTES = 2**24


#: activations of a range subsample kept for re-use by the histogram pass, at most this many bytes
KEEP_BYTES = 256 * 2**20


@dataclass
class RangePass:
    """Ranges from (a subsample of) a view, and the subsample's activations when they were kept
    so the histogram pass need not run the extractor on those images again."""

    ranges: Ranges
    rows: np.ndarray
    batches: list[dict[str, torch.Tensor]] | None = None


def range_pass(view: DataView, layers: Sequence[str], *, mode: str = "centre", scale: float = 1.2,
               max_images: int | None = None, seed: int = 0, keep_bytes: int = 0) -> RangePass:
    """Per-neuron min / max over a view or a seeded subsample of ``max_images`` of it; keeps the
    subsample's activations (on CPU) while they take at most ``keep_bytes``."""
    if len(view) == 0:
        raise DataError(f"dna: cannot compute ranges from an empty view of {view.name!r}")
    rows = np.arange(len(view))
    if max_images is not None:
        if isinstance(max_images, bool) or not isinstance(max_images, (int, np.integer)) or max_images < 1:
            raise BenchError(f"dna: range_images must be a positive integer or None, got {max_images!r}")
        if max_images < len(view):
            rng = np.random.default_rng(seed)
            rows = np.sort(rng.choice(len(view), size=int(max_images), replace=False))
    acc = RangeAccumulator(layers)
    kept: list[dict[str, torch.Tensor]] | None = [] if keep_bytes > 0 else None
    size = 0
    for acts in iter_activations(view.subset(rows), layers):
        acc.update(acts)
        if kept is not None:
            size += sum(acts[k].numel() * acts[k].element_size() for k in layers)
            if size <= keep_bytes:
                kept.append({k: acts[k].to("cpu") for k in layers})
            else:
                kept = None
    return RangePass(acc.result(mode=mode, scale=scale), rows, kept)


def compute_ranges(view: DataView, layers: Sequence[str], *, mode: str = "centre", scale: float = 1.2,
                   max_images: int | None = None, seed: int = 0) -> Ranges:
    """Per-neuron min / max over a reference view (a seeded subsample of ``max_images``)."""
    return range_pass(view, layers, mode=mode, scale=scale, max_images=max_images, seed=seed).ranges


def build_from_view(view: DataView, *, layers: Sequence[str], kinds: Sequence[str] = ("histogram",),
                    bins: int = 1000, ranges: Ranges | None = None, sample: str = "positions",
                    precision: str = "float64", keep_means: bool = False,
                    groups: np.ndarray | None = None, n_groups: int = 1,
                    prefetched: RangePass | None = None) -> DNABuilder:
    """Stream ``view`` once through a DNABuilder (``groups``: one group id per image of the view).

    With ``prefetched`` activations of some rows (a range pass that kept them), those rows are
    taken from memory and only the others go through the extractor; per-image outputs are put
    back in view order.
    """
    if len(view) == 0:
        raise DataError(f"dna: cannot build a DNA of an empty view of {view.name!r}")
    builder = DNABuilder(layers, kinds=kinds, bins=bins, ranges=ranges, sample=sample, n_groups=n_groups,
                         precision=precision, keep_means=keep_means)
    if prefetched is not None and prefetched.batches is not None:
        rest = np.setdiff1d(np.arange(len(view)), prefetched.rows)
        order = np.concatenate([prefetched.rows, rest])
        dev = torch.device(view.device)
        head = ({k: t.to(dev) for k, t in acts.items()} for acts in prefetched.batches)
        stream = chain(head, iter_activations(view.subset(rest), layers) if rest.size else ())
        builder.order = order
    else:
        order, stream = None, iter_activations(view, layers)
    if groups is not None:
        groups = np.asarray(groups, dtype=np.int64)
        if order is not None:
            groups = groups[order]
    start = 0
    for acts in stream:
        b = next(iter(acts.values())).shape[0]
        group = None if groups is None else torch.from_numpy(groups[start:start + b])
        builder.update(acts, group)
        start += b
    return builder


def _pooled_moments(m1: torch.Tensor, s1: torch.Tensor, n1: int, m2: torch.Tensor, s2: torch.Tensor, n2: int,
                    product) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased (co)variance of a union from its two parts (Chan et al.'s parallel
    update). ``product`` is ``torch.mul`` for per-neuron variances, ``torch.outer`` for a
    covariance: the mean shift enters as δ·δ or δδᵀ."""
    n = n1 + n2
    m2, s2 = m2.to(m1.device), s2.to(m1.device)
    delta = m2 - m1
    ss = s1 * max(n1 - 1, 0) + s2 * max(n2 - 1, 0) + product(delta, delta) * (n1 * n2 / n)
    return m1 + delta * (n2 / n), (ss / (n - 1) if n > 1 else torch.zeros_like(ss))
