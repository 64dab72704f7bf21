"""`bench report`: a real small run rendered and opened in headless Chromium (every section
present, every image decoded), hand-made run directories for the sections a fast run cannot
produce and for missing / broken artefacts, the hook for third-party sections, bad input."""

from __future__ import annotations

import contextlib
import fcntl
import html
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from bench_dna.report import _nfd

import bench
from bench import plugins
from bench import records as R
from bench.cli import main
from bench.datasets import get_spec
from bench.datasets import limit as limit_source
from bench.leaderboard import aggregate, to_html
from bench.metrics import variation_of_information
from bench.report import build_report
from bench.reporting import ReportSection, RunData
from bench.runstore import RunStore

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
CHECK_SCRIPT = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var secs = Array.prototype.slice.call(document.querySelectorAll('section.report-section'));
  var out = document.createElement('pre');
  out.id = 'bench-check';
  out.textContent = JSON.stringify({
    images: imgs.length,
    broken: imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); })
                .map(function (i) { return i.alt; }),
    sections: secs.map(function (s) { return s.id; }),
    notes: document.querySelectorAll('.note').length
  });
  document.body.appendChild(out);
});
</script>"""


# --------------------------------------------------------------------------- chromium


def _find_chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium; installed with apt-get where missing (one installer at a time)."""
    exe = _find_chromium()
    if exe is None and shutil.which("apt-get") and os.geteuid() == 0:
        with open("/tmp/bench-chromium-install.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if _find_chromium() is None:
                env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
                subprocess.run(["apt-get", "update"], check=True, capture_output=True, env=env, timeout=600)
                subprocess.run(["apt-get", "install", "-y", "chromium"], check=True, capture_output=True,
                               env=env, timeout=1200)
        exe = _find_chromium()
    assert exe, "headless Chromium is needed: apt-get install -y chromium (Debian's package)"
    return exe


def browser_check(chromium: str, report: Path, tmp_path: Path) -> dict:
    """Open ``report`` from disk in headless Chromium; return what the page's images and sections are."""
    page = tmp_path / "check.html"
    page.write_text(report.read_text(encoding="utf-8").replace("</body>", CHECK_SCRIPT + "</body>"),
                    encoding="utf-8")
    proc = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                           "--virtual-time-budget=10000", "--dump-dom", page.as_uri()],
                          capture_output=True, text=True, timeout=120, check=False)
    found = re.search(r'<pre id="bench-check">(.*?)</pre>', proc.stdout, re.S)
    assert found, f"no check output from chromium (rc {proc.returncode}): {proc.stderr[-2000:]}"
    return json.loads(html.unescape(found.group(1)))


