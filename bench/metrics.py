"""Harness-owned metrics: the same code grades every method.

Definitions are versioned by ``METRICS_VERSION`` (part of every comparability key).
NMI/AMI use scikit-learn with ``average_method="arithmetic"``; VI is in nats.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from scipy import stats
from sklearn import metrics as skm
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedShuffleSplit
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from bench.errors import DataError

#: BLAS threads of the probe's solver (see linear_probe_accuracy); never more than the cores
PROBE_BLAS_THREADS = max(1, min(4, os.cpu_count() or 1))

#: 2: ``score_between`` compares the sources at the null's sample size (bench/evaluate.py:
#: comparison_pairs); under 1 it compared the whole sources against a null at half size
METRICS_VERSION = "2"
AVERAGE_METHOD = "arithmetic"

@dataclass(frozen=True)
class MetricInfo:
    """One harness metric: its direction (True: higher is better, False: lower, None: descriptive),
    whether the CLI's run summary shows it, and what it means (README, report)."""

    name: str
    higher_is_better: bool | None
    description: str
    summary: bool = False


#: every metric the harness reports, in leaderboard column order (one registry: evaluator,
#: leaderboard, CLI summary and report read it)
METRICS: dict[str, MetricInfo] = {m.name: m for m in (
    MetricInfo("nmi", True, "normalised mutual information of the codes with the labels (arithmetic)", True),
    MetricInfo("ami", True, "adjusted mutual information of the codes with the labels", True),
    MetricInfo("ari", True, "adjusted Rand index of the codes with the labels"),
    MetricInfo("vi", False, "variation of information between codes and labels, in nats"),
    MetricInfo("nmi_random", None, "NMI of the same cluster sizes assigned at random (chance level)", True),
    MetricInfo("n_clusters", None, "number of distinct codes"),
    MetricInfo("probe_acc", True, "linear-probe accuracy of the method's representation", True),
    MetricInfo("probe_acc_backbone", True, "linear-probe accuracy of the backbone features (reference)"),
    MetricInfo("dup_precision", True, "precision of predicted near-duplicate pairs against the known ones", True),
    MetricInfo("dup_recall", True, "recall of predicted near-duplicate pairs against the known ones", True),
    MetricInfo("dup_f1", True, "F1 of predicted near-duplicate pairs"),
    MetricInfo("fidelity_spearman", True, "Spearman correlation of the score with the true shift", True),
    MetricInfo("score_between", None,
               "comparator score between the dataset's two sources, at the null's sample size", True),
    MetricInfo("score_null", None, "comparator score between two disjoint halves of one source", True),
    MetricInfo("null_over_between", False, "score_null / score_between (direction-adjusted)"),
    MetricInfo("group_nmi", None, "NMI of the codes with the source groups"),
    # bench compare A B
    MetricInfo("score", None, "comparator score between A and B (direction: the comparator's)", True),
    MetricInfo("p_value", None, "share of null draws at least as different as A vs B ((1 + hits) / (1 + draws))", True),
    MetricInfo("p_adjusted", None, "p-value adjusted across the comparators of one compare (Holm)", True),
    MetricInfo("ci_low", None, "lower end of the 95 % interval: half-sampling (bias extrapolated, ± t·sd) for "
               "comparators with bias rates (fd, dna), else the basic bootstrap interval (2·score − 97.5th "
               "percentile); the record's ci table names the method", True),
    MetricInfo("ci_high", None, "upper end of the 95 % interval (see ci_low)", True),
    MetricInfo("score_bias_corrected", None, "the score with the plug-in estimator's small-sample bias removed: "
               "score − (mean of the half-samples − score) / (2^r − 1), or 2·score − mean of the bootstrap "
               "resamples"),
    MetricInfo("mde", None, "minimum detectable effect at this n: the score shift above the null's median that "
               "reaches p < α with 80 % power"),
    MetricInfo("n_for_power_a", None, "images of A (--plan) estimated to reach p < α with 80 % power at the "
               "observed effect, by subsampling"),
    MetricInfo("n_for_power_b", None, "images of B at the same estimate (B's share kept)"),
    MetricInfo("null_mean", None, "mean score of the null draws"),
    MetricInfo("n_a", None, "images in A"),
    MetricInfo("n_b", None, "images in B"),
)}

#: direction of every metric the harness reports (derived from ``METRICS``)
HIGHER_IS_BETTER: dict[str, bool | None] = {name: m.higher_is_better for name, m in METRICS.items()}


def metric_order(names: set[str] | list[str]) -> list[str]:
    """Registered metrics in registry order, then any others alphabetically."""
    names = set(names)
    return [m for m in METRICS if m in names] + sorted(names - set(METRICS))


