"""Next-item losses. Pure functions of tensors, computed only at real (non-padding) targets."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from shopformer.data.schema import PAD
from shopformer.models.chunked_ce import BLOCK_ELEMENTS, chunked_cross_entropy
from shopformer.models.layers import attention_mask


def seen_before(items: torch.Tensor, targets: torch.Tensor, causal: bool = True) -> torch.Tensor:
    """(B, L) window items and targets -> (B, L, L): row (b, t) holds the items the prediction at t
    is made from (the keys its attention may read: positions <= t for a causal model, the whole
    window for a masked one), PAD elsewhere and wherever an item is that position's target (a
    repeat stays a class it can predict)."""
    seen = items[:, None, :].expand(-1, items.shape[1], -1)  # (B, t, s) = items[b, s]
    keep = attention_mask(items != PAD, causal)[:, 0] & (seen != targets[:, :, None])
    return torch.where(keep, seen, torch.zeros_like(seen))


def full_cross_entropy(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    item_emb: torch.Tensor,
    label_smoothing: float = 0.0,
    excluded: torch.Tensor | None = None,
    budget: int | None = BLOCK_ELEMENTS,
    seen: torch.Tensor | None = None,
) -> torch.Tensor:
    """Softmax over the whole catalogue.

    hidden: (M, D) states at real positions only; targets: (M,) item ids >= 1;
    item_emb: (V, D) with row 0 = padding, which is never a valid class;
    excluded: optional (V,) bool, classes left out of the softmax (items without training
    events, so never a target: one that is raises).
    ``budget``: logits per block of the chunked, gradient-fused computation (models/chunked_ce.py,
    the default: never materialises (M, V) logits); None computes the plain (M, V) logits.
    seen: optional (M, S) item ids left out of each row's softmax (``seen_before``; PAD = none).
    """
    keep = torch.ones(item_emb.shape[0], dtype=torch.bool, device=hidden.device)
    if excluded is not None:
        keep &= ~excluded.to(hidden.device)
        if not bool(keep[targets].all()):
            bad = targets[~keep[targets]].unique().tolist()[:5]
            raise ValueError(f"target items {bad} are excluded from the softmax")
    keep[PAD] = False
    if budget is not None and len(targets):
        return chunked_cross_entropy(hidden, targets, item_emb, keep, label_smoothing, budget, seen)
    logits = hidden @ item_emb.T  # (M, V)
    # Smoothing spreads its mass over the kept classes' raw logits, as the chunked path does:
    # (1 - eps) * nll + eps * (lse - mean of the kept logits), F.cross_entropy's label smoothing
    mean_kept = logits[:, keep].mean(1) if label_smoothing else None
    logits[:, ~keep] = float("-inf")  # in place, only the few dropped columns are written
    if seen is not None:
        logits = logits.scatter(1, seen.to(hidden.device), float("-inf"))  # PAD's column is dropped anyway
    lse = logits.logsumexp(1)
    loss = lse - logits.gather(1, targets[:, None]).squeeze(1)
    if mean_kept is not None:
        loss = (1 - label_smoothing) * loss + label_smoothing * (lse - mean_kept)
    return loss.mean()


class NegativeSampler:
    """Draws the shared negatives of a sampled softmax: ``n`` from a uniform or popularity
    sampler, plus up to ``k`` in-batch negatives (the targets of randomly chosen positions of the
    batch, so distributed as the items' training frequency).

    logQ correction subtracts from each logit the log of the item's expected count in that mixed
    sample, ``log(n q_sampler(j) + k p_freq(j))``, which makes the sampled softmax an unbiased
    estimate of the full one (the correction is applied to the positive too; a constant shift of
    every logit leaves the softmax unchanged).
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
        freq = counts if counts.sum() > 0 else (counts >= 0).astype(np.float64)
        freq[PAD] = 0.0
        self.freq = torch.from_numpy(freq / freq.sum()).float()  # what an in-batch target follows
        self.generator = torch.Generator().manual_seed(seed)
        self._log_expected: dict[tuple[int, int], torch.Tensor] = {}

    def sample(self, n: int) -> torch.Tensor:
        return torch.multinomial(self.probs, n, replacement=True, generator=self.generator)

    def draw(self, targets: torch.Tensor, n: int, in_batch: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """(negative ids (n + k,), (V,) log expected count of each item among them).

        targets: (M,) the batch's real targets; k = min(in_batch, M) of them are picked at random
        positions (without replacement of positions) as in-batch negatives. A row's own target
        among them is an accidental hit that ``sampled_softmax`` masks.
        """
        k = min(in_batch, len(targets))
        parts = [self.sample(n).to(targets.device)] if n else []
        if k:
            pick = torch.randperm(len(targets), generator=self.generator)[:k]
            parts.append(targets[pick.to(targets.device)])
        if not parts:
            raise ValueError("sampled softmax without negatives: set loss.negatives or loss.in_batch > 0")
        return torch.cat(parts), self.log_expected(n, k)

    def draw_per_row(self, targets: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(M, n) negative ids, n for each of the M targets, and the (V,) logQ correction of a row."""
        draws = torch.multinomial(self.probs, len(targets) * n, replacement=True, generator=self.generator)
        return draws.view(len(targets), n).to(targets.device), self.log_expected(n, 0)

    def log_expected(self, n: int, k: int) -> torch.Tensor:
        """(V,) log(n q_sampler + k p_freq): the logQ correction of a draw of n + k negatives."""
        key = (n, k)
        if key not in self._log_expected:
            if len(self._log_expected) >= 8:  # k varies only on batches with fewer than in_batch targets
                self._log_expected.clear()
            self._log_expected[key] = torch.log((n * self.probs + k * self.freq).clamp_min(1e-30))
        return self._log_expected[key]


def sampled_softmax(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    item_emb: torch.Tensor,
    negatives: torch.Tensor,
    log_q: torch.Tensor | None = None,
    excluded: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Softmax over the target and N negatives, with optional logQ correction and label smoothing.

    hidden: (M, D); targets: (M,); negatives: (N,) item ids shared by every row, or (M, N) drawn for
    each row (``NegativeSampler.draw_per_row``); log_q: (V,) log expected count of
    each item among the negatives (``NegativeSampler.draw``), or None; excluded: optional (V,)
    bool, items never used as negatives. A negative equal to the row's own target is masked (an
    "accidental hit"). Only the negatives are corrected: the target enters once with weight 1, so
    ``exp(s_y) + sum_j exp(s_j - log E[count_j])`` over the negatives j != y is an unbiased
    estimate of the full softmax's normaliser. (Correcting the target as well, as in TF's
    ``sampled_softmax_loss``, under-weights it in the normaliser by its expected count and biases
    the gradient; tests/test_losses.py measures both.)
    """
    pos = (hidden * item_emb[targets]).sum(-1, keepdim=True)  # (M, 1)
    if negatives.dim() == 1:  # shared by every row
        neg = hidden @ item_emb[negatives].T  # (M, N)
        negatives = negatives.unsqueeze(0)  # (1, N): the masks below broadcast over the rows
    else:
        neg = torch.bmm(item_emb[negatives], hidden.unsqueeze(-1)).squeeze(-1)  # (M, N, D) @ (M, D, 1)
    if log_q is not None:
        neg = neg - log_q.to(hidden.device)[negatives]
    hit = negatives == targets.unsqueeze(-1)  # (M, N)
    if excluded is not None:
        hit = hit | excluded.to(hidden.device)[negatives]
    neg = neg.masked_fill(hit, float("-inf"))
    logits = torch.cat([pos, neg], dim=-1)  # (M, 1 + N), the target in column 0
    if not label_smoothing:
        return F.cross_entropy(logits, torch.zeros(len(targets), dtype=torch.long, device=hidden.device))
    # smoothing spreads its mass over the classes actually in each row (the target and the
    # unmasked negatives), as F.cross_entropy does over all classes: a masked (-inf) one would
    # make the loss infinite
    logp = logits.log_softmax(-1)
    present = torch.cat([torch.ones_like(hit[:, :1]), ~hit], dim=-1)  # (M, 1 + N)
    spread = -logp.masked_fill(~present, 0.0).sum(-1) / present.sum(-1)
    return ((1.0 - label_smoothing) * -logp[:, 0] + label_smoothing * spread).mean()
