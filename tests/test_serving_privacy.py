"""Deletion that deletes: after forgetting a user, no byte of their ids is left in the store's files
(SQLite database + WAL + shm, Redis AOF), idempotency records hold no raw ids, the ledger keeps
replays and retraining away from the forgotten data, and ``shopformer forget`` does the same.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
from pathlib import Path

import polars as pl
import pytest
from fastapi.testclient import TestClient
from serving_support import RedisServer, synthetic_run
from typer.testing import CliRunner

from shopformer.cli.app import app as cli
from shopformer.config import ModelConfig
from shopformer.data.ledger import drop_forgotten, keyed_hash, open_ledger
from shopformer.data.options import DataValidationError
from shopformer.serving import ServeSettings, create_app
from shopformer.serving.store import RedisStore, SQLiteStore, StoredEvent

SECRET = "alice.secret-7f3a9c@example.com"  # a raw user id that must vanish
OTHER = "bob-4711"


def events_of(user: str, n: int, t0: int = 1000) -> list[StoredEvent]:
    return [StoredEvent(user, f"item-{i}", t0 + i, "pv", session_id=f"{user}-session",
                        event_id=f"{user}/evt/{i}") for i in range(n)]


def hits(files: list[Path], needle: str) -> int:
    """Occurrences of ``needle`` (UTF-8) in the files' raw bytes."""
    raw = needle.encode()
    return sum(f.read_bytes().count(raw) for f in files if f.is_file())


