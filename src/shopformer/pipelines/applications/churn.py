"""Churn: the probability that a user has no event (or, with ``target_only``, no target-behaviour
event such as a purchase) in the ``days`` after a cut-off, beside an RFM-only baseline.

Temporal protocol, no test-window tuning:

* fit at ``t1``: features from the history up to ``t1`` (the model's encoder state, its next-action
  / intent outputs when it has heads, plus RFM features), labels from ``(t1, t1 + T]``; pooled with
  the same at up to ``fit_cutoffs - 1`` earlier cut-offs ``t1 - T, t1 - 2 T, ...`` that are not before
  the end of the model's training (where a label window would be events the encoder was trained on);
* evaluate at ``t2 >= t1 + T``: the same features at ``t2``, labels from ``(t2, t2 + T]``.

Both systems are scikit-learn logistic regressions on standardised features, the L2 strength chosen
by cross-validation on the fitting rows only (folds grouped by user), then Platt-calibrated on their
out-of-fold scores (``evaluation.classification.fit_platt``); the out-of-fold ROC-AUC is the
validation figure. The baseline is the same pipeline on the RFM columns, so the model's system holds
every baseline feature and can lose to it only by over-fitting its extra columns. Pooling cut-offs
gives that fit several times the rows; Platt scaling reads only the newest cut-off's rows, whose
churn rate is the nearest to the one scored next (real logs' churn rate drifts from day to day).
Exported scores come from a refit at the last labelled cut-offs, applied at the end of the data.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
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
    oof_roc_auc: float  # out-of-fold ROC-AUC on the fitting rows: the validation figure

    def predict(self, x: np.ndarray) -> np.ndarray:
        a, b = self.platt
        return sigmoid(a * self.pipe.decision_function(x) + b)


def user_folds(y: np.ndarray, groups: np.ndarray | None, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """k cross-validation folds, stratified by label, the rows of one group (a user seen at several
    cut-offs) in one fold: users are dealt to folds at random, each label's users in turn (a user
    counts by their label at the latest cut-off). Without groups: plain stratified folds. (sklearn's
    StratifiedGroupKFold does the same greedily, one Python step per group: minutes for 60k rows.)"""
    if groups is None or len(np.unique(groups)) == len(groups):
        return list(StratifiedKFold(k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))
    uniq, first = np.unique(groups, return_index=True)  # the pooled rows come newest cut-off first
    rng = np.random.default_rng(seed)
    fold_of_user = np.empty(len(uniq), np.int64)
    for label in (0, 1):
        members = rng.permutation(np.flatnonzero(y[first] == label))
        fold_of_user[members] = np.arange(len(members)) % k
    fold = fold_of_user[np.searchsorted(uniq, groups)]
    return [(np.flatnonzero(fold != f), np.flatnonzero(fold == f)) for f in range(k)]


def fit_churn_model(x: np.ndarray, y: np.ndarray, seed: int = 0, groups: np.ndarray | None = None,
                    calibrate: np.ndarray | None = None) -> ChurnModel:
    """L2 strength by 5-fold cross-validated log-loss, then Platt scaling on out-of-fold scores (of
    the ``calibrate`` rows only, when given: the newest cut-off's, whose churn rate is the nearest to
    the one scored next). Rows of one ``groups`` value (a user seen at several cut-offs) stay in one fold."""
    n_min = int(min(y.sum(), len(y) - y.sum()))
    if n_min < 2:
        raise ValueError(f"churn labels at the fitting cut-off are all {int(y[0]) if len(y) else '-'}: "
                         "choose another --cutoff or --days (nothing to learn from)")
    folds = user_folds(y, groups, min(5, n_min), seed)
    pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    # one BLAS thread: these problems are small, and threads spinning on a busy machine cost 5x
    with threadpool_limits(1):
        search = GridSearchCV(pipe, {"logisticregression__C": np.logspace(-3, 1, 5)}, cv=folds,
                              scoring="neg_log_loss")
        search.fit(x, y)
        pipe.set_params(**search.best_params_)
        oof = cross_val_predict(pipe, x, y, cv=folds, method="decision_function")
        pipe.fit(x, y)
    cal = np.ones(len(y), bool) if calibrate is None else calibrate
    if len(np.unique(y[cal])) < 2:  # one class on the newest cut-off: calibrate on every row
        cal = np.ones(len(y), bool)
    return ChurnModel(pipe, fit_platt(oof[cal], y[cal]), float(roc_auc_score(y, oof)))


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


@dataclass
class FitRows:
    """Features and labels pooled over fitting cut-offs; ``groups`` = the user row of each."""

    cutoffs: list[int]
    rfm: np.ndarray
    full: np.ndarray
    y: np.ndarray
    groups: np.ndarray
    newest: np.ndarray  # (rows,) bool: the row comes from the newest cut-off (Platt scaling's rows)


def fit_rows(run: Run, ds: Dataset, cutoffs: list[int], days: float, target: int, label_target: int | None,
             active_days: float | None) -> FitRows:
    parts = []
    for t in cutoffs:
        snap = snapshot(ds.seq, t, active_days)
        parts.append((*_features(run, ds, snap, days, target), churn_labels(ds, snap, days, label_target), snap.rows))
    rfm, full, y, groups = (np.concatenate([p[i] for p in parts]) for i in range(4))
    return FitRows(cutoffs, rfm, full, y, groups, np.arange(len(y)) < len(parts[0][2]))


def model_train_end(run: Run, ds: Dataset) -> int | None:
    """The time the model's training data end (a temporal split), or None (it saw every time)."""
    sc = run.config.split
    if sc.kind != "temporal" or sc.valid_start is None:
        return None
    return resolve_boundary(ds.seq, sc.test_start if run.config.train.refit and sc.test_start else sc.valid_start)


