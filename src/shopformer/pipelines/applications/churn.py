"""Churn: the probability that a user has no event (or, with ``target_only``, no target-behaviour
event such as a purchase) in the ``days`` after a cut-off, beside an RFM-only baseline.

Temporal protocol, no test-window tuning:

* fit at ``t1``: features from the history up to ``t1`` (the model's encoder state, its next-action
  / intent outputs when it has heads, plus RFM features), labels from ``(t1, t1 + T]``;
* evaluate at ``t2 >= t1 + T``: the same features at ``t2``, labels from ``(t2, t2 + T]``.

Both systems are scikit-learn logistic regressions on standardised features, the L2 strength chosen
by cross-validation on the ``t1`` users only, then Platt-calibrated on their out-of-fold scores
(``evaluation.classification.fit_platt``). The baseline is the same pipeline on the RFM columns.
Exported scores come from a refit at the last labelled cut-off, applied at the end of the data.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_predict
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from shopformer.artifacts import Run
from shopformer.data.corpus import Dataset
from shopformer.data.split import resolve_boundary
from shopformer.evaluation.classification import binary_summary, fit_platt, sigmoid
from shopformer.pipelines.applications.snapshot import (
    DAY,
    RFM_NAMES,
    Snapshot,
    check_compatible,
    count_between,
    data_span,
    model_state,
    rfm_features,
    snapshot,
)


@dataclass
class ChurnModel:
    """A fitted, Platt-calibrated logistic regression on standardised features."""

    pipe: Pipeline
    platt: tuple[float, float]

    def predict(self, x: np.ndarray) -> np.ndarray:
        a, b = self.platt
        return sigmoid(a * self.pipe.decision_function(x) + b)


def fit_churn_model(x: np.ndarray, y: np.ndarray, seed: int = 0) -> ChurnModel:
    """L2 strength by 5-fold cross-validated log-loss, then Platt scaling on out-of-fold scores."""
    n_min = int(min(y.sum(), len(y) - y.sum()))
    if n_min < 2:
        raise ValueError(f"churn labels at the fitting cut-off are all {int(y[0]) if len(y) else '-'}: "
                         "choose another --cutoff or --days (nothing to learn from)")
    folds = StratifiedKFold(min(5, n_min), shuffle=True, random_state=seed)
    pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    # one BLAS thread: these problems are small, and threads spinning on a busy machine cost 5x
    with threadpool_limits(1):
        search = GridSearchCV(pipe, {"logisticregression__C": np.logspace(-3, 1, 5)}, cv=folds,
                              scoring="neg_log_loss")
        search.fit(x, y)
        pipe.set_params(**search.best_params_)
        oof = cross_val_predict(pipe, x, y, cv=folds, method="decision_function")
        pipe.fit(x, y)
    return ChurnModel(pipe, fit_platt(oof, y))


def churn_labels(ds: Dataset, snap: Snapshot, days: float, target: int | None) -> np.ndarray:
    """(n,) 1 = churned: no event (of ``target``, when given) in ``(t, t + days]``."""
    mask = None if target is None else ds.seq.behaviours == target
    return (count_between(ds.seq, snap.t, int(snap.t + days * DAY), mask)[snap.rows] == 0).astype(np.int64)


@dataclass
class ChurnResult:
    metrics: dict
    scores: pl.DataFrame  # per user at the export cut-off
    warnings: list[str] = field(default_factory=list)


def _features(run: Run, ds: Dataset, snap: Snapshot, days: float, target: int) -> tuple[np.ndarray, np.ndarray]:
    rfm = rfm_features(ds.seq, snap, days, target)
    return rfm, np.concatenate([model_state(run, ds, snap).features(), rfm], 1)


def default_cutoffs(ds: Dataset, days: float, cutoff: float | None) -> tuple[int, int]:
    """(t1, t2): t2 = ``cutoff`` (Unix seconds or a quantile of event times) or the last time with
    a full label window after it; t1 = t2 - T."""
    start, end = data_span(ds.seq)
    t2 = int(end - days * DAY) if cutoff is None else resolve_boundary(ds.seq, cutoff)
    t1 = int(t2 - days * DAY)
    if t2 + days * DAY > end:
        raise ValueError(f"cut-off {t2} leaves less than {days:g} day(s) of data after it (data end {end})")
    if t1 <= start:
        raise ValueError(f"{ds.path}: spans {(end - start) / DAY:.1f} days; churn over {days:g} day(s) "
                         f"needs at least {3 * days:g} (history, a fitting window and a test window)")
    return t1, t2


def leakage_warnings(run: Run, ds: Dataset, t1: int) -> list[str]:
    """Plain words when the model's weights were trained on events after the fitting cut-off."""
    sc = run.config.split
    if sc.kind != "temporal" or sc.valid_start is None:
        return [f"the model was trained on a {sc.kind!r} split, i.e. on events after the churn cut-off t1={t1}: "
                "its features may know the future (train on a temporal split ending before t1 for a clean test)"]
    train_end = resolve_boundary(ds.seq, sc.test_start if run.config.train.refit and sc.test_start else sc.valid_start)
    if train_end > t1:
        return [f"the model trained on events up to {train_end}, after the churn cut-off t1={t1}: its features "
                "may know the future (train with split.valid_start <= t1 for a clean test)"]
    return []


