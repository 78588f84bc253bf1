"""A minimal keep-alive HTTP/1.1 client for load generators that share the service's cores.

Why: on a 2-core box the load generator competes with the service for the same cores, so every
millisecond of client CPU shows up as run-queue wait in the latencies it measures. httpx spends
~1.5 ms of CPU per request, this client ~0.22 ms (``bench/results/scale_serving_lean.json`` and
``scale_serving_httpx_client.json`` record the client's own CPU beside the service's). It writes
pre-formatted request bytes on one socket and parses only the status line, the headers and a
``Content-Length`` body, which is all the service sends (JSON answers, no chunked encoding).

It offers the subset of ``httpx.AsyncClient`` that ``serve_load.one_request`` uses (``get`` with
``params``, ``post`` with ``json`` and ``headers``, ``aclose``), so the same traffic mix runs on either.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from urllib.parse import urlencode, urlsplit


class LeanHTTPError(Exception):
    """The connection broke or the answer was not HTTP/1.1 with a Content-Length."""


@dataclass
class LeanResponse:
    status_code: int
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names
    content: bytes = b""

    def json(self) -> object:
        return json.loads(self.content)


class LeanClient:
    """One persistent connection; requests on it are sequential (a closed-loop client)."""

    def __init__(self, base_url: str, timeout: float = 30.0) -> None:
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.timeout = timeout
        self._host_header = f"{self.host}:{self.port}"
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is None or self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        return self._reader, self._writer

    async def request(self, method: str, path: str, *, params: dict | None = None, json_body: object = None,
                      headers: dict[str, str] | None = None) -> LeanResponse:
        if params:
            path = f"{path}?{urlencode(params)}"
        body = b"" if json_body is None else json.dumps(json_body, separators=(",", ":")).encode()
        head = [f"{method} {path} HTTP/1.1", f"Host: {self._host_header}", f"Content-Length: {len(body)}"]
        if json_body is not None:
            head.append("Content-Type: application/json")
        head += [f"{k}: {v}" for k, v in (headers or {}).items()]
        payload = ("\r\n".join(head) + "\r\n\r\n").encode() + body
        try:
            return await asyncio.wait_for(self._exchange(payload), self.timeout)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as err:
            await self.aclose()  # a broken or half-read connection is never reused
            raise LeanHTTPError(f"{method} {path}: {type(err).__name__}: {err}") from err

    async def _exchange(self, payload: bytes) -> LeanResponse:
        reader, writer = await self._connection()
        writer.write(payload)
        raw = await reader.readuntil(b"\r\n\r\n")
        status_line, *lines = raw.decode("latin-1").split("\r\n")
        if not status_line.startswith("HTTP/1.1 "):
            raise ValueError(f"not an HTTP/1.1 answer: {status_line!r}")
        headers = {}
        for line in lines:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        if "content-length" not in headers:
            raise ValueError("answer without Content-Length")
        content = await reader.readexactly(int(headers["content-length"]))
        if headers.get("connection", "").lower() == "close":
            await self.aclose()
        return LeanResponse(int(status_line.split(" ", 2)[1]), headers, content)

    async def get(self, path: str, params: dict | None = None, headers: dict[str, str] | None = None) -> LeanResponse:
        return await self.request("GET", path, params=params, headers=headers)

    async def post(self, path: str, json: object = None, headers: dict[str, str] | None = None) -> LeanResponse:
        return await self.request("POST", path, json_body=json, headers=headers)

    async def aclose(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
