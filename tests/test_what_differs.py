"""What differs and what to do about it: the difference atlas (regions, Fisher exact p, BH), the
decision (Holm across comparators, --alpha, --fail-on-difference's exit status) and --plan."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench import plugins
from bench import statistics as S
from bench.atlas import region_table, region_tree
from bench.cli import main
from bench.compare import EXIT_DIFFERENT, CompareConfig, CompareRun, Side
from bench.testing import make_tiny_source


def _sides(removed: int | None, n: int = 240, seed: int = 0) -> tuple[Side, Side]:
    """A: 4 classes; B: the same design from other images, without class ``removed`` (None: all)."""
    src = make_tiny_source(n, n_classes=4, size=16, seed=seed)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n - 4)                 # the last 4 are planted duplicates: leave them out
    half_a, half_b = np.sort(order[: len(order) // 2]), np.sort(order[len(order) // 2:])
    if removed is not None:
        half_b = half_b[src.labels[half_b] != removed]
    return Side("A", source=src.subset(half_a, name="A")), Side("B", source=src.subset(half_b, name="B"))


def _run(tmp_path: Path, sides, methods=("atlas", "fd"), **kw) -> tuple[CompareRun, dict]:
    cfg = CompareConfig(a="A", b="B", extractor="pixels", no_cache=True, methods=list(methods), permutations=99,
                        bootstrap=20, out=tmp_path, workers=0, **kw)
    run = CompareRun(cfg, regs=plugins.load(), sides=sides)
    return run, {r.method.name: r for r in run.compare()}


def test_the_atlas_names_the_removed_class(tmp_path):
    run, recs = _run(tmp_path, _sides(removed=2))
    atlas = recs["atlas"]
    assert atlas.status == "ok" and atlas.metrics["p_adjusted"].value < 0.01
    arts, _, _ = run.context.runs.load_artefacts(run.context.runs.path(atlas))
    top = arts["findings"][0]["rows"][0]
    assert top["majority_class"] == "class2" and top["more_in"] == "A" and top["p_adjusted"] < 0.01
    assert "map_of_A_∪_B" not in arts and any("map" in f["title"] for f in arts["findings"])
    assert atlas.tables["decision"][0]["different"] is True


def test_no_difference_gives_no_significant_region_and_no_decision(tmp_path):
    run, recs = _run(tmp_path, _sides(removed=None))
    assert all(r.status == "ok" for r in recs.values())
    assert not run.different(list(recs.values()))
    arts, _, _ = run.context.runs.load_artefacts(run.context.runs.path(recs["atlas"]))
    assert all(row["p_adjusted"] >= 0.05 for row in arts["findings"][0]["rows"])


def test_region_table_p_values_are_fishers_exact_and_bh_adjusted():
    from scipy.stats import fisher_exact

    codes = np.r_[np.zeros(30, int), np.ones(30, int), np.zeros(5, int), np.ones(35, int)]
    side = np.r_[np.zeros(60, int), np.ones(40, int)]
    x = np.eye(2)[codes] + 0.01
    rows = region_table(codes, side, None, None, x, np.eye(2))
    by = {r["region"]: r for r in rows}
    assert by[0]["p_value"] == pytest.approx(fisher_exact([[30, 30], [5, 35]])[1])
    np.testing.assert_allclose([by[0]["p_adjusted"], by[1]["p_adjusted"]],
                               S.benjamini_hochberg(np.array([by[0]["p_value"], by[1]["p_value"]])))


def test_a_shift_split_over_two_cells_is_found_in_their_union():
    """Cells 0 and 1 (close centres) each hold a mild excess of B, too weak alone after BH over the
    regions; their union, a node of the centres' tree, holds both and is the most significant region."""
    from scipy.stats import fisher_exact

    centroids = np.array([[0.0, 0.0], [0.5, 0.0], [10.0, 0.0], [10.0, 10.0], [0.0, 10.0], [10.0, 20.0]])
    nodes = region_tree(centroids)
    assert len(nodes) == 2 * len(centroids) - 2 and any(sorted(n.tolist()) == [0, 1] for n in nodes)
    counts_a = [30, 30, 60, 60, 60, 60]          # 300 images of A
    counts_b = [45, 45, 60, 60, 60, 60]          # 330 of B: cells 0 and 1 have 15 more each
    codes = np.concatenate([np.full(k, c) for c, k in enumerate(counts_a)] +
                           [np.full(k, c) for c, k in enumerate(counts_b)])
    side = np.r_[np.zeros(sum(counts_a), int), np.ones(sum(counts_b), int)]
    x = centroids[codes]
    rows = region_table(codes, side, None, None, x, centroids, nodes=nodes)
    top = rows[0]
    assert top["cells"] == [0, 1] and top["more_in"] == "B"
    assert top["p_value"] == pytest.approx(fisher_exact([[60, 240], [90, 240]])[1])
    cells_alone = region_table(codes, side, None, None, x, centroids)
    assert min(r["p_adjusted"] for r in cells_alone) > top["p_adjusted"]


