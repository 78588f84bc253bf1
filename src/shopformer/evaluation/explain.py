"""Why a user sees an item: attribution of a recommended item's score to the history's events,
and the deletion test that checks an attribution is faithful.

* ``occlusion``: an event's weight is how much the item's score drops when that event is removed
  from the history (the window then reaches one event further back, and the next event's time gap
  is recomputed, exactly as if the user had never done it). One forward pass scores every
  leave-one-out copy of every history, for all the asked items at once.
* ``gradient_x_input``: the gradient of the score with respect to each input item embedding, dotted
  with that embedding (one backward pass; it sees the item-embedding path only, not e.g. the
  repeat pointer of the task heads).
* ``deletion_test``: remove the top-k attributed events and k random ones; a faithful method drops
  the score more for the former. Mean gap with a bootstrap CI over histories.

Histories are the rows of a ``Sequences`` (each row one user's events, oldest first); only events
in the model's window (the last ``model.max_len``) get a weight — older events cannot change the
score except by shifting into the window, which removing a window event models. Scores are the
model's own (``SequenceModel.score_all``), before any blend with a baseline.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from shopformer.data.batches import Batch, EventArrays
from shopformer.data.schema import PAD
from shopformer.data.sequences import Sequences
from shopformer.models.base import SequenceModel


@dataclass(frozen=True)
class Attribution:
    """``values[b, k, j]``: weight of history ``b``'s window event ``j`` for its ``k``-th item;
    ``events[b, j]``: that event's flat index in the input ``Sequences`` (-1: no event, value NaN)."""

    values: np.ndarray  # (B, K, L) float
    events: np.ndarray  # (B, L) int64

    def top(self, b: int, k: int = 0, n: int = 3) -> list[tuple[int, float]]:
        """The ``n`` events that raised item ``k``'s score most for history ``b``: (flat index, weight),
        positive weights only, largest first."""
        v = self.values[b, k]
        order = [int(j) for j in np.argsort(-np.nan_to_num(v, nan=-np.inf), kind="stable")[:n]]
        return [(int(self.events[b, j]), float(v[j])) for j in order if self.events[b, j] >= 0 and v[j] > 0]


def window_events(seq: Sequences, max_len: int) -> np.ndarray:
    """(B, max_len) flat index of each row's last ``max_len`` events, right-aligned, -1 = padding."""
    ends, starts = seq.offsets[1:], seq.offsets[:-1]
    idx = ends[:, None] - max_len + np.arange(max_len)[None, :]
    return np.where(idx >= starts[:, None], idx, -1)


def without_events(seq: Sequences, owner: np.ndarray, removed: np.ndarray, n_time_buckets: int,
                   max_len: int) -> Batch:
    """One row per copy: history ``owner[c]`` without the flat events ``removed[c]`` (C, R; -1 =
    none), cut to its last ``max_len`` events, its time gaps recomputed after the removal."""
    ends, starts = seq.offsets[1:][owner], seq.offsets[:-1][owner]
    span = max_len + 1 + removed.shape[1]  # +1: the event before the window sets the first gap
    idx = ends[:, None] - 1 - np.arange(span)[None, :]  # newest first
    keep = (idx >= starts[:, None]) & ~(idx[:, :, None] == removed[:, None, :]).any(-1)
    keep &= np.cumsum(keep, 1) <= max_len + 1
    idx, keep = idx[:, ::-1], keep[:, ::-1]  # oldest first
    flat = idx[keep]
    lengths = keep.sum(1)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    copies = Sequences(np.arange(len(owner), dtype=np.int32), offsets, seq.items[flat], seq.behaviours[flat],
                       seq.times[flat], seq.categories[flat], seq.has_time)
    w = EventArrays.from_sequences(copies, n_time_buckets).windows(offsets[1:], offsets[:-1], max_len)
    return Batch(**{k: torch.from_numpy(v) for k, v in w.items()})


def _item_scores(model: SequenceModel, batch: Batch, items: np.ndarray, behaviour: int | None) -> np.ndarray:
    """(C, K) the model's score of each row's items."""
    idx = torch.from_numpy(items.astype(np.int64))
    with torch.inference_mode():
        if model.heads is None and type(model).score_all is SequenceModel.score_all:
            # the plain contract: score = last_hidden . item vector; no need to score the whole catalogue
            return (model.last_hidden(batch).unsqueeze(1) * model.output_embeddings()[idx]).sum(-1).float().numpy()
        scores = model.score_all(batch, behaviour).float()
        return scores.gather(1, idx).numpy()