def sqlite_files(db: Path) -> list[Path]:
    return [db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")]


def test_sqlite_deletion_leaves_no_bytes_in_db_or_wal(tmp_path: Path) -> None:
    db = tmp_path / "state.db"

    async def go() -> None:
        s = SQLiteStore(db)
        try:
            await s.append(events_of(SECRET, 30), 100)
            await s.append(events_of(OTHER, 5), 100)
            assert hits(sqlite_files(db), SECRET) > 0  # control: the bytes are there before
            assert await s.forget(SECRET) == 30
            assert await s.history(SECRET, 100) == [] and len(await s.history(OTHER, 100)) == 5
            assert s._wcon.execute("PRAGMA secure_delete").fetchone()[0] == 1  # forced, whatever the build
        finally:
            await s.close()

    asyncio.run(go())
    assert hits(sqlite_files(db), SECRET) == 0
    assert db.with_name("state.db-wal").stat().st_size == 0 if db.with_name("state.db-wal").exists() else True
    assert hits(sqlite_files(db), OTHER) > 0  # others untouched


def test_idempotency_records_hold_no_raw_ids_and_go_with_the_user(tmp_path: Path) -> None:
    db = tmp_path / "state.db"

    async def go() -> None:
        s = SQLiteStore(db)
        try:
            await s.append(events_of(SECRET, 3) + events_of(OTHER, 2), 100)
            rows = s._wcon.execute("SELECT k, user FROM dedup").fetchall()
            assert len(rows) == 5 and not any(SECRET in k or SECRET in u or "evt" in k for k, u in rows)
            await s.forget(SECRET)
            assert s._wcon.execute("SELECT count(*) FROM dedup").fetchone()[0] == 2
        finally:
            await s.close()

    asyncio.run(go())


def test_old_stores_with_raw_event_ids_are_migrated(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    con = sqlite3.connect(db)
    con.executescript("""
        CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, user_id TEXT NOT NULL, item_id TEXT NOT NULL,
            ts INTEGER NOT NULL, event_type TEXT, session_id TEXT, category_id TEXT, price REAL, event_id TEXT);
        CREATE TABLE event_ids (event_id TEXT PRIMARY KEY, created REAL NOT NULL) WITHOUT ROWID;
    """)
    con.execute("INSERT INTO events (user_id, item_id, ts, event_id) VALUES (?, 'a', 1, ?)", (SECRET, "old-1"))
    con.execute("INSERT INTO event_ids VALUES ('old-1', strftime('%s','now'))")
    con.commit()
    con.close()

    async def go() -> None:
        s = SQLiteStore(db)
        try:
            assert (await s.append([StoredEvent(SECRET, "a", 1, event_id="old-1")], 10)).duplicates == ["old-1"]
            await s.forget(SECRET)
            assert (await s.append([StoredEvent(SECRET, "a", 1, event_id="old-1")], 10)).applied == 1
        finally:
            await s.close()

    asyncio.run(go())


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server binary not found")
def test_redis_deletion_rewrites_the_aof(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis").start()
    aof = tmp_path / "redis"

    def aof_files() -> list[Path]:
        return [p for p in aof.rglob("*") if p.is_file() and "redis.log" not in p.name]

    async def go() -> None:
        s = RedisStore(server.url, aof_rewrite_interval_s=3600)
        try:
            await s.append(events_of(SECRET, 20), 100)
            await s.append(events_of(OTHER, 5), 100)
            assert hits(aof_files(), SECRET) > 0
            assert await s.forget(SECRET) == 20
            assert await s.wait_for_rewrite(30)  # the first deletion rewrites at once
            assert hits(aof_files(), SECRET) == 0 and hits(aof_files(), OTHER) > 0
            keys = await s._r.keys("*")
            assert not any(SECRET in k for k in keys) and not any("evt" in k for k in keys)
            # A second deletion within the interval is coalesced into one rewrite at its end ...
            await s.append(events_of("carol", 3), 100)
            await s.forget("carol")
            assert s._rewrite_task is not None and not s._rewrite_task.done()
        finally:
            await s.close()  # ... which close() runs now rather than dropping it

    try:
        asyncio.run(go())

        async def settled() -> bool:
            s = RedisStore(server.url)
            try:
                return await s.wait_for_rewrite(30)
            finally:
                await s.close()

        assert asyncio.run(settled()) and hits(aof_files(), "carol") == 0
    finally:
        server.stop()


# ------------------------------------------------------------------------------------ ledger
def test_ledger_hashes_ids_survives_torn_lines_and_filters_prepare_data(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    led = open_ledger(path)
    led.record([SECRET], at=2000)
    assert SECRET.encode() not in path.read_bytes()
    with open(path, "ab") as f:
        f.write(b'{"user": "abc')  # a crash mid-append
    again = open_ledger(path)
    assert again.forgotten_at(SECRET) == 2000 and again.forgotten_at(OTHER) is None
    again.record([OTHER], at=2500)  # the torn line is fenced off by a newline
    assert open_ledger(path).forgotten_at(OTHER) == 2500
    frame = pl.DataFrame({"user_id": [SECRET, SECRET, OTHER, "carol"], "item_id": ["a", "b", "c", "d"],
                          "timestamp": [1999, 2001, 2500, 1]})
    kept, dropped = drop_forgotten(frame, open_ledger(path))
    assert dropped == 2 and kept["item_id"].to_list() == ["b", "d"]  # SECRET came back after the deletion
    kept, dropped = drop_forgotten(frame.drop("timestamp"), open_ledger(path), ts_col=None)  # no time: all
    assert dropped == 3 and kept["item_id"].to_list() == ["d"]
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "not json", *lines[1:]]) + "\n")
    with pytest.raises(DataValidationError, match=r"ledger.jsonl:2:"):
        open_ledger(path)
    (tmp_path / "x.jsonl").write_text("{}\n")
    with pytest.raises(DataValidationError, match=r"x.jsonl:1: not a shopformer-forget-ledger"):
        open_ledger(tmp_path / "x.jsonl")
    assert keyed_hash(b"k" * 16, SECRET) != keyed_hash(b"j" * 16, SECRET)


def test_a_ledger_sees_deletions_recorded_by_another_process_sharing_the_file(tmp_path: Path) -> None:
    """Several service workers share one ledger: a deletion through one worker must stop the
    others from accepting a replayed event of that user (each holds its own loaded copy)."""
    path = tmp_path / "ledger.jsonl"
    worker_a, worker_b = open_ledger(path), open_ledger(path)
    assert worker_b.forgotten_at(SECRET) is None
    worker_a.record([SECRET], at=2000)
    assert worker_b.forgotten_at(SECRET) == 2000
    with open(path, "ab") as f:
        f.write(b'{"user": "')  # another process mid-append: not read until its line is complete
    assert worker_b.forgotten_at(OTHER) is None
    worker_a.record([OTHER], at=2600)  # fences the torn line off and appends
    assert worker_b.forgotten_at(OTHER) == 2600 and worker_b.forgotten_at(SECRET) == 2000


def test_delete_endpoint_then_replays_are_refused(tmp_path: Path) -> None:
    run = synthetic_run(tmp_path / "run", [f"item-{i}" for i in range(40)], ModelConfig(dim=16, layers=1, heads=1,
                                                                                     max_len=50))
    db, ledger = tmp_path / "state.db", tmp_path / "ledger.jsonl"
    settings = ServeSettings(run_dir=run, store_url=f"sqlite:///{db}", forget_ledger=ledger, ingest_key="i",
                             admin_key="a")
    ing, adm = {"Authorization": "Bearer i"}, {"Authorization": "Bearer a"}
    batch = [{"user_id": SECRET, "item_id": e.item_id, "timestamp": e.timestamp, "event_id": e.event_id}
             for e in events_of(SECRET, 10)]
    with TestClient(create_app(settings)) as c:
        assert c.post("/v1/events", headers=ing, json={"events": batch}).json()["accepted"] == 10
        r = c.delete(f"/v1/users/{SECRET}", headers=adm)
        assert r.status_code == 200 and r.json()["deleted_events"] == 10
        replay = c.post("/v1/events", headers=ing, json={"events": batch}).json()
        assert replay["accepted"] == 0 and replay["forgotten"] == 10
        assert c.get(f"/v1/users/{SECRET}/recommendations").json()["fallback_reason"] == "unknown_user"
        later = c.post("/v1/events", headers=ing, json={"events": [
            {"user_id": SECRET, "item_id": "item-1", "timestamp": "2999-01-01T00:00:00Z"}]}).json()
        assert later["accepted"] == 1  # a user may come back: new activity is stored
        c.delete(f"/v1/users/{SECRET}", headers=adm)
        assert "shopformer_events_total{outcome=\"forgotten\"} 10.0" in c.get("/metrics").text
    assert hits(sqlite_files(db), SECRET) == 0 and SECRET.encode() not in ledger.read_bytes()
    with TestClient(create_app(settings)) as c:  # the ledger outlives a restart
        assert c.post("/v1/events", headers=ing, json={"events": batch}).json()["forgotten"] == 10


def test_forget_cli(tmp_path: Path) -> None:
    db, ledger = tmp_path / "state.db", tmp_path / "ledger.jsonl"

    async def fill() -> None:
        s = SQLiteStore(db)
        await s.append(events_of(SECRET, 4) + events_of(OTHER, 2), 100)
        await s.close()

    asyncio.run(fill())
    runner = CliRunner()
    res = runner.invoke(cli, ["forget", SECRET, "nobody", "--store", f"sqlite:///{db}", "--ledger", str(ledger)])
    assert res.exit_code == 0, res.output
    assert "forgot 2 user(s): 4 event(s) deleted" in res.output
    assert hits(sqlite_files(db), SECRET) == 0
    assert open_ledger(ledger).forgotten_at(SECRET) is not None
    entries = [json.loads(x) for x in ledger.read_text().splitlines()[1:]]
    assert len(entries) == 2 and all(set(e) == {"user", "at"} for e in entries)
    res = runner.invoke(cli, ["forget", "x", "--store", "postgres://nope", "--ledger", str(ledger)])
    assert res.exit_code == 2 and "unsupported scheme" in res.output and "Traceback" not in res.output
    res = runner.invoke(cli, ["forget", "x", "--store", f"sqlite:///{db}", "--ledger", str(tmp_path)])
    assert res.exit_code == 2 and "is a directory" in res.output
