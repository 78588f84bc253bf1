"""What the running service holds: settings, store, metrics and the current engine.

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

from shopformer.serving.engine import Engine
from shopformer.serving.metrics import Metrics
from shopformer.serving.settings import ServeSettings
from shopformer.serving.store import StateStore


@dataclass
class ServiceState:
    settings: ServeSettings
    store: StateStore
    engine: Engine
    metrics: Metrics
    executor: ThreadPoolExecutor | None  # the inference thread, None: forward passes on the event loop
    reload_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    background: set[asyncio.Task] = field(default_factory=set)

    def install(self, engine: Engine) -> None:
        self.engine = engine
        self.metrics.set_model(engine.version, engine.rec.cfg.model.name, engine.index_kind, str(engine.run_dir),
                               engine.rec.spec.n_items, time.time(), engine.ann_recall)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run in the background, keeping a reference (the loop only holds weak ones)."""
        task = asyncio.get_running_loop().create_task(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)
