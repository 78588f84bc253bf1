"""Classification and probability metrics for the behaviour heads. Pure numpy functions.

Next action (multi-class): accuracy, macro-F1, per-class recall, confusion matrix.
Purchase intent (binary probability): ROC-AUC, PR-AUC (average precision), expected calibration
error and the reliability-diagram data, plus Platt scaling to calibrate a logit on validation.

Conventions: class labels are non-negative ints; ``labels`` fixes the classes a multi-class
metric averages over (default: every class that occurs in the truth or the predictions, as
scikit-learn does), so a class the model never predicts still counts in macro-F1 with F1 = 0.
"""

from __future__ import annotations

import numpy as np


def _labels(y_true: np.ndarray, y_pred: np.ndarray, labels: np.ndarray | list[int] | None) -> np.ndarray:
    if labels is not None:
        return np.asarray(labels, dtype=np.int64)
    return np.union1d(np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64))


def confusion_matrix(
    y_true: np.ndarray, y_pred: np.ndarray, labels: np.ndarray | list[int] | None = None
) -> np.ndarray:
    """(C, C) counts: row = true class, column = predicted class, in the order of ``labels``.

    Pairs whose true or predicted class is not in ``labels`` are ignored.
    """
    y_true, y_pred = np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)
    lab = _labels(y_true, y_pred, labels)
    pos = {int(c): i for i, c in enumerate(lab)}
    lookup = np.full(int(max(lab.max(initial=0), y_true.max(initial=0), y_pred.max(initial=0))) + 1, -1)
    for c, i in pos.items():
        lookup[c] = i
    t, p = lookup[y_true], lookup[y_pred]
    ok = (t >= 0) & (p >= 0)
    cm = np.zeros((len(lab), len(lab)), dtype=np.int64)
    np.add.at(cm, (t[ok], p[ok]), 1)
    return cm


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return float((y_true == y_pred).mean()) if len(y_true) else float("nan")


def per_class_recall(cm: np.ndarray) -> np.ndarray:
    """(C,) recall of each class from a confusion matrix; NaN for a class with no true example."""
    support = cm.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(cm) / support, np.nan)


