"""The atlas's map (bench.atlas_map): the cross-set duplicate rule against a brute-force reading of
it, the exact and the projected neighbour search, the point cap and sampling, the artefacts' round
trip (and malformed ones), and the SVG: one hover panel per point, outlines, links, no script."""

from __future__ import annotations

import re

import numpy as np
import pytest

from bench import atlas_map as M
from bench.api import Finding, PointMap
from bench.compare import _findings_artefacts


def _features(n_a=300, n_b=250, d=16, copies=5, seed=0):
    """Two Gaussian samples; B's last ``copies`` rows are A's first rows plus tiny noise."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n_a, d))
    b = rng.normal(size=(n_b, d))
    if copies:
        b[-copies:] = a[:copies] + rng.normal(scale=1e-3, size=(copies, d))
    return np.r_[a, b].astype(np.float32), np.r_[np.zeros(n_a, int), np.ones(n_b, int)]


def _brute_force(x, side):
    """The rule as stated, with full distance matrices."""
    x = x.astype(np.float64)
    d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    a, b = np.flatnonzero(side == 0), np.flatnonzero(side == 1)
    within = np.r_[d[np.ix_(a, a)].min(1), d[np.ix_(b, b)].min(1)]
    thr = np.percentile(within[within > 0], M.NN_PERCENTILE)
    ab, ba = d[np.ix_(a, b)].argmin(1), d[np.ix_(b, a)].argmin(1)
    return {(int(a[i]), int(b[j])) for i, j in enumerate(ab) if ba[j] == i and d[a[i], b[j]] <= thr}, thr


def test_cross_pairs_follow_the_stated_rule_and_find_planted_copies():
    x, side = _features()
    pairs, dist, thr = M.cross_pairs(x, side)
    expected, thr_bf = _brute_force(x, side)
    assert thr == pytest.approx(thr_bf)
    assert {tuple(p) for p in pairs.tolist()} == expected
    assert {(i, 300 + 245 + i) for i in range(5)} <= expected          # the planted copies, A's row first
    assert (np.diff(dist) >= 0).all() and (dist <= thr).all()            # closest first


def test_an_exact_copy_is_linked_even_when_a_side_holds_exact_copies():
    x, side = _features(copies=3)
    x[10] = x[11]                                  # an exact copy within A: the percentile ignores distance 0
    x[-1] = x[2]                                   # an exact copy across
    pairs, dist, thr = M.cross_pairs(x, side)
    assert thr > 0 and [2, len(x) - 1] in pairs.tolist() and dist.min() == 0.0


def test_the_projected_search_finds_the_same_pairs(monkeypatch):
    x, side = _features(d=96)
    exact = {tuple(p) for p in M.cross_pairs(x, side)[0].tolist()}
    monkeypatch.setattr(M, "EXACT_MAX_ROWS", 100)   # n = 550 > 100 and d = 96 > PCA_DIM: candidates from PCA
    projected = {tuple(p) for p in M.cross_pairs(x, side)[0].tolist()}
    assert {(i, 545 + i) for i in range(5)} <= projected and projected == exact


def test_same_distribution_gives_few_links():
    x, side = _features(n_a=400, n_b=400, copies=0)
    assert len(M.cross_pairs(x, side)[0]) <= 4     # 1 % of 800 would be 8; mutual NN rules most out


def _regions():
    return [{"region": 1, "more_in": "A", "p_adjusted": 0.001, "majority_class": "cat"},
            {"region": 2, "more_in": "B", "p_adjusted": 0.02, "cells": [2, 3]}]


def test_point_map_caps_the_points_keeps_the_linked_and_maps_indices(monkeypatch):
    monkeypatch.setattr(M, "MAX_POINTS", 60)
    x, side = _features()
    codes = np.arange(len(x)) % 5
    pm = M.point_map(x, side, codes, _regions(), seed=3)
    assert len(pm.xy) == 60 and pm.xy.shape == (60, 2) and np.isfinite(pm.xy).all()
    rows = np.where(pm.side == 0, pm.index, pm.index + 300)            # back to rows of A ∪ B
    assert len(set(rows.tolist())) == 60 and (codes[rows] == pm.group).all()
    linked = {(int(rows[i]), int(rows[j])) for i, j in pm.links}
    assert {(i, 545 + i) for i in range(5)} <= linked                    # both images of each pair drawn
    assert [o["members"] for o in pm.outlines] == [[1], [2, 3]]
    assert pm.outlines[0]["label"] == "region 1: cat, more in A, q=0.001" and len(pm.outlines[1]["polygon"]) >= 3
    assert "60 of the 550 images" in pm.note and "seed 3" in pm.note and "1st percentile" in pm.note
    again = M.point_map(x, side, codes, _regions(), seed=3)
    assert np.array_equal(again.index, pm.index) and np.allclose(again.xy, pm.xy)


def test_artefacts_round_trip_and_malformed_ones_are_refused():
    x, side = _features(n_a=40, n_b=30, copies=2)
    pm = M.point_map(x, side, np.arange(len(x)) % 3, _regions(), seed=0)
    art = _findings_artefacts(type("C", (), {"findings": [Finding("map", points=pm)]})())
    meta = art["findings"][0]["points"]
    assert meta["n"] == 70 and art["finding0_points_xy"].dtype == np.float32
    import json

    json.dumps(art["findings"])                    # the JSON part holds no arrays
    back = M.from_artefacts(art, "finding0_points", meta)
    assert np.allclose(back.xy, pm.xy) and np.array_equal(back.links, pm.links)
    bad = dict(art, finding0_points_links=np.array([[0, 999]]))
    with pytest.raises(ValueError, match="do not fit"):
        M.from_artefacts(bad, "finding0_points", meta)
    with pytest.raises(ValueError, match="missing"):
        M.from_artefacts({k: v for k, v in art.items() if k != "finding0_points_side"}, "finding0_points", meta)


def test_map_html_one_hover_panel_per_point_outlines_and_no_script():
    pm = PointMap(xy=np.array([[0, 0], [1, 1], [1, 0], [0, 1], [0.5, 0.5]], float), side=np.array([0, 1, 0, 1, 0]),
                  index=np.array([0, 0, 1, 1, 2]), group=np.array([4, 4, 4, 5, 5]),
                  outlines=[{"label": "region 4 <x>", "members": [4], "polygon": [[0, 0], [1, 1], [1, 0]]}],
                  links=np.array([[0, 1]]), note="how")
    text = M.map_html(pm, lambda s, i: M.thumbnail_uri(np.full((8, 8, 3), 40 * i, np.uint8)) if s == 0 else None,
                      "map:")
    assert text.count('<g class="pt ') == 5 and text.count("<image ") == 3 and "<script" not in text
    assert text.count('<polygon class="ol"') == 1 and "region 4 &lt;x&gt;" in text and text.count('class="ln"') == 2
    assert "near-duplicate of B #0" in text and "(outlined: region 4 &lt;x&gt;)" in text
    uri = re.search(r'href="(data:image/jpeg;base64,[^"]+)"', text).group(1)
    import base64
    import io

    from PIL import Image

    assert Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).size == (M.THUMB, M.THUMB)


@pytest.mark.parametrize("n_a,n_b,d", [(2, 2, 4), (3, 2, 1), (5, 4, 3)])
def test_small_and_degenerate_inputs_still_give_a_map(n_a, n_b, d):
    x = np.zeros((n_a + n_b, d), np.float32)       # every image the same: no area, no hull, distance 0
    side = np.r_[np.zeros(n_a, int), np.ones(n_b, int)]
    pm = M.point_map(x, side, np.zeros(n_a + n_b, int), _regions()[:1], seed=0)
    assert pm.xy.shape == (n_a + n_b, 2) and np.isfinite(pm.xy).all() and pm.outlines[0]["polygon"] == []
    assert len(pm.links) >= 1 and "at a distance ≤ 0" in pm.note   # no distinct neighbours: exact copies only
    assert "<svg" in M.map_html(pm, lambda s, i: None, "map:")
