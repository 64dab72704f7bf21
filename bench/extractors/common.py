"""Machinery shared by the model-backed extractors (timm, open_clip, transformers).

:class:`ModelExtractor` holds a frozen module in eval mode, its :class:`Preprocess`, the
sha256 of its weights (computed once at load) and forward hooks on named layers, so one
forward pass returns ``pooled``, ``tokens`` and any intermediate layers together.
"""

from __future__ import annotations

import hashlib
from abc import ABCMeta, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bench.errors import BenchError
from bench.extractors.base import PRECISION_DTYPES, Extractor
from bench.extractors.transforms import Preprocess

WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")


def state_dict_sha256(module: nn.Module) -> str:
    """sha256 over (name, dtype, shape, bytes) of every state-dict entry, in name order."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


def hub_cache_dir() -> str:
    """Where huggingface_hub (used by timm, open_clip and transformers) caches downloads."""
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def first_line(exc: BaseException, limit: int = 160) -> str:
    """``Type: first line`` of an exception, for one-line errors. A message that mentions
    ``weights_only`` (torch's advice to load with ``weights_only=False``, which would run code
    from the file) is replaced by a neutral phrase."""
    text = str(exc).strip().splitlines()
    line = text[0] if text else ""
    if "weights_only" in str(exc) or "weights only" in str(exc).lower():
        line = "the file holds Python objects besides tensors, refused without running them"
    line = line if len(line) <= limit else line[:limit - 1] + "…"
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


def download_error(name: str, tried: str, exc: BaseException, *, folder: bool = False) -> BenchError:
    """ONE line: which extractor, what was tried, how to provide the weights instead."""
    what = "a local state dict (.pth/.pt/.bin/.safetensors)"
    what += " or a Hugging Face model folder" if folder else ""
    return BenchError(
        f"extractor {name!r}: could not load pretrained weights from {tried} ({first_line(exc)}); "
        f"pass --weights PATH with {what}, or pre-populate the cache {hub_cache_dir()} "
        f"(on a machine with internet access; set HF_HUB_OFFLINE=1 to skip network retries)")


def check_weights_path(name: str, weights: str, *, folder_ok: bool = False) -> Path:
    """The local weights path, or ONE line saying what is wrong with it."""
    path = Path(weights).expanduser()
    kinds = "a " + "/".join(WEIGHT_SUFFIXES) + " state dict"
    kinds += " or a Hugging Face model folder" if folder_ok else ""
    if not path.exists():
        raise BenchError(f"extractor {name!r}: weights file {str(path)!r} does not exist; "
                         f"--weights takes {kinds}")
    if path.is_dir() and not folder_ok:
        raise BenchError(f"extractor {name!r}: weights {str(path)!r} is a folder; --weights takes {kinds}")
    if path.is_file() and path.suffix not in WEIGHT_SUFFIXES:
        raise BenchError(f"extractor {name!r}: weights {str(path)!r} has suffix {path.suffix!r}; "
                         f"--weights takes {kinds}")
    return path


def _unreadable(path: Path, why: str) -> BenchError:
    return BenchError(f"weights file {str(path)!r} cannot be read: {why}; --weights takes a state dict saved by "
                      "torch.save(model.state_dict(), ...) or safetensors")


def _why_unreadable(path: Path, exc: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` refused ``path``: text, objects besides tensors, or
    a truncated / corrupt file (torch's own message is not passed on)."""
    import pickle

    with open(path, "rb") as f:
        sample = f.read(512)
    if all(32 <= b < 127 or b in b"\t\r\n" for b in sample):
        return "it is a text file, not saved weights"
    if isinstance(exc, pickle.UnpicklingError) and "weights only" in str(exc).lower():
        return "it holds Python objects besides tensors, refused without running them"
    return f"truncated or corrupt ({type(exc).__name__})"


