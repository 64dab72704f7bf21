"""Conformance checks for method plugins, in the spirit of scikit-learn's ``check_estimator``.

    from bench.conformance import check_method
    assert all(err is None for _, err in check_method(MyMethod))

or, in a plugin's test suite, one pytest case per check::

    @pytest.mark.parametrize("check", method_checks(MyMethod), ids=lambda c: c.__name__)
    def test_conformance(check):
        check()

or from the shell: ``bench check NAME``.
"""

from __future__ import annotations

import copy
import functools
import math
import pickle
from collections.abc import Callable

import numpy as np

from bench.api import Comparator, Comparison, DataView, Summariser, check_contract_names, tags_of
from bench.errors import BenchError
from bench.evaluate import validate_summary


def default_view(extractor: str = "tiny-vit") -> DataView:
    """A 60-image tiny dataset (32×32) through ``extractor`` (pixels if it is not registered)."""
    from bench import plugins
    from bench.extractors.pixels import PixelsExtractor
    from bench.factory import create_view
    from bench.testing import make_tiny_source

    source = make_tiny_source(60, size=32)
    regs = plugins.load()
    ext = regs.extractors.get(extractor)() if extractor in regs.extractors else PixelsExtractor(size=16)
    return create_view(source, ext, batch_size=32)


def _new(cls: type, params: dict) -> object:
    obj = cls()
    obj.set_params(**tags_of(cls).quick_params)
    obj.set_params(**params)
    return obj


def _same(a, b) -> bool:
    if a is None or b is None:
        return a is b
    return np.array_equal(np.asarray(a), np.asarray(b))


def summariser_checks(cls: type[Summariser], view: DataView, params: dict) -> list[Callable[[], None]]:
    def check_class_attributes():
        assert isinstance(cls.name, str) and cls.name, "class attribute `name` must be a non-empty str"
        assert isinstance(cls.version, str) and cls.version, "class attribute `version` must be a non-empty str"
        tags_of(cls)   # typed tags: requires, distributed, quick_params, resources

    def check_params_round_trip():
        obj = _new(cls, params)
        clone = cls(**obj.get_params())
        assert clone.get_params() == obj.get_params(), "get_params() → cls(**params) does not round-trip"

    def check_fit_returns_self_and_valid_summary():
        obj = _new(cls, params)
        assert obj.fit(view, seed=0) is obj, "fit() must return self"
        validate_summary(obj.summary_, len(view), cls.name)
        if obj.summary_.embedding is not None:  # NaN rows would reach the probe, which fails or guesses
            emb = np.asarray(obj.summary_.embedding)
            assert emb.dtype.kind in "biuf", f"summary embedding has dtype {emb.dtype}, expected numbers"
            bad = np.flatnonzero(~np.isfinite(emb).all(axis=1))
            assert not len(bad), (f"summary embedding has {len(bad)} rows with NaN or inf (first: row {bad[0]}); "
                                  "every image needs a finite representation")

    def check_fit_does_not_mutate_params():
        obj = _new(cls, params)
        before = copy.deepcopy(obj.get_params())
        obj.fit(view, seed=0)
        assert obj.get_params() == before, "fit() changed constructor parameters; store results in attr_"

    def check_seed_determinism_and_idempotence():
        a = _new(cls, params).fit(view, seed=0).summary_
        obj = _new(cls, params)
        obj.fit(view, seed=0)
        b = obj.fit(view, seed=0).summary_
        assert _same(a.codes, b.codes), "two fits with the same seed gave different codes"
        assert _same(a.duplicate_pairs, b.duplicate_pairs), "two fits with the same seed gave different duplicates"

    def check_pickle_after_fit():
        obj = _new(cls, params).fit(view, seed=0)
        again = pickle.loads(pickle.dumps(obj))
        assert _same(again.summary_.codes, obj.summary_.codes), "pickling changed the fitted summary"

    def check_bad_parameter_is_one_line_error():
        try:
            _new(cls, {"no_such_parameter_xyz": 1})
        except BenchError as exc:
            assert "\n" not in str(exc)
        else:
            raise AssertionError("set_params accepted an unknown parameter")

    def check_contract_names_not_hidden():
        check_contract_names(cls, _new(cls, params))

    return [check_class_attributes, check_contract_names_not_hidden, check_params_round_trip,
            check_fit_returns_self_and_valid_summary,
            check_fit_does_not_mutate_params, check_seed_determinism_and_idempotence, check_pickle_after_fit,
            check_bad_parameter_is_one_line_error]