def run_churn(run: Run, ds: Dataset, days: float, target_only: bool = False, cutoff: float | None = None,
              active_days: float | None = None, seed: int = 0) -> ChurnResult:
    """Fit at t1, evaluate at t2 beside the RFM baseline, export scores at the end of the data."""
    check_compatible(run, ds)
    if days <= 0:
        raise ValueError(f"--days must be positive (got {days})")
    target_name, target = ds.target_behaviour(run.config.task.target_behaviour)
    label_target = target if target_only else None
    t1, t2 = default_cutoffs(ds, days, cutoff)
    s1, s2 = snapshot(ds.seq, t1, active_days), snapshot(ds.seq, t2, active_days)
    y1, y2 = churn_labels(ds, s1, days, label_target), churn_labels(ds, s2, days, label_target)
    rfm1, full1 = _features(run, ds, s1, days, target)
    rfm2, full2 = _features(run, ds, s2, days, target)
    systems = {"model+rfm": (full1, full2), "rfm_logistic": (rfm1, rfm2)}
    metrics: dict = {"t1": t1, "t2": t2, "days": days, "churn_of": target_name if target_only else "any event",
                     "n_fit": len(y1), "n_test": len(y2), "fit_churn_rate": float(y1.mean()) if len(y1) else None,
                     "features": {"rfm": list(RFM_NAMES), "model_dims": full1.shape[1] - rfm1.shape[1]},
                     "systems": {}}
    fitted: dict[str, ChurnModel] = {}
    for name, (x1, x2) in systems.items():
        fitted[name] = fit_churn_model(x1, y1, seed)
        metrics["systems"][name] = binary_summary(y2, fitted[name].predict(x2))
    m, b = metrics["systems"]["model+rfm"], metrics["systems"]["rfm_logistic"]
    metrics["roc_auc_gain"] = m["roc_auc"] - b["roc_auc"]
    warnings = leakage_warnings(run, ds, t1)
    if metrics["roc_auc_gain"] <= 0:
        warnings.append(f"the model's churn ROC-AUC {m['roc_auc']:.3f} does not beat the RFM baseline's "
                        f"{b['roc_auc']:.3f}: use the baseline")
    # export: refit at the last labelled cut-off (t2), score every user at the end of the data
    final = fit_churn_model(full2, y2, seed)
    s3 = snapshot(ds.seq, int(ds.seq.times.max()), active_days)
    rfm3, full3 = _features(run, ds, s3, days, target)
    base = fit_churn_model(rfm2, y2, seed)
    scores = pl.DataFrame({
        "user_id": ds.vocabs.users.decode(ds.seq.users[s3.rows]),
        "churn_probability": final.predict(full3),
        "rfm_churn_probability": base.predict(rfm3),
        "days_since_last_event": np.expm1(rfm3[:, 0]),
        "events": ds.seq.offsets[1:][s3.rows] - ds.seq.offsets[:-1][s3.rows],
    })
    metrics["scored_at"] = s3.t
    metrics["warnings"] = warnings
    return ChurnResult(metrics, scores, warnings)


def churn_table(metrics: dict) -> str:
    """Markdown: ROC-AUC / PR-AUC / ECE of each system at t2."""
    lines = [f"Churn = no {metrics['churn_of']} within {metrics['days']:g} day(s); fitted at t1={metrics['t1']} "
             f"({metrics['n_fit']} users), tested at t2={metrics['t2']} ({metrics['n_test']} users)", "",
             "| system | ROC-AUC | PR-AUC | ECE | log-loss | churn rate |", "|---|---|---|---|---|---|"]
    for name, s in metrics["systems"].items():
        lines.append(f"| {name} | {s['roc_auc']:.4f} | {s['pr_auc']:.4f} | {s['ece']:.4f} | {s['log_loss']:.4f} | "
                     f"{s['positive_rate']:.3f} |")
    return "\n".join(lines)
