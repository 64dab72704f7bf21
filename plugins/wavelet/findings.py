"""What the wavelet comparator says differs between A and B (``bench compare``): near-duplicate
pairs across A and B (train/test leakage), near-duplicates within each side, and the images of B
farthest from anything in A."""

from __future__ import annotations

import numpy as np

from bench.api import Finding

#: pairs / images a finding shows
SHOWN = 10


def wavelet_findings(detail: dict, rule: str) -> list[Finding]:
    """``rule``: how pairs were decided (the finding titles say it)."""
    pairs = np.asarray(detail["near_duplicate_pairs"], dtype=np.int64).reshape(-1, 2)
    if "pair_relative_distance" in detail:
        closeness = {"distance / typical": np.asarray(detail["pair_relative_distance"], dtype=np.float64)}
    else:
        closeness = {"ssim": np.asarray(detail["pair_ssim"], dtype=np.float64)}
    (col, vals), = closeness.items()
    across = Finding(f"near-duplicates across A and B ({rule})",
                     rows=[{"a": int(a), "b": int(b), col: float(v)} for (a, b), v in zip(pairs, vals)])
    if len(pairs):
        shown = pairs[:SHOWN]
        across.images = [("in A", "a", shown[:, 0].tolist()), ("in B", "b", shown[:, 1].tolist())]
    out = [across]
    for side in ("a", "b"):
        within = np.asarray(detail[f"duplicate_pairs_within_{side}"], dtype=np.int64).reshape(-1, 2)
        if len(within):
            f = Finding(f"near-duplicates within {side.upper()} ({rule})", side=side,
                        rows=[{"first": int(i), "second": int(j)} for i, j in within])
            shown = within[:SHOWN]
            f.images = [("first", side, shown[:, 0].tolist()), ("second", side, shown[:, 1].tolist())]
            out.append(f)
    dist = np.asarray(detail["distance_b_to_a"], dtype=np.float64)
    least = [int(i) for i in np.asarray(detail.get("least_similar_b", []))[:SHOWN]]
    out.append(Finding("images of B farthest from anything in A (wavelet space)", side="b",
                       rows=[{"b": i, "distance to nearest A": float(dist[i])} for i in least],
                       images=[("B, least like A", "b", least)] if least else []))
    return out
