"""``bench compare A B`` and ``bench summarise A``: how do two datasets differ, on a user's own data.

For each comparator: the score of A vs B; a null distribution (random reassignments of A ∪ B to
two sets of the same sizes, or, for a comparator that trains, split halves of each side); the
permutation p-value (1 + #null draws at least as different) / (1 + #draws); a percentile
bootstrap CI (A and B resampled with replacement, each within itself); n_A and n_B; per class
where both sides are labelled; and what the comparator says differs (``Comparison.findings``).
Everything is validated before any work; results are records of kind ``comparison`` in the run
store and a report page.

A side may be a saved summary (``bench summarise A --save A.bench``): then A's images are not
at hand, so there is no permutation null and the CI resamples B only (said in the record).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench import __version__, plugins, records, summaryfile
from bench.api import Comparator, Comparison, DataView, tags_of
from bench.datasets import concat, get_spec, load_source
from bench.datasets.base import DatasetSpec, ImageSource
from bench.errors import BenchError, DataError, UnknownNameError
from bench.factory import create_method, parse_setting, resolve_settings
from bench.features import FeatureStore, default_cache_dir
from bench.memo import MemoView
from bench.metrics import HIGHER_IS_BETTER, METRICS_VERSION
from bench.plan import DEFAULT_EXTRACTOR, MAX_SEED, PRECISIONS, resolve_device
from bench.runner import split_params
from bench.runstore import RunStore, check_writable_dir, jsonable

#: bootstrap resamples by default: the CI's ends are the 2.5th / 97.5th percentiles
DEFAULT_BOOTSTRAP = 100
#: permutations for each class's p-value with ``--per-class`` (each class is a smaller comparison)
PER_CLASS_DRAWS = 50


@dataclass
class CompareConfig:
    a: str
    b: str | None = None                 # None: bench summarise
    methods: list[str] | None = None     # None: every comparator (with a permutation null / a summary)
    extractor: str = DEFAULT_EXTRACTOR
    weights: str | None = None
    device: str = "auto"
    precision: str = "fp32"
    permutations: int | None = None      # None: each comparator's own null_draws
    bootstrap: int = DEFAULT_BOOTSTRAP
    per_class: bool = False
    seed: int = 0
    limit: int | None = None
    preset: str = "auto"
    settings: list[Any] = field(default_factory=list)
    out: Path = Path("results")
    report: Path | None = None
    save: Path | None = None             # bench summarise --save
    batch_size: int = 64
    cache_dir: Path | None = None
    no_cache: bool = False
    progress: bool = False


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


def open_side(text: str, regs: plugins.Registries, limit: int | None, which: str) -> Side:
    """A dataset spec or a ``.bench`` file → :class:`Side` with its images loaded (or the summary read)."""
    if text.endswith(summaryfile.SUFFIX):
        return Side(text, saved=summaryfile.load(text))
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


# --------------------------------------------------------------------------- statistics


def _direction(comparator: Comparator) -> float:
    return 1.0 if tags_of(type(comparator)).larger_is_more_different else -1.0


def _score(comparator: Comparator, a: DataView, b: DataView, seed: int) -> float:
    score = float(comparator.score(a, b, seed=seed))
    if not np.isfinite(score):
        raise DataError(f"{comparator.name}: the comparison score is {score} ({len(a)} vs {len(b)} images)")
    return score


def null_draws(comparator: Comparator, union: DataView, n_a: int, draws: int, seed: int) -> tuple[np.ndarray, str]:
    """Scores under "no difference": permutations of A ∪ B, or split halves of each side."""
    rng = np.random.default_rng([seed, 7])
    n = len(union)
    out = []
    if tags_of(type(comparator)).null_kind == "split-half":
        for k in range(draws):
            for side in (np.arange(n_a), np.arange(n_a, n)):
                perm = rng.permutation(side)
                half = len(perm) // 2
                out.append(_score(comparator, union.subset(np.sort(perm[:half])), union.subset(np.sort(perm[half:])),
                                  seed + k + 1))
        return np.asarray(out), f"split halves of each side, {draws} draws × 2 sides"
    for k in range(draws):
        perm = rng.permutation(n)
        out.append(_score(comparator, union.subset(np.sort(perm[:n_a])), union.subset(np.sort(perm[n_a:])),
                          seed + k + 1))
    return np.asarray(out), f"{draws} random reassignments of A ∪ B (permutation test)"


def p_value(observed: float, null: np.ndarray, direction: float) -> float:
    """(1 + #draws at least as different as observed) / (1 + #draws): never 0, valid at any draw count."""
    hits = int(np.sum(direction * null >= direction * observed - 1e-12 * max(1.0, abs(observed))))
    return (1 + hits) / (1 + len(null))


def bootstrap(score_fn, n_a: int | None, n_b: int, reps: int, seed: int) -> np.ndarray:
    """Scores of ``reps`` resamples (with replacement, each side within itself; ``n_a=None``: B only).

    A resample repeats images; a comparator whose score reads repeats as near-duplicates (nearest
    neighbours, clusters) tells them apart by ``DataView.indices``, which a repeat shares."""
    rng = np.random.default_rng([seed, 11])
    out = []
    for k in range(reps):
        ia = None if n_a is None else np.sort(rng.integers(0, n_a, n_a))
        ib = np.sort(rng.integers(0, n_b, n_b))
        out.append(score_fn(ia, ib, seed + k + 1))
    return np.asarray(out)


# --------------------------------------------------------------------------- the command


class CompareRun:
    """``bench compare`` (``cfg.b`` set) or ``bench summarise`` (``cfg.save`` set), validated in ``__init__``."""

    def __init__(self, cfg: CompareConfig, regs: plugins.Registries | None = None, echo=print,
                 sides: tuple[Side, Side | None] | None = None):
        """``sides``: already opened sides (e.g. sources made in memory) instead of ``cfg.a`` / ``cfg.b``."""
        self.cfg, self.echo = cfg, echo
        self.regs = regs or plugins.load()
        self._validate_numbers()
        if sides is not None:
            self.a, self.b = sides
        else:
            self.a = open_side(cfg.a, self.regs, cfg.limit, "A")
            self.b = open_side(cfg.b, self.regs, cfg.limit, "B") if cfg.b is not None else None
        self._validate_sides()
        self.methods = self._methods()
        settings = [s if not isinstance(s, str) else parse_setting(s) for s in cfg.settings]
        params = resolve_settings(self.regs, settings, self.methods)
        sides = [s for s in (self.a, self.b) if s is not None and s.spec is not None]
        preset = cfg.preset if cfg.preset != "auto" else \
            ("quick" if sides and all(s.spec.embedded for s in sides) else "paper")
        self.preset = preset
        self.comparators: dict[str, Comparator] = {
            m: create_method(self.regs, m, preset=preset, params=params.get(m))["comparator"] for m in self.methods}
        for m, c in self.comparators.items():
            if tags_of(type(c)).null_kind == "split-half" and self.b is not None and min(self.a.n, self.b.n) < 4:
                raise BenchError(f"{m}: its null splits each side in halves, so each side needs at least 4 images "
                                 f"(A has {self.a.n}, B has {self.b.n})")
        check_writable_dir(cfg.out, "--out")
        if cfg.cache_dir is not None and not cfg.no_cache:
            check_writable_dir(cfg.cache_dir, "--cache-dir")
        for path, what in ((cfg.report, "--report"), (cfg.save, "--save")):
            if path is not None:
                check_writable_dir(Path(path).parent, what)
                if Path(path).is_dir():
                    raise BenchError(f"{what} {str(path)!r} is a folder; give a file name")
        self.device = resolve_device(cfg.device)
        self.extractor = self.regs.extractors.get(cfg.extractor)(weights=cfg.weights, device=self.device)
        self.extractor.configure(precision=cfg.precision)
        self.features = {"extractor": cfg.extractor, "cache_key": jsonable(self.extractor.cache_key()),
                         "precision": cfg.precision}
        if self.a.saved is not None:
            summaryfile.check_matches(self.a.saved, features=self.features, methods=self._method_infos())
        store_root = None if cfg.no_cache else (cfg.cache_dir or default_cache_dir())
        self.store = FeatureStore(store_root)
        self.runs = RunStore(cfg.out)

    # -- validation ---------------------------------------------------------------------------
    def _validate_numbers(self) -> None:
        cfg = self.cfg
        if cfg.permutations is not None and cfg.permutations < 1:
            raise BenchError(f"--permutations must be at least 1, got {cfg.permutations}")
        if cfg.bootstrap < 0:
            raise BenchError(f"--bootstrap must be 0 (no CI) or more, got {cfg.bootstrap}")
        if not 0 <= cfg.seed <= MAX_SEED:
            raise BenchError(f"--seed must be an integer from 0 to {MAX_SEED}, got {cfg.seed}")
        if cfg.limit is not None and cfg.limit < 2:
            raise BenchError(f"--limit must be at least 2, got {cfg.limit}")
        if cfg.batch_size < 1:
            raise BenchError(f"--batch-size must be at least 1, got {cfg.batch_size}")
        if cfg.precision not in PRECISIONS:
            raise BenchError(f"--precision must be one of {', '.join(PRECISIONS)}, got {cfg.precision!r}")

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
        return methods

    def _method_infos(self) -> dict[str, dict[str, Any]]:
        out = {}
        for m, c in self.comparators.items():
            params, _ = split_params([c])
            out[m] = {"version": str(c.version), "params": params}
        return out

    # -- the work -------------------------------------------------------------------------------
    def _view(self, source: ImageSource) -> MemoView:
        return MemoView(source, self.extractor, self.store, device=self.device, batch_size=self.cfg.batch_size,
                        progress=self.cfg.progress, experts=self.regs.experts)

    def summarise(self) -> Path:
        """Each comparator's statistics of A → the ``--save`` file."""
        view = self._view(self.a.source)
        stats = {}
        for m, c in self.comparators.items():
            t0 = time.perf_counter()
            stats[m] = c.summarise(view, seed=self.cfg.seed)
            self.echo(f"{m}: summarised {self.a.n} images in {time.perf_counter() - t0:.1f} s")
        info = self.a.info(self.cfg.limit).model_dump()
        info.update({"spec": self.a.text, "class_names": self.a.source.class_names})
        saved = summaryfile.SavedSummary(dataset=info, features=self.features, methods=self._method_infos(),
                                         statistics=stats, bench_version=__version__)
        return summaryfile.save(saved, self.cfg.save)

    def compare(self) -> list[records.Record]:
        """One record per comparator (``kind="comparison"``), saved in the run store."""
        out = []
        for m, comparator in self.comparators.items():
            rec = self._record(m, comparator)
            path = self.runs.path(rec)
            t0 = time.perf_counter()
            try:
                artefacts = self._compare_one(comparator, rec)
                self.runs.save_artefacts(path, artefacts)
            except BenchError as exc:
                rec.status, rec.error, rec.error_kind = "error", str(exc), "input"
            rec.timings_s["compare"] = time.perf_counter() - t0
            self.runs.save(rec)
            out.append(rec)
        return out

    def _record(self, m: str, comparator: Comparator) -> records.Record:
        params, resources = split_params([comparator])
        rec = records.Record(
            kind="comparison",
            method=records.MethodInfo(name=m, version=str(comparator.version), roles=["comparator"], params=params,
                                      resources=resources),
            dataset=self.a.info(self.cfg.limit), dataset_b=self.b.info(self.cfg.limit),
            features=records.FeatureInfo(extractor=self.cfg.extractor, cache_key=self.features["cache_key"],
                                         precision=self.cfg.precision),
            seed=self.cfg.seed, preset=self.preset, device=str(self.device), bench_version=__version__,
            metrics_version=METRICS_VERSION, environment=records.environment(), git=records.git_info())
        rec.config_hash = records.config_hash(rec.method, self.preset)
        rec.comparability_key = records.comparability_key(rec)
        return rec

    def _compare_one(self, comparator: Comparator, rec: records.Record) -> dict[str, Any]:
        cfg, seed = self.cfg, self.cfg.seed
        tags = tags_of(type(comparator))
        direction = _direction(comparator)
        draws = cfg.permutations or tags.null_draws
        metrics: dict[str, float | None] = {"n_a": float(self.a.n), "n_b": float(self.b.n)}
        artefacts: dict[str, Any] = {}
        if self.a.saved is not None:
            b_view = self._view(self.b.source)
            stats = self.a.saved.statistics[rec.method.name]
            result = comparator.compare_summary(stats, b_view, seed=seed)
            metrics["score"] = float(result.score)
            rec.tables["null"] = [{"kind": "none: A is a saved summary, its images are not at hand", "draws": 0}]
            if cfg.bootstrap:
                boot = bootstrap(lambda _, ib, s: float(comparator.compare_summary(stats, b_view.subset(ib),
                                                                                   seed=s).score),
                                 None, self.b.n, cfg.bootstrap, seed)
                artefacts["bootstrap"] = boot
                metrics["ci_low"], metrics["ci_high"] = (float(v) for v in np.percentile(boot, [2.5, 97.5]))
                rec.tables["ci"] = [_ci_row(boot, metrics["score"], cfg.bootstrap, "B only")]
        else:
            union = self._view(concat(self.a.source, self.b.source))
            n_a = self.a.n
            a_view, b_view = union.subset(np.arange(n_a)), union.subset(np.arange(n_a, len(union)))
            result = comparator.compare(a_view, b_view, seed=seed)
            metrics["score"] = float(result.score)
            if not np.isfinite(result.score):
                raise DataError(f"{rec.method.name}: the comparison score is {result.score}")
            null, how = null_draws(comparator, union, n_a, draws, seed)
            metrics["p_value"] = p_value(float(result.score), null, direction)
            metrics["null_mean"] = float(null.mean())
            artefacts["null"] = null
            rec.tables["null"] = [{"kind": how, "draws": len(null), "null_mean": float(null.mean()),
                                   "null_sd": float(null.std(ddof=1)) if len(null) > 1 else 0.0}]
            if cfg.bootstrap:
                boot = bootstrap(lambda ia, ib, s: _score(comparator, a_view.subset(ia), b_view.subset(ib), s),
                                 n_a, self.b.n, cfg.bootstrap, seed)
                artefacts["bootstrap"] = boot
                metrics["ci_low"], metrics["ci_high"] = (float(v) for v in np.percentile(boot, [2.5, 97.5]))
                rec.tables["ci"] = [_ci_row(boot, metrics["score"], cfg.bootstrap, "A and B, each within itself")]
            if cfg.per_class:
                rec.tables["per_class"] = self._per_class(comparator, union, n_a, direction)
        rec.metrics = {k: records.Metric(value=v, higher_is_better=HIGHER_IS_BETTER.get(k)) for k, v in metrics.items()
                       if v is not None}
        rec.statistics.update({k: float(v) for k, v in result.statistics.items() if np.isfinite(v)})
        artefacts.update(_findings_artefacts(result))
        rec.tables["findings"] = [{"title": f.title, "side": f.side or "", "rows": len(f.rows),
                                   "images": sum(len(i) for _, _, i in f.images)} for f in result.findings]
        return artefacts

    def _per_class(self, comparator: Comparator, union: DataView, n_a: int, direction: float) -> list[dict]:
        src = union.source
        if src.labels is None:
            raise BenchError("--per-class needs class labels on both sides (class sub-folders: imagefolder:)")
        rows = []
        side = np.arange(src.n) >= n_a
        for k, cname in enumerate(src.class_names or []):
            ia, ib = np.flatnonzero((src.labels == k) & ~side), np.flatnonzero((src.labels == k) & side)
            row: dict[str, Any] = {"class": cname, "n_a": len(ia), "n_b": len(ib)}
            if len(ia) < 2 or len(ib) < 2:
                row["note"] = "only in A" if len(ib) == 0 else "only in B" if len(ia) == 0 else "fewer than 2 images"
                rows.append(row)
                continue
            both = union.subset(np.concatenate([ia, ib]))
            row["score"] = _score(comparator, both.subset(np.arange(len(ia))),
                                  both.subset(np.arange(len(ia), len(ia) + len(ib))), self.cfg.seed)
            if tags_of(type(comparator)).null_kind == "permutation":
                null, _ = null_draws(comparator, both, len(ia), min(self.cfg.permutations or PER_CLASS_DRAWS,
                                                                     PER_CLASS_DRAWS), self.cfg.seed)
                row["p_value"] = p_value(row["score"], null, direction)
            rows.append(row)
        return rows


def _ci_row(boot: np.ndarray, score: float, reps: int, resampled: str) -> dict[str, Any]:
    """How the CI was made, and whether the resamples' scores sit around the score: a resample
    repeats images, which a nearest-neighbour or clustering score reads as near-duplicates, so for
    those the bootstrap distribution is shifted and the CI shows spread, not location."""
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return {"bootstrap": reps, "resampled": resampled, "bootstrap_mean": float(boot.mean()),
            "covers_score": bool(lo <= score <= hi)}


def _findings_artefacts(result: Comparison) -> dict[str, Any]:
    """Findings → JSON (titles, rows, image rows) and arrays (figures) for the run store."""
    out: dict[str, Any] = {"findings": [
        {"title": f.title, "side": f.side, "rows": jsonable(f.rows), "figures": sorted(f.figures),
         "images": [[label, side, [int(i) for i in idx]] for label, side, idx in f.images]}
        for f in result.findings]}
    for k, f in enumerate(result.findings):
        for name, fig in f.figures.items():
            out[f"finding{k}_{name}"] = np.asarray(fig, dtype=np.uint8)
    return out
