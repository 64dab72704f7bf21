"""DNA plugin: histograms vs the per-channel histc oracle, EMD vs scipy, FD closed forms, Gaussians,
save / load, neuron selection, image-level distances, the harness contract and its errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from bench_dna import (
    DNABuilder,
    HistogramDNA,
    Ranges,
    aggregate,
    build_from_view,
    compute_ranges,
    distance,
    emd_per_neuron,
    fd_per_layer,
    frechet_distance,
    histogram_fast,
    histogram_histc,
    image_emd,
    load_dna,
    nfd_per_neuron,
    rank_from_labels,
    rank_from_views,
    save_dna,
    select_neurons,
)
from bench_dna import histogram as hist_module
from bench_dna.distances import emd_rows
from bench_dna.dna import range_pass
from bench_dna.histogram import RangeAccumulator, as_channels
from bench_dna.plugin import DNAComparator, DNASummariser
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import wasserstein_distance

from bench.api import DataView
from bench.baselines import frechet_distance_sqrtm
from bench.conformance import method_checks
from bench.errors import BenchError, DataError
from bench.extractors.base import Extractor
from bench.features import FeatureStore
from bench.testing import make_tiny_source, make_tiny_view

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
#: CPU binning back-ends: torch everywhere, the fused numba kernel where numba is installed
CPU_BACKENDS = ["torch"] + (["numba"] if hist_module.numba is not None else [])


class TokenNet(Extractor):
    """A seeded two-block token network (patch embedding + CLS), standing in for a ViT.

    Computes in float64 and returns float32, so its activations do not depend on how the
    images are batched (float32 matmul kernels may round differently for other batch sizes).
    """

    name = "test-tokens"
    has_tokens = True

    def __init__(self, *, weights: str | None = None, device="cpu", dim: int = 6, patch: int = 4, seed: int = 0):
        super().__init__(weights=weights, device=device)
        torch.manual_seed(seed)
        self.patch, self.dim, self.seed = patch, dim, seed
        self.model = torch.nn.ModuleDict({"embed": torch.nn.Linear(3 * patch * patch, dim),
                                          "block": torch.nn.Linear(dim, dim)}).double().eval()

    def preprocess(self, images):
        return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(255.0)

    def forward(self, batch, layers=("pooled",)):
        p = torch.nn.functional.unfold(batch.double(), self.patch, stride=self.patch).transpose(1, 2)  # (B, T, 3p²)
        tok = self.model["embed"](p)
        tok = torch.cat([tok.mean(dim=1, keepdim=True), tok], dim=1)  # CLS first
        deep = torch.nn.functional.gelu(self.model["block"](tok)) + tok
        table = {"block0": tok.transpose(1, 2), "block1": deep.transpose(1, 2), "tokens": deep,
                 "pooled": deep[:, 0]}
        return {k: table[k].float() for k in layers}

    @property
    def layer_names(self):
        return ["block0", "block1"]

    def cache_key(self):
        return {"name": self.name, "dim": self.dim, "patch": self.patch, "seed": self.seed}


def token_view(n: int = 24, batch_size: int = 8, seed: int = 0, **kw) -> DataView:
    return DataView(make_tiny_source(n, seed=seed, **kw), TokenNet(), FeatureStore(None), batch_size=batch_size)


def random_ranges(c: int, rng: np.random.Generator, mode: str = "centre", layer: str = "L") -> Ranges:
    lo = rng.normal(size=c) - 1.0
    hi = lo + rng.uniform(0.1, 3.0, size=c)
    return Ranges({layer: lo}, {layer: hi}, mode=mode, scale=1.2)


# --------------------------------------------------------------------------- histograms


@pytest.mark.parametrize("device, backend", [(d, "torch") for d in DEVICES] + [("cpu", b) for b in CPU_BACKENDS[1:]])
@pytest.mark.parametrize("mode", ["centre", "zero"])
@pytest.mark.parametrize("bins", [7, 1000])
def test_fast_histogram_identical_to_per_channel_histc(device, backend, mode, bins):
    rng = np.random.default_rng(bins)
    c = 9
    ranges = random_ranges(c, rng, mode)
    mu, sigma = ranges.norm("L", device)
    x = torch.from_numpy(rng.normal(scale=2.0, size=(5, c, 40)).astype(np.float32)).to(device)
    # values exactly on range ends and far outside them land in the edge bins
    a, b = ranges.bounds("L")
    x[0, :, 0] = torch.from_numpy(a.astype(np.float32))
    x[0, :, 1] = torch.from_numpy(b.astype(np.float32))
    x[0, :, 2] = 1e6
    x[0, :, 3] = -1e6
    fast = histogram_fast(x, mu, sigma, bins, backend=backend)[0]
    slow = histogram_histc(x, mu, sigma, bins)
    assert torch.equal(fast, slow)
    assert int(fast.sum()) == x.shape[0] * x.shape[2] * c


@settings(max_examples=40, deadline=None)
@given(b=st.integers(1, 4), c=st.integers(1, 5), p=st.integers(1, 30), bins=st.integers(2, 300),
       scale=st.floats(1e-3, 1e3), block=st.integers(1, 200), seed=st.integers(0, 2**16))
def test_fast_histogram_property_matches_histc(b, c, p, bins, scale, block, seed):
    rng = np.random.default_rng(seed)
    ranges = random_ranges(c, rng)
    mu, sigma = ranges.norm("L")
    x = torch.from_numpy((rng.normal(size=(b, c, p)) * scale).astype(np.float32))
    group = torch.from_numpy(rng.integers(0, 3, size=b))
    for backend in CPU_BACKENDS:
        out = histogram_fast(x, mu, sigma, bins, group=group, n_groups=3, block=block, backend=backend)
        for g in range(3):
            assert torch.equal(out[g], histogram_histc(x[group == g], mu, sigma, bins))


def test_grouped_histograms_are_per_group_histc():
    rng = np.random.default_rng(1)
    ranges = random_ranges(4, rng)
    mu, sigma = ranges.norm("L")
    x = torch.from_numpy(rng.normal(size=(6, 4, 10)).astype(np.float32))
    group = torch.tensor([0, 2, 1, 0, 2, 2])
    out = histogram_fast(x, mu, sigma, 50, group=group, n_groups=3)
    for g in range(3):
        assert torch.equal(out[g], histogram_histc(x[group == g], mu, sigma, 50))


def test_layouts_token_and_conv_and_pooled():
    x = torch.arange(2 * 3 * 5, dtype=torch.float32).reshape(2, 3, 5)
    assert torch.equal(as_channels(x.transpose(1, 2), "tokens"), x)  # extractor tokens are (B, T, D)
    assert as_channels(torch.zeros(2, 4, 3, 3), "conv").shape == (2, 4, 9)
    assert as_channels(torch.zeros(2, 7), "pooled").shape == (2, 7, 1)


def test_dna_is_batch_size_independent_and_counts_every_token():
    v8, v5 = token_view(batch_size=8), token_view(batch_size=5)
    ranges = compute_ranges(v8, ["block0", "block1"])
    d8 = build_from_view(v8, layers=["block0", "block1"], ranges=ranges).histogram()
    d5 = build_from_view(v5, layers=["block0", "block1"], ranges=ranges).histogram()
    assert all(torch.equal(d8.counts[k], d5.counts[k]) for k in d8.layers)
    tokens = (16 // 4) ** 2 + 1  # 16×16 images, 4×4 patches, plus CLS
    assert (d8.counts["block0"].sum(dim=1) == 24 * tokens).all()
    means = build_from_view(v8, layers=["block1"], ranges=ranges, sample="image_mean").histogram()
    assert (means.counts["block1"].sum(dim=1) == 24).all()


def test_range_subsample_activations_are_reused_exactly():
    view = make_tiny_view(24)  # pixels: activations do not depend on how images are batched
    view.batch_size = 5
    layers = ["image"]
    rp = range_pass(view, layers, max_images=7, seed=3, keep_bytes=2**30)
    assert rp.batches is not None and len(rp.rows) == 7
    assert range_pass(view, layers, max_images=7, seed=3, keep_bytes=10).batches is None  # over budget
    groups = np.arange(24) % 2
    kw = {"layers": layers, "kinds": ("histogram", "gaussian"), "ranges": rp.ranges, "keep_means": True,
          "groups": groups, "n_groups": 2}
    reused, plain = build_from_view(view, prefetched=rp, **kw), build_from_view(view, **kw)
    for g in (0, 1):
        assert all(torch.equal(reused.histogram(g).counts[k], plain.histogram(g).counts[k]) for k in layers)
    np.testing.assert_array_equal(reused.embedding(), plain.embedding())
    for k in layers:
        torch.testing.assert_close(reused.gaussian().var[k], plain.gaussian().var[k], rtol=1e-9, atol=1e-12)
    quick = DNASummariser(bins=50, range_images=7).fit(view, seed=3).summary_
    np.testing.assert_array_equal(quick.embedding, plain.embedding())


def test_pooled_layer_is_read_from_the_feature_store():
    view = token_view(n=12, batch_size=5)
    ranges = compute_ranges(view, ["pooled"])
    dna = build_from_view(view, layers=["pooled"], ranges=ranges).histogram()
    build_from_view(view, layers=["pooled"], ranges=ranges)
    assert view.store.computed == 1  # one extraction pass, shared with the other methods
    manual = DNABuilder(["pooled"], ranges=ranges)
    for acts in view.activations(["pooled"]):
        manual.update(acts)
    assert torch.equal(manual.histogram().counts["pooled"], dna.counts["pooled"])
    assert (dna.counts["pooled"].sum(dim=1) == 12).all()


def test_pooled_features_are_read_a_chunk_of_batches_at_a_time(monkeypatch):
    """``iter_activations`` never asks the store for all rows of a view (1.5 GB at 1M × 384-D): it
    reads whole batches a chunk at a time, and the batches are the view's as before."""
    from bench_dna import dna as dna_module

    view = token_view(n=23, batch_size=5)
    full = view.features("pooled")
    real, calls = DataView.features, []

    def spy(self, layer="pooled", rows=None):
        calls.append(rows)
        return real(self, layer, rows)

    monkeypatch.setattr(dna_module, "POOLED_CHUNK_BYTES", 4 * full.shape[1] * 10)   # two batches a read
    monkeypatch.setattr(DataView, "features", spy)
    batches = [acts["pooled"] for acts in dna_module.iter_activations(view, ["pooled"])]
    assert [len(b) for b in batches] == [5, 5, 5, 5, 3]
    assert calls and all(isinstance(r, slice) for r in calls)
    assert torch.equal(torch.cat(batches), torch.from_numpy(full))


