"""Extractors: registry, exact preprocessing, layers, weights from local files, errors, defaults.

Pretrained weights cannot be downloaded here, so every loading path is exercised with weights
the tests create (small configs of the same architectures) and saved to tmp_path.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np
import open_clip
import pytest
import timm
import torch
import torch.nn.functional as F
import transformers
from PIL import Image
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score
from threadpoolctl import threadpool_limits

from bench.api import DataView
from bench.datasets.base import ImageSource, content_revision
from bench.errors import BenchError
from bench.extractors import builtin
from bench.extractors.base import full_fp32
from bench.extractors.common import state_dict_sha256
from bench.extractors.hf_models import HFExtractor
from bench.extractors.openclip_models import OpenClipExtractor
from bench.extractors.pixels import PixelsExtractor
from bench.extractors.timm_models import TimmExtractor, TinyViTExtractor, make_tiny_vit
from bench.extractors.transforms import from_hf_processor, from_open_clip_config, from_timm_config
from bench.features import FeatureStore
from bench.registry import Registry
from bench.testing import make_tiny_source

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
NAMES = ["tiny-vit", "pixels", "dino-vits16", "deit-s", "resnet50", "rand-resnet50", "clip-rn50", "clip-vitb32",
         "dinov2-vits14", "dinov2-vitb14", "convnextv2-tiny", "efficientnet-lite0", "efficientnet-lite2",
         "mobilenetv2-imagenet"]


def _images(n: int = 3, h: int = 70, w: int = 90, seed: int = 0) -> np.ndarray:
    """Smooth random images (noise upsampled) with some fine detail: realistic for resampling."""
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.uniform(0, 255, (n, 3, h // 6, w // 6))).float()
    img = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    img = img + torch.from_numpy(rng.normal(0, 12, (n, 3, h, w))).float()
    return img.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _source(images: np.ndarray, labels: np.ndarray | None = None, name: str = "t") -> ImageSource:
    return ImageSource(name=name, revision=content_revision(images), n=len(images), array=images,
                       labels=labels)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Small tensors: thread start-up costs more than it saves (a lot on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny() -> TinyViTExtractor:
    return TinyViTExtractor()


# --------------------------------------------------------------------------- registry


def test_registry_has_every_extractor_with_the_factory_signature():
    reg = Registry("extractor")
    builtin.bench_register_extractors(reg)
    assert sorted(reg.names()) == sorted(NAMES)
    for name in NAMES:
        params = inspect.signature(reg.get(name)).parameters
        assert list(params) == ["weights", "device"], name
        assert params["weights"].default is None and params["device"].default == "cpu"
    assert builtin.DEFAULT_EXTRACTOR == "tiny-vit"


def test_default_factory_builds_tiny_vit_offline():
    ext = builtin.FACTORIES["tiny-vit"]()
    assert isinstance(ext, TinyViTExtractor) and ext.name == "tiny-vit"
    assert ext.cache_key()["weights_sha256"] == state_dict_sha256(make_tiny_vit())


# --------------------------------------------------------------------------- preprocessing


def _grey_diff(ref: torch.Tensor, mine: torch.Tensor, std) -> torch.Tensor:
    """Difference in grey levels (0..255) before normalisation."""
    return (ref - mine).abs() * torch.tensor(std).view(1, 3, 1, 1) * 255


@pytest.mark.parametrize("cfg", [
    dict(input_size=(3, 224, 224), interpolation="bicubic", crop_pct=0.9, crop_mode="center",
         mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
    dict(input_size=(3, 64, 64), interpolation="bilinear", crop_pct=1.0, crop_mode="center",
         mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
    dict(input_size=(3, 48, 48), interpolation="bicubic", crop_pct=0.95, crop_mode="squash",
         mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
], ids=["dino-224", "tiny-64", "squash-48"])
def test_batch_preprocessing_matches_timm_create_transform(cfg):
    images = _images()
    reference = timm.data.create_transform(**cfg)
    ref = torch.stack([reference(Image.fromarray(im)) for im in images])
    mine = from_timm_config(cfg)(images)
    assert mine.shape == ref.shape and mine.dtype == torch.float32
    diff = _grey_diff(ref, mine, cfg["std"])
    assert diff.max() <= 2.0 + 1e-4 and diff.mean() < 0.1  # PIL vs torch antialias kernels: ≤ 2 grey levels


def test_batch_preprocessing_matches_open_clip_transform():
    from open_clip.transform import PreprocessCfg, image_transform_v2

    cfg = PreprocessCfg()
    images = _images()
    ref = torch.stack([image_transform_v2(cfg, is_train=False)(Image.fromarray(im)) for im in images])
    mine = from_open_clip_config(vars(cfg))(images)
    diff = _grey_diff(ref, mine, cfg.std)
    assert mine.shape == ref.shape and diff.max() <= 2.0 + 1e-4 and diff.mean() < 0.1


@pytest.mark.parametrize("proc", [
    transformers.BitImageProcessor(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224},
                                   image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]),
    transformers.ConvNextImageProcessor(size={"shortest_edge": 224}, crop_pct=0.875,
                                        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]),
    transformers.ConvNextImageProcessor(size={"shortest_edge": 384}),
], ids=["dinov2", "convnextv2-224", "convnext-384-warp"])
def test_batch_preprocessing_matches_transformers_processor(proc):
    images = _images()
    ref = proc(images=[Image.fromarray(im) for im in images], return_tensors="pt")["pixel_values"]
    mine = from_hf_processor(proc)(images)
    assert mine.shape == ref.shape
    torch.testing.assert_close(mine, ref, atol=1e-4, rtol=0)


def test_preprocessing_rejects_non_uint8_rgb_batches(tiny):
    with pytest.raises(BenchError, match=r"uint8 RGB batches"):
        tiny.preprocess(np.zeros((2, 8, 8), dtype=np.uint8))
    with pytest.raises(BenchError, match=r"uint8 RGB batches"):
        tiny.preprocess(np.zeros((2, 8, 8, 3), dtype=np.float32))


# --------------------------------------------------------------------------- tiny-vit


def test_tiny_vit_is_deterministic_frozen_and_leaves_the_global_rng_alone(tiny):
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    again = TinyViTExtractor()
    assert torch.equal(torch.rand(3), before)  # construction did not consume the caller's RNG
    images = _images(4, 64, 64)
    a, b = tiny.forward(tiny.preprocess(images)), again.forward(again.preprocess(images))
    assert torch.equal(a["pooled"], b["pooled"])
    assert tiny.cache_key() == again.cache_key()
    assert not tiny.model.training and not any(p.requires_grad for p in tiny.model.parameters())
    assert not a["pooled"].requires_grad
    other_seed = TinyViTExtractor(seed=1)
    assert other_seed.cache_key()["weights_sha256"] != tiny.cache_key()["weights_sha256"]


def test_tiny_vit_layers_match_a_manual_forward(tiny):
    """Oracle: the blocks run one by one by hand, and the grid pooling done with loops."""
    x = tiny.preprocess(_images(2, 64, 64))
    out = tiny.forward(x, tiny.available_layers())
    m = tiny.model
    assert tiny.layer_names == [f"block{i}" for i in range(len(m.blocks))] + ["norm"]
    with torch.no_grad():
        h = m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x))))
        for i, block in enumerate(m.blocks):
            h = block(h)
            torch.testing.assert_close(out[f"block{i}"], h.transpose(1, 2), rtol=0, atol=0)
        tokens = m.norm(h)
    torch.testing.assert_close(out["tokens"], tokens, rtol=0, atol=0)
    torch.testing.assert_close(out["norm"], tokens.transpose(1, 2), rtol=0, atol=0)
    assert out["tokens"].shape == (2, 1 + 8 * 8, 192)
    # 8×8 patch grid → 4×4 cells of 2×2 patches, channels outermost
    grid = tokens[:, 1:].reshape(2, 8, 8, 192)
    expected = torch.empty(2, 192, 4, 4)
    for r in range(4):
        for c in range(4):
            expected[:, :, r, c] = grid[:, 2 * r:2 * r + 2, 2 * c:2 * c + 2].mean(dim=(1, 2))
    torch.testing.assert_close(out["pooled"], expected.flatten(1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(m(x), out["pooled"], rtol=0, atol=0)  # the bare model gives the same


def test_tiny_vit_tokens_accept_other_crop_sizes(tiny):
    for h, w in ((32, 32), (48, 40), (96, 96)):
        t = tiny.tokens(torch.randn(2, 3, h, w))
        assert t.shape == (2, 1 + (h // 8) * (w // 8), 192)
        assert tiny.forward(torch.randn(1, 3, h, w))["pooled"].shape == (1, 16 * 192)


def test_tiny_vit_data_config_is_timm_style_and_matches_the_model(tiny):
    cfg = tiny.data_config
    assert cfg == {"input_size": (3, 64, 64), "interpolation": "bilinear", "crop_pct": 1.0,
                   "crop_mode": "center", "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
    resolved = timm.data.resolve_model_data_config(tiny.model)
    assert {k: resolved[k] for k in cfg} == cfg


def test_tiny_vit_weights_file_roundtrip_and_cache_key(tiny, tmp_path):
    from safetensors.torch import save_file

    images = _images(3, 64, 64)
    ref = tiny.forward(tiny.preprocess(images), ["pooled", "block2"])
    torch.save(tiny.model.state_dict(), tmp_path / "w.pth")
    save_file(tiny.model.state_dict(), str(tmp_path / "w.safetensors"))
    for fname in ("w.pth", "w.safetensors"):
        ext = TinyViTExtractor(weights=str(tmp_path / fname))
        got = ext.forward(ext.preprocess(images), ["pooled", "block2"])
        assert torch.equal(got["pooled"], ref["pooled"]) and torch.equal(got["block2"], ref["block2"])
        assert ext.cache_key() == tiny.cache_key()  # same weights, same key, whatever the source
    changed = {k: v + 0.01 if k == "norm.bias" else v for k, v in tiny.model.state_dict().items()}
    torch.save(changed, tmp_path / "changed.pth")
    ext = TinyViTExtractor(weights=str(tmp_path / "changed.pth"))
    assert ext.cache_key()["weights_sha256"] != tiny.cache_key()["weights_sha256"]
    assert not torch.equal(ext.forward(ext.preprocess(images))["pooled"], ref["pooled"])


def test_cache_key_records_library_architecture_preprocessing_and_weights(tiny):
    key = tiny.cache_key()
    assert key["library"] == "timm" and key["library_version"] == timm.__version__
    assert key["torch"] == torch.__version__ and "depth=6" in key["arch"]
    assert key["preprocess"]["interpolation"] == "bilinear" and key["preprocess"]["crop"] == (64, 64)
    assert len(key["weights_sha256"]) == 64 and "grid" in key["pooled"]
    json.dumps(key, default=str)  # the FeatureStore hashes it as JSON


@pytest.mark.parametrize("device", DEVICES)
def test_feature_store_and_activations_through_the_harness(tiny, device):
    images = _images(10, 72, 64)
    src = _source(images)
    store = FeatureStore(None)
    feats = store.features(src, tiny, device=device, batch_size=4)
    assert feats.shape == (10, 16 * 192) and feats.dtype == np.float32 and np.isfinite(feats).all()
    tiny.to(device)
    with full_fp32():   # as the harness extracts: no TF32 on GPU
        direct = tiny.forward(tiny.preprocess(images))["pooled"].cpu().numpy()
    np.testing.assert_allclose(feats, direct, rtol=1e-5, atol=1e-5)  # batching does not change features
    view = DataView(src, tiny, store, device=device, batch_size=4)
    layers = ["block0", "norm", "tokens"]
    batches = list(view.activations(layers))
    assert [b["block0"].shape[0] for b in batches] == [4, 4, 2]
    assert all(b[k].device.type == torch.device(device).type for b in batches for k in layers)
    assert batches[0]["block0"].shape == (4, 192, 65) and batches[0]["tokens"].shape == (4, 65, 192)
    tiny.to("cpu")


def test_unknown_layers_get_one_line_listing_the_available_ones(tiny):
    x = tiny.preprocess(_images(1, 64, 64))
    with pytest.raises(BenchError) as err:
        tiny.forward(x, ["pooled", "block99"])
    msg = str(err.value)
    assert "\n" not in msg and "'block99'" in msg and "block0" in msg and "norm" in msg and "tokens" in msg
    pix = PixelsExtractor(size=8)
    with pytest.raises(BenchError, match=r"available: pooled, image"):
        pix.forward(pix.preprocess(_images(1, 8, 8)), ["tokens"])
    with pytest.raises(BenchError, match="no token outputs"):
        pix.tokens(pix.preprocess(_images(1, 8, 8)))


# --------------------------------------------------------------------------- clearly above chance


def _digits(n: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as 32×32 RGB (nearest upscaling), like the embedded ``digits`` set."""
    from sklearn.datasets import load_digits

    d = load_digits()
    grey = np.round(d.images[:n] * (255 / 16)).astype(np.uint8).repeat(4, 1).repeat(4, 2)
    return np.repeat(grey[..., None], 3, axis=3), d.target[:n]


