"""The /ui dashboard without a browser: read key and login, CSRF, admin actions with confirmation,
escaping, and what each page shows (the browser tests are tests/test_dashboard_browser.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from dashboard_support import ADMIN_KEY, READ_KEY, XSS, World, csrf_of, fresh_registry, world
from fastapi.testclient import TestClient

from shopformer.pipelines.registry import Registry
from shopformer.serving.app import create_app
from shopformer.serving.dashboard.charts import forecast_chart, sparkline
from shopformer.serving.dashboard.health import HIT_RATE, quantile
from shopformer.serving.dashboard.insights import Insights
from shopformer.serving.dashboard.versions import find_registry_root
from shopformer.serving.settings import ServeSettings

INGEST = "ingest-secret"


@pytest.fixture(scope="module")
def w() -> World:
    return world()


def settings_for(reg: Path, tmp: Path, w: World, **kw: object) -> ServeSettings:
    return ServeSettings(run_dir=reg / "current", store_url=f"sqlite:///{tmp}/state.db", dashboard=True,
                         ingest_key=INGEST, admin_key=ADMIN_KEY, read_key=READ_KEY, dashboard_insights=w.insights,
                         forget_ledger=tmp / "ledger.jsonl", **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def client(w: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    tmp = tmp_path_factory.mktemp("dash")
    reg = fresh_registry(tmp / "registry")
    with TestClient(create_app(settings_for(reg, tmp, w), Registry)) as c:
        c.app.state.registry_path = reg  # type: ignore[attr-defined]
        events = [{"user_id": w.users[0], "item_id": w.items[i], "behaviour": b, "timestamp": 1_600_700_000 + 60 * i,
                   "event_id": f"e{i}"} for i, b in enumerate(["pv", "pv", "cart", "pv", "buy", "pv"])]
        r = c.post("/v1/events", json={"events": events}, headers={"Authorization": f"Bearer {INGEST}"})
        assert r.status_code == 200, r.text
        yield c


def login(c: TestClient, key: str = READ_KEY) -> int:
    page = c.get("/ui/login")
    r = c.post("/ui/login", data={"csrf": csrf_of(page.text), "read_key": key, "next": "/ui/health"},
               follow_redirects=False)
    return r.status_code


def test_pages_need_the_read_key(client: TestClient) -> None:
    client.cookies.clear()
    r = client.get("/ui/items?item=x", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/ui/login?next=%2Fui%2Fitems%3Fitem%3Dx"
    assert client.get("/ui/health", headers={"HX-Request": "true"}).status_code == 401
    assert client.get("/ui/health", headers={"Authorization": f"Bearer {READ_KEY}"}).status_code == 200
    assert client.get("/ui/health", headers={"Authorization": "Bearer wrong"}, follow_redirects=False).status_code \
        == 303
    assert client.get("/ui/static/htmx.min.js").status_code == 200  # assets are public, no secrets there


def test_login_needs_csrf_and_the_right_key(client: TestClient) -> None:
    client.cookies.clear()
    page = client.get("/ui/login")
    assert page.status_code == 200 and "sf_csrf" in page.cookies
    no_token = client.post("/ui/login", data={"read_key": READ_KEY}, follow_redirects=False)
    assert no_token.status_code == 403 and "CSRF" in no_token.text
    forged = client.post("/ui/login", data={"csrf": "abc.def", "read_key": READ_KEY}, follow_redirects=False)
    assert forged.status_code == 403
    assert login(client, "wrong") == 403
    assert login(client) == 303
    r = client.get("/ui")
    assert r.status_code == 200 and "Overview" in r.text
    logout = client.post("/ui/logout", data={"csrf": csrf_of(r.text)}, follow_redirects=False)
    assert logout.status_code == 303
    client.cookies.delete("sf_read", path="/ui")
    assert client.get("/ui", follow_redirects=False).status_code == 303


def test_every_page_renders_with_security_headers(client: TestClient, w: World) -> None:
    assert login(client) == 303
    for url, expect in [("/ui", "Headline metrics"), ("/ui/customers", "Customer look-up"),
                        (f"/ui/items?item={w.items[0]}", "Similar items"), ("/ui/trends", "Rising"),
                        ("/ui/health", "Latency by route")]:
        r = client.get(url)
        assert r.status_code == 200, (url, r.text[:500])
        assert expect in r.text, url
        assert "script-src 'self'" in r.headers["content-security-policy"]
        assert r.headers["x-frame-options"] == "DENY"
        assert "cdn" not in r.text.lower() and "https://" not in r.text  # everything from this server


def test_overview_shows_version_metrics_and_history(client: TestClient, w: World) -> None:
    login(client)
    html = client.get("/ui").text
    assert w.versions[0] in html and "v0001" in html and "v0002" in html
    assert "current" in html and "Promote" in html  # v0002 is a candidate: it can be promoted
    assert "Training curve" in html and "Data window" in html


def test_customer_page_splits_and_explains_recommendations(client: TestClient, w: World) -> None:
    login(client)
    html = client.get(f"/ui/customers?user={w.users[0]}").text
    assert "6 stored" in html and "Buy again (repeats)" in html and "Discoveries" in html
    assert "because you " in html  # Recommender.explain, in words
    assert "Next action" in html and "Purchase intent" in html
    assert "Churn risk" in html and "no event within" in html  # the user is in the insights' churn scores


def test_search_lists_training_users_for_an_unknown_id(client: TestClient, w: World) -> None:
    login(client)
    part = w.users[5][:2]
    html = client.get(f"/ui/customers?user={part}").text
    assert "No stored events" in html and f"/ui/customers?user={w.users[5]}" in html


def test_item_page_shows_similar_items_and_forecast(client: TestClient, w: World) -> None:
    login(client)
    html = client.get(f"/ui/items?item={w.items[0]}").text
    assert "Demand forecast" in html and "<svg" in html and "interval" in html
    assert client.get("/ui/items?item=nope").text.count("Unknown item") == 1


def test_user_input_is_escaped_everywhere(client: TestClient) -> None:
    login(client)
    for url in ("/ui/items", "/ui/customers"):
        html = client.get(url, params={"item" if "items" in url else "user": XSS}).text
        assert "<script>window.__xss" not in html and "<img src=x" not in html
        assert "&lt;script&gt;window.__xss=2&lt;/script&gt;" in html
    confirm = client.get("/ui/versions/confirm", params={"action": "promote", "version": XSS}).text
    assert "<script>window.__xss" not in confirm


def post_action(c: TestClient, action: str, version: str, key: str | None, confirm: str | None = None,
                csrf: bool = True) -> tuple[int, str]:
    page = c.get(f"/ui/versions/confirm?action={action}&version={version}")
    data = {"version": version, "confirm": version if confirm is None else confirm}
    if csrf:
        data["csrf"] = csrf_of(page.text)
    if key is not None:
        data["admin_key"] = key
    r = c.post(f"/ui/versions/{action}", data=data)
    return r.status_code, r.text


def test_promote_and_rollback_need_admin_key_csrf_and_confirmation(client: TestClient, w: World) -> None:
    login(client)
    svc = client.app.state.svc  # type: ignore[attr-defined]
    reg = Registry(client.app.state.registry_path)  # type: ignore[attr-defined]
    assert svc.engine.version == w.versions[0] and reg.current() == "v0001"
    assert post_action(client, "promote", "v0002", ADMIN_KEY, csrf=False)[0] == 403
    assert post_action(client, "promote", "v0002", None)[0] == 401
    assert post_action(client, "promote", "v0002", "wrong")[0] == 403
    status, text = post_action(client, "promote", "v0002", ADMIN_KEY, confirm="v0001")
    assert status == 400 and "to confirm" in text
    assert reg.current() == "v0001" and svc.engine.version == w.versions[0]  # nothing changed
    status, text = post_action(client, "promote", "v0002", ADMIN_KEY)
    assert status == 200, text
    assert reg.current() == "v0002" and svc.engine.version == w.versions[1]
    assert "Roll back" in client.get("/ui").text
    status, text = post_action(client, "rollback", "v0001", ADMIN_KEY)
    assert status == 200, text
    assert reg.current() == "v0001" and svc.engine.version == w.versions[0]
    status, text = post_action(client, "rollback", "v0002", ADMIN_KEY)  # v0002 was never current before now
    assert status == 409 and "refused" in text, text


def test_dashboard_is_off_unless_asked_for(w: World, tmp_path: Path) -> None:
    s = settings_for(w.registry, tmp_path, w).model_copy(update={"dashboard": False})
    with TestClient(create_app(s)) as c:
        assert c.get("/ui").status_code == 404


def test_open_dashboard_without_read_key(w: World, tmp_path: Path) -> None:
    reg = fresh_registry(tmp_path / "registry")
    s = settings_for(reg, tmp_path, w).model_copy(update={"read_key": None, "admin_key": None})
    with TestClient(create_app(s, Registry)) as c:
        assert c.get("/ui").status_code == 200
        status, text = post_action(c, "promote", "v0002", "anything")
        assert status == 403 and "no admin key" in text


def test_charts_escape_labels_and_survive_bad_numbers() -> None:
    svg = str(sparkline([1, float("nan"), 3, None], label='<b>"x"</b>'))
    assert "<b>" not in svg and "&lt;b&gt;" in svg and "M" in svg
    assert "no data" in str(sparkline([]))
    assert "<rect" in str(forecast_chart([1, 2], [(2, 1.5, 0, 3)], ["a", "b", "c"], title="<x>"))


def test_latency_quantiles_from_histogram_buckets() -> None:
    buckets = [(0.01, 50.0), (0.02, 90.0), (0.05, 100.0), (float("inf"), 100.0)]
    assert quantile(buckets, 0.5) == pytest.approx(0.01)
    assert quantile(buckets, 0.95) == pytest.approx(0.035)
    assert quantile([(float("inf"), 0.0)], 0.5) is None


def test_registry_is_found_from_the_served_path(w: World, tmp_path: Path) -> None:
    assert find_registry_root(w.registry / "current", None) == w.registry
    assert find_registry_root((w.registry / "current").resolve(), None) == w.registry.resolve()
    assert find_registry_root(w.root / "run0", None) is None
    assert find_registry_root(None, tmp_path) == tmp_path


def test_insights_file_problems_are_explained(tmp_path: Path) -> None:
    assert "no insights file" in (Insights(None).part("churn")[1] or "")
    assert "not found" in (Insights(tmp_path / "none.json").part("churn")[1] or "")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    assert "unreadable" in (Insights(bad).part("churn")[1] or "")
    bad.write_text('{"format": 1, "churn": {"error": "too short"}}')
    assert "too short" in (Insights(bad).part("churn")[1] or "")


def test_health_shows_traffic_and_any_drift_gauge(client: TestClient) -> None:
    from prometheus_client import Gauge

    login(client)
    svc = client.app.state.svc  # type: ignore[attr-defined]
    Gauge("shopformer_test_feature_drift", "a drift indicator", ["indicator"],
          registry=svc.metrics.registry).labels("psi").set(0.25)
    hit_rate = getattr(svc.metrics, "online_hit_rate", None) or Gauge(HIT_RATE, "hit", registry=svc.metrics.registry)
    hit_rate.set(0.125)
    client.get("/v1/users/nobody/recommendations")
    html = client.get("/ui/health").text
    assert 'id="hit-rate">12.5%' in html
    assert "shopformer_test_feature_drift" in html and "indicator=psi" in html and "0.25" in html
    assert "/v1/users/{user_id}/recommendations" in html  # latency row of a route template, never a raw id
    assert "applied: 6" in html  # the events the fixture ingested


def test_a_version_that_does_not_load_is_never_promoted(w: World, tmp_path: Path) -> None:
    reg = fresh_registry(tmp_path / "registry")
    weights = reg / "versions" / "v0002" / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-16] + b"\0" * 16)  # corrupted: its checksum no longer matches
    s = settings_for(reg, tmp_path, w).model_copy(update={"read_key": None})
    with TestClient(create_app(s, Registry)) as c:
        status, text = post_action(c, "promote", "v0002", ADMIN_KEY)
        assert status == 409 and "refused" in text
        assert Registry(reg).current() == "v0001"
        assert c.app.state.svc.engine.version == w.versions[0]  # type: ignore[attr-defined]


def test_overview_reads_both_kinds_of_metrics_and_the_training_log(tmp_path: Path) -> None:
    from shopformer.serving.dashboard.overview import run_summary

    def system(hr: float) -> dict:
        return {"hr@10": hr, "ndcg@10": hr / 2, "n": 100, "ci95": {"hr@10": [hr - 0.01, hr + 0.01]},
                "repeat": {"hr@10": 0.5, "share": 0.3, "n": 30}, "explore": {"hr@10": 0.01, "share": 0.7, "n": 70}}

    (tmp_path / "model").mkdir()
    (tmp_path / "train_log.csv").write_text("epoch,loss,lr,valid_ndcg@10\n1,9.5,0.1,0.02\n2,8.0,0.1,0.03\n")
    nxt = run_summary(tmp_path / "model", {}, {"test": {"markov": system(0.06), "sasrec": system(0.08),
                                                        "popularity": system(0.01)}, "warnings": ["w"]}, "sasrec")
    rows = nxt["headlines"][0]["rows"]
    assert [r["system"] for r in rows] == ["sasrec", "markov", "popularity"] and rows[0]["model"]
    assert rows[0]["cells"][0] == {"value": 0.08, "lo": pytest.approx(0.07), "hi": pytest.approx(0.09)}
    assert {(r["system"], r["part"]) for r in nxt["headlines"][0]["split"]} >= {("sasrec", "repeat"),
                                                                               ("sasrec", "explore")}
    assert nxt["curve"]["series"]["valid_ndcg@10"] == [0.02, 0.03] and nxt["warnings"] == ["w"]
    multi = run_summary(tmp_path / "model", {}, {"target_behaviour": "buy", "next_item": {
        "any": {"sasrec": system(0.2)}, "buy": {"sasrec": system(0.1), "popularity": system(0.05)}}}, "sasrec")
    assert [h["about"] for h in multi["headlines"]] == ["next item, any behaviour (test split)",
                                                       "next item, behaviour buy (test split)"]
    assert run_summary(tmp_path, {}, {}, "sasrec")["headlines"] == []


def test_customer_lookup_with_pseudonymous_ids(w: World, tmp_path: Path) -> None:
    key_file = tmp_path / "pseudonym.key"
    key_file.write_text("k" * 40 + "\n")
    s = settings_for(w.registry, tmp_path, w).model_copy(update={"read_key": None, "pseudonym_key_file": key_file})
    with TestClient(create_app(s)) as c:
        events = [{"user_id": "alice", "item_id": w.items[i], "behaviour": "pv", "timestamp": 1_600_700_000 + i}
                  for i in range(3)]
        assert c.post("/v1/events", json={"events": events},
                      headers={"Authorization": f"Bearer {INGEST}"}).status_code == 200
        html = c.get("/ui/customers?user=alice").text
        assert "3 stored" in html  # found under the raw id the operator types, stored as a pseudonym
        assert "Users of the training data" not in c.get("/ui/customers?user=u1").text


def test_hit_rate_waits_for_judged_events() -> None:
    from shopformer.serving.dashboard.health import NEXT_EVENTS, hit_rate

    gauge = {"name": HIT_RATE, "labels": "", "value": 0.0}
    none_yet = [{"name": NEXT_EVENTS, "labels": f"outcome={o}", "value": 0.0} for o in ("hit", "miss")]
    assert hit_rate([gauge, *none_yet]) is None
    judged = [{"name": NEXT_EVENTS, "labels": "outcome=miss", "value": 3.0}]
    assert hit_rate([{**gauge, "value": 0.25}, *judged]) == 0.25
    assert hit_rate([]) is None and hit_rate([{**gauge, "value": float("nan")}]) is None
