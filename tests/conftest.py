"""Shared test setup: a private feature cache per session, quiet threads."""

import os

import pytest
import torch

pytest_plugins = ["bench.testing"]
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    os.environ["BENCH_CACHE"] = str(tmp_path_factory.mktemp("bench-cache"))
    yield