def test_ranges_conventions_match_vdna_formula():
    mins, maxs = np.array([0.5, -2.0, 0.0]), np.array([2.0, 1.0, 0.0])
    zero = Ranges({"L": mins}, {"L": maxs}, mode="zero", scale=1.2)
    mu, sigma = zero.norm("L")
    np.testing.assert_array_equal(mu.numpy(), (mins * 1.2 + maxs * 1.2) / 2)
    np.testing.assert_array_equal(sigma.numpy(), (maxs * 1.2 - mins * 1.2) / 2 + 1e-8)
    lo, hi = Ranges({"L": mins}, {"L": maxs}, mode="centre", scale=1.2).bounds("L")
    np.testing.assert_allclose(hi - lo, (maxs - mins) * 1.2)
    np.testing.assert_allclose((hi + lo) / 2, (maxs + mins) / 2)
    # vdna's pitfall, reproduced only on request: a positive minimum is scaled up, so the
    # neuron's smallest real values are clipped into bin 0
    x = torch.tensor([[[0.5, 0.55, 2.0]]], dtype=torch.float32)
    one = {"L": np.array([0.5])}, {"L": np.array([2.0])}
    clipped = histogram_fast(x, *Ranges(*one, mode="zero").norm("L"), 100)[0, 0]
    kept = histogram_fast(x, *Ranges(*one, mode="centre").norm("L"), 100)[0, 0]
    assert clipped[0] == 2 and kept[0] == 0
    vdna_file = {"mins_per_neuron": {"L": {"1": -2.0, "0": 0.5}}, "maxs_per_neuron": {"L": {"0": 2.0, "1": 1.0}}}
    loaded = Ranges.from_json(vdna_file)
    assert loaded.mode == "zero" and np.array_equal(loaded.mins["L"], [0.5, -2.0])


