"""``dna``: Distributions of Neuron Activations (Ramtoula et al., CVPR 2023) as a Summariser and
a Comparator.

Summariser: the dataset's DNA (per-neuron 1000-bin histograms over every token / position
of every tapped layer, ranges from the dataset itself) plus per-neuron Gaussians; per image
it reports the spatial mean of every neuron (the linear probe's input).
Comparator: mean per-neuron EMD between the DNAs of A and B, in bin units (vdna's unit,
0 … bins − 1), histograms over ranges taken from the reference A; per-layer values, the
most different neurons, NFD and per-layer FD come in the detail.

Where the defaults deliberately differ from vdna 0.1.1, and why:

* taps: the extractor's default layers (a ResNet's stem and 4 stage outputs), not every block
  (vdna: a ResNet-50's 16 bottleneck outputs) — fewer, non-overlapping taps, and the committed
  leaderboard's numbers stay comparable;
* ranges: measured on the reference set A (vdna ships fixed per-extractor range files from the
  Hugging Face hub, unreachable offline) and widened ×1.2 about their centre (vdna: ×1.2 about
  zero, which moves a positive minimum up and clips real values into the edge bin).

The ``vdna`` preset (``--set dna.preset=vdna``; :data:`VDNA_PRESET`) gives vdna's taps
(``layers="blocks"``), range convention, 1000 bins, every position as a sample, float64
binning and, for the comparator, EMD in bins averaged over all neurons. With vdna's own files,
``--extractor rand-resnet50 --weights weights.pth --set dna.ranges=activation_ranges.json``
(from ``bramtoula/visual-dna-models``, ``Random/rand_resnet50/``), scores equal vdna's
``EMD(vdna1, vdna2)`` (tested against vdna itself to 1e-6 relative). A ranges file keeps its own
convention: ``range_mode`` / ``range_scale`` apply to ranges measured from images; vdna's
files, which record none, are read with vdna's.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch

import bench
from bench.api import Comparator, Comparison, DataView, Summariser, Summary
from bench.errors import BenchError, DataError

from .distances import (
    aggregate,
    check_neurons,
    emd_per_neuron,
    emd_rows,
    fd_per_layer,
    nfd_per_neuron,
    per_layer_means,
    top_neurons,
)
from .dna import (
    KEEP_BYTES,
    KINDS,
    SAMPLES,
    RangePass,
    build_from_view,
    check_bins,
    check_kinds,
    extractor_meta,
    range_pass,
    resolve_layers,
)
from .findings import dna_findings, reference_from_dict, reference_to_dict
from .histogram import PRECISIONS, RANGE_MODES, Ranges
from .selection import SCORES, n_selected, rank_from_labels, top_k
from .storage import metadata, saved_size

DISTANCES = {"emd": "mean EMD per neuron, in histogram bins (0 .. bins-1)",
             "emd_act": "mean EMD per neuron, in activation units",
             "nfd": "mean neuron Fréchet distance (per-image spatial means)",
             "fd": "mean over layers of the Fréchet distance of full-covariance Gaussians"}


#: how many recent ranges / DNAs a Comparator keeps (each is Σ neurons × bins int64)
CACHE_SIZE = 6


def _view_key(view: DataView) -> str:
    """Content key of a view: dataset revision, rows, extractor identity, device."""
    h = hashlib.sha256(f"{view.source.name}|{view.source.revision}|{view.source.n}|{view.device}".encode())
    h.update(np.asarray(view.indices, dtype=np.int64).tobytes())
    h.update(json.dumps(extractor_meta(view), sort_keys=True, default=str).encode())
    return h.hexdigest()


def _check_common(m: Any) -> None:
    check_bins(m.bins)
    if m.range_mode not in RANGE_MODES:
        raise BenchError(f"dna: range_mode must be one of {', '.join(RANGE_MODES)}, got {m.range_mode!r}")
    if isinstance(m.range_scale, bool) or not isinstance(m.range_scale, (int, float)) or not m.range_scale > 0:
        raise BenchError(f"dna: range_scale must be a positive number, got {m.range_scale!r}")
    if m.sample not in SAMPLES:
        raise BenchError(f"dna: sample must be one of {', '.join(SAMPLES)}, got {m.sample!r}")
    if m.precision not in PRECISIONS:
        raise BenchError(f"dna: precision must be one of {', '.join(PRECISIONS)}, got {m.precision!r}")
    if m.range_images is not None and (isinstance(m.range_images, bool) or not isinstance(m.range_images, int)
                                       or m.range_images < 1):
        raise BenchError(f"dna: range_images must be a positive integer or None, got {m.range_images!r}")


def _check_ranges_file(spec: Any) -> None:
    """A ranges file is read and validated when the run is planned, before any work: a broken one
    is one line then, not an error record per cell after the features are extracted."""
    if isinstance(spec, str) and spec not in ("self", "reference", "union"):
        Ranges.load(spec)


def _ranges_for(m: Any, spec: str, ref: DataView, layers: list[str], seed: int,
                other: DataView | None = None) -> tuple[Ranges, str, dict[str, RangePass]]:
    """Ranges from the reference view (or both views), or from a ranges / DNA JSON file.

    Also returns the range passes by side ("a", "b"): with ``range_images`` set, they keep the
    subsample's activations so the histogram pass does not run the extractor on them again.
    """
    kw = {"mode": m.range_mode, "scale": m.range_scale, "max_images": m.range_images,
          "keep_bytes": KEEP_BYTES if m.range_images is not None else 0}
    if spec in ("self", "reference", "union"):
        passes = {"a": range_pass(ref, layers, seed=seed, **kw)}
        r = passes["a"].ranges
        if spec == "union" and other is not None:
            passes["b"] = range_pass(other, layers, seed=seed + 1, **kw)
            r = r.union(passes["b"].ranges)
        return r, spec, passes
    if isinstance(spec, str):
        # the file's own convention (vdna's files record none and are read with vdna's): the
        # numbers in it were measured for that convention, and a DNA saved with them used it
        r = Ranges.load(spec)
        missing = [k for k in layers if k not in r.mins]
        if missing:
            raise DataError(f"dna: the ranges file {spec!r} has no ranges for layer(s) {', '.join(missing)}")
        sub = Ranges({k: r.mins[k] for k in layers}, {k: r.maxs[k] for k in layers}, mode=r.mode, scale=r.scale)
        return sub, "file", {}
    raise BenchError(f"dna: ranges must be 'reference', 'union' or a path to a ranges / DNA .json, got {spec!r}")


#: vdna 0.1.1's conventions (``--set dna.preset=vdna``): every block output, 1000 bins, ranges
#: ×1.2 about zero, every spatial position / token a sample, float64 binning as its histc
VDNA_PRESET: dict[str, Any] = {"layers": "blocks", "bins": 1000, "range_mode": "zero", "range_scale": 1.2,
                               "sample": "positions", "precision": "float64"}


@contextlib.contextmanager
def _one_torch_thread():
    """torch on one thread for a draw's EMD: its element-wise passes over (neurons × bins) are memory
    bound, and on a loaded 2-core machine a second intra-op thread doubled their time (0.08–0.09 s
    against 0.035–0.04 s at load average 7, benchmarks/RESULTS_issue26.md). Same values either way."""
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _entropy_bits(counts: torch.Tensor) -> torch.Tensor:
    p = counts.to(torch.float64) / counts.sum(dim=1, keepdim=True).clamp(min=1)
    return -(torch.where(p > 0, p * torch.log2(p), torch.zeros_like(p))).sum(dim=1)


class DNASummariser(Summariser):
    """A dataset's DNA: per-neuron histograms (and Gaussians) of a frozen extractor's activations.

    ``embedding`` = per-image spatial mean of every tapped neuron (layers concatenated);
    ``codes`` = None (DNA does not cluster). Artefacts: the DNA counts (Σ neurons, bins),
    its vdna-layout metadata with ranges, Gaussian means / variances, a per-layer table; the
    DNA objects are ``dna_``, ``gaussian_``, ``layer_gaussian_`` (``save_dna`` writes them).

    layers: tapped layers (default: the extractor's default layers; "blocks": every block
    output, as vdna taps them); ranges: "self" (min / max of this dataset) or a ranges / DNA
    .json file (read with its own convention); range_mode: for measured ranges, "centre"
    (widen ×range_scale about the centre) or "zero" (vdna: ×1.2 about zero);
    range_images: ranges from a seeded subsample (its activations are re-used, so one pass);
    sample: "positions" (every token, vdna) or "image_mean"; precision: "float64" bins exactly
    as vdna's float64 histc, "float32" is faster and moves a few values by one bin.
    """

    name = "dna"
    version = "1"
    requires: ClassVar[frozenset[str]] = frozenset({"activations"})
    #: CPU preset for the small embedded datasets: ranges from 256 images, whose activations are
    #: kept for the histogram pass, so the extractor runs once per image instead of twice
    quick_params: ClassVar[dict] = {"range_images": 256}
    #: ``--set dna.preset=vdna``: vdna 0.1.1's DNA (see the module docstring)
    presets: ClassVar[dict] = {"vdna": dict(VDNA_PRESET)}

    def __init__(self, *, layers: Sequence[str] | str | None = None, bins: int = 1000, ranges: str = "self",
                 range_mode: str = "centre", range_scale: float = 1.2, range_images: int | None = None,
                 sample: str = "positions", variants: Sequence[str] = ("histogram", "gaussian"),
                 precision: str = "float64"):
        self.layers = layers
        self.bins = bins
        self.ranges = ranges
        self.range_mode = range_mode
        self.range_scale = range_scale
        self.range_images = range_images
        self.sample = sample
        self.variants = variants
        self.precision = precision

    def check_params(self) -> None:
        _check_ranges_file(self.ranges)

    def fit(self, data: DataView, *, seed: int = 0) -> DNASummariser:
        _check_common(self)
        variants = tuple(self.variants) if not isinstance(self.variants, str) else (self.variants,)
        check_kinds(variants)
        if len(data) == 0:
            raise DataError(f"dna: the dataset {data.name!r} has no images")
        layers = resolve_layers(data, self.layers)
        ext = extractor_meta(data)
        ranges = None
        if "histogram" in variants:
            ranges, _, passes = _ranges_for(self, self.ranges, data, layers, seed)
        else:
            passes = {}
        builder = build_from_view(data, layers=layers, kinds=variants, bins=self.bins, ranges=ranges,
                                  prefetched=passes.get("a"),
                                  sample=self.sample, precision=self.precision, keep_means=True)
        self.ranges_ = ranges
        self.layers_ = layers
        self.dna_ = builder.histogram(extractor=ext, source=data.name) if "histogram" in variants else None
        self.gaussian_ = builder.gaussian(extractor=ext, source=data.name) if "gaussian" in variants else None
        self.layer_gaussian_ = (builder.layer_gaussian(extractor=ext, source=data.name)
                                if "layer-gaussian" in variants else None)
        embedding = builder.embedding()
        stats: dict[str, float] = {"n_images": float(len(data)), "n_layers": float(len(layers)),
                                   "n_neurons": float(sum(builder.neurons.values())), "bins": float(self.bins)}
        artefacts: dict[str, Any] = {}
        rows = []
        for layer in layers:
            row: dict[str, Any] = {"layer": layer, "neurons": builder.neurons[layer]}
            if self.dna_ is not None:
                c = self.dna_.counts[layer]
                row["mean_entropy_bits"] = float(_entropy_bits(c).mean())
                row["mean_occupied_bins"] = float((c > 0).sum(dim=1).to(torch.float64).mean())
                row["edge_fraction"] = float((c[:, 0].sum() + c[:, -1].sum()) / c.sum())
                row["dead_fraction"] = float(np.mean(ranges.maxs[layer] == ranges.mins[layer]))
            if self.gaussian_ is not None:
                row["mean_activation"] = float(self.gaussian_.mu[layer].mean())
                row["mean_std"] = float(self.gaussian_.var[layer].clamp(min=0).sqrt().mean())
            rows.append(row)
        if self.dna_ is not None:
            w = np.array([r["neurons"] for r in rows], dtype=np.float64)
            for key in ("mean_entropy_bits", "mean_occupied_bins", "edge_fraction", "dead_fraction"):
                stats[key] = float(np.average([r[key] for r in rows], weights=w))
            stats["dna_mb"] = saved_size(self.dna_) / 1e6
            stats["dna_raw_int32_mb"] = self.dna_.n_neurons * self.bins * 4 / 1e6
            artefacts["dna_counts"] = self.dna_.stacked().cpu().numpy()
            artefacts["dna_meta"] = metadata(self.dna_, "int64")
        if self.gaussian_ is not None:
            artefacts["gaussian_mu"] = torch.cat([self.gaussian_.mu[k] for k in layers]).cpu().numpy()
            artefacts["gaussian_var"] = torch.cat([self.gaussian_.var[k] for k in layers]).cpu().numpy()
        artefacts["tables"] = {"dna_layers": rows}
        self.summary_ = Summary(codes=None, embedding=embedding, statistics=stats, artefacts=artefacts)
        return self


class DNAComparator(Comparator):
    """Dataset difference = mean per-neuron EMD between the DNAs of A and B (bin units).

    Ranges come from the reference A (``ranges="reference"``), from A ∪ B (``"union"``, a
    symmetric score) or from a ranges / DNA JSON file, so every B of a ladder is binned like
    A. ``neurons`` restricts the comparison to explicit neurons ({layer: [indices]});
    ``select_concept`` ranks neurons by how they separate that concept in A (positives vs
    negatives, one pass) and compares only the ``select_top`` best. Works for image ↔ image and
    image ↔ dataset too (a view of one image). ``distance``: "emd" (score in bins), "emd_act"
    (activation units), "nfd" or "fd"; all four are in ``statistics``. Ranges and DNAs of
    recent views are cached by content, so a ladder streams its reference once.
    Other parameters as for :class:`DNASummariser`; ``--set dna.preset=vdna`` scores as vdna.
    """

    name = "dna"
    version = "1"
    requires: ClassVar[frozenset[str]] = frozenset({"activations"})
    larger_is_more_different: ClassVar[bool] = True
    quick_params: ClassVar[dict] = {"range_images": 256}
    #: ``--set dna.preset=vdna``: vdna 0.1.1's DNA and its ``EMD`` (mean over all neurons, in bins)
    presets: ClassVar[dict] = {"vdna": {**VDNA_PRESET, "distance": "emd"}}
    #: the histogram EMD's plug-in bias is Σ over bin edges of E|F̂_A − F̂_B| − |F_A − F_B|: like
    #: 1/√n where the two CDFs meet, faster where they are apart; ``bench compare``'s interval is
    #: the union over rates from n^−½ to n^−1 (the state path is the histogram distances only)
    bias_rates: ClassVar[tuple[float, ...]] = (0.5, 1.0)

    def __init__(self, *, layers: Sequence[str] | str | None = None, bins: int = 1000, distance: str = "emd",
                 ranges: str = "reference", range_mode: str = "centre", range_scale: float = 1.2,
                 range_images: int | None = None, sample: str = "positions",
                 neurons: Mapping[str, Sequence[int]] | None = None, select_concept: str | None = None,
                 select_top: int | float = 100, select_score: str = "emd", top_neurons: int = 20,
                 precision: str = "float64"):
        self.layers = layers
        self.bins = bins
        self.distance = distance
        self.ranges = ranges
        self.range_mode = range_mode
        self.range_scale = range_scale
        self.range_images = range_images
        self.sample = sample
        self.neurons = neurons
        self.select_concept = select_concept
        self.select_top = select_top
        self.select_score = select_score
        self.top_neurons = top_neurons
        self.precision = precision

    def check_params(self) -> None:
        _check_ranges_file(self.ranges)

    def _check(self) -> None:
        _check_common(self)
        if self.distance not in DISTANCES:
            raise BenchError(f"dna: distance must be one of {', '.join(DISTANCES)}, got {self.distance!r}")
        if self.neurons is not None and self.select_concept is not None:
            raise BenchError("dna: give either neurons= or select_concept=, not both")
        if self.select_score not in SCORES:
            raise BenchError(f"dna: select_score must be one of {', '.join(SCORES)}, got {self.select_score!r}")
        if isinstance(self.top_neurons, bool) or not isinstance(self.top_neurons, int) or self.top_neurons < 0:
            raise BenchError(f"dna: top_neurons must be a non-negative integer, got {self.top_neurons!r}")
        if self.select_concept is not None:
            n_selected(self.select_top, 10**9)

    def compare(self, a: DataView, b: DataView, *, seed: int = 0) -> Comparison:
        self._check()
        if len(a) == 0 or len(b) == 0:
            raise DataError(f"dna: cannot compare an empty set ({len(a)} vs {len(b)} images)")
        return self._against(self._reference(a, seed, other=b), b)

    # -- a saved summary: A's DNA (and ranges) once, compared with many B -----------------------
    def summarise(self, a: DataView, *, seed: int = 0) -> dict[str, Any]:
        """A's reference DNA, its ranges and the selected neurons, as arrays and JSON values."""
        self._check()
        if self.ranges == "union":
            raise BenchError("dna: ranges='union' needs B's images too; a saved summary needs ranges='reference' "
                             "or a ranges file")
        if len(a) == 0:
            raise DataError("dna: cannot summarise an empty set")
        return reference_to_dict(self._reference(a, seed))

    def check_summary(self, summary: dict[str, Any]) -> None:
        """Counts non-negative, one histogram row per neuron, ranges with min ≤ max."""
        layers = list(summary["layers"])
        neurons = {k: int(v) for k, v in summary["neurons"].items()}
        for k in layers:
            lo, hi = np.asarray(summary[f"range_min:{k}"]), np.asarray(summary[f"range_max:{k}"])
            if lo.shape != (neurons[k],) or hi.shape != lo.shape or (lo > hi).any():
                raise DataError(f"dna: the saved ranges of layer {k!r} are malformed (shape or min > max)")
            for key in (f"counts:{k}", f"state.counts:{k}"):
                if key in summary:
                    c = np.asarray(summary[key])
                    if c.shape[-2:] != (neurons[k], self.bins) or (c < 0).any():
                        raise DataError(f"dna: the saved histograms {key!r} are malformed (shape {c.shape} "
                                        f"for {neurons[k]} neurons × {self.bins} bins, or negative counts)")

    def compare_summary(self, summary: dict[str, Any], b: DataView, *, seed: int = 0) -> Comparison:
        self._check()
        if len(b) == 0:
            raise DataError("dna: cannot compare with an empty set")
        return self._against(reference_from_dict(summary, self), b)

    # -- the state path: histograms per block, any number of draws from one pass -----------------
    def uses_state(self) -> bool:
        """Histogram distances merge by addition; the Gaussian ones (nfd, fd) recompute per draw."""
        return self.distance in ("emd", "emd_act")

    def state_context(self, a: DataView, b: DataView | None, *, seed: int = 0) -> dict[str, Any]:
        """The bins, fixed before any image is binned: A's ranges (``ranges="reference"``), A ∪ B's
        (``"union"``) or a file's, and the selected neurons; every draw bins with these."""
        self._check()
        ref = self._reference(a, seed, other=b)
        ranges: Ranges = ref["ranges"]
        out: dict[str, Any] = {"layers": list(ref["layers"]), "neurons": dict(ref["neurons"]),
                               "ranges_convention": {"mode": ranges.mode, "scale": ranges.scale},
                               "selected": None if ref["selected"] is None else
                               {k: np.asarray(v).tolist() for k, v in ref["selected"].items()}}
        for k in ranges.layers:
            out[f"range_min:{k}"], out[f"range_max:{k}"] = ranges.mins[k], ranges.maxs[k]
        return out

    @staticmethod
    def _context_ranges(context: dict[str, Any]) -> Ranges:
        conv = context["ranges_convention"]
        layers = context["layers"]
        mins = {k: np.asarray(context[f"range_min:{k}"], dtype=np.float64) for k in layers}
        maxs = {k: np.asarray(context[f"range_max:{k}"], dtype=np.float64) for k in layers}
        if any(mins[k].shape != maxs[k].shape or (mins[k] > maxs[k]).any() for k in layers):
            raise DataError("dna: the saved ranges are malformed (shapes differ or min > max)")
        return Ranges(mins, maxs, mode=conv["mode"], scale=conv["scale"])

    def state_bytes(self, view: DataView, context: dict[str, Any]) -> int:
        return 4 * self.bins * sum(int(v) for v in context["neurons"].values())

    def block_states(self, view: DataView, blocks: np.ndarray, n_blocks: int, *, context: dict[str, Any],
                     seed: int = 0) -> dict[str, np.ndarray]:
        """Each block's histograms (``counts:LAYER``, (blocks, neurons, bins) int64), one pass over the
        view; the view's whole DNA is kept for ``compare``, which then streams nothing again."""
        self._check()
        layers, ranges = list(context["layers"]), self._context_ranges(context)
        kinds = ("histogram", "layer-gaussian")
        builder = build_from_view(view, kinds=kinds, groups=blocks, n_groups=n_blocks, **self._kw(layers, ranges))
        base = (tuple(layers), kinds, self.bins, ranges.digest(), self.sample, self.precision)
        ext = extractor_meta(view)
        self._cached(("dna", _view_key(view), *base), lambda: self._finish(builder, kinds, ext, view.name))
        # int32 halves the states (a block's count in one bin is at most its images × positions)
        return {f"counts:{k}": builder.counts[k].cpu().numpy().astype(np.int32) for k in layers}

    def finalize(self, a: dict[str, np.ndarray], b: dict[str, np.ndarray], *, context: dict[str, Any]) -> float:
        """Mean EMD over the (selected) neurons between A's and B's summed histograms."""
        layers = list(context["layers"])
        ranges = self._context_ranges(context) if self.distance == "emd_act" else None
        per = {}
        with _one_torch_thread():
            for k in layers:
                e = emd_rows(torch.from_numpy(np.asarray(a[f"counts:{k}"])),
                             torch.from_numpy(np.asarray(b[f"counts:{k}"])))
                if ranges is not None:
                    e = e * torch.from_numpy(ranges.bin_width(k, self.bins))
                per[k] = e
        selected = None if context.get("selected") is None else \
            {k: np.asarray(v, dtype=np.int64) for k, v in context["selected"].items()}
        return aggregate(per, neurons=selected)

    def draws(self, a: DataView, b: DataView, blocks, *, seed: int = 0):
        return super().draws(a, b, blocks, seed=seed) if self.uses_state() else None

    def _kw(self, layers: list[str], ranges: Ranges | None) -> dict[str, Any]:
        return {"layers": layers, "bins": self.bins, "ranges": ranges, "sample": self.sample,
                "precision": self.precision}

    def _reference(self, a: DataView, seed: int, other: DataView | None = None) -> dict[str, Any]:
        """Everything of A a comparison needs: layers, ranges, A's DNAs, the selected neurons."""
        layers = resolve_layers(a, self.layers)
        if self.neurons is not None:
            if not isinstance(self.neurons, Mapping) or any(k not in layers for k in self.neurons):
                raise BenchError(f"dna: neurons must map tapped layers ({', '.join(layers)}) to neuron indices, "
                                 f"got {self.neurons!r}")
        ext_a = extractor_meta(a)
        hist = self.distance in ("emd", "emd_act")
        kinds = ("histogram", "layer-gaussian") if hist else ("layer-gaussian",)
        ranges, ranges_from, passes = None, None, {}
        if hist or self.select_concept is not None:
            ranges, ranges_from, passes = self._ranges(a, other, layers, seed)
        kw = self._kw(layers, ranges)
        base = (tuple(layers), kinds, self.bins, ranges.digest() if ranges is not None else None, self.sample,
                self.precision)
        detail: dict[str, Any] = {}
        selected = None
        if self.select_concept is not None:
            def select():
                scores, builder, info = rank_from_labels(a, self._concept(a), score=self.select_score, seed=seed,
                                                         kinds=kinds, prefetched=passes.get("a"), **kw)
                return scores, info, *self._finish(builder, kinds, ext_a, a.name)
            scores, info, ha, ga, neurons = self._cached(
                ("select", _view_key(a), self.select_concept, self.select_score, seed, *base), select)
            selected = top_k(scores, self.select_top)
            detail["selection"] = {"concept": self.select_concept, "score": self.select_score, **info,
                                   "top": top_neurons(scores, min(self.top_neurons, 20))}
        else:
            ha, ga, neurons = self._cached(
                ("dna", _view_key(a), *base),
                lambda: self._finish(build_from_view(a, kinds=kinds, prefetched=passes.get("a"), **kw), kinds,
                                     ext_a, a.name))
            if self.neurons is not None:
                selected = check_neurons(self.neurons, neurons)
        return {"layers": layers, "kinds": kinds, "ranges": ranges, "ranges_from": ranges_from, "base": base,
                "pass_b": passes.get("b"), "ha": ha, "ga": ga, "neurons": neurons, "selected": selected,
                "detail": detail, "ext": ext_a, "n": len(a)}

    def _against(self, ref: dict[str, Any], b: DataView) -> Comparison:
        """The comparison of A's reference (``_reference``) with B."""
        ext_b = extractor_meta(b)
        if json.dumps(ref["ext"], sort_keys=True, default=str) != json.dumps(ext_b, sort_keys=True, default=str):
            raise BenchError(f"dna: A and B are seen through different extractors ({ref['ext'].get('name')!r} vs "
                             f"{ext_b['name']!r}); DNAs are only comparable for one extractor")
        kinds, selected, ha, ga, neurons = ref["kinds"], ref["selected"], ref["ha"], ref["ga"], ref["neurons"]
        hist = "histogram" in kinds
        kw = self._kw(ref["layers"], ref["ranges"])
        hb, gb, _ = self._cached(("dna", _view_key(b), *ref["base"]), lambda: self._finish(
            build_from_view(b, kinds=kinds, prefetched=ref["pass_b"], **kw), kinds, ext_b, b.name))

        per: dict[str, dict[str, torch.Tensor]] = {}
        stats: dict[str, float] = {"n_a": float(ref["n"]), "n_b": float(len(b))}
        if hist:
            per["emd"] = emd_per_neuron(ha, hb, unit="bins")
            per["emd_act"] = emd_per_neuron(ha, hb, unit="activation")
        per["nfd"] = nfd_per_neuron(ga, gb)
        fd = fd_per_layer(ga, gb) if selected is None else {
            k: v for k, v in fd_per_layer(ga, gb).items() if k in selected}
        for key, values in per.items():
            stats[key] = aggregate(values, neurons=selected)
        stats["fd"] = float(np.mean(list(fd.values())))
        stats["n_neurons"] = float(sum(len(v) for v in selected.values()) if selected is not None
                                   else sum(neurons.values()))
        score = stats[self.distance]
        main = per.get(self.distance)
        detail = dict(ref["detail"])
        detail.update({
            "distance": self.distance, "unit": DISTANCES[self.distance], "ranges_from": ref["ranges_from"],
            "per_layer": per_layer_means(main, selected) if main is not None else fd,
            "fd_per_layer": fd,
            "top_neurons": top_neurons(main, self.top_neurons, selected) if main is not None else [],
        })
        if hist:
            detail["per_layer_emd_activation"] = per_layer_means(per["emd_act"], selected)
        if selected is not None:
            detail["selected_neurons"] = {k: v.tolist() for k, v in selected.items()}
        return Comparison(score=float(score), detail=detail, statistics=stats,
                          findings=dna_findings(detail, ha if hist else None, hb if hist else None,
                                                unit=DISTANCES[self.distance]))

    @staticmethod
    def _finish(builder, kinds, ext, source):
        hist = builder.histogram(extractor=ext, source=source) if "histogram" in kinds else None
        return hist, builder.layer_gaussian(extractor=ext, source=source), dict(builder.neurons)

    def _ranges(self, a: DataView, b: DataView | None, layers: list[str], seed: int):
        """Ranges (cached by view content; the kept activations are handed out once, not cached)."""
        if self.ranges not in ("reference", "union"):
            return _ranges_for(self, self.ranges, a, layers, seed, other=b)
        key = ("ranges", _view_key(a), _view_key(b) if self.ranges == "union" and b is not None else None, self.ranges,
               self.range_mode, self.range_scale, self.range_images, seed, tuple(layers))
        cache = self.__dict__.setdefault("_cache", {})
        if key in cache:
            return (*cache[key], {})
        ranges, label, passes = _ranges_for(self, self.ranges, a, layers, seed, other=b)
        self._cached(key, lambda: (ranges, label))
        return ranges, label, passes

    def _cached(self, key: tuple, make):
        """A few recent ranges / DNAs by view content and parameters: a ladder re-uses the
        reference's instead of streaming it again for every level."""
        cache = self.__dict__.setdefault("_cache", {})
        if key not in cache:
            cache[key] = make()
            while len(cache) > CACHE_SIZE:
                cache.pop(next(iter(cache)))
        return cache[key]

    def _concept(self, a: DataView) -> np.ndarray:
        names = list(a.source.concept_names or [])
        if a.concepts is None or not names:
            raise DataError(f"dna: select_concept={self.select_concept!r} needs concept labels, "
                            f"but {a.name!r} has none")
        if self.select_concept not in names:
            raise BenchError(f"dna: unknown concept {self.select_concept!r} in {a.name!r}; "
                             f"available: {', '.join(names)}")
        return np.asarray(a.concepts)[:, names.index(self.select_concept)].astype(bool)


@bench.hookimpl
def bench_register_summarisers(registry):
    registry.add("dna", DNASummariser)


@bench.hookimpl
def bench_register_comparators(registry):
    registry.add("dna", DNAComparator)


__all__ = ["KINDS", "DNAComparator", "DNASummariser"]


@bench.hookimpl
def bench_report_sections(run):
    """This plugin's section of ``bench report`` (None when the run has no dna record)."""
    from .report import dna_section

    return dna_section(run)
