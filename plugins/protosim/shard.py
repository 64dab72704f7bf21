"""A rank's share of each global batch, and per-sample random draws that ignore the split.

Under DDP every rank holds rows [lo, hi) of each global batch of ``total`` images; a
crop-major stack (crop 0's rows, then crop 1's, ...) holds that block once per crop. Crop
parameters, Gumbel noise and drop-path masks are drawn for the whole global stack from the
generator every rank seeds alike, and each rank keeps its own items: every sample then gets
the random numbers the single process gives it, so N processes reproduce the 1-process run
up to float reduction order, and a single process (no shard) makes exactly the draws it
always made. The price is each rank's RNG time and one transient tensor of the global
batch's size per draw (``chunk_tokens`` bounds that for the Gumbel noise).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Shard:
    """Rows [lo, hi) of every global batch of ``total`` images."""

    lo: int
    hi: int
    total: int

    def _crops(self, n_rows: int) -> int:
        return n_rows // (self.hi - self.lo)

    def global_items(self, n_rows: int, per_row: int = 1) -> int:
        """Items of the global stack whose local part has ``n_rows`` rows of ``per_row`` items."""
        return self._crops(n_rows) * self.total * per_row

    def positions(self, n_rows: int, per_row: int = 1) -> torch.Tensor:
        """Index in the global stack of each local item (ascending, as the local stack is)."""
        crops = torch.arange(self._crops(n_rows))[:, None] * self.total
        rows = (crops + torch.arange(self.lo, self.hi)).flatten()
        return (rows[:, None] * per_row + torch.arange(per_row)).flatten()

    def take(self, full: torch.Tensor, n_rows: int, per_row: int = 1) -> torch.Tensor:
        """This rank's items of ``full``, a tensor over the global stack's items (first dim)."""
        return full.unflatten(0, (self._crops(n_rows), self.total, per_row))[:, self.lo:self.hi].flatten(0, 2)


def draw(shard: Shard | None, n_rows: int, fn: Callable[[int], torch.Tensor], per_row: int = 1) -> torch.Tensor:
    """``fn(m)`` draws the randomness of m leading items; returns that of the ``n_rows × per_row``
    local items, drawn for the global stack when there is a shard."""
    if shard is None:
        return fn(n_rows * per_row)
    return shard.take(fn(shard.global_items(n_rows, per_row)), n_rows, per_row)


def uniform(shard: Shard | None, n_rows: int, *tail: int, low: float = 0.0, high: float = 1.0,
            device: torch.device | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """U[low, high) of shape (n_rows, *tail), the draw of ``torch.empty(...).uniform_`` (= ``torch.rand``)."""
    return draw(shard, n_rows, lambda m: torch.empty(m, *tail, device=device, dtype=dtype).uniform_(low, high))
