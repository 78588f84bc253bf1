"""Continuous learning in operation: the lock, kill -9 during a switch, drift, the CLI, the service store."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from continuous_support import COLUMNS, DAY, T0, small_retrain
from serving_support import RedisServer
from typer.testing import CliRunner

from shopformer.cli.app import app
from shopformer.data.drift import drift_report, jensen_shannon, psi
from shopformer.data.store_events import export_store_events
from shopformer.data.vocab import Vocab, Vocabs
from shopformer.pipelines.continuous import EXIT_LOCKED
from shopformer.pipelines.registry import Registry, RegistryLocked
from shopformer.recommender import Recommender
from shopformer.serving.store import RedisStore, SQLiteStore, StateStore, StoredEvent

pytest_plugins = ["continuous_support"]  # the fixtures logs, base_run, registry


def test_lock_prevents_overlapping_retrains(registry: Path, logs: Path) -> None:
    reg = Registry(registry)
    with reg.lock():
        with pytest.raises(RegistryLocked, match="locked"):
            small_retrain(registry, logs)
        res = CliRunner().invoke(app, ["retrain", str(registry), "--events", str(logs / "b.csv"),
                                       "--columns", ",".join(COLUMNS)])
        assert res.exit_code == EXIT_LOCKED, res.output
    assert reg.version_ids() == ["v0001"]


_SWITCHER = """
import sys
from shopformer.pipelines.registry import Registry
reg = Registry(sys.argv[1])
print("ready", flush=True)
while True:
    reg.promote("v0002")
    reg.rollback()
"""

_BUILDER = """
import sys, time
from shopformer.pipelines.registry import Registry
def build(tmp, version):
    (tmp / "model").mkdir()
    (tmp / "model" / "half.bin").write_bytes(b"x" * 1000)
    print("ready", flush=True)
    time.sleep(60)
    return {}
