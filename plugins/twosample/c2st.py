"""``c2st``: a classifier two-sample test (Lopez-Paz & Oquab 2017) on extractor features.

A logistic regression learns to tell B from A; each image's probability of being B comes from the
fold it was held out of (stratified K folds, seeded), so no image is scored by a model that saw
it. Two statistics of those out-of-fold scores (``statistic``):

* ``logit`` (default; Cheng & Cloninger 2022, "Classification logit two-sample testing"): **score =
  mean out-of-fold logit over B − mean over A**. The logit estimates log p_B(x)/p_A(x) plus the
  log prior odds, which cancel in the difference, so the score estimates KL(B‖A) + KL(A‖B) (the
  Jeffreys divergence, in nats) as far as the classifier can see it; 0 without a difference.
* ``auc``: **score = AUC − 0.5** (Lopez-Paz & Oquab 2017's accuracy made threshold-free): 0 when the
  classifier cannot tell the sides apart, up to 0.5 when it separates them.

The logit difference is the more powerful test where a difference is a region of feature space
whose share changes (a class removed or doubled): there the density ratio takes a few values, the
ranks of AUC tie most images, and a mean of logits weighs how far each image is from the other
side. Measured on Fashion-MNIST (efficientnet-lite0, 1,000 vs 900–1,100 images), z against the
refitted null: one class removed 11.0 (AUC 2.5), one class doubled 3.0 (AUC 2.4). Both are in the
record's statistics whichever is the score. Per image: its out-of-fold P(B); findings list the
images of B the classifier finds most B-like and the images of A it finds most A-like (what each
side has that the other lacks).

**Null and interval: every draw refits.** The out-of-fold probabilities belong to the observed
labels; reusing them for permuted labels is not a valid null (the classifier was trained on the
real sides, so any relabelling looks like chance and p would be too small). Each permutation draw
and each resample therefore trains K new models on the cached, standardised features (the
standardisation and the projection on the top ``components`` principal components use A ∪ B
without labels, so they are the same for every draw). A bootstrap
resample's repeated image keeps all its copies in one fold (folds are drawn over distinct images,
copies enter as sample weights), so a copy is never scored by a model trained on itself.
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

import numpy as np
from scipy.special import expit

from bench.api import Comparator, Comparison, DataView, Finding
from bench.errors import BenchError, DataError
from bench.statistics import Draws, make_blocks

from .common import positive_int, side_features, top_rows

#: images of each side the findings show
SHOWN = 50
#: bins of the out-of-fold probability histogram (a finding the report draws)
BINS = 20
#: scikit-learn's solver: exact Newton steps (n d² each), the same objective as the default lbfgs
SOLVER = "newton-cholesky"


def standardised(x: np.ndarray, components: int | None = None) -> np.ndarray:
    """Features centred and scaled per dimension over A ∪ B, then (when ``components`` is smaller than
    the dimension) projected on their top principal components; no labels, so the same for every draw.
    The projection keeps each fit cheap (a 768-D fit on 2,000 images takes ~1 s, 64-D ~0.03 s) and,
    the L2 penalty being rotation invariant, keeping every component would change nothing."""
    sd = x.std(axis=0)
    x = (x - x.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    if components is None or components >= x.shape[1]:
        return x
    if len(x) < x.shape[1]:   # fewer images than dimensions: the scores from the n × n Gram matrix
        values, vectors = np.linalg.eigh(x @ x.T)
        top = np.argsort(values, kind="stable")[::-1][:components]
        return vectors[:, top] * np.sqrt(np.clip(values[top], 0, None))
    _, vectors = np.linalg.eigh(x.T @ x)
    return x @ vectors[:, ::-1][:, :components]


def out_of_fold(x: np.ndarray, y: np.ndarray, weight: np.ndarray, *, folds: int, c: float, seed: int) -> np.ndarray:
    """Each row's logit of P(y = 1) from a logistic regression fitted on the other folds (stratified
    over rows, seeded); ``weight`` counts each row's copies. The decision function, not
    ``predict_proba``, so a confident image's logit stays finite."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    if min(int((y == 0).sum()), int((y == 1).sum())) < folds:
        raise DataError(f"c2st: needs at least folds={folds} distinct images per side, got "
                        f"{int((y == 0).sum())} and {int((y == 1).sum())}")
    from threadpoolctl import threadpool_limits

    logit = np.empty(len(y))
    split = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed % 2**32)
    # Newton steps on ≤ 64 dimensions converge in a few iterations; one BLAS thread, because these
    # fits are small and many (5 per draw), and threads cost more than they save (5–10× measured)
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for train, test in split.split(x, y):
            model = LogisticRegression(C=c, solver=SOLVER, max_iter=100)
            model.fit(x[train], y[train], sample_weight=weight[train])
            logit[test] = model.decision_function(x[test])
    return logit


