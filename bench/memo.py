"""A DataView that keeps what it streams, for the many subsets a permutation null draws.

``bench compare`` scores hundreds of random re-splits of A ∪ B. Pooled features are cached by
the feature store already; layer activations (DNA) and decoded images (wavelet, ProtoSim) are
streamed again by every compare call. :class:`MemoView` streams each once for the whole union,
keeps it in host memory (up to ``max_bytes``; beyond that it falls back to streaming), and
serves every subset from there — the same tensors, batch for batch, as streaming would give.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from bench.api import DataView

#: default host-memory budget of one memo (activations + images of A ∪ B)
DEFAULT_MAX_BYTES = 4 * 2**30


class MemoView(DataView):
    """A :class:`DataView` whose subsets share one memo of activations and images."""

    def __init__(self, *args: Any, max_bytes: int = DEFAULT_MAX_BYTES, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._memo: dict[Any, Any] = {"bytes": 0, "max_bytes": max_bytes, "off": set()}

    def _remember(self, key: Any, make) -> Any:
        memo = self._memo
        if key in memo["off"]:
            return None
        if key not in memo:
            value = make(memo["max_bytes"] - memo["bytes"])
            if value is None:
                memo["off"].add(key)   # too large: stream this one as usual
                return None
            memo[key] = value
        return memo[key]

    def _whole(self) -> DataView:
        return DataView(self.source, self.extractor, self.store, device=self.device, batch_size=self.batch_size,
                        progress=self.progress, experts=self.experts)

    def activations(self, layers: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
        layers = list(layers)

        def fill(budget: int):
            parts: dict[str, list[torch.Tensor]] = {k: [] for k in layers}
            used = 0
            for batch in self._whole().activations(layers):
                for k in layers:
                    t = batch[k].detach().to("cpu")
                    parts[k].append(t)
                    used += t.element_size() * t.nelement()
                if used > budget:
                    return None
            self._memo["bytes"] += used
            return {k: torch.cat(v) for k, v in parts.items()}

        table = self._remember(("activations", tuple(layers)), fill)
        if table is None:
            yield from super().activations(layers)
            return
        for start in range(0, len(self.indices), self.batch_size):
            rows = torch.as_tensor(self.indices[start:start + self.batch_size])
            yield {k: table[k][rows].to(self.device) for k in layers}

    def images(self, batch_size: int | None = None) -> Iterator[np.ndarray]:
        def fill(budget: int):
            first = self.source.image(0)
            if first.nbytes * self.source.n > budget:
                return None
            try:
                out = np.stack([first] + [self.source.image(i) for i in range(1, self.source.n)])
            except ValueError:   # images of different sizes: keep streaming them
                return None
            self._memo["bytes"] += out.nbytes
            return out

        table = self._remember("images", fill) if self.source.n else None
        if table is None:
            yield from super().images(batch_size)
            return
        bs = batch_size or self.batch_size
        for start in range(0, len(self.indices), bs):
            yield table[self.indices[start:start + bs]]
