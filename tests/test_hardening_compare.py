"""Issue 30, the compare / saved-summary surface: crafted `.bench` files, records and bad numbers.
Each test names its problem id (C1, H4, H6, M1–M3, L6–L9, L11, L12, L18, L20)."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.cli import main

FAST = ["--extractor", "pixels", "--no-progress", "--no-cache", "--workers", "0", "--bootstrap", "0",
        "--permutations", "9"]


def _folder(root: Path, n: int, seed: int, size: int = 8) -> Path:
    root.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / f"{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hard")
    a, b = _folder(root / "A", 12, 0), _folder(root / "B", 12, 1)
    saved = root / "a.bench"
    assert main(["summarise", str(a), "--save", str(saved), "--methods", "fd,dna", *FAST[:6]]) == 0
    return {"root": root, "A": a, "B": b, "saved": saved}


def _craft(src: Path, dst: Path, *, meta=None, drop=(), add: dict | None = None) -> Path:
    with np.load(src, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if k not in drop}
    m = json.loads(bytes(arrays["__meta__"]).decode())
    if meta is not None:
        m = meta(m)
    arrays["__meta__"] = np.frombuffer(json.dumps(m).encode(), np.uint8)
    arrays.update(add or {})
    with open(dst, "wb") as f:
        np.savez(f, **arrays)
    return dst


def _compare(data, bench: Path, tmp_path: Path, capsys, methods="fd") -> tuple[int, str]:
    capsys.readouterr()
    rc = main(["compare", str(bench), str(data["B"]), "--methods", methods, "--out", str(tmp_path / "out"), *FAST])
    return rc, capsys.readouterr().err


def test_c1_a_crafted_revision_cannot_write_outside_out(data, tmp_path, capsys):
    def evil(m):
        m["dataset"]["revision"] = "x/../../../../ESCAPED"
        return m

    rc, err = _compare(data, _craft(data["saved"], tmp_path / "evil.bench", meta=evil), tmp_path, capsys)
    assert rc == 2 and "field dataset.revision" in err and err.count("\n") == 1
    assert not list(tmp_path.rglob("*ESCAPED*")) and not list(Path.cwd().glob("ESCAPED*"))


def test_h4_a_zip_bomb_is_refused_from_its_headers(data, tmp_path, capsys):
    bomb = tmp_path / "bomb.bench"
    _craft(data["saved"], bomb)
    header = np.lib.format.header_data_from_array_1_0(np.zeros(1))
    header["shape"] = (402_653_184,)
    with zipfile.ZipFile(bomb, "a", compression=zipfile.ZIP_DEFLATED) as z, z.open("dna/bomb.npy", "w",
                                                                                   force_zip64=True) as f:
        np.lib.format.write_array_header_1_0(f, header)
        f.write(b"\0" * 2**20)   # the declared size is what is checked, before anything is inflated
    rc, err = _compare(data, bomb, tmp_path, capsys, methods="dna")
    assert rc == 2 and "would take" in err and "MiB" in err


def test_h6_compare_against_a_saved_summary_scores_draws_from_rows(data, tmp_path, capsys):
    """3072-D pixels, 12 images: the saved rows give a Gram-matrix null, not a 3072² eigensolve per draw."""
    # (76 min for 30 images before: every resample recomputed two 3072 × 3072 square roots)
    from bench import summaryfile
    from bench.baselines import FrechetDistance, GramFrechetDraws
    from bench.compare import CompareConfig, CompareRun

    stats = summaryfile.load(data["saved"]).statistics["fd"]
    assert stats["state.row"].shape == (12, 3072)
    run = CompareRun(CompareConfig(a=str(data["saved"]), b=str(data["B"]), extractor="pixels", methods=["fd"],
                                   no_cache=True, workers=0, out=tmp_path))
    draws = FrechetDistance().saved_draws(stats, run.context.view(run.b.source), seed=0)
    assert isinstance(draws, GramFrechetDraws) and draws.blocks.count == 24


@pytest.mark.parametrize("change, expected", [
    (lambda m: [m], "is not a bench summary"),
    (lambda m: {k: v for k, v in m.items() if k != "dataset"}, "field dataset"),
    (lambda m: {**m, "dataset": {**m["dataset"], "n": "abc"}}, "field dataset.n"),
    (lambda m: {**m, "dataset": {**m["dataset"], "n": 10**30}}, "field dataset.n"),
    (lambda m: {**m, "dataset": {**m["dataset"], "revision": 12345}}, "field dataset.revision"),
    (lambda m: {**m, "format_version": "1"}, "format_version: '1' is not an integer"),   # L6
])
def test_m1_m2_l6_malformed_descriptions_are_one_line(data, tmp_path, capsys, change, expected):
    rc, err = _compare(data, _craft(data["saved"], tmp_path / "m.bench", meta=change), tmp_path, capsys)
    assert rc == 2 and expected in err and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("member, value, expected", [
    ("fd/sigma", np.eye(5), "fd: the saved mean has shape"),
    ("fd/mu", np.full(3072, np.nan), "contains NaN or inf"),
    ("fd/mu", np.array(["a", "b"]), "not numbers"),
])
def test_m1_malformed_fd_statistics_are_one_line(data, tmp_path, capsys, member, value, expected):
    rc, err = _compare(data, _craft(data["saved"], tmp_path / "s.bench", drop=(member,), add={member: value}),
                       tmp_path, capsys)
    assert rc == 2 and expected in err and "Traceback" not in err


def test_m2_negative_dna_counts_and_inverted_ranges_are_refused(data, tmp_path, capsys):
    with np.load(data["saved"], allow_pickle=False) as z:
        counts = next(k for k in z.files if k.startswith("dna/counts:"))
        bad = -np.abs(z[counts]) - 1
        rmin = next(k for k in z.files if k.startswith("dna/range_min:"))
        lo = z[rmin] + 1e6
    rc, err = _compare(data, _craft(data["saved"], tmp_path / "n.bench", drop=(counts,), add={counts: bad}),
                       tmp_path, capsys, methods="dna")
    assert rc == 2 and "malformed" in err
    rc, err = _compare(data, _craft(data["saved"], tmp_path / "r.bench", drop=(rmin,), add={rmin: lo}),
                       tmp_path, capsys, methods="dna")
    assert rc == 2 and "min > max" in err


def test_m3_compare_records_carry_the_weights_hash(data, tmp_path):
    from bench import plugins, records
    from bench.context import RunContext, SharedConfig, file_sha256

    weights = tmp_path / "w.pth"
    weights.write_bytes(b"weights")
    ctx = RunContext(SharedConfig(extractor="pixels", out=tmp_path, no_cache=True), plugins.load())
    ctx.weights_sha = file_sha256(str(weights))   # as with --weights on an extractor that takes them
    rec = ctx.record(method="fd", roles={"comparator": plugins.load().comparators.get("fd")()}, seed=0,
                     preset="paper", kind="comparison",
                     dataset=records.DatasetInfo(name="A", revision="0" * 16, n=2),
                     dataset_b=records.DatasetInfo(name="B", revision="1" * 16, n=2))
    assert rec.features.weights == ctx.weights_sha
    assert f"+w{ctx.weights_sha[:12]}" in str(ctx.runs.path(rec))


def test_l7_another_extractor_is_named_plainly(data, tmp_path, capsys):
    capsys.readouterr()
    rc = main(["compare", str(data["saved"]), str(data["B"]), "--methods", "fd", "--extractor", "tiny-vit",
               "--out", str(tmp_path / "o"), "--no-cache", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "made with extractor 'pixels', this comparison uses 'tiny-vit'" in err


def test_l8_save_suffix_is_checked_before_any_work(data, tmp_path, capsys):
    capsys.readouterr()
    assert main(["summarise", str(data["A"]), "--save", str(tmp_path / "x.npz"), *FAST[:6]]) == 2
    assert "must end in .bench" in capsys.readouterr().err


def test_l9_a_fifo_named_bench_is_not_a_regular_file(data, tmp_path, capsys):
    fifo = tmp_path / "f.bench"
    os.mkfifo(fifo)
    rc, err = _compare(data, fifo, tmp_path, capsys)
    assert rc == 2 and "is not a regular file" in err


def test_l11_ctrl_c_in_compare_does_not_suggest_resume(data, tmp_path, capsys, monkeypatch):
    from bench.compare import CompareRun

    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(CompareRun, "compare", interrupted)
    assert main(["compare", str(data["A"]), str(data["B"]), "--out", str(tmp_path / "o"), *FAST]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "--resume" not in err


def test_l12_per_class_on_unlabelled_sides_is_refused_before_work(data, tmp_path, capsys):
    capsys.readouterr()
    assert main(["compare", str(data["A"]), str(data["B"]), "--per-class", "--out", str(tmp_path / "o"),
                 *FAST]) == 2
    assert "--per-class needs class labels" in capsys.readouterr().err
    assert not (tmp_path / "o" / "compare").exists()


def test_l18_a_two_image_side_keeps_its_score_and_p(tmp_path):
    from bench.compare import CompareConfig, CompareRun, Side
    from bench.testing import make_tiny_source

    src = make_tiny_source(12, size=16)
    sides = (Side("A", source=src.subset(np.arange(10), name="A")), Side("B", source=src.subset([10, 11], name="B")))
    cfg = CompareConfig(a="A", b="B", extractor="pixels", methods=["wavelet"], permutations=9, bootstrap=20,
                        no_cache=True, workers=0, out=tmp_path)
    recs = {r.method.name: r for r in CompareRun(cfg, sides=sides).compare()}
    assert set(recs) == {"wavelet", "atlas"}   # the atlas joins every compare
    for rec in recs.values():
        assert rec.status == "ok" and "score" in rec.metrics and "p_value" in rec.metrics, rec.error


def test_l20_an_unbounded_draw_count_is_refused(data, tmp_path, capsys):
    capsys.readouterr()
    assert main(["compare", str(data["A"]), str(data["B"]), "--permutations", "1000000000", "--extractor",
                 "pixels", "--out", str(tmp_path / "o")]) == 2
    assert "--permutations must be from 1 to 100,000" in capsys.readouterr().err
