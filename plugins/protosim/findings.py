"""What ProtoSim says differs between A and B (``bench compare``): the prototypes specific to A,
to B and shared by both, each with its top images and, as a figure, their attention maps (the
paper's Figs. 4–5)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from bench_protosim.analysis import save_grid, top_images

from bench.api import Finding

#: prototypes per kind a finding shows (tables list them all)
SHOWN = 3


def protosim_findings(run: dict, detail: dict, n_a: int, n_top: int) -> list[Finding]:
    inst = run["assigned"].instance_counts
    out = []
    for key, title, side in (("specific_a", "prototypes specific to A", "a"),
                             ("specific_b", "prototypes specific to B", "b"),
                             ("shared", "prototypes shared by A and B", None)):
        protos = [int(p) for p in detail[key]]
        finding = Finding(title, side=side)
        for p in protos:
            rows = top_images(inst, p, n_top)
            in_a = [int(r) for r in rows if r < n_a]
            finding.rows.append({"prototype": p, "top images in A": len(in_a),
                                 "top images in B": len(rows) - len(in_a)})
        for p in protos[:SHOWN]:
            rows = top_images(inst, p, n_top)
            in_a, in_b = [int(r) for r in rows if r < n_a], [int(r) - n_a for r in rows if r >= n_a]
            finding.images += [(f"prototype {p}: in A", "a", in_a)] if in_a else []
            finding.images += [(f"prototype {p}: in B", "b", in_b)] if in_b else []
        if protos:
            finding.figures["attention"] = _grid(run, protos[:SHOWN], n_top)
        out.append(finding)
    return out


def _grid(run: dict, prototypes: list[int], n_top: int) -> np.ndarray:
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        path = save_grid(Path(tmp) / "grid.png", run["table"], run["backbone"], run["stats_net"],
                         run["assigned"].instance_counts, prototypes, [f"prototype {p}" for p in prototypes], n_top)
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB")).copy()
