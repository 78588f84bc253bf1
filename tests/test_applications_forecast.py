"""Demand forecast: counts, baselines and intervals by hand, no look-ahead, the protocol and the CLI."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from applications_support import prepare_demo, small_dataset, tiny_run
from typer.testing import CliRunner

from shopformer.cli import app
from shopformer.pipelines.applications.forecast import (
    AGGREGATE,
    ZERO,
    Forecaster,
    Series,
    baseline_forecasts,
    blend,
    choose_blend,
    error_metrics,
    intervals,
    nb_dispersion,
    parse_horizon,
    period_history,
    run_forecast,
    series_counts,
    statsforecast_forecasts,
)
from shopformer.pipelines.applications.snapshot import DAY

runner = CliRunner()
PV, BUY = 1, 2


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory, demo_taobao: Path) -> tuple:
    tmp = tmp_path_factory.mktemp("forecast")
    ds = prepare_demo(demo_taobao, tmp / "ds")
    return ds, tiny_run(ds, tmp / "run"), tmp


def test_horizon_parsing() -> None:
    assert [parse_horizon(x) for x in ("1d", "12h", "30min", "3600", "1.5d")] == [DAY, 43200, 1800, 3600, 129600]
    with pytest.raises(ValueError, match="positive duration"):
        parse_horizon("soon")


def test_counts_and_baselines_by_hand() -> None:
    # items 1, 2 in category 1; item 3 in category 2; days 0..9
    users = [[(1, BUY, 0 * DAY + 5), (1, BUY, 8 * DAY + 5), (2, PV, 8 * DAY + 9), (3, BUY, 9 * DAY)],
             [(1, BUY, 7 * DAY + 1), (3, BUY, 6 * DAY + 3), (2, BUY, 1 * DAY + 7)]]
    ds = small_dataset(users, 3, categories=[0, 1, 1, 2])
    items = Series(level="item", item_to_series=np.arange(4), n=4, names=["<pad>", "i1", "i2", "i3"])
    t = 8 * DAY
    assert series_counts(ds, items, t, t + DAY, BUY).tolist() == [0, 1, 0, 1]
    assert series_counts(ds, items, t, t + DAY, None).tolist() == [0, 1, 1, 1]
    b = baseline_forecasts(ds, items, t, DAY, BUY, ma_periods=3, season=7 * DAY)
    assert b["naive last period"].tolist() == [0, 1, 0, 0]  # (7d, 8d]: user 1's purchase of item 1
    assert b["moving average (3 periods)"].tolist() == pytest.approx([0, 1 / 3, 0, 1 / 3])  # (5d, 8d]
    assert b["seasonal naive (7 d)"].tolist() == [0, 0, 1, 0]  # (1d, 2d]: item 2
    assert b["long-run mean"].tolist() == pytest.approx([0, 1 / 7, 1 / 7, 1 / 7])  # (1d, 8d]
    cats = Series("category", np.array([0, 1, 1, 2]), 3, ["<pad>", "c1", "c2"])
    assert series_counts(ds, cats, t, t + DAY, None).tolist() == [0, 2, 1]
    m = error_metrics(np.array([0, 4.0, 0, 2]), np.array([0, 2.0, 1, 2]), np.array([1, 1, 1, 1.0]),
                      {"all": np.array([False, True, True, True])})
    assert m["all"]["wape"] == pytest.approx(3 / 6) and m["all"]["mase"] == pytest.approx(1.0)


def test_period_history_and_blend_choice_by_hand() -> None:
    users = [[(1, BUY, 0 * DAY + 5), (1, BUY, 2 * DAY + 5), (2, BUY, 2 * DAY + 9)]]
    ds = small_dataset(users, 2)
    items = Series(level="item", item_to_series=np.arange(3), n=3, names=["<pad>", "i1", "i2"])
    h = period_history(ds, items, 3 * DAY, DAY, BUY)
    assert h.tolist() == [[0, 0, 0], [0, 1, 1]]  # (1d, 2d], (2d, 3d]: the whole periods after the start (5 s)
    y, active = np.array([0, 4.0, 0.0]), np.array([False, True, True])
    model, base = np.array([0, 2.0, 2.0]), {"b": np.array([0, 4.0, 0.0]), "c": np.array([0, 1.0, 1.0])}
    assert choose_blend(y, model, base, active) == ("b", 1.0)  # the baseline alone was exact
    assert blend(model, base, ("b", 0.25)).tolist() == [0, 2.5, 1.5]
    assert choose_blend(y, base["b"], base, active) == (None, 0.0)  # a tie keeps the model alone
    assert blend(model, {"c": base["c"]}, ("b", 0.5)) is model  # the chosen baseline absent at this origin


def test_statsforecast_baselines() -> None:
    pytest.importorskip("statsforecast", reason="statsforecast not installed: pip install 'shopformer[forecast]'")
    hist = np.zeros((8, 4))
    hist[:, 1] = [0, 2, 0, 0, 3, 0, 0, 2]  # intermittent
    hist[:, 2] = [5, 6, 5, 7, 6, 5, 6, 6]  # smooth
    hist[-1, 3] = 1  # a single event, too short for a fit
    f = statsforecast_forecasts(hist, "category")
    assert set(f) == {"statsforecast CrostonOptimized", "statsforecast AutoETS"}
    for name, v in f.items():
        assert v[0] == 0 and (v >= 0).all(), name  # a series without events forecasts none
        assert 0.3 < v[1] < 2.5 and 4.5 < v[2] < 7, (name, v)
    assert set(statsforecast_forecasts(hist, "item")) == {"statsforecast CrostonOptimized"}


def test_dispersion_and_interval_coverage_on_simulated_counts() -> None:
    rng = np.random.default_rng(0)
    mu = rng.uniform(0.5, 20, 20000)
    alpha = 0.5
    y = rng.negative_binomial(1 / alpha, 1 / (1 + alpha * mu))
    assert nb_dispersion(y, mu) == pytest.approx(alpha, rel=0.1)
    assert nb_dispersion(rng.poisson(mu), mu) < 0.02
    lo, hi = intervals(mu, nb_dispersion(y, mu), 0.8)
    assert ((y >= lo) & (y <= hi)).mean() == pytest.approx(0.8, abs=0.08)  # discrete: at least nominal-ish
    plo, phi = intervals(mu, 0.0, 0.8)
    assert (phi - plo <= hi - lo).all()  # over-dispersion widens every interval


def test_expected_demand_adds_up_and_never_reads_the_window(demo: tuple) -> None:
    ds, run, _ = demo
    series = Series.build(run, ds, "item")
    t = int(ds.seq.times.max()) - 2 * DAY
    fc = Forecaster(run, ds, DAY, BUY, series)
    snap, rates = fc.user_rates(t)
    assert (rates >= 0).all() and len(rates) == len(snap)
    total = fc.item_distribution_sum(snap, rates)
    assert total.sum() == pytest.approx(rates.sum(), rel=1e-4)  # each user's next-item softmax sums to 1
    expected = fc.expected(t)
    later = ds.seq.times > t
    changed = replace(ds, seq=replace(ds.seq, items=np.where(later, 1, ds.seq.items).astype(np.int32),
                                      behaviours=np.where(later, BUY, ds.seq.behaviours).astype(np.int8)))
    np.testing.assert_allclose(Forecaster(run, changed, DAY, BUY, series).expected(t), expected, rtol=1e-5)


@pytest.mark.parametrize("level", ["item", "category"])
def test_forecast_protocol_on_the_demo(demo: tuple, level: str) -> None:
    ds, run, _ = demo
    metrics, final = run_forecast(run, ds, DAY, level, origins=2)
    assert [o["origin"] for o in metrics["origins"]] == [int(ds.seq.times.max()) - j * DAY for j in (2, 1)]
    assert set(metrics["summary"]) >= {"model", "naive last period", "moving average (3 periods)", "long-run mean"}
    assert metrics["summary"]["model"]["origins"] == 2
    assert metrics["summary"][ZERO]["all"]["wape"] == pytest.approx(1.0)  # the reference: no demand at all
    assert ZERO not in metrics["wape_ratios"] and metrics["best_baseline"] in metrics["wape_ratios"]
    assert AGGREGATE not in metrics["wape_ratios"] and AGGREGATE in metrics["summary"]
    for o in metrics["origins"]:  # the blend is chosen at the origin before, never on the window it forecasts
        assert o["blend"]["chosen_on_origin"] == o["origin"] - DAY and o["blend"]["weight"] in (0, .25, .5, .75, 1)
    assert metrics["wape_ratio_to_best_baseline"] == max(metrics["wape_ratios"].values())
    naive = metrics["summary"]["naive last period"]["all"]["wape"]  # forecasts every origin: plain ratio
    assert metrics["wape_ratios"]["naive last period"] == pytest.approx(metrics["summary"]["model"]["all"]["wape"]
                                                                          / naive)
    assert 0 <= metrics["coverage"] <= 1 and metrics["best_baseline"] != "model"
    assert metrics["behaviour"] == "buy"
    n = ds.spec.n_items + 1 if level == "item" else ds.spec.n_categories + 1
    assert len(final["expected"]) == n and (final["lo"] <= final["expected"] + 1).all()
    with pytest.raises(ValueError, match="fewer than"):
        run_forecast(run, ds, 3 * DAY, level)


def test_cli_forecast(demo: tuple) -> None:
    _, _, tmp = demo
    out, m = tmp / "fc.csv", tmp / "fc.json"
    r = runner.invoke(app, ["forecast", str(tmp / "run"), "--horizon", "1d", "--level", "category", "--origins", "1",
                            "-o", str(out), "--metrics", str(m)])
    assert r.exit_code == 0, r.output
    assert "WAPE" in r.output and "seasonal naive" in r.output
    frame = pl.read_csv(out)
    assert frame.columns == ["category", "point", "expected", "lo", "hi", "last_period"]
    assert json.loads(m.read_text())["level"] == "category"
    r = runner.invoke(app, ["forecast", str(tmp / "run"), "--level", "brand"])
    assert r.exit_code == 2 and "--level 'brand'" in r.output, r.output
