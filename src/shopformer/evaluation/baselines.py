"""Simple baselines reported beside every model: popularity and first-order Markov.

Both are fitted on training events only (each user's prefix before ``train_end``) and score
the whole catalogue from a ``Batch`` like a model does, so they share one evaluation path.
"""

from __future__ import annotations

import numpy as np
import torch

from shopformer.data.batches import Batch
from shopformer.data.schema import PAD
from shopformer.data.sequences import Sequences


def training_mask(seq: Sequences, train_end: np.ndarray) -> np.ndarray:
    """(N,) True for events inside each user's training prefix."""
    pos = np.arange(len(seq.items))
    return pos < np.repeat(train_end, seq.lengths)


def item_counts(seq: Sequences, train_end: np.ndarray, n_items: int, behaviour: int | None = None) -> np.ndarray:
    """(n_items + 1,) training-event count per item (optionally of one behaviour type)."""
    mask = training_mask(seq, train_end)
    if behaviour is not None:
        mask &= seq.behaviours == behaviour
    return np.bincount(seq.items[mask], minlength=n_items + 1).astype(np.int64)


class Popularity:
    """Scores every item by its training count, whatever the history."""

    name = "popularity"

    def __init__(self, counts: np.ndarray) -> None:
        self.scores = torch.as_tensor(counts, dtype=torch.float32)
        self.scores[PAD] = float("-inf")

    def __call__(self, batch: Batch) -> torch.Tensor:
        return self.scores.unsqueeze(0).expand(len(batch), -1).clone()


class Markov:
    """First-order transitions: score(j) = count(last item -> j) in training sequences.

    Ties (and items never seen after the last one) are broken by popularity, scaled below
    one transition so popularity never outranks an observed transition.
    """

    name = "markov"

    def __init__(self, seq: Sequences, train_end: np.ndarray, n_items: int) -> None:
        mask = training_mask(seq, train_end)
        # consecutive pairs (i, i+1) inside the same user's training prefix
        rows = seq.user_row_of_event()
        pair = mask[:-1] & mask[1:] & (rows[:-1] == rows[1:])
        src = torch.from_numpy(seq.items[:-1][pair].astype(np.int64))
        dst = torch.from_numpy(seq.items[1:][pair].astype(np.int64))
        size = n_items + 1
        self.transitions = torch.sparse_coo_tensor(
            torch.stack([src, dst]), torch.ones(len(src)), (size, size), check_invariants=True
        ).coalesce()
        counts = np.bincount(seq.items[mask], minlength=size).astype(np.float64)
        self.prior = torch.from_numpy(counts / (counts.max() + 1.0)).float()

    def __call__(self, batch: Batch) -> torch.Tensor:
        last = batch.items[:, -1]  # (B,) most recent item (0 for an empty history)
        scores = self.transitions.index_select(0, last).to_dense() + self.prior  # (B, V)
        scores[:, PAD] = float("-inf")
        return scores


def majority_behaviour(seq: Sequences, train_end: np.ndarray, n_behaviours: int) -> int:
    counts = np.bincount(seq.behaviours[training_mask(seq, train_end)], minlength=n_behaviours + 1)
    counts[PAD] = -1
    return int(counts.argmax())


class RecentItems:
    """Items of the history's events whose behaviour is allowed, most recent first; every other item
    below them by a prior (e.g. popularity among purchases), so the ranking is always complete.

    With the majority behaviour disallowed this is "the items the user recently carted or
    favourited" without naming either."""

    def __init__(self, allowed: np.ndarray, prior_counts: np.ndarray) -> None:
        self.allowed = torch.as_tensor(allowed, dtype=torch.bool)  # (n_behaviours + 1,)
        prior = np.asarray(prior_counts, dtype=np.float64)
        self.prior = torch.from_numpy(prior / (prior.max() + 1.0)).float()  # in [0, 1)

    def __call__(self, batch: Batch) -> torch.Tensor:
        b, length = batch.items.shape
        ok = (batch.items != PAD) & self.allowed[batch.behaviours]
        recency = torch.arange(1, length + 1, dtype=torch.float32).expand(b, length) + 1.0  # > any prior
        scores = self.prior.unsqueeze(0).repeat(b, 1)
        idx = torch.where(ok, batch.items, torch.zeros_like(batch.items))
        scores.scatter_reduce_(1, idx, torch.where(ok, recency, torch.zeros_like(recency)), reduce="amax")
        scores[:, PAD] = float("-inf")
        return scores


def behaviour_transitions(seq: Sequences, train_end: np.ndarray, n_behaviours: int) -> np.ndarray:
    """(B + 1, B + 1) P(next behaviour | previous behaviour) on training pairs, add-one smoothed."""
    mask = training_mask(seq, train_end)
    rows = seq.user_row_of_event()
    pair = mask[:-1] & mask[1:] & (rows[:-1] == rows[1:])
    counts = np.ones((n_behaviours + 1, n_behaviours + 1))
    np.add.at(counts, (seq.behaviours[:-1][pair], seq.behaviours[1:][pair]), 1)
    counts[:, PAD] = 0.0
    return counts / counts.sum(1, keepdims=True)
