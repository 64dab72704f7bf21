"""Concept experts for reverse probing (registered through ``bench_register_experts``).

An expert turns a DataView into groups of binary concepts per image (paper App. A):

- ``ground-truth``: the dataset's own annotations — class labels as one-hot (the paper's
  IN-1k group) and the dataset's concept vectors, one group per ``source.concept_groups``.
- ``clip-zeroshot``: an open_clip model scores each image against a list of prompts per
  concept group and keeps the best prompt if its score reaches ``threshold``, else the
  group's ``none`` (background) concept — the paper's CLIP "photo style" expert.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from typing import Any, ClassVar

import numpy as np
import torch

from bench.api import ConceptGroup, DataView, Expert
from bench.errors import BenchError, DataError

#: the paper's eight photo-style sentences (App. A, "Photography")
PHOTO_STYLE_PROMPTS = (
    "a high quality photo",
    "a noisy, grainy image",
    "a blurry image of low quality",
    "macro photography",
    "a photo with out of focus background, bokeh effect",
    "an animated picture, a vector illustration",
    "a painting",
    "a portrait",
)


class GroundTruthExpert(Expert):
    """Labels as one-hot (group ``labels``) plus the dataset's concept vectors per concept group."""

    name: ClassVar[str] = "ground-truth"
    version: ClassVar[str] = "1"
    requires: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, *, labels: bool = True, concepts: bool = True):
        self.labels = labels
        self.concepts = concepts

    def predict(self, data: DataView) -> list[ConceptGroup]:
        groups: list[ConceptGroup] = []
        src = data.source
        labels = data.labels
        if self.labels and labels is not None:
            labels = np.asarray(labels, dtype=np.int64)
            if len(labels) and labels.min() < 0:
                raise DataError(f"ground-truth: dataset {data.name!r} has negative class labels")
            names = list(src.class_names or [])
            n_cls = max(len(names), int(labels.max()) + 1 if len(labels) else 0)
            names += [f"class{c}" for c in range(len(names), n_cls)]
            onehot = np.zeros((len(labels), n_cls), dtype=bool)
            onehot[np.arange(len(labels)), labels] = True
            groups.append(ConceptGroup("labels", names, onehot))
        concepts = data.concepts
        if self.concepts and concepts is not None:
            concepts = np.asarray(concepts).astype(bool)
            names = list(src.concept_names or [f"concept{c}" for c in range(concepts.shape[1])])
            by_group = src.concept_groups or {"concepts": list(range(concepts.shape[1]))}
            for gname, members in by_group.items():
                cols = [int(c) for c in members]
                groups.append(ConceptGroup(str(gname), [names[c] for c in cols], concepts[:, cols]))
        return groups


