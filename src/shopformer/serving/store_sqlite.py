"""The SQLite state store: embedded, zero set-up. One writer thread (group commit), one reader.

Durability: WAL mode with ``synchronous=FULL``: every commit fsyncs the WAL, so an acknowledged
event survives ``kill -9`` and power loss. Concurrent appends are group-committed (one
transaction, one fsync) on the single writer thread; reads use their own connection and never
wait for writers (WAL).

Isolation: each request of a group commit runs inside its own SAVEPOINT, after its whole batch
was validated: a request that fails rolls back to its savepoint and fails alone, the others
commit. Only a store-level failure (disk full, I/O error) fails the whole group (HTTP 503).

Deletion: ``secure_delete`` is forced on (freed pages are zeroed, whatever the build's default),
and after a deletion the WAL is checkpointed with TRUNCATE, so the user's rows survive neither in
the database file nor in old WAL frames. Idempotency records (``dedup``) hold keyed hashes of the
event id and of the user id (salt in ``meta``), never raw ids, and are deleted with the user.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from shopformer.data.ledger import keyed_hash
from shopformer.serving.batching import MicroBatcher
from shopformer.serving.stored import (
    AppendResult,
    ServedList,
    StoredEvent,
    StoreUnavailable,
    in_range,
    validate_events,
)

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT NOT NULL, item_id TEXT NOT NULL, ts INTEGER NOT NULL,
    event_type TEXT, session_id TEXT, category_id TEXT, price REAL, event_id TEXT
);
CREATE INDEX IF NOT EXISTS events_by_user ON events (user_id, ts, id);
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dedup (k TEXT PRIMARY KEY, user TEXT NOT NULL, created INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dedup_by_age ON dedup (created);
CREATE INDEX IF NOT EXISTS dedup_by_user ON dedup (user);
CREATE TABLE IF NOT EXISTS served (
    id INTEGER PRIMARY KEY AUTOINCREMENT, user_id TEXT NOT NULL, ts INTEGER NOT NULL, items TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS served_by_user ON served (user_id, ts, id);
CREATE INDEX IF NOT EXISTS served_by_age ON served (ts);
"""
_COLUMNS = "user_id, item_id, ts, event_type, session_id, category_id, price, event_id"
# A served-list job: ("log", user, ts, items JSON, keep, oldest ts kept) or ("take", user, until).
ServedJob = tuple[str, str, int, str, int, int] | tuple[str, str, int]


def _connect(path: Path) -> sqlite3.Connection:
    con = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30.0)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=FULL")
    con.execute("PRAGMA busy_timeout=30000")
    con.execute("PRAGMA secure_delete=ON")  # deleted rows are zeroed, not left in free pages
    return con


def _transaction(con: sqlite3.Connection) -> None:
    con.execute("BEGIN IMMEDIATE")


