"""What the running service learns about its model from live traffic: the online hit rate of the
lists it served, and drift of the events it ingests against the model's training data.

**Online hit rate.** Each list answered to ``GET /v1/users/{user}/recommendations`` is logged in
the state store (user, server time, item ids; at most ``served_keep`` per user, none older than
``served_retention_s``, deleted with the user). When a user's next event arrives, the lists served
to that user before it are taken out of the store: if any was served within ``online_window_s``
before the event, the event is a *hit* when its item is on one of them, else a *miss*; lists older
than the window are counted as *expired*. ``shopformer_online_hit_rate`` = hits / (hits + misses)
since the service started (``rate()`` of ``shopformer_online_next_events_total`` gives it per interval).
Logging and matching run in the background: no request waits for them.

**Drift** of the events ingested since the served model was loaded, against its training data
(``data/drift.py``): the share on items the model does not know, and the PSI and Jensen-Shannon
divergence of the behaviour mix. **Score drift**: the PSI of the top-1 scores of the latest
``SCORE_WINDOW`` model-ranked lists (fallbacks excluded) against the first ``SCORE_WINDOW`` after the
model was loaded (deciles of the reference; 0 until both windows are full).

The training mix is read from the served run's data set: the ``dataset/`` beside a registry
version's ``model/`` (``registry/current``), else the ``SHOPFORMER_DRIFT_REFERENCE`` data set
directory, else the run's recorded data set path; without one the two mix indicators are NaN.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import polars as pl

from shopformer.data import schema as S
from shopformer.data.drift import jensen_shannon, psi, score_bins
from shopformer.serving.metrics import Metrics
from shopformer.serving.settings import ServeSettings
from shopformer.serving.stored import ServedList, StoredEvent

log = logging.getLogger(__name__)

SCORE_WINDOW = 500  # lists in the reference and in the recent window of the score drift
Spawn = Callable[[Coroutine[Any, Any, Any]], "asyncio.Task[Any]"]


class ServedLog(Protocol):
    """The part of a state store the hit rate needs (both stores implement it)."""

    async def log_served(self, user_id: str, ts: int, items: list[str], keep: int, retention_s: int) -> None: ...

    async def take_served(self, user_id: str, until: int) -> list[ServedList]: ...


@dataclass
class Outcome:
    hits: int = 0  # next events on an item of a list served within the window before them
    misses: int = 0  # next events after such a list, on another item
    expired: int = 0  # lists whose user's next event came later than the window

    def add(self, other: Outcome) -> None:
        self.hits, self.misses, self.expired = (self.hits + other.hits, self.misses + other.misses,
                                                self.expired + other.expired)


def match_served(lists: list[ServedList], events: list[tuple[int, str]], window_s: int) -> Outcome:
    """One user's served ``lists`` (oldest first) against that user's new ``events`` ((timestamp,
    item), in time order): each list is settled by the first event at or after it."""
    out, i = Outcome(), 0
    for ts, item in events:
        pending = []
        while i < len(lists) and lists[i].timestamp <= ts:
            pending.append(lists[i])
            i += 1
        if not pending:
            continue
        recent = [s for s in pending if ts - s.timestamp <= window_s]
        out.expired += len(pending) - len(recent)
        if recent:
            if any(item in s.items for s in recent):
                out.hits += 1
            else:
                out.misses += 1
    return out


def reference_dataset(run_dir: Path, configured: Path | None) -> Path | None:
    """The data set directory the served run was trained on, if it can be found (see module doc)."""
    real = run_dir.resolve()
    candidates = [real.parent / "dataset"]
    if configured is not None:
        candidates.insert(0, configured)
    try:
        recorded = json.loads((real / "metrics.json").read_text()).get("dataset")
    except (OSError, ValueError, AttributeError):
        recorded = None
    if isinstance(recorded, str):
        candidates.append(Path(recorded))
    return next((c for c in candidates if (c / "events.parquet").is_file()), None)


def behaviour_counts(dataset: Path) -> dict[str, int]:
    """Events per behaviour name in a prepared data set (events without a behaviour not counted)."""
    frame = pl.scan_parquet(dataset / "events.parquet").select(S.BEHAVIOUR).drop_nulls()
    return {str(k): int(v) for k, v in frame.group_by(S.BEHAVIOUR).len().collect().iter_rows()}


class OnlineMonitor:
    """The service's online hit rate and drift counters; ``refresh`` writes them into the metrics."""

    def __init__(self, settings: ServeSettings, metrics: Metrics) -> None:
        self.settings, self.metrics = settings, metrics
        self.totals = Outcome()
        self.reference: dict[str, int] = {}
        self.seen: Counter[str] = Counter()
        self.events = self.unknown = 0
        self.ref_scores: list[float] = []
        self.recent_scores: deque[float] = deque(maxlen=SCORE_WINDOW)
        self.pending: set[asyncio.Task[Any]] = set()  # served lists not yet written

    def set_reference(self, run_dir: Path) -> None:
        """A new model is served: drift restarts from zero against its training data."""
        self.seen, self.events, self.unknown = Counter(), 0, 0
        self.ref_scores, self.recent_scores = [], deque(maxlen=SCORE_WINDOW)
        dataset = reference_dataset(run_dir, self.settings.drift_reference)
        try:
            self.reference = behaviour_counts(dataset) if dataset is not None else {}
        except (OSError, pl.exceptions.PolarsError) as err:
            log.warning("drift: cannot read the training behaviour mix from %s: %s", dataset, err)
            self.reference = {}

    def served(self, store: ServedLog, spawn: Spawn, user_id: str, items: list[str],
               top_score: float | None = None) -> None:
        """Log a list answered to ``user_id`` (in the background); ``top_score``: its first item's
        score when the model ranked it (None for fallbacks)."""
        if top_score is not None and math.isfinite(top_score):
            (self.ref_scores if len(self.ref_scores) < SCORE_WINDOW else self.recent_scores).append(top_score)
        if not self.settings.served_log or not items:
            return
        self.metrics.served_lists.inc()
        task = spawn(self._log(store, user_id, int(time.time()), list(items)))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def settle(self) -> None:
        """Wait until every list logged so far is written (a deletion then removes them too)."""
        if self.pending:
            await asyncio.gather(*list(self.pending), return_exceptions=True)

    async def _log(self, store: ServedLog, user_id: str, ts: int, items: list[str]) -> None:
        try:
            await store.log_served(user_id, ts, items, self.settings.served_keep, self.settings.served_retention_s)
        except Exception as err:  # noqa: BLE001 - a lost log line costs one sample, never a request
            log.warning("online hit rate: logging a served list failed: %s", err)

    def ingested(self, store: ServedLog, spawn: Spawn, events: list[StoredEvent], unknown: int) -> None:
        """Count stored events for drift and settle the served lists they follow (in the background)."""
        self.events += len(events)
        self.unknown += unknown
        self.seen.update(e.behaviour for e in events if e.behaviour is not None)
        if self.settings.served_log and events:
            spawn(self._resolve(store, events))

    async def _resolve(self, store: ServedLog, events: list[StoredEvent]) -> None:
        by_user: dict[str, list[tuple[int, str]]] = defaultdict(list)
        for e in events:
            by_user[e.user_id].append((e.timestamp, e.item_id))
        total = Outcome()
        try:
            for user, evs in by_user.items():
                evs.sort()
                lists = await store.take_served(user, evs[-1][0])
                if lists:
                    total.add(match_served(lists, evs, self.settings.online_window_s))
        except Exception as err:  # noqa: BLE001 - the hit rate misses these events, requests are unaffected
            log.warning("online hit rate: settling served lists failed: %s", err)
        self.totals.add(total)
        for outcome, n in (("hit", total.hits), ("miss", total.misses), ("expired", total.expired)):
            if n:
                self.metrics.online_next.labels(outcome).inc(n)

    def drift(self) -> dict[str, float]:
        """Drift of the events ingested since the model was loaded (NaN where undefined)."""
        nan = float("nan")
        out = {"events": float(self.events), "unknown_item_share": self.unknown / self.events if self.events else nan,
               "behaviour_psi": nan, "behaviour_js": nan}
        if self.reference and sum(self.seen.values()):
            names = sorted(set(self.reference) | set(self.seen))
            p = np.array([self.reference.get(b, 0) for b in names], dtype=np.float64)
            q = np.array([self.seen.get(b, 0) for b in names], dtype=np.float64)
            p, q = p / p.sum(), q / q.sum()
            out["behaviour_psi"], out["behaviour_js"] = psi(p, q), jensen_shannon(p, q)
        out["score_psi"] = self.score_psi()
        return out

    def score_psi(self) -> float:
        """PSI of the recent top-1 scores against the reference window (deciles of the reference)."""
        if len(self.ref_scores) < SCORE_WINDOW or len(self.recent_scores) < SCORE_WINDOW:
            return 0.0
        return psi(*score_bins(np.asarray(self.ref_scores), np.asarray(self.recent_scores)))

    def refresh(self) -> None:
        """Write the hit rate and the drift indicators into the gauges (before /metrics renders)."""
        m, t = self.metrics, self.totals
        m.online_hit_rate.set(t.hits / (t.hits + t.misses) if t.hits + t.misses else math.nan)
        for name, value in self.drift().items():
            m.drift.labels(name).set(value)
