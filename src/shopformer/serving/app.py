"""The app factory. Nothing is built at import time: ``create_app(settings)`` returns an app whose
lifespan opens the state store and loads the model (and closes both on shutdown).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from shopformer import __version__
from shopformer.serving.engine import Engine
from shopformer.serving.metrics import Metrics
from shopformer.serving.middleware import VERSION_KEY, BodyLimit, Observe
from shopformer.serving.routes import build_router
from shopformer.serving.settings import ServeSettings
from shopformer.serving.state import ServiceState
from shopformer.serving.store import open_store

log = logging.getLogger(__name__)


def configure_threads(n: int) -> None:
    """Few intra-op threads: on a 2-core box the event loop needs the other core."""
    torch.set_num_threads(n)
    with contextlib.suppress(RuntimeError):  # already set (or already used) in this process
        torch.set_num_interop_threads(1)


def _version(request: Request) -> str:
    svc: ServiceState | None = getattr(request.app.state, "svc", None)
    return request.scope.get(VERSION_KEY) or (svc.engine.version if svc else "none")


def create_app(settings: ServeSettings | None = None) -> FastAPI:
    settings = settings or ServeSettings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.run_dir is None:
            raise RuntimeError("no run directory to serve (pass RUN_DIR or set SHOPFORMER_RUN_DIR)")
        configure_threads(settings.threads)
        executor = ThreadPoolExecutor(1, thread_name_prefix="inference", initializer=configure_threads,
                                      initargs=(settings.threads,)) if settings.inference_thread else None
        store = open_store(settings.store_url, settings.dedup_ttl_s)
        try:
            await store.ping()
            engine = await asyncio.to_thread(Engine.load, settings.run_dir, settings, executor,
                                             metrics.batch_size.observe)
        except BaseException:
            await store.close()
            if executor is not None:
                executor.shutdown(wait=False)
            raise
        svc = ServiceState(settings, store, engine, metrics, executor)
        svc.install(engine)
        app.state.svc = svc
        if settings.api_key is None:
            log.warning("no API key configured (SHOPFORMER_API_KEY): writes, deletes and reloads answer 403")
        log.info("serving %s with the %s store", engine.version, store.kind)
        try:
            yield
        finally:
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

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"detail": exc.detail, "model_version": _version(request)}, status_code=exc.status_code,
                            headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        status = 400 if any(e["type"] == "json_invalid" for e in errors) else 422
        return JSONResponse({"detail": errors, "model_version": _version(request)}, status_code=status)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": f"internal error ({type(exc).__name__})", "model_version": _version(request)},
                            status_code=500)

    def current_version() -> str:
        svc = getattr(app.state, "svc", None)
        return svc.engine.version if svc else "none"

    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, version=current_version)
    app.add_middleware(Observe, metrics=metrics, version=current_version)  # outermost: sees every answer
    return app
