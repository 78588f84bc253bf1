"""Evaluating a multi-task run is read-only and follows the run's task; calibration is training's job."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import flat_numbers
from typer.testing import CliRunner

from shopformer.cli import app
from shopformer.config import Config

runner = CliRunner()


@pytest.fixture(scope="module")
def prepared(shop_log: Path) -> Path:
    return shop_log


SETS = ["model.dim=16", "model.layers=1", "model.heads=2", "model.max_len=12", "model.dropout=0.0",
        "model.emb_dropout=0.0", "task.kind=multi", "task.intent_horizon=3", "train.epochs=2", "train.batch_size=32",
        "train.threads=1", "split.kind=temporal", "split.valid_start=0.6", "split.test_start=0.8", "eval.bootstrap=0",
        "eval.ks=[5,10]"]


def small_cfg() -> Config:
    from shopformer.config import apply_overrides

    return apply_overrides(Config(), SETS)


@pytest.fixture(scope="module")
def multi_run(prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("mbrun") / "run"
    sets = [a for s in SETS for a in ("--set", s)]
    r = runner.invoke(app, ["train", str(prepared), "-o", str(out), "--quiet", *sets])
    assert r.exit_code == 0, r.output
    return out


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_evaluation_never_writes_into_the_model(prepared: Path) -> None:
    """Whatever calibration the heads hold is used as is: not refitted, not overwritten."""
    from shopformer.data.corpus import load_dataset
    from shopformer.models import build_model
    from shopformer.pipelines.multi_behaviour import configure, evaluate_models

    ds = load_dataset(prepared)
    cfg, target = configure(ds, small_cfg())
    torch.manual_seed(0)
    model = build_model(cfg.model, ds.spec, task=cfg.task, target_behaviour=target)
    heads = model.heads
    heads.intent_calibration.copy_(torch.tensor([0.5, -2.0]))
    offsets = torch.tensor([0.0, -0.3, 0.2, 0.7])
    heads.action_offsets.copy_(offsets)
    before = _state(model)
    first = evaluate_models(ds, cfg, {"sasrec": model}, target, None, 0, 200)
    assert _same_state(before, _state(model))
    second = evaluate_models(ds, cfg, {"sasrec": model}, target, None, 0, 200)
    assert _same_state(before, _state(model))
    assert json.dumps(first, sort_keys=True, default=float) == json.dumps(second, sort_keys=True, default=float)
    assert first["intent"]["sasrec"]["platt"] == pytest.approx([0.5, -2.0])
    assert first["next_action"]["sasrec"]["decision_offsets"] == pytest.approx(offsets.tolist())
    # baselines are still calibrated on validation inside evaluation (they are not saved)
    assert "decision_tau" in first["next_action"]["markov (previous behaviour)"]
    assert first["intent"]["history target rate"]["platt"] != [1.0, 0.0]


def test_training_stores_the_calibration_and_evaluation_reads_it(multi_run: Path) -> None:
    from shopformer.artifacts import load_run
    from shopformer.pipelines.multi_behaviour import evaluate_run

    saved = json.loads((multi_run / "metrics.json").read_text())
    run = load_run(multi_run / "model")
    heads = run.model.heads
    fitted = saved["calibration"]["sasrec"]
    assert heads.intent_calibration.tolist() == pytest.approx(fitted["platt"])
    assert heads.intent_calibration.tolist() != [1.0, 0.0] and bool(heads.action_offsets.ne(0).any()) == (
        fitted["decision_tau"] > 0)
    before = _state(run.model)
    again, _ = evaluate_run(run)
    twice, _ = evaluate_run(run)
    assert _same_state(before, _state(run.model))
    assert json.dumps(again, sort_keys=True, default=float) == json.dumps(twice, sort_keys=True, default=float)
    for part, keys in (("intent", ("roc_auc", "pr_auc", "ece", "platt")), ("next_action", ("accuracy", "macro_f1"))):
        for key in keys:
            assert again[part]["sasrec"][key] == pytest.approx(saved[part]["sasrec"][key]), (part, key)
    assert flat_numbers(again["next_item"][saved["target_behaviour"]]["sasrec"]) == pytest.approx(
        flat_numbers(saved["next_item"][saved["target_behaviour"]]["sasrec"]))


def test_cli_evaluate_uses_the_runs_protocol(multi_run: Path) -> None:
    r = runner.invoke(app, ["evaluate", str(multi_run)])
    assert r.exit_code == 0, r.output
    saved = json.loads((multi_run / "metrics.json").read_text())
    assert "next action" in r.output and "purchase intent" in r.output and "next item with behaviour" in r.output
    assert f"{saved['intent']['sasrec']['roc_auc']:.4f}" in r.output
    assert "markov" in r.output and "popularity" in r.output


@pytest.mark.parametrize("override", ["model.max_len=100", "model.dim=32", "task.kind=next-item"])
def test_cli_evaluate_rejects_overrides_of_the_trained_model(multi_run: Path, override: str) -> None:
    r = runner.invoke(app, ["evaluate", str(multi_run), "--set", override])
    assert r.exit_code == 2, r.output
    assert r.output.startswith("error:") and "Traceback" not in r.output
    assert f"{override.split('=')[0]} is fixed by the trained weights" in " ".join(r.output.split()), r.output


def test_cli_recommend_unknown_behaviour_is_one_line_exit_2(multi_run: Path) -> None:
    r = runner.invoke(app, ["recommend", str(multi_run), "--user", "u1", "--behaviour", "teleport"])
    assert r.exit_code == 2, r.output
    text = " ".join(r.output.split())  # the console wraps long lines at the terminal width
    assert r.output.startswith("error:") and "Traceback" not in r.output
    assert "unknown behaviour 'teleport'; known: look, keep, take" in text, r.output