def test_range_accumulator_is_min_max_over_positions():
    rng = np.random.default_rng(2)
    xs = [torch.from_numpy(rng.normal(size=(3, 4, 7)).astype(np.float32)) for _ in range(3)]
    acc = RangeAccumulator(["L"])
    for x in xs:
        acc.update({"L": x})
    r = acc.result()
    allx = torch.cat(xs)
    np.testing.assert_array_equal(r.mins["L"], allx.amin(dim=(0, 2)).double().numpy())
    np.testing.assert_array_equal(r.maxs["L"], allx.amax(dim=(0, 2)).double().numpy())


# --------------------------------------------------------------------------- EMD


def test_emd_equals_scipy_wasserstein_in_bins_and_activation_units():
    rng = np.random.default_rng(3)
    c, n = 5, 60
    p = torch.from_numpy(rng.integers(0, 20, size=(c, n)))
    q = torch.from_numpy(rng.integers(0, 20, size=(c, n)))
    ranges = random_ranges(c, rng)
    meta = {"neurons": {"L": c}, "num_images": 1, "extractor": {"name": "x"}}
    d1 = HistogramDNA(**meta, counts={"L": p}, bins=n, ranges=ranges)
    d2 = HistogramDNA(**meta, counts={"L": q}, bins=n, ranges=ranges)
    bins = emd_per_neuron(d1, d2, unit="bins")["L"].numpy()
    act = emd_per_neuron(d1, d2, unit="activation")["L"].numpy()
    lo, _ = ranges.bounds("L")
    width = ranges.bin_width("L", n)
    for i in range(c):
        ref = wasserstein_distance(np.arange(n), np.arange(n), p[i].numpy(), q[i].numpy())
        assert bins[i] == pytest.approx(ref, abs=1e-6)
        centres = lo[i] + (np.arange(n) + 0.5) * width[i]
        assert act[i] == pytest.approx(wasserstein_distance(centres, centres, p[i].numpy(), q[i].numpy()), abs=1e-6)
        assert act[i] == pytest.approx(bins[i] * width[i], rel=1e-12)


