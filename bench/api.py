"""The method contract: what a Summariser or Comparator receives and returns.

Methods follow scikit-learn conventions: a keyword-only constructor that only stores its
parameters, ``fit``/``compare`` validate them, randomness only through the explicit
``seed``, learned state in trailing-underscore attributes, class attributes ``name`` and
``version``. Methods never compute leaderboard metrics; the harness' evaluator does.

Data reaches a method as a :class:`DataView`: one dataset (or a subset of it) seen
through one extractor, with cached pooled features, streamed layer activations, raw
images and whatever ground truth exists.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from bench.errors import BenchError, DataError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from bench.datasets.base import ImageSource
    from bench.extractors.base import Extractor
    from bench.features import FeatureStore
    from bench.registry import Registry
    from bench.statistics import Blocks, Draws


# --------------------------------------------------------------------------- outputs


@dataclass
class Summary:
    """What a Summariser found in one dataset.

    codes:       (N,) int cluster / prototype id per image, or None.
    embedding:   (N, d) float per-image representation for the linear probe, or None
                 (the harness then probes the one-hot codes).
    duplicate_pairs: (P, 2) int index pairs the method calls near-duplicates, or None.
    statistics:  method-reported descriptive numbers (e.g. #clusters, energy). Shown
                 beside the harness metrics, never ranked as if the harness computed them.
    artefacts:   named arrays / JSON-able objects the harness saves next to the record
                 (prototypes, histograms, duplicate groups …) for reports.
    """

    codes: np.ndarray | None = None
    embedding: np.ndarray | None = None
    duplicate_pairs: np.ndarray | None = None
    statistics: dict[str, float] = field(default_factory=dict)
    artefacts: dict[str, Any] = field(default_factory=dict)


@dataclass
class Finding:
    """One thing a comparator found that differs between A and B, in a form the report draws
    without knowing the method (``bench compare``'s "what differs").

    title:  what it is, e.g. "prototypes specific to A", "layers that differ most".
    side:   "a", "b" or None when it concerns both.
    rows:   a table (JSON-able dicts), most important first.
    images: labelled rows of images, ``(label, side, indices)`` with ``side`` "a" or "b" and
            indices positions in that view, e.g. a prototype's top images or a duplicate pair.
    figures: named (H, W, 3) uint8 pictures the method drew itself (e.g. attention maps).
    points: images of A ∪ B placed in 2-D (:class:`PointMap`), which the report draws as an
            interactive map (hover: thumbnail); None for none.
    """

    title: str
    side: str | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    images: list[tuple[str, str, list[int]]] = field(default_factory=list)
    figures: dict[str, np.ndarray] = field(default_factory=dict)
    points: PointMap | None = None


@dataclass
class PointMap:
    """Images of A ∪ B placed in 2-D, for a map the report draws without knowing the method: points
    coloured by side, outlined regions, lines between linked points, each point's thumbnail on hover.

    Saved as the record's artefacts (arrays in the npz, the rest in the JSON), never in the record
    itself, so a record stays small whatever the number of points.

    xy:       (m, 2) float positions (any units; the report scales them).
    side:     (m,) 0 = A, 1 = B.
    index:    (m,) each point's position in its side's view (where the report reads its thumbnail).
    group:    (m,) a cluster / region id per point, -1 for none; shown on hover.
    outlines: regions to outline, dicts with ``polygon`` ([[x, y], …] in xy's units), ``label`` and
              ``members`` (the group ids it covers).
    links:    (p, 2) rows of ``xy`` joined by a line (e.g. near-duplicates across the sides).
    note:     how the map was made (embedding, sampling, the links' rule), printed with it.
    """

    xy: np.ndarray
    side: np.ndarray
    index: np.ndarray
    group: np.ndarray
    outlines: list[dict[str, Any]] = field(default_factory=list)
    links: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))
    note: str = ""


@dataclass
class Comparison:
    """A dataset-difference score between two DataViews.

    ``score`` is a difference: by convention larger means more different, unless the
    comparator sets ``larger_is_more_different = False`` on its class. ``findings`` say what
    differs (:class:`Finding`); the harness records and reports them for ``bench compare``.
    """

    score: float
    detail: dict[str, Any] = field(default_factory=dict)
    statistics: dict[str, float] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    #: a p-value the comparator computes exactly (e.g. the atlas's Simes combination of Fisher's exact
    #: tests); ``bench compare`` reports it instead of the permutation null's, and says so
    p_value: float | None = None


# --------------------------------------------------------------------------- inputs


class DataView:
    """One dataset seen through one extractor on one device; what a method consumes.

    Cheap to create and to subset; heavy work (features) goes through the FeatureStore,
    so every method in a run shares one extraction pass.
    """

    def __init__(
        self,
        source: ImageSource,
        extractor: Extractor,
        store: FeatureStore,
        *,
        device: torch.device | str = "cpu",
        batch_size: int = 64,
        indices: np.ndarray | None = None,
        progress: bool = False,
        artefact_dir: Path | None = None,
        experts: Registry | None = None,
    ):
        self.source = source
        self.extractor = extractor
        self.store = store
        self.device = device
        self.batch_size = batch_size
        self.indices = np.arange(source.n) if indices is None else np.asarray(indices, dtype=np.int64)
        self.progress = progress
        #: where a method may write files for reports (figures …); None outside a run
        self.artefact_dir = artefact_dir
        #: the run's concept-expert registry (reverse probing); None: a method uses its own defaults
        self.experts = experts

    # ground truth, restricted to this view -----------------------------------------
    def __len__(self) -> int:
        return len(self.indices)

    @property
    def name(self) -> str:
        return self.source.name

    @property
    def labels(self) -> np.ndarray | None:
        return None if self.source.labels is None else self.source.labels[self.indices]

    @property
    def concepts(self) -> np.ndarray | None:
        return None if self.source.concepts is None else self.source.concepts[self.indices]

    @property
    def groups(self) -> np.ndarray | None:
        return None if self.source.groups is None else self.source.groups[self.indices]

    def sibling(self, source: ImageSource) -> DataView:
        """The same extractor, store and device over another source (the fidelity ladder's levels)."""
        return DataView(source, self.extractor, self.store, device=self.device, batch_size=self.batch_size,
                        progress=self.progress, experts=self.experts)

    def subset(self, indices: Sequence[int] | np.ndarray) -> DataView:
        """A view of some rows of this view (indices are positions in this view)."""
        view = copy.copy(self)
        view.indices = self.indices[np.asarray(indices, dtype=np.int64)]
        return view

    # data ---------------------------------------------------------------------------
    def features(self, layer: str = "pooled", rows: slice | None = None) -> np.ndarray:
        """(n, d) float32 features of ``layer`` (pooled by default), cached by the store.

        ``rows`` (positions in this view) reads only those rows from disk, e.g. one torchrun
        rank's share. Raises DataError if they contain NaN or inf.
        """
        full = self.store.features(self.source, self.extractor, layer=layer, device=self.device,
                                   batch_size=self.batch_size, progress=self.progress)
        wanted = self.indices if rows is None else self.indices[rows]
        feats = np.asarray(full[wanted], dtype=np.float32)
        if not np.isfinite(feats).all():
            bad = int((~np.isfinite(feats)).any(axis=1).sum())
            raise DataError(
                f"{bad} of {len(feats)} feature rows of {self.name!r} / {self.extractor.name!r} "
                "contain NaN or inf; check the images and the extractor weights"
            )
        return feats

    def activations(self, layers: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
        """Stream un-cached activations of named layers, batch by batch, on ``device``.

        Each item maps layer name → tensor (B, C, ...) with channels on axis 1 (token
        layers as (B, C, T)). Use this for methods that must not hold all activations.
        """
        yield from self.extractor.iter_layers(self.source, self.indices, layers,
                                              device=self.device, batch_size=self.batch_size,
                                              progress=self.progress)

    def images(self, batch_size: int | None = None) -> Iterator[np.ndarray]:
        """Yield raw images as uint8 arrays (B, H, W, 3), in view order."""
        from bench.pipeline import DataPipeline

        pipe = DataPipeline(self.source, self.indices, batch_size=batch_size or self.batch_size,
                            workers=getattr(self.extractor, "workers", None))   # decoded in worker processes
        for _, images in pipe:
            yield images


# --------------------------------------------------------------------------- base classes


REQUIREMENTS = frozenset({"features", "activations", "images"})
#: the ``--set METHOD.preset=NAME`` pseudo-parameter that picks one of a method's named presets
PRESET_PARAM = "preset"


@dataclass(frozen=True)
class Tags:
    """A method's capabilities, read from its class attributes and checked at registration
    (scikit-learn's ``Tags``): a malformed declaration is one error when the plugin loads,
    never an ``AttributeError`` mid-grid.

    requires:    inputs it reads: ``features`` (pooled, cached), ``activations`` (streamed
                 layers), ``images`` (raw pixels).
    distributed: under torchrun, ``fit`` / ``compare`` run on every rank (it uses collectives).
    larger_is_more_different: a comparator's score direction (None for other roles).
    quick_params: CPU-sized parameter overrides for ``--preset quick``.
    resources:   constructor parameters that are run resources (workers, folders, memory
                 limits): recorded, never part of the comparability key.
    null_draws, null_kind: a comparator's default null for ``bench compare`` (see Comparator).
    supports_summary: a comparator implements ``summarise`` / ``compare_summary``.
    presets:     named science-parameter sets, chosen per method with ``--set METHOD.preset=NAME``
                 (e.g. DNA's ``vdna``): they expand into ordinary parameters, so records and
                 comparability keys hold the values themselves.
    """

    requires: frozenset[str]
    distributed: bool
    larger_is_more_different: bool | None
    quick_params: dict[str, Any]
    resources: frozenset[str]
    null_draws: int | None = None
    null_kind: str | None = None
    supports_summary: bool = False
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)


def contract_names(cls: type) -> frozenset[str]:
    """The public names the method contract defines for ``cls``'s role (methods and tags)."""
    bases = [b for b in (Summariser, Comparator, Expert, _Method) if issubclass(cls, b)]
    return frozenset(k for b in bases for k in vars(b) if not k.startswith("_"))


def check_contract_names(cls: type, obj: object | None = None) -> None:
    """ONE line when a constructor parameter, or an attribute set on ``obj``, hides a contract name
    (a parameter ``score`` stored as ``self.score`` made ``Comparator.score()`` a string)."""
    who = f"{cls.__module__}.{cls.__qualname__}"
    names = contract_names(cls)
    params = set(cls._param_names()) if hasattr(cls, "_param_names") else set()
    clash = sorted(params & names)
    if clash:
        raise BenchError(f"{who}: constructor parameter {clash[0]!r} hides the method contract's "
                         f"{clash[0]!r}; rename the parameter")
    for k in sorted(names):
        base = next((b for b in cls.__mro__[1:] if k in vars(b) and b in (Summariser, Comparator, Expert, _Method)),
                    None)
        if base is not None and callable(vars(base)[k]) and k in vars(cls) and not callable(vars(cls)[k]) \
                and not isinstance(vars(cls)[k], (classmethod, staticmethod)):
            raise BenchError(f"{who}: class attribute {k!r} hides the method contract's {k}(); rename it")
    if obj is not None:
        hidden = sorted(k for k in vars(obj) if k in names and callable(getattr(type(obj), k, None)))
        if hidden:
            raise BenchError(f"{who}: the attribute {hidden[0]!r} set on the instance hides the method "
                             f"contract's {hidden[0]}(); rename it")


def tags_of(cls: type) -> Tags:
    """The checked :class:`Tags` of a method class; ONE-line BenchError naming the bad tag."""
    who = f"{cls.__module__}.{cls.__qualname__}"
    params = set(cls._param_names()) if hasattr(cls, "_param_names") else set()
    check_contract_names(cls)
    requires = getattr(cls, "requires", frozenset({"features"}))
    if isinstance(requires, str) or not all(isinstance(r, str) for r in requires) \
            or not set(requires) <= REQUIREMENTS:
        raise BenchError(f"{who}: tag 'requires' must be a set drawn from {sorted(REQUIREMENTS)}, got {requires!r}")
    distributed = getattr(cls, "distributed", False)
    if not isinstance(distributed, bool):
        raise BenchError(f"{who}: tag 'distributed' must be True or False, got {distributed!r}")
    direction = getattr(cls, "larger_is_more_different", None) if issubclass(cls, Comparator) else None
    if issubclass(cls, Comparator) and not isinstance(direction, bool):
        raise BenchError(f"{who}: tag 'larger_is_more_different' must be True or False, got {direction!r}")
    quick = getattr(cls, "quick_params", {}) or {}
    if not isinstance(quick, dict) or not set(quick) <= params:
        bad = sorted(set(quick) - params) if isinstance(quick, dict) else quick
        raise BenchError(f"{who}: tag 'quick_params' must map constructor parameters to values; unknown: {bad!r}")
    resources = getattr(cls, "resources", frozenset())
    if isinstance(resources, str) or not set(resources) <= params:
        raise BenchError(f"{who}: tag 'resources' must name constructor parameters, got {resources!r}")
    presets = getattr(cls, "presets", {}) or {}
    if not isinstance(presets, dict) or not all(isinstance(k, str) and k and isinstance(v, dict)
                                                for k, v in presets.items()):
        raise BenchError(f"{who}: tag 'presets' must map names to dicts of constructor parameters, got {presets!r}")
    bad = sorted({p for v in presets.values() for p in v} - params)
    if bad:
        raise BenchError(f"{who}: tag 'presets' sets unknown constructor parameter(s) {bad!r}")
    if presets and PRESET_PARAM in params:
        raise BenchError(f"{who}: a method with tag 'presets' cannot also have a constructor parameter "
                         f"{PRESET_PARAM!r} (--set {PRESET_PARAM}=NAME would be ambiguous)")
    null_draws = null_kind = None
    if issubclass(cls, Comparator):
        null_draws, null_kind = getattr(cls, "null_draws", 200), getattr(cls, "null_kind", "permutation")
        if isinstance(null_draws, bool) or not isinstance(null_draws, int) or null_draws < 1:
            raise BenchError(f"{who}: tag 'null_draws' must be a positive integer, got {null_draws!r}")
        if null_kind not in ("permutation", "split-half"):
            raise BenchError(f"{who}: tag 'null_kind' must be 'permutation' or 'split-half', got {null_kind!r}")
    return Tags(frozenset(requires), distributed, direction, dict(quick), frozenset(resources), null_draws,
                null_kind, issubclass(cls, Comparator) and cls.supports_summary(),
                {k: dict(v) for k, v in presets.items()})


class _Method:
    """Shared scikit-learn-style parameter handling. Capabilities: see :class:`Tags`."""

    name: ClassVar[str] = ""
    version: ClassVar[str] = "0"
    #: which inputs the method reads: "features", "activations", "images"
    requires: ClassVar[frozenset[str]] = frozenset({"features"})
    #: True: under torchrun the runner calls ``fit``/``compare`` on every rank (the method uses
    #: ``bench.distributed`` collectives; ranks > 0 may set ``summary_ = None``); False: rank 0 alone
    distributed: ClassVar[bool] = False
    #: CPU-sized overrides for ``--preset quick``
    quick_params: ClassVar[dict[str, Any]] = {}
    #: named parameter sets for ``--set METHOD.preset=NAME`` (see :class:`Tags`)
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    #: constructor parameters that are run resources, kept out of the comparability key
    resources: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [p.name for p in sig.parameters.values()
                if p.name != "self" and p.kind == p.KEYWORD_ONLY]

    def get_params(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self._param_names()}

    def set_params(self, **params: Any) -> _Method:
        valid = set(self._param_names())
        for key, value in params.items():
            if key not in valid:
                raise BenchError(
                    f"{self.name}: unknown parameter {key!r}; valid parameters: {', '.join(sorted(valid))}"
                )
            setattr(self, key, value)
        return self

    def check_params(self) -> None:
        """Raise ONE-line BenchError for parameter values this method cannot run with (e.g. ``k < 1``).

        Called by the runner for every cell before any work starts; the default accepts all.
        Checks that need the data (``k > N``) belong in ``fit``."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"


class Summariser(_Method):
    """Dataset → Summary. Subclasses implement ``fit`` and set ``self.summary_``."""

    def fit(self, data: DataView, *, seed: int = 0) -> Summariser:  # pragma: no cover - abstract
        raise NotImplementedError


class Comparator(_Method):
    """Two DataViews → Comparison. Subclasses implement ``compare``.

    Optional, for ``bench summarise A --save A.bench`` then ``bench compare A.bench B``:
    ``summarise(a)`` returns A's dataset-level statistics (arrays and JSON values, never objects)
    and ``compare_summary(stats, b)`` compares them with B; ``compare_summary(summarise(a), b)``
    must equal ``compare(a, b)`` (a conformance check).
    """

    larger_is_more_different: ClassVar[bool] = True
    #: draws of the null distribution ``bench compare`` uses by default (``--permutations``
    #: overrides): many for a closed-form score, few for one that trains
    null_draws: ClassVar[int] = 200
    #: "permutation" (reassign A ∪ B at random) or "split-half" (two halves of each side; for
    #: comparators that train, whose cost makes many permutations impractical)
    null_kind: ClassVar[str] = "permutation"
    #: how the plug-in score's small-sample bias shrinks with the images per side, as exponents r of
    #: n^−r, for ``bench compare``'s interval from draws (:func:`bench.statistics.subsample_interval`):
    #: (1.0,) for a smooth function of moments (FD), a range (0.5, 1.0) when it is not known between
    #: those (the interval is then the union over the range). None: the basic bootstrap interval
    #: (:func:`bench.statistics.basic_interval`), for comparators whose coverage was not measured.
    bias_rates: ClassVar[tuple[float, ...] | None] = None

    def compare(self, a: DataView, b: DataView, *, seed: int = 0) -> Comparison:  # pragma: no cover
        raise NotImplementedError

    def interval_note(self, draws: Draws) -> str | None:
        """One line for the record when the interval is known to miss its coverage at this size
        (e.g. FD with fewer images than dimensions); None when there is nothing to say."""
        return None

    def score(self, a: DataView, b: DataView, *, seed: int = 0) -> float:
        """The score alone, for the many null draws and bootstrap resamples of ``bench compare``.
        Override when ``compare`` spends time on detail or findings the score does not need;
        it must equal ``compare(a, b, seed=seed).score``."""
        return float(self.compare(a, b, seed=seed).score)

    def summarise(self, a: DataView, *, seed: int = 0) -> dict[str, Any]:  # pragma: no cover - optional
        raise NotImplementedError

    # -- many draws from one pass: the state contract (see bench.statistics) ---------------------
    # A comparator whose score is a function of statistics that merge by addition implements
    # ``block_states`` (update: the statistics of each block of a view), ``finalize`` (the score
    # from A's and B's summed statistics) and, when binning or the like must be fixed first,
    # ``state_context``; the harness merges (adds) block statistics across draws and saved
    # summaries; under torchrun each rank computes whole blocks, so a block's statistics must
    # depend on its own images only (then a summary equals one process's bit for bit). A
    # comparator on a graph of A ∪ B (nearest neighbours, clusters) overrides ``draws`` instead and
    # scores a relabelling of its nodes. ``bench check`` verifies that the state path gives the
    # direct score.

    def state_context(self, a: DataView, b: DataView | None, *, seed: int = 0) -> dict[str, Any]:
        """What must be fixed before any statistic is accumulated (DNA's ranges), from A (and B when
        given), as arrays and JSON values; the same for every draw. Default: nothing."""
        return {}

    def block_states(self, view: DataView, blocks: np.ndarray, n_blocks: int, *, context: dict[str, Any],
                     seed: int = 0) -> dict[str, np.ndarray]:  # pragma: no cover - optional
        """Additive statistics of each block: ``{name: array with the block on axis 0}``, block
        ``blocks[i]`` for image i of ``view``; one pass over the view."""
        raise NotImplementedError

    def finalize(self, a: dict[str, np.ndarray], b: dict[str, np.ndarray], *,
                 context: dict[str, Any]) -> float:  # pragma: no cover - optional
        """The score from A's and B's statistics (block statistics summed, possibly weighted)."""
        raise NotImplementedError

    def state_bytes(self, view: DataView, context: dict[str, Any]) -> int:
        """Bytes of one block's statistics (sets how many blocks fit the memory budget)."""
        return 0

    def draws(self, a: DataView, b: DataView, blocks: Blocks, *, seed: int = 0) -> Draws | None:
        """The comparison prepared for many draws (permutations, resamples) from one pass over A and
        B, or None when the comparator has no state path (its null recomputes the score per draw).
        Default: the additive statistics of ``block_states``."""
        if not self.uses_state():
            return None
        from bench.statistics import AdditiveDraws

        context = self.state_context(a, b, seed=seed)
        n_a, count_a = len(a), int((blocks.side == 0).sum())
        sa = self.block_states(a, blocks.of[:n_a], count_a, context=context, seed=seed)
        sb = self.block_states(b, blocks.of[n_a:] - count_a, blocks.count - count_a, context=context, seed=seed)
        return AdditiveDraws(blocks, {k: np.concatenate([sa[k], sb[k]]) for k in sa}, self._finalizer(context),
                             own=True)

    def saved_states(self, a: DataView, *, seed: int = 0) -> dict[str, Any]:
        """A's block states for a ``.bench`` (``state.*``), the context they were accumulated under
        (``context.*``) and the block size a B must be split into: as many blocks as fit the
        summary's budget (:data:`bench.statistics.SUMMARY_BUDGET_BYTES`)."""
        from bench import distributed
        from bench import statistics as S

        context = distributed.on_main(lambda: self.state_context(a, None, seed=seed), share=True)
        size = S.block_size(len(a), 0, self.state_bytes(a, context), S.SUMMARY_BUDGET_BYTES)
        blocks = S.make_blocks(len(a), 0, size, seed)
        states = self._states_across_ranks(a, blocks.of, blocks.count, context, seed)
        if states is None:
            return {}   # a torchrun rank other than 0: rank 0 holds the merged states
        out: dict[str, Any] = {f"state.{k}": np.asarray(v) for k, v in states.items()}
        out.update({f"context.{k}": v for k, v in context.items()})
        out["state.block_size"] = int(size)
        out["state.block_sizes"] = blocks.size
        return out

    def _states_across_ranks(self, view: DataView, of: np.ndarray, count: int, context: dict[str, Any],
                             seed: int) -> dict[str, np.ndarray] | None:
        """``block_states`` of every block, computed by the torchrun ranks together (alone: by this one).

        Each rank owns a contiguous range of blocks (with one image per block, the batch-aligned rows
        of its extraction shard) and computes each whole, over its images in image order, as one
        process would; rank 0
        gathers the blocks and places them (no float is added across ranks), so the states equal one
        process's bit for bit. Returns the states on rank 0, None on the others."""
        from bench import __version__, distributed
        from bench import statistics as S
        from bench.runstore import jsonable

        if not distributed.active():
            return self.block_states(view, of, count, context=context, seed=seed)
        ctx = distributed.context()
        # one image per block (blocks in image order): the batch-aligned shards of the extraction
        align = view.batch_size if count == len(view) else 1
        mine = np.arange(*distributed.shard_range(count, ctx.rank, ctx.world_size, align=align))
        rows = np.flatnonzero(np.isin(of, mine))
        states: dict[str, np.ndarray] = {}
        error = None
        if len(mine):
            # rank 0 reads its memo; the others stream only their rows (a memo's subset streams all)
            own = view.subset(rows) if ctx.is_main else DataView(
                view.source, view.extractor, view.store, device=view.device, batch_size=view.batch_size,
                indices=view.indices[rows], artefact_dir=view.artefact_dir, experts=view.experts)
            try:
                states = {k: np.asarray(v) for k, v in self.block_states(
                    own, np.searchsorted(mine, of[rows]), len(mine), context=context, seed=seed).items()}
            except BenchError as exc:
                error = str(exc)
        info = S.rank_state_info(states, bench=__version__, method=f"{self.name} {self.version}",
                                 params=jsonable(self.get_params()), extractor=jsonable(view.extractor.cache_key()),
                                 context=_digest(context))
        infos = distributed.all_gather_object({"error": error, **info})
        errors = [i["error"] for i in infos if i["error"]]
        try:
            if errors:
                raise BenchError(errors[0])
            S.check_rank_states([{k: v for k, v in i.items() if k != "error"} for i in infos], self.name)
        except BenchError as exc:   # every rank sees the same infos, so every rank stops here alike
            raise distributed.SharedError(str(exc)) from None
        parts = distributed.gather_object((mine, states))
        return None if parts is None else S.place_rank_states(parts, count, self.name)

    def saved_draws(self, saved: dict[str, Any], b: DataView, *, seed: int = 0) -> Draws | None:
        """Draws over A's saved block states and B's (B in blocks of A's size); None for a file without
        states (written before they existed)."""
        from bench import statistics as S

        if "state.block_size" not in saved:
            return None
        context, a_states, size_a = S.split_saved(saved, self.name)
        of_b, size_b = S.side_blocks(len(b), int(saved["state.block_size"]), np.random.default_rng([seed, 5]))
        b_states = self.block_states(b, of_b, len(size_b), context=context, seed=seed)
        S.check_mergeable(a_states, b_states, self.name)
        blocks = S.join_blocks(size_a, of_b, size_b)
        return S.AdditiveDraws(blocks, {k: np.concatenate([a_states[k], b_states[k]]) for k in a_states},
                               self._finalizer(context), own=True)

    def _finalizer(self, context: dict[str, Any]):
        return lambda sa, sb: self.finalize(sa, sb, context=context)

    def uses_state(self) -> bool:
        """Whether these parameters use the state path (a comparator may support it for some only)."""
        return type(self).supports_state()

    @classmethod
    def supports_state(cls) -> bool:
        """Whether the comparator implements the additive state contract."""
        return cls.block_states is not Comparator.block_states and cls.finalize is not Comparator.finalize

    @classmethod
    def supports_draws(cls) -> bool:
        """Whether ``bench compare`` draws its null and interval from one pass (state or graph)."""
        return cls.supports_state() or cls.draws is not Comparator.draws

    def check_summary(self, summary: dict[str, Any]) -> None:
        """ONE line (DataError) when saved statistics cannot be what ``summarise`` wrote (negative counts,
        a covariance that is not symmetric, …): a crafted file must not give an ``ok`` record.
        Default: nothing beyond the file's own checks (numeric, finite, within its size budget)."""

    def compare_summary(self, summary: dict[str, Any], b: DataView, *, seed: int = 0) -> Comparison:  # pragma: no cover
        raise NotImplementedError

    @classmethod
    def supports_summary(cls) -> bool:
        """Whether the comparator can compare against a saved summary (both optional methods given)."""
        return cls.summarise is not Comparator.summarise and cls.compare_summary is not Comparator.compare_summary


def _digest(context: dict[str, Any]) -> str:
    """A state context's fingerprint (arrays by dtype, shape and bytes): ranks compare it, not the arrays."""
    import hashlib
    import json

    from bench.runstore import jsonable

    h = hashlib.sha256()
    for k in sorted(context):
        v = context[k]
        h.update(k.encode())
        if isinstance(v, np.ndarray):
            h.update(f"{v.dtype.str}{v.shape}".encode())
            h.update(np.ascontiguousarray(v).tobytes())
        else:
            h.update(json.dumps(jsonable(v), sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def comparison_key(method: _Method, a: DataView, b: DataView, seed: int) -> tuple:
    """What a comparison of ``a`` with ``b`` depends on (data, rows, seed, parameters): the key under
    which a comparator keeps work that its draws and its findings share (a clustering of A ∪ B)."""
    return (a.source.name, a.source.revision, a.indices.tobytes(), b.source.name, b.source.revision,
            b.indices.tobytes(), seed, repr(method.get_params()))


def check_k(k: int, n: int, *, what: str = "K", method: str = "") -> None:
    """The one-line error every clustering method raises for K > N or K < 1."""
    prefix = f"{method}: " if method else ""
    if k < 1:
        raise BenchError(f"{prefix}{what} must be at least 1, got {k}")
    if k > n:
        raise DataError(f"{prefix}{what}={k} is larger than the number of images N={n}; "
                        f"choose {what} <= {n} or use more images")


def check_finite(x: np.ndarray, *, what: str = "features", rows: int | None = None) -> np.ndarray:
    """``x`` unchanged, or ONE line when it holds NaN or inf; checked ``rows`` rows at a time (by
    default 16 Mi entries), so a memory-mapped matrix never costs a full-size boolean mask."""
    flat = np.atleast_1d(x)
    rows = rows or max(1, 2**24 // max(1, flat[0:1].size))
    bad = sum(int(np.count_nonzero(~np.isfinite(flat[s:s + rows]))) for s in range(0, len(flat), rows))
    if bad:
        raise DataError(f"{what} contain NaN or inf values ({bad} entries)")
    return x


# --------------------------------------------------------------------------- experts


@dataclass
class ConceptGroup:
    """A named group of binary concepts per image, e.g. ``colour`` → (N, C) bool."""

    name: str
    concept_names: list[str]
    values: np.ndarray


class Expert(_Method):
    """DataView → list of ConceptGroups (ground truth, a zero-shot model, …)."""

    def predict(self, data: DataView) -> list[ConceptGroup]:  # pragma: no cover - abstract
        raise NotImplementedError
