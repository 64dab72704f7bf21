"""timm backbones: ViTs (DINO ViT-S/16, DeiT-S, the offline default ``tiny-vit``) and CNNs (ResNet-50).

Preprocessing comes from ``timm.data.resolve_model_data_config`` (the pretrained config that
travels with the weights) and runs as :class:`~bench.extractors.transforms.Preprocess`.
Hub weights load through ``timm.create_model(pretrained=True)`` (cache and ``HF_HUB_OFFLINE``
honoured); a ``--weights FILE`` loads strictly through :func:`load_timm_file`, with the same
checkpoint filter timm applies to hub weights (e.g. for original DINO checkpoints).

Layers. ViTs: ``block0`` … ``block{N-1}`` (block outputs, (B, D, T), class token first) and
``norm`` (the final norm, = ``tokens`` transposed); ``tokens`` is (B, T, D). ResNets:
``stem`` (after the max-pool) and ``stage0`` … ``stage3`` as (B, C, H, W), the default taps;
besides them every bottleneck's output ``layer1_0`` … ``layer4_2`` (16 for a ResNet-50, vdna's
taps and names: :attr:`~bench.extractors.base.Extractor.block_layers`).

``rand-resnet50`` is vdna's ``rand_resnet50``: a seeded random-init ResNet-50 with vdna's init
and preprocessing; ``--weights`` takes vdna's own ``weights.pth`` (or any ResNet-50 state dict).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

from bench.errors import BenchError
from bench.extractors.common import (
    ModelExtractor,
    check_weights_path,
    download_error,
    first_line,
    load_state_dict_file,
    nlc_to_nct,
)
from bench.extractors.transforms import Preprocess, from_timm_config

#: seed of the torch generator that initialises ``tiny-vit``
TINY_VIT_SEED = 0
#: side of the grid of mean-pooled patch tokens that forms tiny-vit's pooled embedding
TINY_VIT_GRID = 4


class TimmExtractor(ModelExtractor):
    """Any timm model by name; ``weights`` = a local state-dict file instead of the hub.

    ``model_kwargs`` go to ``timm.create_model`` (tests shrink architectures with them).
    ViTs are created with ``dynamic_img_size=True`` so :meth:`tokens` takes other crop sizes.
    """

    library = "timm"

    def __init__(self, *, name: str, arch: str, weights: str | None = None, device="cpu",
                 model_kwargs: dict | None = None):
        import timm

        super().__init__(name=name, arch=arch, weights=weights, device=device, pooled="")
        kwargs = dict(num_classes=0, **(model_kwargs or {}))
        if _is_vit_arch(arch):
            kwargs.setdefault("dynamic_img_size", True)
        if weights is not None:
            path = check_weights_path(name, weights)  # before building: a wrong path fails at once
            model = timm.create_model(arch, pretrained=False, **kwargs)
            load_timm_file(model, path, name)
        else:
            try:
                model = timm.create_model(arch, pretrained=True, **kwargs)
            except Exception as exc:  # noqa: BLE001 - loaders raise many types; reported in one line
                raise download_error(name, f"timm {arch!r} (Hugging Face hub)", exc) from None
        self._setup(model)

    def _setup(self, model: torch.nn.Module, transform: Preprocess | None = None) -> None:
        import timm.data

        cfg = timm.data.resolve_model_data_config(model)
        if isinstance(model, VisionTransformer):
            self.has_tokens = True
            for i, block in enumerate(model.blocks):
                self._tap(f"block{i}", block, nlc_to_nct)
            self._block_layers = [f"block{i}" for i in range(len(model.blocks))] + ["norm"]
            self.pooled_definition = f"forward_head(pre_logits), global_pool={model.global_pool or 'token'}"
        elif hasattr(model, "layer4") and hasattr(model, "maxpool"):  # timm ResNet family
            self._tap("stem", model.maxpool)
            for i in range(4):
                self._tap(f"stage{i}", getattr(model, f"layer{i + 1}"))
            self._tap_blocks([getattr(model, f"layer{i + 1}") for i in range(4)])
            self.pooled_definition = f"forward_head(pre_logits), global_pool={model.global_pool.pool_type}"
        else:
            raise BenchError(f"timm model {self.arch!r}: only VisionTransformer and ResNet layouts are "
                             "supported by this extractor")
        self._finish(model, transform or from_timm_config(cfg))

    def _run(self, batch: torch.Tensor, want_tokens: bool, layers: list[str]):
        feats, acts = self._hooked(self.model.forward_features, batch, layers)
        pooled = self.model.forward_head(feats, pre_logits=True)
        return pooled, (feats if self.has_tokens else None), acts


def load_timm_file(model: torch.nn.Module, path: Path, name: str) -> None:
    """Load a local state dict strictly (timm's own file loading turns strict off whenever the
    classifier is dropped, which would leave unloaded layers at random init without a word).

    The model module's ``checkpoint_filter_fn`` converts original checkpoints (e.g. DINO's) as
    timm does for hub weights; classifier weights are dropped (the extractor has no head).
    """
    sd = load_state_dict_file(path)
    filter_fn = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
    try:
        if filter_fn is not None:
            sd = filter_fn(sd, model)
        heads = (model.pretrained_cfg or {}).get("classifier") or ()
        heads = (heads,) if isinstance(heads, str) else tuple(heads)
        sd = {k: v for k, v in sd.items() if not any(k.startswith(h + ".") for h in heads)}
        missing, unexpected = model.load_state_dict(sd, strict=False)
    except Exception as exc:  # noqa: BLE001 - loaders raise many types; reported in one line
        raise BenchError(f"extractor {name!r}: the weights in {str(path)!r} do not fit this architecture "
                         f"({first_line(exc)})") from None
    if missing or unexpected:
        detail = "; ".join(f"{what}: {', '.join(keys[:3])}{' …' if len(keys) > 3 else ''}"
                           for what, keys in (("missing", missing), ("unexpected", unexpected)) if keys)
        raise BenchError(f"extractor {name!r}: the weights in {str(path)!r} do not fit this architecture "
                         f"({detail})")


# --------------------------------------------------------------------------- vdna's random ResNet-50

#: seed of the torch generator that initialises ``rand-resnet50``
RAND_RESNET50_SEED = 0
#: vdna's ResNet-50 input (``utils/im.py``): squashed to 224² (no crop), bicubic, ImageNet mean / std.
#: vdna resizes float pixels with PIL; this resizes uint8 (within one grey level; 224² images are
#: passed through untouched by both)
VDNA_RESNET_PREPROCESS = Preprocess(resize=(224, 224), crop=None, interpolation="bicubic",
                                    mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), crop_pct=1.0)


def make_rand_resnet50(seed: int = RAND_RESNET50_SEED, **overrides) -> torch.nn.Module:
    """timm ``resnet50`` with vdna's random init (SwAV's: He-normal fan-out convolutions, BN at
    1 / 0, last BN of each block *not* zeroed, unlike timm's default); CPU generator, forked."""
    import timm

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return timm.create_model("resnet50", pretrained=False, **{"num_classes": 0, "zero_init_last": False,
                                                                   **overrides})


