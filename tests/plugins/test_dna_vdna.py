"""DNA's ``vdna`` preset: vdna 0.1.1's taps, ranges, bins and EMD.

The preset is checked twice: against a computation by hand (numpy) on a small ResNet, always,
and against vdna itself on a ResNet-50 when vdna is installed. vdna is not in the ``test``
extra: it requires opencv-python (a large wheel bench never uses; vdna imports it only for a
resizer it does not use by default), so install it with ``pip install --no-deps vdna==0.1.1``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from bench_dna import Ranges, compute_ranges
from bench_dna.plugin import VDNA_PRESET, DNAComparator, _ranges_for

from bench import plugins
from bench.api import Summariser, tags_of
from bench.errors import BenchError
from bench.extractors.timm_models import RandResNet50Extractor
from bench.factory import create_method, create_view, parse_setting, resolve_settings
from bench.testing import make_tiny_source

#: a ResNet-50 with one bottleneck per stage: 4 block outputs, 3,840 neurons
SMALL = {"layers": [1, 1, 1, 1]}


def _settings(*texts: str) -> dict:
    return resolve_settings(plugins.load(), [parse_setting(t) for t in texts], ["dna"])["dna"]


# --------------------------------------------------------------------------- the preset


def test_vdna_preset_expands_into_plain_parameters_for_both_roles():
    params = _settings("dna.preset=vdna")
    assert params["summariser"] == VDNA_PRESET
    assert params["comparator"] == {**VDNA_PRESET, "distance": "emd"}
    assert VDNA_PRESET == {"layers": "blocks", "bins": 1000, "range_mode": "zero", "range_scale": 1.2,
                           "sample": "positions", "precision": "float64"}
    methods = create_method(plugins.load(), "dna", params=params)
    assert methods["comparator"].get_params()["layers"] == "blocks"   # recorded as plain values
    assert "preset" not in methods["comparator"].get_params()


def test_explicit_settings_override_the_preset_whatever_their_order():
    for order in (("dna.bins=50", "dna.preset=vdna"), ("dna.preset=vdna", "dna.bins=50")):
        params = _settings(*order)
        assert params["comparator"]["bins"] == params["summariser"]["bins"] == 50
        assert params["comparator"]["range_mode"] == "zero"
    assert "summariser" not in _settings("dna.comparator.preset=vdna")


def test_unknown_preset_and_malformed_preset_tags_are_one_line_errors():
    with pytest.raises(BenchError, match=r"^--set dna.preset=vdnaa: dna has no preset 'vdnaa'; presets: vdna$"):
        _settings("dna.preset=vdnaa")
    with pytest.raises(BenchError, match="has no named presets"):
        resolve_settings(plugins.load(), [parse_setting("kmeans.preset=vdna")], ["kmeans"])

    class Bad(Summariser):
        presets = {"x": {"nope": 1}}

        def __init__(self, *, k: int = 1):
            self.k = k

    with pytest.raises(BenchError, match=r"tag 'presets' sets unknown constructor parameter\(s\) \['nope'\]"):
        tags_of(Bad)
    assert tags_of(DNAComparator).presets["vdna"]["layers"] == "blocks"


def test_blocks_layers_need_an_extractor_that_declares_them():
    from bench.extractors.pixels import PixelsExtractor

    view = create_view(make_tiny_source(6, size=16), PixelsExtractor(size=8))
    with pytest.raises(BenchError, match="declares no block outputs for layers='blocks'"):
        DNAComparator(**DNAComparator.presets["vdna"]).compare(view, view)


# --------------------------------------------------------------------------- ranges files


def test_a_ranges_file_keeps_its_own_convention(tmp_path):
    """``range_mode`` / ``range_scale`` apply to measured ranges: a file's numbers were measured
    for the convention it records (vdna's files record none: vdna's, ×1.2 about zero)."""
    rng = np.random.default_rng(0)
    mins = {"L": rng.normal(size=5) - 1}
    maxs = {"L": mins["L"] + 2}
    ours = tmp_path / "ours.json"
    ours.write_text(json.dumps(Ranges(mins, maxs, mode="zero", scale=1.5).to_json()))
    vdna_style = tmp_path / "vdna.json"
    vdna_style.write_text(json.dumps({key: {"L": {str(i): float(v) for i, v in enumerate(d["L"])}}
                                      for key, d in (("mins_per_neuron", mins), ("maxs_per_neuron", maxs))}))
    m = DNAComparator()   # default range_mode "centre"
    for path, scale in ((ours, 1.5), (vdna_style, 1.2)):
        r, label, _ = _ranges_for(m, str(path), None, ["L"], 0)
        assert (label, r.mode, r.scale) == ("file", "zero", scale)
        np.testing.assert_array_equal(r.bounds("L")[0], mins["L"] * scale)


# --------------------------------------------------------------------------- against a hand computation


def _block_outputs(model: torch.nn.Module, x: torch.Tensor) -> list[np.ndarray]:
    """Every bottleneck's output, by running the blocks one after the other (no hooks):
    float64 (N, C, H·W)."""
    out = []
    with torch.no_grad():
        h = model.maxpool(model.act1(model.bn1(model.conv1(x))))
        for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
            for block in stage:
                h = block(h)
                out.append(h.flatten(2).double().numpy())
    return out


def _hand_emd(acts_a: list[np.ndarray], acts_b: list[np.ndarray], bins: int = 1000) -> float:
    """vdna's recipe: ranges = per-neuron min / max of A, ×1.2 about zero; z = (x − μ)/σ clamped
    to [−1, 1]; ``bins`` equal bins (the top edge in the last); EMD of normalised histograms;
    mean over all neurons of all layers."""
    def hist(x, mu, sigma):
        z = np.clip((x - mu[None, :, None]) / sigma[None, :, None], -1, 1)
        idx = np.minimum(np.floor((z + 1) * bins / 2), bins - 1).astype(np.int64)
        counts = np.zeros((x.shape[1], bins))
        for c in range(x.shape[1]):
            counts[c] = np.bincount(idx[:, c].ravel(), minlength=bins)
        return counts / counts.sum(axis=1, keepdims=True)

    emds = []
    for a, b in zip(acts_a, acts_b):
        lo, hi = 1.2 * a.min(axis=(0, 2)), 1.2 * a.max(axis=(0, 2))
        mu, sigma = (lo + hi) / 2, (hi - lo) / 2 + 1e-8
        emds.append(np.abs(np.cumsum(hist(a, mu, sigma) - hist(b, mu, sigma), axis=1)).sum(axis=1))
    return float(np.concatenate(emds).mean())


def test_vdna_preset_equals_a_hand_computation_on_a_small_resnet():
    ext = RandResNet50Extractor(model_kwargs=SMALL)
    a, b = make_tiny_source(5, size=224, seed=0, name="A"), make_tiny_source(4, size=224, seed=1, name="B")
    comp = create_method(plugins.load(), "dna", params=_settings("dna.preset=vdna"))["comparator"]
    got = comp.compare(create_view(a, ext), create_view(b, ext))
    assert list(got.detail["per_layer"]) == ["layer1_0", "layer2_0", "layer3_0", "layer4_0"]
    want = _hand_emd(_block_outputs(ext.model, ext.preprocess(a.array)),
                     _block_outputs(ext.model, ext.preprocess(b.array)))
    assert got.score == pytest.approx(want, rel=1e-9) and want > 1


# --------------------------------------------------------------------------- against vdna itself


def test_vdna_preset_reproduces_vdna_on_a_resnet50(tmp_path, monkeypatch):
    """vdna 0.1.1's ``rand_resnet50`` fed our seeded ResNet-50 and ranges measured on A (its hub
    download replaced by local files): bench's histograms equal vdna's bin for bin, and the
    preset's score equals ``vdna.EMD`` to 1e-6 relative."""
    vdna = pytest.importorskip("vdna")
    import vdna.networks.random_resnet50 as vdna_resnet

    a, b = make_tiny_source(5, size=224, seed=0, name="A"), make_tiny_source(4, size=224, seed=1, name="B")
    seeded = RandResNet50Extractor()
    weights, ranges_file = tmp_path / "weights.pth", tmp_path / "activation_ranges.json"
    torch.save({"model_state_dict": seeded.model.state_dict(), "epoch": 0}, weights)  # vdna's hub layout
    ext = RandResNet50Extractor(weights=str(weights))
    assert ext.weights_sha256 == seeded.weights_sha256
    view_a, view_b = create_view(a, ext), create_view(b, ext)
    r = compute_ranges(view_a, ext.block_layers)
    ranges_file.write_text(json.dumps({key: {k: {str(i): float(v) for i, v in enumerate(d[k])} for k in d}
                                       for key, d in (("mins_per_neuron", r.mins), ("maxs_per_neuron", r.maxs))}))

    hub = {"Random/rand_resnet50/weights.pth": str(weights),
           "Random/rand_resnet50/activation_ranges.json": str(ranges_file)}
    monkeypatch.setattr(vdna_resnet, "hf_hub_download", lambda repo_id, filename, **kw: hub[filename])
    # vdna's ResNet moves every batch with .cuda(device=input.device), which refuses a CPU device
    monkeypatch.setattr(torch.Tensor, "cuda", lambda t, device=None, non_blocking=False, **kw:
                        t.to(device, non_blocking=non_blocking))
    proc = vdna.VDNAProcessor()
    made = [proc.make_vdna(source=list(s.array), feat_extractor_name="rand_resnet50", device="cpu",
                           num_workers=0, verbose=False) for s in (a, b)]
    want = float(vdna.EMD(*made))

    params = _settings("dna.preset=vdna", f"dna.ranges={ranges_file}")
    methods = create_method(plugins.load(), "dna", params=params)
    summary = methods["summariser"].fit(view_a)
    for layer, counts in made[0].data.items():
        assert torch.equal(summary.dna_.counts[layer].cpu(), counts.cpu().to(torch.int64)), layer
    got = methods["comparator"].compare(view_a, view_b).score
    assert got == pytest.approx(want, rel=1e-6) and want > 1
