"""``bench compare A B`` and ``bench summarise A``: how do two datasets differ, on a user's own data.

For each comparator: the score of A vs B, a permutation null and p-value, a bootstrap interval,
n_A and n_B, per class where both sides are labelled, and what the comparator says differs
(``Comparison.findings``); p-values are adjusted across comparators (Holm) for the decision.
The null and the interval come from :mod:`bench.statistics`: a comparator with a state path turns
A and B into block statistics (or a graph of A ∪ B) once, and every draw re-weights blocks, so each
image passes through the network once per compare. Everything is validated before any work;
results are records of kind ``comparison`` in the run store and a report page.

A side may be a saved summary (``bench summarise A --save A.bench``): it carries A's block
states, so the null and the interval cover both sides; a file without them gets a CI over B only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench import __version__, plugins, records, summaryfile
from bench import statistics as S
from bench.api import Comparator, Comparison, DataView, tags_of
from bench.context import RunContext, SharedConfig, check_seed, split_params, validate_shared
from bench.datasets import concat, get_spec, load_source
from bench.datasets.base import DatasetSpec, ImageSource
from bench.errors import BenchError, UnknownNameError
from bench.factory import create_method, parse_setting, resolve_settings
from bench.metrics import HIGHER_IS_BETTER
from bench.runstore import check_writable_dir, jsonable

#: permutations for each class's p-value with ``--per-class`` (each class is a smaller comparison)
PER_CLASS_DRAWS = 50
#: exit status of ``--fail-on-difference`` when an adjusted p-value is below α (not 1: a crash, 2: bad input)
EXIT_DIFFERENT = 3
#: the comparator every compare runs beside the ones asked for: where A and B differ (bench.atlas)
ATLAS = "atlas"


@dataclass
class CompareConfig(SharedConfig):
    """``bench compare`` / ``bench summarise`` options beyond the shared ones."""

    a: str = ""
    b: str | None = None                 # None: bench summarise
    methods: list[str] | None = None     # None: every comparator (with a permutation null / a summary)
    seed: int = 0
    permutations: int | None = None      # None: each comparator's own null_draws
    bootstrap: int = S.DEFAULT_BOOTSTRAP
    per_class: bool = False
    alpha: float = 0.05
    plan: bool = False                   # --plan: how many images per side reach 80 % power
    blocks: int | None = None            # --blocks N: at most N blocks per side (None: from the state budget)
    atlas: bool = True                   # the atlas beside the methods asked for (--no-atlas: without)
    report: Path | None = None
    save: Path | None = None             # bench summarise --save


@dataclass
class Side:
    """One side of a comparison: a dataset (spec + loaded images) or a saved summary."""

    text: str
    spec: DatasetSpec | None = None
    source: ImageSource | None = None
    saved: summaryfile.SavedSummary | None = None

    @property
    def n(self) -> int:
        return self.source.n if self.source is not None else int(self.saved.dataset["n"])

    @property
    def name(self) -> str:
        return self.source.name if self.source is not None else str(self.saved.dataset["name"])

    def info(self, limit: int | None) -> records.DatasetInfo:
        if self.source is not None:
            return records.DatasetInfo(name=self.source.name, revision=self.source.revision, n=self.source.n,
                                       limit=limit, embedded=bool(self.spec and self.spec.embedded))
        d = self.saved.dataset
        return records.DatasetInfo(name=d["name"], revision=d["revision"], n=int(d["n"]), limit=d.get("limit"),
                                   embedded=bool(d.get("embedded")))


def dataset_name(text: str) -> str:
    """A side as a dataset spec name: a plain folder path becomes ``imagefolder:`` (class sub-folders)
    or ``folder:`` (any images, unlabelled)."""
    path = Path(text).expanduser()
    if ":" not in text and path.is_dir():
        classes = [p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")]
        return f"imagefolder:{text}" if classes and not any(p.is_file() for p in path.iterdir()
                                                             if not p.name.startswith(".")) else f"folder:{text}"
    return text


def open_side(text: str, regs: plugins.Registries, limit: int | None, which: str,
              methods: list[str] | None = None) -> Side:
    """A dataset spec or a ``.bench`` file → :class:`Side` with its images loaded (or the summary read)."""
    if text.endswith(summaryfile.SUFFIX):
        return Side(text, saved=summaryfile.load(text, methods=methods))
    name = dataset_name(text)
    if ":" not in name and not Path(name).exists() and name not in regs.datasets and "/" in name:
        raise BenchError(f"{which} {text!r}: no such folder or dataset")
    spec = get_spec(regs.datasets, name)
    reason = spec.ready()
    if reason:
        raise BenchError(f"{which} {text!r} is not ready: {reason}")
    source = load_source(spec, limit)
    return Side(text, spec=spec, source=source)


def _same_data(a: Side, b: Side) -> bool:
    def where(side: Side) -> str:
        name = side.spec.name if side.spec is not None else side.name
        prefix, _, path = name.partition(":")
        return f"{prefix}:{Path(path).expanduser().resolve()}" if path and prefix in ("imagefolder", "folder") else name

    if a.source is None or b.source is None:
        return a.saved is not None and b.source is not None and a.saved.dataset.get("revision") == b.source.revision
    return where(a) == where(b) or (a.source.name == b.source.name and a.source.revision == b.source.revision)


def _direction(comparator: Comparator) -> float:
    return 1.0 if tags_of(type(comparator)).larger_is_more_different else -1.0


# --------------------------------------------------------------------------- the command


class CompareRun:
    """``bench compare`` (``cfg.b`` set) or ``bench summarise`` (``cfg.save`` set), validated in ``__init__``."""

    def __init__(self, cfg: CompareConfig, regs: plugins.Registries | None = None, echo=print,
                 sides: tuple[Side, Side | None] | None = None):
        """``sides``: already opened sides (e.g. sources made in memory) instead of ``cfg.a`` / ``cfg.b``."""
        self.cfg, self.echo = cfg, echo
        self.regs = regs or plugins.load(strict=cfg.strict_plugins)
        self._validate_numbers()
        validate_shared(cfg, self.regs)
        for path, what in ((cfg.report, "--report"), (cfg.save, "--save")):
            if path is not None:
                check_writable_dir(Path(path).parent, what)
                if Path(path).is_dir():
                    raise BenchError(f"{what} {str(path)!r} is a folder; give a file name")
        if cfg.save is not None and Path(cfg.save).suffix != summaryfile.SUFFIX:
            raise BenchError(f"--save {str(cfg.save)!r}: a saved summary's name must end in {summaryfile.SUFFIX}")
        if sides is not None:
            self.a, self.b = sides
        else:
            self.a = open_side(cfg.a, self.regs, cfg.limit, "A", methods=cfg.methods)
            self.b = open_side(cfg.b, self.regs, cfg.limit, "B") if cfg.b is not None else None
        self._validate_sides()
        self.methods = self._methods()
        settings = [s if not isinstance(s, str) else parse_setting(s) for s in cfg.settings]
        params = resolve_settings(self.regs, settings, self.methods)
        sides_ = [s for s in (self.a, self.b) if s is not None and s.spec is not None]
        self.preset = cfg.preset if cfg.preset != "auto" else \
            ("quick" if sides_ and all(s.spec.embedded for s in sides_) else "paper")
        self.comparators: dict[str, Comparator] = {
            m: create_method(self.regs, m, preset=self.preset, params=params.get(m))["comparator"]
            for m in self.methods}
        for m, c in self.comparators.items():
            if tags_of(type(c)).null_kind == "split-half" and self.b is not None and min(self.a.n, self.b.n) < 4:
                raise BenchError(f"{m}: its null splits each side in halves, so each side needs at least 4 images "
                                 f"(A has {self.a.n}, B has {self.b.n})")
        if cfg.per_class and self.b is not None and (self.a.source.labels is None or self.b.source.labels is None):
            raise BenchError("--per-class needs class labels on both sides (class sub-folders: imagefolder:)")
        self.context = RunContext(cfg, self.regs)
        self.device = self.context.device
        self.features = {"extractor": cfg.extractor, "cache_key": jsonable(self.context.extractor.cache_key()),
                         "precision": cfg.precision}
        if self.a.saved is not None:
            summaryfile.check_matches(self.a.saved, features=self.features, methods=self._method_infos())

    # -- validation ---------------------------------------------------------------------------
    def _validate_numbers(self) -> None:
        cfg = self.cfg
        S.check_draws(cfg.permutations, "--permutations", minimum=1)
        if cfg.blocks is not None and (isinstance(cfg.blocks, bool) or not isinstance(cfg.blocks, int)
                                       or cfg.blocks < 2):
            raise BenchError(f"--blocks must be an integer >= 2 (blocks per side), got {cfg.blocks!r}")
        S.check_draws(cfg.bootstrap, "--bootstrap", minimum=0)
        check_seed(cfg.seed, "--seed")
        if not 0 < cfg.alpha < 1:
            raise BenchError(f"--alpha must be between 0 and 1, got {cfg.alpha}")

    def _validate_sides(self) -> None:
        a, b = self.a, self.b
        if b is None:
            if a.saved is not None:
                raise BenchError(f"{a.text!r} is a saved summary already; summarise a dataset")
        else:
            if b.saved is not None:
                raise BenchError(f"B {b.text!r} is a saved summary; put the saved summary first: "
                                 f"bench compare {b.text} {a.text}")
            if _same_data(a, b):
                raise BenchError(f"A and B are the same dataset ({a.name}); compare two different datasets")
            if self.cfg.per_class and a.saved is not None:
                raise BenchError("--per-class needs both datasets' images; it does not work with a saved summary")
            if self.cfg.blocks is not None:
                if a.saved is not None:
                    raise BenchError(f"--blocks: A {a.text!r} is a saved summary, whose blocks were fixed when it "
                                     "was summarised; leave --blocks out")
                smaller, which = min((a.n, "A"), (b.n, "B"))
                if self.cfg.blocks > smaller:
                    raise BenchError(f"--blocks {self.cfg.blocks} is more than {which}'s {smaller} images "
                                     f"(at most one block per image: --blocks {smaller} or fewer)")
        for side, which in ((a, "A"), (b, "B")):
            if side is not None and side.n < 2:
                raise BenchError(f"{which} {side.text!r} has {side.n} image{'s' if side.n != 1 else ''}; "
                                 "a comparison needs at least 2 per side")

    def _methods(self) -> list[str]:
        comparators = self.regs.comparators
        summary_only = self.cfg.save is not None or self.a.saved is not None
        if self.cfg.methods is None:
            if self.a.saved is not None:
                return [m for m in self.a.saved.methods if m in comparators]
            names = [m for m in comparators.names() if tags_of(comparators.get(m)).null_kind == "permutation"]
            return [m for m in names if not summary_only or tags_of(comparators.get(m)).supports_summary]
        methods = list(dict.fromkeys(self.cfg.methods))
        for m in methods:
            if m not in comparators:
                if m in self.regs.summarisers:
                    raise BenchError(f"{m!r} only summarises one dataset; bench compare needs comparators: "
                                     f"{', '.join(comparators.names())}")
                raise UnknownNameError("comparator", m, comparators.names())
            if summary_only and not tags_of(comparators.get(m)).supports_summary:
                able = [n for n in comparators.names() if tags_of(comparators.get(n)).supports_summary]
                raise BenchError(f"{m!r} cannot compare against a saved summary (it needs A's images); "
                                 f"comparators that can: {', '.join(able)}")
        # what differs, for every compare: the atlas joins the methods asked for (not a flag of its own)
        if (self.cfg.atlas and ATLAS in comparators and ATLAS not in methods
                and (not summary_only or tags_of(comparators.get(ATLAS)).supports_summary)):
            methods.append(ATLAS)
        return methods

    def _method_infos(self) -> dict[str, dict[str, Any]]:
        return {m: {"version": str(c.version), "params": split_params([c])[0]} for m, c in self.comparators.items()}

    # -- bench summarise -----------------------------------------------------------------------
    def summarise(self) -> Path | None:
        """Each comparator's statistics of A, and its block states when it has a state path → ``--save``.

        Under torchrun every rank calls this: the ranks extract A's features in shards, rank 0
        computes each comparator's own statistics, each rank the block states of its blocks
        (:meth:`Comparator.saved_states`), and rank 0 alone writes the file, equal to one
        process's. Returns the path on rank 0, None on the others."""
        from bench import distributed

        main = distributed.context().is_main
        view = self.context.view(self.a.source, memo=True)
        self._extract_collectively()
        stats = {}
        for m, c in self.comparators.items():
            t0 = time.perf_counter()
            stats[m] = distributed.on_main(lambda c=c: dict(c.summarise(view, seed=self.cfg.seed)))
            if c.uses_state():
                states = c.saved_states(view, seed=self.cfg.seed)   # collective: every rank, same order
                if main:
                    stats[m].update(states)
            if main:
                self.echo(f"{m}: summarised {self.a.n} images in {time.perf_counter() - t0:.1f} s")
        if not main:
            return None
        info = self.a.info(self.cfg.limit).model_dump()
        info.update({"spec": self.a.text, "class_names": self.a.source.class_names})
        saved = summaryfile.SavedSummary(dataset=info, features=self.features, methods=self._method_infos(),
                                         statistics=stats, bench_version=__version__)
        return summaryfile.save(saved, self.cfg.save)

    def _extract_collectively(self) -> None:
        """Under torchrun, with a feature cache: every rank extracts its shard of A's pooled features
        (bit-identical to one process's) before rank 0 or a rank's blocks read them."""
        from bench import distributed

        if not distributed.active() or self.context.store.root is None:
            return
        if any("features" in tags_of(type(c)).requires for c in self.comparators.values()):
            self.context.store.features(self.a.source, self.context.extractor, layer="pooled", device=self.device,
                                        batch_size=self.cfg.batch_size,
                                        progress=self.cfg.progress and distributed.context().is_main,
                                        collective=True)

    # -- bench compare -------------------------------------------------------------------------
    def compare(self) -> list[records.Record]:
        """One record per comparator (``kind="comparison"``), p-values adjusted across comparators
        (Holm), saved in the run store."""
        out, artefacts_of = [], {}
        for m, comparator in self.comparators.items():
            rec = self.context.record(kind="comparison", method=m, roles={"comparator": comparator},
                                      dataset=self.a.info(self.cfg.limit), dataset_b=self.b.info(self.cfg.limit),
                                      seed=self.cfg.seed, preset=self.preset)
            t0 = time.perf_counter()
            try:
                artefacts_of[m] = self._compare_one(comparator, rec)
            except BenchError as exc:
                rec.status, rec.error, rec.error_kind = "error", str(exc), "input"
            rec.timings_s["compare"] = time.perf_counter() - t0
            out.append(rec)
        self._adjust(out)
        for rec in out:
            path = self.context.runs.path(rec)
            if rec.method.name in artefacts_of:
                self.context.runs.save_artefacts(path, artefacts_of[rec.method.name])
            self.context.runs.save(rec)
        return out

    def _adjust(self, recs: list[records.Record]) -> None:
        """Holm across comparators (family-wise error at ``--alpha``), beside each raw p-value."""
        with_p = [r for r in recs if r.status == "ok" and "p_value" in r.metrics]
        adjusted = S.holm(np.asarray([r.metrics["p_value"].value for r in with_p]))
        for rec, p in zip(with_p, adjusted):
            rec.metrics["p_adjusted"] = records.Metric(value=float(p))
            rec.tables["decision"] = [{"alpha": self.cfg.alpha, "adjustment": f"Holm over {len(with_p)} comparators",
                                       "p_adjusted": float(p), "different": bool(p < self.cfg.alpha)}]

    def different(self, recs: list[records.Record]) -> bool:
        """Whether any comparator's adjusted p-value is below α (``--fail-on-difference``)."""
        return any(r.metrics.get("p_adjusted") is not None and r.metrics["p_adjusted"].value < self.cfg.alpha
                   for r in recs)

    def _compare_one(self, comparator: Comparator, rec: records.Record) -> dict[str, Any]:
        cfg, seed = self.cfg, self.cfg.seed
        tags = tags_of(type(comparator))
        direction = _direction(comparator)
        metrics: dict[str, float | None] = {"n_a": float(self.a.n), "n_b": float(self.b.n)}
        artefacts: dict[str, Any] = {}
        null = boot = None
        if self.a.saved is not None:
            b_view = self.context.view(self.b.source, memo=True)
            stats = self.a.saved.statistics[rec.method.name]
            try:
                comparator.check_summary(stats)
                result = comparator.compare_summary(stats, b_view, seed=seed)
                draws = comparator.saved_draws(stats, b_view, seed=seed) if comparator.uses_state() else None
            except (KeyError, ValueError, TypeError, IndexError, AttributeError) as exc:
                why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise BenchError(f"{self.a.text}: the saved statistics of {rec.method.name} are malformed "
                                 f"({type(exc).__name__}: {why}); summarise the dataset again") from None
            if draws is None:
                metrics["score"] = S.checked_score(result.score, comparator.name, self.a.n, self.b.n)
                rec.tables["null"] = [{"kind": f"none: {self.a.text} carries no block states; re-summarise with "
                                               f"`bench summarise {self.a.saved.dataset.get('spec', 'DATASET')} "
                                               f"--save {Path(self.a.text).name}`", "draws": 0}]
                self.echo(f"{rec.method.name}: {rec.tables['null'][0]['kind']}")
                if cfg.bootstrap:
                    boot = S.brute_force_bootstrap(
                        lambda _, ib, s: float(comparator.compare_summary(stats, b_view.subset(ib), seed=s).score),
                        None, self.b.n, cfg.bootstrap, seed)
                    resampled = "B only (A is a saved summary without block states)"
            else:
                metrics["score"] = S.checked_score(draws.observed(), comparator.name, self.a.n, self.b.n)
                null, boot, resampled = self._draw(comparator, draws, rec, metrics, direction)
        else:
            union = self.context.view(concat(self.a.source, self.b.source), memo=True)
            n_a = self.a.n
            a_view, b_view = union.subset(np.arange(n_a)), union.subset(np.arange(n_a, len(union)))
            draws = self._draws(comparator, a_view, b_view, seed) if tags.null_kind == "permutation" else None
            if draws is not None:
                metrics["score"] = S.checked_score(draws.observed(), comparator.name, n_a, self.b.n)
                null, boot, resampled = self._draw(comparator, draws, rec, metrics, direction)
                result = comparator.compare(a_view, b_view, seed=seed)
            else:
                result = comparator.compare(a_view, b_view, seed=seed)
                metrics["score"] = S.checked_score(result.score, comparator.name, n_a, self.b.n)
                null, boot, resampled = self._brute_force(comparator, union, n_a, rec, metrics, direction)
            if cfg.per_class:
                rec.tables["per_class"] = self._per_class(comparator, union, n_a, direction)
        if result.p_value is not None and np.isfinite(result.p_value):
            metrics["p_value"] = float(result.p_value)
            rec.tables.setdefault("null", [{}])[0]["p_from"] = f"{comparator.name}'s own exact test"
        if boot is not None:   # half-sampling from draws where the comparator has bias rates, else basic
            interval = S.interval(metrics["score"], boot)
            metrics["ci_low"], metrics["ci_high"] = interval.low, interval.high
            metrics["score_bias_corrected"] = interval.bias_corrected
            artefacts["bootstrap"] = S.resample_scores(boot)
            rec.tables["ci"] = [{"bootstrap": interval.reps, "method": interval.method, "resampled": resampled,
                                 "bootstrap_mean": interval.bootstrap_mean,
                                 "covers_score": bool(interval.low <= metrics["score"] <= interval.high)}]
            note = (comparator.interval_note(draws) if isinstance(boot, S.Subsamples) else None) or interval.note
            if note:
                rec.tables["ci"][0]["ci_note"] = note
                self.echo(f"{rec.method.name}: {note}")
        if null is not None:
            metrics["mde"] = S.minimum_detectable_effect(null, boot, direction, alpha=cfg.alpha)
        rec.metrics = {k: records.Metric(value=v, higher_is_better=HIGHER_IS_BETTER.get(k)) for k, v in metrics.items()
                       if v is not None}
        rec.statistics.update({k: float(v) for k, v in result.statistics.items() if np.isfinite(v)})
        artefacts.update(_findings_artefacts(result))
        rec.tables["findings"] = [{"title": f.title, "side": f.side or "", "rows": len(f.rows),
                                   "images": sum(len(i) for _, _, i in f.images)} for f in result.findings]
        return artefacts

    def _draws(self, comparator: Comparator, a: DataView, b: DataView, seed: int) -> S.Draws | None:
        """The comparator prepared for many draws, with as many blocks as its state's memory allows."""
        if not type(comparator).supports_draws():
            return None
        context = comparator.state_context(a, b, seed=seed)
        per_block = comparator.state_bytes(a, context)
        size = S.block_size(len(a), len(b), per_block, most_per_side=self.cfg.blocks)
        blocks = S.make_blocks(len(a), len(b), size, seed)
        return comparator.draws(a, b, blocks, seed=seed)

    def _draw(self, comparator: Comparator, draws: S.Draws, rec: records.Record, metrics: dict,
              direction: float) -> tuple[np.ndarray | None, np.ndarray | S.Subsamples | None, str]:
        """Null and bootstrap from ``draws`` (block permutations and block resamples)."""
        cfg, seed = self.cfg, self.cfg.seed
        n_draws = cfg.permutations or tags_of(type(comparator)).null_draws
        b = draws.blocks
        null = None
        if not b.exchangeable():
            rec.tables["null"] = [{"kind": "none: no block of A has the size of a block of B (B has fewer images "
                                           "than one of A's saved blocks)", "draws": 0, "blocks": b.describe()}]
        else:
            null = S.permutation_null(draws, n_draws, seed)
            metrics["p_value"] = S.p_value(metrics["score"], null, direction)
            metrics["null_mean"] = float(null.mean())
            rec.tables["null"] = [{"kind": f"{n_draws} random reassignments of blocks of A ∪ B (permutation test)",
                                   "draws": n_draws, "blocks": b.describe(), "block_count": b.count,
                                   "null_mean": float(null.mean()),
                                   "null_sd": float(null.std(ddof=1)) if n_draws > 1 else 0.0}]
        boot = S.interval_draws(draws, cfg.bootstrap, seed, comparator.bias_rates) if cfg.bootstrap else None
        if cfg.plan and null is not None:
            plan = S.power_plan(draws, direction, alpha=cfg.alpha, seed=seed)
            rec.tables["plan"] = [{**row, "how": plan.how} for row in plan.rows]
            if plan.n_a is not None:
                metrics["n_for_power_a"], metrics["n_for_power_b"] = float(plan.n_a), float(plan.n_b)
        return null, boot, f"blocks of A and of B, each within its side ({b.describe()})"

    def _brute_force(self, comparator: Comparator, union: DataView, n_a: int, rec: records.Record, metrics: dict,
                     direction: float) -> tuple[np.ndarray, np.ndarray | None, str]:
        """For comparators without a state path (ProtoSim trains per draw): every draw scored from scratch."""
        cfg, seed = self.cfg, self.cfg.seed
        tags = tags_of(type(comparator))
        n_draws = cfg.permutations or tags.null_draws
        n = len(union)

        def score(ia: np.ndarray, ib: np.ndarray, s: int) -> float:
            return S.checked_score(comparator.score(union.subset(ia), union.subset(ib), seed=s), comparator.name,
                                   len(ia), len(ib))

        if tags.null_kind == "split-half":
            null = S.split_half_null(score, n_a, n, n_draws, seed)
            how = f"split halves of each side, {n_draws} draws × 2 sides"
        else:
            null = S.brute_force_null(score, n_a, n, n_draws, seed)
            how = f"{n_draws} random reassignments of A ∪ B (permutation test, every score recomputed)"
        metrics["p_value"] = S.p_value(metrics["score"], null, direction)
        metrics["null_mean"] = float(null.mean())
        rec.tables["null"] = [{"kind": how, "draws": len(null), "blocks": "one image per block",
                               "block_count": n, "null_mean": float(null.mean()),
                               "null_sd": float(null.std(ddof=1)) if len(null) > 1 else 0.0}]
        boot = None
        if cfg.bootstrap:
            boot = S.brute_force_bootstrap(lambda ia, ib, s: score(ia, n_a + ib, s), n_a, n - n_a, cfg.bootstrap, seed)
        return null, boot, "A and B, each within itself"

    def _per_class(self, comparator: Comparator, union: DataView, n_a: int, direction: float) -> list[dict]:
        """The comparison within each class present on both sides, p-values Holm-adjusted across classes."""
        src = union.source
        rows = []
        side = np.arange(src.n) >= n_a
        seed = self.cfg.seed
        draws_n = min(self.cfg.permutations or PER_CLASS_DRAWS, PER_CLASS_DRAWS)
        for k, cname in enumerate(src.class_names or []):
            ia, ib = np.flatnonzero((src.labels == k) & ~side), np.flatnonzero((src.labels == k) & side)
            row: dict[str, Any] = {"class": cname, "n_a": len(ia), "n_b": len(ib)}
            if len(ia) < 2 or len(ib) < 2:
                row["note"] = "only in A" if len(ib) == 0 else "only in B" if len(ia) == 0 else "fewer than 2 images"
                rows.append(row)
                continue
            both = union.subset(np.concatenate([ia, ib]))
            a_view, b_view = both.subset(np.arange(len(ia))), both.subset(np.arange(len(ia), len(ia) + len(ib)))
            draws = self._draws(comparator, a_view, b_view, seed) \
                if tags_of(type(comparator)).null_kind == "permutation" else None
            if draws is not None:
                row["score"] = S.checked_score(draws.observed(), comparator.name, len(ia), len(ib))
                row["p_value"] = S.p_value(row["score"], S.permutation_null(draws, draws_n, seed), direction)
            else:
                row["score"] = S.checked_score(comparator.score(a_view, b_view, seed=seed), comparator.name,
                                               len(ia), len(ib))
            rows.append(row)
        tested = [r for r in rows if "p_value" in r]
        for r, p in zip(tested, S.holm(np.asarray([r["p_value"] for r in tested]))):
            r["p_adjusted"] = float(p)
        return rows


def _findings_artefacts(result: Comparison) -> dict[str, Any]:
    """Findings → JSON (titles, rows, image rows, a map's outlines) and arrays (figures, a map's points)
    for the run store; the record itself keeps no point coordinates."""
    from bench.atlas_map import to_artefacts

    out: dict[str, Any] = {"findings": [
        {"title": f.title, "side": f.side, "rows": jsonable(f.rows), "figures": sorted(f.figures),
         "images": [[label, side, [int(i) for i in idx]] for label, side, idx in f.images]}
        for f in result.findings]}
    for k, f in enumerate(result.findings):
        for name, fig in f.figures.items():
            out[f"finding{k}_{name}"] = np.asarray(fig, dtype=np.uint8)
        if f.points is not None:
            arrays, meta = to_artefacts(f.points, f"finding{k}_points")
            out.update(arrays)
            out["findings"][k]["points"] = jsonable(meta)
    return out
