"""Demand forecast: expected events (purchases by default) per item or category over the next
horizon, from the model's per-user next-item probabilities, with prediction intervals, beside the
baselines a shop analyst would use (naive last period, moving average, seasonal naive).

For a forecast at origin ``t`` over ``(t, t + h]``:

* each user with history gets an expected number of events of the behaviour, ``w_u``: a Poisson
  regression on the user's features (encoder state, head outputs, RFM) fitted at ``t - h`` on what
  happened in ``(t - h, t]``: no look at the forecast window;
* each user's next-item distribution ``p_u`` (the model's softmax for that behaviour);
* expected demand of item i: ``sum_u w_u p_u(i)``, plus new users: what users first seen in the
  last period did then, item by item;
* intervals: negative-binomial quantiles around that mean, the dispersion fitted (method of moments)
  on the previous origin's forecast errors, never on the window being forecast.

Evaluation (``run_forecast``): several consecutive origins ending at the last full horizon;
WAPE and MASE of every system over all series and over head / tail series, and the model's interval
coverage. statsforecast is not used (not a dependency); the baselines are the classical naive ones.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import stats
from sklearn.linear_model import PoissonRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from shopformer.artifacts import Run
from shopformer.data.batches import EventArrays
from shopformer.data.corpus import Dataset
from shopformer.data.schema import PAD
from shopformer.pipelines.applications.snapshot import (
    DAY,
    Snapshot,
    count_between,
    data_span,
    model_batches,
    model_state,
    rfm_features,
    snapshot,
)

LEVELS = ("item", "category")
ANY = "*"  # every behaviour
# Reference row: forecasting no demand at all has WAPE exactly 1. On sparse item series a smooth
# forecast wins WAPE largely by being close to zero; a system above 1 does worse than forecasting nothing.
ZERO = "zero (reference)"


def parse_horizon(text: str) -> int:
    """'1d', '12h', '30min' or plain seconds -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(d|h|min|s)?\s*", str(text))
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"--horizon {text!r}: expected a positive duration such as 1d, 12h, 30min or 3600")
    unit = {"d": DAY, "h": 3600, "min": 60, "s": 1, None: 1}[m.group(2)]
    return int(float(m.group(1)) * unit)


@dataclass
class Series:
    """How events map to series: items (ids 0..n_items) or categories of the run's items."""

    level: str
    item_to_series: np.ndarray  # (n_items + 1,) series id of each item
    n: int
    names: list[str]

    @classmethod
    def build(cls, run: Run, ds: Dataset, level: str) -> Series:
        if level not in LEVELS:
            raise ValueError(f"--level {level!r}: expected one of {', '.join(LEVELS)}")
        if level == "item":
            return cls(level, np.arange(ds.spec.n_items + 1), ds.spec.n_items + 1, list(ds.vocabs.items.tokens))
        if ds.spec.n_categories == 0:
            raise ValueError(f"{ds.path}: --level category needs item categories; this data set has none")
        cat = np.asarray(run.item_category, np.int64)
        return cls(level, cat, ds.spec.n_categories + 1, list(ds.vocabs.categories.tokens))

    def aggregate(self, per_item: np.ndarray) -> np.ndarray:
        return np.bincount(self.item_to_series, weights=per_item, minlength=self.n)


def behaviour_mask(ds: Dataset, behaviour: int | None) -> np.ndarray | None:
    return None if behaviour is None else ds.seq.behaviours == behaviour


def series_counts(ds: Dataset, series: Series, lo: int, hi: int, behaviour: int | None,
                  users: np.ndarray | None = None) -> np.ndarray:
    """(S,) events of ``behaviour`` (None: any) in ``(lo, hi]`` per series (only of ``users`` rows)."""
    s = ds.seq
    hit = (s.times > lo) & (s.times <= hi)
    if behaviour is not None:
        hit &= s.behaviours == behaviour
    if users is not None:
        hit &= np.isin(s.user_row_of_event(), users)
    return np.bincount(series.item_to_series[s.items[hit]], minlength=series.n).astype(np.float64)


