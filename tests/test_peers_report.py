"""bench/peers.py's report: time to RecBole's best validation NDCG@10 (wall and CPU), memory ratio, targets.
No benchmark is run here: the two stages' outputs are synthetic."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def peers():
    sys.path.insert(0, str(BENCH))
    try:
        import peers

        yield peers
    finally:
        sys.path.remove(str(BENCH))


def stage(curve: list[tuple[float, float, float]], rss: float) -> dict:
    return {"curve": [{"epoch": i + 1, "wall_s": w, "cpu_s": c, "valid_ndcg@10": v} for i, (w, c, v) in
                      enumerate(curve)], "peak_rss_mb": rss}


def test_time_to_is_the_first_validation_at_or_above(peers) -> None:
    curve = stage([(10, 5, 0.01), (20, 9, 0.03), (30, 14, 0.02), (40, 18, 0.05)], 1)["curve"]
    assert peers.time_to(curve, 0.03) == 20 and peers.time_to(curve, 0.03, "cpu_s") == 9
    assert peers.time_to(curve, 0.06) is None
    assert peers.ratio(None, 3.0) is None and peers.ratio(1.0, 4.0) == 0.25


def test_report_compares_both_systems(peers, tmp_path: Path) -> None:
    rb = stage([(100, 80, 0.02), (200, 160, 0.04), (300, 240, 0.039)], 2000.0)
    rb.update(valid_scores=[0.02, 0.04, 0.039], test={"HR@10": 0.06, "NDCG@10": 0.03, "HR@20": 0.09,
                                                      "NDCG@20": 0.04}, fit_wall_s=300.0, epochs_run=3,
              best_epoch=2, stopped_by="time_budget", data_prep_s=30.0, sec_per_epoch=95.0, torch_threads=1,
              load={}, dataset={}, command="recbole_run.py")
    sf = stage([(15, 12, 0.03), (30, 24, 0.045)], 700.0)
    sf.update(test={"hr@10": 0.07, "ndcg@10": 0.035, "hr@20": 0.1, "ndcg@20": 0.045, "mrr": 0.03},
              test_ci95={"hr@10": [0.06, 0.08], "ndcg@10": [0.03, 0.04]}, fit_wall_s=30.0, epochs_run=2,
              best_epoch=2, stopped_by="epochs", prep_s=3.0, train_wall_s=20.0, torch_threads=1,
              **{"best_valid_ndcg@10": 0.045}, load={}, dataset={}, command="peers.py --stage shopformer")
    png = tmp_path / "peers.png"
    out = peers.report(rb, sf, {"command": ".venv/bin/python bench/peers.py"}, png)
    assert out["recbole_best_valid_ndcg@10"] == 0.04
    assert out["time_to_recbole_best_s"] == {"recbole": 200, "shopformer": 30}
    assert out["time_ratio_shopformer_over_recbole"] == 0.15
    assert out["cpu_time_ratio_shopformer_over_recbole"] == 0.15
    assert out["rss_ratio_shopformer_over_recbole"] == 0.35
    assert out["targets"] == {"time_ratio<=0.2": True, "cpu_time_ratio<=0.2": True, "rss_ratio<=0.5": True}
    assert out["test_at_equal_wall"]["recbole"]["ndcg@10"] == 0.03
    assert png.is_file() and png.stat().st_size > 0
