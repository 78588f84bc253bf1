"""Follow a model registry: reload when the served path starts pointing at another run.

``shopformer serve registry/current --watch`` (``SHOPFORMER_WATCH_RUN_DIR=1``): every
``watch_interval_s`` the service resolves its run directory (``registry/current`` is a symlink the
registry replaces atomically on ``models promote`` / ``rollback`` / ``retrain --promote``); when it
resolves to another directory than the one being served, that run is loaded fully and swapped in,
exactly like ``POST /v1/admin/reload`` (on error the old model stays and the next tick retries).
Without ``--watch``, ``POST /v1/admin/reload {"run_dir": "current"}`` does the same once.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from shopformer.serving.engine import Engine
from shopformer.serving.state import ServiceState

log = logging.getLogger(__name__)


def target(run_dir: Path) -> Path | None:
    """Where ``run_dir`` points now (None while it does not resolve to a directory)."""
    try:
        real = run_dir.resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    return real if real.is_dir() else None


async def follow_once(svc: ServiceState, run_dir: Path, served: Path) -> Path:
    """Reload if ``run_dir`` resolves elsewhere than ``served``; returns the directory served after."""
    new_target = target(run_dir)
    if new_target is None or new_target == served:
        return served
    async with svc.reload_lock:
        old = svc.engine
        try:
            new = await asyncio.to_thread(Engine.load, new_target, svc.settings, svc.executor,
                                          svc.metrics.batch_size.observe)
        except Exception:  # noqa: BLE001 - keep serving the old model; the next tick retries
            log.exception("watch: loading %s failed; still serving %s", new_target.name, old.version)
            svc.metrics.reloads.labels("failed").inc()
            return served
        svc.install(new)
        svc.metrics.reloads.labels("ok").inc()
    log.info("watch: %s now points at %s; serving %s (was %s)", run_dir.name, new_target.name, new.version,
             old.version)
    svc.spawn(old.close())  # requests already queued finish on the old model
    return new_target


async def watch(svc: ServiceState, run_dir: Path, interval_s: float) -> None:
    """Poll ``run_dir`` forever (cancel the task to stop)."""
    served = svc.engine.run_dir.resolve()  # what start-up loaded
    while True:
        await asyncio.sleep(interval_s)
        try:
            served = await follow_once(svc, run_dir, served)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - the watch must outlive any single failure
            log.exception("watch: checking %s failed", run_dir.name)


def start_watch(svc: ServiceState) -> asyncio.Task | None:
    """The watch task when ``watch_run_dir`` is set (the caller cancels it on shutdown)."""
    settings = svc.settings
    if not settings.watch_run_dir or settings.run_dir is None:
        return None
    return asyncio.get_running_loop().create_task(watch(svc, settings.run_dir, settings.watch_interval_s),
                                                  name="watch-run-dir")