def per_class_f1(cm: np.ndarray) -> np.ndarray:
    """(C,) F1 of each class; 0 when a class is neither predicted correctly nor at all (no 0/0 NaN)."""
    tp = np.diag(cm).astype(np.float64)
    denom = cm.sum(0) + cm.sum(1)  # 2 TP + FP + FN
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2 * tp / denom, 0.0)


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, labels: np.ndarray | list[int] | None = None) -> float:
    """Unweighted mean of per-class F1 over ``labels`` (every class counts the same)."""
    cm = confusion_matrix(y_true, y_pred, labels)
    return float(per_class_f1(cm).mean()) if len(cm) else float("nan")


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x`` with ties sharing their average rank."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    ranks = np.empty(len(x), dtype=np.float64)
    # boundaries of runs of equal values
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    ends = np.r_[starts[1:], len(xs)]
    avg = (starts + ends + 1) / 2.0  # mean of ranks starts+1 .. ends
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve = P(score of a random positive > a random negative), ties 1/2.

    NaN when only one class is present (the AUC is undefined, never silently 0.5).
    """
    y = np.asarray(y).astype(bool)
    score = np.asarray(score, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(score)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def pr_auc(y: np.ndarray, score: np.ndarray) -> float:
    """Average precision: sum over thresholds of (recall step) x precision, tied scores grouped.

    This is the step-wise PR-AUC (scikit-learn's ``average_precision_score``), which does not
    interpolate optimistically between operating points. NaN without positives.
    """
    y = np.asarray(y).astype(np.float64)
    score = np.asarray(score, dtype=np.float64)
    n_pos = y.sum()
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-score, kind="mergesort")
    s, t = score[order], y[order]
    tp = np.cumsum(t)
    # evaluate only at the last index of each group of tied scores (one threshold per value)
    last = np.r_[np.flatnonzero(s[1:] != s[:-1]), len(s) - 1]
    tp_at, n_at = tp[last], last + 1.0
    precision, recall = tp_at / n_at, tp_at / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def reliability(y: np.ndarray, prob: np.ndarray, n_bins: int = 10) -> dict[str, list[float]]:
    """Equal-width probability bins: mean predicted probability, observed rate and count per bin.

    Bin i holds p in [i/n, (i+1)/n), the last bin also p = 1. Empty bins have NaN means.
    """
    y = np.asarray(y, dtype=np.float64)
    prob = np.asarray(prob, dtype=np.float64)
    b = np.clip((prob * n_bins).astype(np.int64), 0, n_bins - 1)
    count = np.bincount(b, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.bincount(b, weights=prob, minlength=n_bins) / count
        rate = np.bincount(b, weights=y, minlength=n_bins) / count
    return {"mean_prob": mean_p.tolist(), "observed": rate.tolist(), "count": count.tolist()}


def ece(y: np.ndarray, prob: np.ndarray, n_bins: int = 10) -> float:
    """Expected calibration error: sum over bins of (share of examples) x |mean prob - observed rate|."""
    rel = reliability(y, prob, n_bins)
    count = np.asarray(rel["count"])
    if count.sum() == 0:
        return float("nan")
    gap = np.abs(np.asarray(rel["mean_prob"]) - np.asarray(rel["observed"]))
    return float(np.nansum(count / count.sum() * gap))


def log_loss(y: np.ndarray, prob: np.ndarray, eps: float = 1e-7) -> float:
    y = np.asarray(y, dtype=np.float64)
    p = np.clip(np.asarray(prob, dtype=np.float64), eps, 1 - eps)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))) if len(y) else float("nan")


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, dtype=np.float64)))  # overflow-free


def fit_platt(logit: np.ndarray, y: np.ndarray, iters: int = 100, l2: float = 1e-6) -> tuple[float, float]:
    """Platt scaling: (a, b) minimising the log-loss of sigmoid(a * logit + b), by Newton's method.

    Fitted on validation only. With one class only the score cannot be calibrated against
    anything, so the answer is the constant (Jeffreys-smoothed) validation rate: (0, logit(rate));
    with no data at all, the identity (1, 0). ``l2`` keeps the Hessian invertible on separable data.
    """
    x = np.asarray(logit, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if len(x) == 0:
        return 1.0, 0.0
    if y.min() == y.max():
        rate = (y.sum() + 0.5) / (len(y) + 1.0)
        return 0.0, float(np.log(rate / (1 - rate)))
    feats = np.stack([x, np.ones_like(x)], 1)  # (n, 2)

    def objective(w: np.ndarray) -> float:
        z = feats @ w
        return float(np.mean(np.logaddexp(0.0, z) - y * z) + 0.5 * l2 * w @ w)

    # Start from the constant base rate (a = 0): from a = 1 a raw score far from 0 (a count, a
    # large logit) saturates the sigmoid and the first Newton step explodes.
    rate = y.mean()
    w = np.array([0.0, np.log(rate / (1 - rate))])
    loss = objective(w)
    for _ in range(iters):
        p = sigmoid(feats @ w)
        grad = feats.T @ (p - y) / len(x) + l2 * w
        hess = (feats * (p * (1 - p))[:, None]).T @ feats / len(x) + l2 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        t = 1.0
        while objective(w - t * step) > loss and t > 1e-8:  # backtracking keeps every step downhill
            t *= 0.5
        w = w - t * step
        new = objective(w)
        if loss - new < 1e-12:
            break
        loss = new
    return float(w[0]), float(w[1])


def binary_summary(y: np.ndarray, prob: np.ndarray, n_bins: int = 10) -> dict:
    """Every intent metric of one system, JSON-ready."""
    y = np.asarray(y)
    return {
        "roc_auc": roc_auc(y, prob),
        "pr_auc": pr_auc(y, prob),
        "ece": ece(y, prob, n_bins),
        "log_loss": log_loss(y, prob),
        "positive_rate": float(np.mean(y)) if len(y) else float("nan"),
        "mean_prob": float(np.mean(prob)) if len(y) else float("nan"),
        "n": int(len(y)),
        "reliability": reliability(y, prob, n_bins),
    }


def multiclass_summary(y_true: np.ndarray, y_pred: np.ndarray, names: list[str], labels: list[int]) -> dict:
    """Every next-action metric of one system, JSON-ready; ``names[i]`` is class ``labels[i]``."""
    cm = confusion_matrix(y_true, y_pred, labels)
    recall = per_class_recall(cm)
    return {
        "accuracy": accuracy(y_true, y_pred),
        "macro_f1": float(per_class_f1(cm).mean()),
        "per_class_recall": {n: (None if np.isnan(r) else float(r)) for n, r in zip(names, recall, strict=True)},
        "per_class_f1": {n: float(f) for n, f in zip(names, per_class_f1(cm), strict=True)},
        "confusion": cm.tolist(),
        "labels": names,
        "n": int(len(y_true)),
    }
