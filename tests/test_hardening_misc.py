"""Hardening round 3 (issue 30), the harness's edges: run store paths and writes, plugins,
leaderboard, report, the CLI's console, DNA ranges files, ProtoSim's resources.

Each test is named after its problem id and fails on the code before the fix."""

from __future__ import annotations

import errno
import json
import os
import resource
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from bench import records as R
from bench.errors import BenchError
from bench.runstore import RunStore, record_path, safe_name, save_npz_atomic, write_atomic


def _record(**over) -> R.Record:
    fields = {"method": R.MethodInfo(name="m", version="1"), "dataset": R.DatasetInfo(name="ds", revision="r", n=3),
              "features": R.FeatureInfo(extractor="pixels"), "seed": 0, "config_hash": "abc"}
    return R.Record(**{**fields, **over})


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


# --------------------------------------------------------------------------- C1: paths stay inside


UP = "/".join([".."] * 9)


@pytest.mark.parametrize("hostile", [
    {"dataset": R.DatasetInfo(name="A", revision="x/../../../../ESCAPED", n=3)},
    {"dataset": R.DatasetInfo(name=f"{UP}/E", revision=f"{UP}/E", n=3)},
    {"dataset_b": R.DatasetInfo(name="B", revision=f"{UP}/ESCAPED", n=3), "kind": "comparison"},
    {"method": R.MethodInfo(name="m", version=f"{UP}/ESCAPED")},
    {"config_hash": f"{UP}/ESCAPED"},
    {"features": R.FeatureInfo(extractor="..", weights="x/../../", precision=f"{UP}/y")},
])
def test_c1_record_path_stays_inside_root(tmp_path, hostile):
    root = tmp_path.joinpath(*["d"] * 24, "out")   # deep: even the unfixed code escapes only into tmp_path
    store = RunStore(root)
    rec = _record(**hostile)
    path = store.save(rec)
    store.save_artefacts(path, {"a": np.zeros(3), "note": "x"})
    written = _files(tmp_path)
    assert written and all(p.is_relative_to(root) for p in written), written
    assert all(p.resolve().is_relative_to(root.resolve()) for p in written)
    assert store.load().records[0].dataset.revision == rec.dataset.revision   # still read back
    assert store.finished(rec) is not None   # resume finds it at the same sanitised path


def test_c1_safe_name_keeps_ordinary_names_and_neutralises_the_rest():
    assert safe_name("imagefolder:/a/b") == "imagefolder__a_b"   # unchanged mapping: old runs still resume
    assert safe_name("synth-passnet") == "synth-passnet" and safe_name("0123abcd") == "0123abcd"
    for bad in ("..", ".", "", "a/../..", "x\x00y"):
        out = safe_name(bad)
        assert out not in ("", ".", "..") and "/" not in out and "\x00" not in out
    long = safe_name("n" * 1000)
    assert len(long.encode()) <= 255 and long != safe_name("n" * 999)


def test_c1_record_path_outside_root_is_refused(tmp_path, monkeypatch):
    from bench import runstore

    monkeypatch.setattr(runstore, "safe_name", str)   # as before the fix
    with pytest.raises(BenchError, match="outside"):
        record_path(tmp_path / "out", _record(dataset=R.DatasetInfo(name="A", revision="x/../../../E", n=3)))


# --------------------------------------------------------------------------- M11 / L10: a full disk


