"""Run records: one atomic JSON file per (method, dataset, extractor, params, seed) cell.

The ``comparability_key`` hashes everything that must match for two numbers to stand in
one leaderboard row: method + version + params, dataset + revision (+ limit), extractor
cache key and the metric-definition version. Seeds are what varies inside a row.
"""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

SCHEMA_VERSION = 1


class Metric(BaseModel):
    value: float | None
    higher_is_better: bool | None = None
    n: int | None = None


class MethodInfo(BaseModel):
    name: str
    version: str
    distribution: str = ""
    dist_version: str = ""
    roles: list[str] = Field(default_factory=list)
    params: dict[str, Any] = Field(default_factory=dict)
    #: run resources (workers, folders, memory limits): recorded, never part of any key
    resources: dict[str, Any] = Field(default_factory=dict)


class DatasetInfo(BaseModel):
    name: str
    revision: str
    n: int
    limit: int | None = None
    embedded: bool = False


class FeatureInfo(BaseModel):
    extractor: str
    cache_key: dict[str, Any] = Field(default_factory=dict)
    #: sha256 of the weights when given with ``--weights`` (part of the record path), else None
    weights: str | None = None
    #: extraction precision (fp32 | bf16 | fp16), part of the record path when not fp32
    precision: str = "fp32"


class Record(BaseModel):
    schema_version: int = SCHEMA_VERSION
    #: ``cell``: one method on one dataset of the benchmark grid (the leaderboard's rows);
    #: ``comparison``: ``bench compare A B`` (``dataset`` is A, ``dataset_b`` is B), never on the leaderboard
    kind: Literal["cell", "comparison"] = "cell"
    status: Literal["ok", "error"] = "ok"
    error: str | None = None
    #: why a cell failed: ``input`` (a one-line BenchError: bad data or parameters; exit 2) or
    #: ``crash`` (an unexpected exception in a method, traceback beside the record; exit 1)
    error_kind: Literal["input", "crash"] | None = None
    method: MethodInfo
    dataset: DatasetInfo
    dataset_b: DatasetInfo | None = None
    features: FeatureInfo
    seed: int
    preset: str = "paper"
    metrics: dict[str, Metric] = Field(default_factory=dict)
    statistics: dict[str, float | None] = Field(default_factory=dict)
    tables: dict[str, list[dict[str, Any]]] = Field(default_factory=dict)
    timings_s: dict[str, float] = Field(default_factory=dict)
    peak_memory_mb: dict[str, float] = Field(default_factory=dict)
    device: str = "cpu"
    environment: dict[str, str] = Field(default_factory=dict)
    git: dict[str, Any] = Field(default_factory=dict)
    bench_version: str = ""
    metrics_version: str = ""
    config_hash: str = ""
    comparability_key: str = ""


def stable_hash(obj: Any, length: int = 12) -> str:
    blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def config_hash(method: MethodInfo, preset: str) -> str:
    return stable_hash({"method": method.name, "version": method.version, "params": method.params,
                        "preset": preset})


def comparability_key(record: Record) -> str:
    return stable_hash({
        "method": [record.method.name, record.method.version, record.method.params],
        "dataset": [record.dataset.name, record.dataset.revision, record.dataset.limit],
        **({"dataset_b": [record.dataset_b.name, record.dataset_b.revision, record.dataset_b.limit]}
           if record.dataset_b is not None else {}),
        "features": record.features.cache_key or record.features.extractor,
        "metrics": record.metrics_version,
    }, 16)


def environment() -> dict[str, str]:
    env = {"python": sys.version.split()[0], "platform": platform.platform()}
    for dist in ("torch", "timm", "open_clip_torch", "transformers", "faiss-cpu", "faiss-gpu",
                 "scikit-learn", "numpy", "scipy", "pluggy"):
        try:
            env[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    try:
        import torch

        if torch.cuda.is_available():
            env["cuda"] = str(torch.version.cuda)
            env["gpu"] = torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001, S110 - the environment is informative only
        pass
    return env


def git_info() -> dict[str, Any]:
    here = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=5, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, check=False,
                                    capture_output=True, text=True, timeout=5).stdout.strip())
        return {"hash": sha, "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"hash": None, "dirty": None}
