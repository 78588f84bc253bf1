"""Hyper-parameter search with Optuna on the validation metric only, within a time budget.

Each trial samples a config (``suggest``), trains it with the usual ``fit`` (early stopping and
pruning on validation) and reports the best validation ``train.monitor``. The test split is never
evaluated, loaded into a batch or otherwise read here: picking hyper-parameters on test would
make the reported test numbers optimistic. Retrain the best config with ``shopformer train``.

Writes to ``out``: ``trials.jsonl`` (one line per trial), ``best_config.json`` (a full config,
loadable with ``--config``) and ``summary.json``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shopformer.config import Config
from shopformer.data.batches import EventArrays
from shopformer.data.corpus import load_dataset, make_split
from shopformer.data.split import make_windows
from shopformer.models import REGISTRY
from shopformer.pipelines.multi_behaviour import configure, train_multi_task
from shopformer.pipelines.next_item import train_next_item
from shopformer.training.fit import FitResult, Hook

MAX_TRIAL_MINUTES = 30.0


def suggest(trial: Any, base: Config, augment: bool = False) -> Config:
    """One point of the search space, as overrides of ``base`` (names are ``section.key``)."""
    dim = trial.suggest_categorical("model.dim", [32, 64, 128])
    values: dict[str, dict[str, Any]] = {
        "model": {
            "dim": dim,
            "heads": trial.suggest_categorical("model.heads", [1, 2, 4]),
            "layers": trial.suggest_int("model.layers", 1, 3),
            "dropout": trial.suggest_float("model.dropout", 0.1, 0.6),
            "emb_dropout": trial.suggest_float("model.emb_dropout", 0.1, 0.6),
        },
        "train": {
            "learning_rate": trial.suggest_float("train.learning_rate", 3e-4, 1e-2, log=True),
            "weight_decay": trial.suggest_float("train.weight_decay", 1e-6, 1e-1, log=True),
        },
        "loss": {"label_smoothing": trial.suggest_float("loss.label_smoothing", 0.0, 0.2)},
    }
    if augment:
        ops = ["crop", "reorder", "substitute"] + (["mask"] if REGISTRY[base.model.name].causal else [])
        values["augment"] = {op: trial.suggest_float(f"augment.{op}", 0.0, 0.5) for op in ops}
        values["augment"]["ratio"] = trial.suggest_float("augment.ratio", 0.1, 0.5)
        values["augment"]["contrastive_weight"] = trial.suggest_float("augment.contrastive_weight", 0.0, 0.3)
    return base.override(**values)


@dataclass
class TuneResult:
    best_value: float
    best_params: dict[str, Any]
    best_config: Config
    n_trials: int
    seconds: float


def tune(
    dataset: str | Path,
    base: Config,
    out_dir: str | Path,
    trials: int = 20,
    minutes: float = 60.0,
    seed: int = 0,
    augment: bool = False,
    echo: Any = print,
) -> TuneResult:
    """Run the search; ``minutes`` bounds the whole study (a trial never starts after it)."""
    try:
        import optuna
    except ImportError:
        raise RuntimeError("hyper-parameter search needs optuna: pip install 'shopformer[tune]'") from None

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ds = load_dataset(dataset)
    arrays = EventArrays.from_sequences(ds.seq, base.model.time_buckets)
    monitor = base.train.monitor
    # The same split and the same model builder as `shopformer train` for this task kind: a trial
    # trains exactly the model `train` would build for its config (task heads, [text] titles, ...).
    if base.task.kind == "next-item":
        split = make_split(ds, base)

        def train_trial(cfg: Config, report: Hook) -> FitResult:
            cfg = cfg.override(train={"refit": False})  # a refit never changes the validation score
            return train_next_item(ds, cfg, split, arrays, on_epoch=report,
                                   text_cache=out / "title_vectors.safetensors").fit
    else:
        resolved, target = configure(ds, base)
        train_end, valid_w, _ = make_windows(ds.seq, resolved)

        def train_trial(cfg: Config, report: Hook) -> FitResult:
            cfg, _ = configure(ds, cfg)
            return train_multi_task(ds, cfg, target, train_end, valid_w, arrays, None, False, on_epoch=report)[1]
    start = time.perf_counter()
    log_path = out / "trials.jsonl"
    log_path.write_text("")

    def objective(trial: optuna.Trial) -> float:
        left = minutes - (time.perf_counter() - start) / 60
        budget = min(left, base.train.max_minutes or MAX_TRIAL_MINUTES)
        cfg = suggest(trial, base, augment).override(train={"max_minutes": max(budget, 0.05)})

        def report(epoch: int, row: dict) -> None:
            if f"valid_{monitor}" in row:
                trial.report(row[f"valid_{monitor}"], epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at epoch {epoch}")

        res = train_trial(cfg, report)
        trial.set_user_attr("best_epoch", res.best_epoch)
        trial.set_user_attr("stopped_by", res.stopped_by)
        return res.best_score

    def record(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        row = {"trial": trial.number, "state": trial.state.name, f"valid_{monitor}": trial.value,
               "params": trial.params, "seconds": trial.duration.total_seconds() if trial.duration else None,
               **trial.user_attrs}
        with log_path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        echo(f"trial {trial.number}: {trial.state.name} valid {monitor}={trial.value}")

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2),
    )
    study.optimize(objective, n_trials=trials, timeout=minutes * 60, callbacks=[record])
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        raise RuntimeError("no trial completed within the budget; give more minutes")
    best = study.best_trial
    assert best.value is not None  # a completed trial has its value
    best_cfg = suggest(optuna.trial.FixedTrial(best.params), base, augment)
    (out / "best_config.json").write_text(best_cfg.to_json())
    result = TuneResult(float(best.value), dict(best.params), best_cfg, len(study.trials),
                        time.perf_counter() - start)
    summary = {"best_value": result.best_value, "monitor": f"valid_{monitor}", "best_params": result.best_params,
               "trials": result.n_trials, "completed": len(done), "seconds": round(result.seconds, 1),
               "dataset": str(dataset), "note": "validation split only; the test split was never evaluated"}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return result
