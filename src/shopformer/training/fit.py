"""The one training loop: AdamW, a learning-rate schedule and early stopping on validation only.

Every trainer goes through ``fit``: next item (with or without augmentation), multi-task,
pre-training, fine-tuning, the refit on training + validation, hyper-parameter trials and the
refit of the multi-task classifier heads on frozen features (training/heads.py). What varies is
passed in: the batches (``loader``, default: ``make_train_loader`` of ``cfg``), the loss of a
batch (``objective``, default: the model's own ``loss``) and the validation (``validate``,
default: full-ranking ``evaluate`` on ``valid`` by ``train.monitor``).

The test split is never touched here: the best epoch is chosen on validation, and its
weights are restored before returning.
"""

from __future__ import annotations

import copy
import csv
import math
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from shopformer.config import Config
from shopformer.data.batches import Batch, EventArrays, TrainLoader, make_train_loader
from shopformer.data.sequences import Sequences
from shopformer.data.split import EvalExamples
from shopformer.evaluation.ranking import evaluate, model_scorer
from shopformer.evaluation.report import plot_training_curve
from shopformer.models.base import LossOutput, SequenceModel
from shopformer.training import distributed, tracking
from shopformer.training.hardware import autocast, compiled_encoder, step_precision
from shopformer.training.objectives import make_sampler


def early_stopping(scores: list[float], patience: int, min_delta: float = 0.0,
                   warm: int = 0) -> tuple[bool, int]:
    """Pure rule on a history of validation scores (higher is better).

    A score is a new best only when it beats the best so far by more than ``min_delta`` (ties
    keep the earlier model). Returns (stop, best_index): stop once ``patience`` evaluations
    passed without a new best. The first ``warm`` scores were taken during the learning-rate
    warm-up and do not count towards patience: on a small log an epoch is a few steps, and a
    patience counted in epochs would otherwise run out before the learning rate is even up.
    """
    if not scores:
        return False, -1
    best = 0
    for i in range(1, len(scores)):
        if scores[i] > scores[best] + min_delta:
            best = i
    return len(scores) - 1 - max(best, warm - 1) >= patience, best


def lr_lambda(step: int, warmup: int, total: int, schedule: str) -> float:
    """Multiplier of the base learning rate: linear warm-up, then constant or cosine decay."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "cosine":
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0


def set_seed(seed: int) -> None:
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class FitResult:
    history: list[dict] = field(default_factory=list)
    best_epoch: int = -1
    best_score: float = float("-inf")
    best_metrics: dict = field(default_factory=dict)  # validation metrics of the restored (best) weights
    start_score: float | None = None  # validation score of the starting weights (``score_start``)
    epochs: int = 0
    train_seconds: float = 0.0
    tokens_per_second: float = 0.0
    stopped_by: str = "epochs"
    privacy: dict | None = None  # train.dp: the (epsilon, delta) spent (training/privacy.py)


Hook = Callable[[int, dict], None]
# A training objective maps a batch to a loss; the default is the model's own ``loss``.
Objective = Callable[[Any], LossOutput]
# A validation: () -> (score, higher is better; metrics logged as ``valid_<name>``).
Validate = Callable[[], tuple[float, dict]]


class WeightAverage:
    """Exponential moving average of the trainable parameters (``train.ema``), swapped into the
    model to validate it and to return it."""

    def __init__(self, params: list[torch.nn.Parameter], decay: float) -> None:
        self.params = params
        self.decay = decay
        self.avg = [p.detach().clone() for p in params]
        self.steps = 0

    @torch.no_grad()
    def update(self) -> None:
        self.steps += 1
        # warm start (TensorFlow's num_updates rule): early on, average over the few steps taken so
        # far, so the first validations are not dominated by the random initial weights
        decay = min(self.decay, (1 + self.steps) / (10 + self.steps))
        for avg, p in zip(self.avg, self.params, strict=True):
            avg.lerp_(p.detach(), 1.0 - decay)

    def swap(self) -> None:
        """Exchange the model's weights with the averaged ones (twice restores them); the
        optimiser's state is keyed by the parameter objects, which stay the same."""
        for i, p in enumerate(self.params):
            p.data, self.avg[i] = self.avg[i], p.data

    @contextmanager
    def swapped_in(self) -> Iterator[None]:
        self.swap()
        try:
            yield
        finally:
            self.swap()


class Loader(Protocol):
    """What ``fit`` trains on: re-iterable (one pass = one epoch) with a number of batches."""

    def __iter__(self) -> Iterator[Any]: ...

    def __len__(self) -> int: ...


