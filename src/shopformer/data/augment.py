"""Sequence augmentation on the fly, and the contrastive auxiliary loss that uses it.

Every operator maps the numpy windows of one batch (a dict of (B, W) arrays, left-padded,
keys items/behaviours/gaps/categories) to new windows of the same shape, row by row but
vectorised over the batch (no Python loop per user). A row is touched with probability ``p``;
``ratio`` says how much of it. Side features move with their event, so an event keeps its
behaviour, time gap and category wherever it ends up.

    crop        keep a random contiguous stretch of ceil((1 - ratio) n) events (CL4SRec)
    prefix      keep a random prefix of 2..n events (a sub-sequence ending early)
    reorder     shuffle a random stretch of max(2, ratio n) consecutive events (CL4SRec)
    substitute  replace each event's item by a uniformly random item with probability ratio
    mask        replace each event's item by [MASK] (id n_items + 1) with probability ratio

Sliding windows over long histories are the loader's job (``train.sliding_window``); ``crop``
and ``prefix`` add random sub-sequences inside a window. Through ``TrainLoader``'s ``augment``
hook the targets follow the augmented order: a cropped window trains on the cropped sequence.
A masked item cannot be a target, so ``training_objective`` skips those positions; always
train with it (``augmented_training`` returns both) when ``augment.mask`` is on.

Contrastive loss (CL4SRec / DuoRec style): two views of each training history (one random
operator each, or plain dropout noise), InfoNCE over the batch between their last hidden
states, added to the next-item loss with ``augment.contrastive_weight``.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from shopformer.config import AugmentConfig, Config
from shopformer.data.dataset import Augment, Batch, EventArrays, TrainLoader, training_windows
from shopformer.data.schema import PAD
from shopformer.data.sequences import Sequences
from shopformer.losses import NegativeSampler
from shopformer.models.base import LossOutput, SequenceModel
from shopformer.train import make_sampler

Windows = dict[str, np.ndarray]
KEYS = ("items", "behaviours", "gaps", "categories")


def lengths(w: Windows) -> np.ndarray:
    """(B,) real events per row (they are the row's last columns)."""
    return (w["items"] != PAD).sum(1)


def _gather(w: Windows, src: np.ndarray, valid: np.ndarray) -> Windows:
    """New windows whose column j is old column ``src[:, j]`` where ``valid``, else padding."""
    return {k: np.where(valid, np.take_along_axis(v, src, axis=1), 0) for k, v in w.items()}


def subsequence(w: Windows, keep: np.ndarray, start: np.ndarray) -> Windows:
    """Per row, keep ``keep`` events starting ``start`` events after the first real one."""
    width = w["items"].shape[1]
    n = lengths(w)
    k = np.arange(width)[None, :] - (width - keep)[:, None]  # (B, W) index inside the kept stretch
    src = np.clip((width - n + start)[:, None] + k, 0, width - 1)
    return _gather(w, src, k >= 0)


def crop(w: Windows, rng: np.random.Generator, p: float, ratio: float) -> Windows:
    n = lengths(w)
    apply = (rng.random(len(n)) < p) & (n > 2)
    keep = np.where(apply, np.clip(np.ceil(n * (1.0 - ratio)).astype(np.int64), 2, n), n)
    start = (rng.random(len(n)) * (n - keep + 1)).astype(np.int64)
    return subsequence(w, keep, start)


def prefix(w: Windows, rng: np.random.Generator, p: float) -> Windows:
    n = lengths(w)
    apply = (rng.random(len(n)) < p) & (n > 2)
    keep = np.where(apply, 2 + (rng.random(len(n)) * (n - 1)).astype(np.int64), n)  # 2..n
    return subsequence(w, np.minimum(keep, n), np.zeros_like(n))


def reorder(w: Windows, rng: np.random.Generator, p: float, ratio: float) -> Windows:
    b, width = w["items"].shape
    n = lengths(w)
    apply = (rng.random(b) < p) & (n >= 2)
    seg = np.clip(np.floor(n * ratio).astype(np.int64), 2, np.maximum(n, 2))  # (B,)
    s = width - n + (rng.random(b) * (n - seg + 1).clip(min=1)).astype(np.int64)  # first column
    cols = np.arange(width)[None, :]
    inside = apply[:, None] & (cols >= s[:, None]) & (cols < (s + seg)[:, None])
    # Inside the stretch every column gets a random key in [s, s + seg): sorting the keys
    # shuffles the stretch and leaves every other column where it is.
    key = np.where(inside, s[:, None] + rng.random((b, width)) * seg[:, None], cols)
    src = np.argsort(key, axis=1, kind="stable")
    return _gather(w, src, np.ones((b, width), dtype=bool))


def _positions(w: Windows, rng: np.random.Generator, p: float, ratio: float) -> np.ndarray:
    """(B, W) real events chosen with probability ``ratio`` in rows chosen with probability ``p``."""
    b, width = w["items"].shape
    rows = rng.random(b) < p
    return (w["items"] != PAD) & rows[:, None] & (rng.random((b, width)) < ratio)


def substitute(
    w: Windows, rng: np.random.Generator, p: float, ratio: float, n_items: int, item_category: np.ndarray | None = None
) -> Windows:
    pos = _positions(w, rng, p, ratio)
    new = rng.integers(1, n_items + 1, size=pos.shape)
    out = dict(w)
    out["items"] = np.where(pos, new, w["items"])
    cats = item_category[new] if item_category is not None else np.zeros_like(new)
    out["categories"] = np.where(pos, cats, w["categories"])  # the new item's category (0 if unknown)
    return out


def mask(w: Windows, rng: np.random.Generator, p: float, ratio: float, mask_id: int) -> Windows:
    pos = _positions(w, rng, p, ratio)
    return {**w, "items": np.where(pos, mask_id, w["items"])}


class Augmenter:
    """The ``TrainLoader`` augment hook built from ``config.augment``: operators in a fixed order
    (crop, prefix, reorder, substitute, mask), each on a row with its own probability."""

    def __init__(self, cfg: AugmentConfig, n_items: int, item_category: np.ndarray | None = None) -> None:
        self.cfg, self.n_items, self.item_category = cfg, n_items, item_category

    @property
    def active(self) -> bool:
        c = self.cfg
        return any(x > 0 for x in (c.crop, c.prefix, c.reorder, c.substitute, c.mask))

    def __call__(self, w: Windows, rng: np.random.Generator) -> Windows:
        c = self.cfg
        if c.crop:
            w = crop(w, rng, c.crop, c.ratio)
        if c.prefix:
            w = prefix(w, rng, c.prefix)
        if c.reorder:
            w = reorder(w, rng, c.reorder, c.ratio)
        if c.substitute:
            w = substitute(w, rng, c.substitute, c.ratio, self.n_items, self.item_category)
        if c.mask:
            w = mask(w, rng, c.mask, c.ratio, self.n_items + 1)
        return w


def cl4srec_view(w: Windows, rng: np.random.Generator, ratio: float, mask_id: int) -> Windows:
    """One CL4SRec view: every row gets one of crop / mask / reorder, chosen at random."""
    choice = rng.integers(0, 3, size=w["items"].shape[0])[:, None]  # (B, 1)
    views = (crop(w, rng, 1.0, ratio), mask(w, rng, 1.0, ratio, mask_id), reorder(w, rng, 1.0, ratio))
    return {k: np.select([choice == i for i in range(3)], [v[k] for v in views]) for k in w}


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
):
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
):
    """(loader, objective) for ``fit(..., loader=loader, objective=objective)`` from ``cfg.augment``.

    The loader is the standard one with the ``Augmenter`` hook (or none when every probability
    is 0); the objective is ``training_objective`` with the sampler ``fit`` would have built.
    """
    tc = cfg.train
    augmenter = Augmenter(cfg.augment, model.spec.n_items, item_category)
    ends, starts = training_windows(seq, train_end, cfg.model.max_len, tc.sliding_window)
    hook: Augment | None = augmenter if augmenter.active else None
    loader = TrainLoader(arrays, ends, starts, cfg.model.max_len, tc.batch_size, tc.seed, augment=hook)
    return loader, training_objective(model, cfg, make_sampler(cfg, model.spec.n_items, item_counts))
