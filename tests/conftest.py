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
