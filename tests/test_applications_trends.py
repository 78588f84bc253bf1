"""Trends: growth and precision@K by hand, the protocol on the demo, the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from applications_support import prepare_demo, tiny_run
from typer.testing import CliRunner

from shopformer.cli import app
from shopformer.pipelines.applications.snapshot import DAY
from shopformer.pipelines.applications.trends import growth_scores, log_growth, precision_at_k, run_trends

runner = CliRunner()


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory, demo_taobao: Path) -> tuple:
    tmp = tmp_path_factory.mktemp("trends")
    ds = prepare_demo(demo_taobao, tmp / "ds")
    return ds, tiny_run(ds, tmp / "run"), tmp


def test_growth_and_precision_by_hand() -> None:
    assert log_growth(np.array([3.0, 0.0]), np.array([1.0, 1.0])).tolist() == pytest.approx([np.log(2), np.log(0.5)])
    actual = np.array([5.0, 4.0, 3.0, 2.0, 1.0])
    assert precision_at_k(np.array([10, 9, 0, 0, 0.0]), actual, 2) == 1.0
    assert precision_at_k(np.array([0, 9, 10, 0, 0.0]), actual, 2) == 0.5
    assert precision_at_k(np.array([0, 0, 0, 9, 10.0]), actual, 2) == 0.0
    s = growth_scores(actual, actual, 2)
    assert s == {"spearman": pytest.approx(1.0), "precision_risers": 1.0, "precision_fallers": 1.0}
    assert growth_scores(-actual, actual, 2)["spearman"] == pytest.approx(-1.0)


@pytest.mark.parametrize("level", ["item", "category"])
def test_trends_protocol_on_the_demo(demo: tuple, level: str) -> None:
    ds, run, _ = demo
    metrics, final = run_trends(run, ds, DAY, level, origins=2, k=10, min_volume=3)
    assert set(metrics["summary"]) == {"model", "last-period growth", "momentum (3 periods)", "moving-average level"}
    gains = [metrics["summary"]["model"]["spearman"] - s["spearman"] for n, s in metrics["summary"].items()
             if n != "model"]
    assert metrics["spearman_gain_vs_best_baseline"] == pytest.approx(min(gains))
    for o in metrics["origins"]:
        assert o["n_series"] > 0 and 1 <= o["k"] <= 10
        for s in o["systems"].values():
            assert -1 <= s["spearman"] <= 1 and 0 <= s["precision_risers"] <= 1
    n = ds.spec.n_items if level == "item" else ds.spec.n_categories
    assert len(final["series"]) == n
    assert (np.diff(final["predicted_growth"]) <= 1e-12).all()  # ranked, risers first
    with pytest.raises(ValueError, match="fewer than"):
        run_trends(run, ds, 2 * DAY, level)


def test_cli_trends(demo: tuple) -> None:
    _, _, tmp = demo
    out = tmp / "trends.parquet"
    r = runner.invoke(app, ["trends", str(tmp / "run"), "--level", "category", "--origins", "1", "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "Spearman" in r.output and "rising next period:" in r.output
    assert pl.read_parquet(out).columns == ["category", "last_period", "predicted_growth"]
    r = runner.invoke(app, ["trends", str(tmp / "run"), "--horizon", "0d"])
    assert r.exit_code == 2 and "positive duration" in r.output, r.output
