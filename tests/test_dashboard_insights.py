"""``shopformer insights``: the one file the dashboard's Trends / Items / churn panels read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from applications_support import tiny_run
from dashboard_support import world
from typer.testing import CliRunner

from shopformer.cli.app import app
from shopformer.data.corpus import load_dataset
from shopformer.data.ingest import IngestOptions
from shopformer.data.prepare import prepare
from shopformer.pipelines.insights import BACKTEST, PERIODS


def strict(text: str) -> dict:
    def refuse(name: str) -> None:
        raise ValueError(f"non-JSON number {name}")

    return json.loads(text, parse_constant=refuse)


def test_insights_file_holds_every_part_in_plain_json() -> None:
    data = strict(world().insights.read_text())
    assert data["format"] == 1 and data["model_version"] == world().versions[0]
    assert len(data["period_starts"]) == PERIODS + 1
    for level in ("trends_item", "trends_category"):
        part = data[level]
        assert all(r["growth"] > 0 for r in part["risers"]) and all(r["growth"] < 0 for r in part["fallers"])
        assert all(len(r["history"]) == PERIODS for r in part["risers"] + part["fallers"])
        assert "model" in part["summary"] and "last-period growth" in part["summary"]
    fc = data["forecast"]
    assert fc["behaviour"] and fc["items"] and 0 <= fc["coverage"] <= 1
    for row in fc["items"].values():
        assert len(row["history"]) == PERIODS and len(row["forecasts"]) == BACKTEST + 1
        assert [f[0] for f in row["forecasts"]] == list(range(PERIODS - BACKTEST, PERIODS + 1))
        assert all(0 <= f[2] <= f[3] and f[1] >= 0 for f in row["forecasts"])
    churn = data["churn"]
    assert set(churn["scores"]) <= set(world().users) and all(0 <= p <= 1 for p in churn["scores"].values())
    assert "model+rfm" in churn["systems"]


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "seq.txt").write_text("u1 i1 i2 i3 i4\nu2 i2 i3 i4 i5\nu3 i1 i3 i5 i2\n")
    ds = load_dataset(prepare([tmp_path / "seq.txt"], tmp_path / "ds", IngestOptions(format="sequences")).path)
    run = tiny_run(ds, tmp_path / "run", kind="next-item")
    runner = CliRunner()
    bad = runner.invoke(app, ["insights", str(run.path), "--horizon", "soon", "-o", str(tmp_path / "i.json")])
    assert bad.exit_code == 2 and "--horizon 'soon'" in bad.output
    no_time = runner.invoke(app, ["insights", str(run.path), "-o", str(tmp_path / "i.json")])
    assert no_time.exit_code == 2 and "timestamps" in no_time.output and "Traceback" not in no_time.output
    assert not (tmp_path / "i.json").exists()


@pytest.mark.parametrize("span_days,expected_h", [(9, 12), (30, 24), (400, 168)])
def test_auto_horizon_fits_the_span(span_days: int, expected_h: int, tmp_path: Path) -> None:
    from applications_support import small_dataset

    from shopformer.pipelines.insights import auto_horizon

    t0, day = 1_600_000_000, 86400
    users = [[(1 + (u + j) % 5, 1, t0 + int(span_days * day * j / 20) + u) for j in range(21)] for u in range(3)]
    assert auto_horizon(small_dataset(users, 6)) == expected_h * 3600
