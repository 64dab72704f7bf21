"""The run context every verb shares: configuration, validation before any work, the device, the
extractor, the feature store, the run store and record headers.

``bench run`` (the benchmark grid) and ``bench compare`` / ``bench summarise`` (a user's own data)
are siblings over this module; neither imports the other. A verb's own options live in its config
class, which extends :class:`SharedConfig`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from bench import __version__, plugins, records
from bench.api import DataView, tags_of
from bench.datasets.base import ImageSource
from bench.errors import BenchError
from bench.extractors.base import Extractor, ExtractorConfig, create_extractor
from bench.extractors.builtin import DEFAULT_EXTRACTOR
from bench.features import FeatureStore, default_cache_dir
from bench.metrics import METRICS_VERSION
from bench.runstore import RunStore, check_writable_dir, jsonable

MAX_SEED = 2**32 - 1   # numpy's SeedSequence takes more, but torch.manual_seed and faiss take 32/64 bits
PRESETS = ("auto", "paper", "quick")


@dataclass
class SharedConfig:
    """Options every verb has."""

    extractor: str = DEFAULT_EXTRACTOR
    weights: str | None = None
    device: str = "auto"
    precision: str = "fp32"       # fp32 | bf16 | fp16: in the extractor's cache key and the record path
    workers: int | None = None    # decode workers (None: one per core); a run resource, not in any key
    decode: str = "auto"          # JPEG decode: auto (GPU on CUDA) | cpu | gpu; a run resource
    limit: int | None = None
    preset: str = "auto"          # auto | paper | quick
    #: ``--set`` strings (``METHOD[.ROLE].PARAM=VALUE``) or parsed :class:`bench.factory.Setting` objects
    settings: list[Any] = field(default_factory=list)
    batch_size: int = 64
    out: Path = Path("results")
    cache_dir: Path | None = None
    no_cache: bool = False
    progress: bool = False
    strict_plugins: bool = False


def check_seed(seed: int, flag: str) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        what = "integers" if flag.endswith("s") else "an integer"
        raise BenchError(f"{flag} must be {what} from 0 to {MAX_SEED}, got {seed}")


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BenchError(f"--device {device} was asked for but torch sees no CUDA device; use --device cpu or auto")
    if device != "cpu" and not device.startswith("cuda"):
        raise BenchError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N")
    try:
        return torch.device(device)
    except RuntimeError:
        raise BenchError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None


def split_params(methods) -> tuple[dict[str, Any], dict[str, Any]]:
    """(science parameters, run resources) of a method's role objects, JSON-ready. Only the first
    enter the config hash and the comparability key (:attr:`bench.api.Tags.resources`)."""
    params: dict[str, Any] = {}
    resources: dict[str, Any] = {}
    for obj in methods:
        spare = tags_of(type(obj)).resources
        for k, v in obj.get_params().items():
            (resources if k in spare else params)[k] = jsonable(v)
    return params, resources


def distribution_of(cls: type) -> tuple[str, str]:
    """(distribution, version) that ships a method class (recorded beside its name)."""
    top = cls.__module__.split(".")[0]
    dists = metadata.packages_distributions().get(top, [])
    if dists:
        try:
            return dists[0], metadata.version(dists[0])
        except metadata.PackageNotFoundError:
            pass
    return top, ""


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    p = Path(path)
    files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
    for f in files:
        with open(f, "rb") as fh:
            for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def validate_shared(cfg: SharedConfig, regs: plugins.Registries) -> ExtractorConfig:
    """Every shared option checked before any work: ONE-line BenchError for the first problem."""
    regs.extractors.get(cfg.extractor)   # an unknown name suggests the closest
    if cfg.limit is not None and cfg.limit < 2:
        raise BenchError(f"--limit must be at least 2, got {cfg.limit}")
    if isinstance(cfg.batch_size, bool) or not isinstance(cfg.batch_size, int) or cfg.batch_size < 1:
        raise BenchError(f"--batch-size must be at least 1, got {cfg.batch_size}")
    if cfg.preset not in PRESETS:
        raise BenchError(f"--preset must be auto, paper or quick, got {cfg.preset!r}")
    extractor_config = RunContext.extractor_config(cfg)
    check_writable_dir(cfg.out, "--out")
    if cfg.cache_dir is not None and not cfg.no_cache:
        check_writable_dir(cfg.cache_dir, "--cache-dir")
    return extractor_config


class RunContext:
    """What a verb works with once its config is valid: device, extractor, feature store, run store."""

    def __init__(self, cfg: SharedConfig, regs: plugins.Registries):
        from bench import distributed

        self.cfg, self.regs = cfg, regs
        self.device = resolve_device(cfg.device)
        self.dist = distributed.init(self.device)   # a no-op unless started by torchrun
        self.device = distributed.local_device(self.device)
        self.extractor: Extractor = create_extractor(regs.extractors.get(cfg.extractor), weights=cfg.weights,
                                                     device=self.device, config=self.extractor_config(cfg))
        self.weights_sha = file_sha256(cfg.weights) if cfg.weights and Path(cfg.weights).exists() else None
        self.store = FeatureStore(None if cfg.no_cache else (cfg.cache_dir or default_cache_dir()))
        self.runs = RunStore(cfg.out)

    @staticmethod
    def extractor_config(cfg: SharedConfig) -> ExtractorConfig:
        return ExtractorConfig(precision=cfg.precision, workers=cfg.workers, decode=cfg.decode)

    def view(self, source: ImageSource, *, artefacts: Path | None = None, memo: bool = False) -> DataView:
        """``source`` through the run's extractor; ``memo``: keep streamed activations and images in
        memory for the many calls of a compare (:class:`bench.memo.MemoView`)."""
        from bench.memo import MemoView

        cls = MemoView if memo else DataView
        return cls(source, self.extractor, self.store, device=self.device, batch_size=self.cfg.batch_size,
                   progress=self.cfg.progress, artefact_dir=artefacts, experts=self.regs.experts)

    def feature_info(self) -> records.FeatureInfo:
        return records.FeatureInfo(extractor=self.cfg.extractor, cache_key=jsonable(self.extractor.cache_key()),
                                   weights=self.weights_sha, precision=self.cfg.precision)

    def record(self, *, method: str, roles: dict[str, Any], dataset: records.DatasetInfo, seed: int, preset: str,
               kind: str = "cell", dataset_b: records.DatasetInfo | None = None) -> records.Record:
        """A record's header: method (version, distribution, science parameters, resources), data,
        features, environment, and the keys that decide what it may be compared with."""
        first = next(iter(roles.values()))
        dist, dist_version = distribution_of(type(first))
        params, resources = split_params(roles.values())
        rec = records.Record(
            kind=kind,
            method=records.MethodInfo(name=method, version=str(first.version), distribution=dist,
                                      dist_version=dist_version, roles=sorted(roles), params=params,
                                      resources=resources),
            dataset=dataset, dataset_b=dataset_b, features=self.feature_info(),
            seed=seed, preset=preset, device=str(self.device), bench_version=__version__,
            metrics_version=METRICS_VERSION, environment=records.environment(), git=records.git_info(),
        )
        rec.config_hash = records.config_hash(rec.method, preset)
        rec.comparability_key = records.comparability_key(rec)
        return rec
