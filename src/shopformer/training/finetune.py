"""Self-supervised pre-training, then fine-tuning for a target (next item or next purchase).

    pre = pretrain(model, cfg, seq, split.train_end, split.valid)              # all behaviours
    res = finetune(model, cfg, seq, split.train_end, split.valid, target_behaviour=buy, mode="lora")
    save_run(dir, res.model, ...)                                              # LoRA already merged

Training from scratch on the target (the baseline to beat) is ``finetune`` of a freshly built model
with ``mode="full"``: same objective, windows and schedule, no pre-training.

Pre-training objectives: ``next-item`` (causal models: every event predicts the next one,
whatever its behaviour), ``masked`` (BERT4Rec: cloze over the window), ``contrastive``
(InfoNCE between two augmented views only, no item labels; see ``data/augment.py``).

Fine-tuning modes, all through ``train.fit`` with early stopping on the validation split:

* ``full``   every parameter trains;
* ``frozen`` the pre-trained model is frozen and a new residual head ``h + W h + b`` (W = 0 at
  the start, so training starts from the pre-trained scores) maps its states to the target;
* ``lora``   rank-r adapters on the attention projections (``models/lora.py``); merged into
  plain ``nn.Linear`` weights when training ends, so the result saves and loads as the base model.

The fine-tuning target: with ``target_behaviour`` (e.g. the id of "buy") a position is trained
only when its next event has that behaviour, all other events stay as context; windows
without any such target are skipped (``make_train_loader(target_behaviour=...)``). Without it the
target is the next item. Bidirectional models mask only target-type events (``BERT4Rec.corrupt``
with ``eligible``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn as nn

from shopformer.config import Config, LossConfig
from shopformer.data.batches import Batch, EventArrays, make_train_loader
from shopformer.data.schema import PAD
from shopformer.data.sequences import Sequences
from shopformer.data.split import EvalExamples
from shopformer.evaluation.ranking import evaluate, model_scorer
from shopformer.models import attention_models, model_class
from shopformer.models.base import LossOutput, SequenceModel
from shopformer.models.bert4rec import full_window
from shopformer.models.lora import apply_lora, count_parameters, mark_only_lora_trainable, merge_lora
from shopformer.models.losses import NegativeSampler
from shopformer.training.fit import FitResult, fit
from shopformer.training.objectives import (
    augment_hook,
    contrastive_loss,
    make_sampler,
    training_objective,
    zero_loss,
)

Mode = Literal["full", "frozen", "lora"]
PretrainObjective = Literal["auto", "next-item", "masked", "contrastive"]
MODES = ("full", "frozen", "lora")


# ---- configuration checks (before any training) ------------------------------------------


def check_finetune(cfg: Config, mode: str, target_behaviour: int | None = None) -> None:
    """Reject incompatible options by name, before anything is built or trained."""
    if mode not in MODES:
        raise ValueError(f"unknown fine-tuning mode {mode!r}; use one of {', '.join(MODES)}")
    cls = model_class(cfg.model.name)
    if mode == "lora" and not cls.has_attention:
        raise ValueError(
            f"mode='lora' adapts attention projections; {cfg.model.name!r} has no attention layers "
            f"(use mode='full' or 'frozen', or one of: {attention_models()})"
        )
    if target_behaviour is not None and cfg.augment.mask:
        raise ValueError("augment.mask cannot be combined with a target_behaviour (masked targets lose their type)")


def resolve_pretrain_objective(model: SequenceModel, objective: str) -> str:
    if objective == "auto":
        return "next-item" if model.causal else "masked"
    if objective == "next-item" and not model.causal:
        raise ValueError(f"{model.name} is bidirectional: pre-train it with objective='masked'")
    if objective == "masked" and model.causal:
        raise ValueError(f"{model.name} is causal: pre-train it with objective='next-item' (or 'contrastive')")
    if objective not in ("next-item", "masked", "contrastive"):
        raise ValueError(f"unknown pre-training objective {objective!r}")
    return objective


# ---- the new head of the frozen mode ------------------------------------------------------


class ResidualHead(nn.Module):
    """h -> h + W h + b with W, b = 0 at the start (the pre-trained scores, unchanged)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, dim)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.proj(h)


