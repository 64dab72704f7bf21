"""Datasets: embedded ground truth, real-dataset layouts built in tmp_path, bad input, --limit."""

from __future__ import annotations

import dataclasses
import pickle

import faiss
import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import normalized_mutual_info_score

from bench import plugins
from bench.config import dataset_root, env_var
from bench.datasets import drop_unreadable, get_spec, limit
from bench.datasets import synth as S
from bench.datasets.builtin import load_digits
from bench.errors import BenchError, DataError, UnknownNameError


@pytest.fixture(scope="module")
def registry():
    return plugins.load().datasets


@pytest.fixture(scope="module")
def passnet():
    return S.make_synth_passnet(0)


@pytest.fixture(scope="module")
def ladder():
    return S.synth_shift_ladder(0)


@pytest.fixture
def no_config(monkeypatch, tmp_path):
    """No roots from the user's environment or config files."""
    for key in ("imagenet", "pass", "cifar10", "cifar100", "imagenette", "imagewoof"):
        monkeypatch.delenv(env_var(key), raising=False)
    monkeypatch.delenv("BENCH_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _small_feats(images: np.ndarray, size: int = 16) -> np.ndarray:
    """Block-mean downsampled pixels in [0, 1] (what a pixel k-means sees)."""
    n, h = images.shape[:2]
    f = images.reshape(n, size, h // size, size, h // size, 3).mean(axis=(2, 4)) / 255.0
    return np.ascontiguousarray(f.reshape(n, -1), dtype=np.float32)


# --------------------------------------------------------------------------- registry


def test_builtin_registration(registry):
    expected = {"synth-passnet", "synth-shift", "digits", "imagenet", "imagenet-val", "pass", "passnet",
                "cifar10", "cifar10-test", "cifar100", "cifar100-test", "imagenette", "imagewoof"}
    assert expected <= set(registry.names())
    assert all(registry.get(n).embedded for n in ("synth-passnet", "synth-shift", "digits"))
    assert registry.get("synth-shift").ladder is not None


def test_unknown_name_suggests(registry):
    with pytest.raises(UnknownNameError, match="Did you mean 'synth-passnet'"):
        get_spec(registry, "synth-pasnet")
    with pytest.raises(BenchError, match="imagefolder: needs a folder"):
        get_spec(registry, "imagefolder:")


# --------------------------------------------------------------------------- synth-passnet


def test_synth_passnet_deterministic():
    a = S.make_synth_passnet(3, n_per_source=40)
    b = S._synth_passnet.__wrapped__(3, n_per_source=40)                 # regenerated, not cached
    c = S.make_synth_passnet(4, n_per_source=40)
    assert a.revision == b.revision and np.array_equal(a.array, b.array)
    assert np.array_equal(a.concepts, b.concepts) and np.array_equal(a.duplicate_pairs, b.duplicate_pairs)
    assert c.revision != a.revision
    u = S._synth_shift.__wrapped__(3, n_per_level=10, n_levels=3)
    assert u.revision == S.make_synth_shift(3, n_per_level=10, n_levels=3).revision


def test_synth_cache_is_not_shared_mutable_state():
    a = S.make_synth_passnet(5, n_per_source=20)
    a.notes["edge_cases"].clear()
    a.class_names.append("junk")
    with pytest.raises(ValueError):
        a.array[0, 0, 0, 0] = 1
    b = S.make_synth_passnet(5, n_per_source=20)
    assert len(b.notes["edge_cases"]) == S.N_EDGE_CASES and "junk" not in b.class_names


def test_synth_passnet_ground_truth(passnet):
    s = passnet
    n = 2 * 600
    assert s.n == n and s.array.shape == (n, 64, 64, 3) and s.array.dtype == np.uint8
    assert s.labels.shape == (n,) and s.concepts.shape == (n, len(s.concept_names)) and s.concepts.dtype == bool
    assert s.group_names == ["objects", "scenes"] and np.bincount(s.groups).tolist() == [600, 600]
    cols = sorted(c for cs in s.concept_groups.values() for c in cs)
    assert cols == list(range(len(s.concept_names)))                    # groups partition the columns
    assert {"object", "colour", "texture", "background", "person"} <= set(s.concept_groups)
    n_obj = len(S.OBJECT_CLASSES)
    is_scene = s.notes["is_scene"]
    assert np.array_equal(is_scene, s.labels >= n_obj)
    # both sources mix the two kinds: mostly objects in the ImageNet-like one, mostly scenes in the other
    assert abs(is_scene[s.groups == 0].mean() - S.MIX) < 0.02 and abs(1 - is_scene[s.groups == 1].mean() - S.MIX) < 0.02
    assert not (s.labels[s.groups == 1] == S.OBJECT_CLASSES.index("person")).any()   # PASS: no person class
    counts = np.bincount(s.labels, minlength=len(s.class_names))
    assert counts.min() >= 0.8 * 600 * (1 - S.MIX) / 7                  # balanced (duplicates shift a few)
    idx = {name: i for i, name in enumerate(s.concept_names)}
    tex = s.concepts[:, s.concept_groups["texture"]]
    assert (tex.sum(1) == 1).all()                                      # exactly one texture each
    assert s.concepts[:, s.concept_groups["colour"]].any(1).all()
    assert s.concepts[:, s.concept_groups["background"]].any(1).all()
    scene_object = {"mountains": "mountain", "sea": "wave", "forest": "tree", "city": "building", "desert": "dune"}
    for i in range(s.n):
        cls = s.class_names[s.labels[i]]
        if cls == "person":
            assert s.concepts[i, idx["person:person"]]
            assert not s.concepts[i, s.concept_groups["object"]].any()
        elif cls in scene_object:
            assert s.concepts[i, idx[f"object:{scene_object[cls]}"]]
        else:
            shapes = [c for c in s.concept_groups["object"] if s.concepts[i, c]]
            assert shapes == [idx[f"object:{cls}"]]


def test_person_concept_only_in_objects_and_listed_edge_cases(passnet):
    s = passnet
    person = s.concepts[:, s.concept_names.index("person:person")]
    edge = sorted(e["index"] for e in s.notes["edge_cases"])
    assert len(edge) == S.N_EDGE_CASES
    assert sorted(np.flatnonzero(person & (s.groups == 1)).tolist()) == edge
    assert all(e["group"] == "scenes" and e["concept"] == "person:person" for e in s.notes["edge_cases"])
    shapes = (s.groups == 0) & ~s.notes["is_scene"] & (s.labels != S.OBJECT_CLASSES.index("person"))
    share = person[shapes].mean()
    assert 0.25 < share < 0.5                                            # a good share of object images
    assert s.notes["planted"]["concept"] == "person:person" and s.notes["planted"]["group"] == "objects"
    assert [s.class_names[s.labels[e["index"]]] for e in s.notes["edge_cases"]] == [
        e["class"] for e in s.notes["edge_cases"]]
    assert not set(edge) & set(s.duplicate_pairs.reshape(-1).tolist())   # edge cases are not copied


def test_synth_passnet_people_wear_a_colour_nothing_else_has(passnet):
    """The planted concept must be visible to patch-level features: pink clothes appear in every
    image with a small person (beside a shape or planted in a scene) and in no image without one."""
    s = passnet
    x = s.array.astype(np.int16)
    pink = ((x[..., 0] > 192) & (x[..., 1] < 120) & (x[..., 2] > 120)).sum((1, 2))
    person = s.concepts[:, s.concept_names.index("person:person")]
    small = person & (s.labels != S.OBJECT_CLASSES.index("person"))  # the person class wears its class colour
    assert pink[small].min() >= 10 and pink[~person].max() == 0


def test_duplicate_pairs_near_identical(passnet):
    s = passnet
    pairs = s.duplicate_pairs
    assert pairs.shape == (2 * round(S.DUP_FRACTION * 600), 2) and (pairs[:, 0] < pairs[:, 1]).all()
    assert len(np.unique(pairs)) == pairs.size                           # disjoint pairs
    kinds = s.notes["duplicate_kinds"]
    assert set(kinds) == {"exact", "noise", "shift", "brightness"}
    a, b = pairs[:, 0], pairs[:, 1]
    assert np.array_equal(s.labels[a], s.labels[b]) and np.array_equal(s.groups[a], s.groups[b])
    assert np.array_equal(s.concepts[a], s.concepts[b])
    diff = np.abs(s.array[a].astype(int) - s.array[b].astype(int)).mean(axis=(1, 2, 3))
    exact = np.array([k == "exact" for k in kinds])
    assert (diff[exact] == 0).all() and (diff[~exact] > 0).all()
    # each member's nearest neighbour among all images (16×16 pixels, per-image standardised so
    # that a brightness change is not a distance) is its partner
    f = _small_feats(s.array)
    f -= f.mean(axis=1, keepdims=True)
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    index = faiss.IndexFlatL2(f.shape[1])
    index.add(f)
    _, nn = index.search(f[pairs.reshape(-1)], 2)
    partner = pairs[:, ::-1].reshape(-1)
    assert ((nn[:, 0] == partner) | (nn[:, 1] == partner)).all()
    # and a near-duplicate is far closer than the typical same-class image
    d_pair = np.linalg.norm(f[a] - f[b], axis=1)
    same = [np.linalg.norm(f[i] - f[np.flatnonzero(s.labels == s.labels[i])[:20]], axis=1).mean() for i in a]
    assert np.median(d_pair) < 0.2 * np.median(same)


def test_synth_passnet_learnable_by_pixel_kmeans(passnet):
    """Pixels + faiss k-means is clearly above a random assignment (the dataset is learnable)."""
    s = passnet
    f = _small_feats(s.array)
    k = len(s.class_names)
    km = faiss.Kmeans(f.shape[1], k, niter=20, seed=0)
    km.train(f)
    codes = km.index.search(f, 1)[1][:, 0]
    nmi = normalized_mutual_info_score(s.labels, codes)
    chance = normalized_mutual_info_score(s.labels, np.random.default_rng(0).permutation(codes))
    assert nmi > 0.35 and nmi > 10 * chance
    # but not trivial: far from perfect
    assert nmi < 0.9


def test_synth_bad_sizes():
    with pytest.raises(BenchError, match="n_per_source"):
        S.make_synth_passnet(0, n_per_source=0)
    with pytest.raises(BenchError, match="n_levels"):
        S.make_synth_shift(0, n_levels=1)


# --------------------------------------------------------------------------- synth-shift


def test_ladder_proportions_exact(ladder):
    reference, levels = ladder
    assert [p for p, _ in levels] == pytest.approx([k / 10 for k in range(11)], abs=0)
    assert reference.n == 150 and not reference.notes["is_scene"].any()
    n_obj = len(S.OBJECT_CLASSES)
    assert (reference.labels < n_obj).all()
    seen = {bytes(x) for x in reference.array.reshape(reference.n, -1)}
    for k, (p, src) in enumerate(levels):
        assert src.n == 150
        scene = src.labels >= n_obj
        assert np.array_equal(scene, src.notes["is_scene"])
        assert scene.sum() == 15 * k and scene.mean() == p
        rows = {bytes(x) for x in src.array.reshape(src.n, -1)}
        assert len(rows) == src.n and not (rows & seen)                  # disjoint images everywhere
        seen |= rows


def test_ladder_union_groups_are_levels(registry):
    spec = registry.get("synth-shift")
    union = spec.load(seed=0, n_per_level=20, n_levels=3)
    assert union.n == 4 * 20 and union.group_names == ["p=0.00", "p=0.50", "p=1.00", "reference"]
    n_obj = len(S.OBJECT_CLASSES)
    for g, p in enumerate([0.0, 0.5, 1.0]):
        assert (union.labels[union.groups == g] >= n_obj).mean() == p
    ref, levels = spec.ladder(seed=0, n_per_level=20, n_levels=3)
    assert np.array_equal(levels[1][1].array, union.array[union.groups == 1])
    assert ref.revision == spec.ladder(seed=0, n_per_level=20, n_levels=3)[0].revision


# --------------------------------------------------------------------------- digits


def test_digits():
    from sklearn.datasets import load_digits as sk

    d = load_digits()
    assert d.array.shape == (1797, 32, 32, 3) and d.array.dtype == np.uint8
    assert sorted(np.unique(d.labels).tolist()) == list(range(10)) and d.groups is None
    raw = sk().images
    assert np.array_equal(d.array[:, ::4, ::4, 0], np.round(raw * 255 / 16).astype(np.uint8))
    assert np.array_equal(d.array[:, 1::4, 3::4, 2], d.array[:, ::4, ::4, 0])   # nearest: 4×4 blocks
    assert load_digits().revision == d.revision


# --------------------------------------------------------------------------- folders


def _write(path, size=(40, 30), colour=(200, 10, 10), fmt=None, mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path, format=fmt)


def _imagefolder(root):
    _write(root / "cat" / "a.png", (40, 30), (200, 10, 10))
    _write(root / "cat" / "b.jpg", (64, 64), (10, 200, 10))
    _write(root / "dog" / "c.JPEG", (30, 50), (10, 10, 200))
    _write(root / "dog" / "sub" / "d.png", (20, 20), 50, mode="L")          # greyscale → RGB
    (root / "dog" / "notes.txt").write_text("not an image")
    return root


def test_imagefolder_lazy_and_labelled(registry, tmp_path):
    root = _imagefolder(tmp_path / "data")
    spec = get_spec(registry, f"imagefolder:{root}")
    assert spec.ready() is None and not spec.embedded
    src = spec.load(seed=0)
    assert src.array is None and src.loader is not None
    assert src.n == 4 and src.class_names == ["cat", "dog"] and src.labels.tolist() == [0, 0, 1, 1]
    assert src.ids == ["cat/a.png", "cat/b.jpg", "dog/c.JPEG", "dog/sub/d.png"]
    img = src.image(0)
    assert img.shape == (256, 256, 3) and img.dtype == np.uint8
    assert np.abs(img.astype(int) - [200, 10, 10]).max() <= 2
    small = get_spec(registry, f"imagefolder:{root}").load(seed=0, size=32)
    assert small.image(2).shape == (32, 32, 3) and small.revision != src.revision
    assert (small.image(3) == 50).all()
    assert spec.load(seed=0).revision == src.revision
    _write(root / "dog" / "e.png")
    assert spec.load(seed=0).revision != src.revision


def test_imagefolder_corrupt_file_named_when_read(registry, tmp_path):
    root = _imagefolder(tmp_path / "data")
    (root / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    good = tmp_path / "big.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(good)
    data = good.read_bytes()
    (root / "dog" / "truncated.jpg").write_bytes(data[: len(data) // 2])
    src = get_spec(registry, f"imagefolder:{root}").load(seed=0)
    assert src.n == 6                                                    # listing does not decode
    bad = [i for i, p in enumerate(src.ids) if "broken" in p or "truncated" in p]
    for i in bad:
        with pytest.raises(DataError) as err:
            src.image(i)
        msg = str(err.value)
        assert src.ids[i].split("/")[-1] in msg and "\n" not in msg
    clean = drop_unreadable(src)
    assert clean.n == 4 and sorted(x["id"] for x in clean.notes["skipped_files"]) == sorted(src.ids[i] for i in bad)
    assert all(clean.image(i).shape == (256, 256, 3) for i in range(clean.n))
    assert clean.labels.tolist() == [0, 0, 1, 1]


def test_imagefolder_empty_and_missing(registry, tmp_path):
    empty = tmp_path / "empty"
    (empty / "cls").mkdir(parents=True)
    (empty / "cls" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="no images found under"):
        get_spec(registry, f"imagefolder:{empty}").load(seed=0)
    flat = tmp_path / "flat"
    _write(flat / "x.png")
    with pytest.raises(DataError, match="class sub-folders"):
        get_spec(registry, f"imagefolder:{flat}").load(seed=0)
    missing = get_spec(registry, f"imagefolder:{tmp_path / 'nope'}")
    assert "nope" in missing.ready() and "\n" not in missing.ready()
    with pytest.raises(BenchError, match="does not exist"):
        missing.load(seed=0)


def test_imagefolder_symlink_loop_is_one_line(tmp_path, capsys):
    """A link back to a folder above it (listing would recurse until ELOOP) and a link to itself:
    one ``error:`` line through the CLI, exit 2, no traceback; a plain symlinked folder still works."""
    import os

    from bench.cli import main

    root = _imagefolder(tmp_path / "data")
    _write(tmp_path / "elsewhere" / "e.png")
    os.symlink(tmp_path / "elsewhere", root / "dog" / "linked")                 # fine: not a loop
    assert get_spec(plugins.load().datasets, f"imagefolder:{root}").load(seed=0).n == 5
    for link, target in (("cat/loop", ".."), ("dog/self", "self"), ("self", "self")):
        os.symlink(target, root / link)
        code = main(["run", "--methods", "kmeans", "--datasets", f"imagefolder:{root}", "--extractor", "pixels",
                     "--no-cache", "--out", str(tmp_path / "out")])
        text = capsys.readouterr()
        err = text.err + text.out
        assert code == 2 and "Traceback" not in err, err
        flat = " ".join(err.split())                                    # rich wraps long lines
        assert flat.count("error:") == 1 and "symbolic link loop" in flat and link.split("/")[-1] in flat
        os.unlink(root / link)


@pytest.mark.parametrize("fmt, array", [
    ("png", np.linspace(0, 65535, 1024).round().astype(np.uint16)),                # 16-bit PNG
    ("tif", np.linspace(0, 65535, 1024).round().astype(np.uint16)),                # 16-bit TIFF
    ("tif", np.linspace(0, 2**31 - 1, 1024).round().astype(np.int32)),            # 32-bit int TIFF
    ("tif", np.linspace(0, 1, 1024).astype(np.float32)),                           # 32-bit float TIFF
], ids=["png16", "tiff16", "tiff-int32", "tiff-float32"])
def test_high_bit_depth_gradient_scales_to_256_levels(tmp_path, fmt, array):
    """A full-range gradient keeps all 256 levels, each pixel the nearest 8-bit value of its
    nominal range (``convert("RGB")`` clipped it: a handful of levels, or flat)."""
    from bench.datasets.real import read_image

    path = tmp_path / f"gradient.{fmt}"
    Image.fromarray(np.tile(array, (4, 1))).save(path)
    img = read_image(path, size=None)
    assert img.shape == (4, 1024, 3) and img.dtype == np.uint8
    top = 1.0 if array.dtype == np.float32 else float(np.iinfo(array.dtype).max)
    want = np.rint(array.astype(np.float64) / top * 255).astype(np.uint8)
    assert np.array_equal(img[0, :, 0], want) and (img == img[:1, :, :1]).all()
    assert len(np.unique(img)) == 256 and img[0, 0, 0] == 0 and img[0, -1, 0] == 255
    # through the folder loader's resize and centre crop: the middle of the gradient, mid-grey
    assert abs(read_image(path, size=4).mean() - 127.5) < 2


def test_missing_root_names_variable(registry, no_config):
    for name, var, layout in (("imagenet", "BENCH_IMAGENET_ROOT", "train/<wnid>"),
                              ("pass", "BENCH_PASS_ROOT", "PASS"),
                              ("cifar10", "BENCH_CIFAR10_ROOT", "cifar-10-batches-py"),
                              ("imagewoof", "BENCH_IMAGEWOOF_ROOT", "imagewoof2")):
        spec = registry.get(name)
        reason = spec.ready()
        assert var in reason and layout in reason and "\n" not in reason
        with pytest.raises(BenchError) as err:
            spec.load(seed=0)
        assert str(err.value) == reason
    assert "BENCH_IMAGENET_ROOT" in registry.get("passnet").ready()


def test_root_from_config_file_and_bad_layout(registry, no_config, monkeypatch):
    tmp = no_config
    (tmp / "bench.toml").write_text('[roots]\nimagenette = "nette"\n')
    assert dataset_root("imagenette")[0] == tmp / "nette"
    assert "does not look right" not in registry.get("imagenette").ready()     # not a folder yet
    (tmp / "nette").mkdir()
    assert "does not look right" in registry.get("imagenette").ready()
    _write(tmp / "nette" / "imagenette2-160" / "train" / "n01440764" / "a.JPEG", fmt="JPEG")
    _write(tmp / "nette" / "imagenette2-160" / "train" / "n03888257" / "b.JPEG", fmt="JPEG")
    _write(tmp / "nette" / "imagenette2-160" / "val" / "n03888257" / "c.JPEG", fmt="JPEG")
    assert registry.get("imagenette").ready() is None
    src = registry.get("imagenette").load(seed=0)
    assert src.n == 2 and src.class_names == ["tench", "parachute"]
    monkeypatch.setenv("BENCH_IMAGENETTE_ROOT", str(tmp / "elsewhere"))      # env wins over the file
    assert "BENCH_IMAGENETTE_ROOT" in registry.get("imagenette").ready()


def test_non_utf8_config_file_is_one_line(no_config, capsys):
    """A bench.toml saved as latin-1 (``café``): exit 2 and one ``error:`` line naming the file
    and line, not a UnicodeDecodeError traceback."""
    from bench.cli import main

    (no_config / "bench.toml").write_bytes(b'[roots]\nimagenet = "/data/caf\xe9"\n')
    code = main(["datasets"])
    out = capsys.readouterr()
    text = " ".join((out.out + out.err).split())
    assert code == 2 and "Traceback" not in text and text.count("error:") == 1, text
    assert "bench.toml: not UTF-8 text (byte 0xe9 on line 2)" in text


def test_imagenet_pass_passnet(registry, no_config, monkeypatch):
    tmp = no_config
    inet = tmp / "ilsvrc"
    for wnid, n in (("n01440764", 2), ("n01443537", 3)):
        for j in range(n):
            _write(inet / "train" / wnid / f"{wnid}_{j}.JPEG", fmt="JPEG")
    (inet / "LOC_synset_mapping.txt").write_text("n01440764 tench, Tinca tinca\nn01443537 goldfish\n")
    pss = tmp / "PASS"
    for k in range(2):
        for j in range(2):
            _write(pss / f"PASS.{k}" / f"{k}{j}.jpg", fmt="JPEG")
    monkeypatch.setenv("BENCH_IMAGENET_ROOT", str(inet))
    assert "BENCH_PASS_ROOT" in registry.get("passnet").ready()
    monkeypatch.setenv("BENCH_PASS_ROOT", str(pss))
    a = registry.get("imagenet").load(seed=0)
    assert a.n == 5 and a.class_names == ["n01440764 (tench)", "n01443537 (goldfish)"]
    assert "val/" in registry.get("imagenet-val").ready()
    p = registry.get("pass").load(seed=0)
    assert p.n == 4 and p.labels is None and p.ids[0] == "PASS.0/00.jpg"
    u = registry.get("passnet").load(seed=0)
    assert u.n == 9 and u.group_names == ["imagenet", "pass"] and u.groups.tolist() == [0] * 5 + [1] * 4
    assert u.labels.tolist() == [0, 0, 1, 1, 1, -1, -1, -1, -1]
    assert u.image(8).shape == (256, 256, 3) and u.ids[5] == "pass/PASS.0/00.jpg"


def _cifar(base, n_per_batch=4, classes=10, seed=0):
    rng = np.random.default_rng(seed)
    base.mkdir(parents=True)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, classes, n_per_batch).tolist()
        batches[name] = (data, labels)
        with open(base / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": labels, b"batch_label": name.encode()}, f)
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(classes)]}, f)
    return batches


def test_cifar10_pickles(registry, no_config, monkeypatch):
    batches = _cifar(no_config / "cifar-10-batches-py")
    monkeypatch.setenv("BENCH_CIFAR10_ROOT", str(no_config))
    src = registry.get("cifar10").load(seed=0)
    assert src.n == 20 and src.array.shape == (20, 32, 32, 3) and src.class_names[3] == "c3"
    data, labels = batches["data_batch_2"]
    first = data[0].reshape(3, 32, 32)
    assert np.array_equal(src.array[4, :, :, 0], first[0]) and np.array_equal(src.array[4, :, :, 2], first[2])
    assert src.labels[4:8].tolist() == labels
    test = registry.get("cifar10-test").load(seed=0)
    assert test.n == 4 and np.array_equal(test.array[1].transpose(2, 0, 1).reshape(-1), batches["test_batch"][0][1])
    (no_config / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="data_batch_3"):
        registry.get("cifar10").load(seed=0)


class _Payload:
    """Unpickling this runs ``os.system`` (under plain pickle.load) and leaves a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("where", ["data_batch_1", "batches.meta"])
def test_cifar_crafted_pickle_runs_nothing(registry, no_config, monkeypatch, where):
    base = no_config / "cifar-10-batches-py"
    _cifar(base)
    marker = no_config / "pwned"
    with open(base / where, "wb") as f:
        pickle.dump({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0] * 4,
                     b"label_names": [_Payload(marker)]}, f)
    monkeypatch.setenv("BENCH_CIFAR10_ROOT", str(no_config))
    with pytest.raises(DataError) as err:
        registry.get("cifar10").load(seed=0)
    assert not marker.exists()
    msg = str(err.value)
    assert where in msg and "refused global" in msg and "system" in msg and "\n" not in msg


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar_batches_of_every_pickle_protocol_load(registry, no_config, monkeypatch, protocol):
    """The restricted unpickler admits numpy arrays however they were pickled (protocol 2 from
    Python 3 goes through ``_codecs.encode``, 5 through ``_frombuffer``); object arrays are refused."""
    base = no_config / "cifar-10-batches-py"
    batches = _cifar(base)
    for name, (data, labels) in batches.items():
        with open(base / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": labels, b"batch_label": name.encode()}, f, protocol=protocol)
    monkeypatch.setenv("BENCH_CIFAR10_ROOT", str(no_config))
    src = registry.get("cifar10-test").load(seed=0)
    assert np.array_equal(src.array[1].transpose(2, 0, 1).reshape(-1), batches["test_batch"][0][1])
    with open(base / "test_batch", "wb") as f:
        pickle.dump({b"data": np.array([[object()]], dtype=object), b"labels": [0]}, f, protocol=protocol)
    with pytest.raises(DataError, match=r"test_batch.*not a plain numeric array"):
        registry.get("cifar10-test").load(seed=0)
    with open(base / "test_batch", "wb") as f:
        pickle.dump({b"labels": [0]}, f, protocol=protocol)
    with pytest.raises(DataError, match="no 'data' entry"):
        registry.get("cifar10-test").load(seed=0)
    # numpy.ndarray((1,), "O") called directly (REDUCE) instead of through _reconstruct
    (base / "test_batch").write_bytes(b"\x80\x02cnumpy\nndarray\nK\x01\x85X\x01\x00\x00\x00O\x86R.")
    with pytest.raises(DataError, match="not a readable CIFAR pickle"):
        registry.get("cifar10-test").load(seed=0)


def test_cifar100_pickles(registry, no_config, monkeypatch):
    base = no_config / "c100" / "cifar-100-python"
    base.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for split, n in (("train", 6), ("test", 3)):
        with open(base / split, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         b"fine_labels": list(range(n)), b"coarse_labels": [i % 2 for i in range(n)]}, f)
    with open(base / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [f"f{i}".encode() for i in range(100)],
                     b"coarse_label_names": [f"k{i}".encode() for i in range(20)]}, f)
    monkeypatch.setenv("BENCH_CIFAR100_ROOT", str(base))                 # the folder itself works too
    src = registry.get("cifar100").load(seed=0)
    assert src.n == 6 and src.labels.tolist() == list(range(6)) and len(src.class_names) == 100
    assert src.concepts.shape == (6, 20) and src.concepts[:, 1].tolist() == [False, True] * 3
    assert registry.get("cifar100-test").load(seed=0).n == 3


# --------------------------------------------------------------------------- limit


def test_limit_stratified_and_seeded(passnet):
    s = passnet
    sub = limit(s, 120, seed=0)
    assert sub.n == 120 and sub.name == s.name and sub.revision != s.revision
    assert np.array_equal(limit(s, 120, seed=0).array, sub.array)
    assert not np.array_equal(limit(s, 120, seed=1).array, sub.array)
    for key in (s.labels, s.groups):
        full = np.bincount(key) * 120 / s.n
        got = np.bincount(key[np.isin(s.ids, sub.ids)], minlength=len(full))
        assert (np.abs(got - full) <= 1.0 + 1e-9).all()
    assert np.bincount(sub.groups).tolist() == [60, 60]
    assert limit(s, s.n, seed=0) is s
    # planted pairs kept inside the subsample are remapped, not lost
    pairs = sub.duplicate_pairs
    assert np.array_equal(sub.labels[pairs[:, 0]], sub.labels[pairs[:, 1]])
    with pytest.raises(BenchError, match="positive"):
        limit(s, 0)


def test_limit_by_group_when_unlabelled():
    union = S.make_synth_shift(0, n_per_level=20, n_levels=3)
    unlabelled = dataclasses.replace(union, labels=None)
    sub = limit(unlabelled, 40, seed=0)
    assert sub.n == 40 and sub.labels is None and np.bincount(sub.groups).tolist() == [10, 10, 10, 10]
    plain = dataclasses.replace(union, labels=None, groups=None)
    assert limit(plain, 10, seed=2).n == 10 and limit(plain, 10, seed=2).revision == limit(plain, 10, seed=2).revision
