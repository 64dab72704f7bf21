"""What the wavelet comparator says differs between A and B (``bench compare``): the images of B
that are near-duplicates of images of A (train/test leakage, the paper's Algorithm 2 across two
sets), and the images of B least like anything in A."""

from __future__ import annotations

import numpy as np

from bench.api import Finding

#: pairs / images a finding shows
SHOWN = 10


def wavelet_findings(detail: dict, threshold: float) -> list[Finding]:
    pairs = np.asarray(detail["near_duplicate_pairs"]).reshape(-1, 2)
    ssim = np.asarray(detail["ssim_b_to_a"])
    order = np.argsort(-ssim[pairs[:, 1]], kind="stable") if len(pairs) else np.zeros(0, dtype=np.int64)
    pairs = pairs[order]
    dup = Finding(f"near-duplicates across A and B (SSIM ≥ {threshold:g})",
                  rows=[{"a": int(a), "b": int(b), "ssim": float(ssim[b])} for a, b in pairs])
    if len(pairs):
        shown = pairs[:SHOWN]
        dup.images = [("in A", "a", shown[:, 0].tolist()), ("in B", "b", shown[:, 1].tolist())]
    least = [int(i) for i in np.asarray(detail.get("least_similar_b", []))[:SHOWN]]
    new = Finding("images of B least like anything in A", side="b",
                  rows=[{"b": i, "ssim to A": float(ssim[i])} for i in least],
                  images=[("B, least like A", "b", least)] if least else [])
    return [dup, new]