def _score_copies(model: SequenceModel, seq: Sequences, owner: np.ndarray, removed: np.ndarray,
                  items: np.ndarray, n_time_buckets: int, behaviour: int | None, max_rows: int) -> np.ndarray:
    """(C, K) scores of ``items[owner[c]]`` on each copy, in chunks of ``max_rows`` copies."""
    out = np.empty((len(owner), items.shape[1]), np.float32)
    for i in range(0, len(owner), max_rows):
        sl = slice(i, i + max_rows)
        batch = without_events(seq, owner[sl], removed[sl], n_time_buckets, model.max_len)
        out[sl] = _item_scores(model, batch, items[owner[sl]], behaviour)
    return out


def occlusion(model: SequenceModel, seq: Sequences, items: np.ndarray, n_time_buckets: int,
              behaviour: int | None = None, max_rows: int = 512, recent: int | None = None) -> Attribution:
    """Score drop of each history's ``items`` (B, K dense ids) when each window event is removed.

    The full histories and every leave-one-out copy go through the model together (in chunks of
    ``max_rows`` rows; a row costs one catalogue of scores in memory), so B histories of L events
    cost about B * (L + 1) rows of one forward pass. ``recent``: occlude only each history's last
    ``recent`` events (the older window events keep NaN weights; they still feed every copy)."""
    items = np.asarray(items, np.int64).reshape(seq.n_users, -1)
    events = window_events(seq, model.max_len)
    occluded = events >= 0
    if recent is not None:
        if recent < 1:
            raise ValueError(f"recent must be >= 1 (got {recent})")
        occluded[:, :max(model.max_len - recent, 0)] = False
    b, j = np.nonzero(occluded)
    owner = np.concatenate([np.arange(seq.n_users), b])
    removed = np.concatenate([np.full(seq.n_users, -1), events[b, j]])[:, None]
    scores = _score_copies(model, seq, owner, removed, items, n_time_buckets, behaviour, max_rows)
    full, loo = scores[:seq.n_users], scores[seq.n_users:]
    values = np.full((seq.n_users, items.shape[1], model.max_len), np.nan, np.float32)
    values[b, :, j] = full[b] - loo
    return Attribution(values, events)


def gradient_x_input(model: SequenceModel, seq: Sequences, items: np.ndarray, n_time_buckets: int,
                     behaviour: int | None = None) -> Attribution:
    """Gradient of each item's score with respect to each input item embedding, dotted with it."""
    items = np.asarray(items, np.int64).reshape(seq.n_users, -1)
    events = window_events(seq, model.max_len)
    batch = without_events(seq, np.arange(seq.n_users), np.full((seq.n_users, 1), -1), n_time_buckets,
                           model.max_len)
    captured: list[torch.Tensor] = []

    def keep(_: torch.nn.Module, __: tuple, out: torch.Tensor) -> torch.Tensor:
        out.retain_grad()
        captured.append(out)
        return out

    values = np.full((seq.n_users, items.shape[1], model.max_len), np.nan, np.float32)
    was_training = model.training
    model.eval()
    try:
        for k in range(items.shape[1]):
            captured.clear()
            handle = model.item_emb.register_forward_hook(keep)
            try:
                with torch.enable_grad():
                    scores = model.score_all(batch, behaviour)
                    scores.gather(1, torch.from_numpy(items[:, k:k + 1])).sum().backward()
            finally:
                handle.remove()
            model.zero_grad(set_to_none=True)
            emb = next(e for e in captured if e.shape[:2] == batch.items.shape and e.grad is not None)
            assert emb.grad is not None
            g = (emb.grad * emb).sum(-1).detach().float().numpy()  # (B, L)
            values[:, k] = np.where(batch.items.numpy() != PAD, g, np.nan)
    finally:
        model.train(was_training)
    return Attribution(values, events)


# Verbs for common behaviour names of public logs (Taobao, RetailRocket, REES46, CIKM, ...); any
# other name (an open vocabulary) reads as itself: "return_request X".
_VERBS = {"pv": "viewed", "view": "viewed", "click": "clicked", "cart": "carted", "addtocart": "carted",
          "add_to_cart": "carted", "remove_from_cart": "removed from cart", "fav": "favourited",
          "favorite": "favourited", "buy": "bought", "purchase": "bought", "transaction": "bought",
          "search": "searched for"}


