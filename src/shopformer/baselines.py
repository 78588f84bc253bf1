"""Simple baselines reported beside every model: popularity and first-order Markov.

Both are fitted on training events only (each user's prefix before ``train_end``) and score
the whole catalogue from a ``Batch`` like a model does, so they share one evaluation path.
"""

from __future__ import annotations

import numpy as np
import torch

from shopformer.data.dataset import Batch
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
