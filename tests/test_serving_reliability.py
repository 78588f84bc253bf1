"""Bad input finds no seams: batches are validated whole and applied whole, one client's bad batch
never fails another's, timestamps are bounded integers on every path, outages are 503s.

Store tests use a real SQLite file and a real redis-server; HTTP tests run the app in process
(Starlette's TestClient runs its lifespan: real store, real model).
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from serving_support import RedisServer, synthetic_run

from shopformer.config import ModelConfig, TaskConfig
from shopformer.data.timestamps import parse_time_value
from shopformer.serving import ServeSettings, create_app
from shopformer.serving.store import InvalidEvent, RedisStore, SQLiteStore, StoredEvent, StoreUnavailable
from shopformer.serving.timestamps import ISO_PATTERN, MAX_TIMESTAMP, parse_timestamp

NEEDS_REDIS = pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server binary not found")
ITEMS = [f"i{i}" for i in range(40)]
TINY = ModelConfig(dim=16, layers=1, heads=1, max_len=20, dropout=0.0, emb_dropout=0.0)
KEYS = {"SHOPFORMER_INGEST_KEY": "ing", "SHOPFORMER_ADMIN_KEY": "adm"}
ING, ADM = {"Authorization": "Bearer ing"}, {"Authorization": "Bearer adm"}


# --------------------------------------------------------------------------------- timestamps
def test_timestamps_integers_and_iso_strings_in_a_bounded_range() -> None:
    assert parse_timestamp(0) == 0 and parse_timestamp(MAX_TIMESTAMP) == MAX_TIMESTAMP
    for bad in (-1, MAX_TIMESTAMP + 1, 2**63, 10**400, 1.5, True, "5", "", "2023-02-29", "2024-13-01",
                "1970-01-01", "9999-12-31", "2024-01-01T24:00", "2024-01-01T10:11:12.1234567", None, [1]):
        with pytest.raises(ValueError):
            parse_timestamp(bad)
    with pytest.raises(ValueError, match="milli"):
        parse_timestamp(1_700_000_000_000)
    # The ISO forms give the seconds `prepare` gives for the same strings.
    for s in ("2024-02-29", "2024-05-01T10", "2024-05-01 10:30", "2024-05-01T10:30:05Z", "2024-05-01T10:30:05.999Z",
              "2024-05-01T10:30:05+08:00", "2024-05-01T10:30:05.25-03:30", "1971-01-01", "9998-12-31T23:59:59Z"):
        assert parse_timestamp(s) == parse_time_value(s), s
    # The published pattern is the one enforced: every string it allows parses, in range.
    import re

    assert re.fullmatch(ISO_PATTERN.strip("^$"), "2000-02-29") and not re.fullmatch(ISO_PATTERN.strip("^$"),
                                                                                     "1900-02-29")
    assert parse_timestamp("9998-12-31T23:59:59-23:59") <= MAX_TIMESTAMP
    assert parse_timestamp("1971-01-01T00:00+23:59") > 0
    assert parse_timestamp(1458.0) == 1458  # JSON Schema: an integer


# ------------------------------------------------------------------------------------ stores
def _ev(user: str, item: str, ts: int, eid: str | None = None) -> StoredEvent:
    return StoredEvent(user, item, ts, "pv", event_id=eid)


@NEEDS_REDIS
def test_redis_batch_failing_part_way_leaves_nothing_behind(redis_server: RedisServer) -> None:
    """Before: events before the bad one were stored and its idempotency key set, so the
    corrected retry was counted a duplicate and lost."""
    async def go() -> None:
        s = RedisStore(redis_server.url, prefix="atomic:")
        try:
            bad = [_ev("u", "a", 1, "ok-1"), _ev("u", "b", 10**400, "bad-1")]  # type: ignore[arg-type]
            with pytest.raises(InvalidEvent):
                await s.append(bad, 10)
            with pytest.raises(Exception, match="bad timestamp"):  # the script checks too, before any write
                await s._append(bad, 10)
            assert await s.history("u", 10) == []
            fixed = await s.append([_ev("u", "a", 1, "ok-1"), _ev("u", "b", 2, "bad-1")], 10)
            assert fixed.applied == 2 and fixed.duplicates == []
        finally:
            await s.close()

    asyncio.run(go())


@NEEDS_REDIS
def test_redis_timestamps_are_exact_integers(redis_server: RedisServer) -> None:
    async def go() -> None:
        s = RedisStore(redis_server.url, prefix="ints:")
        try:
            await s.append([_ev("u", "a", MAX_TIMESTAMP - 1), _ev("u", "b", MAX_TIMESTAMP)], 10)
            hist = await s.history("u", 10)
            assert [e.timestamp for e in hist] == [MAX_TIMESTAMP - 1, MAX_TIMESTAMP]
            assert all(type(e.timestamp) is int for e in hist)
            raw = await s._r.zrange("ints:h:u", 0, -1)
            assert json.loads(raw[0].split("|", 1)[1])[6] == MAX_TIMESTAMP - 1  # the integer is stored
            # Payloads of earlier releases (no integer) read from the score; out-of-range rows are skipped.
            await s._r.zadd("ints:h:old", {'0000000000000001|["x",null,null,null,null,null]': 5,
                                           '0000000000000002|["y",null,null,null,null,null]': 2.0**63})
            assert [(e.item_id, e.timestamp) for e in await s.history("old", 10)] == [("x", 5)]
        finally:
            await s.close()

    asyncio.run(go())


def test_sqlite_bad_request_in_a_group_commit_fails_alone(tmp_path: Path) -> None:
    """Before: one timestamp >= 2**63 rolled back the whole group commit (every waiting client got a 500)."""
    async def go() -> None:
        s = SQLiteStore(tmp_path / "state.db")
        try:
            jobs = [([_ev(f"u{i}", "a", i, f"g{i}")], 10) for i in range(5)]
            jobs.insert(2, ([_ev("x", "a", 1, "x1"), _ev("x", "b", 2**63, "x2")], 10))  # bypasses validation
            out = await asyncio.get_running_loop().run_in_executor(s._writer, s._append_many, jobs)
            assert isinstance(out[2], OverflowError)
            assert [r.applied for i, r in enumerate(out) if i != 2] == [1] * 5  # type: ignore[union-attr]
            assert await s.history("x", 10) == []  # the failed request left nothing, not even its first event
            assert (await s.append([_ev("x", "a", 1, "x1")], 10)).applied == 1  # nor an idempotency record
            assert len(await s.history("u4", 10)) == 1
            with pytest.raises(InvalidEvent):  # and the normal path refuses it before the group commit
                await s.append([_ev("x", "b", 2**63, "x3")], 10)
        finally:
            await s.close()

    asyncio.run(go())


def test_concurrent_batches_with_bad_ones_mixed_in(tmp_path: Path) -> None:
    async def go() -> None:
        s = SQLiteStore(tmp_path / "state.db")
        try:
            async def client(i: int) -> bool:
                ts = 2**63 if i % 7 == 0 else i
                try:
                    await s.append([_ev(f"u{i % 5}", "a", ts, f"c{i}")], 100)  # type: ignore[arg-type]
                except InvalidEvent:
                    return False
                return True

            ok = await asyncio.gather(*(client(i) for i in range(300)))
            assert sum(ok) == 300 - len(range(0, 300, 7))
            assert sum([len(await s.history(f"u{u}", 100)) for u in range(5)]) == sum(ok)
        finally:
            await s.close()

    asyncio.run(go())


# ------------------------------------------------------------------------------ HTTP in process
@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    return {"a": synthetic_run(root / "served" / "a", ITEMS, TINY, seed=1),
            "heads": synthetic_run(root / "served" / "heads", ITEMS, TINY, seed=3, task=TaskConfig(kind="multi")),
            "outside": synthetic_run(root / "outside", ITEMS, TINY, seed=2)}


def make_client(runs: dict[str, Path], tmp: Path, run: str = "a", **extra: object) -> TestClient:
    values: dict[str, object] = {"run_dir": runs[run], "store_url": f"sqlite:///{tmp / 'state.db'}",
                                 "forget_ledger": tmp / "ledger.jsonl", "ingest_key": "ing", "admin_key": "adm"}
    settings = ServeSettings.model_validate({**values, **extra})
    return TestClient(create_app(settings), raise_server_exceptions=False)


def test_iso_and_bounded_timestamps_on_every_path(runs: dict[str, Path], tmp_path: Path) -> None:
    with make_client(runs, tmp_path) as c:
        r = c.post("/v1/events", headers=ING, json={"events": [
            {"user_id": "u", "item_id": "i1", "timestamp": "2024-05-01T10:30:00Z"},
            {"user_id": "u", "item_id": "i2", "timestamp": 1714559401}]})
        assert r.status_code == 200 and r.json()["accepted"] == 2, r.text
        for ts in (2**63, 10**400, 2**63 - 1, 1_700_000_000_000, "soon", 1.5):
            r = c.post("/v1/events", headers=ING, json={"events": [{"user_id": "u", "item_id": "i3", "timestamp": ts}]})
            assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "events", 0, "timestamp"], r.text
            r = c.post("/v1/recommendations", json={"history": [{"item_id": "i1", "timestamp": ts}]})
            assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "history", 0, "timestamp"]
        huge = '{"history": [{"item_id": "i1", "timestamp": 1' + "0" * 5000 + "}]}"  # past Python's int limit
        r = c.post("/v1/recommendations", content=huge, headers={"content-type": "application/json"})
        assert r.status_code == 400, r.text
        r = c.post("/v1/recommendations", json={"history": [{"item_id": "i1", "timestamp": "2024-05-01"},
                                                            {"item_id": "i2", "timestamp": "2024-05-01T10:00+02:00"}]})
        assert r.status_code == 200, r.text
        assert c.get("/v1/users/u/recommendations").json()["history_length"] == 2
        doc = c.get("/openapi.json").json()["components"]["schemas"]
        published = doc["EventIn"]["properties"]["timestamp"]["anyOf"][0]["anyOf"]
        assert published[0]["maximum"] == MAX_TIMESTAMP and published[1]["pattern"] == ISO_PATTERN


def test_published_schema_states_the_real_constraints(runs: dict[str, Path], tmp_path: Path) -> None:
    """schemathesis found 422s for values the document allowed (behaviour names, k, run_dir)."""
    with make_client(runs, tmp_path, run="heads", max_k=30, max_history=50, max_events_per_batch=40) as c:
        doc = c.get("/openapi.json").json()
        adhoc = doc["components"]["schemas"]["AdHocRequest"]["properties"]
        assert adhoc["k"]["maximum"] == 30 and adhoc["history"]["maxItems"] == 50
        assert doc["components"]["schemas"]["EventBatch"]["properties"]["events"]["maxItems"] == 40
        allowed = adhoc["behaviour"]["anyOf"][0]["enum"]
        assert allowed == ["*", "pv", "cart", "fav", "buy"]
        query = [p for p in doc["paths"]["/v1/users/{user_id}/recommendations"]["get"]["parameters"]
                 if p["name"] == "behaviour"][0]
        assert query["schema"]["enum"] == allowed
        for b in allowed:  # every published value is accepted
            assert c.get("/v1/users/x/recommendations", params={"behaviour": b}).status_code == 200
            assert c.post("/v1/recommendations", json={"history": [{"item_id": "i1"}], "behaviour": b}).status_code \
                == 200
        run_dir = doc["components"]["schemas"]["ReloadIn"]["properties"]["run_dir"]
        assert run_dir["maxLength"] == 1024
    with make_client(runs, tmp_path / "plain") as c:  # no behaviour heads: only '*'
        adhoc = c.get("/openapi.json").json()["components"]["schemas"]["AdHocRequest"]["properties"]
        assert adhoc["behaviour"]["anyOf"][0]["enum"] == ["*"]


def test_reload_is_confined_and_reveals_nothing(runs: dict[str, Path], tmp_path: Path) -> None:
    with make_client(runs, tmp_path) as c:  # default root: the served run's parent ("served")
        def reload(run_dir: str) -> object:
            return c.post("/v1/admin/reload", headers=ADM, json={"run_dir": run_dir})

        r = reload("x" * 300)  # a name too long for the file system: was a 500
        assert r.status_code == 404 and "x" * 300 not in r.text
        assert reload("a/" + "y" * 300 + "/z").status_code == 404
        outside_existing, outside_missing = reload(str(runs["outside"])), reload(str(runs["outside"]) + "-nope")
        assert outside_existing.status_code == outside_missing.status_code == 403
        assert outside_existing.json()["detail"] == outside_missing.json()["detail"]  # existence not revealed
        assert str(tmp_path) not in outside_existing.text and str(runs["a"].parent) not in outside_existing.text
        assert reload("../outside").status_code == 403
        r = reload("heads")  # relative to the root
        assert r.status_code == 200 and r.json()["run_dir"] == "heads", r.text
        assert reload(str(runs["a"])).json()["run_dir"] == "a"  # absolute under the root is fine
        metrics = c.get("/metrics").text
        assert 'run_dir="a"' in metrics and str(runs["a"].parent) not in metrics


def test_scoped_keys(runs: dict[str, Path], tmp_path: Path) -> None:
    ev = {"events": [{"user_id": "k", "item_id": "i1"}]}
    with make_client(runs, tmp_path, read_key="rd") as c:
        assert c.post("/v1/events", headers=ING, json=ev).status_code == 200
        assert c.post("/v1/events", headers=ADM, json=ev).status_code == 403  # admin cannot ingest
        assert c.delete("/v1/users/k", headers=ING).status_code == 403  # ingest cannot delete
        assert c.post("/v1/admin/reload", headers=ING, json={"run_dir": "a"}).status_code == 403
        assert c.post("/v1/admin/reload", headers=ADM, json={"run_dir": "a"}).status_code == 200
        assert c.get("/v1/users/k/recommendations").status_code == 401  # a read key is set: reads need it
        assert c.get("/metrics", headers=ING).status_code == 403
        assert c.get("/v1/users/k/recommendations", headers={"Authorization": "Bearer rd"}).status_code == 200
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200  # probes stay open
        assert c.delete("/v1/users/k", headers=ADM).json()["deleted_events"] == 1
    with make_client(runs, tmp_path / "legacy", ingest_key=None, admin_key=None, api_key="all") as c:
        legacy = {"Authorization": "Bearer all"}  # the one old key still covers ingest and admin
        assert c.post("/v1/events", headers=legacy, json=ev).status_code == 200
        assert c.delete("/v1/users/k", headers=legacy).status_code == 200
        assert c.get("/v1/users/k/recommendations").status_code == 200  # no read key: reads open


def test_store_outage_is_503_and_server_errors_close_the_connection(runs: dict[str, Path], tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    with make_client(runs, tmp_path, retry_after_s=3) as c:
        store = c.app.state.svc.store  # type: ignore[attr-defined]

        async def down(*args: object) -> object:
            raise StoreUnavailable("sqlite store: disk I/O error")

        async def broken(*args: object) -> object:
            raise RuntimeError("a bug")

        monkeypatch.setattr(store, "history", down)
        monkeypatch.setattr(store, "append", down)
        r = c.get("/v1/users/u/recommendations")
        assert r.status_code == 503 and r.headers["retry-after"] == "3" and r.headers["connection"] == "close"
        r = c.post("/v1/events", headers=ING, json={"events": [{"user_id": "u", "item_id": "i1"}]})
        assert r.status_code == 503 and r.headers["retry-after"] == "3" and "disk" not in r.text
        monkeypatch.setattr(store, "history", broken)
        r = c.get("/v1/users/u/recommendations")
        assert r.status_code == 500 and r.headers["connection"] == "close" and "a bug" not in r.text
        assert c.get("/healthz").headers.get("connection") != "close"


@NEEDS_REDIS
def test_redis_down_is_503_with_retry_after(runs: dict[str, Path], tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis").start()
    try:
        with make_client(runs, tmp_path, store_url=server.url) as c:
            ev = {"events": [{"user_id": "u", "item_id": "i1", "event_id": "r1"}]}
            assert c.post("/v1/events", headers=ING, json=ev).status_code == 200
            server.stop(hard=True)
            for r in (c.post("/v1/events", headers=ING, json=ev), c.get("/v1/users/u/recommendations"),
                      c.delete("/v1/users/someone-else", headers=ADM), c.get("/readyz")):
                assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
            server.start()
            assert c.post("/v1/events", headers=ING, json=ev).json()["duplicates"] == 1  # nothing lost
    finally:
        server.stop()


def test_redis_write_on_a_connection_closed_under_us_is_retried_once_then_503() -> None:
    """After a redis-server restart uvloop refuses writes on dead pooled sockets with a RuntimeError
    (found by bench/serving_chaos.py as a 500): nothing was sent, so one retry, else a 503."""
    closed = "unable to perform operation on <TCPTransport closed=True reading=False 0x1>; the handler is closed"
    calls: list[int] = []

    async def flaky() -> int:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError(closed)
        return 7

    async def dead() -> int:
        raise RuntimeError(closed)

    async def other() -> int:
        raise RuntimeError("a bug, not an outage")

    async def go() -> None:
        store = RedisStore("redis://127.0.0.1:1/0")  # never connected: _call only runs the given interaction
        try:
            assert await store._call(flaky) == 7 and len(calls) == 2
            with pytest.raises(StoreUnavailable, match="connection closed"):
                await store._call(dead)
            with pytest.raises(RuntimeError, match="a bug"):
                await store._call(other)
        finally:
            await store.close()

    asyncio.run(go())
