"""Repeats and discoveries over HTTP (in-process app with its lifespan, SQLite store): every item of a
recommendation says whether it is a repeat; ``min_new_share`` asks for a minimum share of new items."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from serving_support import synthetic_run

from shopformer.config import ModelConfig
from shopformer.recommender import Recommender

ITEMS = [f"i{i}" for i in range(40)]
TINY = ModelConfig(dim=16, layers=1, heads=1, max_len=20, dropout=0.0, emb_dropout=0.0)
KEY = "k"
AUTH = {"Authorization": f"Bearer {KEY}"}
STORED = [f"i{i}" for i in (3, 7, 11, 12, 20, 21, 22, 30)]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    from shopformer.serving import ServeSettings, create_app

    tmp = tmp_path_factory.mktemp("svc")
    run = synthetic_run(tmp / "run", ITEMS, TINY, seed=4)
    settings = ServeSettings(run_dir=run, store_url=f"sqlite:///{tmp / 'state.db'}", api_key=KEY)
    with TestClient(create_app(settings)) as c:
        events = [{"user_id": "u", "item_id": item, "timestamp": 100 + j, "behaviour": "pv"}
                  for j, item in enumerate(STORED)]
        assert c.post("/v1/events", json={"events": events}, headers=AUTH).status_code == 200
        yield c


def items(body: dict[str, Any]) -> list[str]:
    return [x["item_id"] for x in body["items"]]


def flags(body: dict[str, Any]) -> list[bool]:
    return [x["repeat"] for x in body["items"]]


def test_every_item_says_whether_it_is_a_repeat(client: TestClient) -> None:
    r = client.get("/v1/users/u/recommendations", params={"k": 40, "exclude_seen": False})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["items"]) == 40 and all(type(f) is bool for f in flags(body))
    assert flags(body) == [i in STORED for i in items(body)] and sum(flags(body)) == len(STORED)
    assert set(body["items"][0]) == {"item_id", "score", "repeat"}  # existing fields kept
    new = client.get("/v1/users/u/recommendations", params={"k": 10, "exclude_seen": True}).json()
    assert not any(flags(new)) and not set(items(new)) & set(STORED)
    # unknown users: popularity, all discoveries
    nobody = client.get("/v1/users/nobody/recommendations", params={"k": 5}).json()
    assert nobody["fallback"] is True and flags(nobody) == [False] * 5


@pytest.mark.parametrize(("k", "share"), [(10, 0.5), (7, 0.3), (12, 1.0), (5, 0.0), (9, 0.75)])
def test_min_new_share_over_http_is_the_recommenders_answer(client: TestClient, k: int, share: float) -> None:
    full = client.get("/v1/users/u/recommendations", params={"k": 40, "exclude_seen": False}).json()
    r = client.get("/v1/users/u/recommendations", params={"k": k, "min_new_share": share})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["items"]) == k and flags(body).count(False) >= math.ceil(round(share * k, 9))
    max_rep, reps, want = k - math.ceil(round(share * k, 9)), 0, []
    for item in items(full):  # every discovery, the best max_rep repeats, in the model's order
        if item in STORED:
            if reps == max_rep:
                continue
            reps += 1
        want.append(item)
        if len(want) == k:
            break
    assert items(body) == want and flags(body) == [i in STORED for i in want]
    # the same history sent ad hoc, the share in the body
    hist = [{"item_id": item, "behaviour": "pv", "timestamp": 100 + j} for j, item in enumerate(STORED)]
    adhoc = client.post("/v1/recommendations", json={"history": hist, "k": k, "min_new_share": share})
    assert adhoc.status_code == 200, adhoc.text
    assert items(adhoc.json()) == want and flags(adhoc.json()) == flags(body)


def test_ad_hoc_repeats_cover_the_whole_history_not_just_the_window(client: TestClient) -> None:
    long = [f"i{j}" for j in range(30)]  # 30 events; the model reads the last 20
    body = client.post("/v1/recommendations", json={"history": [{"item_id": i} for i in long], "k": 40,
                                                    "exclude_seen": False}).json()
    assert flags(body) == [i in long for i in items(body)] and sum(flags(body)) == 30
    one = client.post("/v1/recommendations", json={"history": [{"item_id": i} for i in long], "k": 10,
                                                   "min_new_share": 1}).json()  # an integer is a number
    assert not set(items(one)) & set(long) and len(one["items"]) == 10


@pytest.mark.parametrize("bad", ["1.5", "-0.1", "nan", "inf", "lots"])
def test_min_new_share_outside_0_1_is_a_422(client: TestClient, bad: str) -> None:
    r = client.get("/v1/users/u/recommendations", params={"min_new_share": bad})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["query", "min_new_share"]


@pytest.mark.parametrize("bad", [1.5, -0.1, "0.5", True])
def test_min_new_share_in_a_body_is_validated(client: TestClient, bad: object) -> None:
    r = client.post("/v1/recommendations", json={"history": [{"item_id": "i1"}], "min_new_share": bad})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["body", "min_new_share"]


def test_openapi_documents_the_repeat_flag_and_min_new_share(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    assert {"item_id", "score", "repeat"} <= set(schemas["RecommendedItem"]["properties"])
    assert "min_new_share" in schemas["AdHocRequest"]["properties"]
    params = doc["paths"]["/v1/users/{user_id}/recommendations"]["get"]["parameters"]
    assert "min_new_share" in {p["name"] for p in params}
    assert set(schemas["SimilarOut"]["properties"]) == {"model_version", "item_id", "items"}


def test_http_matches_the_recommender(client: TestClient) -> None:
    from shopformer.recommender import History

    rec: Recommender = client.app.state.svc.engine.rec  # type: ignore[attr-defined]
    body = client.get("/v1/users/u/recommendations", params={"k": 8, "min_new_share": 0.25}).json()
    ref = rec.recommend_many([History(STORED, ["pv"] * len(STORED), list(range(100, 100 + len(STORED))))], 8,
                             min_new_share=0.25)[0]
    assert items(body) == ref.items and flags(body) == ref.repeat
