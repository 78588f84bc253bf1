"""Service-side pseudonymisation: with a pseudonym key the service keeps only HMAC pseudonyms of user
ids (and of event / session ids, which clients build from them) in the store files, the deletion
ledger, the served-list log, its logs and /metrics, while requests keep using raw ids; the pseudonym
is the one ``prepare --pseudonymise-users`` writes, and deletion by raw id still deletes.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from serving_support import RedisServer, synthetic_run
from typer.testing import CliRunner

from shopformer.cli.app import app as cli
from shopformer.config import ModelConfig
from shopformer.data.ledger import open_ledger
from shopformer.data.pseudonym import PSEUDONYM_KEY_ENV, pseudonymise
from shopformer.serving import ServeSettings, create_app
from shopformer.serving.logscrub import ACCESS_LOGGER, install_access_log_filter, scrub_path

SECRET = "carol.raw-id-5e1d@example.com"
KEY = "k" * 24
ING, ADM = {"Authorization": "Bearer i"}, {"Authorization": "Bearer a"}


def hits(root: Path, needle: str) -> int:
    """Occurrences of ``needle`` in every file under ``root`` (store files, ledger, AOF, logs)."""
    raw = needle.encode()
    return sum(p.read_bytes().count(raw) for p in root.rglob("*") if p.is_file())


def batch(n: int, t0: int = 1_700_000_000) -> list[dict]:
    return [{"user_id": SECRET, "item_id": f"item-{i}", "timestamp": t0 + i, "behaviour": "pv",
             "event_id": f"{SECRET}#{i}", "session_id": f"{SECRET}/s1"} for i in range(n)]


@pytest.fixture
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_run(tmp_path_factory.mktemp("run") / "run", [f"item-{i}" for i in range(30)],
                         ModelConfig(dim=16, layers=1, heads=1, max_len=50))


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_store_ledger_logs_and_metrics_hold_only_pseudonyms(
    kind: str, run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    if kind == "redis" and shutil.which("redis-server") is None:
        pytest.skip("redis-server binary not found (scripts/ensure_redis.sh installs it)")
    monkeypatch.setenv(PSEUDONYM_KEY_ENV, KEY)
    data = tmp_path / "data"
    redis = RedisServer(data / "redis").start() if kind == "redis" else None
    url = redis.url if redis else f"sqlite:///{data / 'state.db'}"
    settings = ServeSettings(run_dir=run, store_url=url, forget_ledger=data / "ledger.jsonl", ingest_key="i",
                             admin_key="a", pseudonymise_users=True, aof_rewrite_interval_s=0)
    pseudonym = pseudonymise(SECRET, KEY.encode())
    caplog.set_level(logging.DEBUG)
    try:
        with TestClient(create_app(settings)) as c:
            r = c.post("/v1/events", headers=ING, json={"events": batch(8)})
            assert r.status_code == 200 and r.json()["accepted"] == 8
            again = c.post("/v1/events", headers=ING, json={"events": batch(8)[:2]}).json()
            assert again["duplicate_event_ids"] == [f"{SECRET}#0", f"{SECRET}#1"]  # as sent, not as kept
            rec = c.get(f"/v1/users/{SECRET}/recommendations").json()  # raw id in, history found
            assert rec["history_length"] == 8 and rec["user_id"] == SECRET
            assert c.get(f"/v1/users/{pseudonym}/recommendations").json()["history_length"] == 0
            assert SECRET not in c.get("/metrics").text
            assert hits(data, SECRET) == 0 and hits(data, "/s1") == 0  # no raw user, event or session id
            if redis is None:
                assert hits(data, pseudonym) > 0  # control: the pseudonym is what the store holds
            r = c.delete(f"/v1/users/{SECRET}", headers=ADM)
            assert r.status_code == 200 and r.json()["deleted_events"] == 8
            assert open_ledger(data / "ledger.jsonl").forgotten_at(pseudonym) is not None
            assert c.post("/v1/events", headers=ING, json={"events": batch(3)}).json()["forgotten"] == 3
            assert c.get(f"/v1/users/{SECRET}/recommendations").json()["history_length"] == 0
    finally:
        if redis is not None:
            redis.stop()
    service_logs = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("httpx"))
    assert hits(data, SECRET) == 0 and "serving" in service_logs and SECRET not in service_logs


def test_access_log_never_names_a_user() -> None:
    install_access_log_filter()
    record = logging.LogRecord(ACCESS_LOGGER, logging.INFO, "h11_impl.py", 1, '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5", "GET", f"/v1/users/{SECRET}/recommendations?k=3", "1.1", 200), None)
    assert logging.getLogger(ACCESS_LOGGER).filter(record)
    assert record.getMessage() == '127.0.0.1:5 - "GET /v1/users/{user_id}/recommendations?k=3 HTTP/1.1" 200'
    assert scrub_path(f"/v1/users/{SECRET}") == "/v1/users/{user_id}" and scrub_path("/v1/items/x/similar") == (
        "/v1/items/x/similar")


def test_without_a_key_the_service_refuses_to_start(run: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PSEUDONYM_KEY_ENV, raising=False)
    settings = ServeSettings(run_dir=run, store_url=f"sqlite:///{tmp_path / 's.db'}",
                             forget_ledger=tmp_path / "l.jsonl", pseudonymise_users=True)
    with pytest.raises(RuntimeError, match="pseudonymous user ids: no pseudonym key"), TestClient(create_app(settings)):
        pass
    (tmp_path / "short.key").write_text("short\n")
    settings = ServeSettings(run_dir=run, store_url=f"sqlite:///{tmp_path / 's.db'}",
                             forget_ledger=tmp_path / "l.jsonl", pseudonym_key_file=tmp_path / "short.key")
    with pytest.raises(RuntimeError, match="at least 16 are needed"), TestClient(create_app(settings)):
        pass
    assert not (tmp_path / "s.db").exists()  # nothing was stored with raw ids meanwhile


def test_forget_cli_maps_raw_ids_to_pseudonyms(run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key_file = tmp_path / "pseudonym.key"
    key_file.write_text(KEY + "\n")
    db, ledger = tmp_path / "state.db", tmp_path / "ledger.jsonl"
    settings = ServeSettings(run_dir=run, store_url=f"sqlite:///{db}", forget_ledger=ledger, ingest_key="i",
                             pseudonym_key_file=key_file)
    with TestClient(create_app(settings)) as c:
        assert c.post("/v1/events", headers=ING, json={"events": batch(4)}).json()["accepted"] == 4
    runner = CliRunner()
    res = runner.invoke(cli, ["forget", SECRET, "--store", f"sqlite:///{db}", "--ledger", str(ledger)])
    assert res.exit_code == 0 and "0 event(s) deleted" in res.output  # raw id: not what the store holds
    res = runner.invoke(cli, ["forget", SECRET, "--store", f"sqlite:///{db}", "--ledger", str(ledger),
                              "--pseudonym-key-file", str(key_file)])
    assert res.exit_code == 0 and "4 event(s) deleted" in res.output, res.output
    assert open_ledger(ledger).forgotten_at(pseudonymise(SECRET, KEY.encode())) is not None
    monkeypatch.delenv(PSEUDONYM_KEY_ENV, raising=False)
    res = runner.invoke(cli, ["forget", SECRET, "--store", f"sqlite:///{db}", "--ledger", str(ledger),
                              "--pseudonymise-users"])
    assert res.exit_code == 2 and "no pseudonym key" in res.output and "Traceback" not in res.output
