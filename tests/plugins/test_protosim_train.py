"""ProtoSim end to end on tiny data: the hard switch, resume = uninterrupted run, the planted
"person" concept coming out as dataset-specific prototypes, the comparator, bad input."""

from __future__ import annotations

import pickle

import faiss
import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from bench_protosim.analysis import instance_matrix, top_images
from bench_protosim.data import Backbone, ImageTable
from bench_protosim.init import backbone_tokens, kmeans_prototypes
from bench_protosim.layer import ProtoSimLayer
from bench_protosim.method import QUICK_PARAMS, ProtoSim, ProtoSimComparator
from bench_protosim.train import TrainConfig, Trainer, read_checkpoint

from bench.api import DataView
from bench.datasets.base import ImageSource, content_revision
from bench.datasets.synth import make_synth_passnet
from bench.errors import BenchError
from bench.extractors.base import Extractor
from bench.features import FeatureStore
from bench.testing import make_tiny_view


class SmallViT(Extractor):
    """A seeded random-init timm ViT (patch 8, dynamic image size) made here, no download."""

    name = "test-vit"
    has_tokens = True

    def __init__(self, *, size: int = 32, patch: int = 8, dim: int = 48, seed: int = 0):
        super().__init__(weights=None, device="cpu")
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=size,
                                           patch_size=patch, embed_dim=dim, depth=2, num_heads=3,
                                           num_classes=0, dynamic_img_size=True).eval()
        self.size, self.patch = size, patch
        self.data_config = {"input_size": (3, size, size), "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}

    def preprocess(self, images: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255
        x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True)
        return (x - 0.5) / 0.5

    @torch.no_grad()
    def tokens(self, batch: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(batch)

    def forward(self, batch, layers=("pooled",)):
        t = self.tokens(batch)
        return {layer: t[:, 0] if layer == "pooled" else t for layer in layers}

    def cache_key(self):
        return {"name": self.name, "size": self.size, "patch": self.patch}


SMALL = dict(n_prototypes=64, epochs=3, hard_epoch=2, batch_size=16, lr=5e-4, out_dim=64, head_hidden_dim=32,
             head_bottleneck_dim=16, global_crop_size=32, local_crop_size=16, n_local_crops=2,
             n_figure_prototypes=0)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def passnet_view() -> DataView:
    return DataView(make_synth_passnet(0, n_per_source=60), SmallViT(), FeatureStore(None), batch_size=40)


def _trainer(view, tmp_path, num_workers=0, **over):
    cfg = TrainConfig.from_params({**SMALL, "epochs": 3, **over})
    return Trainer(cfg, Backbone(view.extractor, torch.device("cpu")), ImageTable.from_view(view), seed=0,
                   checkpoint_dir=tmp_path, num_workers=num_workers)


def test_loader_workers_do_not_change_the_result(passnet_view, tmp_path):
    one = _trainer(passnet_view, tmp_path / "a", epochs=1).run()
    two = _trainer(passnet_view, tmp_path / "b", epochs=1, num_workers=2).run()
    for a, b in zip(one.student.state_dict().values(), two.student.state_dict().values()):
        assert torch.equal(a, b)


def test_soft_to_hard_switch_at_the_configured_epoch(passnet_view, tmp_path, monkeypatch):
    calls: list[tuple[bool, bool]] = []
    original = ProtoSimLayer.forward

    def spy(self, z, *, hard=False, gumbel=True, **kw):
        calls.append((hard, gumbel))
        return original(self, z, hard=hard, gumbel=gumbel, **kw)

    monkeypatch.setattr(ProtoSimLayer, "forward", spy)
    trainer = _trainer(passnet_view, tmp_path, hard_epoch=2)
    result = trainer.run()
    assert [row["hard"] for row in result.history[1:]] == [False, False, True]
    # per step: teacher (soft Gumbel, always), then student on global and local crops
    per_step = [calls[i:i + 3] for i in range(0, len(calls), 3)]
    assert len(per_step) == 3 * trainer.steps
    assert all(s[0] == (False, True) for s in per_step)                            # teacher
    assert {(s[1], s[2]) for s in per_step[:2 * trainer.steps]} == {((False, True), (False, True))}
    assert {(s[1], s[2]) for s in per_step[2 * trainer.steps:]} == {((True, True), (True, True))}
    assert all(np.isfinite(row["loss"]) for row in result.history[1:])


@pytest.mark.parametrize("init", ["uniform", "kmeans"])
def test_resume_after_interrupted_epoch_equals_uninterrupted_run(passnet_view, tmp_path, init):
    full = _trainer(passnet_view, tmp_path / "full", prototype_init=init).run()

    def interrupt(epoch, it, loss):
        if epoch == 1 and it == 1:
            raise KeyboardInterrupt

    broken = _trainer(passnet_view, tmp_path / "resumed", prototype_init=init)
    broken.on_step = interrupt
    with pytest.raises(KeyboardInterrupt):
        broken.run()
    state = read_checkpoint(tmp_path / "resumed" / "checkpoint.safetensors")
    assert state["epoch"] == 0                                                   # epoch 1 never finished
    resumed = _trainer(passnet_view, tmp_path / "resumed", prototype_init=init).run()
    assert resumed.resumed_from_epoch == 0
    for (name, a), b in zip(full.student.state_dict().items(), resumed.student.state_dict().values()):
        assert torch.equal(a, b), name
    for a, b in zip(full.teacher.state_dict().values(), resumed.teacher.state_dict().values()):
        assert torch.equal(a, b)
    assert [r["loss"] for r in full.history] == [r["loss"] for r in resumed.history]
    # a finished run resumes to itself without training; other settings are refused
    again = _trainer(passnet_view, tmp_path / "full", prototype_init=init).run()
    assert again.resumed_from_epoch == 2 and torch.equal(again.student.protosim.prototypes,
                                                         full.student.protosim.prototypes)
    with pytest.raises(BenchError, match="different run"):
        _trainer(passnet_view, tmp_path / "full", n_prototypes=32, prototype_init=init).run()


class _Payload:
    """Unpickling this runs ``os.system`` and leaves a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_checkpoints_are_never_unpickled_and_identity_comes_first(passnet_view, tmp_path, caplog):
    marker = tmp_path / "pwned"
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    torch.save({"fingerprint": _Payload(marker), "epoch": 0}, legacy / "checkpoint.pt")    # the old format
    with caplog.at_level("WARNING", logger="bench.protosim"):
        result = _trainer(passnet_view, legacy, epochs=1).run()
    assert not marker.exists() and result.resumed_from_epoch == -1
    assert len([r for r in caplog.records if "old pickle format" in r.getMessage()]) == 1
    fresh = _trainer(passnet_view, tmp_path / "fresh", epochs=1).run()                    # a fresh start, exactly
    assert all(torch.equal(a, b) for a, b in zip(fresh.student.state_dict().values(),
                                                 result.student.state_dict().values()))
    # a pickle under the new name is not a safetensors file: one line, nothing runs
    placed = tmp_path / "placed"
    placed.mkdir()
    (placed / "checkpoint.safetensors").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(BenchError, match=r"cannot read checkpoint .* delete it or use resume=False"):
        _trainer(passnet_view, placed, epochs=1).run()
    assert not marker.exists()
    # another run's checkpoint is refused from its header: its tensors (wrong shapes here) are never used
    with pytest.raises(BenchError, match="different run"):
        _trainer(passnet_view, legacy, epochs=1, n_prototypes=32).run()
    state = read_checkpoint(legacy / "checkpoint.safetensors")
    assert state["epoch"] == 0 and state["seed"] == 0 and isinstance(state["optimizer"]["state"], dict)
    assert all(isinstance(k, int) for k in state["optimizer"]["state"])
    assert isinstance(state["optimizer"]["param_groups"][0]["betas"], tuple)
    assert state["history"] == result.history


def test_kmeans_init_makes_the_first_assignment_the_spherical_kmeans_one(passnet_view, tmp_path):
    """Known answer: with unit centroids scaled to one norm, argmax of the raw logits z·P is the
    nearest centroid of z/‖z‖, i.e. faiss' spherical k-means assignment of the tokens."""
    table = ImageTable.from_view(passnet_view)
    backbone = Backbone(passnet_view.extractor, torch.device("cpu"))
    protos = kmeans_prototypes(backbone, table, 32, seed=0)
    tokens = backbone_tokens(backbone, table, np.arange(table.n), 64)
    norms = protos.norm(dim=1)
    assert torch.allclose(norms, norms.mean(), rtol=1e-5)
    assert np.isclose(norms.mean().item(), np.linalg.norm(tokens, axis=1).mean(), rtol=1e-5)
    layer = ProtoSimLayer(32, tokens.shape[1])
    with torch.no_grad():
        layer.prototypes.copy_(protos)
    ours = layer.assign(torch.from_numpy(tokens)).numpy()
    index = faiss.IndexFlatIP(tokens.shape[1])
    index.add(np.ascontiguousarray((protos / norms[:, None]).numpy()))
    unit = tokens / np.linalg.norm(tokens, axis=1, keepdims=True)
    _, ref = index.search(np.ascontiguousarray(unit, dtype=np.float32), 1)
    assert (ours == ref[:, 0]).mean() > 0.999                     # ties in float32 aside
    # the training starts there: epoch -1 of the history is these centroids' diversity
    start = _trainer(passnet_view, tmp_path, n_prototypes=32, epochs=1, hard_epoch=1, prototype_init="kmeans").run()
    assert start.history[0]["diversity"] == pytest.approx(layer.diversity(), rel=1e-6)


def test_kmeans_init_needs_as_many_tokens_as_prototypes(passnet_view):
    small = passnet_view.subset(np.arange(4))                   # 4 images × 17 tokens = 68 < 100
    with pytest.raises(BenchError, match=r"prototype_init='kmeans' needs at least n_prototypes=100 tokens"):
        ProtoSim(**{**SMALL, "n_prototypes": 100, "batch_size": 4, "prototype_init": "kmeans"}).fit(small, seed=0)
    with pytest.raises(BenchError, match="prototype_init must be"):
        ProtoSim(**{**SMALL, "prototype_init": "random"}).fit(passnet_view, seed=0)


def test_quick_preset_finds_the_planted_people_on_synth_passnet():
    """The issue's check on the embedded dataset, with the offline default backbone: the top images
    of the most ImageNet-like-specific prototypes show people far above their base rate."""
    from bench.extractors.builtin import tiny_vit

    view = DataView(make_synth_passnet(0), tiny_vit(), FeatureStore(None), batch_size=64)
    st = ProtoSim(**{**QUICK_PARAMS, "n_figure_prototypes": 0}).fit(view, seed=0).summary_.statistics
    assert st["planted_base_rate"] < 0.4 and st["planted_top_images_share"] >= 0.8


def _planted_source(n: int = 60, seed: int = 0) -> ImageSource:
    """Two groups from one generator (noisy backgrounds, a random coloured square); only group 0
    has the planted "person": a magenta body with a skin-coloured head, in half its images."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 80, size=(2 * n, 32, 32, 3)).astype(np.uint8)
    images += rng.integers(0, 120, size=(2 * n, 1, 1, 3)).astype(np.uint8)
    for i in range(2 * n):
        y, x = rng.integers(0, 20, 2)
        images[i, y:y + 10, x:x + 10] = rng.integers(0, 256, 3)
    person = np.zeros(2 * n, dtype=bool)
    person[rng.choice(n, n // 2, replace=False)] = True
    for i in np.flatnonzero(person):
        y, x = 8 * rng.integers(0, 3), 8 * rng.integers(0, 4)
        images[i, y:y + 8, x:x + 8] = (230, 190, 150)
        images[i, y + 8:y + 16, x:x + 8] = (230, 20, 230)
    return ImageSource(name="planted", revision=content_revision(images), n=2 * n, array=images,
                       concepts=person[:, None], concept_names=["person"],
                       groups=np.repeat([0, 1], n), group_names=["with-people", "without"])


def test_planted_person_comes_out_as_dataset_specific_prototypes(tmp_path):
    """The paper's case study in miniature: two datasets alike except that only one has people.

    The most specific prototype of the group with people is the person: it fires in most of
    the 30 person images, in no image of the other group, and its top images all show a person.
    """
    view = DataView(_planted_source(), SmallViT(), FeatureStore(None), batch_size=40)
    est = ProtoSim(**{**SMALL, "n_prototypes": 1024, "epochs": 1, "hard_epoch": 1}).fit(view, seed=0)
    a = est.summary_.artefacts
    person = view.concepts[:, 0]
    best = a["specific_prototypes"]["with-people"][0]
    assert a["group_image_counts"][:, best].tolist()[1] == 0 and a["group_image_counts"][0, best] >= 20
    assert person[top_images(instance_matrix(a), best, 6)].all()


def test_fit_on_synth_passnet(passnet_view, tmp_path):
    est = ProtoSim(**{**SMALL, "n_figure_prototypes": 2, "n_top_images": 4}, checkpoint_dir=str(tmp_path))
    est.fit(passnet_view, seed=0)
    s = est.summary_
    n = len(passnet_view)
    assert s.codes.shape == (n,) and s.embedding.shape == (n, 48) and np.isfinite(s.embedding).all()
    st = s.statistics
    assert st["n_groups"] == 2 and st["n_shared"] + st["n_specific"] == st["n_prototypes_used"]
    assert st["n_specific_objects"] > 0 and all(isinstance(v, float) for v in st.values())
    # the planted concept (notes["planted"]): share of people in the top images, table per prototype
    planted = s.artefacts["tables"]["protosim_planted"]
    hits, seen = sum(r["with_concept"] for r in planted), sum(r["top_images"] for r in planted)
    assert seen > 0 and st["planted_top_images_share"] == hits / seen
    person = passnet_view.concepts[:, passnet_view.source.concept_names.index("person:person")]
    assert st["planted_base_rate"] == person[passnet_view.groups == 0].mean()
    # counts are consistent: every image has one class token and 16 patch tokens
    assert s.artefacts["instance_counts_data"].sum() == n * 17 and s.artefacts["group_cls_counts"].sum() == n
    assert s.artefacts["group_spatial_counts"].sum() == n * 16
    assert s.artefacts["token_position_counts"].shape == (17, 64)
    assert s.artefacts["group_image_counts"].sum(0).max() <= n
    figures = s.artefacts["figures"]
    assert len(figures) == 3 and all(open(f, "rb").read(4) == b"\x89PNG" for f in figures)
    rows = s.artefacts["tables"]["protosim_training"]
    assert [r["epoch"] for r in rows] == [-1, 0, 1, 2] and rows[-1]["hard"] is True
    # any prototype on demand, and the fitted method pickles without the data
    path = est.save_prototype_grid([0, int(s.codes[0])], tmp_path / "any.png", n_images=3)
    assert path.exists()
    clone = pickle.loads(pickle.dumps(est))
    assert np.array_equal(clone.summary_.codes, s.codes)


def test_comparator_sees_objects_and_scenes_as_more_different_than_two_halves(passnet_view):
    comp = ProtoSimComparator(**{**SMALL, "epochs": 1, "hard_epoch": 1})
    is_scene = passnet_view.source.notes["is_scene"][passnet_view.indices]   # both sources mix the kinds
    objects, scenes = np.flatnonzero(~is_scene), np.flatnonzero(is_scene)
    between = comp.compare(passnet_view.subset(objects[:30]), passnet_view.subset(scenes[:30]), seed=0)
    null = comp.compare(passnet_view.subset(objects[:30]), passnet_view.subset(objects[30:]), seed=0)
    assert 0 <= null.score < between.score <= 1
    assert between.statistics["specific_share"] > null.statistics["specific_share"]
    assert set(between.statistics) >= {"jensen_shannon_bits", "specific_share", "n_shared"}
    share = ProtoSimComparator(**{**SMALL, "epochs": 1, "hard_epoch": 1}, difference="specific_share")
    again = share.compare(passnet_view.subset(objects[:30]), passnet_view.subset(scenes[:30]), seed=0)
    assert again.score == pytest.approx(between.statistics["specific_share"])


def test_single_dataset_and_balanced_sampling(tmp_path):
    src = make_synth_passnet(1, n_per_source=20).subset(np.arange(20))
    one = DataView(src, SmallViT(), FeatureStore(None))
    one.source.groups = None
    est = ProtoSim(**{**SMALL, "epochs": 1}).fit(one, seed=0)
    assert est.summary_.statistics["n_groups"] == 1 and "n_specific" not in est.summary_.statistics
    assert "planted_top_images_share" not in est.summary_.statistics       # one group: nothing is specific

    big = make_synth_passnet(2, n_per_source=40)
    skewed = DataView(big, SmallViT(), FeatureStore(None)).subset(np.r_[np.arange(40), 40 + np.arange(4)])
    trainer = _trainer(skewed, tmp_path, balanced=True)
    torch.manual_seed(0)
    rows = trainer._epoch_rows(0).flatten().numpy()
    share = (ImageTable.from_view(skewed).groups[rows] == 1).mean()
    assert 0.3 < share < 0.7                                   # 4 of 44 images, drawn half the time


def test_bad_input_gives_one_line_errors(passnet_view):
    with pytest.raises(BenchError, match="needs a ViT extractor"):
        ProtoSim(**SMALL).fit(make_tiny_view(), seed=0)
    for bad in ({"n_prototypes": 0}, {"lr_schedule": "warm"}, {"specific_threshold": 1.5},
                {"stats_weights": "ema"}, {"local_crop_scale": (0.5, 0.1)}):
        with pytest.raises(BenchError) as err:
            ProtoSim(**{**SMALL, **bad}).fit(passnet_view, seed=0)
        assert "\n" not in str(err.value)
    with pytest.raises(BenchError, match=r"K=100000 needs about .* GiB"):
        ProtoSim(**{**SMALL, "n_prototypes": 100_000, "memory_limit_gb": 0.05}).fit(passnet_view, seed=0)
    with pytest.raises(BenchError, match="empty"):
        ProtoSimComparator(**SMALL).compare(passnet_view.subset([]), passnet_view, seed=0)


def test_plugin_registers_both_roles():
    import bench.plugins

    regs = bench.plugins.load()
    assert regs.summarisers.get("protosim") is ProtoSim
    assert regs.comparators.get("protosim") is ProtoSimComparator
    assert ProtoSim().get_params()["n_prototypes"] == 8192 and ProtoSim().epochs == 20
    ProtoSim().set_params(**ProtoSim.quick_params)