def _folder(root: Path, images: np.ndarray) -> Path:
    root.mkdir(parents=True)
    for i, im in enumerate(images):
        Image.fromarray(im).save(root / f"{i:03d}.png")
    return root


def test_fail_on_difference_exit_status(tmp_path):
    src = make_tiny_source(200, n_classes=4, size=16)
    a = _folder(tmp_path / "a", src.array[:98])
    b = _folder(tmp_path / "b", src.array[98:196][src.labels[98:196] != 1])
    same = _folder(tmp_path / "same", src.array[98:196])
    args = ["--methods", "atlas", "--extractor", "pixels", "--no-cache", "--no-progress", "--permutations", "99",
            "--bootstrap", "0", "--fail-on-difference", "--workers", "0"]
    assert main(["compare", str(a), str(b), "--out", str(tmp_path / "o1"), *args]) == EXIT_DIFFERENT
    assert main(["compare", str(a), str(same), "--out", str(tmp_path / "o2"), *args]) == 0


def test_plan_recommends_an_n_that_reaches_the_power(tmp_path):
    """--plan on a removed class: at the recommended n, fresh subsamples give p < 0.05 at least 70 %
    of the time (the issue's criterion, at a small scale)."""
    sides = _sides(removed=2, n=400)
    run, recs = _run(tmp_path, sides, methods=("fd",), plan=True)
    m = {k: v.value for k, v in recs["fd"].metrics.items()}
    assert "n_for_power_a" in m and recs["fd"].tables["plan"]
    n_a = int(m["n_for_power_a"])
    a_view = run.context.view(sides[0].source)
    b_view = run.context.view(sides[1].source)
    fd = run.comparators["fd"]
    rng = np.random.default_rng(1)
    hits = 0
    for k in range(20):
        ia = np.sort(rng.choice(len(a_view), size=min(n_a, len(a_view)), replace=False))
        ib = np.sort(rng.choice(len(b_view), size=min(int(m["n_for_power_b"]), len(b_view)), replace=False))
        draws = fd.draws(a_view.subset(ia), b_view.subset(ib), S.make_blocks(len(ia), len(ib), 1, k), seed=k)
        hits += S.p_value(draws.observed(), S.permutation_null(draws, 99, k), 1.0) < 0.05
    assert hits >= 14


def test_blocks_caps_the_blocks_per_side(tmp_path):
    """--blocks 4: DNA's states come in at most 4 (+ a remainder) random blocks a side, the null
    still moves them (p is not 1 by construction) and the record says so."""
    _, recs = _run(tmp_path, _sides(removed=None), methods=("dna",), blocks=4,
                     settings=["dna.layers=pooled", "dna.bins=20"])
    null = recs["dna"].tables["null"][0]
    full_a, full_b = null["blocks"].split(" blocks")[0].split(" + ")
    assert recs["dna"].status == "ok" and int(full_a) <= 5 and int(full_b) <= 5
    assert null["null_sd"] > 0
