"""Train / validation / test splits without leakage. Pure functions of ``Sequences``.

An evaluation example is one flat event index ``pos`` (the target); its history is every
earlier event of the same user, ``[offsets[u], pos)``, so a prediction can never see the
target or anything after it. Training uses each user's prefix ``[offsets[u], train_end[u])``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from shopformer.config import Config
from shopformer.data.sequences import Sequences


@dataclass(frozen=True)
class EvalExamples:
    rows: np.ndarray  # (E,) user row (0..U-1)
    pos: np.ndarray  # (E,) flat index of the target event; history is [offsets[row], pos)

    def __len__(self) -> int:
        return len(self.rows)

    def head(self, n: int | None) -> EvalExamples:
        return self if n is None else EvalExamples(self.rows[:n], self.pos[:n])


@dataclass(frozen=True)
class Split:
    train_end: np.ndarray  # (U,) exclusive flat end of each user's training events
    valid: EvalExamples
    test: EvalExamples
    excluded: dict[str, int] = field(default_factory=dict)
    # (U,) exclusive end once model selection is over (``train.refit``): the validation events
    # join the training data, nothing at or after a test target does. None = train_end.
    refit_end: np.ndarray | None = None
    warnings: tuple[str, ...] = ()  # plain-words problems of this split (see ``split_warnings``)

    def training_end(self, refit: bool = False) -> np.ndarray:
        return self.refit_end if refit and self.refit_end is not None else self.train_end


def _last_candidates(seq: Sequences, mask: np.ndarray, k: int) -> np.ndarray:
    """(U,) flat index of each user's k-th last event where mask is True, -1 if none.

    Vectorised: cumulative counts of candidates from the end of each user's segment.
    """
    rows = seq.user_row_of_event()
    m = mask.astype(np.int64)
    # reverse cumulative count within each user: how many candidates at or after each event
    csum = np.cumsum(m[::-1])[::-1]
    seg_end = seq.offsets[1:]
    after = csum - np.append(csum, 0)[seg_end[rows]]
    hit = mask & (after == k)
    out = np.full(seq.n_users, -1, dtype=np.int64)
    out[rows[hit]] = np.flatnonzero(hit)
    return out


def leave_one_out(seq: Sequences, target_behaviour: int | None = None) -> Split:
    """Last target event -> test, second-to-last -> validation, everything before -> train.

    With ``target_behaviour`` the targets are the user's last two events of that type
    (e.g. purchases) and all behaviour before them is context.
    """
    mask = np.ones(len(seq.items), bool) if target_behaviour is None else seq.behaviours == target_behaviour
    test_pos = _last_candidates(seq, mask, 1)
    valid_pos = _last_candidates(seq, mask, 2)
    starts = seq.offsets[:-1]
    train_end = np.where(valid_pos >= 0, valid_pos, np.where(test_pos >= 0, test_pos, seq.offsets[1:]))
    ok_valid = (valid_pos >= 0) & (valid_pos > starts)  # needs a non-empty history
    ok_test = test_pos >= 0
    rows = np.arange(seq.n_users)
    excluded = {
        "valid_no_target_or_history": int((~ok_valid).sum()),
        "test_no_target": int((~ok_test).sum()),
    }
    return Split(
        train_end=train_end.astype(np.int64),
        valid=EvalExamples(rows[ok_valid], valid_pos[ok_valid]),
        test=EvalExamples(rows[ok_test & ok_valid], test_pos[ok_test & ok_valid]),
        excluded=excluded,
        refit_end=np.where(valid_pos >= 0, valid_pos + 1, train_end).astype(np.int64),
    )


def resolve_boundary(seq: Sequences, value: float) -> int:
    """A boundary strictly between 0 and 1 is a quantile of event times (the time before which that
    share of all events happened, not a fraction of the time range); anything else is Unix seconds."""
    if 0.0 < value < 1.0:
        return int(np.quantile(seq.times, value, method="lower"))
    return int(value)


def temporal_split(
    seq: Sequences, t1: int, t2: int, target_behaviour: int | None = None
) -> Split:
    """Global temporal split: train < t1 <= validation < t2 <= test.

    Each user contributes at most one validation example (the first target event in
    [t1, t2)) and one test example (the first target event at or after t2). Histories are cut
    at the prediction time: every event before the target, including earlier events in the
    same window, and never anything after it.
    """
    if not t1 < t2:
        raise ValueError(f"temporal split needs valid_start < test_start, got {t1} >= {t2}")
    times = seq.times
    is_target = np.ones(len(times), bool) if target_behaviour is None else seq.behaviours == target_behaviour
    rows = seq.user_row_of_event()
    starts = seq.offsets[:-1]

    def first_in(mask: np.ndarray) -> np.ndarray:
        out = np.full(seq.n_users, -1, dtype=np.int64)
        idx = np.flatnonzero(mask)
        # first occurrence per user: reverse assignment keeps the smallest index
        out[rows[idx[::-1]]] = idx[::-1]
        return out

    valid_pos = first_in(is_target & (times >= t1) & (times < t2))
    test_pos = first_in(is_target & (times >= t2))
    # train_end: first event at/after t1 (all earlier events are training data)
    first_after = first_in(times >= t1)
    train_end = np.where(first_after >= 0, first_after, seq.offsets[1:])
    first_test = first_in(times >= t2)
    refit_end = np.where(first_test >= 0, first_test, seq.offsets[1:])  # the whole validation window
    ok_valid = (valid_pos >= 0) & (valid_pos > starts)
    ok_test = (test_pos >= 0) & (test_pos > starts)
    all_rows = np.arange(seq.n_users)
    excluded = {
        "valid_no_target_or_history": int((~ok_valid).sum()),
        "test_no_target_or_history": int((~ok_test).sum()),
    }
    return Split(
        train_end=train_end.astype(np.int64),
        valid=EvalExamples(all_rows[ok_valid], valid_pos[ok_valid]),
        test=EvalExamples(all_rows[ok_test], test_pos[ok_test]),
        excluded=excluded,
        refit_end=refit_end.astype(np.int64),
    )


def intent_labels_after(
    seq: Sequences, end: np.ndarray, target: int, horizon: int, seconds: int | None = None,
    end_time: int | None = None,
) -> np.ndarray:
    """(N,) int8 label of a prediction made right after flat event i: 1 if the target behaviour
    occurs among events i+1 .. i+horizon, 0 if not, -1 (unknown) if those events are not all
    before ``end[user]`` (exclusive flat bound: the end of the window the labels may read).

    With ``seconds``: 1 if a target event (before ``end[user]``) follows within ``seconds`` of
    event i's time, 0 if none does and that whole period lies before ``end_time`` (the time the
    labels may read up to; None = the last event's time + 1), -1 (censored) otherwise."""
    n = len(seq.items)
    rows = seq.user_row_of_event()
    idx = np.arange(n)
    bound = np.asarray(end, dtype=np.int64)[rows]  # (N,)
    if seconds is not None:
        return _intent_labels_by_time(seq, rows, bound, target, seconds, end_time)
    hit = ((seq.behaviours == target) & (idx < bound)).astype(np.int64)
    csum = np.concatenate([[0], np.cumsum(hit)])  # csum[j] = hits among events < j
    last = idx + horizon  # the horizon's last event
    known = last < bound
    count = csum[np.minimum(last + 1, n)] - csum[idx + 1]
    return np.where(known, (count > 0).astype(np.int8), np.int8(-1)).astype(np.int8)


