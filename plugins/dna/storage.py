"""Save / load DNAs in vdna's layout: ``<path>.json`` (metadata) + ``<path>.npz`` (arrays).

The JSON carries every key vdna's loader reads, so vdna can open our files; our own
metadata (extractor cache key and weights, layers, the ranges and their convention, bins,
sample) sits under ``"bench"``. Histogram counts are stored as int32 only while every
count fits (vdna always casts to int32 and silently overflows past 2³¹ counts per neuron);
otherwise as int64. Gaussians are stored in float64 so a round trip changes no distance.
"""

from __future__ import annotations

import datetime
import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.errors import BenchError, DataError

from .dna import DNA, GaussianDNA, HistogramDNA, LayerGaussianDNA
from .histogram import Ranges

FORMAT = 1
#: the vdna file-format version whose layout we write
VDNA_FORMAT_VERSION = "0.1.1"
INT32_MAX = np.iinfo(np.int32).max


def _paths(path: str | os.PathLike) -> tuple[Path, Path]:
    p = Path(path)
    if p.suffix in (".json", ".npz"):
        p = p.with_suffix("")
    return p.parent / (p.name + ".json"), p.parent / (p.name + ".npz")


def _arrays(dna: DNA) -> tuple[dict[str, np.ndarray], str | None]:
    if isinstance(dna, HistogramDNA):
        top = max((int(v.max()) for v in dna.counts.values() if v.numel()), default=0)
        dtype = np.int32 if top <= INT32_MAX else np.int64
        return {k: dna.counts[k].cpu().numpy().astype(dtype) for k in dna.layers}, np.dtype(dtype).name
    if isinstance(dna, GaussianDNA):
        out = {}
        for k in dna.layers:
            out[f"mu-{k}"] = dna.mu[k].cpu().numpy().astype(np.float64)
            out[f"var-{k}"] = dna.var[k].cpu().numpy().astype(np.float64)
        return out, None
    if isinstance(dna, LayerGaussianDNA):
        out = {}
        for k in dna.layers:
            out[f"mu-{k}"] = dna.mu[k].cpu().numpy().astype(np.float64)
            out[f"sigma-{k}"] = dna.sigma[k].cpu().numpy().astype(np.float64)
        return out, None
    raise BenchError(f"dna: cannot save a {type(dna).__name__}")


def metadata(dna: DNA, counts_dtype: str | None = None) -> dict[str, Any]:
    """The JSON document: vdna's keys plus ours under ``bench``."""
    bins = dna.bins if isinstance(dna, HistogramDNA) else None
    ranges = dna.ranges if isinstance(dna, HistogramDNA) else None
    return {
        "time_of_compute": datetime.datetime.now().strftime("%I:%M%p on %B %d, %Y"),
        "vdna_version": VDNA_FORMAT_VERSION,
        "distribution": {"hist_nb_bins": bins} if bins is not None else {},
        "type": dna.kind,
        "name": dna.name,
        "data_settings": {"source": dna.source or "NotFilled", "crop_to_square_pre_resize": "none",
                          "resize_mode": "extractor", "custom_fn_resize": None, "custom_np_image_tranform": None,
                          "custom_pil_image_tranform": None, "shuffle_files": False, "num_images": -1},
        "extraction_settings": {
            "average_feats_spatially": not isinstance(dna, HistogramDNA) or dna.sample == "image_mean",
            "accumulate_spatial_feats_in_hist": isinstance(dna, HistogramDNA),
            "accumulate_sample_feats_in_hist": isinstance(dna, HistogramDNA),
            "keep_only_min_max": False, "normalise_feats": isinstance(dna, HistogramDNA),
            "range_scale_for_norm_params": ranges.scale if ranges is not None else 1.2,
            "hist_range": [-1.0, 1.0], "hist_nb_bins": bins or 0,
        },
        "num_images": int(dna.num_images),
        "feature_extractor_name": dna.extractor.get("name", "NotFilled"),
        "neurons_list": dict(dna.neurons),
        "bench": {"format": FORMAT, "writer": "bench_dna", "extractor": dna.extractor, "layers": dna.layers,
                  "bins": bins, "sample": dna.sample, "counts_dtype": counts_dtype,
                  "ranges": ranges.to_json() if ranges is not None else None},
    }


COMPRESSIONS = {"deflate": zipfile.ZIP_DEFLATED, "lzma": zipfile.ZIP_LZMA}


