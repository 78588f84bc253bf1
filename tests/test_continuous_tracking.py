"""Per-version reports (plots, atomic switch) and experiment tracking (TensorBoard, MLflow file store)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from continuous_support import small_retrain
from typer.testing import CliRunner

from shopformer.cli.app import app
from shopformer.config import Config
from shopformer.pipelines.version_report import write_version_report
from shopformer.training import tracking
from shopformer.training.tracking import TrackingConfig, epoch_hook, flatten

pytest_plugins = ["continuous_support"]  # the fixtures logs, base_run, registry


def _scalars(tb_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_retrain_tracks_params_epochs_and_artifacts_and_writes_its_report(registry: Path, logs: Path,
                                                                             tmp_path: Path) -> None:
    pytest.importorskip("mlflow")
    cfg = TrackingConfig(("tensorboard", "mlflow"), tmp_path / "tracking", experiment="test")
    out = small_retrain(registry, logs, tracking=cfg)
    # TensorBoard: one run, the loss of every epoch at steps 1..n, validation metrics, final gate metrics
    (tb_run,) = (tmp_path / "tracking" / "tensorboard").iterdir()
    scalars = _scalars(tb_run)
    epochs = out.manifest["fit"]["epochs"]
    assert [s for s, _ in scalars["loss"]] == list(range(1, epochs + 1))
    assert "valid_ndcg@10" in scalars and "final/gate.ndcg@10" in scalars
    # MLflow file store: params (flattened config), per-epoch metrics, the version's files as artifacts
    (exp,) = [p for p in (tmp_path / "tracking" / "mlruns").iterdir() if p.name not in ("0", ".trash")]
    (run,) = [p for p in exp.iterdir() if p.is_dir()]
    assert (run / "params" / "config.model.dim").read_text() == "32"
    assert len((run / "metrics" / "loss").read_text().splitlines()) == epochs
    artifacts = {p.name for p in (run / "artifacts").rglob("*")}
    assert {"version.json", "report.md", "drift.png", "gate.png", "validation.png", "train_log.csv"} <= artifacts
    # the run directory and the registry hold no tracking files (format unchanged)
    assert not list(registry.rglob("*tfevents*")) and not list(registry.rglob("mlruns"))
    # the version's report: a symlink to a complete folder, every version listed
    report = registry / "versions" / out.version / "report"
    assert report.is_symlink() and (report / "report.md").exists()
    text = (report / "report.md").read_text()
    assert "| v0001 | import |" in text and f"| {out.version} | retrain | {out.status} |" in text
    history = json.loads((report / "history.json").read_text())
    assert history[-1]["gate"]["passed"] == out.manifest["gate"]["passed"]
    # score drift per version: the candidate's top-1 scores vs its parent's on the same gate-slice histories
    shift, drift = out.manifest["gate"]["score_shift"], out.manifest["drift"]
    assert shift["examples"] == out.manifest["gate"]["examples"] and shift["candidate_mean"] != shift["current_mean"]
    assert drift["score_psi"] == shift["psi"] > 0 and 0 < drift["score_js"] == shift["js"] < 1
    assert history[-1]["drift"]["score_psi"] == drift["score_psi"] and "| score PSI | score JS |" in text
    assert f"| {drift['score_psi']:.4f} | {drift['score_js']:.4f} |" in text


def test_version_report_is_replaced_atomically_and_by_the_cli(registry: Path, tmp_path: Path) -> None:
    first = write_version_report(registry, "v0001")
    target = first.resolve()
    res = CliRunner().invoke(app, ["models", "report", str(registry), "v0001"])
    assert res.exit_code == 0, res.output
    assert first.resolve() != target and not target.exists()  # switched to a new folder, the old one removed
    vdir = registry / "versions" / "v0001"
    assert [p.name for p in vdir.iterdir() if p.name.startswith(".report")] == [first.resolve().name]
    assert {p.name for p in first.iterdir()} == {"report.md", "history.json", "drift.png", "validation.png",
                                                 "gate.png"}
    res = CliRunner().invoke(app, ["models", "report", str(registry), "v0009"])
    assert res.exit_code == 2 and "no version 'v0009'" in res.output


def test_tracking_from_the_environment_without_a_session(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(tracking.ENV_TRACK, "tensorboard")
    monkeypatch.setenv(tracking.ENV_DIR, str(tmp_path))
    token = tracking._ACTIVE.set(None)
    try:
        seen: list[int] = []
        hook = epoch_hook(Config(), lambda epoch, row: seen.append(epoch), tmp_path / "run")
        assert hook is not None
        for epoch in (1, 2):
            hook(epoch, {"epoch": epoch, "loss": 1.0 / epoch, "valid_ndcg@10": 0.1 * epoch})
        active = tracking._ACTIVE.get()
        assert active is not None
        active.close()
    finally:
        tracking._ACTIVE.reset(token)
    assert seen == [1, 2]  # the caller's own hook still runs
    (tb_run,) = (tmp_path / "tensorboard").iterdir()
    assert _scalars(tb_run)["loss"] == [(1, 1.0), (2, 0.5)]


def test_tracking_off_and_bad_backends() -> None:
    assert epoch_hook(Config(), None, None) is None  # no SHOPFORMER_TRACK: nothing changes in fit
    with pytest.raises(ValueError, match="tracking backend 'wandb'"):
        TrackingConfig(("wandb",))
    assert TrackingConfig.from_env({"SHOPFORMER_TRACK": "TensorBoard, mlflow"}).backends == ("tensorboard", "mlflow")
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": None}) == {"a.b": 1, "a.c": "[1, 2]", "d": "null"}
