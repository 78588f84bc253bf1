"""Per-user event state behind one small async interface: SQLite (default) or Redis.

What is stored is the raw event (raw ids, behaviour, timestamp, optional fields), never dense
ids, so a reloaded model with a different vocabulary reads the same histories. The behaviour is
kept where it always was (SQLite column ``event_type``, second field of the Redis payload), so
stores written by earlier releases load unchanged. Each user keeps
at most ``max_len`` events (the model's window), the most recent by (timestamp, arrival).

Durability: ``append`` returns only after the events are durable.
- SQLite runs in WAL mode with ``synchronous=FULL``: every commit fsyncs the WAL, so an
  acknowledged event survives ``kill -9`` and power loss. Concurrent appends are group-committed
  (one transaction, one fsync) on a single writer thread; reads use their own connection and
  never wait for writers (WAL).
- Redis must run with ``appendonly yes`` and ``appendfsync always``: Redis then fsyncs the AOF
  before it replies. The store warns at start-up when the server says otherwise.

Idempotency: an ``event_id`` is recorded in the same transaction (SQLite) or the same atomic
script (Redis) as the event itself; a repeated id is counted as a duplicate and not applied.
Ids are remembered for ``dedup_ttl_s`` and are not linked to the user (forgetting a user keeps
them, so replaying an old batch cannot bring the user's events back).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, cast
from urllib.parse import urlparse

from shopformer.serving.batching import MicroBatcher

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoredEvent:
    user_id: str
    item_id: str
    timestamp: int
    behaviour: str | None = None  # stored as column / payload field ``event_type`` (format unchanged)
    session_id: str | None = None
    category_id: str | None = None
    price: float | None = None
    event_id: str | None = None

    @property
    def event_type(self) -> str | None:
        """Deprecated alias of ``behaviour`` (its old name), kept for one release."""
        return self.behaviour


@dataclass
class AppendResult:
    applied: int = 0
    duplicates: list[str] = field(default_factory=list)  # event_ids seen before


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
        """Remove every stored event of the user; returns how many were removed."""
        ...

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...


def open_store(url: str, dedup_ttl_s: int = 7 * 24 * 3600) -> StateStore:
    """``sqlite:///relative.db``, ``sqlite:////abs/path.db`` or ``redis://host:port/db``."""
    scheme = urlparse(url).scheme
    if scheme == "sqlite":
        path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else ""
        if not path:
            raise ValueError(f"store url {url!r}: expected sqlite:///path/to/state.db")
        return SQLiteStore(Path(path), dedup_ttl_s)
    if scheme in ("redis", "rediss", "unix"):
        return RedisStore(url, dedup_ttl_s)
    raise ValueError(f"store url {url!r}: unsupported scheme {scheme!r} (use sqlite:/// or redis://)")


