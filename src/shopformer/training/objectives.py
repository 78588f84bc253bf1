"""Training objectives: what ``fit`` minimises for a batch.

The default objective is the model's own ``loss`` (next-item cross-entropy, full or sampled).
``training_objective`` adds the contrastive auxiliary loss (CL4SRec / DuoRec style: two views of
each training history, InfoNCE over the batch between their last hidden states, weighted by
``augment.contrastive_weight``) and skips targets hidden by ``augment.mask``. Fine-tuning's
target-behaviour objective lives with fine-tuning (training/finetune.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from shopformer.config import AugmentConfig, Config
from shopformer.data.augment import KEYS, Augmenter, Windows, cl4srec_view
from shopformer.data.batches import Augment, Batch, EventArrays, TrainLoader, make_train_loader
from shopformer.data.schema import PAD
from shopformer.data.sequences import Sequences
from shopformer.models.base import LossOutput, SequenceModel
from shopformer.models.losses import NegativeSampler


def info_nce(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent over 2B views: z1[i] and z2[i] are positives, the other 2B - 2 are negatives.

    Dot-product similarity as in CL4SRec. z1, z2: (B, D).
    """
    b = z1.shape[0]
    z = torch.cat([z1, z2])  # (2B, D)
    sim = z @ z.T / temperature  # (2B, 2B)
    sim = sim.masked_fill(torch.eye(2 * b, dtype=torch.bool, device=z.device), float("-inf"))
    labels = torch.cat([torch.arange(b, 2 * b), torch.arange(b)]).to(z.device)
    return F.cross_entropy(sim, labels)


def _history(batch: Batch) -> Windows:
    return {k: getattr(batch, k).numpy() for k in KEYS}


def _as_batch(w: Windows) -> Batch:
    return Batch(**{k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in w.items()})


def contrastive_loss(model: SequenceModel, batch: Batch, cfg: AugmentConfig, rng: np.random.Generator) -> torch.Tensor:
    """InfoNCE between two views of the batch's input histories (B >= 2)."""
    w = _history(batch)
    if cfg.contrastive_views == "cl4srec":
        v1 = _as_batch(cl4srec_view(w, rng, cfg.ratio, model.mask_id))
        v2 = _as_batch(cl4srec_view(w, rng, cfg.ratio, model.mask_id))
    else:  # the same history twice: dropout makes the views differ
        v1 = v2 = _as_batch(w)
    return info_nce(model.last_hidden(v1), model.last_hidden(v2), cfg.contrastive_temperature)


def zero_loss(model: torch.nn.Module) -> torch.Tensor:
    """A 0 loss connected to the graph (a batch with nothing to learn from)."""
    return sum(p.sum() * 0.0 for p in model.parameters() if p.requires_grad)  # type: ignore[return-value]


def drop_masked_targets(batch: Batch, mask_id: int) -> Batch:
    """Targets that are [MASK] (hidden by ``mask``) are not trained on."""
    if batch.targets is None:
        return batch
    keep = batch.targets != mask_id
    tb = batch.target_behaviours * keep if batch.target_behaviours is not None else None
    return replace(batch, targets=batch.targets * keep, target_behaviours=tb)


def check_augment(cfg: Config, model: SequenceModel) -> None:
    """Reject combinations that cannot work, before any training."""
    if cfg.augment.mask and not model.causal:
        raise ValueError(
            f"augment.mask is not supported for {model.name}: it masks its own inputs (model.mask_prob); "
            "a [MASK] from augmentation would become one of its cloze targets"
        )


def training_objective(
    model: SequenceModel, cfg: Config, sampler: NegativeSampler | None = None, seed: int | None = None
) -> Callable[[Batch], LossOutput]:
    """The model's own loss (+ weight * contrastive loss), skipping [MASK] targets.

    Returns a ``fit`` objective: Batch -> LossOutput.
    """
    check_augment(cfg, model)
    ac = cfg.augment
    rng = np.random.default_rng(cfg.train.seed if seed is None else seed)

    def objective(batch: Batch) -> LossOutput:
        batch = drop_masked_targets(batch, model.mask_id)
        if batch.targets is not None and not bool((batch.targets != PAD).any()):
            main = zero_loss(model)
            parts = {"item": 0.0}
        else:
            out = model.loss(batch, cfg.loss, sampler)
            main, parts = out.total, dict(out.parts)
        if ac.contrastive_weight > 0 and len(batch) > 1:
            cl = contrastive_loss(model, batch, ac, rng)
            parts["contrastive"] = float(cl.detach())
            main = main + ac.contrastive_weight * cl
        return LossOutput(main, parts)

    return objective


def augmented_training(
    model: SequenceModel,
    cfg: Config,
    seq: Sequences,
    train_end: np.ndarray,
    arrays: EventArrays,
    item_counts: np.ndarray | None = None,
    item_category: np.ndarray | None = None,
    since: int | None = None,
) -> tuple[TrainLoader, Callable[[Batch], LossOutput]]:
    """(loader, objective) for ``fit(..., loader=loader, objective=objective)`` from ``cfg.augment``.

    The loader is the standard one with the ``Augmenter`` hook (or none when every probability
    is 0; ``since``: recent windows only, ``make_train_loader``); the objective is
    ``training_objective`` with the sampler ``fit`` would have built.
    """
    hook = augment_hook(cfg, model.spec.n_items, item_category)
    loader = make_train_loader(cfg, seq, train_end, arrays, augment=hook, since=since)
    return loader, training_objective(model, cfg, make_sampler(cfg, model.spec.n_items, item_counts))


def augment_hook(cfg: Config, n_items: int, item_category: np.ndarray | None = None) -> Augment | None:
    """The loader's augmentation hook from ``cfg.augment`` (None when every probability is 0)."""
    augmenter = Augmenter(cfg.augment, n_items, item_category)
    return augmenter if augmenter.active else None


def make_sampler(cfg: Config, n_items: int, item_counts: np.ndarray | None) -> NegativeSampler | None:
    """The negative sampler ``cfg.loss`` asks for (None for full cross-entropy)."""
    if cfg.loss.kind != "sampled":
        return None
    if item_counts is None and cfg.loss.in_batch and cfg.loss.logq_correction:
        raise ValueError("loss.in_batch with logQ correction needs the training item counts (fit(..., item_counts))")
    counts = item_counts if item_counts is not None else np.ones(n_items + 1)
    return NegativeSampler(counts, cfg.loss.sampler, seed=cfg.train.seed)
