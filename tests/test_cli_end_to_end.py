"""A new user's path through the CLI on the bundled Taobao slice: prepare -> train -> evaluate -> recommend."""

import json

import pytest
from conftest import blend_row
from typer.testing import CliRunner

from shopformer.cli import app

runner = CliRunner()
TINY = ["--set", "model.dim=16", "--set", "model.layers=1", "--set", "model.max_len=20", "--set", "train.epochs=2",
        "--set", "eval.bootstrap=50", "--set", "eval.exclude_seen=false", "--quiet"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, demo_taobao):
    tmp = tmp_path_factory.mktemp("cli")
    columns = "user_id,item_id,category_id,event_type,timestamp"
    r = runner.invoke(app, ["prepare", str(demo_taobao), "--columns", columns, "-o", str(tmp / "ds")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["train", str(tmp / "ds"), "-o", str(tmp / "run"), *TINY])
    assert r.exit_code == 0, r.output
    return tmp


def test_train_writes_a_complete_run(trained) -> None:
    run = trained / "run"
    for name in ("model/model.safetensors", "model/config.json", "model/vocab.json", "model/metrics.json",
                 "model/manifest.json", "report.md", "metrics_at_k.png", "train_log.csv", "training_curve.png"):
        assert (run / name).exists(), name
    metrics = json.loads((run / "metrics.json").read_text())
    systems = {"sasrec", "popularity", "markov", "weighted recent items", "co-occurrence", "category popularity"}
    chosen = metrics["blend"]["chosen"]  # the default rule blends (docs/defaults.md): a row when a blend won
    if chosen is not None:
        systems.add(blend_row(chosen))
        systems |= {f"{name} (through validation)" for name in chosen["weights"]}  # the served counts
    assert set(metrics["test"]) == systems
    assert "full ranking" in metrics["protocol"]


def test_evaluate_reproduces_the_saved_test_metrics(trained) -> None:
    r = runner.invoke(app, ["evaluate", str(trained / "run")])
    assert r.exit_code == 0, r.output
    saved = json.loads((trained / "run" / "metrics.json").read_text())["test"]["sasrec"]
    assert f"{saved['hr@10']:.4f}" in r.output


def test_evaluate_rejects_model_overrides_and_accepts_evaluation_ones(trained) -> None:
    r = runner.invoke(app, ["evaluate", str(trained / "run"), "--set", "model.max_len=100"])
    assert r.exit_code == 2 and r.output.startswith("error:"), r.output
    assert "model.max_len is fixed by the trained weights" in " ".join(r.output.split())
    r = runner.invoke(app, ["evaluate", str(trained / "run"), "--set", "eval.ks=[5]"])
    assert r.exit_code == 0 and "HR@5" in r.output and "HR@10" not in r.output, r.output


def test_refit_trains_again_on_validation_events_for_the_chosen_epochs(trained) -> None:
    out = trained / "refit"
    r = runner.invoke(app, ["train", str(trained / "ds"), "-o", str(out), *TINY, "--set", "train.refit=true"])
    assert r.exit_code == 0, r.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["refit"]["epochs"] == metrics["fit"]["best_epoch"] and metrics["refit"]["stopped_by"] == "stop_after"
    assert "train.refit" in metrics["protocol"]
    assert (out / "refit" / "train_log.csv").exists()
    plain = json.loads((trained / "run" / "metrics.json").read_text())
    assert metrics["valid"] == plain["valid"], "the selection run is the same model as without refit"
    # one run gives both rows: the published protocol's (selected on validation, no refit) is the plain run's
    before = metrics["test"]["sasrec (selected on validation, before refit)"]
    assert before["ndcg@10"] == plain["test"]["sasrec"]["ndcg@10"] and before["n"] == plain["test"]["sasrec"]["n"]
    # the baselines learn from the validation events too: Markov's test numbers change
    assert metrics["test"]["markov"] != plain["test"]["markov"]
    r = runner.invoke(app, ["evaluate", str(out)])
    assert r.exit_code == 0 and f"{metrics['test']['sasrec']['hr@10']:.4f}" in r.output, r.output


def test_recommend_for_user_and_history(trained) -> None:
    r = runner.invoke(app, ["recommend", str(trained / "run"), "--user", "1", "-k", "3"])
    assert r.exit_code == 0, r.output
    assert len([ln for ln in r.output.splitlines() if ln.strip()[:1].isdigit()]) == 3
    r = runner.invoke(app, ["recommend", str(trained / "run"), "--history", "2268318,not-an-item", "-k", "2"])
    assert r.exit_code == 0, r.output
    assert "unknown item" in r.output


def test_recommend_errors_are_clear(trained) -> None:
    r = runner.invoke(app, ["recommend", str(trained / "run"), "--user", "no-such-user"])
    assert r.exit_code == 2 and "unknown user" in r.output
    r = runner.invoke(app, ["recommend", str(trained / "run")])
    assert r.exit_code == 2 and "exactly one of" in r.output
    r = runner.invoke(app, ["recommend", str(trained / "missing")])
    assert r.exit_code == 2


def test_train_rejects_unknown_model_and_bad_override(trained) -> None:
    r = runner.invoke(app, ["train", str(trained / "ds"), "-o", str(trained / "x"), "--model", "nope"])
    assert r.exit_code == 2 and "registered" in r.output
    r = runner.invoke(app, ["train", str(trained / "ds"), "-o", str(trained / "x"), "--set", "train.lr=1"])
    assert r.exit_code == 2 and "train.lr" in r.output


def test_train_multi_task_from_the_cli(trained) -> None:
    r = runner.invoke(app, ["train", str(trained / "ds"), "-o", str(trained / "multi"), "--task", "multi",
                            "--set", "split.kind=temporal", "--set", "split.valid_start=0.8",
                            "--set", "split.test_start=0.9", *TINY])
    assert r.exit_code == 0, r.output
    assert (trained / "multi").exists()
    # likely purchases vs likely views, plus the next-action and intent heads
    user = ["--user", "1", "-k", "3"]
    buy = runner.invoke(app, ["recommend", str(trained / "multi"), *user, "--behaviour", "buy"])
    view = runner.invoke(app, ["recommend", str(trained / "multi"), *user, "--behaviour", "pv"])
    assert buy.exit_code == 0 and view.exit_code == 0, buy.output + view.output
    assert buy.output.splitlines()[:3] != view.output.splitlines()[:3]
    assert "next action: " in buy.output and "purchase intent: P(buy within" in buy.output
    r = runner.invoke(app, ["recommend", str(trained / "multi"), *user, "--behaviour", "teleport"])
    assert r.exit_code == 2 and "unknown behaviour 'teleport'" in r.output
    # evaluate follows the run's task: the multi-behaviour protocol, not the next-item table
    r = runner.invoke(app, ["evaluate", str(trained / "multi")])
    assert r.exit_code == 0 and "next action" in r.output and "purchase intent" in r.output, r.output
    r = runner.invoke(app, ["train", str(trained / "ds"), "-o", str(trained / "x2"), "--task", "multi",
                            "--target-behaviour", "no-such-behaviour", "--set", "split.kind=temporal",
                            "--set", "split.valid_start=0.8", "--set", "split.test_start=0.9", *TINY])
    assert r.exit_code == 2 and "no-such-behaviour" in r.output


def test_blend_forms_bench_measures_the_blend_the_run_chose(trained, tmp_path, monkeypatch) -> None:
    """bench/blend_forms.py on a saved run: its "served" form re-chooses exactly the run's blend (same grid,
    same validation examples) and every form writes its test figures."""
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "bench"))
    import blend_forms

    out = tmp_path / "forms.jsonl"
    blend_forms.main([str(trained / "run"), "--forms", "z,served,prob,gate", "--out", str(out)])
    line = json.loads(out.read_text())
    chosen = json.loads((trained / "run" / "metrics.json").read_text())["blend"]["chosen"]
    served = line["served"]["chosen"]
    assert (served is None) == (chosen is None)
    if chosen is not None:
        assert {k: served[k] for k in ("baseline", "weights")} == {k: chosen[k] for k in ("baseline", "weights")}
        assert set(line["served"]["test"]) == {"ndcg@10", "hr@10"}
    assert all(set(line[form]["test"]) == {"ndcg@10", "hr@10"} for form in ("z", "prob", "gate"))


