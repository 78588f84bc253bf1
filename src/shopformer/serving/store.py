"""Per-user event state behind one small async interface: SQLite (default) or Redis.

What is stored is the raw event (raw ids, behaviour, timestamp, optional fields), never dense
ids, so a reloaded model with a different vocabulary reads the same histories. The behaviour is
kept where it always was (SQLite column ``event_type``, second field of the Redis payload), so
stores written by earlier releases load unchanged. Each user keeps at most ``max_len`` events
(the model's window), the most recent by (timestamp, arrival).

- ``append`` returns only after the events are durable, validates the whole batch before it
  writes anything, and applies a batch whole or not at all (store_sqlite.py, store_redis.py).
- Idempotency: an ``event_id`` is recorded in the same transaction (SQLite) or the same atomic
  script (Redis) as the event itself; a repeated id is counted as a duplicate and not applied.
  Records hold keyed hashes of the event and user ids, never raw ids, and expire after
  ``dedup_ttl_s``.
- ``forget`` removes the user's events and idempotency records and scrubs the store's files
  (SQLite: secure_delete + WAL truncation; Redis: AOF rewrite).
- An outage (store down, loading, read-only, disk full) raises ``StoreUnavailable`` (HTTP 503).
"""

from __future__ import annotations

from typing import Protocol
from urllib.parse import urlparse

from shopformer.serving.store_redis import RedisStore
from shopformer.serving.store_sqlite import SQLiteStore
from shopformer.serving.stored import AppendResult, InvalidEvent, ServedList, StoredEvent, StoreUnavailable

__all__ = ["AppendResult", "InvalidEvent", "RedisStore", "SQLiteStore", "ServedList", "StateStore",
           "StoreUnavailable", "StoredEvent", "open_store"]

DEFAULT_DEDUP_TTL_S = 24 * 3600


class StateStore(Protocol):
    """The whole contract the service needs from a state backend."""

    kind: str

    async def append(self, events: list[StoredEvent], max_len: int) -> AppendResult:
        """Durably add events (skipping known event_ids) and trim each user to ``max_len``."""
        ...

    async def history(self, user_id: str, limit: int) -> list[StoredEvent]:
        """The user's most recent ``limit`` events, oldest first; [] for an unknown user."""
        ...

    async def forget(self, user_id: str) -> int:
        """Remove every stored event and idempotency record of the user; returns how many events."""
        ...

    async def forget_many(self, user_ids: list[str]) -> int:
        """``forget`` for several users at once (one file scrub at the end)."""
        ...

    async def log_served(self, user_id: str, ts: int, items: list[str], keep: int, retention_s: int) -> None:
        """Record a recommendation list served to the user (online hit rate; bounded, deleted with the user)."""
        ...

    async def take_served(self, user_id: str, until: int) -> list[ServedList]:
        """Remove and return the user's lists served at or before ``until``, oldest first."""
        ...

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...


def open_store(url: str, dedup_ttl_s: int = DEFAULT_DEDUP_TTL_S, aof_rewrite_interval_s: float = 60.0) -> StateStore:
    """``sqlite:///relative.db``, ``sqlite:////abs/path.db`` or ``redis://host:port/db``."""
    scheme = urlparse(url).scheme
    if scheme == "sqlite":
        path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else ""
        if not path:
            raise ValueError(f"store url {url!r}: expected sqlite:///path/to/state.db")
        return SQLiteStore(path, dedup_ttl_s)
    if scheme in ("redis", "rediss", "unix"):
        return RedisStore(url, dedup_ttl_s, aof_rewrite_interval_s=aof_rewrite_interval_s)
    raise ValueError(f"store url {url!r}: unsupported scheme {scheme!r} (use sqlite:/// or redis://)")