class ClipZeroShotExpert(Expert):
    """open_clip zero-shot: one concept per prompt, top-1 per group if its score ≥ threshold.

    ``prompts`` maps a group name to a list of prompts (one concept each, named by the prompt)
    or to ``{concept: prompt or [prompts]}`` (several prompts are averaged, CLIP's prompt
    ensembling); None is the paper's photo-style group. ``score``: ``"softmax"`` (default) is
    the probability over the group's prompts with CLIP's logit scale; ``"cosine"`` is the
    paper's literal reading (unit-norm dot product), which rarely reaches 0.5 for CLIP, so
    nearly every image would fall into ``none``. ``model``/``pretrained`` are open_clip's
    (a tag, a local checkpoint file, or ``model="local-dir:/folder"``); weights are required.
    """

    name: ClassVar[str] = "clip-zeroshot"
    version: ClassVar[str] = "1"
    requires: ClassVar[frozenset[str]] = frozenset({"images"})

    def __init__(self, *, model: str = "ViT-B-32", pretrained: str | None = "openai",
                 prompts: dict[str, Any] | None = None, threshold: float = 0.5, score: str = "softmax",
                 batch_size: int = 64):
        self.model = model
        self.pretrained = pretrained
        self.prompts = prompts
        self.threshold = threshold
        self.score = score
        self.batch_size = batch_size

    # -- configuration ----------------------------------------------------------------
    def _groups(self) -> dict[str, dict[str, list[str]]]:
        """group → concept → prompts, validated."""
        raw = {"photo-style": list(PHOTO_STYLE_PROMPTS)} if self.prompts is None else self.prompts
        if not isinstance(raw, dict) or not raw:
            raise BenchError("clip-zeroshot: prompts must be a non-empty dict {group: [prompts]}")
        out: dict[str, dict[str, list[str]]] = {}
        for group, spec in raw.items():
            if isinstance(spec, dict):
                concepts = {str(c): [p] if isinstance(p, str) else [str(q) for q in p] for c, p in spec.items()}
            elif isinstance(spec, (list, tuple)):
                concepts = {str(p): [str(p)] for p in spec}
            else:
                raise BenchError(f"clip-zeroshot: prompts of group {group!r} must be a list or a dict")
            if len(concepts) < 1 or any(not ps for ps in concepts.values()):
                raise BenchError(f"clip-zeroshot: group {group!r} needs at least one concept with a prompt")
            out[str(group)] = concepts
        if self.score not in ("softmax", "cosine"):
            raise BenchError(f"clip-zeroshot: score must be 'softmax' or 'cosine', got {self.score!r}")
        return out

    def _weights_key(self) -> str:
        """model + weights identity; local files are keyed by their size and mtime too."""
        parts = [str(self.model), str(self.pretrained)]
        for path in (self.pretrained, str(self.model).removeprefix("local-dir:")):
            if isinstance(path, str) and os.path.exists(path):
                st = os.stat(path)
                parts.append(f"{path}:{st.st_size}:{st.st_mtime_ns}")
        return "|".join(parts)

    def _load(self, device: torch.device):
        """(model, preprocess, tokenizer); the last one loaded is kept for the next call."""
        key = f"{self._weights_key()}|{device}"
        if key in _MODELS:
            return _MODELS[key]
        import open_clip

        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                self.model, pretrained=self.pretrained, device=device, require_pretrained=True)
            tokenizer = open_clip.get_tokenizer(self.model)
        except Exception as exc:  # download failures, missing files, unknown names
            first = f"{type(exc).__name__}: {exc}".splitlines()[0]
            raise BenchError(f"clip-zeroshot: cannot load open_clip model {self.model!r} with weights "
                             f"{self.pretrained!r} ({first}); offline, pass pretrained=<checkpoint file> "
                             "or model='local-dir:<folder>'") from exc
        model.eval()
        _MODELS.clear()
        _MODELS[key] = (model, preprocess, tokenizer)
        return _MODELS[key]

    # -- prediction -------------------------------------------------------------------
    @torch.no_grad()
    def image_features(self, model, preprocess, data: DataView, device: torch.device) -> torch.Tensor:
        """Unit-norm CLIP image embeddings of every image in the view, with open_clip's own
        preprocessing (PIL path, as the weights expect)."""
        from PIL import Image

        feats = []
        for batch in data.images(self.batch_size):
            x = torch.stack([preprocess(Image.fromarray(np.ascontiguousarray(img))) for img in batch])
            f = model.encode_image(x.to(device))
            feats.append(torch.nn.functional.normalize(f.float(), dim=-1))
        return torch.cat(feats)

    @torch.no_grad()
    def text_features(self, model, tokenizer, prompts: list[str], device: torch.device) -> torch.Tensor:
        f = model.encode_text(tokenizer(prompts).to(device))
        return torch.nn.functional.normalize(f.float(), dim=-1)

    @torch.no_grad()
    def predict(self, data: DataView) -> list[ConceptGroup]:
        groups = self._groups()
        device = torch.device(data.device)
        model, preprocess, tokenizer = self._load(device)
        key = _data_key(self._weights_key(), data)
        if key not in _IMAGES:
            _IMAGES[key] = self.image_features(model, preprocess, data, device).cpu()
            while len(_IMAGES) > _IMAGES_SIZE:
                _IMAGES.popitem(last=False)
        _IMAGES.move_to_end(key)
        img = _IMAGES[key].to(device)
        scale = float(model.logit_scale.exp()) if hasattr(model, "logit_scale") else 100.0
        out: list[ConceptGroup] = []
        for gname, concepts in groups.items():
            txt = torch.stack([
                torch.nn.functional.normalize(self.text_features(model, tokenizer, ps, device).mean(0), dim=-1)
                for ps in concepts.values()])
            cos = img @ txt.T
            score = torch.softmax(scale * cos, dim=1) if self.score == "softmax" else cos
            out.append(ConceptGroup(gname, list(concepts) + ["none"], top1_or_none(score, self.threshold)))
        return out


def top1_or_none(score: torch.Tensor | np.ndarray, threshold: float) -> np.ndarray:
    """(n, C) scores → (n, C+1) bool: the best concept if its score ≥ threshold, else the
    last column (``none``, the paper's background class). Exactly one True per row."""
    score = torch.as_tensor(score)
    best_score, best = score.max(dim=1)
    keep = (best_score >= threshold).cpu().numpy()
    best = best.cpu().numpy()
    values = np.zeros((len(best), score.shape[1] + 1), dtype=bool)
    values[np.flatnonzero(keep), best[keep]] = True
    values[~keep, score.shape[1]] = True
    return values


#: the last loaded open_clip model, and the image embeddings of recent views: every
#: clustering seed, threshold or prompt list of a run reuses one pass over the images
_MODELS: dict[str, tuple] = {}
_IMAGES: OrderedDict[str, torch.Tensor] = OrderedDict()
_IMAGES_SIZE = 8


def _data_key(weights: str, data: DataView) -> str:
    h = hashlib.sha256(weights.encode())
    h.update(f"{data.source.name}:{data.source.revision}:{data.source.n}".encode())
    h.update(np.ascontiguousarray(data.indices, dtype=np.int64).tobytes())
    return h.hexdigest()
