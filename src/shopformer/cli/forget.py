"""``shopformer forget USER... --store URL``: delete users from a state store, for real.

The same deletion as ``DELETE /v1/users/{id}``: the users are recorded in the deletion ledger
(hashed ids) first, then their events and idempotency records are removed and scrubbed from the
store's files (SQLite: secure_delete + WAL truncation; Redis: an AOF rewrite, awaited here).
``shopformer prepare --forget-ledger LEDGER`` then keeps them out of the next training data.
For a service run with pseudonymous ids, pass the same key (``--pseudonymise-users`` with
``--pseudonym-key-file`` or ``SHOPFORMER_PSEUDONYM_KEY``): the raw ids given here are mapped to
the pseudonyms the store and ledger hold.
Safe while the service runs on the same store (a running service learns of CLI deletions from
the ledger when it restarts; until then it would accept a replay of their old events).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Annotated

import typer

from shopformer.cli.common import console, fail


async def _forget(users: list[str], store_url: str, ledger_path: Path, wait_s: float) -> tuple[int, str]:
    from shopformer.data.ledger import open_ledger
    from shopformer.serving.store import RedisStore, open_store

    ledger = await asyncio.to_thread(open_ledger, ledger_path)
    store = open_store(store_url, aof_rewrite_interval_s=0.0)
    try:
        await store.ping()
        await asyncio.to_thread(ledger.record, users, int(time.time()))
        n = await store.forget_many(users)
        scrubbed = "WAL truncated" if store.kind == "sqlite" else "AOF rewrite requested"
        if isinstance(store, RedisStore) and await store.wait_for_rewrite(wait_s):
            scrubbed = "AOF rewritten"
    finally:
        await store.close()
    return n, scrubbed


def forget_command(
    users: Annotated[list[str], typer.Argument(help="User ids to forget (raw ids, as sent to the service).")],
    store: Annotated[str, typer.Option(
        "--store", help="State store URL: sqlite:///state.db or redis://host:port/0.")] = "sqlite:///shopformer_state.db",
    ledger: Annotated[Path, typer.Option(
        "--ledger", help="Deletion ledger to append to (the service's SHOPFORMER_FORGET_LEDGER).")] = Path(
        "shopformer_forget_ledger.jsonl"),
    wait: Annotated[float, typer.Option(help="Seconds to wait for a Redis AOF rewrite to finish.")] = 60.0,
    pseudonymise_users: Annotated[bool, typer.Option(
        "--pseudonymise-users", help="The store holds pseudonyms (`serve --pseudonymise-users`): forget "
        "HMAC(key, USER); key from --pseudonym-key-file or env SHOPFORMER_PSEUDONYM_KEY.")] = False,
    pseudonym_key_file: Annotated[Path | None, typer.Option(
        help="File holding the pseudonym key (implies --pseudonymise-users).")] = None,
) -> None:
    """Forget users: delete their events and idempotency records and scrub the store's files."""
    from shopformer.data.options import DataValidationError
    from shopformer.data.pseudonym import PseudonymKeyError, load_pseudonym_key, pseudonymise
    from shopformer.serving.store import StoreUnavailable

    bad = [u for u in users if not 1 <= len(u) <= 256]
    if bad:
        fail(f"user id {bad[0][:40]!r}: must be 1..256 characters")
    kept = list(dict.fromkeys(users))
    if pseudonymise_users or pseudonym_key_file is not None:
        try:
            key = load_pseudonym_key(pseudonym_key_file)
        except PseudonymKeyError as err:
            fail(str(err))
        kept = list(dict.fromkeys(pseudonymise(u, key) for u in kept))
    try:
        n, scrubbed = asyncio.run(_forget(kept, store, ledger, wait))
    except (DataValidationError, ValueError, StoreUnavailable, OSError) as err:
        fail(str(err))
    console.print(f"forgot {len(set(users))} user(s): {n} event(s) deleted, {scrubbed}; ledger {ledger}",
                  highlight=False)
