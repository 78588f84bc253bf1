"""Simple baselines reported beside every model: popularity, first-order Markov, and the
heuristics a shop tries first (weighted recent items, item co-occurrence, category popularity).

All are fitted on training events only (each user's prefix before ``train_end``) and score
the whole catalogue from a ``Batch`` like a model does, so they share one evaluation path.
Every scorer is vectorised over the batch; item-item data is kept sparse (never n_items^2).
"""

from __future__ import annotations

from collections.abc import Callable, Collection

import numpy as np
import torch

from shopformer.data.batches import Batch, seen_pairs
from shopformer.data.schema import PAD
from shopformer.data.sequences import Sequences, training_mask, training_pairs
from shopformer.data.split import EvalExamples
from shopformer.evaluation.metrics import repeat_mask


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

    def state(self) -> dict[str, torch.Tensor]:
        """The fitted state as tensors (saved with a run that blends this baseline)."""
        return {"scores": self.scores}

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor]) -> Popularity:
        out = cls.__new__(cls)
        out.scores = state["scores"].float()
        return out


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

    def state(self) -> dict[str, torch.Tensor]:
        """The fitted state as tensors (saved with a run that blends this baseline)."""
        return {"indices": self.transitions.indices(), "values": self.transitions.values(), "prior": self.prior}

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor]) -> Markov:
        out = cls.__new__(cls)
        size = len(state["prior"])
        out.transitions = torch.sparse_coo_tensor(state["indices"], state["values"], (size, size),
                                                  check_invariants=True).coalesce()
        out.prior = state["prior"].float()
        return out


def majority_behaviour(seq: Sequences, train_end: np.ndarray, n_behaviours: int) -> int:
    counts = np.bincount(seq.behaviours[training_mask(seq, train_end)], minlength=n_behaviours + 1)
    counts[PAD] = -1
    return int(counts.argmax())


class RecentItems:
    """Items of the history's events whose behaviour is allowed, most recent first; every other item
    below them by a prior (e.g. popularity among purchases), so the ranking is always complete.

    With the majority behaviour disallowed this is "the items the user recently carted or
    favourited" without naming either."""

    name = "recent items"

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

    def state(self) -> dict[str, torch.Tensor]:
        """The fitted state as tensors (saved with a run that blends this baseline)."""
        return {"allowed": self.allowed.to(torch.uint8), "prior": self.prior}

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor]) -> RecentItems:
        out = cls.__new__(cls)
        out.allowed, out.prior = state["allowed"].bool(), state["prior"].float()
        return out


def behaviour_transitions(seq: Sequences, train_end: np.ndarray, n_behaviours: int) -> np.ndarray:
    """(B + 1, B + 1) P(next behaviour | previous behaviour) on training pairs, add-one smoothed."""
    mask = training_mask(seq, train_end)
    rows = seq.user_row_of_event()
    pair = mask[:-1] & mask[1:] & (rows[:-1] == rows[1:])
    counts = np.ones((n_behaviours + 1, n_behaviours + 1))
    np.add.at(counts, (seq.behaviours[:-1][pair], seq.behaviours[1:][pair]), 1)
    counts[:, PAD] = 0.0
    return counts / counts.sum(1, keepdims=True)


# --- The heuristics a shop tries first -------------------------------------------------------------
# Each scores in two tiers: items with evidence from the history get 1 + evidence (> 1), every other
# item its popularity prior scaled into [0, 1), so the ranking is always complete and the prior only
# orders what the heuristic has no opinion about.


def _prior(counts: np.ndarray) -> torch.Tensor:
    """(V,) counts scaled into [0, 1): below any first-tier score."""
    c = np.asarray(counts, dtype=np.float64)
    return torch.from_numpy(c / (c.max(initial=0.0) + 1.0)).float()


def _recency(items: torch.Tensor, decay: float) -> torch.Tensor:
    """(B, L) ``decay ** age`` of each event (age 0 = the most recent, i.e. the last column), 0 at padding."""
    age = torch.arange(items.shape[1] - 1, -1, -1, dtype=torch.float32)
    return torch.where(items != PAD, torch.pow(decay, age), torch.zeros(()))


