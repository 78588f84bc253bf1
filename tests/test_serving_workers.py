"""Several service processes sharing one Redis store: ``serve --workers 2`` beside a single-process
service on another port. What one process stores, every other one serves from."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
from typer.testing import CliRunner

from shopformer.cli.app import app
from shopformer.config import ModelConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving_support import RedisServer, ServerProcess, synthetic_run  # noqa: E402

ITEMS = [f"i{i}" for i in range(40)]
TINY = ModelConfig(dim=16, layers=1, heads=1, max_len=20, dropout=0.0, emb_dropout=0.0)
AUTH = {"Authorization": "Bearer test-key"}
STARTUP_S = 600  # generous: three interpreters import torch at once on a small shared box


def worker_pids(supervisor_pid: int) -> list[int]:
    """Children of the uvicorn supervisor that are spawned workers (not multiprocessing's tracker)."""
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmd = (proc / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == supervisor_pid and b"spawn_main" in cmd:
            out.append(int(proc.name))
    return out


def fresh(method: str, url: str, **kw: object) -> httpx.Response:
    """One request on a new connection: the kernel hands each new connection to any worker."""
    return httpx.request(method, url, timeout=30, **kw)  # type: ignore[arg-type]


def test_state_is_shared_between_processes(redis_server: RedisServer, tmp_path: Path) -> None:
    run = synthetic_run(tmp_path / "run", ITEMS, TINY)
    ledger = tmp_path / "ledger.jsonl"  # one deletion ledger for the whole service
    single = ServerProcess(run, redis_server.url, ledger_path=ledger, log_path=tmp_path / "single.log")
    multi = ServerProcess(run, redis_server.url, ledger_path=ledger, extra_args=("--workers", "2"),
                          log_path=tmp_path / "multi.log")
    try:
        single.start(timeout=STARTUP_S)
        multi.start(timeout=STARTUP_S)
        assert multi.proc is not None and len(worker_pids(multi.proc.pid)) == 2

        # events posted to the single process: every worker of the other service serves from them
        events = [{"user_id": "a", "item_id": f"i{i}", "behaviour": "pv", "timestamp": 1_700_000_000 + i,
                   "event_id": f"a-{i}"} for i in range(5)]
        assert fresh("POST", f"{single.url}/v1/events", json={"events": events}, headers=AUTH).json()["accepted"] == 5
        for _ in range(8):
            body = fresh("GET", f"{multi.url}/v1/users/a/recommendations",
                         params={"k": 40, "exclude_seen": False}).json()
            assert body["history_length"] == 5 and not body["fallback"]
            assert {x["item_id"] for x in body["items"] if x["repeat"]} == {f"i{i}" for i in range(5)}

        # events posted one by one to whichever worker accepts the connection: all of them land
        for i in range(6):
            ev = {"user_id": "b", "item_id": f"i{i}", "timestamp": 1_700_000_100 + i, "event_id": f"b-{i}"}
            assert fresh("POST", f"{multi.url}/v1/events", json={"events": [ev]}, headers=AUTH).status_code == 200
        again = fresh("POST", f"{multi.url}/v1/events", json={"events": [ev]}, headers=AUTH).json()
        assert again["duplicates"] == 1  # idempotency records are shared too
        assert fresh("GET", f"{single.url}/v1/users/b/recommendations").json()["history_length"] == 6

        # a deletion through one worker is seen everywhere
        assert fresh("DELETE", f"{multi.url}/v1/users/a", headers=AUTH).json()["deleted_events"] == 5
        body = fresh("GET", f"{single.url}/v1/users/a/recommendations").json()
        assert body["fallback"] and body["fallback_reason"] == "unknown_user"

        # a reload would reach one worker only: refused with the way to do it
        r = fresh("POST", f"{multi.url}/v1/admin/reload", json={"run_dir": "run"}, headers=AUTH)
        assert r.status_code == 409 and "SIGHUP" in r.json()["detail"]
    finally:
        multi.stop()
        single.stop()


def test_workers_need_a_shared_store(tmp_path: Path) -> None:
    run = synthetic_run(tmp_path / "run", ITEMS, TINY)
    res = CliRunner().invoke(app, ["serve", str(run), "--workers", "2", "--store", f"sqlite:///{tmp_path / 's.db'}"])
    assert res.exit_code == 2 and "redis://" in res.output and "Traceback" not in res.output