def fit(
    model: torch.nn.Module,
    cfg: Config,
    seq: Sequences | None = None,
    train_end: np.ndarray | None = None,
    valid: EvalExamples | None = None,
    arrays: EventArrays | None = None,
    item_counts: np.ndarray | None = None,
    log_dir: str | Path | None = None,
    progress: bool = True,
    on_epoch: Hook | None = None,
    loader: Loader | None = None,
    objective: Objective | None = None,
    stop_after: int | None = None,
    *,
    validate: Validate | None = None,
    score_start: bool = False,
    min_delta: float = 0.0,
) -> FitResult:
    """Train the trainable parameters of ``model`` in place; on return it holds the
    best-on-validation weights.

    ``cfg.train`` is the schedule (epochs, learning rate, weight decay, warm-up and decay,
    gradient clipping (``inf``: none), patience, ``eval_every``, time budget, seed).
    Validation is ``validate`` (its metrics should include ``train.monitor``, the one logged and
    plotted) or, without it, full ranking on ``valid`` (a ``SequenceModel``); with
    neither (a refit, see ``pipelines.next_item.train_next_item``) training looks at no held-out data and
    keeps the last weights. ``score_start`` also validates the starting weights, which are kept
    when no epoch beats them by more than ``min_delta``. ``stop_after`` ends training after that
    many epochs of the configured schedule (the schedule itself still spans ``train.epochs``).
    ``seq``/``train_end`` are needed only for the default loader and validation.
    """
    tc = cfg.train
    set_seed(tc.seed)
    if tc.threads:
        torch.set_num_threads(tc.threads)
    if loader is None or (validate is None and valid is not None):
        if seq is None or train_end is None:
            raise ValueError("fit needs seq and train_end for its default loader and validation")
        arrays = arrays or EventArrays.from_sequences(seq, cfg.model.time_buckets)
        loader = loader if loader is not None else make_train_loader(cfg, seq, train_end, arrays)
        if validate is None and valid is not None:
            validate = _ranking_validation(model, cfg, seq, arrays, valid)  # type: ignore[arg-type]
    if len(loader) == 0:
        raise ValueError("no training windows: every user has fewer than 2 training events")
    # torchrun: join the process group, shard every global batch, start from rank 0's weights,
    # validate on rank 0 only (training/distributed.py); a plain run gets rank 0 of 1
    rank, world = distributed.setup(model)
    if world > 1:
        if not isinstance(loader, TrainLoader):
            raise ValueError(f"multi-process training needs the standard TrainLoader, not {type(loader).__name__}")
        loader = loader.shard(rank, world)
        distributed.broadcast_parameters(model)
        validate = distributed.on_main(validate) if validate is not None else None
    if rank != 0:  # only rank 0 writes logs and prints progress
        log_dir, progress = None, False
    else:  # experiment tracking (TensorBoard / MLflow), off unless configured: training/tracking.py
        on_epoch = tracking.epoch_hook(cfg, on_epoch, log_dir)
    device = next(model.parameters()).device if any(True for _ in model.parameters()) else torch.device("cpu")
    step_dtype = step_precision(tc.precision, device)
    if objective is None:
        sampler = make_sampler(cfg, model.spec.n_items, item_counts)  # type: ignore[union-attr, arg-type]

        def objective(batch: Batch) -> LossOutput:
            return model.loss(batch, cfg.loss, sampler)  # type: ignore[operator]
    params = [p for p in model.parameters() if p.requires_grad]
    # --- issue 12: differentially private training (train.dp; training/privacy.py) ---
    private = None
    if tc.dp is not None:
        from shopformer.training.privacy import make_private

        if world > 1:
            raise ValueError("train.dp: differentially private training runs in one process (no torchrun)")
        objective = private = make_private(objective, params, loader, tc.dp, tc.batch_size, tc.seed)
    # --- end of differential privacy ---
    opt = torch.optim.AdamW(params, lr=tc.learning_rate, weight_decay=tc.weight_decay)
    average = WeightAverage(params, tc.ema) if tc.ema else None
    total_steps = tc.epochs * len(loader)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_lambda(s, tc.warmup_steps, total_steps, tc.schedule)
    )
    result = FitResult()
    scores: list[float] = []
    best_state: dict | None = None
    log_path = Path(log_dir) / "train_log.csv" if log_dir else None
    start = time.perf_counter()
    train_time = 0.0
    tokens = 0
    warm_scores = 0  # validation scores taken before the warm-up ended (early_stopping's ``warm``)
    if score_start and validate is not None:
        model.eval()
        score, metrics = validate()
        scores.append(score)
        warm_scores += sched.last_epoch < tc.warmup_steps  # last_epoch: optimiser steps taken so far
        best_state = copy.deepcopy(model.state_dict())
        result.best_epoch, result.best_score, result.best_metrics = 0, score, metrics
        result.start_score = score
    # a live bar on a terminal; one plain line per epoch on stderr otherwise (logs, nohup, CI), so a
    # redirected run still shows its progress as it goes
    live = progress and sys.stderr.isatty()
    bar = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(), disable=not live,
    )
    with bar, compiled_encoder(model, tc.compile):
        task = bar.add_task("train", total=tc.epochs, info="")
        for epoch in range(1, tc.epochs + 1):
            model.train()
            t0 = time.perf_counter()
            # summed on the device and read once per epoch: no host synchronisation per step
            loss_acc = torch.zeros((), dtype=torch.float64, device=device)
            token_acc = torch.zeros((), dtype=torch.int64, device=device)
            n_batches = 0
            for batch in loader:
                with autocast(device, step_dtype):
                    out = objective(batch)
                opt.zero_grad(set_to_none=True)
                out.total.backward()
                distributed.average_gradients(params)
                if math.isfinite(tc.grad_clip):
                    torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
                opt.step()
                sched.step()
                if average is not None:
                    average.update()
                loss_acc += out.total.detach()
                n_batches += 1
                targets = getattr(batch, "targets", None)
                if targets is not None:
                    token_acc += (targets != 0).sum()
            tokens += int(token_acc)
            train_time += time.perf_counter() - t0
            row: dict = {"epoch": epoch, "loss": float(loss_acc) / max(n_batches, 1),
                         "lr": opt.param_groups[0]["lr"], "epoch_seconds": time.perf_counter() - t0}
            if validate is not None and (epoch % tc.eval_every == 0 or epoch in (1, tc.epochs)):
                model.eval()
                in_use: AbstractContextManager[None] = average.swapped_in() if average is not None else nullcontext()
                with in_use:  # validate (and keep) the averaged weights when train.ema is on
                    score, metrics = validate()
                    scores.append(score)
                    warm_scores += sched.last_epoch < tc.warmup_steps
                    stop, best = early_stopping(scores, tc.patience, min_delta, warm_scores)
                    if best == len(scores) - 1:
                        best_state = copy.deepcopy(model.state_dict())
                        result.best_epoch, result.best_score, result.best_metrics = epoch, score, metrics
                row.update({f"valid_{k}": v for k, v in metrics.items() if isinstance(v, float)})
            else:
                stop = False
            result.history.append(row)
            _append_csv(log_path, row)
            if on_epoch:
                on_epoch(epoch, row)
            info = f"loss {row['loss']:.4f}"
            if scores:
                info += f" {tc.monitor} {scores[-1]:.4f} (best {result.best_score:.4f}@{result.best_epoch})"
            bar.update(task, advance=1, info=info)
            if progress and not live:
                print(f"epoch {epoch}/{tc.epochs} {info} ({row['epoch_seconds']:.1f}s)", file=sys.stderr, flush=True)
            result.epochs = epoch
            if stop:
                result.stopped_by = "early_stopping"
                break
            if stop_after is not None and epoch >= stop_after:
                result.stopped_by = "stop_after"
                break
            if tc.max_minutes and (time.perf_counter() - start) / 60 >= tc.max_minutes:
                result.stopped_by = "time_budget"
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        if average is not None:  # no validation (a refit): return the averaged weights
            average.swap()
        if validate is None:
            result.best_epoch = result.epochs
    result.train_seconds = train_time
    result.tokens_per_second = distributed.sum_over_ranks(tokens) / max(train_time, 1e-9)
    result.privacy = private.report() if private is not None else None  # issue 12: (epsilon, delta) spent
    if log_dir:
        plot_training_curve(result.history, Path(log_dir) / "training_curve.png", tc.monitor)
    return result


