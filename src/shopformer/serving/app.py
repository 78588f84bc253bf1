"""The app factory. Nothing is built at import time: ``create_app(settings)`` returns an app whose
lifespan opens the state store and loads the model (and closes both on shutdown).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from shopformer import __version__
from shopformer.data.ledger import open_ledger
from shopformer.data.options import DataValidationError
from shopformer.serving.engine import Engine
from shopformer.serving.follow import start_watch
from shopformer.serving.logscrub import install_access_log_filter
from shopformer.serving.metrics import Metrics
from shopformer.serving.middleware import VERSION_KEY, BodyLimit, Observe, Shed
from shopformer.serving.routes import build_router
from shopformer.serving.settings import ServeSettings
from shopformer.serving.state import ServiceState, service_pseudonym_key
from shopformer.serving.store import InvalidEvent, StoreUnavailable, open_store

if TYPE_CHECKING:
    from shopformer.serving.dashboard.versions import RegistryOpener

log = logging.getLogger(__name__)


def configure_threads(n: int) -> None:
    """Few intra-op threads: on a 2-core box the event loop needs the other core."""
    torch.set_num_threads(n)
    with contextlib.suppress(RuntimeError):  # already set (or already used) in this process
        torch.set_num_interop_threads(1)


def _version(request: Request) -> str:
    svc: ServiceState | None = getattr(request.app.state, "svc", None)
    return request.scope.get(VERSION_KEY) or (svc.engine.version if svc else "none")


def _route(request: Request) -> str:
    """The route template (``/v1/users/{user_id}``) for logs: never the raw path, which holds user ids."""
    return getattr(request.scope.get("route"), "path", None) or "unmatched"


def create_app(settings: ServeSettings | None = None, registry_opener: RegistryOpener | None = None) -> FastAPI:
    """The service; ``registry_opener`` (``pipelines.registry.Registry``, passed by the CLI) lets the
    dashboard show and switch registry versions."""
    settings = settings or ServeSettings()
    metrics = Metrics()
    install_access_log_filter()  # user ids never reach the access log (logscrub.py)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.run_dir is None:
            raise RuntimeError("no run directory to serve (pass RUN_DIR or set SHOPFORMER_RUN_DIR)")
        key = service_pseudonym_key(settings)  # None unless pseudonymous ids are asked for (state.py)
        configure_threads(settings.threads)
        executor = ThreadPoolExecutor(1, thread_name_prefix="inference", initializer=configure_threads,
                                      initargs=(settings.threads,)) if settings.inference_thread else None
        try:
            ledger = await asyncio.to_thread(open_ledger, settings.effective_forget_ledger())
        except (DataValidationError, OSError) as err:
            raise RuntimeError(f"deletion ledger: {err}") from None
        store = open_store(settings.store_url, settings.dedup_ttl_s, settings.aof_rewrite_interval_s)
        try:
            await store.ping()
            engine = await asyncio.to_thread(Engine.load, settings.run_dir, settings, executor,
                                             metrics.batch_size.observe)
        except BaseException:
            await store.close()
            if executor is not None:
                executor.shutdown(wait=False)
            raise
        svc = ServiceState(settings, store, engine, metrics, executor, ledger, pseudonym_key=key)
        svc.install(engine)
        app.state.svc = svc
        for scope in ("ingest", "admin"):
            if settings.scope_key(scope) is None:
                log.warning("no %s key configured (SHOPFORMER_%s_KEY or SHOPFORMER_API_KEY): its endpoints answer 403",
                            scope, scope.upper())
        log.info("serving %s with the %s store", engine.version, store.kind)
        watcher = start_watch(svc)  # follows registry/current when watch_run_dir is set (follow.py)
        try:
            yield
        finally:
            if watcher is not None:
                watcher.cancel()
            await svc.engine.close()
            if svc.background:
                await asyncio.gather(*svc.background, return_exceptions=True)
            await store.close()
            if executor is not None:
                executor.shutdown(wait=True)

    app = FastAPI(
        title="shopformer",
        version=__version__,
        description="Real-time next-item recommendations: event ingestion, per-user state, top-k, hot reload.",
        lifespan=lifespan,
    )
    app.include_router(build_router(settings))
    if settings.dashboard:
        from shopformer.serving.dashboard import install_dashboard

        install_dashboard(app, settings, registry_opener)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"detail": exc.detail, "model_version": _version(request)}, status_code=exc.status_code,
                            headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        status = 400 if any(e["type"] == "json_invalid" for e in errors) else 422
        return JSONResponse({"detail": errors, "model_version": _version(request)}, status_code=status)

    @app.exception_handler(StoreUnavailable)
    async def store_unavailable(request: Request, exc: StoreUnavailable) -> JSONResponse:
        log.warning("store unavailable on %s %s: %s", request.method, _route(request), exc)
        return JSONResponse({"detail": "state store unavailable; retry later", "model_version": _version(request)},
                            status_code=503, headers={"Retry-After": str(settings.retry_after_s)})

    @app.exception_handler(InvalidEvent)
    async def invalid_event(request: Request, exc: InvalidEvent) -> JSONResponse:
        detail = [{"loc": ["body", "events"], "msg": str(exc), "type": "invalid_event"}]
        return JSONResponse({"detail": detail, "model_version": _version(request)}, status_code=422)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, _route(request))
        # Sent by Starlette's outermost error middleware, past Observe: its headers are set here.
        version = _version(request)
        return JSONResponse({"detail": f"internal error ({type(exc).__name__})", "model_version": version},
                            status_code=500, headers={"Connection": "close", "x-model-version": version})

    def current_version() -> str:
        svc = getattr(app.state, "svc", None)
        return svc.engine.version if svc else "none"

    base_openapi = app.openapi
    published: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:
        """The OpenAPI document states the limits of this server and the behaviours of the served model."""
        svc = getattr(app.state, "svc", None)
        version = svc.engine.version if svc else None
        if published.get("version") != version or "doc" not in published:
            doc = copy.deepcopy(base_openapi())
            allowed = ["*", *svc.engine.behaviours_to_rank()] if svc else None
            publish_limits(doc, settings, allowed)
            published.update(version=version, doc=doc)
        return published["doc"]

    app.openapi = openapi  # type: ignore[method-assign]
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, version=current_version)
    app.add_middleware(Observe, metrics=metrics, version=current_version)  # sees every answer but shed ones
    app.add_middleware(Shed, limit=settings.max_in_flight, retry_after_s=settings.retry_after_s,  # outermost
                       version=current_version, on_shed=metrics.shed.inc)
    return app


def publish_limits(doc: dict[str, Any], settings: ServeSettings, behaviours: list[str] | None) -> None:
    """Write the limits that only exist at run time into the OpenAPI document, so that a value the
    document allows is never refused: batch and history sizes, k, and the behaviour names."""
    schemas = doc.get("components", {}).get("schemas", {})
    if "EventBatch" in schemas:
        schemas["EventBatch"]["properties"]["events"]["maxItems"] = settings.max_events_per_batch
    if "AdHocRequest" in schemas:
        props = schemas["AdHocRequest"]["properties"]
        props["history"]["maxItems"] = settings.max_history
        props["k"]["maximum"] = settings.max_k
        if behaviours is not None:
            props["behaviour"]["anyOf"] = [{"type": "string", "enum": behaviours}, {"type": "null"}]
    if behaviours is not None:
        op = doc.get("paths", {}).get("/v1/users/{user_id}/recommendations", {}).get("get", {})
        for param in op.get("parameters", []):
            if param.get("name") == "behaviour":
                param["schema"] = {"type": "string", "enum": behaviours, "title": "Behaviour"}
