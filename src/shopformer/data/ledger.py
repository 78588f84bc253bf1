"""The deletion ledger: which users were forgotten, and when, without holding their ids.

An append-only JSON-lines file. The first line is a header with a random salt; every other line
is one deletion: ``{"user": "<keyed hash of the user id>", "at": <unix seconds>}``. The raw id is
never written: ``keyed_hash(salt, id)`` is BLAKE2b keyed with the salt, so the file alone does not
list who was forgotten, yet anyone holding a raw id (``prepare``, the service) can test it.

Readers use the ledger to keep forgotten data out:

- the service refuses replays of a forgotten user's events dated at or before the deletion;
- ``prepare`` / retraining drop those events (``drop_forgotten``), so the next model version is
  trained without them. A user who comes back later (events after ``at``) is kept.
- retraining grows the previous version's vocabularies (dense ids never move), so a forgotten
  user's raw id would survive in the next version's ``vocab.json``: ``redact_forgotten`` replaces
  it by a tombstone ``<forgotten:N>`` (N = the dense id, which stays taken).

Appends are one ``write`` of whole lines followed by ``fsync``; a torn last line (crash
mid-append, so never acknowledged) is ignored on read and cut off by the next append.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from shopformer.atomic import atomic_write_text
from shopformer.data.options import DataValidationError
from shopformer.data.vocab import Vocab

FORMAT = "shopformer-forget-ledger"
VERSION = 1


def keyed_hash(salt: bytes, value: str) -> str:
    """Keyed BLAKE2b (32 hex characters) of a raw id; the same id and salt give the same hash. The
    ledger and the service's idempotency records hold these, never raw ids."""
    return hashlib.blake2b(value.encode("utf-8"), key=salt, digest_size=16).hexdigest()


@dataclass
class Ledger:
    """A loaded ledger: its salt and, per hashed user, the latest deletion time (unix seconds)."""

    path: Path
    salt: bytes
    forgotten: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    read_to: int = field(default=0, repr=False, compare=False)  # bytes of complete lines read so far

    def forgotten_at(self, user_id: str) -> int | None:
        """When ``user_id`` was last forgotten, or None if never (deletions recorded since by other
        processes sharing the file, e.g. the other workers of a service, included)."""
        self.refresh()
        return self.forgotten.get(keyed_hash(self.salt, user_id)) if self.forgotten else None

    def refresh(self) -> None:
        """Read the complete lines appended since the last read: one ``stat`` when nothing changed."""
        try:
            size = self.path.stat().st_size
        except OSError:
            return
        if size <= self.read_to:
            return
        with self._lock, open(self.path, "rb") as f:
            f.seek(self.read_to)
            chunk = f.read(size - self.read_to)
        end = chunk.rfind(b"\n") + 1  # a line still being appended is read next time
        for raw in chunk[:end].split(b"\n"):
            entry = _entry(raw)
            if entry is not None:
                self.forgotten[entry[0]] = max(self.forgotten.get(entry[0], entry[1]), entry[1])
        self.read_to += end

    def record(self, user_ids: Iterable[str], at: int) -> None:
        """Durably append one deletion per user (fsync before returning)."""
        lines = []
        for uid in user_ids:
            h = keyed_hash(self.salt, uid)
            lines.append(json.dumps({"user": h, "at": int(at)}, separators=(",", ":")) + "\n")
            self.forgotten[h] = max(self.forgotten.get(h, at), int(at))
        if not lines:
            return
        with self._lock, open(self.path, "r+b") as f:
            data_end = f.seek(0, os.SEEK_END)
            if data_end > 0:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":  # a torn line from a crash (never acknowledged): cut it off
                    f.seek(0)
                    keep = f.read().rfind(b"\n") + 1
                    f.truncate(keep)
                    f.seek(keep)
            f.write("".join(lines).encode())
            f.flush()
            os.fsync(f.fileno())


