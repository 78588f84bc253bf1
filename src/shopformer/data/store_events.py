"""Read the live service's event store without stopping it and write its events as a canonical CSV
that ``ingest`` validates like any other file.

Both stores keep each user's most recent events (the model's window), as raw ids; users deleted
through the service are gone from them, so their events never come back through here (their older
events in earlier versions' data are dropped by the deletion ledger: ``retrain --forget-ledger``).

- SQLite (a path, or ``sqlite:///relative.db`` / ``sqlite:////abs/path.db``): opened read-only
  (``mode=ro``; WAL readers never block the writer), one consistent snapshot of the table
  ``events (user_id, item_id, ts, event_type, session_id, category_id, price, event_id)``.
- Redis (``redis://host:port/db``, ``rediss://``, ``unix://``): one sorted set per user,
  ``shopformer:h:<user>`` (serving/store_redis.py), read with SCAN and pipelined ZRANGEBYSCORE,
  never a blocking command (no KEYS) and nothing written. Not one snapshot: a user whose events
  arrive during the read may be read before or after them; a re-read later picks them up, and
  duplicates are dropped by the retrain's ingest.
"""

from __future__ import annotations

import csv
import json
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit

from shopformer.atomic import atomic_write

HEADER = ("user_id", "item_id", "timestamp", "behaviour", "session_id", "category_id", "price")
_QUERY = ("SELECT user_id, item_id, ts, event_type, session_id, category_id, price FROM events "
          "WHERE ts >= ? ORDER BY user_id, ts, id")
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
REDIS_PREFIX = "shopformer:"  # serving/store_redis.py
_BATCH = 500  # users per Redis pipeline round trip

Row = tuple[object, ...]


def is_redis(store: str | Path) -> bool:
    return str(store).startswith(REDIS_SCHEMES)


def export_store_events(store: str | Path, out_csv: str | Path, since: int | None = None) -> int:
    """Events of the service's store (a SQLite file or URL, or a Redis URL) at or after Unix time
    ``since`` -> ``out_csv`` (ordered by user, time, arrival); returns how many. Nothing is written
    to the store."""
    text = str(store)
    if is_redis(text):
        rows = _redis_rows(text, since or 0)
    else:
        rows = _sqlite_rows(Path(text.removeprefix("sqlite:///")), since or 0)

    def write(p: Path) -> None:
        with p.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(HEADER)
            w.writerows(["" if v is None else v for v in row] for row in rows)

    atomic_write(out_csv, write)
    return len(rows)


def _sqlite_rows(path: Path, since: int) -> list[Row]:
    if not path.exists():
        raise FileNotFoundError(f"event store not found: {path}")
    try:
        con = sqlite3.connect(f"file:{path.resolve()}?mode=ro", uri=True, timeout=30.0)
    except sqlite3.Error as err:
        raise ValueError(f"{path}: cannot open the event store read-only: {err}") from None
    try:
        return con.execute(_QUERY, (since,)).fetchall()
    except sqlite3.Error as err:
        raise ValueError(f"{path}: not a shopformer event store ({err})") from None
    finally:
        con.close()


def redacted(url: str) -> str:
    """``url`` without its user name and password (for messages)."""
    parts = urlsplit(url)
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


def _redis_rows(url: str, since: int, prefix: str = REDIS_PREFIX) -> list[Row]:
    try:
        import redis
    except ImportError:
        raise ValueError("reading a Redis event store needs the redis package (pip install 'shopformer[serve]')") \
            from None
    client = redis.Redis.from_url(url, decode_responses=True, socket_timeout=30, socket_connect_timeout=10)
    head = f"{prefix}h:"
    try:
        keys = sorted(client.scan_iter(match=f"{head}*", count=1000))
        rows: list[Row] = []
        for i in range(0, len(keys), _BATCH):
            chunk = keys[i : i + _BATCH]
            pipe = client.pipeline(transaction=False)
            for key in chunk:
                pipe.zrangebyscore(key, since, "+inf", withscores=True)
            for key, members in zip(chunk, pipe.execute(), strict=True):
                rows.extend(_redis_events(key[len(head):], members, key, since))
        return rows
    except redis.RedisError as err:
        raise ValueError(f"{redacted(url)}: cannot read the event store: {type(err).__name__}: {err}") from None
    finally:
        client.close()


def _redis_events(user: str, members: Iterable[tuple[str, float]], key: str, since: int) -> list[Row]:
    """One user's sorted-set members ``<arrival>|[item, behaviour, session, category, price,
    event_id, ts]`` (older payloads: no ts, the score is the time) as CSV rows."""
    out: list[Row] = []
    for member, score in members:
        try:
            fields = json.loads(member.split("|", 1)[1])
            item, behaviour, session, category, price = fields[:5]
            ts = int(fields[6]) if len(fields) > 6 else int(score)
        except (IndexError, ValueError, TypeError):
            raise ValueError(f"Redis key {key}: member {member[:60]!r} is not a shopformer event") from None
        if ts >= since:
            out.append((user, item, ts, behaviour, session, category, price))
    return out