def _intent_labels_by_time(
    seq: Sequences, rows: np.ndarray, bound: np.ndarray, target: int, seconds: int, end_time: int | None
) -> np.ndarray:
    n = len(seq.items)
    idx = np.arange(n)
    t = seq.times.astype(np.int64)
    hits = np.flatnonzero((seq.behaviours == target) & (idx < bound))  # sorted flat indices
    # the first target event after i; it counts only inside i's own user (before the user's end)
    j = np.searchsorted(hits, idx, side="right")
    nxt = np.append(hits, n)[j]
    found = nxt < seq.offsets[1:][rows]
    within = found & (t[np.minimum(nxt, max(n - 1, 0))] - t <= seconds)
    limit = (int(t.max()) + 1 if n else 0) if end_time is None else int(end_time)
    known = within | (t + seconds < limit)
    return np.where(known, within.astype(np.int8), np.int8(-1)).astype(np.int8)


@dataclass(frozen=True)
class Window:
    """One evaluation window [lo, hi) of event times, and the flat bound its labels may read."""

    name: str
    lo: int
    hi: int | None  # None: open-ended (test)
    label_end: np.ndarray  # (U,) exclusive flat index: first event at/after ``hi`` (or the user's end)


def make_windows(seq: Sequences, cfg: Config) -> tuple[np.ndarray, Window, Window]:
    """(train_end, validation window, test window) of the global temporal split."""
    t1 = resolve_boundary(seq, float(cfg.split.valid_start))  # type: ignore[arg-type]
    t2 = resolve_boundary(seq, float(cfg.split.test_start))  # type: ignore[arg-type]
    if not t1 < t2:
        raise ValueError(f"temporal split needs valid_start < test_start, got {t1} >= {t2}")
    train_end = _first_at_or_after(seq, t1)
    return train_end, Window("valid", t1, t2, _first_at_or_after(seq, t2)), Window("test", t2, None, seq.offsets[1:])


