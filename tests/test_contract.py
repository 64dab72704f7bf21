"""The method contract guards itself: every registered method and role passes the conformance
checks (a new method is checked without anyone adding it here), a parameter that hides a contract
name is refused at load, and a broken method fails the checks."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest

from bench import plugins
from bench.api import Comparator, Comparison, DataView, check_contract_names, tags_of
from bench.conformance import check_method, default_view, method_checks
from bench.errors import BenchError
from bench.registry import Registry


@functools.cache
def _view() -> DataView:
    return default_view()


def _every_check():
    regs = plugins.load()
    for name in plugins.method_names(regs):
        for check in method_checks(name, regs=regs, view=_view()):
            yield pytest.param(check, id=f"{name}:{check.__name__}")


@pytest.mark.parametrize("check", list(_every_check()))
def test_every_registered_method_conforms(check):
    check()


class _HidesScore(Comparator):
    name = "hides-score"

    def __init__(self, *, score: str = "x"):
        self.score = score

    def compare(self, a, b, *, seed=0):
        return Comparison(score=0.0)


def test_a_parameter_hiding_a_contract_name_is_refused_at_load():
    reg = Registry("comparator", base_cls=Comparator, check=tags_of)
    with pytest.raises(BenchError, match="constructor parameter 'score' hides the method contract's 'score'"):
        reg.add("hides-score", _HidesScore)


def test_an_attribute_hiding_a_contract_name_is_refused():
    class SetsFit(Comparator):
        name = "sets-fit"

        def __init__(self, *, mode: str = "a"):
            self.mode = mode
            self.compare = mode

    with pytest.raises(BenchError, match="attribute 'compare' set on the instance hides"):
        check_contract_names(SetsFit, SetsFit())


class _NaNScore(Comparator):
    """A planted broken comparator: its score is NaN."""

    name = "nan-score"

    def compare(self, a, b, *, seed=0):
        return Comparison(score=float("nan"))


class _StateDisagrees(Comparator):
    """A planted broken comparator: its state path scores something else than compare()."""

    name = "state-disagrees"

    def compare(self, a, b, *, seed=0):
        return Comparison(score=float(np.abs(a.features().mean() - b.features().mean())))

    def block_states(self, view, blocks, n_blocks, *, context, seed=0):
        x = view.features().astype(np.float64)
        out = np.zeros((n_blocks, x.shape[1]))
        np.add.at(out, blocks, x)
        return {"sum": out, "count": np.bincount(blocks, minlength=n_blocks).astype(np.float64)}

    def finalize(self, a, b, *, context):
        return float(np.abs(a["sum"].sum() / a["count"] - b["sum"].sum() / b["count"])) + 1.0   # the bug


@pytest.mark.parametrize("cls, failing", [
    (_NaNScore, "check_returns_finite_comparison"),
    (_StateDisagrees, "check_state_path_equals_direct_score"),
])
def test_a_broken_method_fails_the_conformance_checks(cls, failing):
    results = dict(check_method(cls, view=_view()))
    failed = {name.split(".")[-1] for name, err in results.items() if err is not None}
    assert failing in failed


def test_state_disagrees_is_right_without_the_bug():
    """The planted comparator's state path is otherwise faithful (so the check above fails for the bug)."""
    from bench.statistics import make_blocks

    view = _view()
    a, b = view.subset(np.arange(30)), view.subset(np.arange(30, 60))
    obj = _StateDisagrees()
    draws = obj.draws(a, b, make_blocks(30, 30, 3, 0))
    assert math.isclose(draws.observed() - 1.0, obj.compare(a, b).score, rel_tol=1e-6, abs_tol=1e-6)


def test_compare_with_protosim_ends_with_a_table(tmp_path, capsys):
    """The live bug of issue 28: ProtoSim's parameter `score` hid Comparator.score(), so a compare
    trained and then failed with a traceback."""
    from PIL import Image

    from bench.cli import main
    from bench.testing import make_tiny_source

    src = make_tiny_source(24, size=32)
    for name, rows in (("a", range(12)), ("b", range(12, 24))):
        (tmp_path / name).mkdir()
        for i in rows:
            Image.fromarray(src.array[i]).save(tmp_path / name / f"{i:02d}.png")
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--methods", "protosim", "--preset", "quick",
                 "--permutations", "1", "--bootstrap", "0", "--no-cache", "--no-progress", "--workers", "0",
                 "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "protosim" in out and "decision at" in out
