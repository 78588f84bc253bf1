"""Optuna search: validation only (the test split is never read), time budget, outputs."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

pytest.importorskip("optuna", reason="optuna not installed: pip install 'shopformer[tune]'")

import shopformer.evaluation.ranking as evaluate_mod  # noqa: E402
import shopformer.pipelines.tune as tune_mod  # noqa: E402
import shopformer.training.fit as train_mod  # noqa: E402
from shopformer.config import Config, load_config  # noqa: E402
from shopformer.data.ingest import IngestOptions  # noqa: E402
from shopformer.data.prepare import prepare  # noqa: E402
from shopformer.data.split import EvalExamples, Split  # noqa: E402
from shopformer.pipelines.tune import tune  # noqa: E402


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    rng = np.random.default_rng(0)
    lines = [" ".join(map(str, [u, *(1 + (rng.integers(0, 30) + np.arange(8)) % 30)])) for u in range(1, 41)]
    raw = tmp_path_factory.mktemp("raw") / "toy.txt"
    raw.write_text("\n".join(lines) + "\n")
    out = tmp_path_factory.mktemp("ds") / "toy"
    prepare([raw], out, IngestOptions(format="sequences"))
    return out


BASE = Config().override(
    model={"max_len": 8}, train={"epochs": 2, "batch_size": 16, "patience": 2}, eval={"bootstrap": 0}
)


def test_tune_never_reads_the_test_split(dataset, tmp_path, monkeypatch) -> None:
    real_split = tune_mod.make_split
    poison = EvalExamples(np.array([10**9]), np.array([10**9]))  # any use of it would raise IndexError
    valids = []

    def split_without_test(ds, cfg, target_behaviour=None) -> Split:
        s = real_split(ds, cfg, target_behaviour)
        valids.append(s.valid)
        return Split(s.train_end, s.valid, poison, s.excluded)

    evaluated = []
    real_eval = evaluate_mod.evaluate

    def spy(score_fn, seq, arrays, examples, *args, **kwargs):
        evaluated.append(examples)
        return real_eval(score_fn, seq, arrays, examples, *args, **kwargs)

    monkeypatch.setattr(tune_mod, "make_split", split_without_test)
    monkeypatch.setattr(train_mod, "evaluate", spy)
    res = tune(dataset, BASE, tmp_path, trials=2, minutes=5, seed=0, echo=lambda *_: None)
    assert res.n_trials == 2 and evaluated
    assert all(e is valids[0] for e in evaluated), "only the validation split may be evaluated"

    best = load_config(tmp_path / "best_config.json")
    assert best.model.dim == res.best_params["model.dim"]
    assert best.train.learning_rate == pytest.approx(res.best_params["train.learning_rate"])
    rows = [json.loads(x) for x in (tmp_path / "trials.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["state"] == "COMPLETE" for r in rows)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["best_value"] == pytest.approx(max(r["valid_ndcg@10"] for r in rows))


def test_time_budget_bounds_trials_and_the_study(dataset, tmp_path) -> None:
    endless = BASE.override(train={"epochs": 100_000, "patience": 100_000})  # only the budget can stop it
    t0 = time.perf_counter()
    res = tune(dataset, endless, tmp_path, trials=50, minutes=0.05, echo=lambda *_: None)
    assert time.perf_counter() - t0 < 30, "a trial must be cut at the study's remaining budget"
    assert res.n_trials <= 2, "no trial may start once the budget is spent"
    rows = [json.loads(x) for x in (tmp_path / "trials.jsonl").read_text().splitlines()]
    assert rows[0]["stopped_by"] == "time_budget"


def test_trials_are_reproducible(dataset, tmp_path) -> None:
    a = tune(dataset, BASE, tmp_path / "a", trials=2, minutes=5, seed=3, echo=lambda *_: None)
    b = tune(dataset, BASE, tmp_path / "b", trials=2, minutes=5, seed=3, echo=lambda *_: None)
    assert a.best_params == b.best_params and a.best_value == pytest.approx(b.best_value)


def test_augmentation_search_space(dataset, tmp_path) -> None:
    res = tune(dataset, BASE, tmp_path, trials=1, minutes=5, augment=True, echo=lambda *_: None)
    assert {"augment.crop", "augment.mask", "augment.contrastive_weight"} <= set(res.best_params)
    assert res.best_config.augment.crop == pytest.approx(res.best_params["augment.crop"])


def test_command_reports_bad_input_without_a_traceback(dataset, tmp_path) -> None:
    import typer
    from typer.testing import CliRunner

    from shopformer.cli.tune import tune_command

    app = typer.Typer()
    app.command("tune")(tune_command)
    app.command("noop")(lambda: None)
    res = CliRunner().invoke(app, ["tune", str(tmp_path / "missing"), "--trials", "1"])
    assert res.exit_code == 2 and "missing events.parquet" in res.output
    res = CliRunner().invoke(app, ["tune", str(dataset), "-o", str(tmp_path / "t"), "--set", "train.lr=1"])
    assert res.exit_code == 2 and "train.lr" in res.output


def _model_shape(model) -> tuple:
    """What a trial must share with `shopformer train`: architecture, task heads, item table kind."""
    heads = None if model.heads is None else (type(model.heads).__name__, tuple(model.heads.parts))
    return type(model).__name__, heads, type(model.item_emb).__name__


def _spy_fits(monkeypatch, module) -> list:
    seen: list = []
    real = module.fit

    def spy(model, *args, **kwargs):
        seen.append(_model_shape(model))
        return real(model, *args, **kwargs)

    monkeypatch.setattr(module, "fit", spy)
    return seen


def test_tune_trains_exactly_what_train_builds_titles_and_task_heads(tmp_path, monkeypatch) -> None:
    """Regression: tune used to build a plain next-item model, without the [text] titles or the task
    heads that `shopformer train` builds from the same config."""
    import shopformer.models.text as text_mod
    import shopformer.pipelines.multi_behaviour as mb
    import shopformer.pipelines.next_item as ni

    def fake_encoder(texts: list[str]) -> np.ndarray:  # deterministic unit vectors, no encoder needed
        rng = np.random.default_rng([sum(map(ord, t)) for t in texts])
        v = rng.normal(size=(len(texts), 8)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    monkeypatch.setattr(text_mod, "encode_texts", fake_encoder)
    rng = np.random.default_rng(0)
    lines = ["user_id,item_id,behaviour,timestamp"]
    for u in range(60):
        for j in range(12):
            behaviour = "buy" if j % 4 == 3 else "view"
            lines.append(f"u{u},{int(rng.integers(1, 25))},{behaviour},{1_600_000_000 + 3600 * (u + 5 * j)}")
    raw = tmp_path / "log.csv"
    raw.write_text("\n".join(lines) + "\n")
    prepare([raw], tmp_path / "ds", IngestOptions(now=2_000_000_000))
    titles = tmp_path / "titles.tsv"
    titles.write_text("item_id\ttitle\n" + "".join(f"{i}\tproduct {i % 5}\n" for i in range(1, 25)))

    for module, base in (
        (ni, BASE.override(text={"titles": str(titles)})),
        (mb, BASE.override(task={"kind": "multi"}, split={"kind": "temporal", "valid_start": 0.7,
                                                            "test_start": 0.85, "min_targets": 1})),
    ):
        seen = _spy_fits(monkeypatch, module)
        if module is ni:
            ni.run_experiment(tmp_path / "ds", base, tmp_path / "train_ni", progress=False)
        else:
            mb.run_multibehaviour(tmp_path / "ds", base, tmp_path / "train_mb", progress=False)
        trained = seen[0]
        seen.clear()
        tune(tmp_path / "ds", base, tmp_path / f"tune_{module.__name__}", trials=1, minutes=5, echo=lambda *_: None)
        assert seen and seen[0] == trained, (seen, trained)
    assert trained[1] is not None  # the multi-task run really has heads