class RandResNet50Extractor(TimmExtractor):
    """``rand-resnet50``: vdna's ``rand_resnet50`` (a random-init ResNet-50 as a feature extractor).

    Its architecture is timm's ``resnet50``, layer for layer the SwAV ResNet vdna builds (vdna's
    zero pad of 1 then a padding-2 stem convolution is the same as padding 3), with the same
    state-dict names, so vdna's ``Random/rand_resnet50/weights.pth`` loads with ``--weights`` (its
    ``model_state_dict`` wrapper is unwrapped). Without weights: a seeded init of vdna's kind, the
    same on every machine for one torch version, but not vdna's draw. Preprocessing is vdna's
    (:data:`VDNA_RESNET_PREPROCESS`). ``model_kwargs`` go to ``timm.create_model`` (tests shrink it).
    """

    def __init__(self, *, name: str = "rand-resnet50", weights: str | None = None, device="cpu",
                 seed: int = RAND_RESNET50_SEED, model_kwargs: dict | None = None):
        ModelExtractor.__init__(self, name=name, arch="resnet50", weights=weights, device=device, pooled="")
        path = check_weights_path(name, weights) if weights is not None else None
        model = make_rand_resnet50(seed, **(model_kwargs or {}))
        self.seed = seed
        if path is not None:
            load_timm_file(model, path, name)
        if model_kwargs:
            self.arch = "resnet50:" + ",".join(f"{k}={v}" for k, v in sorted(model_kwargs.items()))
        self._setup(model, VDNA_RESNET_PREPROCESS)


