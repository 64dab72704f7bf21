"""The reverse probe: a linear map from binary concept vectors to k-means cluster ids.

Protocol of the paper (App. C): 80/20 train/test split stratified by cluster id, 20 % of the
train part held out for validation, a linear model trained with cross-entropy by SGD
(momentum 0.9, lr 3.5, ×0.1 at epochs 60 and 80, L2 weight 3e-6, batch 512, up to 100
epochs). The epoch with the lowest validation cross-entropy is kept ("early choice"), and
the metrics are computed on the test split.

Its test cross-entropy upper-bounds H(cluster | concepts), so H(cluster) − CE_test is a lower
bound on the mutual information I(cluster; concepts) in nats (paper eq. 1).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from sklearn import metrics as skm

from bench.errors import BenchError, DataError

#: scikit-learn's NMI/AMI normaliser, passed explicitly (the default changed in 0.22)
AVERAGE_METHOD = "arithmetic"


# --------------------------------------------------------------------------- split


@dataclass
class Split:
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    dropped: np.ndarray   # images of clusters with a single member (cannot be stratified)


def _round_half_up(x: np.ndarray) -> np.ndarray:
    return np.floor(x + 0.5).astype(np.int64)


def stratified_split(codes: np.ndarray, *, seed: int, test_fraction: float = 0.2,
                     val_fraction: float = 0.2) -> Split:
    """Per-cluster stratified train / validation / test split, with a rule for tiny clusters.

    A cluster of n ≥ 2 images sends max(1, round(test_fraction·n)) random members to test,
    then round(val_fraction·n_train) of the rest to validation, keeping at least one in train
    (so every kept cluster is both learnt and tested). Clusters of one image cannot be in both
    and are dropped (returned in ``dropped``). For large clusters this is the paper's 80/20 and
    20 % split; sklearn's stratified splitter would refuse when a cluster has one member or
    when the test set is smaller than K.
    """
    codes = np.asarray(codes)
    if not 0 < test_fraction < 1 or not 0 <= val_fraction < 1:
        raise BenchError(f"qrp: split fractions must be in (0, 1), got test={test_fraction}, val={val_fraction}")
    n = len(codes)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    order = perm[np.argsort(codes[perm], kind="stable")]          # clusters contiguous, members shuffled
    _, inverse, counts = np.unique(codes[order], return_inverse=True, return_counts=True)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(n) - starts[inverse]                          # position inside the cluster
    n_test = np.clip(_round_half_up(test_fraction * counts), 1, np.maximum(counts - 1, 1))
    n_train_all = counts - n_test
    n_val = np.minimum(_round_half_up(val_fraction * n_train_all), np.maximum(n_train_all - 1, 0))
    small = counts[inverse] < 2
    is_test = ~small & (rank < n_test[inverse])
    is_val = ~small & ~is_test & (rank < (n_test + n_val)[inverse])
    is_train = ~small & ~is_test & ~is_val
    return Split(train=np.sort(order[is_train]), val=np.sort(order[is_val]), test=np.sort(order[is_test]),
                 dropped=np.sort(order[small]))


# --------------------------------------------------------------------------- probe


@dataclass
class ProbeConfig:
    """The paper's optimiser settings (App. C)."""

    lr: float = 3.5
    momentum: float = 0.9
    weight_decay: float = 3e-6
    epochs: int = 100
    milestones: tuple[int, ...] = (60, 80)
    gamma: float = 0.1
    batch_size: int = 512


@dataclass
class Probe:
    weight: torch.Tensor      # (K, M)
    bias: torch.Tensor        # (K,)
    best_epoch: int           # 1-based epoch whose weights were kept
    val_ce: list[float] = field(default_factory=list)

    @torch.no_grad()
    def log_proba(self, x: torch.Tensor, *, batch_size: int = 8192) -> torch.Tensor:
        """(n, M) concepts (any dtype) → (n, K) log-probabilities, on x's device."""
        outs = [F.log_softmax(F.linear(x[i:i + batch_size].float(), self.weight, self.bias), dim=1)
                for i in range(0, len(x), batch_size)]
        return torch.cat(outs) if outs else torch.empty(0, len(self.bias), device=self.bias.device)


