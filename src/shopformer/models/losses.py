"""Next-item losses. Pure functions of tensors, computed only at real (non-padding) targets."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from shopformer.data.schema import PAD
from shopformer.models.chunked_ce import BLOCK_ELEMENTS, chunked_cross_entropy


def full_cross_entropy(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    item_emb: torch.Tensor,
    label_smoothing: float = 0.0,
    excluded: torch.Tensor | None = None,
    budget: int | None = BLOCK_ELEMENTS,
) -> torch.Tensor:
    """Softmax over the whole catalogue.

    hidden: (M, D) states at real positions only; targets: (M,) item ids >= 1;
    item_emb: (V, D) with row 0 = padding, which is never a valid class;
    excluded: optional (V,) bool, classes left out of the softmax (items without training
    events, so never a target: one that is raises).
    ``budget``: logits per block of the chunked, gradient-fused computation (models/chunked_ce.py,
    the default: never materialises (M, V) logits); None computes the plain (M, V) logits.
    """
    keep = torch.ones(item_emb.shape[0], dtype=torch.bool, device=hidden.device)
    if excluded is not None:
        keep &= ~excluded.to(hidden.device)
        if not bool(keep[targets].all()):
            bad = targets[~keep[targets]].unique().tolist()[:5]
            raise ValueError(f"target items {bad} are excluded from the softmax")
    keep[PAD] = False
    if budget is not None and len(targets):
        return chunked_cross_entropy(hidden, targets, item_emb, keep, label_smoothing, budget)
    logits = hidden @ item_emb.T  # (M, V)
    if not label_smoothing:
        logits[:, ~keep] = float("-inf")  # in place, only the few dropped columns are written
        return F.cross_entropy(logits, targets)
    # Smoothing must not put mass on a class that cannot be predicted (log 0 = -inf): keep only
    # the allowed columns.
    column = keep.long().cumsum(0) - 1  # item id -> column of the kept logits
    return F.cross_entropy(logits[:, keep], column[targets], label_smoothing=label_smoothing)


class NegativeSampler:
    """Draws shared negatives for sampled softmax, uniform or by popularity.

    ``log_q`` is the log-probability of drawing each item; subtracting it from the logits
    (logQ correction) makes the sampled softmax an unbiased estimate of the full one.
    """

    def __init__(self, item_counts: np.ndarray, kind: str, seed: int = 0) -> None:
        counts = np.asarray(item_counts, dtype=np.float64).copy()
        counts[PAD] = 0.0
        if kind == "uniform":
            probs = (counts >= 0).astype(np.float64)
            probs[PAD] = 0.0
        elif kind == "popularity":
            probs = counts + 1e-12
            probs[PAD] = 0.0
        else:
            raise ValueError(f"unknown sampler {kind!r}; use 'uniform' or 'popularity'")
        probs /= probs.sum()
        self.probs = torch.from_numpy(probs).float()
        self.log_q = torch.log(self.probs.clamp_min(1e-30))
        self.generator = torch.Generator().manual_seed(seed)

    def sample(self, n: int) -> torch.Tensor:
        return torch.multinomial(self.probs, n, replacement=True, generator=self.generator)


def sampled_softmax(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    item_emb: torch.Tensor,
    negatives: torch.Tensor,
    log_q: torch.Tensor | None = None,
    excluded: torch.Tensor | None = None,
) -> torch.Tensor:
    """Softmax over the target and N shared negatives, with optional logQ correction.

    hidden: (M, D); targets: (M,); negatives: (N,) item ids; log_q: (V,) or None;
    excluded: optional (V,) bool, items never used as negatives.
    A negative equal to the row's own target is masked (an "accidental hit").
    """
    pos = (hidden * item_emb[targets]).sum(-1, keepdim=True)  # (M, 1)
    neg = hidden @ item_emb[negatives].T  # (M, N)
    if log_q is not None:
        log_q = log_q.to(hidden.device)
        pos = pos - log_q[targets].unsqueeze(-1)
        neg = neg - log_q[negatives].unsqueeze(0)
    hit = negatives.unsqueeze(0) == targets.unsqueeze(-1)  # (M, N)
    if excluded is not None:
        hit = hit | excluded.to(hidden.device)[negatives].unsqueeze(0)
    neg = neg.masked_fill(hit, float("-inf"))
    logits = torch.cat([pos, neg], dim=-1)
    return F.cross_entropy(logits, torch.zeros(len(targets), dtype=torch.long, device=hidden.device))
