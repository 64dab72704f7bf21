"""open_clip image towers: CLIP RN50 and ViT-B/32 with OpenAI weights.

Only ``model.visual`` is kept (the text tower is dropped after loading). Preprocessing is
open_clip's eval transform for the model (``get_model_preprocess_cfg``: resize shortest edge,
centre crop, OpenAI mean/std). The activation (QuickGELU for OpenAI weights) follows the
pretrained tag, also when the weights come from a local file.

``pooled`` is the CLIP image embedding (``encode_image`` before normalisation, after the
projection), the feature CLIP users compare. ViT layers: ``block{i}`` (B, D, T) and ``norm``
(``ln_post`` over all tokens); ``tokens`` (B, T, D). ResNet layers: ``stem`` and ``stage0`` …
``stage3`` (B, C, H, W).
"""

from __future__ import annotations

import torch

from bench.errors import BenchError
from bench.extractors.common import (
    ModelExtractor,
    check_weights_path,
    download_error,
    first_line,
    lnd_to_nct,
    load_state_dict_file,
    nlc_to_nct,
)
from bench.extractors.transforms import from_open_clip_config


class OpenClipExtractor(ModelExtractor):
    """open_clip model ``arch`` with pretrained ``tag``, or a local full-CLIP state dict."""

    library = "open_clip"

    def __init__(self, *, name: str, arch: str, tag: str, weights: str | None = None, device="cpu"):
        import open_clip

        super().__init__(name=name, arch=f"{arch}/{tag}", weights=weights, device=device,
                         pooled="CLIP image embedding (projected, not normalised)")
        tag_cfg = open_clip.get_pretrained_cfg(arch, tag)
        quick_gelu = bool(tag_cfg.get("quick_gelu", False))
        if weights is not None:
            path = check_weights_path(name, weights)
            # a file carries no preprocessing: take the tag's, as open_clip does for the tag itself
            keys = ("size", "mean", "std", "interpolation", "resize_mode")
            tag_pp = {k: tag_cfg[k] for k in keys if k in tag_cfg}
            # read once by bench's loader first, so a malformed file is a one-line error saying what is
            # wrong (open_clip reads it again: its conversions need the path)
            load_state_dict_file(path)
            try:
                model = open_clip.create_model(arch, pretrained=str(path), force_quick_gelu=quick_gelu,
                                               force_preprocess_cfg=tag_pp, device="cpu")
            except Exception as exc:  # noqa: BLE001 - loaders raise many types; reported in one line
                raise BenchError(f"extractor {name!r}: the weights in {str(path)!r} do not fit open_clip "
                                 f"{arch!r} ({first_line(exc)})") from None
        else:
            try:
                model = open_clip.create_model(arch, pretrained=tag, force_quick_gelu=quick_gelu,
                                               device="cpu")
            except Exception as exc:  # noqa: BLE001 - loaders raise many types; reported in one line
                raise download_error(name, f"open_clip {arch!r} pretrained={tag!r}", exc) from None
        cfg = open_clip.get_model_preprocess_cfg(model)
        visual = model.visual
        del model  # the text tower is not needed
        self.quick_gelu = any(type(m).__name__ == "QuickGELU" for m in visual.modules())
        self._setup(visual)
        self._finish(visual, from_open_clip_config(cfg))

    def _setup(self, visual: torch.nn.Module) -> None:
        if hasattr(visual, "transformer"):  # open_clip VisionTransformer
            self.has_tokens = True
            adapt = nlc_to_nct if getattr(visual.transformer, "batch_first", True) else lnd_to_nct
            for i, block in enumerate(visual.transformer.resblocks):
                self._tap(f"block{i}", block, adapt)
            if getattr(visual, "attn_pool", None) is not None or getattr(visual, "final_ln_after_pool", 0):
                raise BenchError(f"open_clip {self.arch!r}: attention-pooled or pool-then-norm towers have "
                                 "no normed token output; not supported")
            self._tap("_ln_post", visual.ln_post)
            self._block_layers = [f"block{i}" for i in range(len(visual.transformer.resblocks))] + ["norm"]
        elif hasattr(visual, "layer4"):  # ModifiedResNet
            self._tap("stem", visual.avgpool)
            for i in range(4):
                self._tap(f"stage{i}", getattr(visual, f"layer{i + 1}"))
            self._tap_blocks([getattr(visual, f"layer{i + 1}") for i in range(4)])
        else:
            raise BenchError(f"open_clip {self.arch!r}: unsupported image tower {type(visual).__name__}")

    @property
    def layer_names(self) -> list[str]:
        return [k for k in super().layer_names if not k.startswith("_")]

    def cache_key(self):
        return {**super().cache_key(), "quick_gelu": self.quick_gelu}

    def _run(self, batch: torch.Tensor, want_tokens: bool, layers: list[str]):
        taps = layers + (["_ln_post"] if want_tokens else [])
        pooled, acts = self._hooked(self._visual_forward, batch, taps)
        return pooled, acts.pop("_ln_post", None), acts

    def _visual_forward(self, x: torch.Tensor, *, force_resample: bool = False) -> torch.Tensor:
        """``visual(x)``; for a ViT input whose patch grid differs from the trained one, the same
        computation with the positional embedding resampled (timm's ``resample_abs_pos_embed``)."""
        visual = self.model
        if not self.has_tokens:
            return visual(x)
        grid = (x.shape[-2] // visual.patch_size[0], x.shape[-1] // visual.patch_size[1])
        if tuple(grid) == tuple(visual.grid_size) and not force_resample:
            return visual(x)
        from timm.layers import resample_abs_pos_embed

        pos = resample_abs_pos_embed(visual.positional_embedding[None], new_size=list(grid),
                                     old_size=list(visual.grid_size), num_prefix_tokens=1)[0]
        t = visual.conv1(x).flatten(2).transpose(1, 2)
        cls = visual.class_embedding.to(t.dtype).expand(t.shape[0], 1, -1)
        t = torch.cat([cls, t], dim=1) + pos.to(t.dtype)
        t = visual.ln_pre(visual.patch_dropout(t))
        t = visual.transformer(t)
        pooled, _ = visual._pool(t)
        return pooled @ visual.proj if visual.proj is not None else pooled
