"""The version history and the promote / rollback actions of the Overview page.

The model registry lives in ``pipelines/registry.py``, a layer the service must not import (the
service reaches models only through the recommender). The CLI, which sits above both, hands the
app a ``RegistryOpener`` (``Registry`` itself); this module only knows the protocol below.

An action first loads the target version's model completely (checksums, index, warm-up), then
switches the registry's current pointer, then swaps the served engine: a version that does not load
never becomes current, and the service never serves something other than ``current``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from shopformer.serving.engine import Engine
from shopformer.serving.state import ServiceState

log = logging.getLogger(__name__)


class VersionRegistry(Protocol):
    def versions(self) -> list[dict]: ...

    def current(self) -> str | None: ...

    def pointer(self) -> dict: ...

    def model_dir(self, version: str) -> Path: ...

    def promote(self, version: str, reason: str = ...) -> None: ...

    def rollback(self, version: str | None = None) -> str: ...


RegistryOpener = Callable[[Path], VersionRegistry]
# What a registry operation may raise for a reason the operator can act on (RegistryError is a
# ValueError, RegistryLocked a RuntimeError).
REGISTRY_ERRORS: tuple[type[BaseException], ...] = (ValueError, RuntimeError, OSError)


def find_registry_root(run_dir: Path | None, configured: Path | None) -> Path | None:
    """The configured registry, else the one ``run_dir`` belongs to: ``REGISTRY/current`` or
    ``REGISTRY/versions/VERSION/model``; None when the served run is not in a registry."""
    if configured is not None:
        return configured
    if run_dir is None:
        return None
    if run_dir.name == "current" and (run_dir.parent / "current.json").exists():
        return run_dir.parent
    real = run_dir.resolve()
    if len(real.parents) >= 3 and real.parents[1].name == "versions" and (real.parents[2] / "current.json").exists():
        return real.parents[2]
    return None


def version_rows(reg: VersionRegistry) -> list[dict]:
    """Newest first, with what the table shows and which actions apply."""
    history = [str(v) for v in reg.pointer().get("history", [])]
    rows = []
    for v in reversed(reg.versions()):
        window = v.get("data_window") or {}
        gate = v.get("gate") or {}
        metric = gate.get("metric")
        cand = (gate.get("systems") or {}).get("candidate", {}).get(metric) if metric else None
        rows.append({
            "version": v.get("version"), "status": v.get("status", "?"), "current": bool(v.get("current")),
            "created": v.get("created", ""), "parent": v.get("parent") or "",
            "window": f"{(window.get('start_utc') or '-')[:10]} .. {(window.get('end_utc') or '-')[:10]}",
            "events": (v.get("events") or {}).get("total"), "gate": f"{metric} {cand:.4f}" if cand is not None else "",
            "reason": v.get("reason", ""),
            "can_promote": not v.get("current") and v.get("status") != "rejected",
            "can_rollback": v.get("version") in history,
        })
    return rows


async def switch(svc: ServiceState, reg: VersionRegistry, action: str, version: str) -> str:
    """Promote ``version`` or roll back to it; returns the version now served. Raises one of
    REGISTRY_ERRORS (or ArtifactError, a ValueError) with a message for the operator."""
    if action not in ("promote", "rollback"):
        raise ValueError(f"unknown action {action!r}")
    async with svc.reload_lock:
        old = svc.engine
        new = await asyncio.to_thread(Engine.load, reg.model_dir(version), svc.settings, svc.executor,
                                      svc.metrics.batch_size.observe)
        try:
            if action == "promote":
                await asyncio.to_thread(reg.promote, version, "promoted from the dashboard")
            else:
                await asyncio.to_thread(reg.rollback, version)
        except BaseException:
            await new.close()
            raise
        svc.install(new)
        svc.metrics.reloads.labels("ok").inc()
    svc.spawn(old.close())
    log.info("dashboard %s: now serving %s (%s)", action, version, new.version)
    return version
