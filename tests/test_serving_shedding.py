"""Load shedding (serving/middleware.py ``Shed``): past ``max_in_flight`` requests in a worker,
/v1 requests are answered 503 + Retry-After at once; ops and admin endpoints are never shed."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import httpx
import pytest

from shopformer.config import ModelConfig
from shopformer.serving.middleware import Shed

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving_support import ServerProcess, synthetic_run  # noqa: E402

ITEMS = [f"i{i}" for i in range(40)]
TINY = ModelConfig(dim=16, layers=1, heads=1, max_len=20, dropout=0.0, emb_dropout=0.0)


def test_shed_answers_503_at_once_and_lets_ops_through() -> None:
    gate = asyncio.Event()
    shed: list[int] = []

    async def slow_app(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        if scope["path"].startswith("/v1/") and not scope["path"].startswith("/v1/admin/"):
            await gate.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    mw = Shed(slow_app, limit=2, retry_after_s=3, version=lambda: "v-test", on_shed=lambda: shed.append(1))

    async def go() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=mw), base_url="http://t") as c:
            held = [asyncio.create_task(c.get(f"/v1/users/u{i}/recommendations")) for i in range(2)]
            while mw.in_flight < 2:
                await asyncio.sleep(0.001)
            r = await asyncio.wait_for(c.get("/v1/users/x/recommendations"), 5)  # answered without the gate
            assert r.status_code == 503 and r.headers["retry-after"] == "3"
            assert r.json()["model_version"] == "v-test" and "overloaded" in r.json()["detail"]
            assert r.headers["x-model-version"] == "v-test" and "connection" not in r.headers  # keep-alive
            for path in ("/healthz", "/readyz", "/metrics"):  # never shed
                assert (await asyncio.wait_for(c.get(path), 5)).status_code == 200
            # a rollback must reach an overloaded worker; it is not counted either
            assert (await asyncio.wait_for(c.post("/v1/admin/rollback"), 5)).status_code == 200
            assert mw.in_flight == 2
            gate.set()
            assert [x.status_code for x in await asyncio.gather(*held)] == [200, 200]
            assert mw.in_flight == 0 and len(shed) == 1
            assert (await c.get("/v1/users/y/recommendations")).status_code == 200  # room again

    asyncio.run(go())


def test_zero_limit_never_sheds() -> None:
    async def app(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        await asyncio.sleep(0.01)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    mw = Shed(app, limit=0, retry_after_s=1, version=lambda: "v")

    async def go() -> list[int]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=mw), base_url="http://t") as c:
            return [r.status_code for r in await asyncio.gather(*(c.get("/v1/x") for _ in range(20)))]

    assert asyncio.run(go()) == [200] * 20


def test_overloaded_service_sheds_with_retry_after_and_counts_it(tmp_path: Path) -> None:
    run = synthetic_run(tmp_path / "run", ITEMS, TINY)
    with ServerProcess(run, f"sqlite:///{tmp_path / 'state.db'}", extra_args=("--max-in-flight", "1")) as server:
        async def go() -> list[httpx.Response]:
            clients = [httpx.AsyncClient(base_url=server.url, timeout=30) for _ in range(32)]
            try:
                await asyncio.gather(*(c.get("/healthz") for c in clients))  # connections open first
                out: list[httpx.Response] = []
                for _ in range(20):  # rounds of 32 simultaneous requests, until the bound was hit
                    body = {"history": [{"item_id": i} for i in ITEMS[:10]], "k": 10}
                    out += await asyncio.gather(*(c.post("/v1/recommendations", json=body) for c in clients))
                    if any(r.status_code == 503 for r in out):
                        break
                return out
            finally:
                await asyncio.gather(*(c.aclose() for c in clients))

        answers = asyncio.run(go())
        codes = [r.status_code for r in answers]
        assert set(codes) <= {200, 503} and 503 in codes and 200 in codes
        assert all(r.headers.get("retry-after") == "1" for r in answers if r.status_code == 503)
        metrics = httpx.get(f"{server.url}/metrics").text
        line = next(x for x in metrics.splitlines() if x.startswith("shopformer_shed_requests_total "))
        assert float(line.split()[-1]) == codes.count(503)


@pytest.mark.parametrize("value", ["-1", "x"])
def test_bad_limit_is_refused(value: str) -> None:
    from typer.testing import CliRunner

    from shopformer.cli.app import app

    res = CliRunner().invoke(app, ["serve", "/nonexistent", "--max-in-flight", value])
    assert res.exit_code == 2 and "Traceback" not in res.output