@pytest.fixture
def file_size_limit():
    """The process may write files of at most 64 kB (``ulimit -f``; Python ignores SIGXFSZ)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def test_m11_full_disk_during_save_npz_is_one_line_and_leaves_no_temp(tmp_path, file_size_limit):
    arrays = {"x": np.random.default_rng(0).random(200_000)}   # ~1.6 MB, incompressible
    with pytest.raises(BenchError, match=r"^disk full or file too large: cannot write .*k6\.bench"):
        save_npz_atomic(tmp_path / "k6.bench", arrays)
    assert os.listdir(tmp_path) == []


def test_m11_full_disk_during_record_write_is_one_line_and_leaves_no_temp(tmp_path, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    store = RunStore(tmp_path / "out")
    with pytest.raises(BenchError, match=r"^disk full or file too large: .*seed0\.json"):
        store.save(_record())
    assert [p.name for p in _files(tmp_path)] == []


def test_l10_failed_report_and_save_writes_leave_no_temp_file(tmp_path, file_size_limit):
    with pytest.raises(BenchError, match="disk full or file too large"):
        write_atomic(tmp_path / "report.html", "x" * 200_000)
    with pytest.raises(BenchError, match="disk full or file too large"):
        save_npz_atomic(tmp_path / "x.npz", {"a": np.random.default_rng(1).random(100_000)})
    assert os.listdir(tmp_path) == []
    # any other failure (here: interrupted) also removes the temp file, and re-raises as it was
    with pytest.raises(KeyboardInterrupt):
        save_npz_atomic(tmp_path / "y.npz", {"a": _Interrupting()})
    assert os.listdir(tmp_path) == []


class _Interrupting:
    """An array-like whose conversion is interrupted mid-write (Ctrl-C while saving)."""

    def __array__(self, *args, **kwargs):
        raise KeyboardInterrupt


# --------------------------------------------------------------------------- M4 / M5: plugins


def _entry_point(name: str, module: str, dist: str = "p-same-ep-dna"):
    import importlib.metadata as md

    return md.EntryPoint(name=name, value=module, group="bench")._for(types.SimpleNamespace(name=dist, version="0.1"))


def _plugin_module(tmp_path, monkeypatch, name: str, source: str) -> str:
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    return name


SHADOW = '''
import bench
from bench.api import Summariser


class Evil(Summariser):
    name, version = "evil-dna", "1"


@bench.hookimpl
def bench_register_summarisers(registry):
    registry.add("evil-dna", Evil)
'''


def test_m4_entry_point_cannot_shadow_first_party(tmp_path, monkeypatch, caplog, capsys):
    import importlib.metadata as md

    from bench import cli, plugins

    evil = _entry_point("dna", _plugin_module(tmp_path, monkeypatch, "p_same_ep_dna", SHADOW))
    first_party = list(md.entry_points(group="bench"))
    assert any(ep.name == "dna" and ep.dist.name == "bench" for ep in first_party)
    monkeypatch.setattr(plugins.md, "entry_points", lambda group: [evil, *first_party])   # on PYTHONPATH first
    regs = plugins.load()
    assert "dna" in regs.comparators and regs.comparators.get("dna").__module__.startswith("bench_dna")
    assert "evil-dna" not in regs.summarisers
    [shadow] = [p for p in regs.plugins if p.distribution == "p-same-ep-dna"]
    assert shadow.status == "error" and "already taken by bench" in shadow.error
    assert "p_same_ep_dna" in caplog.text and "already taken" in caplog.text
    assert cli.main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "p-same-ep-dna" in out and "already taken" in out
    with pytest.raises(BenchError, match="already taken"):
        plugins.load(strict=True)


@pytest.mark.parametrize("body, shown", [("import sys\nsys.exit(7)\n", "SystemExit"),
                                         ("raise SystemExit('bye')\n", "SystemExit"),
                                         ("raise KeyboardInterrupt\n", "KeyboardInterrupt")])
def test_m5_exit_or_interrupt_at_plugin_import_is_reported(tmp_path, monkeypatch, capsys, body, shown):
    from bench import cli, plugins

    ep = _entry_point("quitter", _plugin_module(tmp_path, monkeypatch, "bench_test_quitter", body), "quitter-dist")
    monkeypatch.setattr(plugins.md, "entry_points", lambda group: [ep])
    regs = plugins.load()
    [info] = [p for p in regs.plugins if p.name == "quitter"]
    assert info.status == "error" and shown in info.error and "kmeans" in regs.summarisers
    with pytest.raises(BenchError, match=f"failed to load: {shown}"):
        plugins.load(strict=True)
    assert cli.main(["list"]) == 0 and "kmeans" in capsys.readouterr().out


def test_m5_a_real_ctrl_c_during_a_plugin_import_still_stops_bench(tmp_path, monkeypatch):
    import signal
    import threading

    from bench import plugins

    body = "import os, signal, time\nos.kill(os.getpid(), signal.SIGINT)\ntime.sleep(5)\n"
    ep = _entry_point("slow", _plugin_module(tmp_path, monkeypatch, "bench_test_slow_import", body), "slow-dist")
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("needs Python's own SIGINT handler in the main thread (as the bench command has)")
    with pytest.raises(KeyboardInterrupt):
        plugins.load(entry_points=[ep])
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


# --------------------------------------------------------------------------- M7: DNA ranges files


def _ranges_file(tmp_path, content) -> str:
    path = tmp_path / "ranges.json"
    path.write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())
    return str(path)


GOOD_RANGES = {"mins_per_neuron": {"pooled": [0.0, -1.0]}, "maxs_per_neuron": {"pooled": [1.0, 2.0]}}


@pytest.mark.parametrize("content, says", [
    (b"\xff\xfe\x00garbage", "not UTF-8"),
    ({"mins_per_neuron": {"pooled": ["a", "b"]}, "maxs_per_neuron": {"pooled": [1, 2]}}, "holds a string 'a'"),
    ({"mins_per_neuron": {"pooled": {"x": 0.0}}, "maxs_per_neuron": {"pooled": {"x": 1.0}}}, "non-integer neuron"),
    ({"mins_per_neuron": {"pooled": {"0": 0.0, "2": 1}}, "maxs_per_neuron": {"pooled": {"0": 1, "1": 2}}}, "gaps"),
    ({"bench": "x"}, "'bench' must be"),
    ([1, 2, 3], "expected a JSON object"),
    ({"mins_per_neuron": [0.0], "maxs_per_neuron": [1.0]}, "must be an object of layer"),
    ({"mins_per_neuron": {"pooled": [[0.0, 1.0]]}, "maxs_per_neuron": {"pooled": [[1.0, 2.0]]}}, "holds a list"),
    ({"mins_per_neuron": {"pooled": 0.5}, "maxs_per_neuron": {"pooled": 1.5}}, "must be a non-empty list"),
    ({"mins_per_neuron": {"pooled": [0.0]}, "maxs_per_neuron": {"pooled": [1.0, 2.0]}}, "1 minima but 2 maxima"),
    ({"mins_per_neuron": {"pooled": [0.0]}, "maxs_per_neuron": {"other": [1.0]}}, "cover layers"),
    ({"mins_per_neuron": {"pooled": [-1e308]}, "maxs_per_neuron": {"pooled": [1e308]}}, "too large to bin"),
    ({"mins_per_neuron": {"pooled": [1e308]}, "maxs_per_neuron": {"pooled": [1e308]}}, "too large to bin"),
    (b'{"mins_per_neuron": {"pooled": [NaN]}, "maxs_per_neuron": {"pooled": [1]}}', "NaN or infinite"),
    (b'{"mins_per_neuron": {"pooled": [0]}, "maxs_per_neuron": {"pooled": [Infinity]}}', "NaN or infinite"),
    ({"mins_per_neuron": {"pooled": [5.0, 0.0]}, "maxs_per_neuron": {"pooled": [1.0, 1.0]}}, "1 neurons whose min"),
    ({"mins_per_neuron": {"pooled": [0]}, "maxs_per_neuron": {"pooled": [10 ** 400]}}, "too large for a float"),
    ({**GOOD_RANGES, "range_scale": "big"}, "range_scale"),
])
def test_m7_malformed_ranges_file_is_one_line(tmp_path, content, says):
    from bench_dna.histogram import Ranges

    from bench.errors import DataError

    path = _ranges_file(tmp_path, content)
    with pytest.raises(DataError) as err:
        Ranges.load(path)
    msg = str(err.value)
    assert says in msg and "\n" not in msg and msg.startswith("dna: ")


def test_m7_ranges_folder_and_good_files(tmp_path):
    from bench_dna.histogram import Ranges

    from bench.errors import DataError

    with pytest.raises(DataError, match="is a folder"):
        Ranges.load(str(tmp_path))
    ours = Ranges.load(_ranges_file(tmp_path, GOOD_RANGES))
    assert ours.mins["pooled"].tolist() == [0.0, -1.0] and ours.mode == "zero"
    vdna = {"mins_per_neuron": {"l": {"1": 0.5, "0": -1}}, "maxs_per_neuron": {"l": {"0": 1, "1": 0.5}}}
    assert Ranges.load(_ranges_file(tmp_path, vdna)).mins["l"].tolist() == [-1.0, 0.5]   # min == max is fine
    saved = {"bench": {"ranges": ours.to_json()}}
    assert Ranges.load(_ranges_file(tmp_path, saved)).digest() == ours.digest()


# --------------------------------------------------------------------------- H3 / M12: ProtoSim folders


def _protosim_view(n: int = 24):
    """A tiny two-group view through a seeded 2-block ViT (patch 8 on 16-px images): seconds to train."""
    import timm
    import torch
    import torch.nn.functional as F

    from bench.api import DataView
    from bench.extractors.base import Extractor
    from bench.features import FeatureStore
    from bench.testing import make_tiny_source

    class TinyViT(Extractor):
        name, has_tokens = "test-tiny-vit", True

        def __init__(self):
            super().__init__(weights=None, device="cpu")
            with torch.random.fork_rng():
                torch.manual_seed(0)
                self.model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=16, patch_size=8,
                                               embed_dim=24, depth=1, num_heads=2, num_classes=0,
                                               dynamic_img_size=True).eval()
            self.data_config = {"input_size": (3, 16, 16), "mean": (0.5,) * 3, "std": (0.5,) * 3}

        def preprocess(self, images):
            x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255
            return (F.interpolate(x, size=(16, 16), mode="bilinear") - 0.5) / 0.5

        @torch.no_grad()
        def tokens(self, batch):
            return self.model.forward_features(batch)

        def forward(self, batch, layers=("pooled",)):
            t = self.tokens(batch)
            return {layer: t[:, 0] if layer == "pooled" else t for layer in layers}

        def cache_key(self):
            return {"name": self.name}

    return DataView(make_tiny_source(n, size=16), TinyViT(), FeatureStore(None), batch_size=n)


PROTOSIM_TINY = dict(n_prototypes=16, epochs=1, hard_epoch=1, batch_size=8, lr=5e-4, out_dim=16, head_hidden_dim=16,
                     head_bottleneck_dim=8, global_crop_size=16, local_crop_size=8, n_local_crops=1,
                     n_figure_prototypes=0, amp=False)


@pytest.mark.usefixtures("one_thread")
def test_h3_one_checkpoint_dir_for_both_protosim_roles(tmp_path):
    from bench_protosim.method import ProtoSim, ProtoSimComparator

    view = _protosim_view()
    ckpt = tmp_path / "ckpt"   # as `--set protosim.checkpoint_dir=ckpt` gives it to both roles
    ProtoSim(**PROTOSIM_TINY, checkpoint_dir=str(ckpt)).fit(view, seed=0)
    comp = ProtoSimComparator(**PROTOSIM_TINY, checkpoint_dir=str(ckpt))
    half = len(view) // 2
    a, b = view.subset(np.arange(half)), view.subset(np.arange(half, len(view)))
    first = comp.compare(a, b, seed=0).score
    null = comp.compare(view.subset(np.arange(0, len(view), 2)), view.subset(np.arange(1, len(view), 2)), seed=0)
    assert np.isfinite(first) and np.isfinite(null.score)
    folders = sorted(p.name for p in ckpt.iterdir())
    assert len(folders) == 3 and sum(f.startswith("summariser-") for f in folders) == 1, folders
    assert all((ckpt / f / "checkpoint.safetensors").is_file() for f in folders)
    assert comp.compare(a, b, seed=0).score == first   # resumed from its own finished checkpoint


def test_m12_checkpoint_dir_that_is_a_file_is_refused_before_any_work(tmp_path):
    from bench import plugins
    from bench.factory import create_method, parse_setting, resolve_settings

    (tmp_path / "ckpt").write_text("not a folder")
    regs = plugins.load()
    for text in (f"protosim.checkpoint_dir={tmp_path / 'ckpt'}", f"protosim.figures_dir={tmp_path / 'ckpt' / 'x'}"):
        params = resolve_settings(regs, [parse_setting(text)], ["protosim"])["protosim"]
        with pytest.raises(BenchError, match=r"protosim: (checkpoint|figures)_dir .* is a file"):
            create_method(regs, "protosim", params=params)


# --------------------------------------------------------------------------- L2 / L4: the CLI's console


@pytest.mark.parametrize("value", ["bogus", "-1x", "WARNING!"])
def test_l2_bad_bench_log_is_one_line(monkeypatch, capsys, value):
    from bench import cli

    monkeypatch.setenv("BENCH_LOG", value)
    assert cli.main(["list"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: BENCH_LOG=") and "is not a log level" in err and err.count("\n") == 1


def test_l2_bench_log_accepts_any_case_and_numbers(monkeypatch):
    from bench import cli

    assert [cli._log_level(v) for v in ("debug", "Info", "WARNING", "20", " error ")] == [10, 20, 30, 20, 40]


def test_l4_emoji_shortcodes_are_printed_as_written(tmp_path, capsys):
    from bench import cli

    folder = tmp_path / ":x: :smile: root:x:0:0"
    assert cli.main(["leaderboard", str(folder)]) == 2
    err = capsys.readouterr().err
    assert ":x: :smile: root:x:0:0" in err and "❌" not in err and "😄" not in err
    cli.console.print(f"[bold]{cli.escape(':thumbs_up:')}[/]")
    assert capsys.readouterr().out.strip() == ":thumbs_up:"


# --------------------------------------------------------------------------- L3 / L5 / L22: the leaderboard


def _cell_record(seed: int, value, **over) -> R.Record:
    rec = _record(seed=seed, metrics={"nmi": R.Metric(value=value, higher_is_better=True)}, **over)
    rec.comparability_key = "k" * 16
    return rec


def test_l3_unreadable_records_do_not_wipe_an_existing_leaderboard(tmp_path, capsys):
    from bench import cli

    results, board = tmp_path / "res", tmp_path / "board"
    RunStore(results).save(_cell_record(0, 0.5))
    assert cli.main(["leaderboard", str(results), "-o", str(board)]) == 0
    before = {p.name: p.read_bytes() for p in board.iterdir()}
    assert "ds.md" in before
    for rec in results.rglob("seed*.json"):
        rec.write_text("{ not json")
    capsys.readouterr()
    assert cli.main(["leaderboard", str(results), "-o", str(board)]) == 2
    err = capsys.readouterr().err
    assert "none of the 1 records" in err and "nothing written" in err and err.count("\n") == 1
    assert {p.name: p.read_bytes() for p in board.iterdir()} == before


def test_l5_html_in_class_names_is_escaped_in_leaderboard_markdown(tmp_path):
    from bench import leaderboard

    evil = "<img src=x onerror=alert(1)>"
    rec = _cell_record(0, 0.5, dataset=R.DatasetInfo(name=f"ds{evil}", revision="r`<b>`", n=3),
                       tables={"classes": [{"class": evil, "n": 3}, {"class": "a|b\nc & d", "n": 1}]})
    rec.status, rec.error = "ok", None
    bad = _cell_record(1, None, status="error", error=f"class {evil} failed", dataset=rec.dataset)
    bad.method.name = "m2"
    files = leaderboard.build([rec, bad])
    [page] = [text for name, text in files.items() if name.endswith(".md") and name != "README.md"]
    assert "## Failed cells" in page and "## Method tables" in page
    for text in (page, files["README.md"]):
        assert "<img" not in text and "&lt;img src=x onerror=alert(1)&gt;" in text
    assert "a/b c &amp; d" in page   # one table row, no raw ampersand
    html_page = leaderboard.to_html(leaderboard.aggregate([rec, bad])[0])
    assert "<img" not in html_page and "&amp;lt;" not in html_page   # HTML escapes once, from the raw text


def test_l22_a_nan_metric_in_one_record_does_not_blank_the_row(tmp_path):
    from bench import leaderboard

    store = RunStore(tmp_path)
    for seed, value in ((0, 0.5), (1, 0.7)):
        store.save(_cell_record(seed, value))
    crafted = next(tmp_path.rglob("seed1.json"))
    crafted.write_text(crafted.read_text().replace('"value": 0.7', '"value": "NaN"'))
    store.save(_cell_record(2, 0.9))
    loaded = store.load()
    assert len(loaded.records) == 3 and any(np.isnan(r.metrics["nmi"].value) for r in loaded.records)
    [row] = leaderboard.aggregate(loaded.records)[0].rows
    value = row.metrics["nmi"]
    assert value.mean == pytest.approx(0.7) and value.n == 2 and value.skipped == 1
    assert "0.700 ± 0.283 (1 non-finite skipped)" in leaderboard.to_markdown(leaderboard.aggregate(loaded.records)[0])
    assert ",nmi,0.7,0.282843,2\n" in leaderboard.to_csv(leaderboard.aggregate(loaded.records))   # n: the values used
    missing = leaderboard._mean_std([0.5, None])   # a missing value still blanks: no silent partial mean
    assert missing.mean is None and missing.text() == ""


# --------------------------------------------------------------------------- L21: report figures


def test_l21_report_embeds_only_pngs_inside_the_run_dir(tmp_path):
    from bench_protosim.report import protosim_section
    from PIL import Image

    from bench.reporting import RunData

    root = tmp_path / "run"
    store = RunStore(root)
    path = store.save(_record(method=R.MethodInfo(name="protosim", version="1", roles=["summariser"])))
    Image.new("RGB", (4, 4), "red").save(path.parent / "inside.png")
    Image.new("RGB", (4, 4), "blue").save(tmp_path / "outside.png")
    (path.parent / "fake.png").write_text("not a png")
    (path.parent / "link.png").symlink_to(tmp_path / "outside.png")
    figures = ["/etc/passwd", str(tmp_path / "outside.png"), "../../../../../outside.png", "link.png", "fake.png",
               42, "inside.png", "gone.png"]
    store.save_artefacts(path, {"figures": figures, "top_images": {}})
    sec = protosim_section(RunData.load(root))
    assert sec.html.count("<img") == 1 and "inside: top images" in sec.html
    notes = " ".join(sec.notes)
    assert notes.count("lies outside the run directory") == 4   # /etc/passwd, outside.png twice, the symlink
    assert "fake.png is not a PNG file" in notes and "42 is not a file name" in notes and "gone.png is missing" in notes
    crafted = path.with_name("seed0.artefacts.json")
    crafted.write_text(json.dumps({"figures": "/etc/passwd"}))
    sec = protosim_section(RunData.load(root))
    assert "<img" not in sec.html and any("not a list of files" in n for n in sec.notes)


def test_m7_bad_ranges_file_is_refused_before_any_work(tmp_path):
    from bench import plugins
    from bench.errors import DataError
    from bench.factory import create_method, parse_setting, resolve_settings

    regs = plugins.load()
    bad = _ranges_file(tmp_path, {"mins_per_neuron": {"pooled": [5.0]}, "maxs_per_neuron": {"pooled": [1.0]}})
    params = resolve_settings(regs, [parse_setting(f"dna.ranges={bad}")], ["dna"])["dna"]
    assert set(params) == {"summariser", "comparator"}
    with pytest.raises(DataError, match="minimum is above their maximum"):
        create_method(regs, "dna", params=params)
    good = _ranges_file(tmp_path, GOOD_RANGES)
    assert set(create_method(regs, "dna", params={r: {"ranges": good} for r in params})) == set(params)