@torch.no_grad()
def _mean_ce(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
             batch_size: int = 8192) -> float:
    total = torch.zeros((), dtype=torch.float64, device=weight.device)
    for i in range(0, len(x), batch_size):
        logits = F.linear(x[i:i + batch_size].float(), weight, bias)
        total += F.cross_entropy(logits, y[i:i + batch_size], reduction="sum").double()
    return float(total) / max(len(x), 1)


@contextmanager
def _cpu_threads(device: torch.device, work: int):
    """One intra-op thread for the usual CPU probe: below ~10⁸ multiply-adds per step the
    thread hand-off costs more than it saves (a K = 1000, 40-concept step: 7 ms on one thread,
    75 ms on two, on a busy 2-core machine); larger steps keep torch's setting."""
    before = torch.get_num_threads()
    small = device.type == "cpu" and work < SMALL_STEP_WORK
    if small:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if small:
            torch.set_num_threads(before)


#: multiply-adds per SGD step (batch · concepts · clusters) below which the probe runs on one thread
SMALL_STEP_WORK = 100_000_000


def train_probe(x: torch.Tensor, y: torch.Tensor, *, n_classes: int, train: torch.Tensor,
                val: torch.Tensor | None, seed: int, config: ProbeConfig | None = None) -> Probe:
    """SGD on cross-entropy; keeps the weights of the epoch with the lowest validation CE.

    ``x`` (N, M) concept matrix (uint8/bool/float) and ``y`` (N,) int64 cluster ids live on
    the device the probe runs on; ``train``/``val`` are index tensors into them. The weights
    start at zero (the problem is convex, so this only removes seed noise); the seed orders
    the mini-batches. Without a validation set the last epoch is kept.
    """
    cfg = config or ProbeConfig()
    device = x.device
    weight = torch.zeros(n_classes, x.shape[1], device=device, requires_grad=True)
    bias = torch.zeros(n_classes, device=device, requires_grad=True)
    opt = torch.optim.SGD([weight, bias], lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(cfg.milestones), gamma=cfg.gamma)
    gen = torch.Generator().manual_seed(int(seed))
    has_val = val is not None and len(val) > 0
    x_val, y_val = (x[val], y[val]) if has_val else (None, None)
    best = Probe(weight.detach().clone(), bias.detach().clone(), cfg.epochs)
    best_ce = float("inf")
    n_train = len(train)
    with _cpu_threads(device, min(cfg.batch_size, n_train) * x.shape[1] * n_classes):
        for epoch in range(1, cfg.epochs + 1):
            order = train[torch.randperm(n_train, generator=gen).to(device)]
            running = torch.zeros((), device=device)
            for start in range(0, n_train, cfg.batch_size):
                idx = order[start:start + cfg.batch_size]
                loss = F.cross_entropy(F.linear(x[idx].float(), weight, bias), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                running += loss.detach()
            sched.step()
            if not torch.isfinite(running):
                raise DataError(f"qrp: the reverse probe diverged at epoch {epoch} (non-finite loss) with "
                                f"lr={cfg.lr}; the paper's lr suits sparse binary concepts, lower it for dense ones")
            if has_val:
                ce = _mean_ce(x_val, y_val, weight.detach(), bias.detach())
                best.val_ce.append(ce)
                if ce < best_ce:
                    best_ce = ce
                    best.weight, best.bias, best.best_epoch = weight.detach().clone(), bias.detach().clone(), epoch
    if not has_val:
        best.weight, best.bias = weight.detach().clone(), bias.detach().clone()
    return best


# --------------------------------------------------------------------------- metrics


def entropy(codes: np.ndarray) -> float:
    """Plug-in entropy of discrete labels, in nats."""
    _, counts = np.unique(np.asarray(codes), return_counts=True, axis=0)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


def conditional_entropy(codes: np.ndarray, concepts: np.ndarray) -> float:
    """Plug-in H(cluster | concept vector) in nats: the lowest cross-entropy any predictor of
    the cluster from the concepts can reach on this same sample (Gibbs' inequality)."""
    concepts = np.asarray(concepts).reshape(len(codes), -1)
    _, y_id = np.unique(concepts, axis=0, return_inverse=True)
    joint = np.stack([y_id.ravel(), np.asarray(codes)], axis=1)
    return entropy(joint) - entropy(y_id.ravel())


def average_precision_per_class(true: np.ndarray, scores: torch.Tensor | np.ndarray, classes: np.ndarray, *,
                                chunk: int = 128) -> np.ndarray:
    """scikit-learn's ``average_precision_score(true == c, scores[:, c])`` for every class in
    ``classes`` at once: Σ over distinct score thresholds of ΔRecall · Precision, with tied
    scores forming one threshold (ties are common: identical concept vectors score alike).
    Vectorised over classes on the scores' device; ``classes`` must each occur in ``true``.
    """
    s_all = torch.as_tensor(scores)
    device = s_all.device
    t = torch.as_tensor(np.asarray(true), device=device)
    n = len(t)
    rank = torch.arange(1, n + 1, device=device, dtype=torch.float64)
    out = []
    for start in range(0, len(classes), chunk):
        cls = torch.as_tensor(np.asarray(classes[start:start + chunk]), device=device, dtype=torch.int64)
        s, order = torch.sort(s_all[:, cls].T.contiguous(), dim=1, descending=True)   # (C, n)
        hit = (t[order] == cls.unsqueeze(1)).double()
        precision = hit.cumsum(1) / rank
        is_end = torch.ones_like(hit, dtype=torch.bool)               # last member of a tie group
        is_end[:, :-1] = s[:, :-1] != s[:, 1:]
        end = torch.where(is_end, torch.arange(n, device=device), n)
        end = torch.flip(torch.cummin(torch.flip(end, (1,)), dim=1).values, (1,))
        p_end = torch.gather(precision, 1, end)                       # precision at the threshold
        out.append(((hit * p_end).sum(1) / hit.sum(1)).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def mean_average_precision(true: np.ndarray, proba: torch.Tensor | np.ndarray) -> float:
    """One-vs-rest average precision on the probe's softmax scores, averaged over the
    clusters present in ``true`` (same values as scikit-learn, vectorised)."""
    return float(np.mean(average_precision_per_class(true, proba, np.unique(np.asarray(true)))))


def probe_metrics(true: np.ndarray, log_proba: torch.Tensor | np.ndarray) -> dict[str, float]:
    """NMI, AMI (scikit-learn, average_method='arithmetic'), top-1, mAP (on the softmax
    probabilities) and cross-entropy (nats) of the probe's predictions against the true ids."""
    true = np.asarray(true)
    logp = torch.as_tensor(log_proba)
    pred = logp.argmax(dim=1).cpu().numpy()
    t = torch.as_tensor(true, device=logp.device)
    return {
        "nmi": float(skm.normalized_mutual_info_score(true, pred, average_method=AVERAGE_METHOD)),
        "ami": float(skm.adjusted_mutual_info_score(true, pred, average_method=AVERAGE_METHOD)),
        "top1": float(np.mean(pred == true)),
        "map": mean_average_precision(true, logp.exp()),
        "ce": float(-logp.gather(1, t.unsqueeze(1)).double().mean()),
    }


def reverse_probe(x: torch.Tensor, codes: np.ndarray, split: Split, *, n_classes: int, seed: int,
                  config: ProbeConfig | None = None) -> dict[str, float]:
    """Train on ``split.train`` (early choice on ``split.val``) and score on ``split.test``.

    Also returns ``mi_nats`` = H(clusters over all images) − CE_test, the paper's lower bound
    on I(cluster; concepts).
    """
    device = x.device
    if len(split.train) == 0 or len(split.test) == 0:
        raise DataError("qrp: no cluster has 2 or more images, so the reverse probe has nothing to "
                        "train or test on; use fewer clusters")
    y = torch.as_tensor(np.asarray(codes), dtype=torch.int64, device=device)
    train, val, test = (torch.as_tensor(a, dtype=torch.int64, device=device)
                        for a in (split.train, split.val, split.test))
    probe = train_probe(x, y, n_classes=n_classes, train=train, val=val, seed=seed, config=config)
    logp = probe.log_proba(x[test])
    out = probe_metrics(np.asarray(codes)[split.test], logp)
    out["h_clusters"] = entropy(codes)
    out["mi_nats"] = out["h_clusters"] - out["ce"]
    out["best_epoch"] = float(probe.best_epoch)
    out["n_train"], out["n_val"], out["n_test"] = float(len(split.train)), float(len(split.val)), float(len(split.test))
    out["n_dropped"] = float(len(split.dropped))
    return out