def entropy_nats(codes: np.ndarray) -> float:
    _, counts = np.unique(codes, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


def variation_of_information(a: np.ndarray, b: np.ndarray) -> float:
    """VI(a, b) = H(a|b) + H(b|a) = H(a) + H(b) − 2 I(a; b), in nats (Meilă 2007), on raw ids."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise DataError(f"VI needs clusterings of the same images, got {a.shape} and {b.shape}")
    mi = skm.mutual_info_score(a, b)
    return max(0.0, entropy_nats(a) + entropy_nats(b) - 2.0 * mi)


def clustering_scores(codes: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """NMI, AMI, ARI and VI of a clustering against reference labels."""
    codes, labels = np.asarray(codes), np.asarray(labels)
    if codes.shape != labels.shape:
        raise DataError(f"codes have shape {codes.shape} but labels {labels.shape}")
    return {
        "nmi": float(skm.normalized_mutual_info_score(labels, codes, average_method=AVERAGE_METHOD)),
        "ami": float(skm.adjusted_mutual_info_score(labels, codes, average_method=AVERAGE_METHOD)),
        "ari": float(skm.adjusted_rand_score(labels, codes)),
        "vi": variation_of_information(labels, codes),
    }


def random_assignment_nmi(codes: np.ndarray, labels: np.ndarray, seed: int = 0) -> float:
    """NMI of the same cluster sizes assigned at random: the chance baseline beside ``nmi``."""
    shuffled = np.random.default_rng(seed).permutation(np.asarray(codes))
    return float(skm.normalized_mutual_info_score(labels, shuffled, average_method=AVERAGE_METHOD))


def linear_probe_accuracy(x: np.ndarray, y: np.ndarray, *, seed: int = 0, test_size: float = 0.3) -> float:
    """The one probe protocol: standardised features, L2 logistic regression (C=1, lbfgs),
    seeded stratified 70/30 split. Classes with fewer than 2 images are dropped (they cannot
    be stratified); fewer than 2 classes left is an error."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y)
    if len(x) != len(y):
        raise DataError(f"probe: {len(x)} representations but {len(y)} labels")
    if not np.isfinite(x).all():
        raise DataError("probe: the representation contains NaN or inf values")
    classes, counts = np.unique(y, return_counts=True)
    keep = np.isin(y, classes[counts >= 2])
    x, y = x[keep], y[keep]
    if len(np.unique(y)) < 2:
        raise DataError("probe: needs at least 2 classes with 2+ images each; this dataset has "
                        f"{len(np.unique(y))} usable class(es)")
    n_test = max(round(test_size * len(y)), len(np.unique(y)))
    if len(y) - n_test < len(np.unique(y)):
        raise DataError(f"probe: too few images ({len(y)}) for a stratified split of "
                        f"{len(np.unique(y))} classes")
    split = StratifiedShuffleSplit(n_splits=1, test_size=n_test, random_state=seed)
    train, test = next(split.split(x, y))
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    # lbfgs does thousands of small GEMMs: with every core's BLAS thread (and torch's OpenMP
    # threads spinning beside them) it ran 12× slower on a 16-core machine than with 4 (49 s vs 2.4 s)
    with threadpool_limits(limits=PROBE_BLAS_THREADS, user_api="blas"):
        model.fit(x[train], y[train])
        return float(model.score(x[test], y[test]))


def one_hot(codes: np.ndarray) -> np.ndarray:
    _, inverse = np.unique(codes, return_inverse=True)
    out = np.zeros((len(codes), inverse.max() + 1), dtype=np.float32)
    out[np.arange(len(codes)), inverse] = 1.0
    return out


def _pair_set(pairs: np.ndarray) -> set[tuple[int, int]]:
    return {(min(int(a), int(b)), max(int(a), int(b))) for a, b in np.asarray(pairs).reshape(-1, 2) if a != b}


def duplicate_scores(predicted: np.ndarray, planted: np.ndarray) -> dict[str, float]:
    """Pair precision / recall / F1 of predicted near-duplicate pairs against planted ones."""
    pred, true = _pair_set(predicted), _pair_set(planted)
    hits = len(pred & true)
    precision = hits / len(pred) if pred else 0.0
    recall = hits / len(true) if true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"dup_precision": precision, "dup_recall": recall, "dup_f1": f1}


def fidelity_spearman(proportions: list[float], scores: list[float], larger_is_more_different: bool) -> float:
    """Spearman correlation of a difference score with the true mixing proportion (1 = perfect)."""
    rho = stats.spearmanr(proportions, scores).statistic
    rho = float(rho) if np.isfinite(rho) else 0.0
    return rho if larger_is_more_different else -rho
