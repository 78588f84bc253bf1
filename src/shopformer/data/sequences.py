"""Per-user event sequences as flat (ragged) numpy arrays.

All users' events are stored back to back, sorted by (user, time, file row); user ``u``'s
events are ``[offsets[u], offsets[u + 1])``. Every slice used by splits and batches is an
index computation on these arrays, so nothing loops over users in Python.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from shopformer.data import schema as S


@dataclass(frozen=True)
class Sequences:
    users: np.ndarray  # (U,) int32 dense user ids
    offsets: np.ndarray  # (U + 1,) int64
    items: np.ndarray  # (N,) int32, 1..n_items
    behaviours: np.ndarray  # (N,) int8, 1..n_behaviours
    times: np.ndarray  # (N,) int64 Unix seconds, or the within-user position when has_time is False
    categories: np.ndarray  # (N,) int32, 0 when unknown
    has_time: bool

    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def user_row_of_event(self) -> np.ndarray:
        """(N,) row index (0..U-1) of the user owning each flat event."""
        return np.repeat(np.arange(self.n_users), self.lengths)

    @classmethod
    def from_frame(cls, df: pl.DataFrame, has_time: bool) -> Sequences:
        """Build from encoded events already sorted by (user_idx, timestamp, row)."""
        users_col = df[S.USER_IDX].to_numpy()
        if len(users_col) and np.any(np.diff(users_col) < 0):
            raise ValueError("events must be sorted by user_idx (run `shopformer prepare`)")
        users, starts = np.unique(users_col, return_index=True)
        offsets = np.append(starts, len(users_col)).astype(np.int64)
        n = len(df)
        if has_time:
            times = df[S.TIME].to_numpy().astype(np.int64)
        else:  # order only: the within-user position stands in for time
            times = (np.arange(n) - np.repeat(offsets[:-1], np.diff(offsets))).astype(np.int64)
        cats = (
            df[S.CATEGORY_IDX].fill_null(0).to_numpy().astype(np.int32)
            if S.CATEGORY_IDX in df.columns
            else np.zeros(n, np.int32)
        )
        return cls(
            users=users.astype(np.int32),
            offsets=offsets,
            items=df[S.ITEM_IDX].to_numpy().astype(np.int32),
            behaviours=df[S.BEHAVIOUR_IDX].to_numpy().astype(np.int8),
            times=times,
            categories=cats,
            has_time=has_time,
        )

    @classmethod
    def from_lists(
        cls,
        items: list[list[int]],
        behaviours: list[list[int]],
        times: list[list[int]] | None,
        categories: list[list[int]] | None = None,
    ) -> Sequences:
        """Ragged Python lists (one list per history) -> Sequences; used at inference time."""
        lengths = np.array([len(x) for x in items], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)

        def flat(lists: list[list[int]] | None, dtype: type) -> np.ndarray:
            if lists is None:
                return np.zeros(int(lengths.sum()), dtype)
            return np.fromiter((v for x in lists for v in x), dtype=dtype, count=int(lengths.sum()))

        has_time = times is not None
        t = flat(times, np.int64) if has_time else np.arange(int(lengths.sum())) - np.repeat(offsets[:-1], lengths)
        return cls(
            users=np.arange(len(items), dtype=np.int32),
            offsets=offsets,
            items=flat(items, np.int32),
            behaviours=flat(behaviours, np.int8),
            times=t.astype(np.int64),
            categories=flat(categories, np.int32),
            has_time=has_time,
        )

    @classmethod
    def load(cls, dataset_dir: str | Path) -> Sequences:
        import json

        d = Path(dataset_dir)
        stats = json.loads((d / "stats.json").read_text())
        df = pl.read_parquet(d / "events.parquet")
        if "event_idx" in df.columns and S.BEHAVIOUR_IDX not in df.columns:  # prepared before 0.2: old name
            df = df.rename({"event_idx": S.BEHAVIOUR_IDX})
        return cls.from_frame(df, has_time=bool(stats.get("has_time", True)))


def gap_buckets(seq: Sequences, n_buckets: int) -> np.ndarray:
    """(N,) log2-scaled bucket of seconds since the user's previous event.

    0 is padding (never produced here), 1 means "no previous event", 2.. are
    ``2 + floor(log2(1 + gap))`` clipped to ``n_buckets - 1``. All ones without timestamps.
    """
    n = len(seq.items)
    out = np.ones(n, dtype=np.int64)
    if not seq.has_time or n == 0:
        return out
    gaps = np.diff(seq.times, prepend=seq.times[:1]).astype(np.float64)
    first = np.zeros(n, dtype=bool)
    first[seq.offsets[:-1][seq.lengths > 0]] = True
    b = 2 + np.floor(np.log2(1.0 + np.clip(gaps, 0, None))).astype(np.int64)
    out = np.where(first, 1, np.minimum(b, n_buckets - 1))
    return out


def training_mask(seq: Sequences, train_end: np.ndarray) -> np.ndarray:
    """(N,) True for events inside each user's training prefix (``train_end``: (U,) flat end offsets)."""
    pos = np.arange(len(seq.items))
    return pos < np.repeat(train_end, seq.lengths)


def training_pairs(seq: Sequences, train_end: np.ndarray, size: int, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of training events of one user at most ``window`` events apart, on different items.

    Returns (codes, counts): each ordered pair (a, b), both orders, coded ``a * size + b`` (sorted,
    unique), and how many such event pairs there are. One vectorised pass per distance; each pass is
    reduced before the next, so memory stays at one distance's pairs."""
    mask = training_mask(seq, train_end)
    rows = seq.user_row_of_event()
    items = seq.items.astype(np.int64)
    keys: list[np.ndarray] = [np.zeros(0, np.int64)]
    counts: list[np.ndarray] = [np.zeros(0, np.int64)]
    for d in range(1, min(window, len(items) - 1) + 1):
        ok = mask[:-d] & mask[d:] & (rows[:-d] == rows[d:]) & (items[:-d] != items[d:])
        a, b = items[:-d][ok], items[d:][ok]
        u, c = np.unique(np.concatenate([a * size + b, b * size + a]), return_counts=True)
        keys.append(u)
        counts.append(c)
    codes, inv = np.unique(np.concatenate(keys), return_inverse=True)
    return codes, np.bincount(inv, weights=np.concatenate(counts), minlength=len(codes)).astype(np.int64)