class SQLiteStore:
    kind = "sqlite"

    def __init__(self, path: str | Path, dedup_ttl_s: int = 24 * 3600) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.dedup_ttl_s = dedup_ttl_s
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
        try:
            self._wcon, self._salt = self._writer.submit(self._open_writer).result()
        except sqlite3.Error as err:
            self._writer.shutdown(wait=False)
            raise StoreUnavailable(f"sqlite store {self.path.name}: {err}") from None
        # Reads run inline on the event loop: a WAL read of one user's <= max_len rows takes
        # tens of microseconds, less than handing it to a thread would.
        self._rcon = _connect(self.path)
        self._rlock = threading.Lock()
        self._commits = 0
        self._appends: MicroBatcher[tuple[list[StoredEvent], int], AppendResult] = MicroBatcher(
            self._append_many, self._writer, max_batch=256
        )
        self._served_commits = 0
        self._served: MicroBatcher[ServedJob, list[ServedList]] = MicroBatcher(
            self._served_many, self._writer, max_batch=256
        )

    def _open_writer(self) -> tuple[sqlite3.Connection, bytes]:
        con = _connect(self.path)
        con.executescript(_SCHEMA)
        _transaction(con)
        try:
            row = con.execute("SELECT v FROM meta WHERE k = 'salt'").fetchone()
            salt = bytes(row[0]) if row else secrets.token_bytes(16)
            if row is None:
                con.execute("INSERT INTO meta VALUES ('salt', ?)", (salt,))
            self._migrate_raw_ids(con, salt)
            con.execute("DELETE FROM dedup WHERE created < ?", (int(time.time()) - self.dedup_ttl_s,))
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            con.close()
            raise
        return con, salt

    @staticmethod
    def _migrate_raw_ids(con: sqlite3.Connection, salt: bytes) -> None:
        """Stores of earlier releases kept raw event ids in ``event_ids``: hash them into ``dedup``."""
        if not con.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'event_ids'").fetchone():
            return
        owners = dict(con.execute("SELECT event_id, user_id FROM events WHERE event_id IS NOT NULL"))
        rows = [(keyed_hash(salt, eid), keyed_hash(salt, owners.get(eid, "")), int(created))
                for eid, created in con.execute("SELECT event_id, created FROM event_ids")]
        con.executemany("INSERT OR IGNORE INTO dedup VALUES (?, ?, ?)", rows)
        con.execute("DROP TABLE event_ids")
        log.info("sqlite store: %d idempotency records migrated to hashed keys", len(rows))

    async def append(self, events: list[StoredEvent], max_len: int) -> AppendResult:
        if not events:
            return AppendResult()
        validate_events(events)  # before queueing: a bad batch never reaches the group commit
        return await self._appends.submit((events, max_len))

    def _append_one(self, con: sqlite3.Connection, events: list[StoredEvent], max_len: int,
                    now: int) -> AppendResult:
        salt = self._salt
        keys = {e.event_id: keyed_hash(salt, e.event_id) for e in events if e.event_id is not None}
        wanted = list(set(keys.values()))
        known: set[str] = set()
        for i in range(0, len(wanted), 500):  # SQLite's bound-parameter limit
            part = wanted[i : i + 500]
            known.update(r[0] for r in con.execute(
                f"SELECT k FROM dedup WHERE k IN ({','.join('?' * len(part))})", part))
        res, fresh, claimed = AppendResult(), [], {}
        for e in events:
            k = keys.get(e.event_id) if e.event_id is not None else None
            if k is not None and (k in known or k in claimed):
                res.duplicates.append(e.event_id or "")
                continue
            if k is not None:
                claimed[k] = keyed_hash(salt, e.user_id)
            fresh.append(e)
        con.executemany("INSERT INTO dedup VALUES (?, ?, ?)", [(k, u, now) for k, u in claimed.items()])
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
        return res

    def _append_many(self, jobs: list[tuple[list[StoredEvent], int]]) -> list[AppendResult | BaseException]:
        """All queued appends in one transaction (one fsync), each request in its own savepoint."""
        con, now = self._wcon, int(time.time())
        results: list[AppendResult | BaseException] = []
        try:
            _transaction(con)
            try:
                for events, max_len in jobs:
                    con.execute("SAVEPOINT job")
                    try:
                        results.append(self._append_one(con, events, max_len, now))
                    except (sqlite3.OperationalError, MemoryError):
                        raise  # the store itself failed: the whole group fails
                    except Exception as err:  # noqa: BLE001 - this request fails, the others commit
                        con.execute("ROLLBACK TO job")
                        results.append(err)
                    con.execute("RELEASE job")
                self._commits += 1
                if self._commits % 1000 == 1:
                    con.execute("DELETE FROM dedup WHERE created < ?", (now - self.dedup_ttl_s,))
                con.execute("COMMIT")
            except BaseException:
                if con.in_transaction:
                    con.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as err:
            raise StoreUnavailable(f"sqlite store: {err}") from None
        return results

    async def history(self, user_id: str, limit: int) -> list[StoredEvent]:
        try:
            with self._rlock:
                rows = self._rcon.execute(
                    f"SELECT {_COLUMNS} FROM events WHERE user_id = ? ORDER BY ts DESC, id DESC LIMIT ?",
                    (user_id, limit),
                ).fetchall()
        except sqlite3.OperationalError as err:
            raise StoreUnavailable(f"sqlite store: {err}") from None
        return [StoredEvent(*r) for r in reversed(rows) if in_range(r[2])]

    # Served lists (the online hit rate, serving/online.py): group-committed on the writer thread in
    # order with appends and deletions, under synchronous=NORMAL (no fsync of their own: a crash of
    # the machine may lose the last few, which only costs hit-rate samples).
    async def log_served(self, user_id: str, ts: int, items: list[str], keep: int, retention_s: int) -> None:
        """Record a list served to ``user_id`` at ``ts``; the user keeps the newest ``keep`` lists,
        none older than ``retention_s``."""
        await self._served.submit(("log", user_id, ts, json.dumps(items, separators=(",", ":")), keep,
                                   ts - retention_s))

    async def take_served(self, user_id: str, until: int) -> list[ServedList]:
        """Remove and return the user's lists served at or before ``until``, oldest first."""
        return await self._served.submit(("take", user_id, until))

    def _served_one(self, con: sqlite3.Connection, job: ServedJob) -> list[ServedList]:
        if job[0] == "log":
            _, user, ts, items, keep, oldest = job  # type: ignore[misc]
            con.execute("INSERT INTO served (user_id, ts, items) VALUES (?, ?, ?)", (user, ts, items))
            con.execute("DELETE FROM served WHERE id IN (SELECT id FROM served WHERE user_id = ? "
                        "ORDER BY ts DESC, id DESC LIMIT -1 OFFSET ?)", (user, keep))
            con.execute("DELETE FROM served WHERE user_id = ? AND ts < ?", (user, oldest))
            if self._served_commits % 256 == 0:  # users who never came back
                con.execute("DELETE FROM served WHERE ts < ?", (oldest,))
            return []
        _, user, until = job[:3]
        rows = con.execute("SELECT ts, items FROM served WHERE user_id = ? AND ts <= ? ORDER BY ts, id",
                           (user, until)).fetchall()
        if rows:
            con.execute("DELETE FROM served WHERE user_id = ? AND ts <= ?", (user, until))
        return [ServedList(int(ts), tuple(json.loads(items))) for ts, items in rows]

    def _served_many(self, jobs: list[ServedJob]) -> list[list[ServedList] | BaseException]:
        con = self._wcon
        try:
            con.execute("PRAGMA synchronous=NORMAL")
            try:
                _transaction(con)
                try:
                    out: list[list[ServedList] | BaseException] = [self._served_one(con, j) for j in jobs]
                    self._served_commits += 1
                    con.execute("COMMIT")
                except BaseException:
                    if con.in_transaction:
                        con.execute("ROLLBACK")
                    raise
            finally:
                con.execute("PRAGMA synchronous=FULL")
        except sqlite3.OperationalError as err:
            raise StoreUnavailable(f"sqlite store: {err}") from None
        return out

    def _forget_now(self, user_ids: list[str]) -> int:
        con = self._wcon
        _transaction(con)
        try:
            n = 0
            for uid in user_ids:
                n += con.execute("DELETE FROM events WHERE user_id = ?", (uid,)).rowcount
                con.execute("DELETE FROM dedup WHERE user = ?", (keyed_hash(self._salt, uid),))
                con.execute("DELETE FROM served WHERE user_id = ?", (uid,))
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        self._checkpoint()
        return n

    def _checkpoint(self) -> None:
        """Copy the WAL into the database and truncate it: old frames with the user's rows are gone."""
        with self._rlock:  # no read snapshot of ours may pin the WAL meanwhile
            for _ in range(50):
                busy, _, _ = self._wcon.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                if not busy:
                    return
                time.sleep(0.02)
        log.warning("sqlite store: WAL checkpoint after a deletion stayed busy (another process reading?); "
                    "the next checkpoint removes the old frames")

    async def forget(self, user_id: str) -> int:
        return await self.forget_many([user_id])

    async def forget_many(self, user_ids: list[str]) -> int:
        """Remove the users' events and idempotency records, then truncate the WAL (on the writer
        thread, so the deletion is ordered with pending appends)."""
        try:
            return await asyncio.get_running_loop().run_in_executor(self._writer, self._forget_now, user_ids)
        except sqlite3.OperationalError as err:
            raise StoreUnavailable(f"sqlite store: {err}") from None

    async def ping(self) -> bool:
        try:
            with self._rlock:
                self._rcon.execute("SELECT 1").fetchone()
        except sqlite3.Error as err:
            raise StoreUnavailable(f"sqlite store: {err}") from None
        return True

    async def close(self) -> None:
        await self._appends.close()
        await self._served.close()
        await asyncio.get_running_loop().run_in_executor(self._writer, self._wcon.close)
        self._writer.shutdown(wait=True)
        self._rcon.close()
