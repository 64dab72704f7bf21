"""One rank of the extraction benchmark: extract a dataset's pooled features into a fresh
store (collectively under torchrun) and print this rank's time and peak RSS as JSON."""

import json
import resource
import sys
import time

import torch

from bench import distributed, plugins
from bench.datasets import get_spec
from bench.features import FeatureStore


def main(store_root: str, dataset: str, batch_size: int) -> None:
    ctx = distributed.init(torch.device("cpu"))
    regs = plugins.load()
    source = get_spec(regs.datasets, dataset).load(seed=0)
    extractor = regs.extractors.get("tiny-vit")(weights=None, device=torch.device("cpu"))
    distributed.barrier()
    t0 = time.perf_counter()
    feats = FeatureStore(store_root).features(source, extractor, batch_size=batch_size, collective=True)
    seconds = time.perf_counter() - t0
    print(json.dumps({"rank": ctx.rank, "world_size": ctx.world_size, "seconds": seconds, "n": len(feats),
                      "threads": torch.get_num_threads(),
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
    distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
