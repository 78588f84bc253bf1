"""Churn: counts and features by hand, no look-ahead, the temporal protocol, the CLI and its errors."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from applications_support import COLUMNS, prepare_demo, tiny_run, write_activity_log
from typer.testing import CliRunner

from shopformer.cli import app
from shopformer.data.corpus import load_dataset
from shopformer.data.ingest import IngestOptions
from shopformer.data.prepare import prepare
from shopformer.data.sequences import Sequences
from shopformer.pipelines.applications.churn import (
    fit_churn_model,
    leakage_warnings,
    model_train_end,
    run_churn,
    user_folds,
)
from shopformer.pipelines.applications.snapshot import (
    DAY,
    count_between,
    history_ends,
    model_state,
    rfm_features,
    snapshot,
)

runner = CliRunner()


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory, demo_taobao: Path) -> tuple:
    tmp = tmp_path_factory.mktemp("churn_demo")
    ds = prepare_demo(demo_taobao, tmp / "ds")
    return ds, tiny_run(ds, tmp / "run"), tmp


@pytest.fixture(scope="module")
def activity(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    tmp = tmp_path_factory.mktemp("churn_activity")
    write_activity_log(tmp / "log.csv")
    ds = load_dataset(prepare([tmp / "log.csv"], tmp / "ds", IngestOptions(columns=COLUMNS)).path)
    return ds, tiny_run(ds, tmp / "run"), tmp


def test_counts_ends_and_rfm_by_hand() -> None:
    # user 0: events at day 0, 1 (buy = 2), 3; user 1: day 2 (buy), 5; user 2: day 4 only
    s = Sequences.from_lists([[1, 2, 3], [4, 5], [6]], [[1, 2, 1], [2, 1], [1]],
                             [[0, DAY, 3 * DAY], [2 * DAY, 5 * DAY], [4 * DAY]])
    t = int(3.5 * DAY)
    assert history_ends(s, t).tolist() == [3, 4, 5]  # user 2 has no event yet: end == start
    assert count_between(s, 2 * DAY, 5 * DAY).tolist() == [1, 1, 1]  # (2, 5] days
    snap = snapshot(s, t)
    assert snap.rows.tolist() == [0, 1]
    f = rfm_features(s, snap, 1.0, target=2)
    np.testing.assert_allclose(np.expm1(f[:, 0]), [0.5, 1.5])  # days since the last event
    np.testing.assert_allclose(np.expm1(f[:, 1]), [3, 1])  # events
    np.testing.assert_allclose(np.expm1(f[:, 2]), [1, 0])  # events in the last day
    np.testing.assert_allclose(np.expm1(f[:, 4]), [1, 1])  # target events
    np.testing.assert_allclose(np.expm1(f[:, 5]), [2.5, 1.5])  # days since the last target event
    # a user without a target event never reads the previous user's purchase
    s2 = Sequences.from_lists([[1], [2]], [[2], [1]], [[0], [DAY]])
    f2 = rfm_features(s2, snapshot(s2, 2 * DAY), 1.0, target=2)
    np.testing.assert_allclose(np.expm1(f2[1, 5]), 1.0 + 1.0)  # tenure (1 day) + the period, not 2 days
    assert snapshot(s, t, active_days=1.0).rows.tolist() == [0]  # user 1's last event is 1.5 days old


def test_features_never_read_after_the_cutoff(demo: tuple) -> None:
    ds, run, _ = demo
    t = int(np.quantile(ds.seq.times, 0.6))
    later = ds.seq.times > t
    rng = np.random.default_rng(0)
    items = np.where(later, rng.integers(1, ds.spec.n_items + 1, len(later)), ds.seq.items).astype(np.int32)
    behs = np.where(later, 1, ds.seq.behaviours).astype(np.int8)
    changed = replace(ds, seq=replace(ds.seq, items=items, behaviours=behs))
    a, b = snapshot(ds.seq, t), snapshot(changed.seq, t)
    assert np.array_equal(a.rows, b.rows) and np.array_equal(a.ends, b.ends)
    np.testing.assert_array_equal(rfm_features(ds.seq, a, 1, 4), rfm_features(changed.seq, b, 1, 4))
    sa, sb = model_state(run, ds, a), model_state(run, changed, b)
    np.testing.assert_allclose(sa.features(), sb.features(), atol=1e-5)
    assert sa.action is not None and sa.intent is not None  # a multi run adds its heads' outputs
    assert sa.features().shape == (len(a), 16 + ds.spec.n_behaviours + 1)


def test_batched_states_match_one_user_at_a_time(demo: tuple) -> None:
    ds, run, _ = demo
    snap = snapshot(ds.seq, int(np.quantile(ds.seq.times, 0.7)))
    full = model_state(run, ds, snap, batch_size=64).vector
    for i in (0, 17, len(snap) - 1):
        one = replace(snap, rows=snap.rows[i:i + 1], ends=snap.ends[i:i + 1])
        np.testing.assert_allclose(model_state(run, ds, one).vector[0], full[i], atol=1e-4)


def test_churn_finds_the_activity_signal_on_a_later_cutoff(activity: tuple) -> None:
    ds, run, _ = activity
    res = run_churn(run, ds, days=1.0)
    m = res.metrics
    assert m["t2"] - m["t1"] == DAY and m["t2"] + DAY <= ds.seq.times.max()
    for name in ("model+rfm", "rfm_logistic"):
        s = m["systems"][name]
        assert s["roc_auc"] > 0.75, (name, s["roc_auc"])  # recency / frequency tell who left
        assert s["ece"] < 0.15 and 0 < s["mean_prob"] < 1
    assert m["n_test"] == len(snapshot(ds.seq, m["t2"]))
    assert set(res.scores.columns) >= {"user_id", "churn_probability", "rfm_churn_probability"}
    assert res.scores["churn_probability"].is_between(0, 1).all()
    assert len(res.scores) == ds.seq.n_users  # every user has history at the end of the data
    # the tiny run's training ends at the 0.5 quantile of event times, before t1: no leakage warning
    assert not any("know the future" in w for w in res.warnings)
    late = replace(run, config=run.config.override(split={"valid_start": 0.99}))
    assert "know the future" in leakage_warnings(late, ds, m["t1"])[0]
    loo = replace(run, config=run.config.override(split={"kind": "loo"}))
    assert "'loo' split" in leakage_warnings(loo, ds, m["t1"])[0]


def test_fit_pools_clean_cutoffs_and_keeps_users_in_one_fold(activity: tuple) -> None:
    ds, run, _ = activity
    m = run_churn(run, ds, days=1.0).metrics
    cuts = m["fit_cutoffs"]
    assert len(cuts) >= 2 and cuts[0] == m["t1"] and all(a - b == DAY for a, b in zip(cuts, cuts[1:], strict=False))
    assert min(cuts) >= model_train_end(run, ds)  # no label window the encoder was trained on
    assert m["n_fit"] == sum(len(snapshot(ds.seq, c)) for c in cuts)
    assert 0.75 < m["systems"]["rfm_logistic"]["validation_roc_auc"] <= 1
    one = run_churn(run, ds, days=1.0, fit_cutoffs=1).metrics
    assert one["fit_cutoffs"] == [one["t1"]] and one["n_fit"] == len(snapshot(ds.seq, one["t1"]))
    y, groups = np.tile([0, 1], 50), np.repeat(np.arange(25), 4)
    folds = user_folds(y, groups, 5, 0)
    assert sorted(np.concatenate([te for _, te in folds]).tolist()) == list(range(100))
    for train, test in folds:
        assert not set(groups[train]) & set(groups[test]) and set(y[test]) == {0, 1}


def test_target_only_churn_counts_purchases_only(activity: tuple) -> None:
    ds, run, _ = activity
    anyev = run_churn(run, ds, days=1.0)
    buys = run_churn(run, ds, days=1.0, target_only=True)
    assert buys.metrics["churn_of"] == "buy"
    assert buys.metrics["systems"]["rfm_logistic"]["positive_rate"] > anyev.metrics["systems"]["rfm_logistic"][
        "positive_rate"]


def test_fit_refuses_one_class_and_cutoffs_past_the_data(activity: tuple) -> None:
    ds, run, _ = activity
    with pytest.raises(ValueError, match="all 0"):
        fit_churn_model(np.ones((10, 2)), np.zeros(10, np.int64))
    with pytest.raises(ValueError, match="needs at least"):
        run_churn(run, ds, days=5.0)
    with pytest.raises(ValueError, match="less than"):
        run_churn(run, ds, days=1.0, cutoff=float(ds.seq.times.max()))


def test_cli_churn_writes_scores_and_metrics(activity: tuple, demo: tuple) -> None:
    ds, _, tmp = activity
    out, metrics = tmp / "scores.parquet", tmp / "churn.json"
    r = runner.invoke(app, ["churn", str(tmp / "run"), "--days", "1", "-o", str(out), "--metrics", str(metrics)])
    assert r.exit_code == 0, r.output
    assert "rfm_logistic" in r.output and "ROC-AUC" in r.output
    frame = pl.read_parquet(out)
    assert frame["user_id"].n_unique() == ds.seq.n_users
    assert json.loads(metrics.read_text())["systems"]["model+rfm"]["n"] > 0
    r = runner.invoke(app, ["churn", str(tmp / "run"), "-o", str(tmp / "scores.xlsx")])
    assert r.exit_code == 2 and r.output.startswith("error:") and ".parquet or .csv" in r.output, r.output
    # the demo data set has other item ids than the run: refused in one line
    r = runner.invoke(app, ["churn", str(tmp / "run"), str(demo[0].path)])
    assert r.exit_code == 2 and "vocabulary differs" in r.output, r.output
