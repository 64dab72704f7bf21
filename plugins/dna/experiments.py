"""Experiments behind the DNA plugin's "done when" numbers: ``python -m bench_dna.experiments``.

* ``shift_ladder``: the harness' fidelity protocol on ``synth-shift`` (reference vs each mixture;
  Spearman with the true proportion, null vs between), through ``bench.evaluate``.
* ``person_selection``: does neuron selection focus the comparison? On ``synth-passnet``,
  neurons are ranked on person vs no-person example objects; disjoint test sets mix objects
  with and without a person (person share 0 … 1) and, as a nuisance, 0 or 25 % scenes. The
  distance of each test set to a no-person reference should follow the person share: we
  report Spearman(distance, person share) over all test sets, and at fixed scene share, for
  all neurons and for the selected ones.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

import numpy as np
from scipy.stats import spearmanr

from bench.errors import BenchError
from bench.factory import create_view

from .distances import distance
from .dna import build_from_view, compute_ranges
from .plugin import DNAComparator
from .selection import rank_from_labels, top_k


def _extractor(name: str):
    from bench import plugins

    regs = plugins.load()
    if name not in regs.extractors:
        raise BenchError(f"dna experiments: extractor {name!r} is not registered "
                         f"(registered: {', '.join(regs.extractors.names()) or 'none'})")
    return regs.extractors.get(name)(), regs


def shift_ladder(extractor: str = "tiny-vit", seed: int = 0, **params) -> dict:
    """The harness' comparator evaluation on ``synth-shift`` with the quick preset (+ ``params``)."""
    from bench.evaluate import evaluate_comparator

    ext, regs = _extractor(extractor)
    spec = regs.datasets.get("synth-shift")
    comp = DNAComparator(**{**DNAComparator.quick_params, **params})
    out, detail = evaluate_comparator(comp, create_view(spec.load(seed=seed), ext), seed=seed, spec=spec)
    return {**out, **detail}


def person_selection(extractor: str = "tiny-vit", *, layers: Sequence[str] = ("pooled",),
                     seeds: Sequence[int] = range(5), top: int = 100, n_examples: int = 100, set_size: int = 80,
                     reps: int = 4, concept: str = "person:person") -> dict:
    """Spearman of DNA distance with the person share of test sets: all neurons vs selected ones."""
    ext, regs = _extractor(extractor)
    src = regs.datasets.get("synth-passnet").load(seed=0)
    view = create_view(src, ext)
    layers = list(layers)
    person = src.concepts[:, src.concept_names.index(concept)].astype(bool)
    is_scene = np.asarray(src.notes["is_scene"], dtype=bool)          # both sources mix the two kinds
    objects, scenes = ~is_scene, is_scene & ~person
    res: dict[str, list[tuple[float, float]]] = {"all": [], "selected": []}
    for seed in seeds:
        rng = np.random.default_rng(seed)
        pos, neg, scn = (rng.permutation(np.flatnonzero(m)) for m in (objects & person, objects & ~person, scenes))
        examples = np.concatenate([pos[:n_examples], neg[:n_examples]])
        reference = neg[n_examples:n_examples + set_size]
        pool_p, pool_n = pos[n_examples:], neg[n_examples + set_size:]
        ranges = compute_ranges(view.subset(np.concatenate([examples, reference])), layers)
        labels = np.r_[np.ones(n_examples, bool), np.zeros(n_examples, bool)]
        scores, _, _ = rank_from_labels(view.subset(examples), labels, ranges=ranges, layers=layers)
        selected = top_k(scores, top)
        ref = build_from_view(view.subset(reference), layers=layers, ranges=ranges).histogram()
        shares, nuisance, d_all, d_sel = [], [], [], []
        for _ in range(reps):
            for q in (0.0, 0.25, 0.5, 0.75, 1.0):
                for s in (0.0, 0.25):
                    n_s = round(s * set_size)
                    k = round(q * (set_size - n_s))
                    rows = np.concatenate([rng.choice(scn, n_s, replace=False), rng.choice(pool_p, k, replace=False),
                                           rng.choice(pool_n, set_size - n_s - k, replace=False)])
                    dna = build_from_view(view.subset(rows), layers=layers, ranges=ranges).histogram()
                    shares.append(k / set_size)
                    nuisance.append(s)
                    d_all.append(distance(ref, dna))
                    d_sel.append(distance(ref, dna, neurons=selected))
        shares_a, nuisance_a = np.array(shares), np.array(nuisance)
        for key, d in (("all", np.array(d_all)), ("selected", np.array(d_sel))):
            fixed = np.mean([spearmanr(d[nuisance_a == v], shares_a[nuisance_a == v])[0] for v in (0.0, 0.25)])
            res[key].append((float(spearmanr(d, shares_a)[0]), float(fixed)))
    summary = {}
    for key, vals in res.items():
        arr = np.array(vals)
        summary[key] = {"spearman_person_share": float(arr[:, 0].mean()), "sd": float(arr[:, 0].std()),
                        "spearman_at_fixed_scene_share": float(arr[:, 1].mean()), "sd_fixed": float(arr[:, 1].std())}
    return {"layers": layers, "top": top, "n_neurons": int(sum(v.numel() for v in scores.values())),
            "seeds": list(seeds), **summary}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["ladder", "selection", "all"], nargs="?", default="all")
    parser.add_argument("--extractor", default="tiny-vit")
    parser.add_argument("--layers", default="pooled", help="comma-separated layers for the selection experiment")
    args = parser.parse_args(argv)
    if args.what in ("ladder", "all"):
        print(json.dumps({"synth-shift": shift_ladder(args.extractor)}, indent=1))
    if args.what in ("selection", "all"):
        layers = args.layers.split(",")
        print(json.dumps({"person-selection": person_selection(args.extractor, layers=layers)}, indent=1))


if __name__ == "__main__":
    main()
