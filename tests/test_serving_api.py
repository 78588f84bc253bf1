"""Every endpoint against a real server process (``python -m shopformer.cli serve``), once per
state backend: SQLite, and Redis on a real ``redis-server`` (skipped only if the binary is absent).
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from serving_support import RedisServer, ServerProcess, synthetic_run

from shopformer.config import ModelConfig, TaskConfig

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
ITEMS = [f"i{i}" for i in range(60)]
TINY = ModelConfig(dim=16, layers=1, heads=1, max_len=20, dropout=0.0, emb_dropout=0.0)
LIMITS = {"SHOPFORMER_MAX_EVENTS_PER_BATCH": "50", "SHOPFORMER_MAX_BODY_BYTES": "16384", "SHOPFORMER_MAX_K": "30"}


@dataclass
class Service:
    client: httpx.Client
    version: str
    runs: dict[str, Path]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    a = synthetic_run(root / "a", ITEMS, TINY, seed=1)
    b = synthetic_run(root / "b", ITEMS + ["new-item"], TINY, seed=2)
    heads = synthetic_run(root / "heads", ITEMS, TINY, seed=3, task=TaskConfig(kind="multi"))
    bad = shutil.copytree(a, root / "corrupted")
    weights = bytearray((bad / "model.safetensors").read_bytes())
    weights[-10] ^= 0xFF
    (bad / "model.safetensors").write_bytes(bytes(weights))
    return {"a": a, "b": b, "heads": heads, "corrupted": bad, "missing": root / "missing"}


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def service(request: pytest.FixtureRequest, runs: dict[str, Path],
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    tmp = tmp_path_factory.mktemp(f"svc-{request.param}")
    redis = None
    if request.param == "redis":
        if shutil.which("redis-server") is None:
            pytest.skip("redis-server binary not found (apt-get install redis-server); Redis backend not tested")
        redis = RedisServer(tmp / "redis").start()
        url = redis.url
    else:
        url = f"sqlite:///{tmp / 'state.db'}"
    env = {**LIMITS, "SHOPFORMER_RELOAD_ROOT": str(runs["a"].parent)}
    server = ServerProcess(runs["a"], url, api_key=KEY, log_path=tmp / "server.log", env=env).start()
    with httpx.Client(base_url=server.url, timeout=30) as client:
        version = client.get("/healthz").json()["model_version"]
        yield Service(client, version, runs)
    code = server.stop()  # SIGTERM: uvicorn shuts down cleanly, then re-raises the signal (-15)
    assert code in (0, -15) and "Traceback" not in server.log_tail(100_000), server.log_tail()
    if redis is not None:
        redis.stop()


def post_events(c: httpx.Client, events: list[dict], headers: dict | None = None) -> httpx.Response:
    return c.post("/v1/events", json={"events": events}, headers=AUTH if headers is None else headers)


def names_version(r: httpx.Response, version: str) -> None:
    assert r.headers["x-model-version"] == version
    if r.headers.get("content-type", "").startswith("application/json"):
        assert r.json()["model_version"] == version


# --------------------------------------------------------------------------------------- ops
def test_health_ready_metrics(service: Service) -> None:
    c = service.client
    for path in ("/healthz", "/readyz"):
        r = c.get(path)
        assert r.status_code == 200, r.text
        names_version(r, service.version)
    c.get("/v1/users/someone/recommendations")
    m = c.get("/metrics")
    assert m.status_code == 200 and m.headers["x-model-version"] == service.version
    text = m.text
    assert 'shopformer_model_info{index="exact",model="sasrec",run_dir="a"' in text  # relative: no absolute paths
    assert str(service.runs["a"].parent) not in text
    assert f'version="{service.version}"' in text
    assert 'shopformer_http_requests_total{method="GET",route="/v1/users/{user_id}/recommendations",status="200"}' \
        in text
    assert "shopformer_http_request_duration_seconds_bucket" in text


def test_openapi_documents_every_endpoint(service: Service) -> None:
    doc = service.client.get("/openapi.json").json()
    paths = doc["paths"]
    assert set(paths["/v1/events"]) == {"post"} and "delete" in paths["/v1/users/{user_id}"]
    assert {"/v1/recommendations", "/v1/items/{item_id}/similar", "/v1/admin/reload", "/healthz", "/readyz",
            "/metrics", "/v1/users/{user_id}/recommendations"} <= set(paths)
    assert {"ingestKey", "adminKey"} <= set(doc["components"]["securitySchemes"])  # scoped keys


# ------------------------------------------------------------------------ events and reads
def test_ingest_then_recommend_from_stored_history(service: Service) -> None:
    c = service.client
    events = [{"user_id": "alice", "item_id": f"i{i}", "timestamp": 1000 + i, "event_type": "pv",
               "event_id": f"alice-{i}"} for i in range(1, 6)]
    events.append({"user_id": "alice", "item_id": "not-in-catalogue", "timestamp": 1010, "event_type": "buy",
                   "price": 9.5, "session_id": "s1", "category_id": "c1", "event_id": "alice-x"})
    r = post_events(c, events)
    assert r.status_code == 200, r.text
    names_version(r, service.version)
    assert r.json()["accepted"] == 6 and r.json()["unknown_items"] == ["not-in-catalogue"]
    r = c.get("/v1/users/alice/recommendations", params={"k": 7, "exclude_seen": True})
    assert r.status_code == 200, r.text
    names_version(r, service.version)
    body = r.json()
    assert body["fallback"] is False and body["fallback_reason"] is None and body["user_id"] == "alice"
    assert body["history_length"] == 6 and body["skipped_items"] == ["not-in-catalogue"]
    got = [x["item_id"] for x in body["items"]]
    assert len(got) == 7 and not set(got) & {f"i{i}" for i in range(1, 6)}
    scores = [x["score"] for x in body["items"]]
    assert scores == sorted(scores, reverse=True)
    # The same history sent ad hoc gives the same answer, and stores nothing.
    adhoc = c.post("/v1/recommendations", json={"history": [
        {"item_id": e["item_id"], "event_type": e["event_type"], "timestamp": e["timestamp"]} for e in events
    ], "k": 7, "exclude_seen": True})
    assert adhoc.status_code == 200, adhoc.text
    names_version(adhoc, service.version)
    assert [x["item_id"] for x in adhoc.json()["items"]] == got and adhoc.json()["user_id"] is None
    assert c.get("/v1/users/alice/recommendations").json()["history_length"] == 6


def test_retried_batch_is_not_applied_twice(service: Service) -> None:
    c = service.client
    batch = [{"user_id": "bob", "item_id": "i3", "timestamp": 5, "event_id": "bob-1"},
             {"user_id": "bob", "item_id": "i4", "timestamp": 6, "event_id": "bob-2"}]
    assert post_events(c, batch).json()["accepted"] == 2
    again = post_events(c, batch).json()
    assert again["accepted"] == 0 and again["duplicates"] == 2 and sorted(again["duplicate_event_ids"]) == [
        "bob-1", "bob-2"]
    assert c.get("/v1/users/bob/recommendations").json()["history_length"] == 2


def test_history_is_bounded_by_model_max_len(service: Service) -> None:
    c = service.client
    post_events(c, [{"user_id": "carol", "item_id": f"i{i % 50 + 1}", "timestamp": i} for i in range(45)])
    assert c.get("/v1/users/carol/recommendations").json()["history_length"] == TINY.max_len


def test_unknown_user_and_empty_history_get_popularity(service: Service) -> None:
    c = service.client
    r = c.get("/v1/users/never-seen/recommendations", params={"k": 3})
    body = r.json()
    assert r.status_code == 200 and body["fallback"] is True and body["fallback_reason"] == "unknown_user"
    assert [x["item_id"] for x in body["items"]] == ["i0", "i1", "i2"]  # training popularity order
    names_version(r, service.version)
    r = c.post("/v1/recommendations", json={"history": [], "k": 2})
    assert r.json()["fallback_reason"] == "empty_history" and len(r.json()["items"]) == 2
    r = c.post("/v1/recommendations", json={"history": [{"item_id": "zzz"}], "k": 2})
    assert r.json()["fallback_reason"] == "no_known_items" and r.json()["skipped_items"] == ["zzz"]


def test_similar_items(service: Service) -> None:
    c = service.client
    r = c.get("/v1/items/i4/similar", params={"k": 5})
    assert r.status_code == 200, r.text
    names_version(r, service.version)
    items = [x["item_id"] for x in r.json()["items"]]
    assert len(items) == 5 and "i4" not in items
    r = c.get("/v1/items/nope/similar")
    assert r.status_code == 404 and "nope" in r.json()["detail"]
    names_version(r, service.version)


def test_forget_user(service: Service) -> None:
    c = service.client
    post_events(c, [{"user_id": "dave", "item_id": "i1", "timestamp": 1}, {"user_id": "dave", "item_id": "i2"}])
    assert c.delete("/v1/users/dave").status_code == 401
    r = c.delete("/v1/users/dave", headers=AUTH)
    assert r.status_code == 200 and r.json()["deleted_events"] == 2
    names_version(r, service.version)
    assert c.get("/v1/users/dave/recommendations").json()["fallback_reason"] == "unknown_user"
    assert c.delete("/v1/users/dave", headers=AUTH).json()["deleted_events"] == 0


# ------------------------------------------------------------------------------- bad input
def test_api_key_required_for_writes(service: Service) -> None:
    c = service.client
    ev = [{"user_id": "eve", "item_id": "i1"}]
    r = post_events(c, ev, headers={})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    names_version(r, service.version)
    assert post_events(c, ev, headers={"Authorization": "Bearer wrong"}).status_code == 403
    assert post_events(c, ev, headers={"Authorization": "Basic dGVzdA=="}).status_code == 401
    assert c.post("/v1/admin/reload", json={"run_dir": "x"}).status_code == 401
    assert c.delete("/v1/users/eve", headers={"Authorization": "Bearer wrong"}).status_code == 403
    assert c.get("/v1/users/eve/recommendations").json()["fallback_reason"] == "unknown_user"  # nothing stored


@pytest.mark.parametrize(("events", "loc", "kind"), [
    ([{"user_id": 5, "item_id": "i1"}], ["body", "events", 0, "user_id"], "string_type"),
    ([{"user_id": "u", "item_id": "i1", "timestamp": "5"}], ["body", "events", 0, "timestamp"], "timestamp_type"),
    ([{"user_id": "u", "item_id": "i1", "colour": "red"}], ["body", "events", 0, "colour"], "extra_forbidden"),
    ([{"user_id": "u"}], ["body", "events", 0, "item_id"], "missing"),
    ([{"user_id": "", "item_id": "i1"}], ["body", "events", 0, "user_id"], "string_too_short"),
    ([{"user_id": "u", "item_id": "i1", "timestamp": -1}], ["body", "events", 0, "timestamp"], "timestamp_range"),
    ([{"user_id": "u", "item_id": "i1", "price": -2.0}], ["body", "events", 0, "price"], "greater_than_equal"),
    ([], ["body", "events"], "too_short"),
])
def test_invalid_events_name_the_field(service: Service, events: list, loc: list, kind: str) -> None:
    r = post_events(service.client, events)
    assert r.status_code == 422, r.text
    names_version(r, service.version)
    assert {"loc": loc, "type": kind} in [{"loc": e["loc"], "type": e["type"]} for e in r.json()["detail"]]


def test_malformed_json_and_size_limits(service: Service) -> None:
    c = service.client
    r = c.post("/v1/events", content=b'{"events": [', headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == 400 and r.json()["detail"][0]["type"] == "json_invalid"
    r = c.post("/v1/events", json={"events": [{"user_id": "u", "item_id": "i1"}], "extra": 1}, headers=AUTH)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "extra"]
    r = post_events(c, [{"user_id": "u", "item_id": "i1"}] * 51)  # SHOPFORMER_MAX_EVENTS_PER_BATCH=50
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "events"]  # the schema's maxItems
    big = [{"user_id": "u" * 200, "item_id": "i" * 200, "event_type": "pv" * 100}] * 40  # > 16 KiB
    r = post_events(c, big)
    assert r.status_code == 413 and r.json()["detail"][0]["type"] == "body_too_large"
    names_version(r, service.version)
    chunks = (b'{"events": [' + b",".join([b'{"user_id": "u", "item_id": "i1"}'] * 600) + b"]}",)
    r = c.post("/v1/events", content=iter(chunks), headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == 413, r.text  # no Content-Length (chunked): the stream is counted
    r = c.post("/v1/recommendations", json={"history": [{"item_id": "i1"}], "k": 31})  # SHOPFORMER_MAX_K=30
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "k"]
    r = c.get("/v1/users/u/recommendations", params={"k": 0})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "k"]
    r = c.get("/v1/users/u/recommendations", params={"exclude_seen": "perhaps"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "exclude_seen"]
    r = c.get("/v1/users/u/recommendations", params={"behaviour": "buy"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "behaviour"]
    assert "behaviour" in r.json()["detail"][0]["msg"]
    r = c.post("/v1/recommendations", json={"history": [{"item_id": "i1", "when": 3}]})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "history", 0, "when"]


# ----------------------------------------------------------------------------------- reload
def test_reload_swaps_and_bad_runs_keep_the_old_model(service: Service) -> None:
    c, runs = service.client, service.runs
    post_events(c, [{"user_id": "frank", "item_id": "i1", "timestamp": 1}, {"user_id": "frank", "item_id": "i2"}])
    r = c.post("/v1/admin/reload", json={"run_dir": str(runs["a"].parent.parent)}, headers=AUTH)
    assert r.status_code == 403 and r.json()["detail"][0]["loc"] == ["body", "run_dir"]  # outside reload_root
    for bad, status, needle in (("corrupted", 422, "checksum mismatch"), ("missing", 404, "no run directory")):
        r = c.post("/v1/admin/reload", json={"run_dir": str(runs[bad])}, headers=AUTH)
        assert r.status_code == status, r.text
        assert needle in r.json()["detail"][0]["msg"] and r.json()["detail"][0]["loc"] == ["body", "run_dir"]
        assert str(runs[bad].parent) not in r.text  # never an absolute path
        names_version(r, service.version)
        assert c.get("/healthz").json()["model_version"] == service.version

    done = threading.Event()
    answers: list[httpx.Response] = []

    def read_until_done() -> None:
        with httpx.Client(base_url=c.base_url, timeout=30) as reader:
            while not done.is_set():
                answers.append(reader.get("/v1/users/frank/recommendations"))

    # reads keep flowing while the new model loads and swaps in; 4 readers = the default max_in_flight, and
    # the reload itself is an admin request, never shed, so every answer must be a 200
    with ThreadPoolExecutor(4) as pool:
        readers = [pool.submit(read_until_done) for _ in range(4)]
        while len(answers) < 8:
            time.sleep(0.01)
        r = c.post("/v1/admin/reload", json={"run_dir": str(runs["b"])}, headers=AUTH)
        n_before = len(answers)
        while len(answers) < n_before + 8:
            time.sleep(0.01)
        done.set()
        for f in readers:
            f.result()
    assert r.status_code == 200, r.text
    new = r.json()["model_version"]
    assert new != service.version and r.json()["previous_version"] == service.version
    assert all(a.status_code == 200 for a in answers)
    assert {a.json()["model_version"] for a in answers} == {service.version, new}  # no gap, no error
    assert all(a.headers["x-model-version"] == a.json()["model_version"] for a in answers)
    after = c.get("/v1/users/frank/recommendations")
    names_version(after, new)
    assert after.json()["history_length"] == 2  # raw-id state works with the new vocabulary
    assert post_events(c, [{"user_id": "frank", "item_id": "new-item"}]).json()["unknown_items"] == []
    assert "shopformer_model_reloads_total" in c.get("/metrics").text
    # A model with behaviour heads answers ?behaviour= (any type of its vocabulary, or "*").
    assert c.post("/v1/admin/reload", json={"run_dir": str(runs["heads"])}, headers=AUTH).status_code == 200
    for b in ("buy", "pv", "*"):
        r = c.get("/v1/users/frank/recommendations", params={"behaviour": b, "k": 4})
        assert r.status_code == 200 and len(r.json()["items"]) == 4, r.text
    r = c.get("/v1/users/frank/recommendations", params={"behaviour": "teleport"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "behaviour"]
    back = c.post("/v1/admin/reload", json={"run_dir": str(runs["a"])}, headers=AUTH)
    assert back.status_code == 200 and back.json()["model_version"] == service.version