# ------------------------------------------------------------------------------------------ SQLite
_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT NOT NULL, item_id TEXT NOT NULL, ts INTEGER NOT NULL,
    event_type TEXT, session_id TEXT, category_id TEXT, price REAL, event_id TEXT
);
CREATE INDEX IF NOT EXISTS events_by_user ON events (user_id, ts, id);
CREATE TABLE IF NOT EXISTS event_ids (event_id TEXT PRIMARY KEY, created REAL NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS event_ids_by_age ON event_ids (created);
"""
_COLUMNS = "user_id, item_id, ts, event_type, session_id, category_id, price, event_id"


def _connect(path: Path) -> sqlite3.Connection:
    con = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30.0)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=FULL")
    con.execute("PRAGMA busy_timeout=30000")
    return con


class SQLiteStore:
    """Embedded, zero set-up. One writer thread (group commit), one reader connection."""

    kind = "sqlite"

    def __init__(self, path: str | Path, dedup_ttl_s: int = 7 * 24 * 3600) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.dedup_ttl_s = dedup_ttl_s
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
        self._wcon = self._writer.submit(self._open_writer).result()
        # Reads run inline on the event loop: a WAL read of one user's <= max_len rows takes
        # tens of microseconds, less than handing it to a thread would.
        self._rcon = _connect(self.path)
        self._rlock = threading.Lock()
        self._commits = 0
        self._appends: MicroBatcher[tuple[list[StoredEvent], int], AppendResult] = MicroBatcher(
            self._append_many, self._writer, max_batch=256
        )

    def _open_writer(self) -> sqlite3.Connection:
        con = _connect(self.path)
        con.executescript(_SCHEMA)
        return con

    async def append(self, events: list[StoredEvent], max_len: int) -> AppendResult:
        if not events:
            return AppendResult()
        return await self._appends.submit((events, max_len))

    def _append_many(self, jobs: list[tuple[list[StoredEvent], int]]) -> list[AppendResult]:
        """All queued appends in one transaction: one fsync however many requests wait.

        A handful of set-based statements per job rather than several per event: every
        statement hands the GIL back and forth with the busy event loop thread.
        """
        con, now = self._wcon, time.time()
        results = []
        con.execute("BEGIN IMMEDIATE")
        try:
            for events, max_len in jobs:
                ids = list({e.event_id for e in events if e.event_id is not None})
                known: set[str] = set()
                for i in range(0, len(ids), 500):  # SQLite's bound-parameter limit
                    part = ids[i : i + 500]
                    known.update(r[0] for r in con.execute(
                        f"SELECT event_id FROM event_ids WHERE event_id IN ({','.join('?' * len(part))})", part))
                res, fresh, claimed = AppendResult(), [], set()
                for e in events:
                    if e.event_id is not None and (e.event_id in known or e.event_id in claimed):
                        res.duplicates.append(e.event_id)
                        continue
                    if e.event_id is not None:
                        claimed.add(e.event_id)
                    fresh.append(e)
                con.executemany("INSERT INTO event_ids VALUES (?, ?)", [(i, now) for i in claimed])
                con.executemany(
                    f"INSERT INTO events ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [(e.user_id, e.item_id, e.timestamp, e.behaviour, e.session_id, e.category_id, e.price,
                      e.event_id) for e in fresh],
                )
                con.executemany(
                    "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE user_id = ? "
                    "ORDER BY ts DESC, id DESC LIMIT -1 OFFSET ?)",
                    [(u, max_len) for u in {e.user_id for e in fresh}],
                )
                res.applied = len(fresh)
                results.append(res)
            self._commits += 1
            if self._commits % 1000 == 1:
                con.execute("DELETE FROM event_ids WHERE created < ?", (now - self.dedup_ttl_s,))
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        return results

    async def history(self, user_id: str, limit: int) -> list[StoredEvent]:
        with self._rlock:
            rows = self._rcon.execute(
                f"SELECT {_COLUMNS} FROM events WHERE user_id = ? ORDER BY ts DESC, id DESC LIMIT ?",
                (user_id, limit),
            ).fetchall()
        return [StoredEvent(*r) for r in reversed(rows)]

    async def forget(self, user_id: str) -> int:
        def run() -> int:  # on the writer thread, so it is ordered with pending appends
            con = self._wcon
            con.execute("BEGIN IMMEDIATE")
            try:
                n = con.execute("DELETE FROM events WHERE user_id = ?", (user_id,)).rowcount
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
            return n

        return await asyncio.get_running_loop().run_in_executor(self._writer, run)

    async def ping(self) -> bool:
        with self._rlock:
            self._rcon.execute("SELECT 1").fetchone()
        return True

    async def close(self) -> None:
        await self._appends.close()
        await asyncio.get_running_loop().run_in_executor(self._writer, self._wcon.close)
        self._writer.shutdown(wait=True)
        self._rcon.close()


# ------------------------------------------------------------------------------------------- Redis
# KEYS: [sequence counter, then per event: history key, dedup key]
# ARGV: [max_len, ttl, then per event: has_id ('1'/'0'), timestamp, payload]
# One script call is atomic: an event and its dedup marker are applied together or not at all.
_APPEND_LUA = """
local maxlen = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local n = (#KEYS - 1) / 2
local applied = {}
local touched = {}
for i = 1, n do
  local hk, dk = KEYS[2 * i], KEYS[2 * i + 1]
  local base = 2 + (i - 1) * 3
  local ok = 1
  if ARGV[base + 1] == '1' then
    if not redis.call('SET', dk, '1', 'NX', 'EX', ttl) then ok = 0 end
  end
  if ok == 1 then
    local s = redis.call('INCR', KEYS[1])
    redis.call('ZADD', hk, ARGV[base + 2], string.format('%016d', s) .. '|' .. ARGV[base + 3])
    touched[hk] = true
  end
  applied[i] = ok
end
for hk, _ in pairs(touched) do
  redis.call('ZREMRANGEBYRANK', hk, 0, -(maxlen + 1))
end
return applied
"""


class RedisStore:
    """Production backend: one sorted set per user (score = timestamp), trimmed to max_len."""

    kind = "redis"

    def __init__(self, url: str, dedup_ttl_s: int = 7 * 24 * 3600, prefix: str = "shopformer:") -> None:
        import redis.asyncio as aioredis

        self.url, self.prefix, self.dedup_ttl_s = url, prefix, dedup_ttl_s
        # A blocking pool: a burst of requests waits for a connection instead of failing.
        pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=64, timeout=10, decode_responses=True)
        self._r = aioredis.Redis(connection_pool=pool)
        self._append_script = self._r.register_script(_APPEND_LUA)
        self._checked = False

    def _hkey(self, user_id: str) -> str:
        return f"{self.prefix}h:{user_id}"

    async def _check_durability(self) -> None:
        self._checked = True
        try:
            aof = (await self._r.config_get("appendonly")).get("appendonly")
            fsync = (await self._r.config_get("appendfsync")).get("appendfsync")
        except Exception:  # noqa: BLE001 - CONFIG may be disabled on managed Redis
            log.warning("cannot read Redis durability settings; acknowledged events are only as durable as its AOF")
            return
        if aof != "yes" or fsync != "always":
            log.warning("Redis runs with appendonly=%s appendfsync=%s: acknowledged events can be lost on a crash "
                        "(use appendonly yes + appendfsync always)", aof, fsync)

    async def append(self, events: list[StoredEvent], max_len: int) -> AppendResult:
        if not events:
            return AppendResult()
        if not self._checked:
            await self._check_durability()
        keys: list[str] = [f"{self.prefix}seq"]
        args: list[int | str] = [max_len, self.dedup_ttl_s]
        for e in events:
            hk = self._hkey(e.user_id)
            keys += [hk, f"{self.prefix}e:{e.event_id}" if e.event_id is not None else hk]
            payload = json.dumps([e.item_id, e.behaviour, e.session_id, e.category_id, e.price, e.event_id],
                                 separators=(",", ":"))
            args += ["1" if e.event_id is not None else "0", e.timestamp, payload]
        flags = await self._append_script(keys=keys, args=args)
        res = AppendResult()
        for e, ok in zip(events, flags, strict=True):
            if ok:
                res.applied += 1
            else:
                res.duplicates.append(e.event_id or "")
        return res

    async def history(self, user_id: str, limit: int) -> list[StoredEvent]:
        rows = cast(list[tuple[str, float]],  # decode_responses=True: members are str
                    await self._r.zrange(self._hkey(user_id), -limit, -1, withscores=True))
        out = []
        for member, score in rows:
            item, etype, session, cat, price, eid = json.loads(member.split("|", 1)[1])
            out.append(StoredEvent(user_id, item, int(score), etype, session, cat, price, eid))
        return out

    async def forget(self, user_id: str) -> int:
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.zcard(self._hkey(user_id))  # queued: an asyncio pipeline buffers commands until execute
            pipe.delete(self._hkey(user_id))
            n, _ = await pipe.execute()
        return int(n)

    async def ping(self) -> bool:
        return bool(await self._r.ping())

    async def close(self) -> None:
        await self._r.aclose()
        await self._r.connection_pool.disconnect()
