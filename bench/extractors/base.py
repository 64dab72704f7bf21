"""Extractors: a frozen backbone plus its exact preprocessing.

An Extractor maps uint8 RGB images to pooled features (``"pooled"``), all tokens
(``"tokens"``) or named intermediate layers. ``cache_key()`` lists every input that
changes its output (library, architecture, weights hash, preprocessing, dtype); the
FeatureStore keys features by it.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from bench.errors import BenchError


@contextlib.contextmanager
def full_fp32() -> Iterator[None]:
    """Turn TF32 off for convolutions and matmuls: stored features are full float32 on every
    GPU, so they match the CPU and do not change with the batch size (cuDNN picks TF32 conv
    kernels by default on Ampere and later, which moves features by ~1e-3)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


class Extractor:
    """Base class. Subclasses set ``model`` and implement ``preprocess`` and ``forward``."""

    name: ClassVar[str] = ""
    #: the frozen torch module (None for model-free extractors such as ``pixels``)
    model: Any = None
    #: True for backbones whose tokens are (B, T, D) with a class token first (ViTs)
    has_tokens: ClassVar[bool] = False

    def __init__(self, *, weights: str | None = None, device: str | torch.device = "cpu"):
        self.weights = weights
        self.device = torch.device(device)

    # --- to implement ---------------------------------------------------------------
    def preprocess(self, images: np.ndarray) -> torch.Tensor:
        """uint8 (B, H, W, 3) → float tensor (B, 3, h, w) exactly as the weights expect."""
        raise NotImplementedError

    def forward(self, batch: torch.Tensor, layers: Sequence[str] = ("pooled",)) -> dict[str, torch.Tensor]:
        """Preprocessed batch on ``self.device`` → {layer: activations}.

        ``"pooled"`` → (B, D); ``"tokens"`` → (B, T, D); intermediate layers → (B, C, ...)
        channels on axis 1 (for token layers (B, C, T)).
        """
        raise NotImplementedError

    @property
    def layer_names(self) -> list[str]:
        """Named intermediate layers a method taps by default, shallow to deep."""
        return []

    @property
    def block_layers(self) -> list[str]:
        """Every block's output, shallow to deep, as vdna taps them (a ResNet's bottlenecks, a
        ViT's blocks and final norm); [] when the extractor declares none. Accepted by
        :meth:`forward` besides :attr:`layer_names`."""
        return []

    def cache_key(self) -> dict[str, Any]:
        """Every input that changes the output; hashed by the FeatureStore."""
        raise NotImplementedError

    @property
    def data_config(self) -> dict[str, Any]:
        """The preprocessing, timm ``resolve_model_data_config`` style: ``input_size`` (3, h, w),
        ``interpolation``, ``crop_pct``, ``crop_mode``, ``mean``, ``std``. Methods that make their
        own crops (ProtoSim) normalise them with this ``mean``/``std``."""
        return dict(getattr(self, "_data_config", None) or {})

    @data_config.setter
    def data_config(self, value: dict[str, Any]) -> None:
        self._data_config = dict(value)

    # --- shared ---------------------------------------------------------------------
    def available_layers(self) -> list[str]:
        """Every layer name ``forward`` accepts."""
        names = list(self.layer_names)
        return ["pooled"] + (["tokens"] if self.has_tokens else []) + names + \
            [k for k in self.block_layers if k not in names]

    def check_layers(self, layers: Sequence[str]) -> None:
        """Raise ONE line naming the available layers if any of ``layers`` is unknown."""
        if isinstance(layers, str):
            raise BenchError(f"{self.name}: layers must be a list of names, got the string {layers!r}")
        available = self.available_layers()
        bad = [k for k in layers if k not in available]
        if bad:
            raise BenchError(f"extractor {self.name!r}: unknown layer(s) {', '.join(map(repr, bad))}; "
                             f"available: {', '.join(available)}")

    @torch.no_grad()
    def tokens(self, batch: torch.Tensor) -> torch.Tensor:
        """Preprocessed batch (B, 3, h, w) on ``self.device`` → final tokens (B, T, D), class token
        first. ViTs accept crops of other sizes than ``data_config["input_size"]``."""
        if not self.has_tokens:
            raise BenchError(f"extractor {self.name!r} has no token outputs (not a ViT); "
                             "use a ViT extractor such as tiny-vit or dino-vits16")
        return self.forward(batch, ["tokens"])["tokens"]

    def to(self, device: str | torch.device) -> Extractor:
        self.device = torch.device(device)
        model = getattr(self, "model", None)
        if model is not None:
            model.to(self.device)
        return self

    @torch.no_grad()
    def iter_layers(self, source, indices: np.ndarray, layers: Sequence[str], *,
                    device: str | torch.device = "cpu", batch_size: int = 64,
                    progress: bool = False) -> Iterator[dict[str, torch.Tensor]]:
        """Stream activations of ``layers`` for ``source`` rows ``indices``, batches decoded by the
        :class:`~bench.pipeline.DataPipeline` (``self.workers`` processes, one exact resize)."""
        from bench.pipeline import worker_errors
        from bench.progress import track

        self.to(device)
        pipe = self.pipeline(source, indices, batch_size=batch_size)
        with worker_errors():
            for _, images in track(pipe, description=f"{self.name} {','.join(layers)}", enabled=progress,
                                   total=len(pipe)):
                batch = self.prepare(images, exact=pipe.exact)
                with self.precision_context():
                    out = self.forward(batch, layers)
                yield out if self.precision == "fp32" else {k: v.float() for k, v in out.items()}

    def pipeline(self, source, indices: np.ndarray | None = None, *, batch_size: int = 64):
        """The data pipeline feeding this extractor (its transform, workers, decode mode)."""
        from bench.pipeline import DataPipeline

        return DataPipeline(source, indices, batch_size=batch_size, workers=self.workers,
                            transform=getattr(self, "transform", None), device=self.device, decode=self.decode)

    def prepare(self, images, *, exact: bool = False) -> torch.Tensor:
        """A pipeline batch → model input on ``self.device``: uint8 (B, H, W, 3) goes through
        :meth:`preprocess`; an ``exact`` batch (B, 3, h, w) is already resized and is only normalised."""
        if exact:
            return self.transform.normalise(images.to(self.device, non_blocking=True))
        return self.preprocess(images).to(self.device, non_blocking=True)

    # --- identity and run resources: one declared, frozen config ------------------------------
    #: precision (part of ``cache_key()``), decode workers and JPEG decode mode; set once, when the
    #: run context creates the extractor (:func:`create_extractor`)
    config: ExtractorConfig

    @property
    def precision(self) -> str:
        return self.config.precision

    @property
    def workers(self) -> int | None:
        return self.config.workers

    @property
    def decode(self) -> str:
        return self.config.decode

    def configure(self, **changes: Any) -> Extractor:
        """A new validated config with ``changes`` (precision, workers, decode): for tests and tools
        that build an extractor by hand; the verbs declare it once through :func:`create_extractor`."""
        from bench.pipeline import check_decode

        self.config = dataclasses.replace(self.config, **{k: v for k, v in changes.items() if v is not None})
        check_decode(self.config.decode, self.device)   # gpu without CUDA: one line before any work
        return self

    def precision_context(self):
        """fp32: TF32 off (:func:`full_fp32`); bf16/fp16: autocast on the extractor's device."""
        if self.precision == "fp32":
            return full_fp32()
        return torch.autocast(self.device.type, dtype=PRECISIONS[self.precision])


#: --precision → autocast dtype (None: plain float32): the one list of precisions
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
#: --precision → the ``dtype`` entry of cache keys ("float32" as before, so fp32 keys do not move)
PRECISION_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


@dataclass(frozen=True)
class ExtractorConfig:
    """How an extractor runs, declared once and validated here (timm's ``PretrainedCfg`` style):
    ``precision`` changes the features (it is in ``cache_key()`` and every record); ``workers`` and
    ``decode`` are run resources that never do."""

    precision: str = "fp32"
    workers: int | None = None
    decode: str = "auto"

    def __post_init__(self) -> None:
        from bench.pipeline import check_decode, check_workers

        if self.precision not in PRECISIONS:
            raise BenchError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.workers is not None:
            check_workers(self.workers)
        check_decode(self.decode, None)


Extractor.config = ExtractorConfig()


def create_extractor(factory, *, weights: str | None, device: torch.device | str,
                     config: ExtractorConfig) -> Extractor:
    """A registered extractor factory's extractor, with its declared config."""
    extractor = factory(weights=weights, device=device)
    extractor.config = config
    from bench.pipeline import check_decode

    check_decode(config.decode, extractor.device)   # gpu without CUDA: one line before any work
    return extractor
