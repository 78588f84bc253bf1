"""What the running service holds: settings, store, deletion ledger, metrics and the current engine.

The engine is swapped by assigning one attribute (atomic under the event loop); handlers read
``svc.engine`` once and use that object for the rest of the request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from shopformer.data.ledger import Ledger
from shopformer.serving.engine import Engine
from shopformer.serving.metrics import Metrics
from shopformer.serving.reload import shown_path
from shopformer.serving.settings import ServeSettings
from shopformer.serving.store import StateStore


@dataclass
class ServiceState:
    settings: ServeSettings
    store: StateStore
    engine: Engine
    metrics: Metrics
    executor: ThreadPoolExecutor | None  # the inference thread, None: forward passes on the event loop
    ledger: Ledger
    reload_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    background: set[asyncio.Task] = field(default_factory=set)

    def install(self, engine: Engine, shown_run_dir: str | None = None) -> None:
        """Serve ``engine``; metrics name its run directory relative to the reload root, never absolutely."""
        self.engine = engine
        shown = shown_run_dir or shown_path(engine.run_dir.resolve(), self.settings.effective_reload_root())
        self.metrics.set_model(engine.version, engine.rec.cfg.model.name, engine.index_kind, shown,
                               engine.rec.spec.n_items, time.time(), engine.ann_recall)

    def forgotten_before(self, user_id: str, timestamp: int) -> bool:
        """True for an event of a forgotten user dated at or before the deletion (a replay)."""
        at = self.ledger.forgotten_at(user_id)
        return at is not None and timestamp <= at

    async def forget(self, user_ids: list[str]) -> int:
        """Record the deletion in the ledger first (so retraining skips the users even if the store
        fails next), then delete from the store; returns the events removed."""
        await asyncio.to_thread(self.ledger.record, user_ids, int(time.time()))
        return await self.store.forget_many(user_ids)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run in the background, keeping a reference (the loop only holds weak ones)."""
        task = asyncio.get_running_loop().create_task(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)
