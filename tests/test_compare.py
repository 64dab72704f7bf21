"""`bench compare A B` and `bench summarise` on a user's own folders: scikit-image's bundled LFW
subset (100 faces, 100 non-faces) written as image folders, synth-shift's known mixing ladder,
planted cross-set duplicates, saved summaries and every bad input."""

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.stats import spearmanr

from bench import plugins, summaryfile
from bench.cli import main
from bench.compare import CompareConfig, CompareRun, Side
from bench.runstore import RunStore
from bench.statistics import p_value

#: pixels keep CI fast and are a real extractor. Permutations per comparator: enough that p can
#: fall below 0.01 (1 / (1 + draws)): 199 for the cheap ones (fd, multicut, wavelet's score-only
#: path), 149 for dna, which bins every image's activations again at each draw
FAST = ["--extractor", "pixels", "--no-progress", "--no-cache", "--bootstrap", "20"]
DRAWS = {"fd": 199, "dna": 149, "multicut": 199, "wavelet": 199}


def _write(folder: Path, images: np.ndarray) -> Path:
    folder.mkdir(parents=True)
    for i, im in enumerate(images):
        Image.fromarray(im).save(folder / f"{i:03d}.png")
    return folder


@pytest.fixture(scope="module")
def lfw(tmp_path_factory) -> Path:
    from skimage.data import lfw_subset

    x = (lfw_subset() * 255).round().astype(np.uint8)
    root = tmp_path_factory.mktemp("lfw")
    _write(root / "faces", x[:100])
    _write(root / "nonfaces", x[100:])
    _write(root / "faces-half1", x[:50])
    _write(root / "faces-half2", x[50:100])
    return root


def _records(out: Path) -> dict[str, dict]:
    return {r.method.name: r for r in RunStore(out).load().records if r.kind == "comparison"}


@pytest.mark.parametrize("method", sorted(DRAWS))
def test_faces_differ_from_non_faces_but_not_from_each_other(lfw, tmp_path, method, capsys):
    draws = str(DRAWS[method])
    assert main(["compare", str(lfw / "faces"), str(lfw / "nonfaces"), "--methods", method, "--permutations", draws,
                 "--out", str(tmp_path / "diff"), *FAST]) == 0, capsys.readouterr()
    rec = _records(tmp_path / "diff")[method]
    m = {k: v.value for k, v in rec.metrics.items()}
    assert m["p_value"] < 0.01 and m["n_a"] == m["n_b"] == 100
    # the interval is about the bias-corrected score (the plug-in score may lie above it: that is the bias)
    assert m["ci_low"] <= m["score_bias_corrected"] <= m["ci_high"]
    ci = rec.tables["ci"][0]
    if method in ("fd", "dna"):   # comparators with bias rates: half-sampling, FD noted at n < 1.5 d (3072-D pixels)
        assert ci["method"].startswith("half-sampling")
    if method == "fd":
        assert "3072 feature dimensions" in ci["ci_note"]
    assert rec.tables["null"][0]["draws"] == DRAWS[method] and rec.tables["findings"]
    assert main(["compare", str(lfw / "faces-half1"), str(lfw / "faces-half2"), "--methods", method,
                 "--permutations", draws, "--out", str(tmp_path / "same"), *FAST]) == 0
    assert _records(tmp_path / "same")[method].metrics["p_value"].value > 0.05


