import numpy as np
import pytest

from bench import metrics as M
from bench.errors import DataError


def test_clustering_scores_against_the_contingency_table_by_hand():
    """NMI (arithmetic), ARI and VI computed here from the joint table, not by the library calls
    the harness wraps; AMI by its invariances (it needs the expected MI, which we do not re-derive)."""
    from math import comb

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 200)
    codes = rng.integers(0, 6, 200)
    s = M.clustering_scores(codes, labels)
    joint = np.zeros((4, 6))
    np.add.at(joint, (labels, codes), 1)
    p = joint / joint.sum()
    pu, pv = p.sum(1, keepdims=True), p.sum(0, keepdims=True)
    nz = p > 0
    mi = (p[nz] * np.log((p / (pu * pv))[nz])).sum()
    hu, hv = -(pu * np.log(pu)).sum(), -(pv * np.log(pv)).sum()
    assert s["nmi"] == pytest.approx(mi / ((hu + hv) / 2))
    vi = -(p[nz] * (np.log(p / pu)[nz] + np.log(p / pv)[nz])).sum()
    assert s["vi"] == pytest.approx(vi)
    pairs = sum(comb(int(c), 2) for c in joint.ravel())
    rows, cols = sum(comb(int(c), 2) for c in joint.sum(1)), sum(comb(int(c), 2) for c in joint.sum(0))
    expected = rows * cols / comb(200, 2)
    assert s["ari"] == pytest.approx((pairs - expected) / ((rows + cols) / 2 - expected))
    assert abs(s["ami"]) < 0.02 and s["ami"] < s["nmi"]   # chance-corrected: independent draws score ~0
    assert M.clustering_scores((codes + 2) * 7, labels)["ami"] == pytest.approx(s["ami"])   # names ignored
    assert M.clustering_scores(labels, labels)["ami"] == pytest.approx(1.0)


def test_perfect_and_random_clusterings():
    labels = np.repeat(np.arange(5), 40)
    perfect = M.clustering_scores((labels + 3) % 5, labels)
    assert perfect["nmi"] == pytest.approx(1.0) and perfect["vi"] == pytest.approx(0.0, abs=1e-12)
    assert M.random_assignment_nmi(labels, labels, seed=0) < 0.1


def test_linear_probe_separable_and_errors():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 50)
    x = rng.normal(size=(150, 5)) + 5 * np.eye(5)[y]
    assert M.linear_probe_accuracy(x, y, seed=0) > 0.95
    with pytest.raises(DataError, match="at least 2 classes"):
        M.linear_probe_accuracy(x, np.zeros(150), seed=0)
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        M.linear_probe_accuracy(bad, y)


def test_duplicate_scores_unordered_pairs():
    planted = np.array([[0, 1], [2, 3], [4, 5]])
    predicted = np.array([[1, 0], [3, 2], [6, 7]])
    s = M.duplicate_scores(predicted, planted)
    assert s["dup_precision"] == pytest.approx(2 / 3) and s["dup_recall"] == pytest.approx(2 / 3)


def test_fidelity_direction():
    props = [0, 0.5, 1]
    assert M.fidelity_spearman(props, [0.1, 0.2, 0.9], True) == pytest.approx(1.0)
    assert M.fidelity_spearman(props, [0.9, 0.2, 0.1], False) == pytest.approx(1.0)
