"""What every application reads at a cut-off time ``t``: each user's history up to ``t``, the
model's state after it (the same windows the recommender builds, in batches, no per-user loop),
recency / frequency / monetary features, and counts of what happened in ``(t, t + T]``.

Histories are the prepared data set's flat arrays (``Sequences``): user ``u``'s history at ``t`` is
``[offsets[u], ends[u])`` with ``ends[u]`` the first event after ``t`` (events are sorted by time
within a user), so a feature or a model state at ``t`` can never read an event after it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from shopformer.artifacts import Run
from shopformer.data.batches import Batch, EventArrays, history_batches
from shopformer.data.corpus import Dataset
from shopformer.data.schema import PAD
from shopformer.data.sequences import Sequences
from shopformer.data.split import EvalExamples, resolve_boundary
from shopformer.models.base import SequenceModel

DAY = 86400


def check_compatible(run: Run, ds: Dataset) -> None:
    """Refuse a data set whose item / behaviour ids the run does not share (its dense ids would
    silently mean other items)."""
    for name in ("items", "behaviours"):
        if getattr(run.vocabs, name).tokens != getattr(ds.vocabs, name).tokens:
            raise ValueError(f"{ds.path}: its {name} vocabulary differs from run {run.path}'s; use the data set "
                             "the run was trained on (or one prepared with the same vocabulary)")
    if not ds.seq.has_time:
        raise ValueError(f"{ds.path}: the applications need event timestamps; this data set has event order only")


def resolve_time(seq: Sequences, value: float | None, default: int) -> int:
    """A cut-off given as Unix seconds or a quantile of event times (``resolve_boundary``); None: ``default``."""
    return default if value is None else resolve_boundary(seq, value)


def data_span(seq: Sequences) -> tuple[int, int]:
    """(start, end) of the data: the last event time, and the 0.1% quantile of event times as the
    start (real logs hold a few stray timestamps weeks before the rest, e.g. the Taobao slice)."""
    return int(np.quantile(seq.times, 0.001, method="lower")), int(seq.times.max())


def count_until(seq: Sequences, t: int, mask: np.ndarray | None = None) -> np.ndarray:
    """(U,) per user: how many events (where ``mask``) happened at or before ``t``."""
    hit = seq.times <= t if mask is None else (seq.times <= t) & mask
    csum = np.concatenate([[0], np.cumsum(hit, dtype=np.int64)])
    return csum[seq.offsets[1:]] - csum[seq.offsets[:-1]]


def history_ends(seq: Sequences, t: int) -> np.ndarray:
    """(U,) flat exclusive end of each user's history at ``t`` (== start: no event yet)."""
    return seq.offsets[:-1] + count_until(seq, t)


def count_between(seq: Sequences, lo: int, hi: int, mask: np.ndarray | None = None) -> np.ndarray:
    """(U,) per user: events (where ``mask``) in ``(lo, hi]``."""
    return count_until(seq, hi, mask) - count_until(seq, lo, mask)


@dataclass(frozen=True)
class Snapshot:
    """The users with at least one event at or before ``t``, and where their history ends."""

    t: int
    rows: np.ndarray  # (n,) user rows 0..U-1
    ends: np.ndarray  # (n,) flat exclusive end of the history at t

    def __len__(self) -> int:
        return len(self.rows)


def snapshot(seq: Sequences, t: int, active_days: float | None = None) -> Snapshot:
    """Users with history at ``t``; with ``active_days``, only those with an event in the last days."""
    ends = history_ends(seq, t)
    keep = ends > seq.offsets[:-1]
    if active_days is not None:
        keep &= count_between(seq, int(t - active_days * DAY), t) > 0
    rows = np.flatnonzero(keep)
    return Snapshot(t, rows, ends[rows])


RFM_NAMES = ("log_recency_days", "log_events", "log_events_last_period", "log_tenure_days", "log_target_events",
             "log_days_since_target", "target_share")