def describe_events(events: list[tuple[str, str | None]]) -> str:
    """'because you viewed X and carted Y': (item, behaviour name or None) pairs, strongest first
    (a pair repeated, e.g. two views of one item, is named once); '' for none."""
    if not events:
        return ""
    parts = [f"{_VERBS.get(b.lower(), b) if b else 'interacted with'} {item}" for item, b in dict.fromkeys(events)]
    body = parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} and {parts[-1]}"
    return f"because you {body}"


Method = Callable[[SequenceModel, Sequences, np.ndarray, int, int | None], Attribution]
METHODS: dict[str, Method] = {"occlusion": occlusion, "gradient_x_input": gradient_x_input}


def bootstrap_mean(x: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict[str, float]:
    """Mean of ``x`` with a percentile bootstrap CI."""
    x = np.asarray(x, np.float64)
    if len(x) == 0:
        return {"mean": float("nan"), "lo": float("nan"), "hi": float("nan"), "n": 0}
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), (n_boot, len(x)))].mean(1) if n_boot else np.array([x.mean()])
    a = (1 - level) / 2
    return {"mean": float(x.mean()), "lo": float(np.quantile(means, a)), "hi": float(np.quantile(means, 1 - a)),
            "n": len(x)}


def deletion_test(model: SequenceModel, seq: Sequences, items: np.ndarray, n_time_buckets: int,
                  method: str = "occlusion", k: int = 1, behaviour: int | None = None, seed: int = 0,
                  n_boot: int = 1000, max_rows: int = 512, recent: int | None = None,
                  attribution: Attribution | None = None) -> dict:
    """Remove each history's top-``k`` attributed events (for its item ``items[b]``) and ``k``
    random window events; the gap of the score drops (top minus random), mean and bootstrap CI.

    Histories with no more than ``k`` window events are left out (top and random would coincide).
    ``recent`` (occlusion only, >= k): the attribution weighs only the last ``recent`` events, as
    served with a capped window; the random events are still drawn from the whole window.
    ``attribution``: the method's result for these histories and items, computed once and shared by
    several ``k`` (it is not recomputed)."""
    if method not in METHODS:
        raise ValueError(f"unknown attribution method {method!r}; known: {', '.join(METHODS)}")
    items = np.asarray(items, np.int64).reshape(-1, 1)
    if attribution is not None:
        attr = attribution
    elif recent is not None:
        if method != "occlusion" or recent < k:
            raise ValueError(f"recent={recent} needs method 'occlusion' and recent >= k ({k})")
        attr = occlusion(model, seq, items, n_time_buckets, behaviour, max_rows, recent=recent)
    else:
        attr = METHODS[method](model, seq, items, n_time_buckets, behaviour)
    events = attr.events
    n_events = (events >= 0).sum(1)
    rows = np.flatnonzero(n_events > k)
    rng = np.random.default_rng(seed)
    v = np.where(events[rows] >= 0, np.nan_to_num(attr.values[rows, 0], nan=-np.inf), -np.inf)
    top = np.take_along_axis(events[rows], np.argsort(-v, 1, kind="stable")[:, :k], 1)
    noise = np.where(events[rows] >= 0, rng.random(events[rows].shape), -1.0)
    rand = np.take_along_axis(events[rows], np.argsort(-noise, 1)[:, :k], 1)
    owner = np.concatenate([rows, rows, rows])
    removed = np.concatenate([np.full((len(rows), k), -1), top, rand])
    s = _score_copies(model, seq, owner, removed, items, n_time_buckets, behaviour, max_rows)[:, 0]
    n = len(rows)
    drop_top, drop_rand = s[:n] - s[n:2 * n], s[:n] - s[2 * n:]
    gap = drop_top - drop_rand
    return {"method": method, "k": k, "recent": recent, "gap": bootstrap_mean(gap, n_boot, seed),
            "drop_top": float(drop_top.mean()) if n else float("nan"),
            "drop_random": float(drop_rand.mean()) if n else float("nan"),
            "share_top_larger": float((gap > 0).mean()) if n else float("nan"), "n": n}