def _ranking_validation(model: SequenceModel, cfg: Config, seq: Sequences, arrays: EventArrays,
                        valid: EvalExamples) -> Validate:
    """Full-ranking metrics of ``model`` on ``valid``; the score is ``train.monitor``."""

    def validate() -> tuple[float, dict]:
        res = evaluate(model_scorer(model), seq, arrays, valid, model.spec.n_items, cfg.model.max_len, cfg.eval,
                       bootstrap=False)
        return float(res.metrics[cfg.train.monitor]), res.metrics

    return validate


def _append_csv(path: Path | None, row: dict) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(row), extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow(row)




def fit_warnings(result: FitResult, cfg: Config) -> list[str]:
    """Plain-words problems of a training run: cut by the wall-clock safety net (results then depend
    on machine load), or a validation metric saturated from the first evaluation (nothing to select on)."""
    out = []
    if result.stopped_by == "time_budget":
        out.append(f"training was cut by the wall-clock limit train.max_minutes={cfg.train.max_minutes} after "
                   f"{result.epochs} of {cfg.train.epochs} epochs: the result depends on machine load; budget by "
                   "epochs (train.epochs, train.patience) for reproducible numbers")
    scores = [r[f"valid_{cfg.train.monitor}"] for r in result.history if f"valid_{cfg.train.monitor}" in r]
    if scores and scores[0] >= 0.99:
        out.append(f"validation {cfg.train.monitor} is {scores[0]:.3f} from the first evaluation: validation is "
                   "saturated (too few or trivial targets), so it cannot select a model; move the split points")
    if result.privacy is not None:  # issue 12: the privacy spent, in the report's plain words
        from shopformer.training.privacy import privacy_note

        out.append(privacy_note(result.privacy))
    return out