def rfm_features(seq: Sequences, snap: Snapshot, period_days: float, target: int) -> np.ndarray:
    """(n, 7) recency / frequency / monetary features at the snapshot (``RFM_NAMES``). Logs don't
    carry prices, so the monetary part is the number of target-behaviour events (purchases)."""
    rows, ends, t = snap.rows, snap.ends, snap.t
    starts = seq.offsets[:-1][rows]
    last_t, first_t = seq.times[ends - 1], seq.times[starts]
    n_events = ends - starts
    recent = count_between(seq, int(t - period_days * DAY), t)[rows]
    is_target = seq.behaviours == target
    n_target = count_until(seq, t, is_target)[rows]
    last_target = _last_marked_time(seq, ends, rows, is_target)
    tenure = (t - first_t) / DAY
    since_target = np.where(n_target > 0, (t - last_target) / DAY, tenure + period_days)
    return np.stack([
        np.log1p(np.maximum(t - last_t, 0) / DAY), np.log1p(n_events), np.log1p(recent), np.log1p(tenure),
        np.log1p(n_target), np.log1p(since_target), n_target / np.maximum(n_events, 1),
    ], 1).astype(np.float64)


def _last_marked_time(seq: Sequences, ends: np.ndarray, rows: np.ndarray, mark: np.ndarray) -> np.ndarray:
    """(n,) time of each row's last marked event before its end (0 when none)."""
    if len(rows) == 0:
        return np.zeros(0, np.int64)
    last = np.maximum.accumulate(np.where(mark, np.arange(len(mark)), -1))  # last marked flat index so far
    prev = last[ends - 1]
    ok = prev >= seq.offsets[:-1][rows]  # the marked event belongs to this user, not an earlier one
    return np.where(ok, seq.times[np.maximum(prev, 0)], 0)


def model_batches(seq: Sequences, arrays: EventArrays, snap: Snapshot, max_len: int,
                  batch_size: int = 512) -> Iterator[tuple[np.ndarray, Batch]]:
    """(positions into the snapshot, Batch of the last ``max_len`` events of each history), sorted by
    length so that each batch is only as wide as its longest history (``history_batches``)."""
    yield from history_batches(seq, arrays, EvalExamples(snap.rows, snap.ends), max_len, batch_size, by_length=True)


@dataclass(frozen=True)
class ModelState:
    """What the model says about each snapshot user (rows in snapshot order)."""

    vector: np.ndarray  # (n, D) sequence-encoder state after the history (``SequenceModel.last_hidden``)
    action: np.ndarray | None  # (n, n_behaviours) next-action probabilities (behaviour ids 1..), or None
    intent: np.ndarray | None  # (n,) calibrated intent probability, or None

    def features(self) -> np.ndarray:
        parts = [self.vector] + [p.reshape(len(self.vector), -1) for p in (self.action, self.intent) if p is not None]
        return np.concatenate(parts, 1)


def head_outputs(model: SequenceModel, batch: Batch, hidden: torch.Tensor | None = None
                 ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(B, n_behaviours) next-action probabilities and (B,) calibrated intent of a batch, each None
    when the model lacks that head (``hidden``: the batch's ``model.encode``, when already computed).
    Call under ``torch.inference_mode``."""
    heads = model.heads
    if heads is None or not {"action", "intent"} & set(heads.parts):
        return None, None
    feats = model.head_features(batch, hidden)
    action = torch.softmax(heads.action_logits(feats).float(), -1)[:, PAD + 1:].numpy() \
        if "action" in heads.parts else None
    intent = heads.calibrated(heads.intent_logit(feats)).float().numpy() if "intent" in heads.parts else None
    return action, intent


def model_state(run: Run, ds: Dataset, snap: Snapshot, batch_size: int = 512) -> ModelState:
    """The encoder state (and the heads' next-action / intent outputs, when the run has them)."""
    model = run.model.eval()
    arrays = EventArrays.from_sequences(ds.seq, run.config.model.time_buckets)
    vec = np.zeros((len(snap), run.config.model.dim), np.float32)
    action = intent = None
    with torch.inference_mode():
        for sel, batch in model_batches(ds.seq, arrays, snap, model.max_len, batch_size):
            vec[sel] = model.last_hidden(batch).float().numpy()
            a, i = head_outputs(model, batch)
            if a is not None:
                action = np.zeros((len(snap), a.shape[1]), np.float32) if action is None else action
                action[sel] = a
            if i is not None:
                intent = np.zeros(len(snap), np.float32) if intent is None else intent
                intent[sel] = i
    return ModelState(vec, action, intent)
