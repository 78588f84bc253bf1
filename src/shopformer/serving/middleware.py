"""Plain ASGI middleware (cheaper than Starlette's BaseHTTPMiddleware on the hot path).

- ``BodyLimit``: rejects bodies over ``max_bytes`` with 413, from Content-Length when sent and
  by counting the stream otherwise, before any JSON is parsed.
- ``Observe``: request count and latency by route template, an ``x-model-version`` header on
  every response (the version that answered, else the one being served), and
  ``Connection: close`` on every server error (5xx), so clients never reuse a connection the
  server is about to drop.
- ``Shed``: load shedding. At most ``limit`` ``/v1`` requests are in flight in this process; one
  more is answered 503 with ``Retry-After`` at once, before its body is read, so the requests that
  are accepted never wait behind an unbounded queue (their tail latency stays bounded under
  overload). Outermost: a shed request costs no routing, no metrics histogram, and its connection
  stays open (it is an answer, not a failure: the client retries after Retry-After).
  Health, readiness, metrics and ``/v1/admin/`` are never shed: an operator must be able to
  roll back or reload a model on a worker that is overloaded (possibly by that model).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shopformer.serving.metrics import Metrics

VERSION_KEY = "shopformer.model_version"  # set in the scope by handlers that used a model


class BodyTooLarge(HTTPException):
    """Raised from the counting receive(); an HTTPException so FastAPI's body reader passes it on."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, _too_large_detail(max_bytes))  # type: ignore[arg-type]  # FastAPI renders any detail


def _too_large_detail(max_bytes: int) -> list[dict]:
    return [{"loc": ["body"], "msg": f"request body larger than {max_bytes} bytes", "type": "body_too_large"}]


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int, version: Callable[[], str]) -> None:
        self.app, self.max_bytes, self.version = app, max_bytes, version

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.max_bytes
                except ValueError:
                    too_big = False
                if too_big:
                    await self._reject(send)
                    return
        seen = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return msg

        async def tracking_send(msg: Message) -> None:
            nonlocal started
            started = started or msg["type"] == "http.response.start"
            await send(msg)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await self._reject(send)

    async def _reject(self, send: Send) -> None:
        body = json.dumps({"detail": _too_large_detail(self.max_bytes), "model_version": self.version()}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class Observe:
    def __init__(self, app: ASGIApp, metrics: Metrics, version: Callable[[], str]) -> None:
        self.app, self.metrics, self.version = app, metrics, version

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500

        async def send_with_version(msg: Message) -> None:
            nonlocal status
            if msg["type"] == "http.response.start":
                status = msg["status"]
                version = scope.get(VERSION_KEY) or self.version()
                headers = [*msg.get("headers", []), (b"x-model-version", version.encode())]
                if status >= 500 and not any(k.lower() == b"connection" for k, _ in headers):
                    headers.append((b"connection", b"close"))  # a server error: the client reconnects
                msg["headers"] = headers
            await send(msg)

        try:
            await self.app(scope, receive, send_with_version)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            self.metrics.requests.labels(method, template, str(status)).inc()
            self.metrics.latency.labels(method, template).observe(time.perf_counter() - t0)


class Shed:
    def __init__(self, app: ASGIApp, limit: int, retry_after_s: int, version: Callable[[], str],
                 on_shed: Callable[[], None] | None = None) -> None:
        self.app, self.limit, self.version, self.on_shed = app, limit, version, on_shed
        self.retry_after = str(retry_after_s).encode()
        self.in_flight = 0  # /v1 requests (not admin) between arrival and their last response byte (one event loop)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or self.limit <= 0 or not path.startswith("/v1/") or path.startswith("/v1/admin/"):
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            if self.on_shed is not None:
                self.on_shed()
            await self._reject(send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1

    async def _reject(self, send: Send) -> None:
        body = json.dumps({"detail": f"overloaded: more than {self.limit} requests in flight; retry after "
                           f"{self.retry_after.decode()} s", "model_version": self.version()}).encode()
        await send({"type": "http.response.start", "status": 503,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"retry-after", self.retry_after), (b"x-model-version", self.version().encode())]})
        await send({"type": "http.response.body", "body": body})