def _write_npz(f, arrays: dict[str, np.ndarray], compression: str) -> None:
    """An .npz (a zip of .npy members) that ``np.load`` — and so vdna — reads with either method.

    ``deflate`` is ``np.savez_compressed``; ``lzma`` is ~1.5× smaller on large-count DNAs.
    """
    if compression not in COMPRESSIONS:
        raise BenchError(f"dna: compression must be one of {', '.join(COMPRESSIONS)}, got {compression!r}")
    if compression == "deflate":
        np.savez_compressed(f, **arrays)
        return
    with zipfile.ZipFile(f, "w", compression=COMPRESSIONS[compression]) as zf:
        for key, arr in arrays.items():
            with zf.open(f"{key}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(arr), allow_pickle=False)


def save_dna(dna: DNA, path: str | os.PathLike, *, compression: str = "deflate") -> dict[str, Any]:
    """Write ``path.json`` + ``path.npz`` atomically; returns the paths and their sizes in bytes."""
    jpath, npath = _paths(path)
    jpath.parent.mkdir(parents=True, exist_ok=True)
    arrays, counts_dtype = _arrays(dna)
    meta = metadata(dna, counts_dtype)
    tmp_j = jpath.with_name(f".{jpath.name}.tmp{os.getpid()}")
    tmp_n = npath.with_name(f".{npath.name}.tmp{os.getpid()}")
    with open(tmp_j, "w") as f:
        json.dump(meta, f, indent=1)
    with open(tmp_n, "wb") as f:
        _write_npz(f, arrays, compression)
    os.replace(tmp_n, npath)
    os.replace(tmp_j, jpath)
    return {"json": str(jpath), "npz": str(npath), "json_bytes": jpath.stat().st_size,
            "npz_bytes": npath.stat().st_size, "bytes": jpath.stat().st_size + npath.stat().st_size}


def saved_size(dna: DNA, compression: str = "deflate") -> int:
    """Bytes the saved DNA takes (JSON + compressed npz), measured in memory."""
    arrays, counts_dtype = _arrays(dna)
    buf = io.BytesIO()
    _write_npz(buf, arrays, compression)
    return buf.tell() + len(json.dumps(metadata(dna, counts_dtype), indent=1).encode())


def load_dna(path: str | os.PathLike, device: torch.device | str = "cpu") -> DNA:
    """Load a DNA written by :func:`save_dna` or by vdna (vdna files carry no ranges)."""
    jpath, npath = _paths(path)
    if not jpath.exists() or not npath.exists():
        raise DataError(f"dna: no saved DNA at {str(jpath.with_suffix(''))!r} (need both .json and .npz)")
    try:
        meta = json.loads(jpath.read_text())
        kind, neurons = meta["type"], {k: int(v) for k, v in meta["neurons_list"].items()}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DataError(f"dna: {str(jpath)!r} is not a DNA metadata file ({type(exc).__name__}: {exc})") from None
    ours = meta.get("bench") or {}
    extractor = ours.get("extractor") or {"name": meta.get("feature_extractor_name", "NotFilled")}
    common = {"neurons": neurons, "num_images": int(meta.get("num_images", 0)), "extractor": extractor,
              "sample": ours.get("sample", "positions"), "source": str(meta.get("data_settings", {}).get("source", ""))}
    try:
        with np.load(npath, allow_pickle=False) as data:  # never unpickle: a placed .npz cannot run code
            return _arrays_to_dna(kind, data, neurons, ours, meta, common, device)
    except KeyError as exc:
        raise DataError(f"dna: {str(npath)!r} lacks array {exc.args[0]!r} for its {kind} DNA") from None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:  # object arrays, truncated or not a zip
        raise DataError(f"dna: {str(npath)!r} is not a readable DNA array file ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''})") from None


def _arrays_to_dna(kind, data, neurons, ours, meta, common, device) -> DNA:
    if kind == "histogram":
        bins = int(ours.get("bins") or meta["distribution"]["hist_nb_bins"])
        ranges = Ranges.from_json(ours["ranges"]) if ours.get("ranges") else None
        counts = {k: torch.from_numpy(data[k].astype(np.int64)).to(device) for k in neurons}
        return HistogramDNA(**common, counts=counts, bins=bins, ranges=ranges)
    if kind == "gaussian":
        return GaussianDNA(**common, mu={k: _f64(data[f"mu-{k}"], device) for k in neurons},
                           var={k: _f64(data[f"var-{k}"], device) for k in neurons})
    if kind == "layer-gaussian":
        return LayerGaussianDNA(**common, mu={k: _f64(data[f"mu-{k}"], device) for k in neurons},
                                sigma={k: _f64(data[f"sigma-{k}"], device) for k in neurons})
    raise DataError(f"dna: cannot load a DNA of type {kind!r}; known: histogram, gaussian, layer-gaussian")


def _f64(a: np.ndarray, device) -> torch.Tensor:
    return torch.from_numpy(np.asarray(a, dtype=np.float64)).to(device)