class WithHead(nn.Module):
    """A (frozen) sequence model whose hidden states go through a new head before scoring.

    Quacks like a ``SequenceModel`` for ``fit``/``evaluate``. It is not in the model registry,
    so it cannot be saved with ``save_run``; keep ``base`` and ``head`` together instead.
    """

    def __init__(self, base: SequenceModel) -> None:
        super().__init__()
        self.base = base
        self.head = ResidualHead(base.cfg.dim)
        self.cfg, self.spec, self.name = base.cfg, base.spec, base.name
        self.causal, self.mask_id, self.max_len = base.causal, base.mask_id, base.max_len

    def encode(self, batch: Batch) -> torch.Tensor:
        return self.head(self.base.encode(batch))

    def last_hidden(self, batch: Batch) -> torch.Tensor:
        return self.head(self.base.last_hidden(batch))

    def output_embeddings(self) -> torch.Tensor:
        return self.base.output_embeddings()

    def score_all(self, batch: Batch) -> torch.Tensor:
        scores = self.last_hidden(batch) @ self.output_embeddings().T
        scores[:, PAD] = float("-inf")
        return scores

    def item_loss(self, hidden: torch.Tensor, targets: torch.Tensor, loss_cfg: LossConfig,
                  sampler: NegativeSampler | None = None, window: torch.Tensor | None = None) -> torch.Tensor:
        return self.base.item_loss(hidden, targets, loss_cfg, sampler, window)

    def loss(self, batch: Batch, loss_cfg: LossConfig, sampler: NegativeSampler | None = None) -> LossOutput:
        if not self.causal:
            raise ValueError("WithHead.loss supports causal models; use target_objective")
        assert batch.targets is not None  # a training batch
        out = self.item_loss(self.encode(batch), batch.targets, loss_cfg, sampler, batch.items)
        return LossOutput(out, {"item": float(out.detach())})


# ---- training targets ----------------------------------------------------------------------


def target_objective(model: SequenceModel | WithHead, cfg: Config, behaviour: int,
                     sampler: NegativeSampler | None = None) -> Callable[[Batch], LossOutput]:
    """Loss only where the next event has ``behaviour``; all events remain inputs."""

    def objective(batch: Batch) -> LossOutput:
        assert batch.targets is not None and batch.target_behaviours is not None
        if model.causal:
            targets = batch.targets * (batch.target_behaviours == behaviour)
            window = batch.items
            hidden = model.encode(batch) if bool((targets != PAD).any()) else None
        else:  # bidirectional: mask the target-type events of the full window (the last one always)
            beh = torch.cat([batch.behaviours, batch.target_behaviours[:, -1:]], dim=1)
            base = model.base if isinstance(model, WithHead) else model
            inputs, targets = base.corrupt(batch, eligible=beh == behaviour)  # type: ignore[operator]
            window = full_window(inputs, targets)
            hidden = model.encode(inputs) if bool((targets != PAD).any()) else None
        if hidden is None:
            return LossOutput(zero_loss(model), {"target": 0.0})
        loss = model.item_loss(hidden, targets, cfg.loss, sampler, window)
        return LossOutput(loss, {"target": float(loss.detach())})

    return objective


# ---- pre-training ------------------------------------------------------------------------


def pretrain(
    model: SequenceModel,
    cfg: Config,
    seq: Sequences,
    train_end: np.ndarray,
    valid: EvalExamples,
    arrays: EventArrays | None = None,
    item_counts: np.ndarray | None = None,
    objective: PretrainObjective = "auto",
    log_dir: str | None = None,
    progress: bool = False,
) -> FitResult:
    """Self-supervised training on every event of the training prefixes (all behaviours).

    ``valid`` only picks the best epoch (use the fine-tuning target's validation split).
    """
    kind = resolve_pretrain_objective(model, objective)
    arrays = arrays or EventArrays.from_sequences(seq, cfg.model.time_buckets)
    if kind == "contrastive":
        rng = np.random.default_rng(cfg.train.seed)
        ac = cfg.augment

        def obj(batch: Batch) -> LossOutput:
            cl = contrastive_loss(model, batch, ac, rng)
            return LossOutput(cl, {"contrastive": float(cl.detach())})

        return fit(model, cfg, seq, train_end, valid, arrays, item_counts, log_dir=log_dir, progress=progress,
                   objective=obj)
    fn = training_objective(model, cfg, make_sampler(cfg, model.spec.n_items, item_counts))
    return fit(model, cfg, seq, train_end, valid, arrays, item_counts, log_dir=log_dir, progress=progress,
               objective=fn)


