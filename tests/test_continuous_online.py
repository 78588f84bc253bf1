"""The running service and continuous learning: served lists and the online hit rate, drift in
/metrics, and a service that follows promotions and rollbacks of a registry (in-process app with its
lifespan; real SQLite files and a real redis-server)."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from serving_support import RedisServer, synthetic_run
from typer.testing import CliRunner

from shopformer.cli.app import app as cli
from shopformer.config import ModelConfig
from shopformer.data.ingest import IngestOptions
from shopformer.data.prepare import prepare
from shopformer.pipelines.continuous import add_run
from shopformer.serving import ServeSettings, create_app
from shopformer.serving.online import match_served
from shopformer.serving.store import RedisStore, ServedList, SQLiteStore, StateStore, StoredEvent

ITEMS = [f"i{i}" for i in range(1, 31)]
TINY = ModelConfig(dim=16, layers=1, heads=1, max_len=20, dropout=0.0, emb_dropout=0.0)
KEY = "k"
AUTH = {"Authorization": f"Bearer {KEY}"}


def test_match_served_settles_each_list_by_the_next_event() -> None:
    lists = [ServedList(100, ("a", "b")), ServedList(150, ("c",)), ServedList(900, ("z",))]
    # 120: after the list of 100 only -> hit on b; 200: after 150 -> miss; 5000: 900 is past the window.
    out = match_served(lists, [(120, "b"), (130, "a"), (200, "x"), (5000, "z")], window_s=1000)
    assert (out.hits, out.misses, out.expired) == (1, 1, 1)
    out = match_served(lists[2:], [(1500, "z")], window_s=1000)
    assert (out.hits, out.misses, out.expired) == (1, 0, 0)
    assert match_served(lists, [(50, "a")], window_s=1000).hits == 0  # an event before any list settles none


def test_score_drift_compares_recent_top_scores_with_the_first_after_loading() -> None:
    from shopformer.serving.metrics import Metrics
    from shopformer.serving.online import SCORE_WINDOW, OnlineMonitor

    monitor = OnlineMonitor(ServeSettings(served_log=False), Metrics())
    rng = np.random.default_rng(0)

    def serve(scores: np.ndarray) -> None:
        for x in scores:
            monitor.served(None, None, "u", ["i1"], float(x))  # type: ignore[arg-type]  # nothing is logged
        monitor.served(None, None, "u", ["i1"], None)  # type: ignore[arg-type]  # fallbacks do not count

    serve(rng.normal(0, 1, SCORE_WINDOW))
    assert monitor.score_psi() == 0.0  # no recent window yet
    serve(rng.normal(0, 1, SCORE_WINDOW))
    assert monitor.score_psi() < 0.1
    serve(rng.normal(1.5, 1, SCORE_WINDOW))
    assert monitor.score_psi() > 0.25
    monitor.refresh()
    assert _metric(monitor.metrics.render().decode(), 'shopformer_drift{indicator="score_psi"}') > 0.25


@pytest.fixture(params=["sqlite", "redis"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], StateStore]:
    if request.param == "sqlite":
        return lambda: SQLiteStore(tmp_path / "state.db")
    server: RedisServer = request.getfixturevalue("redis_server")
    return lambda: RedisStore(server.url, prefix=f"t{time.monotonic_ns()}:")


def test_served_lists_are_bounded_taken_once_and_forgotten(make_store: Callable[[], StateStore]) -> None:
    async def body() -> None:
        s = make_store()
        try:
            for t in range(10):
                await s.log_served("u", 1000 + t, [f"i{t}", "x"], keep=3, retention_s=3600)
            await s.log_served("v", 1000, ["i1"], keep=3, retention_s=3600)
            await s.log_served("v", 10_000, ["i2"], keep=3, retention_s=3600)  # the list of 1000 is too old now
            assert await s.take_served("u", 1007) == [ServedList(1007, ("i7", "x"))]  # the newest 3 were kept
            assert await s.take_served("u", 1007) == []  # taken once
            assert [x.timestamp for x in await s.take_served("u", 2000)] == [1008, 1009]
            assert await s.take_served("v", 5000) == []
            await s.append([StoredEvent("v", "i1", 10_001)], 10)
            assert await s.forget("v") == 1
            assert await s.take_served("v", 20_000) == []  # deleted with the user
        finally:
            await s.close()

    asyncio.run(body())


def _dataset(root: Path) -> Path:
    """A prepared data set whose behaviour mix is 3 pv : 1 buy."""
    lines = ["user_id,item_id,behaviour,timestamp"]
    for u in range(8):
        lines += [f"u{u},i{(u + j) % 30 + 1},{'buy' if j % 4 == 3 else 'pv'},{1_600_000_000 + 60 * (u * 8 + j)}"
                  for j in range(8)]
    (root / "log.csv").write_text("\n".join(lines) + "\n")
    prepare([root / "log.csv"], root / "dataset", IngestOptions(has_header=True))
    return root / "dataset"


@pytest.fixture()
def registry(tmp_path: Path) -> Path:
    """v0001 current, v0002 a candidate: two models (different weights) on the same catalogue."""
    data = _dataset(tmp_path)
    for seed in (1, 2):
        synthetic_run(tmp_path / f"run{seed}", ITEMS, TINY, seed=seed)
        add_run(tmp_path / "reg", tmp_path / f"run{seed}", data, promote=seed == 1)
    return tmp_path / "reg"


def _metric(text: str, name: str) -> float | None:
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


def _wait(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_online_hit_rate_and_drift_in_metrics(registry: Path, tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    settings = ServeSettings(run_dir=registry / "current", store_url=f"sqlite:///{db}", api_key=KEY,
                             forget_ledger=tmp_path / "ledger.jsonl")
    with TestClient(create_app(settings)) as c:
        def post(user: str, item: str, behaviour: str = "pv") -> None:
            ev = {"user_id": user, "item_id": item, "behaviour": behaviour}
            assert c.post("/v1/events", json={"events": [ev]}, headers=AUTH).status_code == 200

        def recommended(user: str) -> list[str]:
            res = c.get(f"/v1/users/{user}/recommendations", params={"k": 5})
            assert res.status_code == 200
            return [x["item_id"] for x in res.json()["items"]]

        def metrics() -> str:
            return c.get("/metrics").text

        post("a", "i1")
        served = recommended("a")
        post("a", served[2])  # a hit
        _wait(lambda: _metric(metrics(), 'shopformer_online_next_events_total{outcome="hit"}') == 1.0)
        served = recommended("a")
        post("a", next(i for i in ITEMS if i not in served), "buy")  # a miss
        _wait(lambda: _metric(metrics(), 'shopformer_online_next_events_total{outcome="miss"}') == 1.0)
        post("a", "brand-new-item", "buy")  # no list served before it: neither hit nor miss
        text = metrics()
        assert _metric(text, "shopformer_online_hit_rate") == 0.5
        assert _metric(text, "shopformer_served_lists_total") == 2.0
        # Drift since load: 4 events, 1 on an unknown item; mix 2 pv : 2 buy vs 3 : 1 in training.
        assert _metric(text, 'shopformer_drift{indicator="events"}') == 4.0
        assert _metric(text, 'shopformer_drift{indicator="unknown_item_share"}') == 0.25
        psi = _metric(text, 'shopformer_drift{indicator="behaviour_psi"}')
        js = _metric(text, 'shopformer_drift{indicator="behaviour_js"}')
        assert psi is not None and js is not None and psi > 0.1 and 0 < js < 0.1
        recommended("b")  # an unknown user's popularity list is logged too
        recommended("a")
        # at once: a list still being logged in the background is written first, then deleted
        assert c.delete("/v1/users/a", headers=AUTH).status_code == 200
        count = "SELECT count(*) FROM served WHERE user_id = ?"
        _wait(lambda: sqlite3.connect(db).execute(count, ("b",)).fetchone()[0] == 1)
        time.sleep(0.2)
        with sqlite3.connect(db) as con:  # the served lists leave with the user's other data
            assert con.execute(count, ("a",)).fetchone()[0] == 0


def test_service_follows_promotion_and_rollback_restores_answers_byte_for_byte(registry: Path,
                                                                                  tmp_path: Path) -> None:
    settings = ServeSettings(run_dir=registry / "current", store_url=f"sqlite:///{tmp_path / 's.db'}",
                             api_key=KEY, watch_run_dir=True, watch_interval_s=0.05,
                             forget_ledger=tmp_path / "ledger.jsonl")
    versions = {v: json.loads((registry / "versions" / v / "model" / "manifest.json").read_text())["version_id"]
                for v in ("v0001", "v0002")}
    history = {"history": [{"item_id": i} for i in ("i3", "i4", "i9")], "k": 10}
    with TestClient(create_app(settings)) as c:
        def ask() -> httpx.Response:
            res = c.post("/v1/recommendations", json=history)
            assert res.status_code == 200
            return res

        def serving(version: str) -> bool:
            return ask().headers["x-model-version"] == versions[version]

        before = ask()
        assert before.headers["x-model-version"] == versions["v0001"]
        res = CliRunner().invoke(cli, ["models", "promote", str(registry), "v0002"])
        assert res.exit_code == 0, res.output
        _wait(lambda: serving("v0002"))
        assert ask().content != before.content
        res = CliRunner().invoke(cli, ["models", "rollback", str(registry)])
        assert res.exit_code == 0, res.output
        _wait(lambda: serving("v0001"))
        assert ask().content == before.content  # byte for byte
        reloads = _metric(c.get("/metrics").text, 'shopformer_model_reloads_total{result="ok"}')
        assert reloads == 2.0