def _first_at_or_after(seq: Sequences, t: int) -> np.ndarray:
    """(U,) flat index of each user's first event with time >= t (the user's end if none)."""
    out = seq.offsets[1:].copy()
    idx = np.flatnonzero(seq.times >= t)
    rows = seq.user_row_of_event()[idx]
    out[rows[::-1]] = idx[::-1]  # reverse assignment keeps the smallest index per user
    return out.astype(np.int64)


def window_examples(seq: Sequences, w: Window, behaviour: int | None = None) -> tuple[EvalExamples, dict[str, int]]:
    """Every event in the window (of one behaviour type, if given) with a non-empty history.

    Returns the examples and the exclusions: users active in the window without such an event,
    and events without any earlier event of the user.
    """
    t = seq.times
    in_w = (t >= w.lo) if w.hi is None else (t >= w.lo) & (t < w.hi)
    rows = seq.user_row_of_event()
    pos = np.flatnonzero(in_w & (True if behaviour is None else seq.behaviours == behaviour))
    has_history = pos > seq.offsets[:-1][rows[pos]]
    active = np.unique(rows[in_w])
    with_target = np.unique(rows[pos])
    excluded = {
        "users_in_window_without_event": int(len(np.setdiff1d(active, with_target))),
        "events_without_history": int((~has_history).sum()),
    }
    pos = pos[has_history]
    return EvalExamples(rows[pos].astype(np.int64), pos.astype(np.int64)), excluded


def intent_examples(
    seq: Sequences, w: Window, target: int, horizon: int, seconds: int | None = None
) -> tuple[EvalExamples, np.ndarray, dict[str, int]]:
    """Prediction points before each event of the window, their labels, and the censored count
    (``seconds``: the horizon in time, see ``intent_labels_after``)."""
    ex, excluded = window_examples(seq, w)
    labels = intent_labels_after(seq, w.label_end, target, horizon, seconds, w.hi)[ex.pos - 1]  # after event p - 1
    known = labels >= 0
    excluded = {**excluded, "censored_horizon": int((~known).sum())}
    return EvalExamples(ex.rows[known], ex.pos[known]), labels[known].astype(np.int64), excluded


def subsample(ex: EvalExamples, n: int | None, seed: int = 0) -> EvalExamples:
    """At most ``n`` examples, drawn uniformly without replacement (seeded), in their original order."""
    if n is None or len(ex) <= n:
        return ex
    keep = np.sort(np.random.default_rng(seed).choice(len(ex), n, replace=False))
    return EvalExamples(ex.rows[keep], ex.pos[keep])


def split_warnings(n_valid: int, n_test: int, minimum: int, what: str = "targets") -> list[str]:
    """Plain-words warnings for a split too small to measure anything; an error when one side is empty."""
    if n_valid == 0 or n_test == 0:
        raise ValueError(f"the split leaves {n_valid} validation and {n_test} test {what}: move the split points "
                         "(split.valid_start / split.test_start are quantiles of event times when in (0, 1))")
    return [f"only {n} {side} {what} (fewer than split.min_targets = {minimum}): its metrics are noise; move the "
            "split points or use more data" for side, n in (("validation", n_valid), ("test", n_test)) if n < minimum]