class DevTools:
    """Headless Chromium driven over ``--remote-debugging-pipe`` (fd 3 in, fd 4 out, NUL-separated
    JSON): real mouse input, so CSS ``:hover`` applies, which a dispatched DOM event does not do."""

    def __init__(self, chromium: str, profile: Path):
        def high(fd: int) -> int:   # above 4, so that moving one end to 3 or 4 cannot overwrite the other
            moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
            os.close(fd)
            return moved

        self._in_r, self._in_w, self._out_r, self._out_w = (high(fd) for fd in (*os.pipe(), *os.pipe()))

        # a small Python trampoline puts the pipe ends at fds 3 and 4, where chromium expects them
        move = ("import os, sys; os.dup2(int(sys.argv[1]), 3); os.dup2(int(sys.argv[2]), 4); "
                "os.execv(sys.argv[3], sys.argv[3:])")
        self.proc = subprocess.Popen([sys.executable, "-c", move, str(self._in_r), str(self._out_w), chromium,
                                      *CHROMIUM_FLAGS, "--remote-debugging-pipe", f"--user-data-dir={profile}",
                                      "about:blank"], pass_fds=(self._in_r, self._out_w),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(self._in_r)
        os.close(self._out_w)
        self._buf, self._id, self.session = b"", 0, None
        page = next(t for t in self.send("Target.getTargets")["targetInfos"] if t["type"] == "page")
        self.session = self.send("Target.attachToTarget", targetId=page["targetId"], flatten=True)["sessionId"]
        self.send("Emulation.setDeviceMetricsOverride", width=1100, height=900, deviceScaleFactor=1, mobile=False)

    def send(self, method: str, **params) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params}
        if self.session:
            msg["sessionId"] = self.session
        os.write(self._in_w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            while b"\0" not in self._buf:
                chunk = os.read(self._out_r, 1 << 16)
                assert chunk, "chromium closed its debugging pipe"
                self._buf += chunk
            line, self._buf = self._buf.split(b"\0", 1)
            reply = json.loads(line)
            if reply.get("id") == self._id:
                assert "error" not in reply, reply["error"]
                return reply["result"]
        raise AssertionError(f"no reply from chromium to {method}")

    def eval(self, expression: str):
        return self.send("Runtime.evaluate", expression=expression, returnByValue=True,
                         awaitPromise=True)["result"].get("value")

    def open(self, url: str) -> None:
        self.send("Page.navigate", url=url)
        deadline = time.monotonic() + 60
        while self.eval("document.readyState") != "complete":
            assert time.monotonic() < deadline, f"{url} did not load"
            time.sleep(0.05)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.send("Browser.close")
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        os.close(self._in_w)
        os.close(self._out_r)


def _section_ids(text: str) -> list[str]:
    return re.findall(r'<section id="([^"]+)" class="report-section"', text)


def _section_html(text: str, key: str) -> str:
    found = re.search(rf'<section id="{key}" class="report-section".*?</section>', text, re.S)
    assert found, f"section {key} missing"
    return found.group(0)


def _assert_self_contained(text: str) -> None:
    assert not re.search(r'(src|href)="(?!data:image/(png|jpeg);base64,|#)', text), "a resource outside the page"
    assert "<script" not in text and "<link" not in text and "@import" not in text


# --------------------------------------------------------------------------- a real small run


@pytest.fixture(scope="module")
def regs():
    return plugins.load()


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, regs):
    out = tmp_path_factory.mktemp("report-run") / "results"
    common = ["--extractor", "pixels", "--out", str(out), "--no-progress"]
    methods = "kmeans,fd,multicut,wavelet,qrp,dna"
    assert main(["run", "--datasets", "digits", "--limit", "200", "--methods", methods, *common]) == 0
    return out


def test_small_run_renders_and_every_image_loads_in_chromium(small_run, regs, chromium, tmp_path, capsys):
    report = tmp_path / "report.html"
    assert main(["report", str(small_run), "-o", str(report)]) == 0
    assert "wrote" in capsys.readouterr().out
    text = report.read_text(encoding="utf-8")
    _assert_self_contained(text)
    expected = {"leaderboard", "datasets", "comparators", "multicut", "wavelet", "dna", "qrp"}
    assert expected <= set(_section_ids(text))
    assert "protosim" not in _section_ids(text)   # not in the run: no empty section
    # every method of the run is in the leaderboard table, and the fidelity plot names fd
    lb = _section_html(text, "leaderboard")
    for m in ("kmeans", "fd", "multicut", "wavelet", "qrp", "dna"):
        assert re.search(rf"<td>{m} \d+</td>", lb), m
    assert "digits (limit 200): comparator scores" in _section_html(text, "comparators")
    assert "expert breakdown" in _section_html(text, "qrp")
    # the runner saves every summariser's cluster ids, so the section draws real montages
    mc = _section_html(text, "multicut")
    assert "largest clusters" in mc and "cluster ids were not saved" not in mc

    seen = browser_check(chromium, report, tmp_path)
    assert expected <= set(seen["sections"])
    assert seen["images"] == text.count("<img ") >= 5 and seen["broken"] == []


# --------------------------------------------------------------------------- hand-made runs


def _digits(regs, n: int):
    return limit_source(get_spec(regs.datasets, "digits").load(seed=0), n, seed=0)


def _write(root: Path, method: str, src, extractor: str, *, roles=("summariser",), tables=None,
           artefacts=None,
           status="ok", error=None, revision=None, seed=0) -> Path:
    rec = R.Record(method=R.MethodInfo(name=method, version="1", roles=list(roles)),
                   dataset=R.DatasetInfo(name=src.name, revision=revision or src.revision, n=src.n,
                                         limit=src.n),
                   features=R.FeatureInfo(extractor=extractor), seed=seed, status=status, error=error,
                   tables=tables or {}, metrics={"nmi": R.Metric(value=0.5, higher_is_better=True)})
    rec.config_hash = R.config_hash(rec.method, "quick")
    rec.comparability_key = R.comparability_key(rec)
    store = RunStore(root)
    path = store.save(rec)
    if artefacts:
        store.save_artefacts(path, artefacts)   # the runner's own writer: same files as a real run
    return path