def _tiered(evidence: torch.Tensor, present: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """(B, V): ``1 + evidence`` where ``present``, the prior elsewhere, -inf at padding."""
    scores = torch.where(present, 1.0 + evidence, prior.unsqueeze(0).expand_as(evidence))
    scores[:, PAD] = float("-inf")
    return scores


def behaviour_repeat_weights(
    seq: Sequences, train_end: np.ndarray, n_behaviours: int, horizon: int = 1, target_behaviour: int | None = None
) -> np.ndarray:
    """(n_behaviours + 1,) how much an event of each behaviour type says about the next one, from training.

    For behaviour b: among training events of type b followed by at least one training event of the
    same user, the share whose item comes back within the next ``horizon`` events (as an event of
    ``target_behaviour``, if given), add-one smoothed ((hits + 1) / (events + 2)), then divided by the
    largest share (the most telling type weighs 1). 0 at padding."""
    mask = training_mask(seq, train_end)
    rows = seq.user_row_of_event()
    n = len(seq.items)
    has_next = np.zeros(n, dtype=bool)
    hit = np.zeros(n, dtype=bool)
    for d in range(1, min(horizon, n - 1) + 1):  # one vectorised pass per offset, never per user
        ok = mask[:-d] & mask[d:] & (rows[:-d] == rows[d:])
        has_next[:-d] |= ok
        same = ok & (seq.items[:-d] == seq.items[d:])
        if target_behaviour is not None:
            same &= seq.behaviours[d:] == target_behaviour
        hit[:-d] |= same
    beh = seq.behaviours.astype(np.int64)
    events = np.bincount(beh[has_next], minlength=n_behaviours + 1)[: n_behaviours + 1]
    hits = np.bincount(beh[hit], minlength=n_behaviours + 1)[: n_behaviours + 1]
    rate = (hits + 1.0) / (events + 2.0)
    rate[PAD] = 0.0
    return rate / rate.max()


class WeightedRecentItems:
    """The user's own items: score(i) = sum over the history's events on i of
    ``weight[behaviour] * decay ** age`` (age 0 = the most recent event), every item outside the
    history below them by a popularity prior.

    ``fit`` takes the behaviour weights from training events (``behaviour_repeat_weights``) and the
    prior from training counts (of ``target_behaviour`` if given); both can be given instead."""

    name = "weighted recent items"

    def __init__(self, weights: np.ndarray, prior_counts: np.ndarray, decay: float = 0.9) -> None:
        self.weights = torch.as_tensor(np.asarray(weights, dtype=np.float32)).clone()  # (n_behaviours + 1,)
        self.weights[PAD] = 0.0
        self.prior = _prior(prior_counts)
        self.decay = float(decay)

    @classmethod
    def fit(
        cls,
        seq: Sequences,
        train_end: np.ndarray,
        n_items: int,
        n_behaviours: int,
        decay: float = 0.9,
        horizon: int = 1,
        target_behaviour: int | None = None,
    ) -> WeightedRecentItems:
        weights = behaviour_repeat_weights(seq, train_end, n_behaviours, horizon, target_behaviour)
        return cls(weights, item_counts(seq, train_end, n_items, behaviour=target_behaviour), decay)

    def __call__(self, batch: Batch) -> torch.Tensor:
        b, v = len(batch), len(self.prior)
        w_b = self.weights[batch.behaviours]  # (B, L), 0 at padding
        evidence = torch.zeros(b, v).scatter_add_(1, batch.items, w_b * _recency(batch.items, self.decay))
        # membership counted apart from the (possibly underflowing) decayed evidence
        present = torch.zeros(b, v).scatter_add_(1, batch.items, (w_b > 0).float()) > 0
        return _tiered(evidence, present, self.prior)

    def state(self) -> dict[str, torch.Tensor]:
        """The fitted state as tensors (saved with a run that blends this baseline)."""
        return {"weights": self.weights, "prior": self.prior, "decay": torch.tensor(self.decay)}

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor]) -> WeightedRecentItems:
        out = cls.__new__(cls)
        out.weights, out.prior, out.decay = state["weights"].float(), state["prior"].float(), float(state["decay"])
        return out


def item_similarity(
    seq: Sequences, train_end: np.ndarray, n_items: int, window: int = 3, neighbours: int = 50
) -> torch.Tensor:
    """(n_items + 1, n_items + 1) sparse (coalesced COO) item-item similarity from training events.

    c(i, j) = number of pairs of training events of the same user at most ``window`` events apart,
    one on i and one on j (i != j, both orders); sim(i, j) = c(i, j) / sqrt(n_i * n_j) with n_i the
    item's training count (cosine-like: popular items do not neighbour everything). Each row keeps its
    ``neighbours`` largest entries (ties at the cut: smaller item id). Never dense."""
    size = n_items + 1
    u, pairs = training_pairs(seq, train_end, size, window)
    src, dst = u // size, u % size
    n = item_counts(seq, train_end, n_items).astype(np.float64)
    sim = pairs / np.sqrt(n[src] * n[dst])
    order = np.lexsort((dst, -sim, src))  # by row, then strongest first, then smaller id
    src, dst, sim = src[order], dst[order], sim[order]
    keep = np.arange(len(src)) - np.searchsorted(src, src, side="left") < neighbours
    src, dst, sim = src[keep], dst[keep], sim[keep]
    index = torch.from_numpy(np.stack([src, dst]).astype(np.int64))
    return torch.sparse_coo_tensor(index, torch.from_numpy(sim).float(), (size, size), check_invariants=True).coalesce()