def comparator_checks(cls: type[Comparator], view: DataView, params: dict) -> list[Callable[[], None]]:
    groups = view.groups if view.groups is not None else np.arange(len(view)) % 2
    a = view.subset(np.flatnonzero(groups == groups.min()))
    b = view.subset(np.flatnonzero(groups != groups.min()))

    def check_class_attributes():
        assert isinstance(cls.name, str) and cls.name, "class attribute `name` must be a non-empty str"
        tags_of(cls)   # typed tags, including the score direction larger_is_more_different

    def check_returns_finite_comparison():
        res = _new(cls, params).compare(a, b, seed=0)
        assert isinstance(res, Comparison), f"compare() must return a Comparison, got {type(res).__name__}"
        assert math.isfinite(float(res.score)), f"score is not finite: {res.score}"

    def check_identity_is_least_different():
        obj = _new(cls, params)
        same, other = obj.compare(a, a, seed=0).score, obj.compare(a, b, seed=0).score
        ok = same <= other + 1e-9 if cls.larger_is_more_different else same >= other - 1e-9
        assert ok, f"d(A, A)={same} is more different than d(A, B)={other}"

    def check_score_equals_compare():
        obj = _new(cls, params)
        full, alone = float(obj.compare(a, b, seed=0).score), float(_new(cls, params).score(a, b, seed=0))
        assert math.isclose(full, alone, rel_tol=1e-9, abs_tol=1e-12), \
            f"score() gave {alone} but compare().score {full}"

    def check_seed_determinism():
        s1 = _new(cls, params).compare(a, b, seed=0).score
        s2 = _new(cls, params).compare(a, b, seed=0).score
        assert s1 == s2, f"same seed, different scores: {s1} vs {s2}"

    def check_saved_summary_equals_direct_compare():
        """summarise(A) → .bench file → load → compare_summary(·, B) equals compare(A, B) to 1e-6."""
        import tempfile
        from pathlib import Path

        from bench import summaryfile

        obj = _new(cls, params)
        direct = float(obj.compare(a, b, seed=0).score)
        stats = dict(obj.summarise(a, seed=0))
        if obj.uses_state():
            stats.update(obj.saved_states(a, seed=0))
        with tempfile.TemporaryDirectory() as tmp:
            info = {"name": a.name, "revision": "0" * 16, "n": len(a)}
            path = summaryfile.save(summaryfile.SavedSummary(info, {}, {cls.name: {"version": "0", "params": {}}},
                                                             {cls.name: stats}), Path(tmp) / "a.bench")
            stats = summaryfile.load(path).statistics[cls.name]
        saved = float(_new(cls, params).compare_summary(stats, b, seed=0).score)
        assert math.isclose(saved, direct, rel_tol=1e-6, abs_tol=1e-9), \
            f"compare against the saved summary gave {saved}, the direct compare {direct}"
        draws = _new(cls, params).saved_draws(stats, b, seed=0) if obj.uses_state() else None
        if draws is not None:
            got = draws.observed()
            assert math.isclose(got, direct, rel_tol=1e-6, abs_tol=1e-9), \
                f"the saved block states gave {got}, the direct compare {direct}"

    def check_state_path_equals_direct_score():
        """The draws' observed score (one image per block, and blocks of 3 merged by addition)
        equals compare(A, B).score to 1e-6: the null and the interval score what the record says."""
        from bench.statistics import make_blocks

        obj = _new(cls, params)
        direct = float(obj.compare(a, b, seed=0).score)
        for size in (1, 3):
            draws = _new(cls, params).draws(a, b, make_blocks(len(a), len(b), size, 0), seed=0)
            if draws is None:
                return
            got = draws.observed()
            assert math.isclose(got, direct, rel_tol=1e-6, abs_tol=1e-9), \
                f"the state path gave {got} (blocks of {size}) but compare().score {direct}"

    def check_contract_names_not_hidden():
        check_contract_names(cls, _new(cls, params))

    checks = [check_class_attributes, check_contract_names_not_hidden, check_returns_finite_comparison,
              check_identity_is_least_different, check_score_equals_compare, check_seed_determinism]
    if cls.supports_draws():
        checks.append(check_state_path_equals_direct_score)
    if tags_of(cls).supports_summary:
        checks.append(check_saved_summary_equals_direct_compare)
    return checks


def method_checks(method: str | type, *, regs=None, view: DataView | None = None,
                  params: dict | None = None) -> list[Callable[[], None]]:
    """Every conformance check for a method name (all its roles) or a class, as callables."""
    params = params or {}
    classes: list[type] = []
    if isinstance(method, str):
        from bench import plugins

        regs = regs or plugins.load()
        known = plugins.method_names(regs)
        if method not in known:
            from bench.errors import UnknownNameError

            raise UnknownNameError("method", method, known)
        classes += [r.get(method) for r in (regs.summarisers, regs.comparators) if method in r]
    else:
        classes.append(method)
    view = view or default_view()
    checks: list[Callable[[], None]] = []
    for cls in classes:
        made = summariser_checks(cls, view, params) if issubclass(cls, Summariser) else \
            comparator_checks(cls, view, params)
        for check in made:
            wrapped = functools.wraps(check)(check)
            wrapped.__name__ = f"{cls.__name__}.{check.__name__}"
            checks.append(wrapped)
    return checks


def check_method(method: str | type, **kwargs) -> list[tuple[str, str | None]]:
    """Run every check; returns [(check name, None if passed else the error line)]."""
    out = []
    for check in method_checks(method, **kwargs):
        try:
            check()
            out.append((check.__name__, None))
        except Exception as exc:  # noqa: BLE001 - report every failing check
            out.append((check.__name__, f"{type(exc).__name__}: {exc}".splitlines()[0]))
    return out
