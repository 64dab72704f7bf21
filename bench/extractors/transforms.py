"""Evaluation preprocessing done in torch on whole uint8 batches, on the extractor's device.

Each library ships its eval transform as a per-image PIL pipeline (timm ``create_transform``,
open_clip ``image_transform``) or a processor (transformers). :class:`Preprocess` is the same
arithmetic on batches: resize (shortest edge, or exact) with antialias, centre crop, scale to
[0, 1], normalise. Resizing runs on uint8 like PIL does (torchvision rounds back to uint8), so
the result matches the library pipeline to within one grey level before normalisation; the
tests check this against each library's own transform.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

from bench.errors import BenchError, DataError

_INTERPOLATIONS = {"nearest": InterpolationMode.NEAREST, "bilinear": InterpolationMode.BILINEAR,
                   "bicubic": InterpolationMode.BICUBIC}
#: PIL resampling codes used by transformers' image processors
_PIL_CODES = {0: "nearest", 2: "bilinear", 3: "bicubic"}


@dataclass(frozen=True)
class Preprocess:
    """uint8 (B, H, W, 3) → float32 (B, 3, h, w), exactly the library's eval transform.

    ``resize``: an int resizes the shortest edge to it (torchvision ``Resize(int)``), a pair
    resizes to exactly (h, w), None skips resizing. ``crop``: centre crop (h, w) or None.
    Values are divided by ``scale`` (255), then normalised with ``mean``/``std``.
    """

    resize: int | tuple[int, int] | None
    crop: tuple[int, int] | None
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop_pct: float | None = None
    scale: float = 255.0

    def __post_init__(self):
        if self.interpolation not in _INTERPOLATIONS:
            raise BenchError(f"unsupported interpolation {self.interpolation!r}; "
                             f"supported: {', '.join(_INTERPOLATIONS)}")

    @property
    def input_size(self) -> tuple[int, int, int]:
        if self.crop is not None:
            return (3, *self.crop)
        if isinstance(self.resize, tuple):
            return (3, *self.resize)
        raise BenchError("this preprocessing keeps the aspect ratio and has no fixed input size")

    def data_config(self) -> dict[str, Any]:
        """timm ``resolve_model_data_config`` style description."""
        return {"input_size": self.input_size, "interpolation": self.interpolation,
                "crop_pct": self.crop_pct if self.crop_pct is not None else 1.0,
                "crop_mode": "center" if self.crop is not None else "squash",
                "mean": self.mean, "std": self.std}

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "impl": "torch-batch/uint8-resize-antialias"}

    @property
    def fixed_size(self) -> bool:
        """True when every image comes out at one size (so batches of any-size images stack)."""
        return self.crop is not None or isinstance(self.resize, tuple)

    def geometry(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) → uint8 (B, 3, h, w): the one resize and the centre crop."""
        if self.resize is not None:
            size = [self.resize] if isinstance(self.resize, int) else list(self.resize)
            x = TF.resize(x, size, interpolation=_INTERPOLATIONS[self.interpolation], antialias=True)
        if self.crop is not None and tuple(x.shape[-2:]) != tuple(self.crop):
            x = TF.center_crop(x, list(self.crop))
        return x

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, h, w) → float32, scaled and normalised."""
        x = x.float().div_(self.scale).contiguous()
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return x.sub_(mean).div_(std)

    def __call__(self, images: np.ndarray | torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
        return self.normalise(self.geometry(to_uint8_batch(images, device)))


def to_uint8_batch(images: np.ndarray | torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """(B, H, W, 3) uint8 array or tensor → (B, 3, H, W) uint8 tensor on ``device``."""
    if isinstance(images, torch.Tensor):
        x = images
    else:
        with warnings.catch_warnings():  # read-only arrays are fine: the pipeline never writes to its input
            warnings.simplefilter("ignore", UserWarning)
            x = torch.from_numpy(np.ascontiguousarray(images))
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise DataError(f"extractors take uint8 RGB batches of shape (B, H, W, 3); got {x.dtype} "
                        f"{tuple(x.shape)}")
    return x.to(device, non_blocking=True).permute(0, 3, 1, 2)


# --------------------------------------------------------------------------- from library configs


def from_timm_config(cfg: dict[str, Any]) -> Preprocess:
    """timm ``transforms_imagenet_eval`` for a ``resolve_model_data_config`` dict."""
    _, h, w = cfg["input_size"]
    crop_pct = float(cfg.get("crop_pct") or 0.875)  # timm DEFAULT_CROP_PCT
    mode = cfg.get("crop_mode") or "center"
    scale = (math.floor(h / crop_pct), math.floor(w / crop_pct))
    if mode == "squash":
        resize: int | tuple[int, int] = scale
    elif mode == "center" and scale[0] == scale[1]:
        resize = scale[0]
    else:
        raise BenchError(f"timm crop_mode {mode!r} with input size {h}x{w} is not supported")
    return Preprocess(resize=resize, crop=(h, w), interpolation=cfg.get("interpolation") or "bilinear",
                      mean=_triple(cfg["mean"]), std=_triple(cfg["std"]), crop_pct=crop_pct)


def from_open_clip_config(cfg: dict[str, Any]) -> Preprocess:
    """open_clip ``image_transform(..., is_train=False)`` for ``get_model_preprocess_cfg``."""
    size = cfg.get("size", 224)
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    mode = cfg.get("resize_mode", "shortest")
    if mode == "shortest" and h == w:
        resize: int | tuple[int, int] = h
    elif mode == "squash":
        resize = (h, w)
    else:
        raise BenchError(f"open_clip resize_mode {mode!r} with size {size} is not supported")
    return Preprocess(resize=resize, crop=(h, w) if mode == "shortest" else None,
                      interpolation=cfg.get("interpolation", "bicubic"), mean=_triple(cfg["mean"]),
                      std=_triple(cfg["std"]), crop_pct=1.0)


def from_hf_processor(proc: Any) -> Preprocess:
    """A transformers image processor (BiT-style, or ConvNeXt with its ``crop_pct`` rule)."""
    size = _size_dict(getattr(proc, "size", None))
    resample = getattr(proc, "resample", 3)
    resample = getattr(resample, "value", resample)
    is_code = isinstance(resample, (int, np.integer))
    interp = _PIL_CODES.get(int(resample)) if is_code else str(resample).lower()
    if interp not in _INTERPOLATIONS:
        raise BenchError(f"image processor resampling {resample!r} is not supported")
    if not getattr(proc, "do_resize", True):
        resize, crop_pct = None, None
        crop = None
    elif type(proc).__name__.startswith("ConvNext"):
        shortest = int(size["shortest_edge"])
        crop_pct = float(getattr(proc, "crop_pct", 224 / 256))
        if shortest < 384:  # transformers' ConvNextImageProcessor.resize
            resize, crop = int(shortest / crop_pct), (shortest, shortest)
        else:
            resize, crop, crop_pct = (shortest, shortest), None, 1.0
    else:
        crop_pct = None
        if "shortest_edge" in size:
            resize = int(size["shortest_edge"])
        elif "height" in size and "width" in size:
            resize = (int(size["height"]), int(size["width"]))
        else:
            raise BenchError(f"image processor size {size} is not supported")
        crop = None
    if getattr(proc, "do_center_crop", False) and not type(proc).__name__.startswith("ConvNext"):
        cs = _size_dict(getattr(proc, "crop_size", None))
        crop = (int(cs["height"]), int(cs["width"]))
        if isinstance(resize, int):
            crop_pct = min(crop) / resize
    rescale = float(getattr(proc, "rescale_factor", 1 / 255)) if getattr(proc, "do_rescale", True) else 1.0
    if getattr(proc, "do_normalize", True):
        mean, std = _triple(proc.image_mean), _triple(proc.image_std)
    else:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    return Preprocess(resize=resize, crop=crop, interpolation=interp, mean=mean, std=std,
                      crop_pct=crop_pct, scale=1.0 / rescale)


def _size_dict(size: Any) -> dict[str, int]:
    if size is None:
        return {}
    if isinstance(size, dict):
        return {k: v for k, v in size.items() if v is not None}
    return {k: getattr(size, k) for k in ("shortest_edge", "longest_edge", "height", "width")
            if getattr(size, k, None) is not None}


def _triple(v: Any) -> tuple[float, float, float]:
    v = [float(x) for x in (v if isinstance(v, (list, tuple)) else [v] * 3)]
    return (v[0], v[1], v[2])
