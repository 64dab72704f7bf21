"""A plugin author's path, end to end: one short file + an entry point, pip-installed,
then ``bench run --methods <its name>`` — exactly what the README documents."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

PLUGIN = '''
"""bench-brightness: cluster images by mean brightness (a deliberately simple method)."""
import numpy as np

import bench
from bench.api import Summariser, Summary


class Brightness(Summariser):
    name = "brightness"
    version = "1"
    requires = frozenset({"images"})

    def __init__(self, *, bins=4):
        self.bins = bins

    def fit(self, data, *, seed=0):
        level = np.concatenate([b.reshape(len(b), -1).mean(1) for b in data.images()])
        edges = np.quantile(level, np.linspace(0, 1, self.bins + 1)[1:-1])
        self.summary_ = Summary(codes=np.searchsorted(edges, level), embedding=level[:, None])
        return self


@bench.hookimpl
def bench_register_summarisers(registry):
    registry.add("brightness", Brightness)
'''

BROKEN = "raise ImportError('this plugin is broken on purpose')\n"


def _make_package(root: Path, name: str, module: str, source: str, ep_name: str) -> Path:
    pkg = root / name
    pkg.mkdir()
    (pkg / f"{module}.py").write_text(source)
    (pkg / "pyproject.toml").write_text(textwrap.dedent(f"""
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "{name}"
        version = "0.3.0"
        [tool.setuptools]
        py-modules = ["{module}"]
        [project.entry-points.bench]
        {ep_name} = "{module}"
    """))
    return pkg


def _pip_install(pkg: Path, target: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(pkg)], check=True, capture_output=True)


def _bench(args, target: Path, cwd: Path):
    env = dict(os.environ, PYTHONPATH=str(target) + os.pathsep + os.environ.get("PYTHONPATH", ""), COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], cwd=cwd, env=env, check=False,
                          capture_output=True, text=True, timeout=600)


def test_third_party_plugin_runs_end_to_end_and_broken_one_is_listed(tmp_path):
    target = tmp_path / "site"
    _pip_install(_make_package(tmp_path, "bench-brightness", "bench_brightness", PLUGIN, "brightness"), target)
    _pip_install(_make_package(tmp_path, "bench-broken", "bench_broken", BROKEN, "broken"), target)

    listed = _bench(["plugins"], target, tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "bench-brightness" in listed.stdout and "broken on purpose" in listed.stdout

    assert "brightness" in _bench(["list"], target, tmp_path).stdout

    run = _bench(["run", "--methods", "brightness", "--datasets", "digits", "--extractor", "pixels",
                  "--out", "res", "--no-cache"], target, tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    records = list((tmp_path / "res").rglob("seed0.json"))
    assert len(records) == 1
    rec = json.loads(records[0].read_text())
    assert rec["status"] == "ok" and rec["method"]["distribution"] == "bench-brightness"
    assert rec["metrics"]["nmi"]["value"] > rec["metrics"]["nmi_random"]["value"]

    strict = _bench(["--strict-plugins", "list"], target, tmp_path)
    assert strict.returncode == 2 and "broken on purpose" in strict.stderr
    assert "Traceback" not in strict.stderr