def auc(y: np.ndarray, score: np.ndarray, weight: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, score, sample_weight=weight))


def logit_difference(y: np.ndarray, logit: np.ndarray, weight: np.ndarray) -> float:
    """Weighted mean logit of the rows with y = 1 minus that of the rows with y = 0."""
    return float(np.average(logit[y == 1], weights=weight[y == 1]) - np.average(logit[y == 0], weights=weight[y == 0]))


def auc_excess(y: np.ndarray, logit: np.ndarray, weight: np.ndarray) -> float:
    """AUC − 0.5 of the out-of-fold logits."""
    return auc(y, logit, weight) - 0.5


#: what ``statistic`` may name (module docstring): each a function of (labels, out-of-fold logits, weights)
STATISTICS = {"logit": logit_difference, "auc": auc_excess}


class RefitDraws(Draws):
    """The statistic of any reweighting of A ∪ B, refitting the K models per draw (module docstring)."""

    def __init__(self, blocks, x: np.ndarray, folds: int, c: float, seed: int, statistic: str = "logit"):
        self.blocks, self.x, self.folds, self.c, self.seed = blocks, x, folds, c, seed
        self.statistic = statistic

    def score(self, w_a: np.ndarray, w_b: np.ndarray) -> float:
        w_a, w_b = np.asarray(w_a, np.float64), np.asarray(w_b, np.float64)
        ra, rb = np.flatnonzero(w_a), np.flatnonzero(w_b)
        rows = np.r_[ra, rb]
        y = np.r_[np.zeros(len(ra), np.int64), np.ones(len(rb), np.int64)]
        weight = np.r_[w_a[ra], w_b[rb]]
        logit = out_of_fold(self.x[rows], y, weight, folds=self.folds, c=self.c, seed=self.seed)
        return STATISTICS[self.statistic](y, logit, weight)