def fitting_cutoffs(run: Run, ds: Dataset, last: int, days: float, n: int) -> list[int]:
    """``last`` and up to ``n - 1`` cut-offs before it, a horizon apart, none before the end of the
    model's training nor before a horizon of history (newest first)."""
    floor = max(data_span(ds.seq)[0] + days * DAY, model_train_end(run, ds) or last)
    return [last] + [c for c in (int(last - k * days * DAY) for k in range(1, n)) if c >= floor]


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
    train_end = model_train_end(run, ds)
    if train_end is None:
        return [f"the model was trained on a {sc.kind!r} split, i.e. on events after the churn cut-off t1={t1}: "
                "its features may know the future (train on a temporal split ending before t1 for a clean test)"]
    if train_end > t1:
        return [f"the model trained on events up to {train_end}, after the churn cut-off t1={t1}: its features "
                "may know the future (train with split.valid_start <= t1 for a clean test)"]
    return []


def run_churn(run: Run, ds: Dataset, days: float, target_only: bool = False, cutoff: float | None = None,
              active_days: float | None = None, seed: int = 0, fit_cutoffs: int = 3) -> ChurnResult:
    """Fit at t1 (pooled with up to ``fit_cutoffs - 1`` earlier clean cut-offs), evaluate at t2
    beside the RFM baseline, export scores at the end of the data."""
    check_compatible(run, ds)
    if days <= 0:
        raise ValueError(f"--days must be positive (got {days})")
    if fit_cutoffs < 1:
        raise ValueError(f"--fit-cutoffs must be >= 1 (got {fit_cutoffs})")
    target_name, target = ds.target_behaviour(run.config.task.target_behaviour)
    label_target = target if target_only else None
    t1, t2 = default_cutoffs(ds, days, cutoff)
    fit = fit_rows(run, ds, fitting_cutoffs(run, ds, t1, days, fit_cutoffs), days, target, label_target, active_days)
    s2 = snapshot(ds.seq, t2, active_days)
    y2 = churn_labels(ds, s2, days, label_target)
    rfm2, full2 = _features(run, ds, s2, days, target)
    systems = {"model+rfm": (fit.full, full2), "rfm_logistic": (fit.rfm, rfm2)}
    metrics: dict = {"t1": t1, "t2": t2, "days": days, "churn_of": target_name if target_only else "any event",
                     "fit_cutoffs": fit.cutoffs, "n_fit": len(fit.y), "n_test": len(y2),
                     "fit_churn_rate": float(fit.y.mean()) if len(fit.y) else None,
                     "features": {"rfm": list(RFM_NAMES), "model_dims": fit.full.shape[1] - fit.rfm.shape[1]},
                     "systems": {}}
    fitted: dict[str, ChurnModel] = {}
    for name, (x1, x2) in systems.items():
        fitted[name] = fit_churn_model(x1, fit.y, seed, fit.groups, fit.newest)
        metrics["systems"][name] = {**binary_summary(y2, fitted[name].predict(x2)),
                                    "validation_roc_auc": fitted[name].oof_roc_auc}
    m, b = metrics["systems"]["model+rfm"], metrics["systems"]["rfm_logistic"]
    metrics["validation_roc_auc_gain"] = m["validation_roc_auc"] - b["validation_roc_auc"]
    metrics["roc_auc_gain"] = m["roc_auc"] - b["roc_auc"]
    warnings = leakage_warnings(run, ds, t1)
    if metrics["roc_auc_gain"] <= 0:
        warnings.append(f"the model's churn ROC-AUC {m['roc_auc']:.3f} does not beat the RFM baseline's "
                        f"{b['roc_auc']:.3f}: use the baseline")
    scores = churn_scores(run, ds, days, target_only, active_days, seed, fit_cutoffs, t2)
    metrics["scored_at"] = int(ds.seq.times.max())
    metrics["warnings"] = warnings
    return ChurnResult(metrics, scores, warnings)


