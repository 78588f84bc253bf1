"""What the running service holds: settings, store, deletion ledger, metrics and the current engine.

The engine is swapped by assigning one attribute (atomic under the event loop); handlers read
``svc.engine`` once and use that object for the rest of the request.

User ids: every handler maps the raw id of a request through :meth:`ServiceState.user_key` before
it touches the store, the ledger or the served-list log. With a pseudonym key configured that is
``HMAC(key, id)`` (data/pseudonym.py, the same pseudonym ``prepare --pseudonymise-users`` writes),
so none of them, nor any log line, ever holds the raw id; without one it is the id itself. Event
and session ids (which clients often build from the user id) are kept as pseudonyms too (``field_key``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from shopformer.data.ledger import Ledger
from shopformer.data.pseudonym import PseudonymKeyError, load_pseudonym_key, pseudonymise, pseudonymise_field
from shopformer.serving.engine import Engine
from shopformer.serving.metrics import Metrics
from shopformer.serving.online import OnlineMonitor
from shopformer.serving.reload import shown_path
from shopformer.serving.settings import ServeSettings
from shopformer.serving.store import StateStore


def service_pseudonym_key(settings: ServeSettings) -> bytes | None:
    """The pseudonym key when the settings ask for pseudonymous ids (the key file, else the
    environment variable ``SHOPFORMER_PSEUDONYM_KEY``); None otherwise. A missing or short key
    stops the start-up with one line (RuntimeError), never a service that stores raw ids."""
    if not settings.pseudonymise_users and settings.pseudonym_key_file is None:
        return None
    try:
        return load_pseudonym_key(settings.pseudonym_key_file)
    except PseudonymKeyError as err:
        raise RuntimeError(f"pseudonymous user ids: {err}") from None


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
    online: OnlineMonitor = field(init=False)  # online hit rate and drift (serving/online.py)
    pseudonym_key: bytes | None = field(default=None, repr=False)  # never logged, never in a response

    def __post_init__(self) -> None:
        self.online = OnlineMonitor(self.settings, self.metrics)

    def install(self, engine: Engine, shown_run_dir: str | None = None) -> None:
        """Serve ``engine``; metrics name its run directory relative to the reload root, never absolutely."""
        self.engine = engine
        shown = shown_run_dir or shown_path(engine.run_dir.resolve(), self.settings.effective_reload_root())
        self.metrics.set_model(engine.version, engine.rec.cfg.model.name, engine.index_kind, shown,
                               engine.rec.spec.n_items, time.time(), engine.ann_recall)
        self.online.set_reference(engine.run_dir)

    def user_key(self, user_id: str) -> str:
        """The id the service keeps for a raw user id: its pseudonym with a key, else the id itself."""
        return user_id if self.pseudonym_key is None else pseudonymise(user_id, self.pseudonym_key)

    def field_key(self, value: str | None, name: str) -> str | None:
        """An id that may embed a user id (``event_id``, ``session_id``) as kept: pseudonymised with a
        key (equal ids stay equal, so idempotency and sessions work unchanged), else as sent."""
        if value is None or self.pseudonym_key is None:
            return value
        return pseudonymise_field(value, self.pseudonym_key, name)

    def forgotten_before(self, user_id: str, timestamp: int) -> bool:
        """True for an event of a forgotten user (id as kept: ``user_key``) dated at or before the
        deletion (a replay)."""
        at = self.ledger.forgotten_at(user_id)
        return at is not None and timestamp <= at

    async def forget(self, user_ids: list[str]) -> int:
        """Record the deletion in the ledger first (so retraining skips the users even if the store
        fails next), then delete from the store; returns the events removed. ``user_ids`` are raw."""
        kept = [self.user_key(u) for u in user_ids]
        await asyncio.to_thread(self.ledger.record, kept, int(time.time()))
        await self.online.settle()  # served lists logged before the deletion are written first, then deleted
        return await self.store.forget_many(kept)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task:
        """Run in the background, keeping a reference (the loop only holds weak ones)."""
        task = asyncio.get_running_loop().create_task(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)
        return task
