"""Behaviour-head metrics on tiny hand-computed examples (scikit-learn only as a cross-check)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from shopformer.evaluation.classification import (
    accuracy,
    binary_summary,
    confusion_matrix,
    ece,
    fit_platt,
    log_loss,
    macro_f1,
    multiclass_summary,
    per_class_f1,
    per_class_recall,
    pr_auc,
    reliability,
    roc_auc,
    sigmoid,
)

# Classes 1..3 (0 is padding and never a label): 6 examples.
Y_TRUE = np.array([1, 1, 2, 3, 3, 3])
Y_PRED = np.array([1, 2, 2, 3, 1, 3])


def test_confusion_matrix_by_hand() -> None:
    cm = confusion_matrix(Y_TRUE, Y_PRED, [1, 2, 3])
    # rows = truth, columns = prediction
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    # label order is the caller's; unknown labels are dropped
    assert confusion_matrix(Y_TRUE, Y_PRED, [3, 1]).tolist() == [[2, 1], [0, 1]]


def test_accuracy_recall_f1_by_hand() -> None:
    assert accuracy(Y_TRUE, Y_PRED) == pytest.approx(4 / 6)
    cm = confusion_matrix(Y_TRUE, Y_PRED, [1, 2, 3])
    assert per_class_recall(cm).tolist() == pytest.approx([1 / 2, 1 / 1, 2 / 3])
    # F1 = 2TP / (2TP + FP + FN): class 1: 2/(2+1+1); class 2: 2/(2+1+0); class 3: 4/(4+0+1)
    assert per_class_f1(cm).tolist() == pytest.approx([0.5, 2 / 3, 0.8])
    assert macro_f1(Y_TRUE, Y_PRED, [1, 2, 3]) == pytest.approx((0.5 + 2 / 3 + 0.8) / 3)


def test_class_never_predicted_counts_zero_and_absent_recall_is_nan() -> None:
    y, p = np.array([1, 1, 2]), np.array([1, 1, 1])
    # class 2 is never predicted: F1 0; class 3 has no support and no prediction: F1 0, recall NaN
    assert macro_f1(y, p, [1, 2]) == pytest.approx((0.8 + 0.0) / 2)
    assert macro_f1(y, p, [1, 2, 3]) == pytest.approx(0.8 / 3)
    rec = per_class_recall(confusion_matrix(y, p, [1, 2, 3]))
    assert rec[:2].tolist() == [1.0, 0.0] and math.isnan(rec[2])


def test_multiclass_matches_sklearn() -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    y, p = rng.integers(1, 5, 500), rng.integers(1, 5, 500)
    labels = [1, 2, 3, 4]
    assert macro_f1(y, p, labels) == pytest.approx(metrics.f1_score(y, p, labels=labels, average="macro"))
    assert np.array_equal(confusion_matrix(y, p, labels), metrics.confusion_matrix(y, p, labels=labels))
    assert per_class_recall(confusion_matrix(y, p, labels)) == pytest.approx(
        metrics.recall_score(y, p, labels=labels, average=None))


def test_roc_auc_by_hand() -> None:
    y, s = np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])
    # positive 0.35 beats 0.1 but not 0.4; positive 0.8 beats both: 3 of 4 pairs
    assert roc_auc(y, s) == pytest.approx(0.75)
    assert roc_auc(np.array([0, 1]), np.array([0.5, 0.5])) == pytest.approx(0.5)  # a tie counts half
    assert roc_auc(np.array([1, 0]), np.array([0.9, 0.1])) == 1.0
    assert math.isnan(roc_auc(np.array([1, 1]), np.array([0.2, 0.3])))  # undefined, never 0.5


def test_pr_auc_by_hand() -> None:
    y, s = np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])
    # ranked: 0.8 (+) P=1 R=.5 | 0.4 (-) | 0.35 (+) P=2/3 R=1 -> AP = .5 * 1 + .5 * 2/3
    assert pr_auc(y, s) == pytest.approx(0.5 + 0.5 * 2 / 3)
    # tied scores are one threshold: precision 1/2 at recall 1
    assert pr_auc(np.array([1, 0]), np.array([0.5, 0.5])) == pytest.approx(0.5)
    assert math.isnan(pr_auc(np.array([0, 0]), np.array([0.5, 0.1])))


def test_ranking_metrics_match_sklearn_with_ties() -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    y = rng.random(400) < 0.2
    s = np.round(rng.random(400) + 0.3 * y, 1)  # coarse scores: many ties
    assert roc_auc(y, s) == pytest.approx(metrics.roc_auc_score(y, s))
    assert pr_auc(y, s) == pytest.approx(metrics.average_precision_score(y, s))


def test_ece_and_reliability_by_hand() -> None:
    y, p = np.array([0, 1, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9])
    # ten bins, one example each: mean |p - y| = (0.1 + 0.8 + 0.2 + 0.1) / 4
    assert ece(y, p, 10) == pytest.approx(0.3)
    # two bins: [0, .5): mean p .15 vs rate .5; [.5, 1]: .85 vs 1 -> .5 * .35 + .5 * .15
    assert ece(y, p, 2) == pytest.approx(0.25)
    rel = reliability(y, p, 2)
    assert rel["count"] == [2.0, 2.0]
    assert rel["mean_prob"] == pytest.approx([0.15, 0.85]) and rel["observed"] == pytest.approx([0.5, 1.0])
    assert reliability(np.array([1]), np.array([1.0]), 4)["count"] == [0, 0, 0, 1]  # p = 1 in the last bin
    assert ece(np.array([0, 1]), np.array([0.0, 1.0])) == 0.0  # perfectly calibrated and sharp


def test_log_loss_by_hand() -> None:
    assert log_loss(np.array([1, 0]), np.array([0.8, 0.4])) == pytest.approx(-(math.log(0.8) + math.log(0.6)) / 2)


def test_platt_scaling_recovers_the_true_map_and_matches_sklearn() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=20000)
    y = (rng.random(20000) < sigmoid(2.0 * x - 1.0)).astype(float)
    a, b = fit_platt(x, y)
    assert a == pytest.approx(2.0, abs=0.1) and b == pytest.approx(-1.0, abs=0.1)
    lm = pytest.importorskip("sklearn.linear_model")
    counts = rng.integers(0, 11, 5000).astype(float)  # a raw count: far from 0, saturates a = 1
    yc = (rng.random(5000) < 0.05 + 0.02 * counts).astype(float)
    ref = lm.LogisticRegression(C=1e9).fit(counts[:, None], yc)
    a, b = fit_platt(counts, yc)
    assert a == pytest.approx(ref.coef_[0, 0], rel=1e-3) and b == pytest.approx(ref.intercept_[0], rel=1e-3)


def test_platt_degenerate_inputs() -> None:
    # one class only: a constant, the smoothed rate (0 positives of 3 -> 0.5 / 4)
    a, b = fit_platt(np.array([0.3, 2.0, 5.0]), np.array([0, 0, 0]))
    assert a == 0.0 and sigmoid(b) == pytest.approx(0.125)
    a, b = fit_platt(np.array([0.3]), np.array([1]))
    assert a == 0.0 and sigmoid(b) == pytest.approx(0.75)
    assert fit_platt(np.zeros(0), np.zeros(0)) == (1.0, 0.0)  # nothing at all: identity


def test_summaries_are_json_ready() -> None:
    import json

    s = multiclass_summary(Y_TRUE, Y_PRED, ["look", "keep", "take"], [1, 2, 3])
    assert s["per_class_recall"] == pytest.approx({"look": 0.5, "keep": 1.0, "take": 2 / 3})
    assert s["confusion"] == [[1, 1, 0], [0, 1, 0], [1, 0, 2]] and s["n"] == 6
    b = binary_summary(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    assert b["roc_auc"] == pytest.approx(0.75) and b["positive_rate"] == 0.5
    json.dumps(s)
    json.dumps(b)
