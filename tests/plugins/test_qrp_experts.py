"""QRP concept experts: ground truth, and CLIP zero-shot through a tiny random open_clip model
written to a local folder in the test (the real loading path, no download)."""

from __future__ import annotations

import json

import numpy as np
import open_clip
import pytest
import torch
from bench_qrp.experts import PHOTO_STYLE_PROMPTS, ClipZeroShotExpert, GroundTruthExpert, top1_or_none
from bench_qrp.method import QRP
from PIL import Image

from bench.errors import BenchError
from bench.testing import make_tiny_view

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A ``local-dir:`` open_clip folder (config + random weights saved as a checkpoint) and,
    as the oracle, its softmax / cosine scores of the tiny view against the photo-style
    prompts, computed by hand with open_clip's own API."""
    folder = tmp_path_factory.mktemp("tiny-clip")
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP}))
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}", load_weights=False)
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    model.eval()
    view = make_tiny_view()
    tok = open_clip.get_tokenizer(f"local-dir:{folder}")
    with torch.no_grad():
        imgs = torch.stack([preprocess(Image.fromarray(view.source.image(int(i)))) for i in view.indices])
        img = torch.nn.functional.normalize(model.encode_image(imgs), dim=-1)
        txt = torch.nn.functional.normalize(model.encode_text(tok(list(PHOTO_STYLE_PROMPTS))), dim=-1)
        cos = img @ txt.T
        proba = torch.softmax(model.logit_scale.exp() * cos, dim=1)
    return {"model": f"local-dir:{folder}", "view": view, "proba": proba.numpy(), "cos": cos.numpy(),
            "cut": float(np.median(proba.numpy().max(1)))}


def test_ground_truth_expert_groups():
    view = make_tiny_view()
    groups = GroundTruthExpert().predict(view)
    assert [g.name for g in groups] == ["labels", "class", "half"]
    labels = groups[0]
    assert labels.concept_names == view.source.class_names
    assert np.array_equal(labels.values.argmax(1), view.labels) and (labels.values.sum(1) == 1).all()
    assert np.array_equal(groups[2].values[:, 0], view.concepts[:, 3])
    sub = view.subset(np.arange(10, 20))
    assert np.array_equal(GroundTruthExpert().predict(sub)[1].values, view.concepts[10:20, :3])
    assert [g.name for g in GroundTruthExpert(labels=False).predict(view)] == ["class", "half"]


def test_top1_or_none_threshold_rule():
    score = np.array([[0.7, 0.2, 0.1], [0.4, 0.35, 0.25], [0.1, 0.1, 0.8]])
    expected = np.array([[1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0]], dtype=bool)
    assert np.array_equal(top1_or_none(score, 0.5), expected)
    assert top1_or_none(score, 0.0)[:, :3].argmax(1).tolist() == [0, 0, 2]
    assert top1_or_none(score, 1.01)[:, 3].all()


def test_clip_expert_matches_open_clip_by_hand(tiny_clip):
    view, proba, model_name = tiny_clip["view"], tiny_clip["proba"], tiny_clip["model"]
    (group,) = ClipZeroShotExpert(model=model_name, pretrained=None, threshold=0.0).predict(view)
    assert group.name == "photo-style"
    assert group.concept_names == list(PHOTO_STYLE_PROMPTS) + ["none"]
    assert group.values.shape == (len(view), 9) and (group.values.sum(1) == 1).all()
    assert np.array_equal(group.values[:, :8].argmax(1), proba.argmax(1)) and not group.values[:, 8].any()

    # the weights really came from the checkpoint: the threshold splits the view where the oracle does
    cut = tiny_clip["cut"]
    (half,) = ClipZeroShotExpert(model=model_name, pretrained=None, threshold=cut).predict(view)
    assert np.array_equal(half.values[:, 8], proba.max(1) < cut)
    assert 0 < half.values[:, 8].sum() < len(view)
    (cos,) = ClipZeroShotExpert(model=model_name, pretrained=None, score="cosine").predict(view)
    assert np.array_equal(cos.values[:, 8], tiny_clip["cos"].max(1) < 0.5)


def test_clip_expert_custom_prompts_and_errors(tiny_clip, tmp_path):
    view, model_name = tiny_clip["view"], tiny_clip["model"]
    prompts = {"colour": {"red": ["a red blob", "something red"], "blue": "a blue blob"}, "kind": ["a", "b"]}
    groups = ClipZeroShotExpert(model=model_name, pretrained=None, prompts=prompts,
                                threshold=0.0).predict(view)
    assert [(g.name, g.concept_names) for g in groups] == [("colour", ["red", "blue", "none"]),
                                                           ("kind", ["a", "b", "none"])]
    with pytest.raises(BenchError, match="prompts"):
        ClipZeroShotExpert(model=model_name, prompts={"x": 3}).predict(view)
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP}))
    with pytest.raises(BenchError, match="cannot load open_clip model") as err:   # config but no weights
        ClipZeroShotExpert(model=f"local-dir:{tmp_path}", pretrained=None).predict(view)
    assert "\n" not in str(err.value)


def test_qrp_with_clip_expert_in_the_breakdown(tiny_clip):
    qrp = QRP(n_clusters=6, n_clusterings=1, epochs=20, milestones=(12, 16),
              experts=("ground-truth", "clip-zeroshot"),
              expert_params={"clip-zeroshot": {"model": tiny_clip["model"], "pretrained": None,
                                               "threshold": tiny_clip["cut"]}})
    s = qrp.fit(tiny_clip["view"], seed=0).summary_
    rows = s.artefacts["tables"]["qrp_expert_breakdown"]
    assert [r["added"] for r in rows] == ["ground-truth/labels", "ground-truth/class", "ground-truth/half",
                                          "clip-zeroshot/photo-style"]
    assert rows[-1]["n_concepts"] == 3 + 3 + 1 + 9
    assert s.statistics["qrp_nmi"] == rows[-1]["nmi"]