Registry(sys.argv[1]).add_version(build)
"""


def _kill_after_ready(script: str, reg: Path, delay: float) -> None:
    proc = subprocess.Popen([sys.executable, "-c", script, str(reg)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    time.sleep(delay)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def test_promotion_is_atomic_under_kill_9(registry: Path, logs: Path) -> None:
    small_retrain(registry, logs)  # v0002, a candidate
    reg = Registry(registry)
    for delay in (0.05, 0.13, 0.21):
        _kill_after_ready(_SWITCHER, registry, delay)
        pointer = json.loads((registry / "current.json").read_text())  # always complete JSON
        assert pointer["version"] in ("v0001", "v0002")
        assert (registry / "current" / "manifest.json").exists()
        assert Recommender.load(registry / "current").recommend(["i1", "i2"], k=3).pairs()
    _kill_after_ready(_BUILDER, registry, 0.05)  # killed while writing a version
    assert reg.version_ids() == ["v0001", "v0002"]  # the half-written one is never listed
    assert list(registry.glob(".v0003.*.tmp"))
    with reg.lock():  # the next lock holder clears what the killed builder left
        assert not list(registry.glob(".v0003.*.tmp"))


# ------------------------------------------------------------------------------------ drift, CLI


def test_drift_report_unknown_share_psi_and_js() -> None:
    vocabs = Vocabs(Vocab(("<pad>", "u1")), Vocab(("<pad>", "a", "b")), Vocab(("<pad>", "view", "buy")),
                    Vocab(("<pad>",)))
    train = pl.DataFrame({"user_id": ["u1"] * 4, "item_id": ["a", "b", "a", "b"],
                          "behaviour": ["view", "view", "view", "buy"], "timestamp": [T0, T0 + 1, T0 + 2, T0 + 3]})
    same = drift_report(train, train, vocabs)
    assert same["unknown_item_share"] == 0 and same["behaviour_psi"] == pytest.approx(0, abs=1e-12)
    assert same["behaviour_js"] == pytest.approx(0, abs=1e-12)
    new = pl.DataFrame({"user_id": ["u2"] * 4, "item_id": ["a", "c", "c", "d"], "behaviour": ["cart"] * 4,
                        "timestamp": [T0 + DAY] * 4})
    shifted = drift_report(train, new, vocabs)
    assert shifted["unknown_item_share"] == 0.75 and shifted["unknown_items"] == 2
    assert shifted["unknown_user_share"] == 1.0 and shifted["new_behaviours"] == ["cart"]
    assert shifted["behaviour_js"] == pytest.approx(1.0) and shifted["behaviour_psi"] > 1
    p, q = np.array([0.5, 0.5]), np.array([0.9, 0.1])
    assert psi(p, q) == pytest.approx(0.4 * np.log(1.8) - 0.4 * np.log(0.2))
    assert 0 < jensen_shannon(p, q) < 1


def test_score_shift_of_top1_scores() -> None:
    from shopformer.pipelines.gate import score_shift

    rng = np.random.default_rng(0)
    ref = rng.normal(0, 1, 2000)
    same = score_shift(rng.normal(0, 1, 2000), ref)
    assert same is not None and same["psi"] < 0.02 and same["js"] < 0.01 and same["examples"] == 2000
    moved = score_shift(np.append(rng.normal(1.5, 1, 2000), -np.inf), ref)  # -inf: no score, ignored
    assert moved is not None and moved["psi"] > 0.25 and 0.1 < moved["js"] < 1 and moved["examples"] == 2000
    assert moved["candidate_mean"] == pytest.approx(1.5, abs=0.1) and moved["current_mean"] == pytest.approx(0, abs=0.1)
    assert score_shift(np.array([-np.inf]), ref) is None and score_shift(None, ref) is None


def test_cli_list_retrain_and_bad_input(registry: Path, logs: Path, base_run: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["retrain", str(registry), "--events", str(logs / "b.csv"), "--columns",
                              ",".join(COLUMNS), "--window-days", "30", "--set", "train.epochs=2", "--promote",
                              "--no-baseline-gate", "--margin", "0.5", "--min-examples", "5"])
    assert res.exit_code == 0, res.output
    assert "v0002 promoted" in res.output
    res = runner.invoke(app, ["models", "list", str(registry)])
    assert res.exit_code == 0 and "v0002 *" in res.output and "promoted" in res.output
    res = runner.invoke(app, ["models", "show", str(registry), "v0002"])
    assert json.loads(res.output)["parent"] == "v0001"
    res = runner.invoke(app, ["retrain", str(registry)])
    assert res.exit_code == 2 and "--events" in res.output
    res = runner.invoke(app, ["retrain", str(registry), "--events", str(tmp_path / "missing.csv")])
    assert res.exit_code == 2 and "missing.csv" in res.output
    res = runner.invoke(app, ["retrain", str(registry), "--events", str(logs / "b.csv"), "--columns",
                              ",".join(COLUMNS), "--set", "model.dim=8"])
    assert res.exit_code == 2 and "--from-scratch" in res.output
    res = runner.invoke(app, ["models", "add", str(tmp_path / "other"), str(base_run.parent), "--no-promote"])
    assert res.exit_code == 0 and Registry(tmp_path / "other").current() is None
    res = runner.invoke(app, ["models", "list", str(tmp_path / "nothing")])
    assert res.exit_code == 2 and "not a model registry" in res.output
    assert Registry(registry).version_ids() == ["v0001", "v0002"]  # failed runs leave no version


@pytest.fixture(params=["sqlite", "redis"])
def service_store(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Callable[[], StateStore]]:
    """(the URL `retrain --store` reads, a factory of the service's store on it), SQLite or a real Redis."""
    if request.param == "sqlite":
        return str(tmp_path / "state.db"), lambda: SQLiteStore(tmp_path / "state.db")
    server: RedisServer = request.getfixturevalue("redis_server")
    import redis

    redis.Redis.from_url(server.url).flushdb()  # the module's server: start from an empty store
    return server.url, lambda: RedisStore(server.url)


def _fill(make: Callable[[], StateStore], events: list[StoredEvent], forget: tuple[str, ...] = ()) -> None:
    async def go() -> None:
        store = make()  # the service's store, open while `retrain` reads it
        try:
            await store.append(events, max_len=100)
            for user in forget:
                await store.forget(user)
        finally:
            await store.close()

    asyncio.run(go())


def test_export_store_events_reads_the_live_store(service_store: tuple[str, Callable[[], StateStore]],
                                                  tmp_path: Path) -> None:
    url, make = service_store
    _fill(make, [StoredEvent("u1", "i1", T0, "view"), StoredEvent("u1", "i2", T0 + 5, "buy", price=2.5),
                 StoredEvent("u2", "i9", T0 + 9, "view"), StoredEvent("u3", "i4", T0 + 1, "view")], forget=("u3",))
    assert export_store_events(url, tmp_path / "events.csv") == 3
    rows = (tmp_path / "events.csv").read_text().splitlines()
    assert rows[0] == "user_id,item_id,timestamp,behaviour,session_id,category_id,price"
    assert rows[1:] == [f"u1,i1,{T0},view,,,", f"u1,i2,{T0 + 5},buy,,,2.5", f"u2,i9,{T0 + 9},view,,,"]
    assert export_store_events(url, tmp_path / "late.csv", since=T0 + 6) == 1
    with pytest.raises(FileNotFoundError):
        export_store_events(tmp_path / "none.db", tmp_path / "x.csv")
    with pytest.raises(ValueError, match="cannot read the event store: ConnectionError"):
        export_store_events("redis://user:secret@127.0.0.1:1/0", tmp_path / "x.csv")


def test_retrain_reads_new_events_from_the_service_store(service_store: tuple[str, Callable[[], StateStore]],
                                                         registry: Path, logs: Path, tmp_path: Path) -> None:
    """Both stores, read while open; a user forgotten through the service (gone from the store,
    recorded in its ledger) does not come back from the previous version's events either."""
    from shopformer.data.ledger import open_ledger

    url, make = service_store
    rows = [line.split(",") for line in (logs / "b.csv").read_text().splitlines()]
    events = [StoredEvent(u, i, int(t), b) for u, i, b, t in rows]
    _fill(make, events, forget=("u250",))  # u250: events in a.csv (v0001's data) and in b.csv
    ledger = tmp_path / "ledger.jsonl"
    args = ["retrain", str(registry), "--store", url, "--set", "train.epochs=1", "--no-baseline-gate", "--margin",
            "1", "--min-examples", "1"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2 and "no deletion ledger" in res.output  # never without the service's ledger
    open_ledger(ledger).record(["u250"], at=T0 + 100 * DAY)
    res = CliRunner().invoke(app, [*args, "--forget-ledger", str(ledger)])
    assert res.exit_code == 0, res.output
    kept = [e for e in events if e.user_id != "u250"]
    assert f"read {len(kept):,} events" in res.output
    m = Registry(registry).read("v0002")
    assert m["events"]["new_valid"] == len(kept) and m["growth"]["added"]["items"] == 10
    data = pl.read_parquet(registry / "versions" / "v0002" / "dataset" / "events.parquet")
    assert m["events"]["forgotten_dropped"] > 0 and "u250" not in set(data["user_id"].to_list())
    res = CliRunner().invoke(app, ["retrain", str(registry), "--store", url, "--events", str(logs / "b.csv")])
    assert res.exit_code == 2 and "one of them" in res.output


def test_every_interval_parsing() -> None:
    from shopformer.cli.retrain import parse_every

    assert parse_every("30m") == 1800 and parse_every("1.5h") == 5400 and parse_every("1d") == DAY
    with pytest.raises(ValueError, match="e.g. 30m"):
        parse_every("daily")