def _is_vit_arch(arch: str) -> bool:
    import timm.models

    return timm.models.is_model_in_modules(timm.models.get_arch_name(arch), ["vision_transformer", "deit"])


# --------------------------------------------------------------------------- the offline default


class TinyViT(VisionTransformer):
    """A timm ViT-Tiny layout (embed 192, heads 3) at 64×64 with 8×8 patches, whose ``forward``
    returns a ``grid``×``grid`` map of mean-pooled final patch tokens, flattened.

    Why not CLS: in a random-init ViT the class token has no learned role; its output is an
    attention mix with random weights, and so is a plain mean over patches, and both discard
    where things are. k-means NMI against labels (6 blocks, seed 0): digits CLS 0.07 / mean
    0.08 / 4×4 grid 0.70; synth-passnet 0.40 / 0.38 / 0.50 (chance ≈ 0.01). The 4×4 grid keeps
    the coarse layout that random features otherwise average away.
    """

    def __init__(self, *, grid: int = TINY_VIT_GRID, **kwargs):
        super().__init__(**kwargs)
        self.grid = grid

    def grid_pool(self, feats: torch.Tensor, image_hw: tuple[int, int]) -> torch.Tensor:
        """(B, T, D) final tokens of an image of size ``image_hw`` → (B, grid²·D)."""
        gh, gw = self.patch_embed.dynamic_feat_size(image_hw)
        patches = feats[:, self.num_prefix_tokens:]
        b, _, d = patches.shape
        fmap = patches.transpose(1, 2).reshape(b, d, gh, gw)
        return F.adaptive_avg_pool2d(fmap, self.grid).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.grid_pool(self.forward_features(x), (x.shape[-2], x.shape[-1]))


TINY_VIT_CONFIG = dict(img_size=64, patch_size=8, embed_dim=192, depth=6, num_heads=3, mlp_ratio=4.0,
                       qkv_bias=True, class_token=True, global_pool="token", num_classes=0,
                       dynamic_img_size=True)
TINY_VIT_DATA = dict(input_size=(3, 64, 64), interpolation="bilinear", crop_pct=1.0, crop_mode="center",
                     mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def make_tiny_vit(seed: int = TINY_VIT_SEED, **overrides) -> TinyViT:
    """The seeded random-init network: identical weights on every machine for one torch version
    (CPU generator, forked so the caller's RNG state is untouched)."""
    threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.set_num_threads(1)  # init is tiny; thread start-up would dominate it on a busy machine
        try:
            model = TinyViT(**{**TINY_VIT_CONFIG, **overrides})
        finally:
            torch.set_num_threads(threads)
    model.pretrained_cfg = dict(TINY_VIT_DATA, architecture="bench_tiny_vit", num_classes=0)
    return model


class TinyViTExtractor(TimmExtractor):
    """``tiny-vit``: offline, deterministic default. ``weights`` = a state dict of this
    architecture (e.g. a checkpoint trained by the user) instead of the seeded init."""

    def __init__(self, *, name: str = "tiny-vit", weights: str | None = None, device="cpu",
                 seed: int = TINY_VIT_SEED, model_kwargs: dict | None = None):
        ModelExtractor.__init__(self, name=name, arch="bench-tiny-vit", weights=weights, device=device,
                                pooled="")
        path = check_weights_path(name, weights) if weights is not None else None
        model = make_tiny_vit(seed, **(model_kwargs or {}))
        self.seed = seed
        if path is not None:
            load_timm_file(model, path, name)
        self.arch = "bench-tiny-vit:" + ",".join(f"{k}={v}" for k, v in sorted(
            {**TINY_VIT_CONFIG, **(model_kwargs or {})}.items()))
        self._setup(model)
        self.pooled_definition = f"{model.grid}x{model.grid} grid of mean-pooled final patch tokens"

    def _run(self, batch: torch.Tensor, want_tokens: bool, layers: list[str]):
        feats, acts = self._hooked(self.model.forward_features, batch, layers)
        return self.model.grid_pool(feats, (batch.shape[-2], batch.shape[-1])), feats, acts