@dataclass
class Forecaster:
    """Expected demand per series at an origin; caches the per-user features of each cut-off."""

    run: Run
    ds: Dataset
    horizon: int
    behaviour: int | None  # None: events of any behaviour
    series: Series
    batch_size: int = 256
    _features: dict[int, tuple[Snapshot, np.ndarray]] = field(default_factory=dict)

    def features(self, t: int) -> tuple[Snapshot, np.ndarray]:
        if t not in self._features:
            snap = snapshot(self.ds.seq, t)
            target = self.behaviour if self.behaviour is not None else self.ds.target_behaviour(
                self.run.config.task.target_behaviour)[1]
            rfm = rfm_features(self.ds.seq, snap, self.horizon / DAY, target)
            self._features[t] = (snap, np.concatenate([model_state(self.run, self.ds, snap).features(), rfm], 1))
        return self._features[t]

    def user_rates(self, t: int) -> tuple[Snapshot, np.ndarray]:
        """Each user's expected number of events in ``(t, t + h]``: a Poisson regression fitted at
        ``t - h`` on the events of ``(t - h, t]``."""
        s_fit, x_fit = self.features(t - self.horizon)
        y = count_between(self.ds.seq, t - self.horizon, t, behaviour_mask(self.ds, self.behaviour))[s_fit.rows]
        snap, x = self.features(t)
        if len(s_fit) == 0 or y.sum() == 0:
            return snap, np.zeros(len(snap))
        reg = make_pipeline(StandardScaler(), PoissonRegressor(alpha=1e-2, max_iter=1000))
        with threadpool_limits(1):
            reg.fit(x_fit, y)
            return snap, reg.predict(x)

    def item_distribution_sum(self, snap: Snapshot, weights: np.ndarray) -> np.ndarray:
        """(n_items + 1,) sum over users of ``weights[u] * p_u(item)`` (the model's next-item softmax)."""
        model = self.run.model.eval()
        arrays = EventArrays.from_sequences(self.ds.seq, self.run.config.model.time_buckets)
        beh = None if model.heads is None else (PAD if self.behaviour is None else self.behaviour)
        total = torch.zeros(self.ds.spec.n_items + 1, dtype=torch.float64)
        w = torch.from_numpy(np.asarray(weights, np.float32))
        with torch.inference_mode():
            for sel, batch in model_batches(self.ds.seq, arrays, snap, model.max_len, self.batch_size):
                probs = torch.softmax(model.score_all(batch, beh).float(), dim=1)  # (B, n_items + 1)
                total += (w[torch.from_numpy(sel)].unsqueeze(0) @ probs)[0].double()  # one matmul per batch
        return total.numpy()

    def expected(self, t: int) -> np.ndarray:
        """(S,) expected events per series in ``(t, t + h]``: returning users plus new users."""
        snap, rates = self.user_rates(t)
        per_item = self.item_distribution_sum(snap, rates)
        seq = self.ds.seq
        new = np.flatnonzero((seq.times[seq.offsets[:-1]] > t - self.horizon) & (seq.lengths > 0))
        new_users = series_counts(self.ds, self.series, t - self.horizon, t, self.behaviour, new)
        return self.series.aggregate(per_item) + new_users


def nb_dispersion(y: np.ndarray, mean: np.ndarray) -> float:
    """Method-of-moments NB2 dispersion alpha (Var = mu + alpha mu^2) of ``y`` around ``mean``."""
    denom = float((mean**2).sum())
    return max(0.0, float(((y - mean) ** 2 - mean).sum()) / denom) if denom > 0 else 0.0


