"""?explain=true on the HTTP recommendation routes (in-process app, SQLite store): each item carries
the reasons ``Recommender.explain`` gives for the same history, and their text; nothing changes
without the flag; popularity answers have no reasons; the recent-window setting is honoured."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from serving_support import synthetic_run

from shopformer.config import ModelConfig, TaskConfig
from shopformer.recommender import History, Recommender, describe_reasons

ITEMS = [f"i{i}" for i in range(40)]
TINY = ModelConfig(dim=16, layers=1, heads=1, max_len=20, dropout=0.0, emb_dropout=0.0)
KEY = "k"
AUTH = {"Authorization": f"Bearer {KEY}"}
STORED = [("i3", "pv"), ("i7", "cart"), ("i11", "pv"), ("i12", "fav"), ("i20", "pv"), ("i21", "buy"),
          ("i3", "cart"), ("i30", "pv")]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("svc_explain")
    return synthetic_run(tmp / "run", ITEMS, TINY, seed=4, task=TaskConfig(kind="multi"))


def serve(run_dir: Path, db: Path, **extra: object) -> TestClient:
    from shopformer.serving import ServeSettings, create_app

    return TestClient(create_app(ServeSettings(run_dir=run_dir, store_url=f"sqlite:///{db}", api_key=KEY,
                                               **extra)))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def client(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with serve(run_dir, tmp_path_factory.mktemp("db") / "state.db") as c:
        events = [{"user_id": "u", "item_id": item, "timestamp": 100 + 60 * j, "behaviour": b}
                  for j, (item, b) in enumerate(STORED)]
        assert c.post("/v1/events", json={"events": events}, headers=AUTH).status_code == 200
        yield c


def test_user_route_items_carry_the_recommenders_reasons(client: TestClient, run_dir: Path) -> None:
    plain = client.get("/v1/users/u/recommendations", params={"k": 5, "exclude_seen": False}).json()
    assert all(set(x) == {"item_id", "score", "repeat"} for x in plain["items"])  # unchanged without the flag
    r = client.get("/v1/users/u/recommendations", params={"k": 5, "exclude_seen": False, "explain": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [x["item_id"] for x in body["items"]] == [x["item_id"] for x in plain["items"]]
    hist = History([i for i, _ in STORED], [b for _, b in STORED], [100 + 60 * j for j in range(len(STORED))])
    want = Recommender.load(run_dir).explain(hist, [x["item_id"] for x in body["items"]], n=3)
    assert any(want)
    for item, why in zip(body["items"], want, strict=True):
        assert [(x["item_id"], x["behaviour"], x["position"]) for x in item["reasons"]] == \
            [(w.item, w.behaviour, w.position) for w in why]
        assert [x["weight"] for x in item["reasons"]] == pytest.approx([w.weight for w in why], rel=1e-5)
        assert item["explanation"] == describe_reasons(why)
        for x in item["reasons"]:
            assert STORED[x["position"]] == (x["item_id"], x["behaviour"])
    shown = [x for x in body["items"] if x["reasons"]]
    assert shown[0]["explanation"].startswith("because you ")


def test_adhoc_route_and_fallbacks(client: TestClient) -> None:
    history = [{"item_id": "i5", "behaviour": "pv"}, {"item_id": "nope"}, {"item_id": "i9", "behaviour": "cart"},
               {"item_id": "i5", "behaviour": "cart"}]
    body = client.post("/v1/recommendations", json={"history": history, "k": 4, "explain": True},
                       headers=AUTH).json()
    assert len(body["items"]) == 4 and all("reasons" in x for x in body["items"])
    for x in body["items"]:
        for why in x["reasons"]:
            assert history[why["position"]]["item_id"] == why["item_id"] != "nope"
            assert why["behaviour"] == history[why["position"]].get("behaviour")
    # popularity answers (unknown user, empty or all-unknown history) have no reasons
    nobody = client.get("/v1/users/nobody/recommendations", params={"k": 3, "explain": True}).json()
    assert nobody["fallback"] and all(x["reasons"] == [] and x["explanation"] == "" for x in nobody["items"])
    empty = client.post("/v1/recommendations", json={"history": [], "k": 2, "explain": True}, headers=AUTH).json()
    assert all(x["reasons"] == [] for x in empty["items"])
    unknown = client.post("/v1/recommendations", json={"history": [{"item_id": "zz"}], "k": 2, "explain": True},
                          headers=AUTH).json()
    assert unknown["fallback"] and all(x["reasons"] == [] for x in unknown["items"])
    bad = client.post("/v1/recommendations", json={"history": [], "explain": "yes"}, headers=AUTH)
    assert bad.status_code == 422 and "explain" in str(bad.json()["detail"])


def test_explain_recent_setting_limits_reasons_to_the_last_events(run_dir: Path, tmp_path: Path) -> None:
    history = [{"item_id": f"i{j}", "behaviour": "pv", "timestamp": 1000 + 10 * j} for j in range(12)]
    with serve(run_dir, tmp_path / "s.db", explain_recent=2) as c:
        body = c.post("/v1/recommendations", json={"history": history, "k": 6, "explain": True},
                      headers=AUTH).json()
    positions = {why["position"] for x in body["items"] for why in x["reasons"]}
    assert positions and positions <= {10, 11}
