"""What the multicut comparator says differs between A and B (``bench compare``): the clusters of
A ∪ B that one side fills (the multicut paper's clusters specific to one dataset)."""

from __future__ import annotations

import numpy as np

from bench.api import Finding

#: a cluster is one side's when at least this share of its images come from that side
DOMINANT = 0.9
#: clusters (and images per cluster) a finding shows
SHOWN = 8


def multicut_findings(codes: np.ndarray, n_a: int) -> list[Finding]:
    codes = np.asarray(codes)
    side = np.arange(len(codes)) >= n_a
    ids, sizes = np.unique(codes, return_counts=True)
    order = np.argsort(-sizes, kind="stable")
    rows, out = [], []
    for c, size in zip(ids[order], sizes[order]):
        members = np.flatnonzero(codes == c)
        share_a = float(np.mean(~side[members]))
        rows.append({"cluster": int(c), "size": int(size), "share of A": share_a,
                     "filled by": "A" if share_a >= DOMINANT else "B" if share_a <= 1 - DOMINANT else "both"})
    for who, key in (("A", "a"), ("B", "b")):
        mine = [r for r in rows if r["filled by"] == who and r["size"] >= 2]
        images = []
        for r in mine[:SHOWN]:
            members = np.flatnonzero(codes == r["cluster"])
            members = members[side[members]] - n_a if key == "b" else members[~side[members]]
            images.append((f"cluster {r['cluster']} ({r['size']} images)", key, members[:12].tolist()))
        out.append(Finding(f"clusters only {who} fills (≥ {DOMINANT:.0%} of their images)", side=key,
                           rows=mine, images=images))
    out.append(Finding("every cluster of A ∪ B, largest first", rows=rows))
    return out
