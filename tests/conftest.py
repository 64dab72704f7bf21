"""Shared test setup: a private feature cache per session, quiet threads."""

import os

import faiss
import pytest
import torch

pytest_plugins = ["bench.testing"]
# under pytest-xdist every worker gets one thread: oversubscribed OpenMP/torch pools spin and
# run many times slower than one thread each
_threads = 1 if os.environ.get("PYTEST_XDIST_WORKER") else max(1, min(2, os.cpu_count() or 1))
torch.set_num_threads(_threads)
faiss.omp_set_num_threads(_threads)


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    os.environ["BENCH_CACHE"] = str(tmp_path_factory.mktemp("bench-cache"))
    yield


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: intra-op threads only add contention on the shared CI machine
    (use with ``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _fixed_console_width(monkeypatch):
    """Printed tables are asserted on: the same width (the piped default) whatever terminal or
    ``COLUMNS`` runs the tests, so a cell never wraps in CI but not here."""
    from bench import cli

    for c in (cli.console, cli.err_console):
        monkeypatch.setattr(c, "_width", 160)