def _shapes(n: int = 120, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Four classes (disc, square, horizontal / vertical stripes) in random colours on noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:64, :64]
    labels = np.arange(n) % 4
    images = rng.integers(0, 80, size=(n, 64, 64, 3)).astype(np.uint8)
    for i, c in enumerate(labels):
        cy, cx = rng.integers(20, 44, 2)
        r = rng.integers(10, 16)
        mask = [(yy - cy) ** 2 + (xx - cx) ** 2 < r * r, (abs(yy - cy) < r) & (abs(xx - cx) < r),
                (yy // 4) % 2 == 0, (xx // 4) % 2 == 0][c]
        images[i][mask] = rng.integers(100, 256, 3)
    return images, labels


def _kmeans(x: np.ndarray, k: int) -> np.ndarray:
    return KMeans(k, n_init=2, random_state=0).fit_predict(x)


@pytest.mark.parametrize("data", ["digits", "shapes"])
def test_tiny_vit_kmeans_beats_random_assignment_clearly(tiny, data):
    images, labels = _digits() if data == "digits" else _shapes()
    k = len(np.unique(labels))
    src = _source(images, labels)
    batches = list(tiny.iter_layers(src, np.arange(src.n), ["pooled", "tokens"], batch_size=100))
    feats = np.concatenate([b["pooled"].numpy() for b in batches])
    with threadpool_limits(1):  # small problem: threads only add start-up cost
        nmi = normalized_mutual_info_score(labels, _kmeans(feats, k))
    rng = np.random.default_rng(0)
    chance = np.mean([normalized_mutual_info_score(labels, rng.integers(0, k, len(labels)))
                      for _ in range(20)])
    assert chance < 0.15 and nmi > chance + 0.4, (nmi, chance)
    if data == "digits":  # why pooled is a grid, not CLS: CLS of a random ViT discards the layout
        cls = np.concatenate([b["tokens"][:, 0].numpy() for b in batches])
        with threadpool_limits(1):
            cls_nmi = normalized_mutual_info_score(labels, _kmeans(cls, k))
        assert nmi > cls_nmi + 0.2, (nmi, cls_nmi)


# --------------------------------------------------------------------------- timm from files


def test_timm_vit_weights_file_gives_the_source_models_features(tmp_path):
    src = timm.create_model("vit_small_patch16_224.dino", pretrained=False, num_classes=0, depth=2,
                            dynamic_img_size=True).eval()
    torch.save({"model": src.state_dict()}, tmp_path / "dino.pth")  # wrapped, as many checkpoints are
    ext = TimmExtractor(name="dino-vits16", arch="vit_small_patch16_224.dino",
                        weights=str(tmp_path / "dino.pth"), model_kwargs={"depth": 2})
    assert ext.data_config == {"input_size": (3, 224, 224), "interpolation": "bicubic", "crop_pct": 0.9,
                               "crop_mode": "center", "mean": (0.485, 0.456, 0.406),
                               "std": (0.229, 0.224, 0.225)}
    x = ext.preprocess(_images(2))
    out = ext.forward(x, ext.available_layers())
    with torch.no_grad():
        ref = src(x)
    assert torch.equal(out["pooled"], ref) and torch.equal(out["pooled"], out["tokens"][:, 0])
    assert ext.layer_names == ["block0", "block1", "norm"] and out["block1"].shape == (2, 384, 197)
    assert ext.tokens(torch.randn(1, 3, 96, 112)).shape == (1, 1 + 6 * 7, 384)
    assert ext.cache_key()["weights_sha256"] == state_dict_sha256(src)


def test_timm_resnet_weights_file_and_a_file_of_the_wrong_architecture(tmp_path):
    from safetensors.torch import save_file

    src = timm.create_model("resnet50", pretrained=False, num_classes=0, layers=[1, 1, 1, 1]).eval()
    save_file(src.state_dict(), str(tmp_path / "r.safetensors"))
    ext = TimmExtractor(name="resnet50", arch="resnet50", weights=str(tmp_path / "r.safetensors"),
                        model_kwargs={"layers": [1, 1, 1, 1]})
    assert ext.preprocess(_images(2)).shape == (2, 3, 224, 224)
    x = torch.randn(2, 3, 64, 64)  # a CNN takes any size; small keeps the test fast
    out = ext.forward(x, ext.available_layers())
    with torch.no_grad():
        assert torch.equal(out["pooled"], src(x))
    assert ext.layer_names == ["stem", "stage0", "stage1", "stage2", "stage3"]
    assert ext.block_layers == ["layer1_0", "layer2_0", "layer3_0", "layer4_0"]  # extra, not default
    assert torch.equal(out["layer4_0"], out["stage3"])
    assert out["stem"].shape == (2, 64, 16, 16) and out["stage3"].shape == (2, 2048, 2, 2)
    assert ext.data_config["crop_pct"] == 0.95  # resnet50.a1_in1k's pretrained config
    with pytest.raises(BenchError, match="no token outputs"):
        ext.tokens(x)
    with pytest.raises(BenchError, match=r"do not fit this architecture \(missing: layer1\.1\."):
        TimmExtractor(name="resnet50", arch="resnet50", weights=str(tmp_path / "r.safetensors"),
                      model_kwargs={"layers": [2, 1, 1, 1]})


def test_rand_resnet50_taps_every_bottleneck_output_as_vdna_names_them():
    """vdna's 16 ResNet-50 taps (15,104 neurons) besides the default stem and stages; each stage's
    last block is that stage's output. Seeded: the same network twice, vdna's init (last BN not zeroed)."""
    from bench.extractors.timm_models import RandResNet50Extractor

    ext = RandResNet50Extractor()
    names = [f"layer{i}_{j}" for i, n in enumerate((3, 4, 6, 3), start=1) for j in range(n)]
    assert ext.block_layers == names and ext.layer_names == ["stem", "stage0", "stage1", "stage2", "stage3"]
    assert ext.available_layers() == ["pooled", *ext.layer_names, *names]
    assert ext.data_config == {"input_size": (3, 224, 224), "interpolation": "bicubic", "crop_pct": 1.0,
                               "crop_mode": "squash", "mean": (0.485, 0.456, 0.406),
                               "std": (0.229, 0.224, 0.225)}
    assert ext.weights_sha256 == RandResNet50Extractor().weights_sha256
    assert float(ext.model.layer1[0].bn3.weight.min()) == 1.0
    out = ext.forward(ext.preprocess(_images(1, 224, 224)), ["stage0", "stage3", *names])
    assert sum(out[k].shape[1] for k in names) == 15104
    assert torch.equal(out["layer1_2"], out["stage0"]) and torch.equal(out["layer4_2"], out["stage3"])
    assert out["layer3_5"].shape == (1, 1024, 14, 14)


@pytest.mark.parametrize("wrap", ["flat", "model_state_dict", "state_dict+model", "module.-prefix"])
def test_weights_files_are_unwrapped_from_checkpoint_wrappers(wrap, tmp_path):
    """vdna's hub weights are {"model_state_dict": …, …}; Lightning's {"state_dict": …}; DDP keys
    start with "module."; all load as the bare state dict, through weights_only=True."""
    from bench.extractors.timm_models import RandResNet50Extractor

    kw = {"layers": [1, 1, 1, 1]}
    src = RandResNet50Extractor(seed=3, model_kwargs=kw)
    sd = src.model.state_dict()
    obj = {"flat": sd, "model_state_dict": {"model_state_dict": sd, "epoch": 7, "optimizer_state_dict": {"lr": 0.1}},
           "state_dict+model": {"state_dict": {"model": sd}, "step": 2},
           "module.-prefix": {"model": {"module." + k: v for k, v in sd.items()}}}[wrap]
    torch.save(obj, tmp_path / "w.pth")
    ext = RandResNet50Extractor(weights=str(tmp_path / "w.pth"), model_kwargs=kw)
    assert ext.weights_sha256 == src.weights_sha256 != RandResNet50Extractor(model_kwargs=kw).weights_sha256


def test_weights_wrapper_with_python_objects_is_refused_in_one_line(tmp_path):
    from bench.extractors.timm_models import RandResNet50Extractor

    kw = {"layers": [1, 1, 1, 1]}
    torch.save({"model_state_dict": RandResNet50Extractor(model_kwargs=kw).model.state_dict(),
                "args": Path("/x")}, tmp_path / "w.pth")  # an object a weights-only load does not run
    with pytest.raises(BenchError, match="Python objects besides tensors") as err:
        RandResNet50Extractor(weights=str(tmp_path / "w.pth"), model_kwargs=kw)
    assert "\n" not in str(err.value)


# --------------------------------------------------------------------------- open_clip from files


@pytest.fixture(scope="module")
def tiny_clip_configs(tmp_path_factory):
    """Two small open_clip architectures registered under test names (ViT and modified ResNet)."""
    folder = tmp_path_factory.mktemp("clip_cfg")
    text = {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1}
    cfgs = {"bench-test-vit": {"embed_dim": 16, "quick_gelu": True, "text_cfg": text,
                               "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8,
                                              "head_width": 16}},
            "bench-test-rn": {"embed_dim": 16, "text_cfg": text,
                              "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8,
                                             "patch_size": None}}}
    for name, cfg in cfgs.items():
        (folder / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(folder)
    return list(cfgs)


@pytest.mark.parametrize("arch", ["bench-test-vit", "bench-test-rn"])
def test_open_clip_weights_file_gives_encode_image(tiny_clip_configs, arch, tmp_path):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        src = open_clip.create_model(arch, pretrained=None).eval()
    torch.save(src.state_dict(), tmp_path / "clip.pt")
    ext = OpenClipExtractor(name="clip-test", arch=arch, tag="openai", weights=str(tmp_path / "clip.pt"))
    assert ext.data_config["mean"] == open_clip.OPENAI_DATASET_MEAN
    assert ext.data_config["interpolation"] == "bicubic"
    x = ext.preprocess(_images(2))
    out = ext.forward(x, ext.available_layers())
    with torch.no_grad():
        assert torch.equal(out["pooled"], src.encode_image(x))
    if arch == "bench-test-vit":
        assert ext.quick_gelu and ext.cache_key()["quick_gelu"]
        assert ext.layer_names == ["block0", "block1", "norm"] and out["tokens"].shape == (2, 17, 32)
        torch.testing.assert_close(out["tokens"][:, 0] @ ext.model.proj, out["pooled"])  # ln_post tokens
        with torch.no_grad():  # the resampling path is the library forward when no resampling is needed
            torch.testing.assert_close(ext._visual_forward(x, force_resample=True), out["pooled"])
        assert ext.tokens(torch.randn(1, 3, 48, 40)).shape == (1, 1 + 6 * 5, 32)
    else:
        assert ext.layer_names == ["stem", "stage0", "stage1", "stage2", "stage3"]
        assert out["stage3"].shape == (2, 256, 2, 2)
    assert ext.cache_key()["weights_sha256"] == state_dict_sha256(src.visual)


# --------------------------------------------------------------------------- transformers from folders


def test_dinov2_folder_roundtrip_with_its_processor(tmp_path):
    torch.manual_seed(0)
    src = transformers.Dinov2Model(transformers.Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=28, patch_size=14)).eval()
    src.save_pretrained(tmp_path / "m")
    transformers.BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 28, "width": 28},
                                   image_mean=[0.485, 0.456, 0.406],
                                   image_std=[0.229, 0.224, 0.225]).save_pretrained(tmp_path / "m")
    ext = HFExtractor(name="dinov2-vits14", hub_id="facebook/dinov2-small", family="dinov2",
                      weights=str(tmp_path / "m"))
    assert ext.processor_source == str(tmp_path / "m")
    assert ext.data_config["input_size"] == (3, 28, 28) and ext.data_config["interpolation"] == "bicubic"
    x = ext.preprocess(_images(2))
    out = ext.forward(x, ext.available_layers())
    with torch.no_grad():
        ref = src(pixel_values=x, output_hidden_states=True)
    assert torch.equal(out["pooled"], ref.pooler_output) and torch.equal(out["tokens"], ref.last_hidden_state)
    assert ext.layer_names == ["block0", "block1", "norm"]
    torch.testing.assert_close(src.layernorm(out["block1"].transpose(1, 2)), out["tokens"])
    assert ext.tokens(torch.randn(1, 3, 42, 56)).shape == (1, 1 + 3 * 4, 32)


