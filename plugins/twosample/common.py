"""What the three comparators share: the features of both sides, checked once."""

from __future__ import annotations

import numpy as np

from bench.api import DataView, check_finite
from bench.errors import BenchError, DataError


def side_features(a: DataView, b: DataView, layer: str, who: str, *, minimum: int = 2) -> tuple[np.ndarray, int]:
    """(A ∪ B features as float64, n_A): A's rows first; ONE line for too few images or other widths."""
    if not isinstance(layer, str):
        raise BenchError(f"{who}: layer must be a layer name, got {layer!r}")
    if len(a) < minimum or len(b) < minimum:
        raise DataError(f"{who}: needs at least {minimum} images per side, got {len(a)} and {len(b)}")
    xa, xb = a.features(layer), b.features(layer)
    if xa.shape[1] != xb.shape[1]:
        raise DataError(f"{who}: feature sizes differ ({xa.shape[1]} vs {xb.shape[1]}); "
                        "compare datasets through the same extractor")
    x = np.concatenate([np.asarray(xa, dtype=np.float64), np.asarray(xb, dtype=np.float64)])
    return check_finite(x, what=f"{who}: features"), len(xa)


def positive_int(value, name: str, who: str, *, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise BenchError(f"{who}: {name} must be an integer >= {minimum}, got {value!r}")


def top_rows(order: np.ndarray, per_row: int, label) -> list[tuple[str, list[int]]]:
    """``order`` cut into montage rows of ``per_row`` images, each labelled by ``label(start, chunk)``."""
    return [(label(s, order[s:s + per_row]), [int(i) for i in order[s:s + per_row]])
            for s in range(0, len(order), per_row)]
