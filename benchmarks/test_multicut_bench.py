"""Speed and peak memory of the multicut plugin, side by side with bioimage-cpp.

    pytest benchmarks/test_multicut_bench.py                 # pytest-benchmark, one round each
    python benchmarks/test_multicut_bench.py [CASE ...]      # the same cases as a script, JSON lines

Every case runs in a fresh subprocess so that its peak RSS (ru_maxrss) is its own; the
subprocess reports per-phase times, which pytest-benchmark stores in ``extra_info``.
Inputs are synthetic embeddings shaped like real ones: 384-d, 100 clusters with Zipf sizes
around a shared offset (a narrow cone, mean normalised similarity about 0.4), noisy
enough that clusters touch. The same costs go to every solver.

Cases:
  complete-{4k,10k}-{own,bioimage}: costs + GAEC + KL on the complete graph. bioimage-cpp
      needs about 360 bytes per edge (2.9 GB at 4k), so at 10k (50 M edges, ~17 GB) it runs
      under an address-space cap (``MULTICUT_BENCH_CAP_GB``, default 12) and reports
      "out of memory" rather than pushing a shared machine into swap.
  knn-50k: 50,000 images through the sparse graph (graph="knn": k = 30 neighbours by faiss
      + 100 reweighted random partners per image): exact pair statistics, faiss kNN, GAEC +
      KL on the sparse graph. Target: under 10 minutes on 2 CPU cores.
  knn-loss-5k: what the sparse graph loses against the complete graph at n = 5,000, for
      (k, r) = (30, 0) (plain kNN), (30, 30), (30, 100), (30, 300), (10, 100): energy of its
      clustering on the complete costs (relative gap), VI to the complete-graph clustering,
      cluster counts, ARI to the planted clusters.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

CASES = ("complete-4k-own", "complete-4k-bioimage", "complete-10k-own", "complete-10k-bioimage",
         "knn-50k", "knn-loss-5k")
CAL = 0.5


def embeddings(n: int, d: int = 384, k: int = 100, noise: float = 2.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, k + 1) ** 0.8
    labels = rng.choice(k, size=n, p=weights / weights.sum())
    centres = rng.normal(size=(k, d)) + 1.5
    x = centres[labels] + noise * rng.normal(size=(n, d))
    return x.astype(np.float32), labels


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _complete(n: int, backend: str, out: dict) -> dict:

    from bench_multicut import costs as C
    from bench_multicut import solver as S

    x, labels = embeddings(n)
    base = _rss_gb()
    t0 = time.perf_counter()
    W, stats = C.similarity_matrix(C.normalise(x))
    C.costs_(W, stats, CAL)
    out["costs_s"] = time.perf_counter() - t0
    out.update(mean_p=stats.mean_p, rss_before_gb=base)
    if backend == "own":
        res = S.solve_dense(W)
        out.update({f"{k}_s": v for k, v in res.timings.items()})
        labels_out, energy, energy_gaec, k_gaec = res.labels, res.energy, res.energy_gaec, res.n_clusters_gaec
    else:   # the steps of S.solve_bioimage, one by one, so that a failure says where it happened
        from bioimage_cpp.graph import UndirectedGraph
        from bioimage_cpp.graph.multicut import (
            GreedyAdditiveMulticut,
            KernighanLinMulticut,
            MulticutObjective,
        )

        t = time.perf_counter()
        uv, w = S.dense_to_edges(W.numpy())
        del W
        out["edge_list_s"] = time.perf_counter() - t
        _phase(out, "edge_list")
        t = time.perf_counter()
        obj = MulticutObjective(UndirectedGraph.from_edges(n, uv.astype(np.uint64)), w)
        out["graph_s"] = time.perf_counter() - t
        _phase(out, "graph")
        t = time.perf_counter()
        GreedyAdditiveMulticut(weight_stop=0.0).optimize(obj)
        out["gaec_s"] = time.perf_counter() - t
        gaec = S.canonical_labels(np.asarray(obj.labels))
        energy_gaec, k_gaec = S.energy_edges(uv, w, gaec), int(gaec.max()) + 1
        _phase(out, "gaec")
        t = time.perf_counter()
        KernighanLinMulticut(number_of_outer_iterations=100, epsilon=1e-6).optimize(obj)
        out["kl_s"] = time.perf_counter() - t
        labels_out = S.canonical_labels(np.asarray(obj.labels))
        energy = S.energy_edges(uv, w, labels_out)
    from sklearn.metrics import adjusted_rand_score

    out.update(energy=energy, energy_gaec=energy_gaec, n_clusters=int(labels_out.max()) + 1,
               n_clusters_gaec=k_gaec, ari_planted=adjusted_rand_score(labels, labels_out))
    return out


def _phase(out: dict, done: str) -> None:
    """Report progress (a JSON line) so that a case killed later still tells how far it got."""
    print(json.dumps({**out, "done": done, "peak_rss_gb": _rss_gb()}, default=float), flush=True)


class _View:
    """What Multicut._run reads from a DataView when cal is given: the device."""

    device = "cpu"
    extractor = None


def _knn(n: int, k: int, r: int) -> dict:
    from bench_multicut.method import Multicut

    x, _ = embeddings(n)
    base = _rss_gb()
    fitted = Multicut(graph="knn", knn=k, knn_random=r, cal=CAL)._run(x, _View(), 0)
    return {**{f"{name}_s": v for name, v in fitted.timings.items()}, "n_edges": fitted.n_edges,
            "energy_on_graph": fitted.result.energy, "n_clusters": fitted.result.n_clusters,
            "rss_before_gb": base}


def _knn_loss(n: int) -> dict:
    from bench_multicut import costs as C
    from bench_multicut import solver as S
    from bench_multicut.method import Multicut
    from bench_multicut.stats import variation_of_information
    from sklearn.metrics import adjusted_rand_score

    x, labels = embeddings(n)
    W, stats = C.similarity_matrix(C.normalise(x))
    C.costs_(W, stats, CAL)
    t0 = time.perf_counter()
    full = S.solve_dense(W)
    Wn = W.numpy()
    out = {"complete": {"energy": full.energy, "n_clusters": full.n_clusters, "n_edges": n * (n - 1) // 2,
                        "ari_planted": adjusted_rand_score(labels, full.labels),
                        "solve_s": time.perf_counter() - t0}}
    for k, r in ((30, 0), (30, 30), (30, 100), (30, 300), (10, 100)):
        fitted = Multicut(graph="knn", knn=k, knn_random=r, cal=CAL)._run(x, _View(), 0)
        e = S.energy_dense(Wn, fitted.codes)
        out[f"knn{k}+random{r}"] = {
            "energy_on_complete": e, "rel_gap": (e - full.energy) / abs(full.energy),
            "vi_to_complete": variation_of_information(full.labels, fitted.codes),
            "n_clusters": fitted.result.n_clusters, "n_edges": fitted.n_edges,
            "ari_planted": adjusted_rand_score(labels, fitted.codes),
            "solve_s": fitted.timings["gaec"] + fitted.timings.get("kl", 0.0)}
    return out


def run_inside(case: str) -> dict:
    sizes = {"4k": 4000, "10k": 10000}
    if case.startswith("complete-"):
        _, size, backend = case.split("-")
        if backend == "bioimage":
            cap = float(os.environ.get("MULTICUT_BENCH_CAP_GB", "12")) * 2**30
            resource.setrlimit(resource.RLIMIT_AS, (int(cap), int(cap)))
        out = {}
        try:
            out = _complete(sizes[size], backend, out)
        except MemoryError as exc:
            out = {**out, "error": f"out of memory under the address-space cap: {exc}"}
    elif case == "knn-50k":
        out = _knn(50_000, 30, 100)
    elif case == "knn-loss-5k":
        out = _knn_loss(5000)
    else:
        raise SystemExit(f"unknown case {case!r}; cases: {', '.join(CASES)}")
    out["peak_rss_gb"] = _rss_gb()
    return out


def run_case(case: str) -> dict:
    """Run one case in a fresh interpreter; returns its JSON report plus the wall time."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--inside", case], capture_output=True, text=True,
                          check=False)
    wall = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    last = json.loads(lines[-1]) if lines else {}      # a killed case keeps its last progress line
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"case": case, **last, "error": f"exit {proc.returncode}: {tail[0]}", "wall_s": wall}
    return {"case": case, **last, "wall_s": wall}


def _bench(benchmark, case: str) -> None:
    result = benchmark.pedantic(run_case, args=(case,), rounds=1, iterations=1)
    benchmark.extra_info.update(result)
    print(json.dumps(result))


def test_complete_4k_own(benchmark):
    _bench(benchmark, "complete-4k-own")


def test_complete_4k_bioimage(benchmark):
    _bench(benchmark, "complete-4k-bioimage")


def test_complete_10k_own(benchmark):
    _bench(benchmark, "complete-10k-own")


def test_complete_10k_bioimage(benchmark):
    _bench(benchmark, "complete-10k-bioimage")


def test_knn_50k(benchmark):
    _bench(benchmark, "knn-50k")


def test_knn_loss_5k(benchmark):
    _bench(benchmark, "knn-loss-5k")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--inside":
        print(json.dumps(run_inside(sys.argv[2]), default=float))
    else:
        for name in sys.argv[1:] or CASES:
            print(json.dumps(run_case(name), default=float), flush=True)
