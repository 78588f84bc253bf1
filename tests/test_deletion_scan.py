"""After deletion, nothing of the user is recoverable: delete a user through the service, build the
next version's data set the way retraining does (previous data set + the store's events, with the
deletion ledger), then scan every file (store database + WAL, ledger, the next data set incl. its
vocabulary, the service's log) for the raw id's bytes and for the user's (item, time) events.
``bench/deletion_scan.py`` runs the same through a real retrain on both stores.
"""

from __future__ import annotations

import logging
from pathlib import Path

import polars as pl
import pytest
from fastapi.testclient import TestClient
from serving_support import synthetic_run

from shopformer.config import ModelConfig
from shopformer.data.growth import prepare_window
from shopformer.data.ingest import IngestOptions
from shopformer.data.ledger import TOMBSTONE, Ledger, keyed_hash, open_ledger, redact_forgotten
from shopformer.data.prepare import prepare
from shopformer.data.store_events import export_store_events
from shopformer.data.vocab import PAD_TOKEN, Vocab, Vocabs
from shopformer.serving import ServeSettings, create_app

SECRET = "dora.raw-9c41@example.org"
T0 = 1_700_000_000
ITEMS = [f"i{i}" for i in range(20)]
SECRET_EVENTS = [(ITEMS[(7 * k) % 20], T0 + 1_000 + 37 * k) for k in range(6)]  # their (item, time) pairs


def files_with(root: Path, needle: bytes) -> list[str]:
    return [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_forgotten_user_leaves_no_bytes_in_store_logs_or_next_dataset(tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    lines = ["user_id,item_id,behaviour,timestamp"]
    lines += [f"u{u},{ITEMS[(u + j) % 20]},view,{T0 + 100 * u + j}" for u in range(30) for j in range(5)]
    lines += [f"{SECRET},{item},view,{t}" for item, t in SECRET_EVENTS]
    (tmp_path / "old.csv").write_text("\n".join(lines) + "\n")
    csv = IngestOptions(format="csv", has_header=True)
    prepare([tmp_path / "old.csv"], tmp_path / "ds0", csv)
    assert files_with(tmp_path / "ds0", SECRET.encode())  # control: the previous version holds the user

    run = synthetic_run(tmp_path / "run", ITEMS, ModelConfig(dim=16, layers=1, heads=1, max_len=20))
    state = tmp_path / "state"
    settings = ServeSettings(run_dir=run, store_url=f"sqlite:///{state / 'state.db'}",
                             forget_ledger=state / "ledger.jsonl", ingest_key="i", admin_key="a")
    ing, adm = {"Authorization": "Bearer i"}, {"Authorization": "Bearer a"}
    with TestClient(create_app(settings)) as c:
        events = [{"user_id": SECRET, "item_id": item, "timestamp": t + 50_000, "behaviour": "view",
                   "event_id": f"{SECRET}-{t}", "session_id": f"{SECRET}-s"} for item, t in SECRET_EVENTS]
        events += [{"user_id": "u1", "item_id": "i3", "timestamp": T0 + 60_000, "behaviour": "view"}]
        assert c.post("/v1/events", headers=ing, json={"events": events}).json()["accepted"] == 7
        assert c.get(f"/v1/users/{SECRET}/recommendations").json()["history_length"] == 6  # a served list too
        assert files_with(state, SECRET.encode())  # control
        assert c.delete(f"/v1/users/{SECRET}", headers=adm).json()["deleted_events"] == 6
    assert files_with(state, SECRET.encode()) == []  # db, WAL, shm, ledger

    export_store_events(state / "state.db", tmp_path / "store.csv")
    ledger = open_ledger(state / "ledger.jsonl", create=False)
    res = prepare_window(tmp_path / "ds0", [tmp_path / "store.csv"], tmp_path / "ds1", None, csv, ledger=ledger)
    assert res.stats["forgotten_dropped"] == 6 and res.stats["users_redacted"] == 1
    assert files_with(tmp_path / "ds1", SECRET.encode()) == []  # events, vocab.json, stats, rejects
    users = Vocabs.load(tmp_path / "ds1" / "vocab.json").users
    old_users = Vocabs.load(tmp_path / "ds0" / "vocab.json").users
    gone = old_users.index[SECRET]
    assert users.tokens[gone] == TOMBSTONE.format(gone) and len(users) == len(old_users)  # ids never move
    assert [t for i, t in enumerate(users.tokens) if i != gone] == [t for i, t in enumerate(old_users.tokens)
                                                                    if i != gone]
    ev = pl.read_parquet(tmp_path / "ds1" / "events.parquet")
    pairs = set(zip(ev["item_id"].to_list(), ev["timestamp"].to_list(), strict=True))
    assert not pairs & {(item, t + dt) for item, t in SECRET_EVENTS for dt in (0, 50_000)}
    assert ev.filter(pl.col("user_id") == "u1").height >= 5  # others kept, store events included
    service_log = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("httpx"))
    assert "serving" in service_log and SECRET not in service_log


def test_redaction_keeps_returning_users_and_positions(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l", b"s" * 16)
    users = Vocab((PAD_TOKEN, "a", "b", "c"))
    assert redact_forgotten(users, ledger, ["a"]) == (users, 0)
    ledger.forgotten = {keyed_hash(ledger.salt, "a"): 1, keyed_hash(ledger.salt, "b"): 1}
    out, n = redact_forgotten(users, ledger, ["b", "c"])  # b came back after the deletion: kept
    assert n == 1 and out.tokens == (PAD_TOKEN, "<forgotten:1>", "b", "c")
    assert redact_forgotten(out, ledger, ["c"])[0].tokens == (PAD_TOKEN, "<forgotten:1>", "<forgotten:2>", "c")