def test_convnextv2_folder_without_processor_uses_the_hub_defaults(tmp_path, offline_hub):
    src = transformers.ConvNextV2Model(transformers.ConvNextV2Config(depths=[1, 1, 1, 1],
                                                                     hidden_sizes=[8, 16, 32, 64])).eval()
    src.save_pretrained(tmp_path / "c")
    ext = HFExtractor(name="convnextv2-tiny", hub_id="facebook/convnextv2-tiny-1k-224", family="convnextv2",
                      weights=str(tmp_path / "c"))
    assert ext.processor_source == "builtin:ConvNextImageProcessor"
    assert ext.cache_key()["processor"] == "builtin:ConvNextImageProcessor"
    assert ext.data_config["input_size"] == (3, 224, 224) and ext.data_config["crop_pct"] == 0.875
    x = ext.preprocess(_images(2))
    out = ext.forward(x, ext.available_layers())
    with torch.no_grad():
        assert torch.equal(out["pooled"], src(pixel_values=x).pooler_output)
    assert ext.layer_names == ["stem", "stage0", "stage1", "stage2", "stage3"]
    torch.testing.assert_close(src.layernorm(out["stage3"].mean((2, 3))), out["pooled"])
    with pytest.raises(BenchError, match=r"single weights file needs the config .* pass a model folder"):
        HFExtractor(name="convnextv2-tiny", hub_id="facebook/convnextv2-tiny-1k-224", family="convnextv2",
                    weights=str(tmp_path / "c" / "model.safetensors"))


