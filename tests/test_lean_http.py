"""bench/lean_http.py, the load generator's low-CPU client, against the same server stack as the service
(uvicorn + FastAPI): query strings, JSON bodies, headers, shed answers, keep-alive, broken answers."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from lean_http import LeanClient, LeanHTTPError  # noqa: E402


def echo_app() -> FastAPI:
    app = FastAPI()

    @app.get("/echo")
    async def echo(request: Request) -> dict:
        return {"query": dict(request.query_params), "auth": request.headers.get("authorization")}

    @app.post("/echo")
    async def echo_body(request: Request) -> dict:
        return {"body": await request.json(), "type": request.headers.get("content-type")}

    @app.get("/busy")
    async def busy() -> JSONResponse:
        return JSONResponse({"detail": "busy"}, status_code=503, headers={"Retry-After": "1"})

    return app


async def with_server(scenario) -> None:  # noqa: ANN001 - an async function of the base URL
    server = uvicorn.Server(uvicorn.Config(echo_app(), host="127.0.0.1", port=0, log_level="warning",
                                           lifespan="off"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        await scenario(f"http://127.0.0.1:{port}")
    finally:
        server.should_exit = True
        await task


def test_requests_round_trip_on_one_kept_alive_connection() -> None:
    async def scenario(url: str) -> None:
        client = LeanClient(url)
        r = await client.get("/echo", params={"k": 10, "q": "a b&c"}, headers={"Authorization": "Bearer x"})
        assert r.status_code == 200
        assert r.json() == {"query": {"k": "10", "q": "a b&c"}, "auth": "Bearer x"}
        writer = client._writer
        r = await client.post("/echo", json={"events": [{"item_id": "é", "n": 1}]})
        assert r.json() == {"body": {"events": [{"item_id": "é", "n": 1}]}, "type": "application/json"}
        assert client._writer is writer  # the same socket: no reconnect per request
        r = await client.get("/busy")
        assert (r.status_code, r.headers["retry-after"]) == (503, "1")
        r = await client.get("/missing")
        assert r.status_code == 404
        await client.aclose()

    asyncio.run(with_server(scenario))


def test_a_broken_answer_raises_and_the_connection_is_not_reused() -> None:
    async def scenario() -> None:
        async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(garbage, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = LeanClient(f"http://127.0.0.1:{port}", timeout=5)
        with pytest.raises(LeanHTTPError, match="without Content-Length"):
            await client.get("/x")
        assert client._writer is None
        server.close()
        await server.wait_closed()
        with pytest.raises(LeanHTTPError, match="GET /x"):  # nothing listens now: a clear error, not a hang
            await client.get("/x")

    asyncio.run(scenario())
