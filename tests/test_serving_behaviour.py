"""The behaviour concept over HTTP (in-process app with its lifespan, SQLite store): one field name
(``behaviour``, with ``event_type`` as a deprecated alias), unknown names never remapped."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from serving_support import synthetic_run

from shopformer.config import ModelConfig, TaskConfig
from shopformer.serving.schemas import EventIn, HistoryEventIn
from shopformer.serving.settings import ServeSettings
from shopformer.serving.store import SQLiteStore, StoredEvent

ITEMS = [f"i{i}" for i in range(40)]
TINY = ModelConfig(dim=16, layers=1, heads=1, max_len=20, dropout=0.0, emb_dropout=0.0)
KEY = "k"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    from shopformer.serving import create_app

    tmp = tmp_path_factory.mktemp("svc")
    run = synthetic_run(tmp / "heads", ITEMS, TINY, seed=3, task=TaskConfig(kind="multi"))
    settings = ServeSettings(run_dir=run, store_url=f"sqlite:///{tmp / 'state.db'}", api_key=KEY)
    with TestClient(create_app(settings)) as c:
        yield c


def test_event_type_is_a_deprecated_alias_of_behaviour() -> None:
    assert EventIn.model_validate({"user_id": "u", "item_id": "i", "event_type": "pv"}).behaviour == "pv"
    assert EventIn.model_validate({"user_id": "u", "item_id": "i", "behaviour": "pv"}).behaviour == "pv"
    for both in ({"behaviour": "buy", "event_type": "pv"}, {"behaviour": "pv", "event_type": "pv"},
                 {"behaviour": None, "event_type": "pv"}):  # as the published schema says: never both
        with pytest.raises(ValueError, match="not both"):
            EventIn.model_validate({"user_id": "u", "item_id": "i", **both})
    assert HistoryEventIn.model_validate({"item_id": "i", "event_type": "cart"}).behaviour == "cart"


def test_openapi_documents_behaviour_and_the_deprecated_alias(client: TestClient) -> None:
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    for name in ("EventIn", "HistoryEventIn"):
        props = schemas[name]["properties"]
        assert "behaviour" in props and "event_type" in props, name
        assert props["event_type"].get("deprecated") is True and "deprecated" in props["event_type"]["description"]
        assert "deprecated" not in props["behaviour"]
    assert "unknown_behaviours" in schemas["EventsAck"]["properties"]
    assert "skipped_behaviours" in schemas["RecommendationsOut"]["properties"]


def test_events_with_behaviour_or_event_type_read_the_same(client: TestClient) -> None:
    new = [{"user_id": "new", "item_id": f"i{i}", "timestamp": 100 + i, "behaviour": b}
           for i, b in enumerate(["pv", "cart", "pv", "buy"], 1)]
    old = [{**{k: v for k, v in e.items() if k != "behaviour"}, "user_id": "old", "event_type": e["behaviour"]}
           for e in new]
    for events in (new, old):
        r = client.post("/v1/events", json={"events": events}, headers=AUTH)
        assert r.status_code == 200, r.text
        assert r.json()["unknown_behaviours"] == []
    a = client.get("/v1/users/new/recommendations", params={"k": 5}).json()
    b = client.get("/v1/users/old/recommendations", params={"k": 5}).json()
    assert a["items"] == b["items"] and a["fallback"] is False
    # ad hoc: the same history with either name gives the stored user's answer
    for key in ("behaviour", "event_type"):
        hist = [{"item_id": e["item_id"], key: e["behaviour"], "timestamp": e["timestamp"]} for e in new]
        r = client.post("/v1/recommendations", json={"history": hist, "k": 5})
        assert r.status_code == 200 and r.json()["items"] == a["items"], r.text


def test_unknown_behaviours_in_events_are_reported_and_skipped_never_remapped(client: TestClient) -> None:
    events = [{"user_id": "tele", "item_id": "i1", "timestamp": 10, "behaviour": "pv"},
              {"user_id": "tele", "item_id": "i2", "timestamp": 20, "behaviour": "teleport"}]
    r = client.post("/v1/events", json={"events": events}, headers=AUTH)
    assert r.status_code == 200 and r.json()["unknown_behaviours"] == ["teleport"], r.text
    body = client.get("/v1/users/tele/recommendations", params={"k": 5}).json()
    assert body["skipped_behaviours"] == ["teleport"] and body["history_length"] == 2
    # the answer is the one for the known event alone (the unknown one is skipped, not read as 'pv')
    alone = client.post("/v1/recommendations", json={"history": [{"item_id": "i1", "behaviour": "pv",
                                                                  "timestamp": 10}], "k": 5}).json()
    assert body["items"] == alone["items"] and alone["skipped_behaviours"] == []


def test_unknown_ranking_behaviour_is_a_422_naming_the_known_ones(client: TestClient) -> None:
    r = client.get("/v1/users/new/recommendations", params={"behaviour": "teleport"})
    assert r.status_code == 422
    err = r.json()["detail"][0]
    assert err["loc"] == ["query", "behaviour"] and err["type"] == "behaviour_unknown"
    assert "unknown behaviour 'teleport'" in err["msg"] and "pv, cart, fav, buy" in err["msg"]
    r = client.post("/v1/recommendations", json={"history": [{"item_id": "i1"}], "behaviour": "teleport"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "behaviour"]
    for b in ("buy", "*"):
        assert client.get("/v1/users/new/recommendations", params={"behaviour": b}).status_code == 200


def test_stores_written_before_the_rename_still_load(tmp_path: Path) -> None:
    import asyncio

    db = tmp_path / "old.db"
    con = sqlite3.connect(db)  # the table exactly as earlier releases created it
    con.executescript("""
        CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, user_id TEXT NOT NULL, item_id TEXT NOT NULL,
            ts INTEGER NOT NULL, event_type TEXT, session_id TEXT, category_id TEXT, price REAL, event_id TEXT);
        INSERT INTO events (user_id, item_id, ts, event_type) VALUES ('u', 'i1', 5, 'cart');
    """)
    con.commit()
    con.close()

    async def read() -> list[StoredEvent]:
        store = SQLiteStore(db)
        try:
            await store.append([StoredEvent("u", "i2", 6, "buy")], 10)
            return await store.history("u", 10)
        finally:
            await store.close()

    hist = asyncio.run(read())
    assert [(e.item_id, e.behaviour) for e in hist] == [("i1", "cart"), ("i2", "buy")]
    assert hist[0].event_type == "cart"  # the old attribute name still reads (deprecated)
    with sqlite3.connect(db) as con:  # and the column is the one older releases read
        assert con.execute("SELECT event_type FROM events ORDER BY ts").fetchall() == [("cart",), ("buy",)]


def test_redis_histories_written_before_the_rename_still_load(tmp_path: Path) -> None:
    import asyncio
    import json
    import shutil

    from serving_support import RedisServer

    from shopformer.serving.store import RedisStore

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server binary not found (scripts/ensure_redis.sh)")
    server = RedisServer(tmp_path / "redis").start()

    async def run() -> list[StoredEvent]:
        import redis.asyncio as aioredis

        raw = aioredis.from_url(server.url, decode_responses=True)
        # a member exactly as earlier releases wrote it: [item, event_type, session, category, price, event_id]
        await raw.zadd("shopformer:h:u", {"0000000000000001|" + json.dumps(["i1", "cart", None, None, None, None]): 5})
        await raw.aclose()
        store = RedisStore(server.url)
        try:
            await store.append([StoredEvent("u", "i2", 6, "buy")], 10)
            return await store.history("u", 10)
        finally:
            await store.close()

    try:
        hist = asyncio.run(run())
    finally:
        server.stop()
    assert [(e.item_id, e.behaviour, e.timestamp) for e in hist] == [("i1", "cart", 5), ("i2", "buy", 6)]
