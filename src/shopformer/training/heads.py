"""Finishing the multi-task heads after the shared encoder is fitted (on validation).

* ``refit_heads``: the next-action / intent MLPs retrained on the frozen encoder's features with
  ``fit`` (the one training loop), early-stopped on their validation loss. The encoder's best
  epoch comes early, when these small heads are still under-trained.

Item scoring needs no finishing: its repeat / explore gate is trained end to end with the encoder
(models/heads.py), and no inference weight is chosen afterwards. It only *starts* from the data:
``repeat_rates`` (training events whose item the user touched in the window before them, per
behaviour) is the gate's initial value (``MultiTaskHeads.set_repeat_prior``), as the pointer starts
from "most recent first"; a small log gives too few steps to learn even that level otherwise.

The test split is never read here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from shopformer.config import Config
from shopformer.data.batches import EventArrays, TaskBatch, TrainLoader, history_batches
from shopformer.data.schema import PAD
from shopformer.data.sequences import Sequences
from shopformer.data.split import EvalExamples, Window, intent_examples, window_examples
from shopformer.models.base import LossOutput, SequenceModel
from shopformer.training.fit import FitResult, fit

REFIT_BATCH = 2048  # feature rows per step of the head refit
REFIT_LR = 1e-3
REFIT_MIN_DELTA = 1e-5  # a validation loss must drop by more than this to count as better

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def repeat_rates(seq: Sequences, train_end: np.ndarray, n_behaviours: int, window: int) -> np.ndarray:
    """(n_behaviours + 1,) share of training events whose item occurs among the user's ``window``
    previous events: index 0 over every event, index b over the events of behaviour b (NaN where
    there are none). A user's first event, which has no history, is not counted."""
    n = len(seq.items)
    user = seq.user_row_of_event()
    pos = np.arange(n)
    order = np.lexsort((pos, seq.items, user))  # by user, then item, then time
    same = (user[order][1:] == user[order][:-1]) & (seq.items[order][1:] == seq.items[order][:-1])
    prev = np.full(n, -1, dtype=np.int64)  # the previous occurrence of the same item for the same user
    prev[order[1:][same]] = order[:-1][same]
    repeat = (prev >= 0) & (pos - prev <= window)
    counted = (pos < np.repeat(train_end, seq.lengths)) & (pos > seq.offsets[:-1][user])
    rates = np.full(n_behaviours + 1, np.nan)
    for b in range(n_behaviours + 1):
        sel = counted if b == PAD else counted & (seq.behaviours == b)
        if sel.any():
            rates[b] = repeat[sel].mean()
    return rates


class FeatureLoader:
    """Shuffled mini-batches ``(x[idx], y[idx])`` of fixed feature rows; one pass = one epoch.

    ``generator`` drives the shuffling (share one across loaders to continue its stream)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, generator: torch.Generator) -> None:
        self.x, self.y, self.batch_size, self.generator = x, y, batch_size, generator

    def __len__(self) -> int:
        return math.ceil(len(self.x) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for idx in torch.randperm(len(self.x), generator=self.generator).split(self.batch_size):
            yield self.x[idx], self.y[idx]


def refit_schedule(cfg: Config, max_epochs: int, patience: int) -> Config:
    """``cfg`` with the head refit's schedule: Adam at a constant 1e-3 (no weight decay, warm-up,
    clipping or time budget), validated every epoch on the loss."""
    return cfg.override(train={
        "epochs": max_epochs, "patience": patience, "learning_rate": REFIT_LR, "weight_decay": 0.0,
        "warmup_steps": 0, "schedule": "constant", "grad_clip": math.inf, "eval_every": 1, "max_minutes": None,
        "monitor": "loss",
    })


def refit_heads(model: SequenceModel, seq: Sequences, arrays: EventArrays, loader: TrainLoader,
                valid_w: Window, target: int, cfg: Config, max_epochs: int = 200,
                patience: int = 10) -> dict[str, FitResult]:
    """Retrain the next-action and intent MLPs on the frozen encoder's states, each with ``fit``.

    Training examples are every real training position of ``loader`` (a ``TrainLoader`` with
    intent labels; encoder in eval mode, no dropout); the validation loss is measured on the
    predictions at the validation window's events. The weights with the lowest validation loss
    are kept, the ones the heads started from included. Returns the ``fit`` result of each part.
    """
    heads = model.heads
    assert heads is not None
    parts = [p for p in ("action", "intent") if p in heads.parts]
    if not parts:
        return {}
    model.eval()
    feats, actions, intents = [], [], []
    with torch.no_grad():  # not inference_mode: these tensors feed an autograd graph below
        for b in loader:
            # a loader with labels yields training batches with targets and intent labels
            assert isinstance(b, TaskBatch) and b.intent_labels is not None and b.target_behaviours is not None
            real = b.targets != PAD
            feats.append(heads.summary(model.encode(b), b)[real])
            actions.append(b.target_behaviours[real])
            intents.append(b.intent_labels[real])
    x, act, inten = torch.cat(feats), torch.cat(actions), torch.cat(intents)
    horizon, max_len, bs = cfg.task.intent_horizon, cfg.model.max_len, cfg.eval.batch_size

    def last_states(ex: EvalExamples) -> torch.Tensor:
        with torch.no_grad():
            parts_ = [model.head_features(b) for _, b in history_batches(seq, arrays, ex, max_len, bs)]
        return torch.cat(parts_) if parts_ else torch.zeros(0, x.shape[1])

    schedule = refit_schedule(cfg, max_epochs, patience)
    gen = torch.Generator().manual_seed(cfg.train.seed)
    results: dict[str, FitResult] = {}
    for part in parts:
        loss_fn: LossFn
        if part == "action":
            ex, _ = window_examples(seq, valid_w)
            xv, yv = last_states(ex), torch.from_numpy(seq.behaviours[ex.pos].astype(np.int64))
            xt, yt = x, act
            loss_fn = lambda h, y: F.cross_entropy(heads.action_logits(h)[:, 1:], y - 1)  # noqa: E731
        else:
            ex, y_np, _ = intent_examples(seq, valid_w, target, horizon, cfg.task.intent_seconds)
            xv, yv = last_states(ex), torch.from_numpy(y_np).float()
            keep = inten >= 0
            xt, yt = x[keep], inten[keep]
            loss_fn = lambda h, y: F.binary_cross_entropy_with_logits(heads.intent_logit(h), y)  # noqa: E731
        if len(xt) == 0 or len(xv) == 0:
            continue
        results[part] = fit(getattr(heads, part), schedule, loader=FeatureLoader(xt, yt, REFIT_BATCH, gen),
                            objective=_objective(loss_fn, part), validate=_validation(loss_fn, xv, yv),
                            progress=False, score_start=True, min_delta=REFIT_MIN_DELTA)
    return results


def _objective(loss_fn: LossFn, part: str) -> Callable[[tuple[torch.Tensor, torch.Tensor]], LossOutput]:
    def objective(batch: tuple[torch.Tensor, torch.Tensor]) -> LossOutput:
        loss = loss_fn(*batch)
        return LossOutput(loss, {part: float(loss.detach())})

    return objective


def _validation(loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor) -> Callable[[], tuple[float, dict]]:
    """Minus the validation loss (``fit`` maximises), with the loss itself as the metric."""

    def validate() -> tuple[float, dict]:
        with torch.no_grad():
            loss = float(loss_fn(x, y))
        return -loss, {"loss": loss}

    return validate
