"""Sequence augmentation on the fly: numpy window operators (no torch, no model).

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
A masked item cannot be a target, so ``training.objectives.training_objective`` skips those
positions. ``cl4srec_view`` builds the views of the contrastive loss (training/objectives.py).
"""

from __future__ import annotations

import numpy as np

from shopformer.config import AugmentConfig
from shopformer.data.schema import PAD

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
    rows = np.asarray(rng.random(b) < p)
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
    choice = np.asarray(rng.integers(0, 3, size=w["items"].shape[0]))[:, None]  # (B, 1)
    views = (crop(w, rng, 1.0, ratio), mask(w, rng, 1.0, ratio, mask_id), reorder(w, rng, 1.0, ratio))
    return {k: np.select([choice == i for i in range(3)], [v[k] for v in views]) for k in w}


