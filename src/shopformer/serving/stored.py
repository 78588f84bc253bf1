"""What both state stores share: the stored event, results, errors, validation and key hashing."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from shopformer.data.ingest import MAX_ID_CHARS
from shopformer.serving.timestamps import MAX_TIMESTAMP

MAX_ID_LEN = MAX_ID_CHARS  # the API's limit on every id (schemas.Id), the same as prepare's


@dataclass(frozen=True)
class StoredEvent:
    user_id: str
    item_id: str
    timestamp: int
    behaviour: str | None = None  # stored as column / payload field ``event_type`` (format unchanged)
    session_id: str | None = None
    category_id: str | None = None
    price: float | None = None
    event_id: str | None = None

    @property
    def event_type(self) -> str | None:
        """Deprecated alias of ``behaviour`` (its old name), kept for one release."""
        return self.behaviour


@dataclass(frozen=True)
class ServedList:
    """A recommendation list the service answered a user with (for the online hit rate)."""

    timestamp: int
    items: tuple[str, ...]


@dataclass
class AppendResult:
    applied: int = 0
    duplicates: list[str] = field(default_factory=list)  # event_ids seen before


class StoreUnavailable(RuntimeError):
    """The store cannot answer now (down, loading, read-only, disk full, busy): retry later (HTTP 503)."""


class InvalidEvent(ValueError):
    """An event no store may hold (the HTTP schema refuses it first; this guards every other path)."""


def _check_id(value: object, name: str, i: int, optional: bool) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_ID_LEN:
        raise InvalidEvent(f"event {i}: {name} must be a string of 1..{MAX_ID_LEN} characters")


def validate_events(events: list[StoredEvent]) -> None:
    """Check a whole batch before anything is written: a bad event fails its batch, and only it."""
    for i, e in enumerate(events):
        _check_id(e.user_id, "user_id", i, False)
        _check_id(e.item_id, "item_id", i, False)
        for name in ("behaviour", "session_id", "category_id", "event_id"):
            _check_id(getattr(e, name), name, i, True)
        if type(e.timestamp) is not int or not 0 <= e.timestamp <= MAX_TIMESTAMP:
            raise InvalidEvent(f"event {i}: timestamp must be an integer of Unix seconds in 0..{MAX_TIMESTAMP}")
        if e.price is not None and (not isinstance(e.price, int | float) or isinstance(e.price, bool)
                                    or not math.isfinite(e.price) or e.price < 0):
            raise InvalidEvent(f"event {i}: price must be a finite number >= 0")


def in_range(ts: int) -> bool:
    """A stored timestamp the service can use (rows written before timestamps were bounded may not be)."""
    return 0 <= ts <= MAX_TIMESTAMP

