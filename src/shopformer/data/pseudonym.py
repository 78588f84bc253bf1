"""Keyed pseudonyms for user ids: ``HMAC-SHA256(key, user_id)``, hex, truncated to 128 bits.

One function, shared by ``prepare`` (``--pseudonymise-users``) and the service, so that a user id
seen at ingest and one arriving over HTTP map to the same pseudonym under the same key:

* :func:`pseudonymise` — one id -> 32 lowercase hex characters. The id is stripped of surrounding
  whitespace first (``prepare`` strips every field), then hashed as UTF-8 bytes.
* :func:`pseudonymise_expr` — the same for a Polars string column (each distinct id hashed once).
* :func:`pseudonymise_field` — other ids that may embed a user id (the service's ``event_id`` and
  ``session_id``): HMAC of the exact string (no stripping: ``" a"`` and ``"a"`` stay distinct) in
  its own domain, so it never equals a user's pseudonym.
* :func:`load_pseudonym_key` — the key from a file (``--pseudonym-key-file``) or the environment
  variable ``SHOPFORMER_PSEUDONYM_KEY``; at least 16 bytes. The key is never written anywhere:
  only :func:`key_fingerprint` (a keyed hash of a constant, which reveals nothing about the key)
  may be recorded to tell which key a data set was made with.

Without the key a pseudonym cannot be linked back to a raw id (HMAC is a pseudo-random function);
with it, anyone can recompute the pseudonym of a known id, so keep the key out of the data, the
artifacts and the logs. 128 bits make accidental collisions negligible (~1e-20 for 1e9 users).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping
from pathlib import Path

import polars as pl

PSEUDONYM_KEY_ENV = "SHOPFORMER_PSEUDONYM_KEY"
MIN_KEY_BYTES = 16
PSEUDONYM_HEX_CHARS = 32  # 128 bits of HMAC-SHA256
_FINGERPRINT_MESSAGE = b"shopformer pseudonym key fingerprint v1"


class PseudonymKeyError(ValueError):
    """A missing, unreadable or too short pseudonym key."""


def pseudonymise(user_id: str, key: bytes) -> str:
    """The pseudonym of one raw user id: 32 hex characters of HMAC-SHA256(key, stripped id)."""
    digest = hmac.new(key, user_id.strip().encode("utf-8"), hashlib.sha256).hexdigest()
    return digest[:PSEUDONYM_HEX_CHARS]


def pseudonymise_expr(column: pl.Expr, key: bytes) -> pl.Expr:
    """:func:`pseudonymise` over a string column (nulls stay null); each distinct id is hashed once."""

    def hash_batch(s: pl.Series) -> pl.Series:
        distinct = s.drop_nulls().unique()
        table = {v: pseudonymise(v, key) for v in distinct.to_list()}
        return s.replace_strict(table, default=None, return_dtype=pl.String)

    return column.map_batches(hash_batch, return_dtype=pl.String)


def pseudonymise_field(value: str, key: bytes, domain: str) -> str:
    """The pseudonym of another id (``domain`` e.g. "event_id"): HMAC-SHA256(key, domain NUL value), 32 hex."""
    msg = domain.encode("utf-8") + b"\0" + value.encode("utf-8")
    return hmac.new(key, msg, hashlib.sha256).hexdigest()[:PSEUDONYM_HEX_CHARS]


def key_fingerprint(key: bytes) -> str:
    """A short id of the key (HMAC of a constant): safe to store, says whether two keys are equal."""
    return hmac.new(key, _FINGERPRINT_MESSAGE, hashlib.sha256).hexdigest()[:16]


def _check_key(key: bytes, source: str) -> bytes:
    if len(key) < MIN_KEY_BYTES:
        raise PseudonymKeyError(
            f"{source}: the pseudonym key has {len(key)} bytes, at least {MIN_KEY_BYTES} are needed "
            "(e.g. `head -c 32 /dev/urandom | base64 > pseudonym.key`)"
        )
    return key


def load_pseudonym_key(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> bytes:
    """The key: the file's bytes (a trailing newline removed) if ``path`` is given, else the
    environment variable ``SHOPFORMER_PSEUDONYM_KEY`` (its UTF-8 bytes)."""
    if path is not None:
        p = Path(path)
        try:
            data = p.read_bytes()
        except OSError as err:
            raise PseudonymKeyError(f"{p}: cannot read the pseudonym key file: {err.strerror or err}") from None
        return _check_key(data.rstrip(b"\r\n"), str(p))
    env = os.environ if environ is None else environ
    value = env.get(PSEUDONYM_KEY_ENV)
    if not value:
        raise PseudonymKeyError(
            f"no pseudonym key: pass --pseudonym-key-file or set the environment variable {PSEUDONYM_KEY_ENV}"
        )
    return _check_key(value.encode("utf-8"), PSEUDONYM_KEY_ENV)
