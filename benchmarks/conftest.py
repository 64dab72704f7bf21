"""Benchmarks run with `tox -e benchmark` (pytest-benchmark), never in CI's test run."""

import os

import torch

torch.set_num_threads(max(1, os.cpu_count() or 1))