class CoOccurrence:
    """Item-kNN ("viewed together"), a discovery baseline: score(j) = sum over the last ``last`` history
    events (on item i, ``decay ** age`` each) of sim(i, j) (``item_similarity``, fitted on training
    events). An item earns nothing for being in the history itself, only through its neighbours;
    items without any neighbour in the history rank below by training popularity."""

    name = "co-occurrence"

    def __init__(
        self,
        seq: Sequences,
        train_end: np.ndarray,
        n_items: int,
        window: int = 3,
        neighbours: int = 50,
        last: int = 5,
        decay: float = 0.8,
        prior_counts: np.ndarray | None = None,
    ) -> None:
        self._set(item_similarity(seq, train_end, n_items, window, neighbours),
                  _prior(item_counts(seq, train_end, n_items) if prior_counts is None else prior_counts), last, decay)

    def _set(self, similarity: torch.Tensor, prior: torch.Tensor, last: int, decay: float) -> None:
        self.similarity = similarity
        src, self.col = similarity.indices()  # coalesced: sorted by row, so rows are contiguous runs
        self.val = similarity.values()
        per_row = torch.bincount(src, minlength=len(prior))
        self.crow = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(per_row, 0)])  # (V + 1,)
        self.prior = prior
        self.last = int(last)
        self.decay = float(decay)

    def state(self) -> dict[str, torch.Tensor]:
        """The fitted state as tensors (saved with a run that blends this baseline)."""
        return {"indices": self.similarity.indices(), "values": self.similarity.values(), "prior": self.prior,
                "last": torch.tensor(self.last), "decay": torch.tensor(self.decay, dtype=torch.float64)}

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor]) -> CoOccurrence:
        out = cls.__new__(cls)
        size = len(state["prior"])
        similarity = torch.sparse_coo_tensor(state["indices"], state["values"], (size, size),
                                             check_invariants=True).coalesce()
        out._set(similarity, state["prior"].float(), int(state["last"]), float(state["decay"]))
        return out

    def __call__(self, batch: Batch) -> torch.Tensor:
        recent = batch.items[:, -self.last :]  # (B, M)
        b, m = recent.shape
        v = len(self.prior)
        w = _recency(recent, self.decay).reshape(-1)
        query = recent.reshape(-1)
        row = torch.arange(b).repeat_interleave(m)
        real = query != PAD
        query, w, row = query[real], w[real], row[real]
        # gather every query item's neighbour run (CSR-style offsets) at once
        start = self.crow[query]
        lens = self.crow[query + 1] - start
        owner = torch.repeat_interleave(torch.arange(len(query)), lens)
        first = torch.cumsum(lens, 0) - lens
        entry = start[owner] + torch.arange(int(lens.sum())) - first[owner]
        r, c = row[owner], self.col[entry]
        evidence = torch.zeros(b, v).index_put_((r, c), w[owner] * self.val[entry], accumulate=True)
        present = torch.zeros(b, v, dtype=torch.bool)
        present[r, c] = True
        return _tiered(evidence, present, self.prior)


def item_categories(seq: Sequences, train_end: np.ndarray, n_items: int) -> np.ndarray:
    """(n_items + 1,) each item's category as read from its training events (the most frequent one
    when they disagree, then the smaller id); 0 = unknown or never in training."""
    mask = training_mask(seq, train_end) & (seq.categories != PAD)
    items = seq.items[mask].astype(np.int64)
    cats = seq.categories[mask].astype(np.int64)
    out = np.zeros(n_items + 1, dtype=np.int64)
    if len(items) == 0:
        return out
    width = int(cats.max()) + 1
    u, c = np.unique(items * width + cats, return_counts=True)
    it, ca = u // width, u % width
    order = np.lexsort((ca, -c, it))
    it, ca = it[order], ca[order]
    first = np.r_[True, it[1:] != it[:-1]]
    out[it[first]] = ca[first]
    return out