@pytest.fixture(scope="module")
def crafted(tmp_path_factory, regs):
    """Multicut codes through two extractors, wavelet groups, ProtoSim with and without its
    figures, DNAs of two datasets, QRP, plus a failed cell, missing and corrupt artefacts."""
    from PIL import Image

    root = tmp_path_factory.mktemp("crafted") / "run"
    src = _digits(regs, 60)
    other = _digits(regs, 40)
    labels = src.labels
    rng = np.random.default_rng(0)
    _write(root, "multicut", src, "pixels",
           artefacts={"codes": labels.copy(), "cluster_sizes": np.bincount(labels)})
    noisy = np.where(rng.random(len(labels)) < 0.3, rng.integers(0, 10, len(labels)), labels)
    _write(root, "multicut", src, "tiny-vit", artefacts={"codes": noisy, "cluster_sizes": np.bincount(noisy)})
    _write(root, "wavelet", src, "pixels", artefacts={"redundant_groups": [[0, 5, 9], [1, 2]],
                                                      "influential_groups": [[3, 4, 7, 8]]})
    fig = root / "figs" / "protosim-specific-a.png"   # inside the run directory, as the runner puts it
    fig.parent.mkdir(parents=True)
    Image.fromarray(rng.integers(0, 255, (30, 60, 3), dtype=np.uint8)).save(fig)
    _write(root, "protosim", src, "tiny-vit", tables={"protosim_groups": [
        {"group": "a", "prototypes_used": 10, "specific_prototypes": 3}], "protosim_planted": [
        {"group": "a", "rank": r, "prototype": p, "concept": "person", "top_images": 5, "with_concept": w}
        for r, (p, w) in enumerate([(4, 5), (9, 3)])]},
        artefacts={"figures": [str(fig)], "top_images": {"4": [1, 2, 3]}})
    _write(root, "protosim", src, "pixels", artefacts={
        "figures": [str(root / "gone.png")], "top_images": {"4": [1, 2, 3], "7": [5, 6]},
        "specific_prototypes": {"a": [4]}, "shared_prototypes": [7]})
    layers = [{"layer": "l1", "neurons": 2, "mean_entropy_bits": 3.0}, {"layer": "l2", "neurons": 3,
                                                                       "mean_entropy_bits": 4.0}]
    mu = np.arange(5, dtype=np.float64)
    _write(root, "dna", src, "pixels", tables={"dna_layers": layers},
           artefacts={"gaussian_mu": mu, "gaussian_var": np.ones(5)})
    _write(root, "dna", other, "pixels", tables={"dna_layers": layers},
           artefacts={"gaussian_mu": mu + np.array([0, 0, 0, 0, 3.0]), "gaussian_var": np.ones(5)})
    _write(root, "qrp", src, "pixels", tables={"qrp_expert_breakdown": [
        {"step": 1, "added": "gt/labels", "nmi": 0.5, "nmi_std": 0.1},
        {"step": 2, "added": "gt/x", "nmi": 0.6}]})
    _write(root, "qrp", other, "pixels")                                 # no table at all
    _write(root, "kmeans", other, "pixels", status="error", error="DataError: k=99 is larger than N")
    wav = _write(root, "wavelet", other, "pixels", artefacts={"redundant_groups": [[0, 1]]})
    (wav.parent / "seed0.artefacts.json").write_text("{not json")      # corrupt artefacts file
    shift = SimpleNamespace(name="shift-like", revision="feedfacefeedface", n=300)   # images unavailable
    for method, seed, scores in (("fd", 0, [0.1, 1, 4, 9]), ("fd", 1, [0.1, 1.2, 3.8, 9.2]),
                                 ("similarity", 0, [1.0, 0.8, 0.3, 0.1]), ("flat", 0, [2.0, 2.0, 2.0, 2.0])):
        _write(root, method, shift, "pixels", roles=("comparator",), seed=seed, tables={"fidelity_ladder": [
            {"proportion": p, "score": s} for p, s in zip([0.0, 0.3, 0.6, 1.0], scores)]})
    _write(root, "multicut", src, "stale", revision="0123456789abcdef",  # images of another dataset version
           artefacts={"codes": labels.copy()})
    return root


