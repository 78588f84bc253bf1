"""Trends: items or categories whose interest is rising or falling versus the last period.

Interest is the number of events (of every behaviour by default) per series and period. The model's
predicted growth of a series is ``log((expected next + 1) / (last period + 1))`` with the expected
demand of ``forecast.Forecaster`` (per-user next-item probabilities times each user's expected
activity); the baselines are the analyst's: last-period growth (the growth of the last period
continues) and momentum (the mean growth of the last three periods), plus the moving-average level
(next = the mean of the last three periods). That last one matters: actual growth is measured
against the last period, so any forecast smoother than the last period (the model's, a moving
average) gains rank correlation from regression to the mean alone; the model must beat it too to
show it knows more than that. Each is scored against the growth that happened next: Spearman rank
correlation over series with enough volume, and precision@K of the top risers (and fallers).
Several consecutive origins, none tuned on.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from shopformer.artifacts import Run
from shopformer.data.corpus import Dataset
from shopformer.data.schema import PAD
from shopformer.pipelines.applications.forecast import ANY, Forecaster, Series, series_counts
from shopformer.pipelines.applications.snapshot import DAY, check_compatible, data_span

MOMENTUM_PERIODS = 3


def log_growth(new: np.ndarray, old: np.ndarray) -> np.ndarray:
    return np.log((new + 1.0) / (old + 1.0))


def precision_at_k(pred: np.ndarray, actual: np.ndarray, k: int) -> float:
    """Share of the ``k`` series ranked highest by ``pred`` that are among the ``k`` highest of ``actual``
    (ties in ``actual`` at the cut count as hits)."""
    k = min(k, len(pred))
    if k == 0:
        return float("nan")
    top = np.argsort(-pred, kind="stable")[:k]
    threshold = np.sort(actual)[::-1][k - 1]
    return float((actual[top] >= threshold).mean())


def growth_scores(pred: np.ndarray, actual: np.ndarray, k: int) -> dict[str, float]:
    rho = stats.spearmanr(pred, actual).statistic if len(pred) > 2 else float("nan")
    return {"spearman": float(rho), "precision_risers": precision_at_k(pred, actual, k),
            "precision_fallers": precision_at_k(-pred, -actual, k)}


def run_trends(run: Run, ds: Dataset, horizon: int, level: str = "item", behaviour: str | None = ANY,
               origins: int = 3, k: int = 20, min_volume: int = 5) -> tuple[dict, dict[str, np.ndarray]]:
    """Evaluate the growth rankings at ``origins`` consecutive origins, then rank the series for the
    period after the data. Returns (metrics, the final ranking's columns, sorted by predicted growth)."""
    check_compatible(run, ds)
    beh_name, beh = (ANY, None) if behaviour in (None, ANY) else ds.target_behaviour(behaviour)
    series = Series.build(run, ds, level)
    fc = Forecaster(run, ds, horizon, beh, series)
    start, end = data_span(ds.seq)
    ts = [end - j * horizon for j in range(origins, 0, -1)]
    if ts[0] - (MOMENTUM_PERIODS + 1) * horizon <= start:
        raise ValueError(f"{ds.path}: {(end - start) / DAY:.1f} days of data hold fewer than {origins + 5} periods "
                         f"of {horizon / DAY:g} day(s) ({MOMENTUM_PERIODS + 1} of history, {origins} test origin(s)); "
                         "use a shorter --horizon or fewer --origins")

    def growths(t: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        periods = [series_counts(ds, series, t - (j + 1) * horizon, t - j * horizon, beh)
                   for j in range(MOMENTUM_PERIODS + 1)]  # periods[0] is the last one
        return periods[0], {"model": log_growth(fc.expected(t), periods[0]),
                            "last-period growth": log_growth(periods[0], periods[1]),
                            "momentum (3 periods)": np.mean([log_growth(periods[j], periods[j + 1])
                                                             for j in range(MOMENTUM_PERIODS)], 0),
                            "moving-average level": log_growth(np.mean(periods[:MOMENTUM_PERIODS], 0), periods[0])}

    per_origin: list[dict] = []
    for t in ts:
        last, systems = growths(t)
        y = series_counts(ds, series, t, t + horizon, beh)
        keep = (last + y >= min_volume)
        keep[PAD] = False
        actual = log_growth(y, last)[keep]
        kk = max(1, min(k, int(keep.sum()) // 4))
        per_origin.append({"origin": t, "n_series": int(keep.sum()), "k": kk,
                           "systems": {n: growth_scores(g[keep], actual, kk) for n, g in systems.items()}})
    last, systems = growths(end)  # the ranking for the period after the data
    order = np.argsort(-systems["model"][1:], kind="stable") + 1
    final = {"series": np.asarray(series.names, dtype=object)[order], "last_period": last[order],
             "predicted_growth": systems["model"][order]}
    names = list(per_origin[0]["systems"])
    summary = {n: {m: float(np.nanmean([o["systems"][n][m] for o in per_origin]))
                   for m in ("spearman", "precision_risers", "precision_fallers")} for n in names}
    metrics = {"level": level, "behaviour": beh_name, "horizon_seconds": horizon, "min_volume": min_volume,
               "origins": per_origin, "summary": summary,
               "spearman_gain_vs_last_period_growth": summary["model"]["spearman"]
               - summary["last-period growth"]["spearman"],
               "spearman_gain_vs_best_baseline": summary["model"]["spearman"]
               - max(v["spearman"] for n, v in summary.items() if n != "model")}
    return metrics, final


def trends_table(metrics: dict, final: dict[str, np.ndarray] | None = None, top: int = 5) -> str:
    """Markdown: Spearman and precision@K per system, then the top risers / fallers after the data."""
    lines = [f"Trends of {metrics['behaviour']} events per {metrics['level']}, period "
             f"{metrics['horizon_seconds'] / 3600:g} h, {len(metrics['origins'])} origin(s), series with >= "
             f"{metrics['min_volume']} events", "",
             "| system | Spearman | precision@K risers | precision@K fallers |", "|---|---|---|---|"]
    for name, s in metrics["summary"].items():
        lines.append(f"| {name} | {s['spearman']:.4f} | {s['precision_risers']:.4f} | {s['precision_fallers']:.4f} |")
    if final is not None and top > 0:
        active = final["last_period"] > 0
        names, growth = final["series"][active], final["predicted_growth"][active]
        rise = ", ".join(f"{n} ({g:+.2f})" for n, g in zip(names[:top], growth[:top], strict=True))
        fall = ", ".join(f"{n} ({g:+.2f})" for n, g in zip(names[::-1][:top], growth[::-1][:top], strict=True))
        lines += ["", f"rising next period: {rise}", f"falling next period: {fall}"]
    return "\n".join(lines)
