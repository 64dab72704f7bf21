"""Started by ``test_summarise_torchrun.py`` under ``torchrun`` (gloo, CPU): saved block states of
FD and DNA computed by the ranks together and by rank 0 alone, with a summary budget small enough
that blocks hold several random images (blocks cross the ranks' row shards), then a rank whose
comparator has another version. Rank 0 writes what it found to ``OUT`` (JSON).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from bench import distributed
from bench import statistics as S
from bench.api import DataView
from bench.baselines import FrechetDistance
from bench.extractors.pixels import PixelsExtractor
from bench.features import FeatureStore
from bench.plugins import load
from bench.testing import make_tiny_source


def main(out: str) -> None:
    ctx = distributed.init(torch.device("cpu"))
    assert ctx.world_size == 2, ctx
    # 8 px pixels: 192-D features; 260 images > 192 dimensions, so FD saves block sums, not rows
    view = DataView(make_tiny_source(260, seed=1), PixelsExtractor(size=8), FeatureStore(None), batch_size=32)
    result: dict = {"keys": {}, "differ": [], "sizes": {}}
    dna = load().comparators.get("dna")(bins=50)
    # budgets that put 5 images in a block: FD's blocks are 296 kB, DNA's (3 neurons × 50 bins) 600 B
    for name, comparator, budget in (("fd", FrechetDistance(), 2**24), ("dna", dna, 2**15)):
        S.SUMMARY_BUDGET_BYTES = budget
        together = comparator.saved_states(view, seed=4)
        with distributed.solo():
            alone = comparator.saved_states(view, seed=4)
        if not ctx.is_main:
            assert together == {}, sorted(together)
            continue
        result["keys"][name] = [sorted(together), sorted(alone)]
        result["sizes"][name] = np.asarray(together["state.block_sizes"]).tolist()
        for k in set(together) & set(alone):
            a, b = together[k], alone[k]
            same = (a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)) \
                if isinstance(a, np.ndarray) else a == b
            if not same:
                result["differ"].append(f"{name}/{k}")
    fd = FrechetDistance()
    if ctx.rank == 1:
        fd.version = "2"   # as if this rank ran another bench
    try:
        fd.saved_states(view, seed=4)
        message = ""
    except distributed.SharedError as exc:
        message = str(exc)
    messages = distributed.all_gather_object(message)
    if ctx.is_main:
        result["mismatch"] = messages
        Path(out).write_text(json.dumps(result))
    distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