def test_crafted_run_draws_every_section_and_says_what_is_missing(crafted, regs, chromium, tmp_path):
    report = build_report(crafted, tmp_path / "r.html", regs=regs)
    text = report.read_text(encoding="utf-8")
    _assert_self_contained(text)
    assert {"leaderboard", "datasets", "fidelity", "protosim", "multicut", "wavelet", "dna", "qrp"} <= set(
        _section_ids(text))

    mc = _section_html(text, "multicut")
    assert "variation of information between extractors" in mc and mc.count("largest clusters") >= 2
    assert "revision 0123456789abcdef" in mc and "not drawing images of another dataset version" in mc
    ps = _section_html(text, "protosim")
    assert "protosim-specific-a: top images" in ps                       # the plugin's own figure
    assert "8/10 top images of its 2 most specific prototypes show it" in ps    # the planted concept
    assert "gone.png is missing" in ps and "top images per prototype" in ps   # fallback montage
    wv = _section_html(text, "wavelet")
    assert "largest redundant groups" in wv and "largest influential groups" in wv
    assert "unreadable seed0.artefacts.json" in wv
    assert "redundant groups were not saved" in wv
    dna = _section_html(text, "dna")
    assert "pixels: digits vs digits" in dna and "per-layer descriptors" in dna
    qrp = _section_html(text, "qrp")
    assert "expert breakdown" in qrp and "has no qrp_expert_breakdown table" in qrp
    assert "k=99 is larger than N" in _section_html(text, "leaderboard")
    fid = _section_html(text, "fidelity")                  # every comparator of the ladder in one plot
    assert fid.count("<img ") == 1
    assert all(f"<th>{m} / pixels</th>" in fid for m in ("fd", "similarity", "flat"))
    assert "<td>9.1</td>" in fid and "<td>1.1</td>" in fid  # fd: two seeds averaged
    assert "shift-like" in _section_html(text, "datasets") and "could not be loaded" in text

    seen = browser_check(chromium, report, tmp_path)
    assert seen["broken"] == [] and seen["images"] >= 12 and seen["notes"] >= 5


def test_third_party_sections_and_a_broken_one_do_not_end_the_report(crafted, tmp_path):
    regs = plugins.load()

    class Mine:
        @bench.hookimpl
        def bench_report_sections(self, run):
            n = len(run.records)
            return ReportSection("My plugin", html=f"<p>{n} records seen</p>",
                                 figures=[np.full((8, 8, 3), 200, np.uint8)],
                                 notes=["my artefact is missing"])

    class Broken:
        @bench.hookimpl
        def bench_report_sections(self, run):
            raise RuntimeError("boom")

    regs.manager.register(Mine(), name="mine")
    regs.manager.register(Broken(), name="broken")
    text = build_report(crafted, tmp_path / "r.html", regs=regs).read_text(encoding="utf-8")
    ids = _section_ids(text)
    assert ids[0] == "leaderboard" and "my-plugin" in ids          # built-ins first, then plugins
    mine = _section_html(text, "my-plugin")
    assert "records seen" in mine and "my artefact is missing" in mine and "data:image/png;base64," in mine
    assert "bench_report_sections raised RuntimeError: boom" in text


def test_bad_input_is_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "no run directory" in err and "Traceback" not in err
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "no run records" in capsys.readouterr().err
    bad = tmp_path / "bad" / "x" / "seed0.json"
    bad.parent.mkdir(parents=True)
    bad.write_text("{}")
    assert main(["report", str(tmp_path / "bad")]) == 2
    assert "none of the 1 records" in capsys.readouterr().err


def test_partly_unreadable_records_are_reported(crafted, regs, tmp_path):
    broken = tmp_path / "run"
    shutil.copytree(crafted, broken)
    (broken / "junk@1" / "x").mkdir(parents=True)
    (broken / "junk@1" / "x" / "seed3.json").write_text("{\"status\": ")
    run = RunData.load(broken, datasets=regs.datasets)
    assert len(run.records) == len(RunStore(crafted).load().records) and len(run.problems) == 1
    text = build_report(broken, regs=regs).read_text(encoding="utf-8")   # default: RUN_DIR/report.html
    assert "unreadable record junk@1/x/seed3.json" in _section_html(text, "leaderboard")