def open_ledger(path: str | Path, create: bool = True) -> Ledger:
    """Load the ledger at ``path``; create it (with a fresh salt) when missing and ``create``."""
    p = Path(path)
    if not p.exists():
        if not create:
            raise DataValidationError(f"{p}: no such deletion ledger")
        header = {"format": FORMAT, "version": VERSION, "salt": secrets.token_hex(16)}
        atomic_write_text(p, json.dumps(header, separators=(",", ":")) + "\n")
    if p.is_dir():
        raise DataValidationError(f"{p}: is a directory, expected a deletion ledger file")
    lines = p.read_bytes().split(b"\n")
    try:
        header = json.loads(lines[0])
        salt = bytes.fromhex(header["salt"]) if header.get("format") == FORMAT else b""
    except (ValueError, KeyError, TypeError, AttributeError):
        salt = b""
    if not salt or header.get("version") != VERSION:
        raise DataValidationError(f"{p}:1: not a {FORMAT} (version {VERSION}) header")
    ledger = Ledger(p, salt)
    last = len(lines) - 1
    for no, raw in enumerate(lines[1:], start=2):
        if not raw.strip():
            continue
        entry = _entry(raw)
        if entry is None:
            if no - 1 == last:  # a torn final line (no newline after it): the append never finished
                continue
            raise DataValidationError(f"{p}:{no}: malformed ledger entry (expected {{\"user\": hash, \"at\": "
                                      "unix seconds}})")
        h, at = entry
        ledger.forgotten[h] = max(ledger.forgotten.get(h, at), at)
    ledger.read_to = sum(len(raw) + 1 for raw in lines[:last])  # complete lines only
    return ledger


def _entry(raw: bytes) -> tuple[str, int] | None:
    """(hashed user, unix seconds) of one ledger line, None when blank or malformed."""
    try:
        entry = json.loads(raw)
        h, at = entry["user"], entry["at"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(h, str) or not isinstance(at, int) or isinstance(at, bool):
        return None
    return h, at


def drop_forgotten(frame: pl.DataFrame, ledger: Ledger, user_col: str = "user_id",
                   ts_col: str | None = "timestamp") -> tuple[pl.DataFrame, int]:
    """Rows of ``frame`` minus the forgotten users' events dated at or before their deletion.

    ``user_col`` holds raw user ids (any type, compared as strings; apply the ledger before any
    pseudonymisation of ids), ``ts_col`` unix seconds, or None for data without time: then every
    event of a forgotten user is dropped. Returns the kept rows and how many were dropped. Hashes
    each distinct user once.
    """
    if not ledger.forgotten or frame.height == 0:
        return frame, 0
    users = frame.get_column(user_col).cast(pl.Utf8).unique().drop_nulls().to_list()
    hit = {u: t for u in users if (t := ledger.forgotten.get(keyed_hash(ledger.salt, u))) is not None}
    if not hit:
        return frame, 0
    at = pl.col(user_col).cast(pl.Utf8).replace_strict(hit, default=None, return_dtype=pl.Int64)
    out = frame.filter(at.is_null() if ts_col is None else at.is_null() | (pl.col(ts_col).cast(pl.Int64) > at))
    return out, frame.height - out.height


TOMBSTONE = "<forgotten:{}>"


def redact_forgotten(users: Vocab, ledger: Ledger, kept: Iterable[str]) -> tuple[Vocab, int]:
    """The users vocabulary with each forgotten user who has no kept event (``kept``: the raw user
    ids still in the data) replaced by ``<forgotten:N>``, N its dense id; returns it and how many.
    Positions never move, so every other dense id and the vocabulary's length stay as they were."""
    if not ledger.forgotten:
        return users, 0
    present = set(kept)
    tokens = list(users.tokens)
    n = 0
    for i, tok in enumerate(tokens[1:], start=1):
        if tok not in present and not tok.startswith("<forgotten:") and ledger.forgotten_at(tok) is not None:
            tokens[i] = TOMBSTONE.format(i)
            n += 1
    return (Vocab(tuple(tokens)) if n else users), n