# ---- fine-tuning -------------------------------------------------------------------------


@dataclass
class FinetuneResult:
    model: SequenceModel | WithHead  # LoRA merged: a plain SequenceModel for "full" and "lora"
    mode: str
    trainable_params: int
    total_params: int
    fit: FitResult
    valid_before: dict[str, float] = field(default_factory=dict)
    valid_after: dict[str, float] = field(default_factory=dict)
    lora_layers: int = 0

    def summary(self) -> dict:
        return {
            "mode": self.mode,
            "trainable_params": self.trainable_params,
            "total_params": self.total_params,
            "lora_layers": self.lora_layers,
            "best_epoch": self.fit.best_epoch,
            "epochs": self.fit.epochs,
            "stopped_by": self.fit.stopped_by,
            "train_seconds": round(self.fit.train_seconds, 1),
            "valid_before": self.valid_before,
            "valid_after": self.valid_after,
        }


def _metrics(model: SequenceModel | WithHead, cfg: Config, seq: Sequences, arrays: EventArrays,
             valid: EvalExamples) -> dict[str, float]:
    res = evaluate(model_scorer(model), seq, arrays, valid, model.spec.n_items, cfg.model.max_len, cfg.eval,
                   bootstrap=False)
    return {k: v for k, v in res.metrics.items() if isinstance(v, float) and not k.startswith(("recall", "prec"))}


def prepare_mode(
    model: SequenceModel, mode: str, lora_rank: int = 8, lora_alpha: float = 16.0, train_also: tuple[str, ...] = ()
) -> tuple[SequenceModel | WithHead, int]:
    """Set up ``model`` for a fine-tuning mode. Returns (model to train, number of LoRA layers)."""
    if mode == "full":
        model.requires_grad_(True)
        return model, 0
    if mode == "frozen":
        model.requires_grad_(False)
        return WithHead(model), 0
    n = apply_lora(model, rank=lora_rank, alpha=lora_alpha)
    mark_only_lora_trainable(model, also=train_also)
    return model, n


def finetune(
    model: SequenceModel,
    cfg: Config,
    seq: Sequences,
    train_end: np.ndarray,
    valid: EvalExamples,
    target_behaviour: int | None = None,
    mode: Mode = "full",
    arrays: EventArrays | None = None,
    item_counts: np.ndarray | None = None,
    lora_rank: int | None = None,
    lora_alpha: float | None = None,
    train_also: tuple[str, ...] = (),
    log_dir: str | None = None,
    progress: bool = False,
) -> FinetuneResult:
    """Fine-tune a (pre-trained) model in place for ``target_behaviour`` (None: next item).

    ``cfg.train`` holds the fine-tuning schedule (learning rate, epochs, patience, budget).
    LoRA rank defaults to ``cfg.model.lora_rank`` (8 when that is 0), alpha to twice the rank.
    """
    check_finetune(cfg, mode, target_behaviour)
    arrays = arrays or EventArrays.from_sequences(seq, cfg.model.time_buckets)
    rank = lora_rank or cfg.model.lora_rank or 8
    before = _metrics(model, cfg, seq, arrays, valid)
    trainee, n_lora = prepare_mode(model, mode, rank, lora_alpha or 2.0 * rank, train_also)
    trainable, total = count_parameters(trainee)
    sampler = make_sampler(cfg, trainee.spec.n_items, item_counts)
    if target_behaviour is None:
        objective = training_objective(trainee, cfg, sampler)  # type: ignore[arg-type]
    else:
        objective = target_objective(trainee, cfg, target_behaviour, sampler)
    loader = make_train_loader(cfg, seq, train_end, arrays, augment=augment_hook(cfg, model.spec.n_items),
                               target_behaviour=target_behaviour)
    if target_behaviour is not None and len(loader) == 0:
        raise ValueError("no training window holds a target of the fine-tuning behaviour")
    result = fit(trainee, cfg, seq, train_end, valid, arrays, item_counts, log_dir=log_dir,
                 progress=progress, loader=loader, objective=objective)
    if mode == "lora":
        merge_lora(model)  # plain nn.Linear again: saves and loads without LoRA code
        model.requires_grad_(True)
    after = _metrics(trainee, cfg, seq, arrays, valid)
    return FinetuneResult(trainee, mode, trainable, total, result, before, after, n_lora)