def test_blend_choice_bench_reproduces_the_run_choice(trained, tmp_path, monkeypatch) -> None:
    """bench/blend_choice.py on a saved run: its "argmax" rule is the product's choice (the run's own blend), and
    the oracle is the best test figure of every blend it ranked, the rules' choices among them."""
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "bench"))
    import blend_choice

    out = tmp_path / "choice.jsonl"
    blend_choice.main([str(trained / "run"), "--out", str(out)])
    line = json.loads(out.read_text())
    chosen = json.loads((trained / "run" / "metrics.json").read_text())["blend"]["chosen"]
    expected = ("model @ 0" if chosen is None else
                f"{chosen['baseline']} @ " + " / ".join(f"{w:g}" for w in chosen["weights"].values()))
    assert line["rules"]["argmax"]["blend"] == expected
    table = line["table"]
    assert all(set(v) == {"valid", "test"} for v in table.values())
    assert {rule["blend"] for rule in line["rules"].values()} <= set(table)
    best_test = max(v["test"]["ndcg@10"] for v in table.values())
    assert line["rules"]["oracle"]["test"]["ndcg@10"] == best_test
    singles = {k.split(" @ ")[0] for k in table if " + " not in k and k != "model @ 0"}
    assert {"markov", "co-occurrence"} <= singles  # every blendable baseline at every weight, at least
    assert all(f"{name} @ {a:g}" in table for name in singles for a in blend_choice.ALPHAS[1:])
    assert set(line["targets"]) == {"valid", "test"}
    assert line["targets"]["test"]["mean_history"] > line["targets"]["valid"]["mean_history"]