# --------------------------------------------------------------------------- the numbers drawn


def test_variation_of_information_against_closed_forms():
    a = np.repeat([0, 1], 50)
    assert variation_of_information(a, a) == pytest.approx(0.0)
    assert variation_of_information(a, 1 - a) == pytest.approx(0.0)      # VI ignores the names
    b = np.tile([0, 1], 50)                                              # independent halves
    assert variation_of_information(a, b) == pytest.approx(2 * np.log(2))
    ones = np.zeros(100, dtype=int)                                      # one cluster vs two
    assert variation_of_information(ones, a) == pytest.approx(np.log(2))


def test_nfd_is_the_frechet_distance_of_1d_gaussians():
    rng = np.random.default_rng(1)
    mu_a, mu_b = rng.normal(size=6), rng.normal(size=6)
    sd_a, sd_b = rng.uniform(0.1, 2, 6), rng.uniform(0.1, 2, 6)
    got = _nfd(mu_a, sd_a ** 2, mu_b, sd_b ** 2)
    assert np.allclose(got, (mu_a - mu_b) ** 2 + (sd_a - sd_b) ** 2)


def test_leaderboard_html_escapes_and_folds():
    rec = R.Record(method=R.MethodInfo(name="m<x>", version="1"), dataset=R.DatasetInfo(name="ds", revision="r", n=3),
                   features=R.FeatureInfo(extractor="e"), seed=0, metrics={"nmi": R.Metric(value=0.5)},
                   statistics={"k": 2.0}, tables={"t": [{"a": 1, "b": "<y>"}]})
    bad = rec.model_copy(update={"seed": 1, "status": "error", "error": "boom `x`"})
    out = to_html(aggregate([rec, bad])[0])
    assert "<h3>ds</h3>" in out and "<td>m&lt;x&gt; 1</td>" in out and "<th>nmi ↑</th>" in out
    assert "<td>&lt;y&gt;</td>" in out and "|---|" not in out
    assert out.count("<details>") == 3 and "<li>`m&lt;x&gt;` / `e` seed 1: boom `x`</li>" in out


def test_compare_report_renders_what_differs_in_chromium(chromium, tmp_path):
    """``bench compare`` on two folders of real photo tiles, B holding copies of A's: the report
    shows the comparison with each method's findings, and every image loads in the browser."""
    from PIL import Image

    from bench.datasets.neardup import original_tiles, perturb

    tiles, _ = original_tiles(60, tile=64, seed=0)
    sides = {"A": tiles[:30], "B": np.concatenate([tiles[30:], [perturb(t, "jpeg50") for t in tiles[:5]]])}
    for name, images in sides.items():
        (tmp_path / name).mkdir()
        for i, im in enumerate(images):
            Image.fromarray(im).save(tmp_path / name / f"{i:03d}.png")
    out = tmp_path / "cmp"
    assert main(["compare", str(tmp_path / "A"), str(tmp_path / "B"), "--methods", "fd,wavelet,multicut",
                 "--extractor", "pixels", "--permutations", "9", "--bootstrap", "5", "--no-progress",
                 "--no-cache", "--out", str(out)]) == 0
    text = (out / "report.html").read_text(encoding="utf-8")
    _assert_self_contained(text)
    comparison = _section_html(text, "comparison")
    for shown in ("mean shift vs covariance change", "near-duplicates across A and B", "clusters only"):
        assert shown in comparison, shown
    seen = browser_check(chromium, out / "report.html", tmp_path)
    assert "comparison" in seen["sections"] and "leaderboard" not in seen["sections"]
    assert seen["images"] == text.count("<img ") >= 4 and seen["broken"] == []