class CategoryPopularity:
    """Popular items of the categories the user just browsed: u(c) = sum of ``decay ** age`` over the
    history's events in category c (category 0 = unknown is ignored), score(j) = u(cat(j)) *
    count(j) / max count in cat(j), so the top item of the most recent category comes first. Items
    outside those categories (or without training count) rank below by training popularity.

    ``fit`` reads the item -> category map and the counts (of ``behaviour``, if given) from training
    events; both can be given instead."""

    name = "category popularity"

    def __init__(
        self, item_category: np.ndarray, counts: np.ndarray, decay: float = 0.9, prior_counts: np.ndarray | None = None
    ) -> None:
        cat = np.asarray(item_category, dtype=np.int64)
        c = np.asarray(counts, dtype=np.float64)
        top = np.zeros(int(cat.max(initial=0)) + 1)
        np.maximum.at(top, cat, c)
        within = np.divide(c, top[cat], out=np.zeros_like(c), where=top[cat] > 0)
        within[(cat == PAD)] = 0.0
        within[PAD] = 0.0
        self.item_category = torch.from_numpy(cat)  # (V,)
        self.within = torch.from_numpy(within).float()  # (V,) popularity relative to the category's top item
        self.n_categories = len(top)
        self.prior = _prior(c if prior_counts is None else prior_counts)
        self.decay = float(decay)

    @classmethod
    def fit(
        cls, seq: Sequences, train_end: np.ndarray, n_items: int, decay: float = 0.9, behaviour: int | None = None
    ) -> CategoryPopularity:
        return cls(item_categories(seq, train_end, n_items), item_counts(seq, train_end, n_items, behaviour), decay)

    def state(self) -> dict[str, torch.Tensor]:
        """The fitted state as tensors (saved with a run that blends this baseline)."""
        return {"item_category": self.item_category, "within": self.within, "prior": self.prior,
                "n_categories": torch.tensor(self.n_categories), "decay": torch.tensor(self.decay, dtype=torch.float64)}

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor]) -> CategoryPopularity:
        out = cls.__new__(cls)
        out.item_category, out.within = state["item_category"].long(), state["within"].float()
        out.prior, out.decay = state["prior"].float(), float(state["decay"])
        out.n_categories = int(state["n_categories"])
        largest = int(out.item_category.max()) if len(out.item_category) else 0
        if not len(out.item_category) == len(out.within) == len(out.prior) or largest >= out.n_categories:
            raise ValueError(f"category popularity state does not fit together: {len(out.item_category)} item "
                             f"categories (largest {largest}), {len(out.within)} within-category weights, "
                             f"{len(out.prior)} priors, {out.n_categories} categories")
        return out

    def __call__(self, batch: Batch) -> torch.Tensor:
        b = len(batch)
        cats = batch.categories
        known = (cats != PAD) & (cats < self.n_categories)  # a category never in training says nothing
        cats = torch.where(known, cats, torch.zeros_like(cats))
        weight = torch.zeros(b, self.n_categories).scatter_add_(1, cats, _recency(batch.items, self.decay) * known)
        seen = torch.zeros(b, self.n_categories).scatter_add_(1, cats, known.float()) > 0
        evidence = weight[:, self.item_category] * self.within  # (B, V)
        present = seen[:, self.item_category] & (self.within > 0)
        return _tiered(evidence, present, self.prior)


def repeat_targets(seq: Sequences, examples: EvalExamples) -> np.ndarray:
    """(E,) True where the example's target item is already in the user's full history before it
    (``[offsets[row], pos)``): a repeat target; False: an explore target."""
    rows, items = seen_pairs(seq, examples, np.arange(len(examples)))
    return repeat_mask(rows, items, seq.items[examples.pos])


def shop_baselines(
    seq: Sequences, train_end: np.ndarray, n_items: int, n_behaviours: int, behaviour: int | None = None,
    only: Collection[str] | None = None,
) -> dict[str, Callable[[Batch], torch.Tensor]]:
    """The heuristics a shop would try first, fitted on training events, reported beside every model:
    popularity, first-order Markov, the user's recent items weighted by behaviour and recency,
    item-to-item co-occurrence ("viewed together") and popularity within the recent categories.
    ``behaviour`` (a dense id) aims them at the next event of that type (e.g. purchases); ``only``
    fits just the named ones."""
    fits: dict[str, Callable[[], Callable[[Batch], torch.Tensor]]] = {
        "popularity": lambda: Popularity(item_counts(seq, train_end, n_items, behaviour=behaviour)),
        "markov": lambda: Markov(seq, train_end, n_items),
        "weighted recent items": lambda: WeightedRecentItems.fit(seq, train_end, n_items, n_behaviours,
                                                                 target_behaviour=behaviour),
        "co-occurrence": lambda: CoOccurrence(seq, train_end, n_items),
    }
    if int(seq.categories.max(initial=0)) > 0:  # only logs with categories
        fits["category popularity"] = lambda: CategoryPopularity.fit(seq, train_end, n_items, behaviour=behaviour)
    return {name: fit() for name, fit in fits.items() if only is None or name in only}
