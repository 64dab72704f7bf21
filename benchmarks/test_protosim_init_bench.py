"""What ``prototype_init="kmeans"`` costs: the init (backbone tokens of every image + faiss
spherical k-means) against one training epoch of the same quick preset, on the embedded
synth-passnet (1,200 images, tiny-vit, K 512) in the same run."""

from __future__ import annotations

import tempfile

import numpy as np
import pytest
import torch
from bench_protosim.data import Backbone, ImageTable
from bench_protosim.init import kmeans_prototypes
from bench_protosim.method import QUICK_PARAMS
from bench_protosim.train import TrainConfig, Trainer

from bench.api import DataView
from bench.datasets.synth import make_synth_passnet
from bench.extractors.builtin import tiny_vit
from bench.features import FeatureStore

RESULTS: dict[str, float] = {}


@pytest.fixture(scope="module")
def setup():
    view = DataView(make_synth_passnet(0), tiny_vit(), FeatureStore(None), batch_size=64)
    return Backbone(view.extractor, torch.device("cpu")), ImageTable.from_view(view)


def test_kmeans_init(benchmark, setup):
    backbone, table = setup
    protos = benchmark.pedantic(kmeans_prototypes, args=(backbone, table, QUICK_PARAMS["n_prototypes"]),
                                kwargs={"seed": 0}, rounds=3, iterations=1)
    assert protos.shape == (QUICK_PARAMS["n_prototypes"], backbone.dim) and torch.isfinite(protos).all()
    RESULTS["init"] = benchmark.stats.stats.min


def test_one_training_epoch(benchmark, setup):
    backbone, table = setup
    cfg = TrainConfig.from_params({**QUICK_PARAMS, "epochs": 1, "hard_epoch": 1, "prototype_init": "uniform"})

    def epoch():
        with tempfile.TemporaryDirectory() as tmp:
            return Trainer(cfg, backbone, table, seed=0, checkpoint_dir=tmp).run()

    result = benchmark.pedantic(epoch, rounds=3, iterations=1)
    assert np.isfinite(result.history[-1]["loss"])
    RESULTS["epoch"] = benchmark.stats.stats.min


def test_zz_report():
    if {"init", "epoch"} <= set(RESULTS):
        print(f"\nk-means init {RESULTS['init']:.2f} s = {RESULTS['init'] / RESULTS['epoch']:.2f}× one quick epoch "
              f"({RESULTS['epoch']:.2f} s)")