def test_compare_report_shows_the_atlas_regions_and_map_in_chromium(tmp_path, chromium, regs):
    """bench compare's page draws the atlas: its regions table and the interactive map (inline SVG, no
    script): every point, the significant regions outlined and labelled, the cross-set duplicates
    linked, and a real mouse hover in Chromium shows the point's thumbnail; without A's images the map
    is still drawn, without A's thumbnails, and one note says why."""
    from PIL import Image

    src = _digits(regs, 700)
    a_rows = np.arange(300)
    b_rows = np.arange(300, 600)
    b_rows = b_rows[src.labels[b_rows] != 3]
    for name, rows in (("a", a_rows), ("b", np.r_[b_rows, a_rows[:3]])):   # B: no 3s, and 3 copies of A's
        (tmp_path / name).mkdir()
        for k, i in enumerate(rows):
            Image.fromarray(np.asarray(src.image(int(i)), np.uint8)).save(tmp_path / name / f"{k:03d}.png")
    n = len(a_rows) + len(b_rows) + 3
    out = tmp_path / "out"
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--methods", "atlas", "--extractor", "pixels",
                 "--no-cache", "--no-progress", "--permutations", "49", "--bootstrap", "0", "--workers", "0",
                 "--out", str(out)]) == 0
    report = out / "report.html"
    text = report.read_text(encoding="utf-8")
    _assert_self_contained(text)
    assert "regions of A ∪ B that one side fills more" in text and "map of A ∪ B" in text
    assert re.search(r"<td>PCA</td>|<td>UMAP</td>", text) and re.search(r"(PCA|UMAP) of all \d+ images", text)
    svg = re.search(r'<figure class="pointmap">.*?</figure>', text, re.S).group(0)
    assert svg.count('<g class="pt ') == n and svg.count("<image ") == n       # every point, each with a thumbnail
    assert len(svg.encode()) <= 2500 * n                                        # the size budget: ≤ 2.5 kB a point
    assert svg.count('<polygon class="ol"') >= 1 and re.search(r'<text class="olt"[^>]*>region \d+, more in A', svg)
    assert svg.count('class="ln"') >= 1 + 3 and "near-duplicate of A #" in svg   # legend line + the 3 copies
    seen = browser_check(chromium, report, tmp_path)
    assert seen["broken"] == [] and seen["images"] == text.count("<img ") >= 2

    browser = DevTools(chromium, tmp_path / "devtools")
    try:
        browser.open(report.as_uri())
        areas = browser.eval("Array.from(document.querySelectorAll('svg.pmap polygon.ol'))"
                             ".map(function (p) { var b = p.getBBox(); return b.width * b.height; })")
        assert areas and min(areas) > 0                                         # the outlines are drawn
        at = browser.eval("""(function () {
            var pt = Array.from(document.querySelectorAll('svg.pmap g.pt')).filter(function (g) {
                return g.querySelector('title').textContent.indexOf('near-duplicate') >= 0; })[0];
            pt.scrollIntoView({block: 'center'});
            var b = pt.querySelector('circle').getBoundingClientRect();
            return [b.x + b.width / 2, b.y + b.height / 2,
                    getComputedStyle(pt.querySelector('.tip')).display]; })()""")
        assert at[2] == "none"                                                  # no panel before the hover
        browser.send("Input.dispatchMouseEvent", type="mouseMoved", x=at[0], y=at[1])
        hovered = browser.eval("""(async function (x, y) {
            var pt = document.elementFromPoint(x, y).closest('g.pt'), tip = pt.querySelector('.tip');
            var image = tip.querySelector('image'), box = image.getBBox(), img = new Image();
            img.src = image.getAttribute('href');
            await img.decode();
            var shown = Array.from(document.querySelectorAll('svg.pmap .tip')).filter(function (t) {
                return getComputedStyle(t).display !== 'none'; }).length;
            return {display: getComputedStyle(tip).display, shown: shown, width: box.width,
                    thumb: img.naturalWidth, text: tip.textContent}; })""" + f"({at[0]}, {at[1]})")
    finally:
        browser.close()
    assert hovered["display"] == "inline" and hovered["shown"] == 1             # only the hovered point's panel
    assert hovered["width"] > 0 and hovered["thumb"] == 48                      # its thumbnail, decoded
    assert re.match(r"[AB] #\d+region \d+", hovered["text"]) and "near-duplicate of" in hovered["text"]

    (tmp_path / "a").rename(tmp_path / "a-moved")                               # A's images gone: no thumbnails
    assert main(["report", str(out), "-o", str(tmp_path / "again.html")]) == 0
    again = (tmp_path / "again.html").read_text(encoding="utf-8")
    svg = re.search(r'<figure class="pointmap">.*?</figure>', again, re.S).group(0)
    assert svg.count('<g class="pt ') == n and svg.count("<image ") == len(b_rows) + 3
    assert again.count("the map shows no thumbnails of A on hover") == 1
