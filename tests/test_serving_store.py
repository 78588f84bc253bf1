"""State stores: the same contract for SQLite and a real redis-server (never a mock)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
from serving_support import RedisServer

from shopformer.serving.store import RedisStore, SQLiteStore, StateStore, StoredEvent, open_store

NEEDS_REDIS = pytest.mark.skipif(shutil.which("redis-server") is None,
                                 reason="redis-server binary not found (apt-get install redis-server)")


def run(coro):  # noqa: ANN001, ANN201 - tiny helper: every store call is a coroutine
    return asyncio.run(coro)


def with_store(make, body) -> None:  # noqa: ANN001 - open, run body(store), close, in one event loop
    async def go() -> None:
        store = make()
        try:
            await body(store)
        finally:
            await store.close()

    run(go())


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=NEEDS_REDIS)])
def make_store(request: pytest.FixtureRequest, tmp_path: Path):  # noqa: ANN201
    if request.param == "sqlite":
        return lambda: SQLiteStore(tmp_path / "state.db")
    server: RedisServer = request.getfixturevalue("redis_server")
    prefix = f"t{abs(hash(request.node.name))}:"  # each test its own key space on the shared server
    return lambda: RedisStore(server.url, prefix=prefix)


def ev(user: str, item: str, ts: int, eid: str | None = None, etype: str | None = "pv") -> StoredEvent:
    return StoredEvent(user, item, ts, etype, event_id=eid, price=1.5 if eid else None)


def test_append_and_history_in_time_order(make_store) -> None:
    async def body(s: StateStore) -> None:
        res = await s.append([ev("u", "b", 20), ev("u", "a", 10), ev("v", "x", 5), ev("u", "c", 20)], max_len=10)
        assert res.applied == 4 and res.duplicates == []
        hist = await s.history("u", 10)
        assert [e.item_id for e in hist] == ["a", "b", "c"]  # by timestamp, ties in arrival order
        assert hist[0] == StoredEvent("u", "a", 10, "pv")
        assert [e.item_id for e in await s.history("u", 2)] == ["b", "c"]  # the most recent
        assert await s.history("nobody", 10) == []

    with_store(make_store, body)


def test_history_is_bounded_by_max_len(make_store) -> None:
    async def body(s: StateStore) -> None:
        for t in range(12):
            await s.append([ev("u", f"i{t}", t)], max_len=5)
        assert [e.item_id for e in await s.history("u", 100)] == [f"i{t}" for t in range(7, 12)]

    with_store(make_store, body)


def test_event_id_makes_retries_idempotent(make_store) -> None:
    async def body(s: StateStore) -> None:
        batch = [ev("u", "a", 1, "e1"), ev("u", "b", 2, "e2"), ev("u", "c", 3)]
        assert (await s.append(batch, 10)).applied == 3
        retry = await s.append(batch, 10)  # the ids are known; the id-less event is applied again
        assert retry.applied == 1 and sorted(retry.duplicates) == ["e1", "e2"]
        same_batch = await s.append([ev("u", "d", 4, "e3"), ev("u", "d", 4, "e3")], 10)
        assert same_batch.applied == 1 and same_batch.duplicates == ["e3"]
        hist = await s.history("u", 10)
        assert [e.item_id for e in hist] == ["a", "b", "c", "c", "d"]
        assert hist[0].event_id == "e1" and hist[0].price == 1.5

    with_store(make_store, body)


def test_forget_removes_the_user_only(make_store) -> None:
    async def body(s: StateStore) -> None:
        await s.append([ev("u", "a", 1, "f1"), ev("u", "b", 2), ev("v", "c", 3)], 10)
        assert await s.forget("u") == 2
        assert await s.history("u", 10) == []
        assert [e.item_id for e in await s.history("v", 10)] == ["c"]
        assert await s.forget("u") == 0
        # The idempotency records went with the user: the store alone would take a replay (the
        # service refuses it from the deletion ledger, see test_serving_privacy.py).
        assert (await s.append([ev("u", "a", 1, "f1")], 10)).applied == 1

    with_store(make_store, body)


def test_concurrent_appends_are_all_applied(make_store) -> None:
    async def body(s: StateStore) -> None:
        jobs = [s.append([ev(f"u{i % 7}", f"i{i}", i, f"c{i}")], 100) for i in range(200)]
        results = await asyncio.gather(*jobs)
        assert sum(r.applied for r in results) == 200
        assert sum([len(await s.history(f"u{u}", 100)) for u in range(7)]) == 200
        assert await s.ping()

    with_store(make_store, body)


def test_sqlite_state_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "state.db"

    async def write(s: StateStore) -> None:
        await s.append([ev("u", "a", 1, "r1")], 10)

    async def read(s: StateStore) -> None:
        assert [e.item_id for e in await s.history("u", 10)] == ["a"]
        assert (await s.append([ev("u", "a", 1, "r1")], 10)).duplicates == ["r1"]

    with_store(lambda: SQLiteStore(path), write)
    with_store(lambda: SQLiteStore(path), read)
    con_mode = __import__("sqlite3").connect(path).execute("PRAGMA journal_mode").fetchone()[0]
    assert con_mode == "wal"


@NEEDS_REDIS
def test_redis_survives_kill_9_of_redis(tmp_path: Path) -> None:
    """appendfsync always: what Redis acknowledged is in the AOF even after SIGKILL."""
    server = RedisServer(tmp_path / "r").start()
    try:
        with_store(lambda: RedisStore(server.url), lambda s: s.append([ev("u", "a", 1, "k1")], 10))
        server.stop(hard=True)
        server.start()

        async def check(s: StateStore) -> None:
            assert [e.item_id for e in await s.history("u", 10)] == ["a"]

        with_store(lambda: RedisStore(server.url), check)
    finally:
        server.stop()


def test_open_store_urls(tmp_path: Path) -> None:
    assert isinstance(open_store(f"sqlite:///{tmp_path}/a.db"), SQLiteStore)
    assert isinstance(open_store("redis://127.0.0.1:1/0"), RedisStore)  # lazy: connects on first use
    for bad in ("postgres://x", "sqlite://", "nonsense"):
        with pytest.raises(ValueError, match="store url"):
            open_store(bad)