# --------------------------------------------------------------------------- errors, one line each


@pytest.fixture
def offline_hub(monkeypatch, tmp_path):
    """No network and an empty cache, whatever the machine has cached."""
    import huggingface_hub.constants as hub

    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    return tmp_path / "hub-cache"


@pytest.mark.parametrize("name", ["dino-vits16", "clip-rn50", "clip-vitb32", "dinov2-vits14", "dinov2-vitb14",
                                  "convnextv2-tiny"])  # deit-s / resnet50: the dino-vits16 path, bigger
def test_pretrained_weights_unavailable_offline_is_one_clear_line(name, offline_hub):
    with pytest.raises(BenchError) as err:
        builtin.FACTORIES[name]()
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"extractor {name!r}: could not load pretrained weights from")
    assert "--weights PATH" in msg and str(offline_hub) in msg


@pytest.mark.parametrize("name", ["tiny-vit", "deit-s", "clip-rn50", "dinov2-vits14"])
def test_missing_or_unsupported_weights_paths_are_one_clear_line(name, tmp_path):
    with pytest.raises(BenchError, match=r"does not exist; --weights takes a \.pth/\.pt/\.bin/\.safetensors"):
        builtin.FACTORIES[name](weights=str(tmp_path / "missing.pth"))
    (tmp_path / "w.ckpt").write_bytes(b"x")
    with pytest.raises(BenchError, match=r"has suffix '\.ckpt'"):
        builtin.FACTORIES[name](weights=str(tmp_path / "w.ckpt"))


