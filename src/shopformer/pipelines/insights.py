"""Dashboard insights: the applications' answers about one run, computed once, in one JSON file.

``shopformer insights RUN -o insights.json`` runs the trends, demand forecast and churn pipelines
(``pipelines/applications``) on the run's data set and keeps what the dashboard shows: per-period
counts of the last ``PERIODS`` periods, the top rising / falling items (and categories) with their
history for sparklines, each active item's actual counts beside the model's forecasts (the last
``BACKTEST`` origins and the period after the data, with intervals), and each user's churn
probability. The service only reads this file (``--dashboard-insights``); the heavy work never
runs inside the serving process. A part that cannot be computed (no timestamps, too short a span)
is recorded with its reason instead, and the others are still written.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from shopformer.artifacts import Run
from shopformer.atomic import atomic_write_text
from shopformer.data.corpus import Dataset
from shopformer.data.schema import PAD
from shopformer.pipelines.applications.churn import run_churn
from shopformer.pipelines.applications.forecast import (
    ANY,
    Forecaster,
    Series,
    intervals,
    nb_dispersion,
    series_counts,
)
from shopformer.pipelines.applications.snapshot import DAY, check_compatible, data_span
from shopformer.pipelines.applications.trends import run_trends

FORMAT = 1
PERIODS = 8  # periods of history kept per series
BACKTEST = 3  # forecast origins shown against what happened
TOP = 10  # risers / fallers kept
MAX_ITEMS = 5000  # items with a forecast kept (the most active)


def auto_horizon(ds: Dataset) -> int:
    """One day for logs of up to 60 days, a week for longer ones; shorter for logs of a few days."""
    start, end = data_span(ds.seq)
    span = max(end - start, 1)
    horizon = DAY if span <= 60 * DAY else 7 * DAY
    while span < (PERIODS + 2) * horizon and horizon > 3600:
        horizon //= 2
    return horizon


def _history(ds: Dataset, series: Series, end: int, horizon: int, beh: int | None) -> np.ndarray:
    """(PERIODS, S) counts per period, oldest first; the last row is ``(end - h, end]``."""
    return np.stack([series_counts(ds, series, end - (PERIODS - j) * horizon, end - (PERIODS - j - 1) * horizon, beh)
                     for j in range(PERIODS)])


def trends_part(run: Run, ds: Dataset, horizon: int, level: str) -> dict[str, Any]:
    metrics, final = run_trends(run, ds, horizon, level)
    series = Series.build(run, ds, level)
    hist = _history(ds, series, data_span(ds.seq)[1], horizon, None)
    index = {name: i for i, name in enumerate(series.names)}
    active = final["last_period"] > 0

    def rows(order: np.ndarray) -> list[dict]:
        out = []
        for j in order[:TOP]:
            name = str(final["series"][j])
            out.append({"series": name, "growth": float(final["predicted_growth"][j]),
                        "last": float(final["last_period"][j]), "history": hist[:, index[name]].tolist()})
        return out

    growth = final["predicted_growth"]
    return {"risers": rows(np.flatnonzero(active & (growth > 0))),
            "fallers": rows(np.flatnonzero(active & (growth < 0))[::-1]),
            "summary": {k: v for k, v in metrics["summary"].items()},
            "spearman_gain_vs_best_baseline": metrics["spearman_gain_vs_best_baseline"]}


def forecast_part(run: Run, ds: Dataset, horizon: int, level_interval: float = 0.8) -> dict[str, Any]:
    beh_name, beh = ds.target_behaviour(run.config.task.target_behaviour)
    series = Series.build(run, ds, "item")
    fc = Forecaster(run, ds, horizon, beh, series)
    end = data_span(ds.seq)[1]
    origins = [end - j * horizon for j in range(BACKTEST + 1, -1, -1)]  # the first calibrates the dispersion
    hist = _history(ds, series, end, horizon, beh)
    means = [fc.expected(t) for t in origins]
    actual = [series_counts(ds, series, t, t + horizon, beh) for t in origins[:-1]]
    shown: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []  # (period index, mean, lo, hi)
    for j in range(1, len(origins)):
        lo, hi = intervals(means[j], nb_dispersion(actual[j - 1][1:], means[j - 1][1:]), level_interval)
        shown.append((PERIODS - BACKTEST - 1 + j, means[j], lo, hi))
    tested = [(a, m) for a, (_, m, _, _) in zip(actual[1:], shown, strict=False)]
    naive = [hist[PERIODS - BACKTEST - 1 + j] for j in range(BACKTEST)]  # the period before each test window
    total = float(sum(a[1:].sum() for a, _ in tested))
    wape = {"model": float(sum(np.abs(a - m)[1:].sum() for a, m in tested) / total) if total else None,
            "naive last period": float(sum(np.abs(a - n)[1:].sum() for (a, _), n in zip(tested, naive, strict=True))
                                       / total) if total else None}
    cover = [float(((a >= lo) & (a <= hi))[1:][a[1:] + m[1:] > 0].mean()) for a, (_, m, lo, hi)
             in zip(actual[1:], shown, strict=False) if (a[1:] + m[1:] > 0).any()]
    volume = hist.sum(0) + means[-1]
    volume[PAD] = -1
    keep = [int(i) for i in np.argsort(-volume, kind="stable")[:MAX_ITEMS] if volume[i] > 0]
    items = {series.names[i]: {"history": hist[:, i].tolist(),
                               "forecasts": [[p, round(float(m[i]), 4), float(lo[i]), float(hi[i])]
                                             for p, m, lo, hi in shown]} for i in keep}
    return {"behaviour": beh_name, "interval": level_interval, "wape": wape,
            "coverage": float(np.mean(cover)) if cover else None, "items": items}


def churn_part(run: Run, ds: Dataset, horizon: int) -> dict[str, Any]:
    days = max(horizon / DAY, 1 / 24)
    result = run_churn(run, ds, days)
    frame = result.scores
    return {"days": days, "systems": result.metrics["systems"], "warnings": result.warnings,
            "scores": dict(zip(frame["user_id"].to_list(), [round(float(p), 4) for p in frame["churn_probability"]],
                               strict=True))}


def compute_insights(run: Run, ds: Dataset, horizon: int | None = None) -> dict[str, Any]:
    """Every part the data allow; a part that fails holds ``{"error": reason}``."""
    check_compatible(run, ds)
    h = horizon or auto_horizon(ds)
    end = data_span(ds.seq)[1]
    out: dict[str, Any] = {"format": FORMAT, "model_version": run.version, "computed_at": int(time.time()),
                           "horizon_seconds": h, "data_end": end,
                           "period_starts": [end - (PERIODS - j) * h for j in range(PERIODS + 1)],
                           "any_behaviour": ANY}
    parts: dict[str, Any] = {"trends_item": lambda: trends_part(run, ds, h, "item"),
                             "forecast": lambda: forecast_part(run, ds, h),
                             "churn": lambda: churn_part(run, ds, h)}
    if ds.spec.n_categories > 0:
        parts["trends_category"] = lambda: trends_part(run, ds, h, "category")
    for name, build in parts.items():
        try:
            out[name] = build()
        except ValueError as err:
            out[name] = {"error": str(err)}
    return out


def write_insights(data: dict[str, Any], path: Path) -> Path:
    return atomic_write_text(path, json.dumps(_clean(data), allow_nan=False))


def _clean(value: Any) -> Any:
    """JSON without NaN / infinity (they become null): browsers and strict parsers refuse them."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value
