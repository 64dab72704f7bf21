"""transformers backbones: DINOv2 (ViT-S/14, ViT-B/14) and ConvNeXt V2.

Weights and image processor come from the hub id (cache and ``HF_HUB_OFFLINE`` honoured by
transformers) or from ``weights=PATH``: a model folder (``save_pretrained`` layout; its
``preprocessor_config.json`` if present) or one state-dict file, whose config and processor
then come from the hub id's cache. The processor's settings run as
:class:`~bench.extractors.transforms.Preprocess`; without any processor config the values of
the hub's ``preprocessor_config.json`` below are used and the key says so.

Layers. DINOv2: ``block{i}`` (hidden state after layer i, (B, D, T)), ``norm`` (the final
layernorm), ``tokens`` (B, T, D); ``pooled`` = the ``pooler_output`` (layernormed CLS).
ConvNeXt V2: ``stem``, ``stage0`` … ``stage3`` (B, C, H, W); ``pooled`` = ``pooler_output``
(layernorm of the global average).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from bench.errors import BenchError
from bench.extractors.common import (
    ModelExtractor,
    check_weights_path,
    download_error,
    first_line,
    load_state_dict_file,
)
from bench.extractors.transforms import from_hf_processor

_IMAGENET = {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}
#: the hub's preprocessor_config.json, used only when no processor config can be found
PROCESSOR_DEFAULTS: dict[str, tuple[str, dict[str, Any]]] = {
    "dinov2": ("BitImageProcessor", dict(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224},
                                         do_center_crop=True, resample=3, **_IMAGENET)),
    "convnextv2": ("ConvNextImageProcessor", dict(size={"shortest_edge": 224}, crop_pct=0.875, resample=3,
                                                  **_IMAGENET)),
}


class HFExtractor(ModelExtractor):
    """A transformers vision backbone (``family`` "dinov2" or "convnextv2") from ``hub_id``."""

    library = "transformers"

    def __init__(self, *, name: str, hub_id: str, family: str, weights: str | None = None, device="cpu"):
        if family not in PROCESSOR_DEFAULTS:
            raise BenchError(f"transformers family {family!r} is not supported; "
                             f"supported: {', '.join(PROCESSOR_DEFAULTS)}")
        super().__init__(name=name, arch=hub_id, weights=weights, device=device, pooled="pooler_output")
        self.family = family
        self.hub_id = hub_id
        model_cls = _model_class(family)
        with _quiet():
            model, processor_sources = self._load(model_cls, hub_id, weights)
            self.processor_source, processor = _find_processor(processor_sources, family)
        self.arch = f"{hub_id}:{model.config.model_type}:" + _config_digest(model.config)
        self.has_tokens = family == "dinov2"
        if family == "dinov2":
            self.pooled_definition = "pooler_output (final layernorm, CLS token)"
            self._blocks = list(range(model.config.num_hidden_layers))
        else:
            self.pooled_definition = "pooler_output (layernorm of the global average pool)"
            self._blocks = list(range(len(model.config.depths)))
        self._finish(model, from_hf_processor(processor))

    def _load(self, model_cls, hub_id: str, weights: str | None):
        """(model, where to look for its image processor)."""
        if weights is None:
            try:
                model = model_cls.from_pretrained(hub_id, dtype=torch.float32)
            except Exception as exc:  # noqa: BLE001 - loaders raise many types; reported in one line
                raise download_error(self.name, f"transformers {hub_id!r}", exc, folder=True) from None
            return model, [hub_id]
        path = check_weights_path(self.name, weights, folder_ok=True)
        model = self._load_local(path, model_cls)
        return model, ([str(path), hub_id] if path.is_dir() else [hub_id])

    def _load_local(self, path: Path, model_cls):
        try:
            if path.is_dir():
                return model_cls.from_pretrained(str(path), dtype=torch.float32)
        except Exception as exc:  # noqa: BLE001 - loaders raise many types; reported in one line
            raise BenchError(f"extractor {self.name!r}: could not load a {self.family} model from folder "
                             f"{str(path)!r} ({first_line(exc)})") from None
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(self.hub_id)
        except Exception as exc:  # noqa: BLE001 - loaders raise many types; reported in one line
            raise BenchError(f"extractor {self.name!r}: a single weights file needs the config of "
                             f"{self.hub_id!r}, which is not cached ({first_line(exc)}); pass a model folder "
                             "with config.json (save_pretrained layout) as --weights instead") from None
        model = model_cls(config)
        state_dict = load_state_dict_file(path)  # outside the try: its one-line errors say what is wrong
        try:
            model.load_state_dict(state_dict, strict=True)
        except Exception as exc:  # noqa: BLE001 - loaders raise many types; reported in one line
            raise BenchError(f"extractor {self.name!r}: the weights in {str(path)!r} do not fit "
                             f"{self.hub_id!r} ({first_line(exc)})") from None
        return model

    # layers ------------------------------------------------------------------------------
    @property
    def layer_names(self) -> list[str]:
        if self.family == "dinov2":
            return [f"block{i}" for i in self._blocks] + ["norm"]
        return ["stem"] + [f"stage{i}" for i in self._blocks]

    @property
    def block_layers(self) -> list[str]:
        return self.layer_names if self.family == "dinov2" else []

    def _run(self, batch: torch.Tensor, want_tokens: bool, layers: list[str]):
        out = self.model(pixel_values=batch, output_hidden_states=bool(layers), return_dict=True)
        acts = {}
        for layer in layers:  # hidden_states[0] is the embedding (stem) output
            idx = 0 if layer == "stem" else int(layer[5:]) + 1
            h = out.hidden_states[idx]
            acts[layer] = h.transpose(1, 2) if self.family == "dinov2" else h
        return out.pooler_output.flatten(1), out.last_hidden_state, acts

    def cache_key(self) -> dict[str, Any]:
        return {**super().cache_key(), "processor": self.processor_source}


@contextmanager
def _quiet():
    """No transformers progress bars while loading (they would interleave with bench's own)."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def _model_class(family: str):
    import transformers

    return {"dinov2": transformers.Dinov2Model, "convnextv2": transformers.ConvNextV2Model}[family]


def _find_processor(sources: list[str], family: str) -> tuple[str, Any]:
    """The first image processor config found among ``sources``, else the hub defaults above."""
    import transformers

    for src in sources:
        if Path(src).is_dir() and not (Path(src) / "preprocessor_config.json").exists():
            continue
        try:
            return src, transformers.AutoImageProcessor.from_pretrained(src)
        except Exception:  # noqa: BLE001 - not cached / offline: try the next source, then the defaults
            continue
    cls_name, kwargs = PROCESSOR_DEFAULTS[family]
    return f"builtin:{cls_name}", getattr(transformers, cls_name)(**kwargs)


def _config_digest(config) -> str:
    import hashlib
    import json

    keep = {k: v for k, v in config.to_dict().items()
            if k not in ("transformers_version", "_name_or_path", "architectures", "dtype", "torch_dtype")}
    return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:16]