class C2ST(Comparator):
    """Classifier two-sample test: out-of-fold logistic regression; score = mean logit of B − of A
    (``statistic="logit"``) or AUC − 0.5 (``"auc"``).

    Defaults (32 principal components, C = 0.1) were chosen by power on a shift a linear model finds
    hard — Fashion-MNIST with one class's share doubled, efficientnet-lite0 features (1280-D), 1,000 vs
    1,100 images: (AUC − 0.5) / null s.d. = 1.57 with 64 components and C = 1, 2.67 with 32 and C = 0.1,
    against 3.3 for a classifier that knows each image's class. More dimensions let the classifier fit
    noise that the null fits as well; the issue's n is a few thousand images. The logit statistic was
    then measured at the same settings (module docstring); C between 0.01 and 1 changes z by < 0.1."""

    name: ClassVar[str] = "c2st"
    version: ClassVar[str] = "2"
    larger_is_more_different: ClassVar[bool] = True

    def __init__(self, *, folds: int = 5, c: float = 0.1, components: int | None = 32, layer: str = "pooled",
                 statistic: str = "logit"):
        self.folds = folds
        self.c = c
        self.components = components
        self.layer = layer
        self.statistic = statistic

    def check_params(self) -> None:
        positive_int(self.folds, "folds", "c2st", minimum=2)
        if isinstance(self.c, bool) or not isinstance(self.c, (int, float)) or not self.c > 0:
            raise BenchError(f"c2st: c (inverse regularisation) must be a number > 0, got {self.c!r}")
        if self.components is not None:
            positive_int(self.components, "components", "c2st")
        if not isinstance(self.layer, str):
            raise BenchError(f"c2st: layer must be a layer name, got {self.layer!r}")
        if not isinstance(self.statistic, str) or self.statistic not in STATISTICS:
            raise BenchError(f"c2st: statistic must be one of {', '.join(STATISTICS)}, got {self.statistic!r}")

    def _features(self, a: DataView, b: DataView) -> tuple[np.ndarray, int]:
        self.check_params()
        x, n_a = side_features(a, b, self.layer, "c2st", minimum=self.folds)
        return standardised(x, self.components), n_a

    def draws(self, a: DataView, b: DataView, blocks, *, seed: int = 0) -> RefitDraws:
        """Cached standardised features of A ∪ B, one image per block; every draw refits."""
        x, n_a = self._features(a, b)
        return RefitDraws(make_blocks(n_a, len(x) - n_a, 1, seed), x, self.folds, float(self.c), seed,
                          self.statistic)

    def score(self, a: DataView, b: DataView, *, seed: int = 0) -> float:
        return self.draws(a, b, None, seed=seed).observed()

    def compare(self, a: DataView, b: DataView, *, seed: int = 0) -> Comparison:
        x, n_a = self._features(a, b)
        n_b = len(x) - n_a
        y = np.r_[np.zeros(n_a, np.int64), np.ones(n_b, np.int64)]
        ones = np.ones(len(y))
        logit = out_of_fold(x, y, ones, folds=self.folds, c=float(self.c), seed=seed)
        p = expit(logit)
        area = auc(y, logit, ones)
        difference = logit_difference(y, logit, ones)
        accuracy = float(((logit >= 0) == y).mean())
        statistics = {"logit_difference": difference, "auc": area, "accuracy": accuracy, "folds": float(self.folds),
                      "dimensions": float(x.shape[1]), "n_a": float(n_a), "n_b": float(n_b)}
        detail: dict[str, Any] = {"statistic": self.statistic, "logit_difference": difference, "auc": area,
                                  "accuracy": accuracy, "p_b": p,
                                  "classifier": f"logistic regression (C={self.c:g}), {self.folds} stratified folds, "
                                                f"on {x.shape[1]} standardised dimensions (principal components "
                                                f"when the features have more than {self.components})"}
        score = STATISTICS[self.statistic](y, logit, ones)
        return Comparison(score=score, detail=detail, statistics=statistics, findings=_findings(p, n_a))


def _findings(p: np.ndarray, n_a: int) -> list[Finding]:
    """The most B-like images of B, the most A-like images of A, and P(B) by side as a histogram."""
    out = []
    for side, idx, sign, title in (("b", np.arange(n_a, len(p)), -1.0, "images of B most B-like (out-of-fold P(B))"),
                                   ("a", np.arange(n_a), 1.0, "images of A most A-like (out-of-fold P(B))")):
        order = idx[np.argsort(sign * p[idx], kind="stable")][:SHOWN]
        local = order - (n_a if side == "b" else 0)
        rows = [{"image": int(i), "p_b": float(p[j])} for i, j in zip(local, order)]
        images = [(label, side, chunk) for label, chunk in
                  top_rows(local, 10, lambda s, c: f"ranks {s + 1}–{s + len(c)}")]
        out.append(Finding(title, side=side, rows=rows, images=images))
    edges = np.linspace(0.0, 1.0, BINS + 1)
    count_a, _ = np.histogram(p[:n_a], edges)
    count_b, _ = np.histogram(p[n_a:], edges)
    out.append(Finding("out-of-fold P(B) by side (histogram)",
                       rows=[{"from": float(lo), "to": float(hi), "a": int(ca), "b": int(cb)}
                             for lo, hi, ca, cb in zip(edges[:-1], edges[1:], count_a, count_b)]))
    # every image's probability, so the record holds it (a comparison's detail is not saved)
    out.append(Finding("out-of-fold P(B) of every image (A's, then B's)",
                       rows=[{"side": "a" if j < n_a else "b", "image": int(j if j < n_a else j - n_a),
                              "p_b": float(v)} for j, v in enumerate(p)]))
    return out