def test_folder_weights_only_for_transformers_and_pixels_takes_none(tmp_path):
    with pytest.raises(BenchError, match="is a folder"):
        builtin.FACTORIES["tiny-vit"](weights=str(tmp_path))
    with pytest.raises(BenchError, match="no weights"):
        builtin.FACTORIES["pixels"](weights=str(tmp_path))
    torch.save({"nonsense.weight": torch.zeros(2)}, tmp_path / "bad.pth")
    with pytest.raises(BenchError, match=r"do not fit this architecture \(missing: .*unexpected: nonsense"):
        builtin.FACTORIES["tiny-vit"](weights=str(tmp_path / "bad.pth"))


def test_pixels_data_config_and_layers():
    pix = builtin.FACTORIES["pixels"]()
    assert pix.data_config["input_size"] == (3, 32, 32) and pix.available_layers() == ["pooled", "image"]
    src = make_tiny_source(8)
    assert FeatureStore(None).features(src, pix).shape == (8, 3 * 32 * 32)


# --------------------------------------------------------------------------- malformed weights files


class _Payload:
    """Unpickling this runs ``os.system`` and leaves a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def _malformed(kind: str, folder, marker):
    """A weights file of one malformed ``kind`` and the words its error must contain."""
    import pickle

    from safetensors.torch import save_file

    sd = {"w": torch.arange(4096, dtype=torch.float32)}
    if kind == "truncated":
        torch.save(sd, folder / "w.pth")
        data = (folder / "w.pth").read_bytes()
        (folder / "w.pth").write_bytes(data[: len(data) // 2])
        return folder / "w.pth", "truncated or corrupt"
    if kind == "empty":
        (folder / "w.pth").write_bytes(b"")
        return folder / "w.pth", "the file is empty"
    if kind == "text":
        (folder / "w.pth").write_text("model weights are on the shared drive\n")
        return folder / "w.pth", "text file"
    if kind == "truncated-safetensors":
        save_file(sd, str(folder / "w.safetensors"))
        data = (folder / "w.safetensors").read_bytes()
        (folder / "w.safetensors").write_bytes(data[: len(data) // 2])
        return folder / "w.safetensors", "not a complete safetensors file"
    if kind == "torch-payload":
        torch.save({"w": _Payload(marker)}, folder / "w.pth")
        return folder / "w.pth", "Python objects besides tensors"
    (folder / "w.pt").write_bytes(pickle.dumps(_Payload(marker)))                  # a plain pickle
    return folder / "w.pt", "Python objects besides tensors"


KINDS = ["truncated", "empty", "text", "truncated-safetensors", "torch-payload", "pickle-payload"]


@pytest.mark.parametrize("kind", KINDS)
def test_malformed_weights_file_is_one_error_line_through_the_cli(kind, tmp_path, capsys):
    """Exit 2 with one ``error:`` line saying what is wrong; never a traceback, never the advice
    to load with ``weights_only=False``; a payload never runs."""
    from bench.cli import main

    marker = tmp_path / "pwned"
    path, words = _malformed(kind, tmp_path, marker)
    code = main(["run", "--methods", "kmeans", "--datasets", "digits", "--extractor", "tiny-vit", "--weights",
                 str(path), "--no-cache", "--out", str(tmp_path / "out")])
    out = capsys.readouterr()
    text = " ".join((out.out + out.err).split())                      # rich wraps long lines
    assert code == 2 and "Traceback" not in text and text.count("error:") == 1, text
    assert words in text and path.name in text and "weights_only" not in text
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["truncated", "text", "torch-payload", "pickle-payload"])
def test_malformed_weights_file_for_open_clip_is_one_line(tiny_clip_configs, kind, tmp_path):
    marker = tmp_path / "pwned"
    path, words = _malformed(kind, tmp_path, marker)
    with pytest.raises(BenchError) as err:
        OpenClipExtractor(name="clip-test", arch="bench-test-vit", tag="openai", weights=str(path))
    msg = str(err.value)
    assert words in msg and "\n" not in msg and "weights_only" not in msg and not marker.exists()


@pytest.mark.parametrize("kind", ["truncated-safetensors", "torch-payload"])
def test_malformed_single_weights_file_for_transformers_is_one_line(kind, tmp_path, monkeypatch):
    """The single-file path (config from the hub cache, here a small stand-in) reads the file with
    bench's loader, outside the "do not fit" wrapper."""
    small = transformers.Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=28,
                                      patch_size=14)
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", lambda *a, **k: small)
    marker = tmp_path / "pwned"
    path, words = _malformed(kind, tmp_path, marker)
    with pytest.raises(BenchError) as err:
        HFExtractor(name="dinov2-vits14", hub_id="facebook/dinov2-small", family="dinov2", weights=str(path))
    msg = str(err.value)
    assert words in msg and "do not fit" not in msg and "\n" not in msg and "weights_only" not in msg
    assert not marker.exists()