def churn_scores(run: Run, ds: Dataset, days: float, target_only: bool = False, active_days: float | None = None,
                 seed: int = 0, fit_cutoffs: int = 3, last: int | None = None) -> pl.DataFrame:
    """Per user at the end of the data: both systems refitted at the last labelled cut-offs (``last``,
    default the last time with a full label window, and the ones before it), no evaluation (what
    ``shopformer score --churn-days`` needs)."""
    check_compatible(run, ds)
    target = ds.target_behaviour(run.config.task.target_behaviour)[1]
    last = default_cutoffs(ds, days, None)[1] if last is None else last
    rows = fit_rows(run, ds, fitting_cutoffs(run, ds, last, days, fit_cutoffs), days, target,
                    target if target_only else None, active_days)
    final = fit_churn_model(rows.full, rows.y, seed, rows.groups, rows.newest)
    base = fit_churn_model(rows.rfm, rows.y, seed, rows.groups, rows.newest)
    snap = snapshot(ds.seq, int(ds.seq.times.max()), active_days)
    rfm, full = _features(run, ds, snap, days, target)
    return pl.DataFrame({
        "user_id": ds.vocabs.users.decode(ds.seq.users[snap.rows]),
        "churn_probability": final.predict(full),
        "rfm_churn_probability": base.predict(rfm),
        "days_since_last_event": np.expm1(rfm[:, 0]),
        "events": ds.seq.offsets[1:][snap.rows] - ds.seq.offsets[:-1][snap.rows],
    })


def churn_table(metrics: dict) -> str:
    """Markdown: ROC-AUC / PR-AUC / ECE of each system at t2."""
    cuts = metrics.get("fit_cutoffs", [metrics["t1"]])
    lines = [f"Churn = no {metrics['churn_of']} within {metrics['days']:g} day(s); fitted at t1={metrics['t1']}"
             f"{f' and {len(cuts) - 1} earlier cut-off(s)' if len(cuts) > 1 else ''} ({metrics['n_fit']} rows), "
             f"tested at t2={metrics['t2']} ({metrics['n_test']} users)", "",
             "| system | ROC-AUC | PR-AUC | ECE | log-loss | churn rate | validation ROC-AUC |",
             "|---|---|---|---|---|---|---|"]
    for name, s in metrics["systems"].items():
        val = s.get("validation_roc_auc")
        lines.append(f"| {name} | {s['roc_auc']:.4f} | {s['pr_auc']:.4f} | {s['ece']:.4f} | {s['log_loss']:.4f} | "
                     f"{s['positive_rate']:.3f} | {'–' if val is None else f'{val:.4f}'} |")
    return "\n".join(lines)