def intervals(mean: np.ndarray, alpha: float, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Central ``level`` interval of a negative binomial (Poisson when alpha is 0) with ``mean``."""
    q = ((1 - level) / 2, (1 + level) / 2)
    mu = np.maximum(mean, 1e-12)
    if alpha <= 0:
        return stats.poisson.ppf(q[0], mu), stats.poisson.ppf(q[1], mu)
    n, p = 1 / alpha, 1 / (1 + alpha * mu)
    return stats.nbinom.ppf(q[0], n, p), stats.nbinom.ppf(q[1], n, p)


def period_history(ds: Dataset, series: Series, t: int, h: int, behaviour: int | None) -> np.ndarray:
    """(n, S) events per series in each of the ``n`` whole periods of length ``h`` between the data
    start and ``t`` (at least one), oldest first; the last row is ``(t - h, t]``."""
    start = data_span(ds.seq)[0]
    n = max(int((t - start) // h), 1)
    return np.stack([series_counts(ds, series, t - (j + 1) * h, t - j * h, behaviour) for j in range(n - 1, -1, -1)])


# Per-series forecasters of statsforecast (an optional dependency: ``pip install 'shopformer[forecast]'``).
# Croston's method (optimised smoothing) is the classical one for intermittent demand, i.e. item
# series that are mostly zero; AutoETS (exponential smoothing, model chosen by AICc) for the denser
# category series only: it costs ~10 ms a series, too much for tens of thousands of items.
STATSFORECAST = {"item": ("CrostonOptimized",), "category": ("CrostonOptimized", "AutoETS")}
STATSFORECAST_MISSING = ("statsforecast is not installed (pip install 'shopformer[forecast]'): "
                         "its baselines are left out")


def statsforecast_forecasts(history: np.ndarray, level: str) -> dict[str, np.ndarray]:
    """One-period-ahead forecasts of statsforecast's models fitted on each series' ``history``
    ((n, S), oldest first; ``period_history``), or {} when statsforecast is not installed. Series
    without any event forecast 0; one too short for a model (AutoETS needs a few points) falls back to
    its last period."""
    try:
        from statsforecast import models as sf
    except ImportError:
        return {}
    active = np.flatnonzero(history.sum(0) > 0)
    out: dict[str, np.ndarray] = {}
    for name in STATSFORECAST[level]:
        model, f = getattr(sf, name)(), np.zeros(history.shape[1])
        with np.errstate(all="ignore"):  # flat series: ETS's in-sample variance divides by zero, harmlessly
            for s in active:
                y = history[:, s]
                try:
                    f[s] = float(model.forecast(y=y, h=1)["mean"][0])
                except (ValueError, NotImplementedError):  # "tiny datasets": fewer points than parameters + 4
                    f[s] = y[-1]
        out[f"statsforecast {name}"] = np.maximum(np.nan_to_num(f), 0.0)
    return out


def baseline_forecasts(ds: Dataset, series: Series, t: int, h: int, behaviour: int | None,
                       ma_periods: int = 3, season: int = 7 * DAY) -> dict[str, np.ndarray]:
    """The analyst's forecasts for ``(t, t + h]``: last period, mean of the last ``ma_periods``
    periods (fewer when the data start later), mean of every period since the data start (the smoothest, which
    WAPE favours on sparse series), the same window one season earlier (when the data reach), and
    statsforecast's per-series models on the period history (when installed)."""
    history = period_history(ds, series, t, h, behaviour)
    out = {"naive last period": history[-1], f"moving average ({ma_periods} periods)": history[-ma_periods:].mean(0),
           "long-run mean": history.mean(0)}
    if season > h and t - season >= data_span(ds.seq)[0]:
        out["seasonal naive (7 d)"] = series_counts(ds, series, t - season, t - season + h, behaviour)
    return {**out, **statsforecast_forecasts(history, series.level)}


def naive_scale(history: np.ndarray) -> np.ndarray:
    """(S,) MASE denominators: each series' mean absolute change between consecutive periods of its
    ``history`` (``period_history``: the in-sample one-step naive error; 0 with a single period)."""
    return np.mean(np.abs(np.diff(history, axis=0)), axis=0) if len(history) > 1 else np.zeros(history.shape[1])


def error_metrics(y: np.ndarray, f: np.ndarray, scale: np.ndarray, groups: dict[str, np.ndarray]) -> dict:
    """WAPE and (pooled) MASE of forecast ``f`` per group of series."""
    out: dict = {}
    for name, mask in groups.items():
        yy, ff, sc = y[mask], f[mask], float(scale[mask].mean()) if mask.any() else 0.0
        out[name] = {"wape": float(np.abs(yy - ff).sum() / yy.sum()) if yy.sum() > 0 else float("nan"),
                     "mase": float(np.abs(yy - ff).mean() / sc) if sc > 0 else float("nan"),
                     "n_series": int(mask.sum())}
    return out


def series_groups(ds: Dataset, series: Series, t: int, behaviour: int | None, y: np.ndarray) -> dict[str, np.ndarray]:
    """all: series with volume before ``t`` or in the window; head: the top 20% of those by volume
    before ``t``; tail: the rest."""
    volume = series_counts(ds, series, int(ds.seq.times.min()) - 1, t, behaviour)
    active = (volume > 0) | (y > 0)
    active[PAD] = False
    cut = np.quantile(volume[active], 0.8) if active.any() else 0.0
    head = active & (volume > cut)
    return {"all": active, "head": head, "tail": active & ~head}


BLEND_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
AGGREGATE = "model aggregate (unblended)"


def choose_blend(y: np.ndarray, model: np.ndarray, baselines: dict[str, np.ndarray], active: np.ndarray
                 ) -> tuple[str | None, float]:
    """(baseline, w) whose blend ``(1 - w) model + w baseline`` had the lowest WAPE over the ``active``
    series of a *past* origin with actuals ``y`` (w = 0: the model alone, baseline None); ties keep the
    smaller w, so the model alone wins unless a blend is strictly better."""
    total = max(float(y[active].sum()), 1e-12)
    best: tuple[float, str | None, float] = (float(np.abs(y - model)[active].sum()) / total, None, 0.0)
    for name, b in baselines.items():
        for w in BLEND_WEIGHTS[1:]:
            wape = float(np.abs(y - ((1 - w) * model + w * b))[active].sum()) / total
            if wape < best[0]:
                best = (wape, name, w)
    return best[1], best[2]


def blend(model: np.ndarray, baselines: dict[str, np.ndarray], choice: tuple[str | None, float]) -> np.ndarray:
    name, w = choice
    return model if name is None or name not in baselines else (1 - w) * model + w * baselines[name]


def top_series(names: list[str], y: np.ndarray, mean: np.ndarray, lo: np.ndarray, hi: np.ndarray,
               n: int = 8) -> list[dict]:
    """The ``n`` series with the largest expected demand (index 0, padding, left out): actual and forecast."""
    order = np.argsort(-mean[1:], kind="stable")[:n] + 1
    return [{"series": str(names[i]), "actual": float(y[i]), "expected": float(mean[i]), "lo": float(lo[i]),
             "hi": float(hi[i])} for i in order]


def run_forecast(run: Run, ds: Dataset, horizon: int, level: str = "item", behaviour: str | None = None,
                 origins: int = 3, level_interval: float = 0.8) -> tuple[dict, dict[str, np.ndarray]]:
    """Evaluate ``origins`` consecutive forecasts ending at the last full horizon, then forecast the
    horizon after the data. Returns (metrics, the final forecast's columns)."""
    from shopformer.pipelines.applications.snapshot import check_compatible

    check_compatible(run, ds)
    if not 0 < level_interval < 1:
        raise ValueError(f"--interval must be between 0 and 1 (got {level_interval})")
    beh_name, beh = (ANY, None) if behaviour == ANY else ds.target_behaviour(
        behaviour or run.config.task.target_behaviour)
    series = Series.build(run, ds, level)
    fc = Forecaster(run, ds, horizon, beh, series)
    start, end = data_span(ds.seq)
    ts = [end - j * horizon for j in range(origins + 1, 0, -1)]  # the first only calibrates the dispersion
    if ts[0] - horizon <= start:
        raise ValueError(f"{ds.path}: {(end - start) / DAY:.1f} days of data hold fewer than {origins + 3} periods of "
                         f"{horizon / DAY:g} day(s) (history, fit, dispersion, {origins} test origin(s)); "
                         "use a shorter --horizon or fewer --origins")
    prev_mean = fc.expected(ts[0])
    prev_y = series_counts(ds, series, ts[0], ts[0] + horizon, beh)
    prev_base = baseline_forecasts(ds, series, ts[0], horizon, beh)
    prev_active = series_groups(ds, series, ts[0], beh, prev_y)["all"]
    per_origin: list[dict] = []
    for t in ts[1:]:
        alpha = nb_dispersion(prev_y[1:], prev_mean[1:])
        mean = fc.expected(t)
        lo, hi = intervals(mean, alpha, level_interval)
        y = series_counts(ds, series, t, t + horizon, beh)
        groups = series_groups(ds, series, t, beh, y)
        scale = naive_scale(period_history(ds, series, t, horizon, beh))
        base = baseline_forecasts(ds, series, t, horizon, beh)
        # the point forecast: the model's aggregate blended with the baseline that, blended so, did best
        # at the previous origin (whose actuals are known at t): never chosen on the window forecast
        choice = choose_blend(prev_y, prev_mean, {n: b for n, b in prev_base.items() if n in base}, prev_active)
        systems = {"model": blend(mean, base, choice), AGGREGATE: mean, **base, ZERO: np.zeros_like(mean)}
        act = groups["all"]
        per_origin.append({
            "origin": t, "alpha": alpha, "actual_total": float(y[act].sum()),
            "blend": {"baseline": choice[0], "weight": choice[1], "chosen_on_origin": t - horizon},
            "systems": {n: error_metrics(y, f, scale, groups) for n, f in systems.items()},
            "coverage": float(((y >= lo) & (y <= hi))[act].mean()) if act.any() else float("nan"),
            "coverage_all_series": float(((y >= lo) & (y <= hi))[1:].mean()),
            # for the report's forecast-vs-actual chart: totals over every series, and the top series
            "actual_total_all_series": float(y[1:].sum()),
            "predicted_totals": {n: float(f[1:].sum()) for n, f in systems.items()},
            "top_series": top_series(series.names, y, mean, lo, hi),
        })
        prev_mean, prev_y, prev_base, prev_active = mean, y, base, act
    mean = fc.expected(end)  # the forecast after the data, its dispersion from the last test origin
    lo, hi = intervals(mean, nb_dispersion(prev_y[1:], prev_mean[1:]), level_interval)
    base = baseline_forecasts(ds, series, end, horizon, beh)
    point = blend(mean, base, choose_blend(prev_y, prev_mean, {n: b for n, b in prev_base.items() if n in base},
                                           prev_active))
    final = {"series": np.asarray(series.names, dtype=object), "expected": mean, "point": point, "lo": lo, "hi": hi,
             "last_period": series_counts(ds, series, end - horizon, end, beh)}
    names = list(dict.fromkeys(n for o in per_origin for n in o["systems"]))
    summary = {n: {**{g: {m: float(np.nanmean([o["systems"][n][g][m] for o in per_origin if n in o["systems"]]))
                          for m in ("wape", "mase")} for g in ("all", "head", "tail")},
                   "origins": sum(n in o["systems"] for o in per_origin)} for n in names}
    # model WAPE / baseline WAPE on the origins that baseline forecasts (the seasonal one may miss early
    # ones); the best baseline is the one the model gains least on. "zero" is a reference, not a method.
    ratios = {}
    for n in summary:
        if n not in ("model", AGGREGATE, ZERO):
            on = [o for o in per_origin if n in o["systems"]]
            ratios[n] = float(np.mean([o["systems"]["model"]["all"]["wape"] for o in on])
                              / np.mean([o["systems"][n]["all"]["wape"] for o in on]))
    best = max(ratios, key=lambda n: ratios[n])
    metrics = {"level": level, "behaviour": beh_name, "horizon_seconds": horizon, "interval": level_interval,
               "origins": per_origin, "summary": summary, "best_baseline": best, "wape_ratios": ratios,
               "wape_ratio_to_best_baseline": ratios[best],
               "aggregate_wape_ratio_to_best_baseline": float(np.mean([o["systems"][AGGREGATE]["all"]["wape"]
                                                                       for o in per_origin if best in o["systems"]])
                                                              / np.mean([o["systems"][best]["all"]["wape"]
                                                                         for o in per_origin if best in o["systems"]])),
               "notes": [] if "statsforecast CrostonOptimized" in summary else [STATSFORECAST_MISSING],
               "coverage": float(np.mean([o["coverage"] for o in per_origin])), "forecast_origin": end}
    return metrics, final


def forecast_table(metrics: dict) -> str:
    """Markdown: WAPE / MASE (all, head, tail) per system, averaged over the test origins."""
    lines = [f"Demand forecast of {metrics['behaviour']} per {metrics['level']}, horizon "
             f"{metrics['horizon_seconds'] / 3600:g} h, {len(metrics['origins'])} origin(s); model "
             f"{metrics['interval']:.0%} interval coverage {metrics['coverage']:.3f}", "",
             "| system | WAPE | MASE | WAPE head | WAPE tail | origins |", "|---|---|---|---|---|---|"]
    for name, s in metrics["summary"].items():
        lines.append(f"| {name} | {s['all']['wape']:.4f} | {s['all']['mase']:.4f} | {s['head']['wape']:.4f} | "
                     f"{s['tail']['wape']:.4f} | {s['origins']} |")
    return "\n".join(lines)
