"""Read the live service's SQLite event store without stopping it (read-only, WAL readers never block
the writer) and write its events as a canonical CSV that ``ingest`` validates like any other file.

The store keeps each user's most recent events (the model's window), as raw ids, in the table
``events (user_id, item_id, ts, event_type, session_id, category_id, price, event_id)``; users
deleted through the service are gone from it, so their events never come back through here.
"""

from __future__ import annotations

import csv
import sqlite3
from pathlib import Path

from shopformer.atomic import atomic_write

HEADER = ("user_id", "item_id", "timestamp", "behaviour", "session_id", "category_id", "price")
_QUERY = ("SELECT user_id, item_id, ts, event_type, session_id, category_id, price FROM events "
          "WHERE ts >= ? ORDER BY user_id, ts, id")


def export_store_events(db: str | Path, out_csv: str | Path, since: int | None = None) -> int:
    """Events of the SQLite store ``db`` (at or after Unix time ``since``) -> ``out_csv``; returns
    how many. The database is opened read-only (``mode=ro``): nothing is written to it."""
    path = Path(db)
    if not path.exists():
        raise FileNotFoundError(f"event store not found: {path}")
    try:
        con = sqlite3.connect(f"file:{path.resolve()}?mode=ro", uri=True, timeout=30.0)
    except sqlite3.Error as err:
        raise ValueError(f"{path}: cannot open the event store read-only: {err}") from None
    try:
        rows = con.execute(_QUERY, (since or 0,)).fetchall()
    except sqlite3.Error as err:
        raise ValueError(f"{path}: not a shopformer event store ({err})") from None
    finally:
        con.close()

    def write(p: Path) -> None:
        with p.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(HEADER)
            w.writerows(["" if v is None else v for v in row] for row in rows)

    atomic_write(out_csv, write)
    return len(rows)