def test_the_report_shows_scores_and_what_differs(lfw, tmp_path, capsys):
    out = tmp_path / "res"
    assert main(["compare", str(lfw / "faces"), str(lfw / "nonfaces"), "--methods", "fd,multicut",
                 "--permutations", "19", "--out", str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    assert "A = folder:" in printed and "mean shift vs covariance change" in printed
    text = (out / "report.html").read_text(encoding="utf-8")
    assert 'id="comparison"' in text and 'id="leaderboard"' not in text   # no benchmark cells in this run
    assert "mean shift vs covariance change" in text and "clusters only A fills" in text
    assert text.count("<img ") >= 3   # samples of A and B, and cluster montages
    rec = _records(out)["fd"]
    assert rec.dataset.name.startswith("folder:") and rec.dataset_b.n == 100
    assert (out / "compare").is_dir() and not list(out.glob("*.md"))


def test_p_value_counts_the_observed_draw():
    null = np.array([1.0, 2.0, 3.0])
    assert p_value(10.0, null, 1.0) == pytest.approx(1 / 4)
    assert p_value(2.0, null, 1.0) == pytest.approx(3 / 4)
    assert p_value(0.5, null, -1.0) == pytest.approx(1 / 4)    # smaller is more different


def test_per_class_scores_and_one_sided_classes(tmp_path, capsys):
    rng = np.random.default_rng(0)
    a, b = tmp_path / "a", tmp_path / "b"
    for root, classes, shift in ((a, ("cat", "dog"), 0), (b, ("cat", "dog", "eel"), 60)):
        for c in classes:
            _write(root / c, rng.integers(0 + shift, 120 + shift, (12, 24, 24, 3), dtype=np.uint8))
    assert main(["compare", str(a), str(b), "--methods", "fd", "--per-class", "--permutations", "9",
                 "--out", str(tmp_path / "r"), *FAST]) == 0
    rows = {r["class"]: r for r in _records(tmp_path / "r")["fd"].tables["per_class"]}
    assert rows["eel"]["note"] == "only in B" and rows["eel"]["n_a"] == 0
    assert rows["cat"]["n_a"] == rows["cat"]["n_b"] == 12 and rows["cat"]["score"] > 0 and "p_value" in rows["cat"]


def test_fidelity_on_synth_shift_matches_the_leaderboards(tmp_path):
    """The score's rank correlation with the true mixing proportion, from bench compare, is the
    leaderboard's fidelity_spearman (the same comparator on the same ladder)."""
    from bench.evaluate import evaluate_comparator
    from bench.factory import create_method, create_view

    regs = plugins.load()
    spec = regs.datasets.get("synth-shift")
    reference, levels = spec.ladder(seed=0)
    ext = regs.extractors.get("pixels")()
    fd = create_method(regs, "fd", preset="quick")["comparator"]
    scores = []
    for proportion, source in levels:
        cfg = CompareConfig(a="reference", b=f"{proportion}", extractor="pixels", no_cache=True, methods=["fd"],
                            permutations=5, bootstrap=0, out=tmp_path, preset="quick", atlas=False)
        run = CompareRun(cfg, regs=regs, sides=(Side("reference", source=reference), Side("level", source=source)))
        (rec,) = run.compare()
        scores.append((proportion, rec.metrics["score"].value))
    rho = spearmanr([p for p, _ in scores], [s for _, s in scores]).statistic
    harness, _ = evaluate_comparator(fd, create_view(spec.load(seed=0), ext), seed=0, spec=spec)
    assert rho == pytest.approx(harness["fidelity_spearman"]) and rho > 0.9


@pytest.mark.parametrize("method", ["fd", "dna"])
def test_saved_summary_compare_equals_direct_compare(lfw, tmp_path, method, capsys):
    saved = tmp_path / "faces.bench"
    assert main(["summarise", str(lfw / "faces"), "--save", str(saved), "--methods", method, *FAST[:3]]) == 0
    assert "wrote" in capsys.readouterr().out
    with np.load(saved, allow_pickle=False) as z:   # self-describing, no pickle
        meta = json.loads(bytes(z["__meta__"]).decode())
    assert meta["format"] == "bench-summary" and meta["features"]["cache_key"]["name"] == "pixels"
    assert meta["methods"][method]["version"] and meta["dataset"]["n"] == 100
    args = ["--methods", method, "--permutations", "5", *FAST]
    assert main(["compare", str(lfw / "faces"), str(lfw / "nonfaces"), "--out", str(tmp_path / "d"), *args]) == 0
    assert main(["compare", str(saved), str(lfw / "nonfaces"), "--out", str(tmp_path / "s"), *args]) == 0
    direct, from_file = _records(tmp_path / "d")[method], _records(tmp_path / "s")[method]
    assert from_file.metrics["score"].value == pytest.approx(direct.metrics["score"].value, rel=1e-6)
    # A's block states travel in the file: the same null and interval as from A's images
    assert from_file.metrics["p_value"].value == direct.metrics["p_value"].value
    assert from_file.metrics["ci_low"].value == pytest.approx(direct.metrics["ci_low"].value, rel=1e-6)
    assert from_file.tables["null"][0]["draws"] == 5


def test_conformance_checks_the_saved_summary_round_trip():
    from bench.conformance import check_method

    results = dict(check_method("fd"))
    assert results["FrechetDistance.check_saved_summary_equals_direct_compare"] is None


# --------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def bad_inputs(lfw, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad")
    one = _write(root / "one", np.zeros((1, 8, 8, 3), dtype=np.uint8))
    (root / "empty").mkdir()
    saved = root / "faces.bench"
    assert main(["summarise", str(lfw / "faces"), "--save", str(saved), "--methods", "fd", *FAST[:3]]) == 0
    other = root / "tiny.bench"
    assert main(["summarise", str(lfw / "faces"), "--save", str(other), "--methods", "fd", "--extractor",
                 "tiny-vit", "--no-progress", "--limit", "4"]) == 0
    junk = root / "junk.bench"
    junk.write_bytes(b"not a zip")
    return {"faces": lfw / "faces", "nonfaces": lfw / "nonfaces", "one": one, "empty": root / "empty",
            "saved": saved, "other": other, "junk": junk}


@pytest.mark.parametrize("args, message", [
    (["{faces}", "{faces}"], "A and B are the same dataset"),
    (["{faces}", "{empty}"], "no images found"),
    (["{faces}", "{one}"], "has 1 image"),
    (["{other}", "{nonfaces}", "--extractor", "pixels"],
     "was made with extractor 'tiny-vit', this comparison uses 'pixels'"),
    (["{saved}", "{nonfaces}", "--extractor", "pixels", "--methods", "dna"], "holds no summary for method 'dna'"),
    (["{saved}", "{nonfaces}", "--extractor", "pixels", "--methods", "fd", "--set", "fd.layer=tokens"],
     "fd.params.layer: saved 'pooled', now 'tokens'"),
    (["{junk}", "{nonfaces}"], "not a readable bench summary"),
    (["{faces}", "{saved}"], "put the saved summary first"),
    (["{faces}", "{nonfaces}", "--methods", "kmeans"], "only summarises one dataset"),
    (["{faces}", "{nonfaces}", "--methods", "fdd"], "Did you mean 'fd'"),
    (["{faces}", "{nonfaces}", "--methods", "protosim", "--limit", "3"], "each side needs at least 4 images"),
    (["{faces}", "{nonfaces}", "--permutations", "0"], "--permutations must be from 1"),
    (["{faces}", "{nonfaces}", "--blocks", "1000"], "--blocks 1000 is more than"),
    (["{faces}", "{nonfaces}", "--blocks", "1"], "--blocks must be an integer >= 2"),
    (["{saved}", "{nonfaces}", "--extractor", "pixels", "--blocks", "4"], "whose blocks were fixed"),
    (["{faces}", "/no/such/dir"], "no such folder or dataset"),
])
def test_bad_input_is_one_line_and_writes_nothing(bad_inputs, args, message, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["compare", *[a.format(**{k: str(v) for k, v in bad_inputs.items()}) for a in args], "--out", str(out)]
    extra = ["--no-progress"] if "--extractor" in args else ["--extractor", "pixels", "--no-progress"]
    assert main(argv + extra) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1
    assert not out.exists()


def test_summary_file_never_unpickles(tmp_path):
    """A .bench holding a pickled object array is refused without running it."""
    marker = tmp_path / "ran"

    class Boom:
        def __reduce__(self):
            return (Path.touch, (marker,))

    meta = np.frombuffer(json.dumps({"format": "bench-summary", "format_version": 1}).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, __meta__=meta, **{"fd/mu": np.array([Boom()], dtype=object)})
    (tmp_path / "evil.bench").write_bytes(buf.getvalue())
    with pytest.raises(Exception, match="not a readable bench summary"):
        summaryfile.load(tmp_path / "evil.bench")
    assert not marker.exists()


def test_wavelet_finds_images_of_a_leaked_into_b(tmp_path):
    """20 of A's images planted into B three ways (exact, JPEG quality 50, 2-px shift) among 100
    other real-photo tiles: the cross-set pairs are found with precision and recall >= 0.9."""
    from bench.datasets.neardup import original_tiles, perturb

    tiles, _ = original_tiles(200, seed=0)
    a, b_own = tiles[:100], tiles[100:]
    leaked = np.random.default_rng(3).choice(100, 20, replace=False)
    kinds = ("exact", "jpeg50", "shift2")
    copies = [perturb(a[i], kind) for kind in kinds for i in leaked]
    truth = {(int(i), 100 + k * 20 + j): kind for k, kind in enumerate(kinds) for j, i in enumerate(leaked)}
    _write(tmp_path / "A", a)
    _write(tmp_path / "B", np.concatenate([b_own, np.stack(copies)]))
    assert main(["compare", str(tmp_path / "A"), str(tmp_path / "B"), "--methods", "wavelet", "--permutations", "9",
                 "--no-atlas", "--out", str(tmp_path / "r"), *FAST]) == 0
    store = RunStore(tmp_path / "r")
    (path,) = store.record_files()
    rec = store.read(path)
    findings = store.load_artefacts(path)[0]["findings"]
    (across,) = [f for f in findings if f["title"].startswith("near-duplicates across")]
    found = {(r["a"], r["b"]) for r in across["rows"]}
    hits = {kind: sum(p in found for p, k in truth.items() if k == kind) for kind in kinds}
    precision, recall = len(found & truth.keys()) / len(found), sum(hits.values()) / len(truth)
    assert precision >= 0.9 and recall >= 0.9, (precision, recall, hits)
    assert hits["exact"] == 20
    # the three copies of one image in B are near-duplicates of each other, too
    assert rec.statistics["n_duplicate_pairs_within_b"] >= 50


def test_sides_with_different_image_sizes(tmp_path):
    """Two embedded datasets whose images differ in size (digits vs synth-passnet): each image is
    resized once by the extractor, as either side alone would be, instead of a failed stack."""
    from bench.datasets import concat, load_source

    regs = plugins.load()
    a, b = (load_source(regs.datasets.get(n), 20) for n in ("digits", "synth-passnet"))
    assert a.image(0).shape != b.image(0).shape
    union = concat(a, b)
    assert union.array is None and union.native(0).shape == a.image(0).shape
    assert main(["compare", "digits", "synth-passnet", "--methods", "fd", "--limit", "20", "--permutations", "9",
                 "--out", str(tmp_path / "r"), *FAST]) == 0
    assert _records(tmp_path / "r")["fd"].metrics["n_b"].value == 20


# --------------------------------------------------------------------------- one pass, any number of draws


def test_every_image_goes_through_the_network_once_whatever_the_draws(lfw, tmp_path, monkeypatch):
    """Forward passes of fd + dna through a real network (tiny-vit) do not grow with the number of
    permutations and resamples: each image of A ∪ B is extracted once for the pooled features and
    streamed once for DNA's layers (its range pass on A is served from memory)."""
    from bench.extractors.timm_models import TimmExtractor

    seen: list[int] = []
    forward = TimmExtractor.forward

    def counting(self, batch, layers=("pooled",)):
        seen.append(int(batch.shape[0]))
        return forward(self, batch, layers)

    monkeypatch.setattr(TimmExtractor, "forward", counting)
    counts = {}
    for draws in (3, 60):
        seen.clear()
        assert main(["compare", str(lfw / "faces-half1"), str(lfw / "faces-half2"), "--methods", "fd,dna",
                     "--extractor", "tiny-vit", "--no-progress", "--no-cache", "--permutations", str(draws),
                     "--bootstrap", str(draws), "--workers", "0", "--out", str(tmp_path / str(draws))]) == 0
        counts[draws] = sum(seen)
    assert counts[3] == counts[60]
    assert counts[60] <= 2 * 100 + 50   # pooled features of A ∪ B, DNA's layers of A ∪ B, A's range pass


def test_a_summary_written_before_block_states_still_compares_and_says_how_to_get_a_null(lfw, tmp_path, capsys):
    saved = tmp_path / "new.bench"
    assert main(["summarise", str(lfw / "faces-half1"), "--save", str(saved), "--methods", "fd", *FAST[:3]]) == 0
    with np.load(saved, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if not k.startswith("fd/state.")}
    meta = json.loads(bytes(arrays["__meta__"]).decode())
    meta["format_version"] = 1
    meta["values"]["fd"] = {k: v for k, v in meta["values"]["fd"].items() if not k.startswith("state.")}
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    old = tmp_path / "old.bench"
    np.savez(old, **arrays)
    old.with_suffix(".bench.npz").rename(old) if not old.exists() else None
    capsys.readouterr()
    assert main(["compare", str(old), str(lfw / "nonfaces"), "--methods", "fd", "--out", str(tmp_path / "o"),
                 *FAST]) == 0
    err = capsys.readouterr().err
    assert "carries no block states" in err and "bench summarise" in err
    rec = _records(tmp_path / "o")["fd"]
    assert "p_value" not in rec.metrics and rec.tables["ci"][0]["resampled"].startswith("B only")