def test_emd_identities():
    n = 10
    eye = torch.eye(n, dtype=torch.int64)
    for i in range(n):
        for j in range(n):
            assert float(emd_rows(eye[i:i + 1], eye[j:j + 1])) == pytest.approx(abs(i - j))
    rng = np.random.default_rng(4)
    p, q = (torch.from_numpy(rng.integers(0, 9, size=(3, n))) for _ in range(2))
    assert torch.allclose(emd_rows(p, q), emd_rows(q, p))
    assert torch.allclose(emd_rows(p * 7, q), emd_rows(p, q))
    assert (emd_rows(p, q) <= n - 1).all() and emd_rows(p, p).eq(0).all()
    with pytest.raises(DataError, match="no samples"):
        emd_rows(torch.zeros(1, n, dtype=torch.int64), p[:1])


# --------------------------------------------------------------------------- Gaussians and FD


def test_gaussians_match_numpy_and_merge_like_the_union():
    view = token_view(n=30, batch_size=7)
    layers = ["block0", "block1"]
    b = build_from_view(view, layers=layers, kinds=("gaussian", "layer-gaussian"), keep_means=True)
    emb = b.embedding().astype(np.float64)
    means = np.concatenate([np.concatenate(b.means[k]) for k in layers], axis=1)
    g, lg = b.gaussian(), b.layer_gaussian()
    start = 0
    for k in layers:
        m = means[:, start:start + b.neurons[k]]
        start += b.neurons[k]
        np.testing.assert_allclose(g.mu[k].numpy(), m.mean(0), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(g.var[k].numpy(), m.var(0, ddof=1), rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(lg.sigma[k].numpy(), np.cov(m, rowvar=False), rtol=1e-6, atol=1e-9)
    assert emb.shape == (30, 12)
    # NFD from the per-neuron and from the full-covariance variant agree (vdna's test, 1e-2)
    other = token_view(n=30, seed=5)
    b2 = build_from_view(other, layers=layers, kinds=("gaussian", "layer-gaussian"))
    n1 = aggregate(nfd_per_neuron(g, b2.gaussian()))
    n2 = aggregate(nfd_per_neuron(lg, b2.layer_gaussian()))
    assert n1 == pytest.approx(n2, rel=1e-9) and n1 > 0
    # DNA addition = DNA of the union (histograms exactly, Gaussians to round-off)
    ranges = compute_ranges(view, layers)
    kw = {"layers": layers, "kinds": ("histogram", "gaussian", "layer-gaussian"), "ranges": ranges}
    whole = build_from_view(view, **kw)
    h1, h2 = build_from_view(view.subset(range(11)), **kw), build_from_view(view.subset(range(11, 30)), **kw)
    summed = h1.histogram() + h2.histogram()
    assert all(torch.equal(summed.counts[k], whole.histogram().counts[k]) for k in layers)
    gs, lgs = h1.gaussian() + h2.gaussian(), h1.layer_gaussian() + h2.layer_gaussian()
    for k in layers:
        torch.testing.assert_close(gs.var[k], whole.gaussian().var[k], rtol=1e-7, atol=1e-10)
        torch.testing.assert_close(lgs.sigma[k], whole.layer_gaussian().sigma[k], rtol=1e-7, atol=1e-10)
        torch.testing.assert_close(lgs.mu[k], whole.layer_gaussian().mu[k], rtol=1e-7, atol=1e-10)


def test_fd_closed_forms_and_sqrtm_oracle():
    d = 512
    sigma = torch.eye(d, dtype=torch.float64) * 2.0
    assert frechet_distance(torch.zeros(d), sigma, torch.ones(d), sigma) == pytest.approx(d, abs=1e-6)
    rng = np.random.default_rng(5)
    a = rng.normal(size=(200, 12))
    s = np.cov(a, rowvar=False)
    mu1, mu2 = rng.normal(size=12), rng.normal(size=12)
    got = frechet_distance(torch.from_numpy(mu1), torch.from_numpy(s), torch.from_numpy(mu2), torch.from_numpy(s))
    assert got == pytest.approx(float(((mu1 - mu2) ** 2).sum()), abs=1e-8)  # identical covariances
    b = rng.normal(loc=0.3, size=(150, 12)) @ rng.normal(size=(12, 12))
    s2 = np.cov(b, rowvar=False)
    got = frechet_distance(*(torch.from_numpy(t) for t in (mu1, s, mu2, s2)))
    assert got == pytest.approx(frechet_distance_sqrtm(mu1, s, mu2, s2), rel=1e-6)
    v1, v2 = rng.uniform(0.5, 2, 12), rng.uniform(0.5, 2, 12)  # diagonal: Σ(√v1 − √v2)²
    got = frechet_distance(torch.zeros(12), torch.diag(torch.from_numpy(v1)), torch.zeros(12),
                           torch.diag(torch.from_numpy(v2)))
    assert got == pytest.approx(float(((np.sqrt(v1) - np.sqrt(v2)) ** 2).sum()), abs=1e-9)


# --------------------------------------------------------------------------- save / load


def _all_kinds(view, ranges, layers=("block0", "block1")):
    b = build_from_view(view, layers=list(layers), kinds=("histogram", "gaussian", "layer-gaussian"), ranges=ranges)
    meta = {"extractor": {"name": "test-tokens", "weights": None, "cache_key": {"seed": 0}}, "source": view.name}
    return b.histogram(**meta), b.gaussian(**meta), b.layer_gaussian(**meta)


def test_save_load_round_trip_changes_no_distance(tmp_path):
    va, vb = token_view(n=20), token_view(n=20, seed=3)
    ranges = compute_ranges(va, ["block0", "block1"])
    ha, ga, la = _all_kinds(va, ranges)
    hb, gb, lb = _all_kinds(vb, ranges)
    for dna, name in ((ha, "h"), (ga, "g"), (la, "l")):
        save_dna(dna, tmp_path / name)
    h2, g2, l2 = (load_dna(tmp_path / n) for n in "hgl")
    for metric, (x, x2, y) in {"emd": (ha, h2, hb), "emd_act": (ha, h2, hb), "nfd": (ga, g2, gb),
                               "fd": (la, l2, lb)}.items():
        assert distance(x2, y, metric=metric) == distance(x, y, metric=metric)
        assert distance(x2, x, metric=metric) == pytest.approx(0.0, abs=1e-9)
    assert h2.ranges.digest() == ha.ranges.digest() and h2.extractor == ha.extractor
    # vdna's layout: the keys its loader reads, one (C, bins) array per layer in the npz
    meta = json.loads((tmp_path / "h.json").read_text())
    for key in ("type", "name", "data_settings", "extraction_settings", "num_images", "feature_extractor_name",
                "neurons_list", "distribution"):
        assert key in meta
    assert meta["name"] == "histogram-1000" and meta["distribution"]["hist_nb_bins"] == 1000
    with np.load(tmp_path / "h.npz") as npz:
        assert sorted(npz.files) == ["block0", "block1"] and npz["block0"].dtype == np.int32
    with np.load(tmp_path / "l.npz") as npz:
        assert sorted(npz.files) == ["mu-block0", "mu-block1", "sigma-block0", "sigma-block1"]


@pytest.mark.parametrize("compression", ["deflate", "lzma"])
def test_counts_past_int32_survive_save(tmp_path, compression):
    big = torch.tensor([[2**31 + 5, 3, 2**33]], dtype=torch.int64)
    ranges = Ranges({"L": [0.0]}, {"L": [1.0]})
    dna = HistogramDNA(neurons={"L": 1}, num_images=10**8, counts={"L": big}, bins=3, ranges=ranges)
    info = save_dna(dna, tmp_path / "big", compression=compression)
    with np.load(info["npz"]) as npz:  # what vdna's loader does
        assert npz["L"].dtype == np.int64 and npz["L"][0, 2] == 2**33
    assert torch.equal(load_dna(tmp_path / "big").counts["L"], big)


def test_loads_a_vdna_written_file(tmp_path):
    counts = np.zeros((2, 5), dtype=np.int32)
    counts[0, 1], counts[1, 4] = 3, 2
    meta = {"type": "histogram", "name": "histogram-5", "distribution": {"hist_nb_bins": 5}, "num_images": 1,
            "feature_extractor_name": "mugs_vit_base", "neurons_list": {"block_0": 2}, "data_settings": {},
            "extraction_settings": {}}
    (tmp_path / "v.json").write_text(json.dumps(meta))
    np.savez_compressed(tmp_path / "v.npz", block_0=counts)
    dna = load_dna(tmp_path / "v")
    assert dna.ranges is None and dna.counts["block_0"].dtype == torch.int64
    assert distance(dna, dna) == 0.0
    with pytest.raises(BenchError, match="activation units"):
        distance(dna, dna, metric="emd_act")
    with pytest.raises(DataError, match="no saved DNA"):
        load_dna(tmp_path / "missing")


class _Payload:
    """Unpickling this runs ``os.system`` and leaves a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_a_placed_npz_with_pickled_objects_runs_nothing_and_is_one_line(tmp_path):
    meta = {"type": "histogram", "name": "histogram-5", "distribution": {"hist_nb_bins": 5}, "num_images": 1,
            "feature_extractor_name": "x", "neurons_list": {"block_0": 2}, "data_settings": {},
            "extraction_settings": {}}
    (tmp_path / "v.json").write_text(json.dumps(meta))
    marker = tmp_path / "pwned"
    np.savez(tmp_path / "v.npz", block_0=np.array([_Payload(marker)], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match=r"v\.npz' is not a readable DNA array file \(ValueError: Object arrays"):
        load_dna(tmp_path / "v")
    assert not marker.exists()
    (tmp_path / "v.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(DataError, match="not a readable DNA array file"):
        load_dna(tmp_path / "v")


# --------------------------------------------------------------------------- aggregation, selection


def test_aggregation_mean_layer_neuron_and_weights():
    va, vb = token_view(n=16), token_view(n=16, seed=9)
    ranges = compute_ranges(va, ["block0", "block1"])
    ha, _, _ = _all_kinds(va, ranges)
    hb, _, _ = _all_kinds(vb, ranges)
    per = distance(ha, hb, how="neuron")
    flat = torch.cat([per[k] for k in ha.layers])
    assert distance(ha, hb) == pytest.approx(float(flat.mean()), rel=1e-12)
    layer = distance(ha, hb, how="layer")
    assert layer["block1"] == pytest.approx(float(per["block1"].mean()))
    only = {"block1": [2, 4]}
    assert distance(ha, hb, neurons=only) == pytest.approx(float(per["block1"][[2, 4]].mean()))
    w = {"block0": np.zeros(6), "block1": np.eye(6)[3]}
    assert distance(ha, hb, weights=w) == pytest.approx(float(per["block1"][3]))
    assert distance(ha, hb, weights={k: np.ones(6) for k in ha.layers}) == pytest.approx(distance(ha, hb))
    fds = fd_per_layer(*(_all_kinds(v, ranges)[2] for v in (va, vb)))
    assert distance(_all_kinds(va, ranges)[2], _all_kinds(vb, ranges)[2], metric="fd") == pytest.approx(
        np.mean(list(fds.values())))
    with pytest.raises(BenchError, match="out of range"):
        distance(ha, hb, neurons={"block1": [6]})


def test_selection_finds_the_planted_neuron():
    rng = np.random.default_rng(6)
    c, planted = 8, 5
    ranges = Ranges({"L": np.full(c, -4.0)}, {"L": np.full(c, 4.0)})
    b = DNABuilder(["L"], bins=100, ranges=ranges, n_groups=2)
    for _ in range(4):
        x = torch.from_numpy(rng.normal(size=(10, c, 9)).astype(np.float32))
        group = torch.from_numpy(rng.integers(0, 2, size=10))
        x[group == 0, planted] += 1.5  # the attribute moves one neuron
        b.update({"L": x}, group)
    sel = select_neurons(b.histogram(0), b.histogram(1), top=1)
    assert {k: v.tolist() for k, v in sel.items()} == {"L": [planted]}


def test_rank_from_labels_one_pass_and_snr():
    view = token_view(n=24)
    layers = ["block0", "block1"]
    ranges = compute_ranges(view, layers)
    y = np.arange(24) % 3 == 0
    scores, builder, info = rank_from_labels(view, y, ranges=ranges, layers=layers, score="snr", seed=0)
    assert info == {"n_positive": 8, "n_negative": 16}
    whole = build_from_view(view, layers=layers, ranges=ranges).histogram()
    assert all(torch.equal(builder.histogram().counts[k], whole.counts[k]) for k in layers)
    assert set(scores) == set(layers) and all(torch.isfinite(s).all() for s in scores.values())
    emd_scores, _, _ = rank_from_labels(view, y, ranges=ranges, layers=layers)
    from_views = rank_from_views(view.subset(np.flatnonzero(y)), view.subset(np.flatnonzero(~y)), ranges=ranges,
                                 layers=layers)
    assert all(torch.equal(emd_scores[k], from_views[k]) for k in layers)
    with pytest.raises(DataError, match="with and without"):
        rank_from_labels(view, np.ones(24, bool), ranges=ranges, layers=layers)


# --------------------------------------------------------------------------- image level


def test_image_to_dataset_and_image_to_image():
    view = token_view(n=12, batch_size=5)
    layers = ["block0", "block1"]
    ranges = compute_ranges(view, layers)
    dna = build_from_view(view, layers=layers, ranges=ranges).histogram()
    per_image = image_emd(view, dna)
    per_image_act = image_emd(view, dna, unit="activation", neurons={"block1": [0, 3]})
    for i in (0, 7, 11):
        own = build_from_view(view.subset([i]), layers=layers, ranges=ranges).histogram()
        assert per_image[i] == pytest.approx(distance(own, dna), rel=1e-12)
        assert per_image_act[i] == pytest.approx(distance(own, dna, metric="emd_act", neurons={"block1": [0, 3]}),
                                                 rel=1e-12)
    comp = DNAComparator(ranges="union", bins=50)
    one, two = view.subset([1]), view.subset([2])
    assert comp.compare(one, one).score == 0.0
    assert comp.compare(one, two).score == pytest.approx(comp.compare(two, one).score, rel=1e-12)
    assert comp.compare(one, two).score > 0


# --------------------------------------------------------------------------- harness contract


def test_comparator_self_zero_detail_and_selection():
    view = token_view(n=24)
    a, b = view.subset(np.arange(12)), view.subset(np.arange(12, 24))
    comp = DNAComparator(bins=100, top_neurons=3)
    same, diff = comp.compare(a, a, seed=0), comp.compare(a, b, seed=0)
    assert same.score == 0.0 and same.statistics["emd_act"] == 0.0 and same.statistics["nfd"] == 0.0
    assert same.statistics["fd"] == pytest.approx(0.0, abs=1e-9)
    assert diff.score > 0 and diff.score == diff.statistics["emd"]
    assert set(diff.detail["per_layer"]) == {"block0", "block1"} and len(diff.detail["top_neurons"]) == 3
    assert "bins" in diff.detail["unit"]
    sel = DNAComparator(bins=100, select_concept="class0", select_top=3).compare(view, b, seed=0)
    assert sum(len(v) for v in sel.detail["selected_neurons"].values()) == 3 and sel.statistics["n_neurons"] == 3
    explicit = DNAComparator(bins=100, neurons={"block1": [0, 1]}).compare(a, b, seed=0)
    assert explicit.score == pytest.approx(float(np.mean(_neuron_emds(a, b, "block1", [0, 1]))), rel=1e-12)
    for dist in ("emd_act", "nfd", "fd"):
        assert DNAComparator(bins=100, distance=dist).compare(a, b).score > 0


def _neuron_emds(a, b, layer, idx):
    ranges = compute_ranges(a, ["block0", "block1"])
    ha = build_from_view(a, layers=["block0", "block1"], ranges=ranges, bins=100).histogram()
    hb = build_from_view(b, layers=["block0", "block1"], ranges=ranges, bins=100).histogram()
    return emd_per_neuron(ha, hb)[layer][idx].tolist()


def test_summariser_output():
    view = token_view(n=20)
    est = DNASummariser(bins=200).fit(view, seed=0)
    s = est.summary_
    assert s.codes is None and s.embedding.shape == (20, 12) and s.embedding.dtype == np.float32
    assert s.artefacts["dna_counts"].shape == (12, 200) and s.artefacts["dna_counts"].dtype == np.int64
    assert s.artefacts["dna_meta"]["bench"]["ranges"]["range_mode"] == "centre"
    assert s.statistics["dna_mb"] > 0 and s.statistics["edge_fraction"] == 0.0
    assert [r["layer"] for r in s.artefacts["tables"]["dna_layers"]] == ["block0", "block1"]
    json.dumps(s.artefacts["dna_meta"])
    json.dumps(s.artefacts["tables"])


@pytest.mark.parametrize("check", method_checks(DNASummariser, view=make_tiny_view(24)) +
                         method_checks(DNAComparator, view=make_tiny_view(24)), ids=lambda c: c.__name__)
def test_conformance(check):
    check()


def test_plugin_registers_both_roles():
    from bench import plugins

    regs = plugins.load()
    assert regs.summarisers.get("dna") is DNASummariser and regs.comparators.get("dna") is DNAComparator


@pytest.mark.parametrize("params, error, match", [
    ({"bins": 1}, BenchError, "bins"),
    ({"range_mode": "middle"}, BenchError, "range_mode"),
    ({"distance": "kl"}, BenchError, "distance"),
    ({"layers": ["nope"]}, BenchError, "unknown layer"),
    ({"select_concept": "nope"}, BenchError, "unknown concept"),
    ({"select_concept": "class0", "select_top": 0}, BenchError, "select_top"),
    ({"ranges": "/no/such/ranges.json"}, DataError, "does not exist"),
    ({"neurons": {"block1": [99]}}, BenchError, "out of range"),
])
def test_user_errors_are_one_line(params, error, match):
    view = token_view(n=8)
    with pytest.raises(error, match=match) as info:
        DNAComparator(**params).compare(view, view)
    assert "\n" not in str(info.value)


def test_data_errors():
    view = token_view(n=8)
    with pytest.raises(DataError, match="empty"):
        DNAComparator().compare(view.subset([]), view)
    with pytest.raises(DataError, match="no images"):
        DNASummariser().fit(view.subset([]))
    other = DataView(make_tiny_source(8), TokenNet(dim=4), FeatureStore(None))
    with pytest.raises(BenchError, match="different extractors"):
        DNAComparator().compare(view, other)
    acc = RangeAccumulator(["L"])
    with pytest.raises(DataError, match="NaN"):
        acc.update({"L": torch.tensor([[[float("nan")]]])})
    ranges = Ranges({"L": [0.0]}, {"L": [1.0]})
    for backend in CPU_BACKENDS:
        with pytest.raises(DataError, match="NaN"):
            histogram_fast(torch.tensor([[[0.5, float("nan")]]]), *ranges.norm("L"), 10, backend=backend)
    with pytest.raises(BenchError, match="backend"):
        histogram_fast(torch.zeros(1, 1, 1), *ranges.norm("L"), 10, backend="cython")
    r1, r2 = compute_ranges(view, ["block0"]), compute_ranges(view.subset([0]), ["block0"])
    d1 = build_from_view(view, layers=["block0"], ranges=r1).histogram()
    d2 = build_from_view(view, layers=["block0"], ranges=r2).histogram()
    with pytest.raises(BenchError, match="different neuron ranges"):
        distance(d1, d2)
