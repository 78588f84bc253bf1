"""``shopformer serve RUN --workers N``: N service processes on one port, sharing one Redis store.

uvicorn's supervisor binds the socket once and starts N worker processes (spawned, each with its
own interpreter, model copy, micro-batcher and event loop) that accept connections from it; the
kernel hands each new connection to one worker. Every worker builds its app from the same resolved
settings, handed over in one environment variable (never on the command line: it holds the keys).
A worker that dies is replaced; SIGHUP to the supervisor replaces them one by one (each new one is
ready before an old one stops), which is how a multi-worker service picks up a new model.

Why Redis: per-user state must be visible to every worker, so the store has to live outside
them; the embedded SQLite store has one writer per process and is refused here.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import typer
from fastapi import FastAPI
from pydantic import SecretStr

from shopformer.serving.settings import ServeSettings

SETTINGS_ENV = "SHOPFORMER_WORKER_SETTINGS"


def settings_json(settings: ServeSettings) -> str:
    """The resolved settings as JSON, secrets in clear (for the workers' environment only)."""
    data: dict[str, Any] = {}
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        data[name] = value.get_secret_value() if isinstance(value, SecretStr) else value
    return json.dumps(data, default=str)


def check_workers(settings: ServeSettings) -> None:
    """Refuse set-ups where worker processes would not share state (typer.BadParameter)."""
    if settings.workers > 1 and not settings.store_url.startswith("redis://"):
        raise typer.BadParameter(f"{settings.workers} workers need a store they all share: --store "
                                 f"redis://host:6379/0 (got {settings.store_url.split(':', 1)[0]}; the SQLite "
                                 "store has one writer per process)", param_hint="--workers")


def worker_app() -> FastAPI:
    """The app of one worker process (uvicorn factory): settings from ``SHOPFORMER_WORKER_SETTINGS``."""
    from shopformer.cli.serve import registry_opener
    from shopformer.serving.app import create_app

    settings = ServeSettings.model_validate(json.loads(os.environ[SETTINGS_ENV]))
    logging.basicConfig(level=settings.log_level.upper(),
                        format=f"%(asctime)s %(levelname)s [worker {os.getpid()}] %(name)s: %(message)s")
    return create_app(settings, registry_opener())


def run_workers(settings: ServeSettings) -> None:
    """Serve with ``settings.workers`` processes until stopped; typer.Exit(1) if the workers cannot start."""
    import uvicorn
    from uvicorn.config import STARTUP_FAILURE
    from uvicorn.supervisors.multiprocess import Multiprocess

    check_workers(settings)
    os.environ[SETTINGS_ENV] = settings_json(settings)  # inherited by the spawned workers
    config = uvicorn.Config(
        f"{__name__}:worker_app", factory=True, workers=settings.workers, host=settings.host, port=settings.port,
        log_level=settings.log_level, access_log=settings.access_log, lifespan="on", backlog=2048,
        timeout_keep_alive=30,
    )
    supervisor = Multiprocess(config, sockets=[config.bind_socket()])
    supervisor.run()
    if any(p.process.exitcode == STARTUP_FAILURE for p in supervisor.processes):
        raise typer.Exit(code=1)  # the workers' lifespan failed (bad run directory, unreachable store, ...)