#: keys under which training checkpoints keep the model's state dict (vdna's hub weights use
#: ``model_state_dict``; Lightning ``state_dict``; DINO / timm trainers ``model`` or ``module``)
STATE_DICT_WRAPPERS = ("model_state_dict", "state_dict", "model", "module")


def unwrap_state_dict(obj: Any) -> Any:
    """The state dict inside checkpoint wrappers (nested ones too): a wrapper is a dict whose
    :data:`STATE_DICT_WRAPPERS` key holds a dict, beside other entries (epoch, optimizer …)."""
    while isinstance(obj, dict):
        inner = next((obj[k] for k in STATE_DICT_WRAPPERS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            return obj
        obj = inner
    return obj


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors or a torch file (``weights_only=True``: tensors and plain
    containers, nothing is unpickled that could run code), unwrapping checkpoint wrappers
    (:func:`unwrap_state_dict`).

    A malformed file (empty, truncated, text, Python objects besides tensors) is one line
    saying what is wrong; the loaders' own messages are not passed on, as torch's suggests
    ``weights_only=False``, which would run whatever the file holds.
    """
    import warnings

    try:
        size = path.stat().st_size
    except OSError as exc:
        raise _unreadable(path, exc.strerror or type(exc).__name__) from None
    if size == 0:
        raise _unreadable(path, "the file is empty")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            sd: Any = load_file(str(path), device="cpu")
        except Exception as exc:  # noqa: BLE001 - SafetensorError and friends; reported in one line
            raise _unreadable(path, f"not a complete safetensors file ({first_line(exc)})") from None
    else:
        try:
            with warnings.catch_warnings():  # torch warns about plain pickles before refusing them
                warnings.filterwarnings("ignore", message="Detected pickle protocol")
                sd = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - UnpicklingError, EOFError, RuntimeError (zip) …; one line
            raise _unreadable(path, _why_unreadable(path, exc)) from None
    sd = unwrap_state_dict(sd)
    if not isinstance(sd, dict):
        raise BenchError(f"weights file {str(path)!r} does not hold a state dict")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in sd.items()}


# --------------------------------------------------------------------------- the extractor


#: adapters from a hooked module's output to the layer layout (channels on axis 1)
def nlc_to_nct(t: torch.Tensor) -> torch.Tensor:
    """(B, T, D) tokens → (B, D, T)."""
    return t.transpose(1, 2)


def lnd_to_nct(t: torch.Tensor) -> torch.Tensor:
    """(T, B, D) sequence-first tokens → (B, D, T)."""
    return t.permute(1, 2, 0)


def identity(t: torch.Tensor) -> torch.Tensor:
    return t


class ModelExtractor(Extractor, metaclass=ABCMeta):
    """A frozen backbone in eval mode; subclasses implement ``_run`` (one forward pass).

    Intermediate layers come from forward hooks registered once by :meth:`_tap` (name →
    module, output adapter) that record only while :meth:`_hooked` runs, so a ``pooled``-only
    pass costs no more than ``model(x)``. Layers are views of the activations: copy before
    modifying them in place.
    """

    library: str = ""

    def __init__(self, *, name: str, arch: str, weights: str | None, device: str | torch.device,
                 pooled: str):
        super().__init__(weights=weights, device=device)
        self.name = name
        self.arch = arch
        self.pooled_definition = pooled
        self._taps: dict[str, tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor]]] = {}
        self._active: set[str] = set()
        self._captured: dict[str, torch.Tensor] = {}
        self.model: nn.Module | None = None
        self.transform: Preprocess | None = None
        self.weights_sha256 = ""
        #: block outputs tapped besides the default layers (:meth:`_tap_blocks`), or every block
        #: output when they are default layers too (ViTs): :attr:`block_layers`
        self._block_layers: list[str] = []
        self._extra_taps: set[str] = set()

    # set-up --------------------------------------------------------------------------
    def _finish(self, model: nn.Module, transform: Preprocess) -> None:
        """Freeze ``model``, hash its weights once, move it to the device."""
        model.eval().requires_grad_(False)
        self.weights_sha256 = state_dict_sha256(model)
        self.model = model.to(self.device)
        self.transform = transform

    def _tap(self, layer: str, module: nn.Module,
             adapt: Callable[[torch.Tensor], torch.Tensor] = identity) -> None:
        def hook(_module, _inputs, output, layer=layer):
            if layer in self._active:
                self._captured[layer] = output[0] if isinstance(output, (tuple, list)) else output

        module.register_forward_hook(hook)
        self._taps[layer] = (module, adapt)

    def _tap_blocks(self, stages: Sequence[nn.Module]) -> None:
        """Tap every block of a ResNet's stages as ``layer{i}_{j}`` (vdna's names, so its range
        and DNA files fit): extra layers beside the stage outputs, never tapped by default (each
        stage's last block is that stage's output)."""
        for i, stage in enumerate(stages, start=1):
            for j, block in enumerate(stage):
                name = f"layer{i}_{j}"
                self._tap(name, block)
                self._extra_taps.add(name)
                self._block_layers.append(name)

    # the Extractor contract ------------------------------------------------------------
    @property
    def layer_names(self) -> list[str]:
        return [k for k in self._taps if k not in self._extra_taps] + self._extra_layers()

    @property
    def block_layers(self) -> list[str]:
        return list(self._block_layers)

    def _extra_layers(self) -> list[str]:
        """Layers computed from the tokens rather than hooked (``norm`` for ViTs)."""
        return ["norm"] if self.has_tokens else []

    @property
    def data_config(self) -> dict[str, Any]:
        return self.transform.data_config()

    def preprocess(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, 3) → normalised float32 (B, 3, h, w) on ``self.device``."""
        return self.transform(images, self.device)

    @torch.no_grad()
    def forward(self, batch: torch.Tensor, layers: Sequence[str] = ("pooled",)) -> dict[str, torch.Tensor]:
        self.check_layers(layers)
        want_tokens = self.has_tokens and any(k in ("tokens", "norm") for k in layers)
        inner = [k for k in layers if k not in ("pooled", "tokens", "norm")]
        pooled, tokens, acts = self._run(batch, want_tokens, inner)
        out: dict[str, torch.Tensor] = {}
        for layer in layers:
            if layer == "pooled":
                out[layer] = pooled
            elif layer == "tokens":
                out[layer] = tokens
            elif layer == "norm":
                out[layer] = nlc_to_nct(tokens)
            else:
                out[layer] = acts[layer]
        return out

    @abstractmethod
    def _run(self, batch: torch.Tensor, want_tokens: bool, layers: list[str]
             ) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, torch.Tensor]]:
        """One forward pass → (pooled (B, D), final tokens (B, T, D) or None, {layer: activation})."""

    def _hooked(self, fn: Callable[[torch.Tensor], Any], batch: torch.Tensor, layers: Sequence[str]
                ) -> tuple[Any, dict[str, torch.Tensor]]:
        """``fn(batch)`` with the hooks of ``layers`` recording → (result, {layer: adapted output})."""
        self._active, self._captured = set(layers), {}
        try:
            result = fn(batch)
            captured = self._captured
        finally:
            self._active, self._captured = set(), {}
        return result, {k: self._taps[k][1](captured[k]) for k in layers}

    def cache_key(self) -> dict[str, Any]:
        return {"name": self.name, "library": self.library, "library_version": self._library_version(),
                "torch": torch.__version__, "arch": self.arch, "weights_sha256": self.weights_sha256,
                "preprocess": self.transform.as_dict(), "pooled": self.pooled_definition,
                "dtype": PRECISION_DTYPES[self.precision]}

    def _library_version(self) -> str:
        import importlib.metadata as md

        dist = {"timm": "timm", "open_clip": "open_clip_torch", "transformers": "transformers"}[self.library]
        return md.version(dist)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, arch={self.arch!r}, weights={self.weights!r}, "
                f"device={str(self.device)!r})")
