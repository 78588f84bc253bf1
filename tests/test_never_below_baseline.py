"""Repeat / explore measured apart, and a model never silently below a shop heuristic."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from shopformer.config import Config, EvalConfig
from shopformer.data.batches import EventArrays
from shopformer.data.ingest import IngestOptions
from shopformer.data.prepare import prepare
from shopformer.data.sequences import Sequences
from shopformer.data.split import EvalExamples
from shopformer.evaluation.baselines import Popularity
from shopformer.evaluation.ranking import evaluate
from shopformer.training.fit import FitResult, fit_warnings


def test_every_ranking_is_split_into_repeat_and_explore_targets() -> None:
    # user 0's target (item 2) is in its history, user 1's (item 5) is new to it
    seq = Sequences.from_lists([[1, 2, 3, 2], [1, 4, 5]], [[1] * 4, [1] * 3], None)
    ex = EvalExamples(np.array([0, 1]), np.array([3, 6]))
    arrays = EventArrays.from_sequences(seq, 8)
    counts = np.array([0, 5, 4, 3, 2, 1])  # popularity ranks item 2 second, item 5 fifth
    res = evaluate(Popularity(counts), seq, arrays, ex, 5, 10, EvalConfig(ks=(1, 5), bootstrap=0, exclude_seen=False))
    assert res.is_repeat.tolist() == [True, False]
    rep, exp = res.metrics["repeat"], res.metrics["explore"]
    assert rep["n"] == 1 and exp["n"] == 1 and rep["share"] + exp["share"] == pytest.approx(1.0)
    assert rep["hr@5"] == 1.0 and rep["hr@1"] == 0.0 and exp["hr@5"] == 1.0
    assert exp["mrr"] == pytest.approx(1 / 5) and rep["mrr"] == pytest.approx(1 / 2)


def test_fit_warnings_report_the_clock_and_a_saturated_validation() -> None:
    cfg = Config().override(train={"max_minutes": 1.0, "epochs": 60})
    cut = FitResult(history=[{"epoch": 1, "valid_ndcg@10": 0.3}], epochs=2, stopped_by="time_budget")
    (w,) = fit_warnings(cut, cfg)
    assert "wall-clock limit" in w and "2 of 60 epochs" in w
    saturated = FitResult(history=[{"epoch": 1, "valid_ndcg@10": 1.0}], epochs=1, stopped_by="early_stopping")
    (w,) = fit_warnings(saturated, cfg)
    assert "saturated" in w
    assert fit_warnings(FitResult(history=[{"epoch": 1, "valid_ndcg@10": 0.3}], epochs=3), cfg) == []


@pytest.fixture(scope="module")
def repeat_log(tmp_path_factory) -> Path:
    """Shoppers who view each of four items three times in turn: Markov is perfect, recent items strong."""
    rng = np.random.default_rng(0)
    lines = ["user_id,item_id,behaviour,timestamp"]
    for u in range(150):
        items = rng.choice(np.arange(1, 200), size=4, replace=False)
        for j in range(10):
            lines.append(f"u{u},{items[j // 3 % 4]},view,{1_600_000_000 + 60 * j}")
    raw = tmp_path_factory.mktemp("raw") / "repeat.csv"
    raw.write_text("\n".join(lines) + "\n")
    out = tmp_path_factory.mktemp("ds") / "repeat"
    prepare([raw], out, IngestOptions(now=2_000_000_000))
    return out


def test_a_baseline_that_beats_the_model_is_said_in_the_cli_report_and_json(repeat_log, tmp_path) -> None:
    from typer.testing import CliRunner

    from shopformer.cli import app

    run = tmp_path / "run"
    r = CliRunner().invoke(app, ["train", str(repeat_log), "-o", str(run), "--quiet", "--set", "train.epochs=1",
                                 "--set", "model.dim=8", "--set", "model.layers=1", "--set", "eval.bootstrap=0",
                                 "--set", "eval.exclude_seen=false", "--set", "train.blend=false"])
    assert r.exit_code == 0, r.output
    metrics = json.loads((run / "metrics.json").read_text())
    beaten = [w for w in metrics["warnings"] if "beats sasrec on validation ndcg@10" in w]
    assert beaten, metrics["warnings"]  # Markov is perfect on this log: one at least
    for w in beaten:  # each named baseline does score above the model on validation, and the CLI says so
        name = w.split("'")[1]
        assert metrics["valid_baselines"][name]["ndcg@10"] > metrics["valid"]["ndcg@10"], w
        assert name in r.output
    assert "## Warnings" in (run / "report.md").read_text()
    assert "warning:" in r.output
    # the test side is said too (reported, never used to choose): each line names a baseline above the model there
    on_test = [w for w in metrics["warnings"] if "beats sasrec on test ndcg@10" in w]
    assert on_test, metrics["warnings"]
    for w in on_test:
        assert metrics["test"][w.split("'")[1]]["ndcg@10"] > metrics["test"]["sasrec"]["ndcg@10"], w
    # the test table shows the repeat / explore split for every system
    assert {"repeat", "explore"} <= set(metrics["test"]["markov"])
    assert "NDCG@10 repeat" in (run / "report.md").read_text()


def test_a_baseline_that_wins_only_on_repeat_or_explore_targets_is_said_too() -> None:
    from shopformer.evaluation.report import baseline_warnings

    def row(overall: float, repeat: float, explore: float, n_repeat: int = 420, n_explore: int = 580) -> dict:
        return {"ndcg@10": overall, "repeat": {"n": n_repeat, "share": 0.42, "ndcg@10": repeat},
                "explore": {"n": n_explore, "share": 0.58, "ndcg@10": explore}}

    # the YOOCHOOSE case: the model wins overall, recent items win the repeats, co-occurrence the discoveries
    results = {"sasrec": row(0.41, 0.73, 0.17), "recent": row(0.34, 0.80, 0.00), "cooc": row(0.22, 0.28, 0.21),
               "popularity": row(0.05, 0.06, 0.04)}
    warnings = baseline_warnings(results, "sasrec", "ndcg@10", "validation")
    assert len(warnings) == 2, warnings
    repeat, explore = warnings
    assert repeat.startswith("baseline 'recent' beats sasrec on validation ndcg@10 on repeat targets (42% of them)")
    assert "0.8000 vs 0.7300" in repeat and "heuristic ranks better" in repeat
    assert explore.startswith("baseline 'cooc' beats sasrec on validation ndcg@10 on explore targets (58% of them)")
    # an overall loss is still said in its own words, once, beside the subset lines
    results["recent"]["ndcg@10"] = 0.5
    assert sum("better choice on this data" in w for w in baseline_warnings(results, "sasrec", "ndcg@10", "v")) == 1
    # a handful of repeat targets is noise, not a finding: below min_part the subset is not judged
    few = {"sasrec": row(0.41, 0.73, 0.17, n_repeat=20), "recent": row(0.34, 0.80, 0.00, n_repeat=20)}
    assert baseline_warnings(few, "sasrec", "ndcg@10", "validation") == []
    # a monitor that is not per example (catalogue coverage) is judged overall only: subsets lack it
    results["cooc"]["coverage@10"], results["sasrec"]["coverage@10"] = 0.9, 0.5
    (cov,) = baseline_warnings(results, "sasrec", "coverage@10", "validation")
    assert "'cooc' beats sasrec on validation coverage@10: 0.9000" in cov
    # rows without the split (e.g. the next-action table) are judged on the overall metric only
    assert baseline_warnings({"m": {"f1": 0.5}, "b": {"f1": 0.4}}, "m", "f1", "test") == []


def test_the_served_answer_is_judged_against_each_heuristic_on_test() -> None:
    from shopformer.evaluation.report import test_warnings

    served = "sasrec + markov (blend, alpha 0.05)"
    results = {"sasrec": {"ndcg@10": 0.06}, served: {"ndcg@10": 0.05, "ci95": {"ndcg@10": [0.045, 0.055]}},
               "sasrec (selected on validation, before refit)": {"ndcg@10": 0.07},
               "markov": {"ndcg@10": 0.052}, "markov (through validation)": {"ndcg@10": 0.058},
               "popularity": {"ndcg@10": 0.01}}
    heuristics = ["markov", "popularity", "markov (through validation)"]
    # the model's own rows (alone, before refit) are not heuristics; the blend's through-validation row is
    lines = test_warnings(results, served, heuristics, "ndcg@10")
    assert [w.split("'")[1] for w in lines] == ["markov", "markov (through validation)"]
    assert "inside the model's 95% CI" in lines[0] and "significantly" in lines[1]
    assert lines[0].startswith(f"baseline 'markov' beats {served} on test ndcg@10: 0.0520 vs 0.0500")
    # nothing to say when the served answer is not in the table (a behaviour the model has no head for)
    assert test_warnings(results, "bert4rec", heuristics, "ndcg@10") == []
    assert test_warnings(results, "sasrec", heuristics, "ndcg@10", "test next-item") == []
