"""The Redis state store: one sorted set per user (score = timestamp), trimmed to ``max_len``.

Durability: Redis must run with ``appendonly yes`` and ``appendfsync always``: it then fsyncs the
AOF before it replies. The store warns at start-up when the server says otherwise.

Atomic on failure: a Lua script is not rolled back when it fails part-way, so the append script
first checks every argument and every idempotency key and only then writes; a batch is applied
whole or not at all (and it is validated in Python before it is sent).

Timestamps are integers: the payload carries the exact integer, the score (a double) is exact
because timestamps are bounded (``MAX_TIMESTAMP`` < 2**53). Payloads of earlier releases (no
integer field) are read from the score.

Keys (``prefix`` = ``shopformer:``): ``h:<user>`` history, ``e:<hash(event_id)>`` idempotency
record (value: hash of the user, expires after ``dedup_ttl_s``), ``u:<hash(user)>`` the user's
idempotency records (expires with them), ``seq`` arrival counter, ``salt`` the hashing key,
``s:<user>`` lists served to the user (online hit rate; score = time, bounded, expiring, deleted with the user).

Deletion removes the history and the idempotency records, then asks for an AOF rewrite
(BGREWRITEAOF) so the user's commands do not survive in the append-only file. Rewrites are
coalesced: at most one per ``aof_rewrite_interval_s``; a deletion inside the interval schedules
one at its end, so a forgotten user's bytes leave the AOF within that interval plus the rewrite time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

from shopformer.data.ledger import keyed_hash
from shopformer.serving.stored import (
    AppendResult,
    ServedList,
    StoredEvent,
    StoreUnavailable,
    in_range,
    validate_events,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

# KEYS: [seq, then per event: history key, idempotency key (the history key when no id), user-records key]
# ARGV: [max_len, ttl, then per event: has_id ('1'/'0'), timestamp, payload, user hash]
_APPEND_LUA = """
local maxlen = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local n = (#KEYS - 1) / 3
if maxlen == nil or ttl == nil or n ~= math.floor(n) or #ARGV ~= 2 + 4 * n then
  return redis.error_reply('ERR shopformer append: malformed call')
end
-- Phase 1, no writes: every timestamp is an integer, every id known or new.
local apply = {}
local claimed = {}
for i = 1, n do
  local base = 2 + (i - 1) * 4
  local ts = ARGV[base + 2]
  if string.len(ts) > 15 or not string.match(ts, '^%d+$') then
    return redis.error_reply('ERR shopformer append: event ' .. i .. ': bad timestamp')
  end
  apply[i] = 1
  if ARGV[base + 1] == '1' then
    local dk = KEYS[3 * i]
    if claimed[dk] or redis.call('EXISTS', dk) == 1 then apply[i] = 0 else claimed[dk] = true end
  end
end
-- Phase 2: write what applies (nothing here can fail on valid arguments).
local touched = {}
for i = 1, n do
  if apply[i] == 1 then
    local base = 2 + (i - 1) * 4
    local hk, dk, uk = KEYS[3 * i - 1], KEYS[3 * i], KEYS[3 * i + 1]
    if ARGV[base + 1] == '1' then
      redis.call('SET', dk, ARGV[base + 4], 'EX', ttl)
      redis.call('SADD', uk, string.sub(dk, -32))
      redis.call('EXPIRE', uk, ttl)
    end
    local s = redis.call('INCR', KEYS[1])
    redis.call('ZADD', hk, ARGV[base + 2], string.format('%016d', s) .. '|' .. ARGV[base + 3])
    touched[hk] = true
  end
end
for hk, _ in pairs(touched) do
  redis.call('ZREMRANGEBYRANK', hk, 0, -(maxlen + 1))
end
return apply
"""

# KEYS: [history key, user-records key, served-lists key]; ARGV: [idempotency key prefix]
_FORGET_LUA = """
local n = redis.call('ZCARD', KEYS[1])
for _, h in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  redis.call('DEL', ARGV[1] .. h)
end
redis.call('DEL', unpack(KEYS))
return n
"""

_UNAVAILABLE_REPLIES = ("LOADING", "READONLY", "MASTERDOWN", "TRYAGAIN", "BUSY", "MISCONF", "OOM", "NOREPLICAS",
                        "CLUSTERDOWN")


class RedisStore:
    kind = "redis"

    def __init__(self, url: str, dedup_ttl_s: int = 24 * 3600, prefix: str = "shopformer:",
                 aof_rewrite_interval_s: float = 60.0) -> None:
        import redis.asyncio as aioredis

        self.url, self.prefix, self.dedup_ttl_s = url, prefix, dedup_ttl_s
        self.aof_rewrite_interval_s = aof_rewrite_interval_s
        # A blocking pool: a burst of requests waits for a connection instead of failing. A pooled
        # connection idle for over 0.25 s is PINGed (and reopened) before use: after a redis-server
        # restart (an outage lasts longer) the first request on a stale connection succeeds instead
        # of answering 503. The PING costs one local round trip on a lightly loaded service only.
        pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=64, timeout=10, decode_responses=True,
                                                        health_check_interval=0.25)
        self._r = aioredis.Redis(connection_pool=pool)
        self._append_script = self._r.register_script(_APPEND_LUA)
        self._forget_script = self._r.register_script(_FORGET_LUA)
        self._checked = False
        self._salt: bytes | None = None
        self._last_rewrite = float("-inf")
        self._rewrite_task: asyncio.Task | None = None

    def _hkey(self, user_id: str) -> str:
        return f"{self.prefix}h:{user_id}"

    def _skey(self, user_id: str) -> str:
        return f"{self.prefix}s:{user_id}"

    async def _call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run one Redis interaction; outages (down, loading, read-only, OOM, ...) become StoreUnavailable."""
        import redis.exceptions as rex

        for attempt in (1, 2):
            try:
                return await fn()
            except (rex.ConnectionError, rex.TimeoutError, OSError) as err:  # BusyLoadingError is a ConnectionError
                raise StoreUnavailable(f"redis store: {type(err).__name__}: {err}") from None
            except rex.ResponseError as err:
                if str(err).split(" ", 1)[0].upper() in _UNAVAILABLE_REPLIES:
                    raise StoreUnavailable(f"redis store: {err}") from None
                raise
            except RuntimeError as err:
                # uvloop refuses a write on a pooled connection whose socket died with a restarted
                # redis-server ("the handler is closed"): nothing was sent, and the connection is
                # dropped, so one retry on a fresh connection is safe; a second failure is an outage.
                if "handler is closed" not in str(err):
                    raise
                if attempt == 2:
                    raise StoreUnavailable(f"redis store: connection closed: {err}") from None
        raise AssertionError("unreachable")

    async def _get_salt(self) -> bytes:
        if self._salt is None:
            key = f"{self.prefix}salt"
            await self._r.set(key, secrets.token_hex(16), nx=True)
            self._salt = bytes.fromhex(cast(str, await self._r.get(key)))
        return self._salt

    async def _check_durability(self) -> None:
        self._checked = True
        try:
            aof = (await self._r.config_get("appendonly")).get("appendonly")
            fsync = (await self._r.config_get("appendfsync")).get("appendfsync")
        except Exception:  # noqa: BLE001 - CONFIG may be disabled on managed Redis
            log.warning("cannot read Redis durability settings; acknowledged events are only as durable as its AOF")
            return
        if aof != "yes" or fsync != "always":
            log.warning("Redis runs with appendonly=%s appendfsync=%s: acknowledged events can be lost on a crash "
                        "(use appendonly yes + appendfsync always)", aof, fsync)

    async def append(self, events: list[StoredEvent], max_len: int) -> AppendResult:
        if not events:
            return AppendResult()
        validate_events(events)
        return await self._call(lambda: self._append(events, max_len))

    async def _append(self, events: list[StoredEvent], max_len: int) -> AppendResult:
        if not self._checked:
            await self._check_durability()
        salt = await self._get_salt()
        keys: list[str] = [f"{self.prefix}seq"]
        args: list[int | str] = [max_len, self.dedup_ttl_s]
        for e in events:
            hk, uh = self._hkey(e.user_id), keyed_hash(salt, e.user_id)
            dk = f"{self.prefix}e:{keyed_hash(salt, e.event_id)}" if e.event_id is not None else hk
            keys += [hk, dk, f"{self.prefix}u:{uh}"]
            payload = json.dumps([e.item_id, e.behaviour, e.session_id, e.category_id, e.price, e.event_id,
                                  e.timestamp], separators=(",", ":"))
            args += ["1" if e.event_id is not None else "0", str(e.timestamp), payload, uh]
        flags = await self._append_script(keys=keys, args=args)
        res = AppendResult()
        for e, ok in zip(events, flags, strict=True):
            if ok:
                res.applied += 1
            else:
                res.duplicates.append(e.event_id or "")
        return res

    async def history(self, user_id: str, limit: int) -> list[StoredEvent]:
        rows = cast(list[tuple[str, float]],  # decode_responses=True: members are str
                    await self._call(lambda: self._r.zrange(self._hkey(user_id), -limit, -1, withscores=True)))
        out = []
        for member, score in rows:
            fields: list[Any] = json.loads(member.split("|", 1)[1])
            item, behaviour, session, category, price, eid = fields[:6]
            ts = fields[6] if len(fields) > 6 else int(score)  # older payloads: the score only
            if in_range(ts):
                out.append(StoredEvent(user_id, item, ts, behaviour, session, category, price, eid))
        return out

    async def log_served(self, user_id: str, ts: int, items: list[str], keep: int, retention_s: int) -> None:
        """Record a list served to ``user_id`` at ``ts`` (MULTI/EXEC): the newest ``keep`` per user,
        none older than ``retention_s``, the key expiring ``retention_s`` after the last list."""
        key = self._skey(user_id)
        member = f"{secrets.token_hex(6)}|{json.dumps(items, separators=(',', ':'))}"

        async def run() -> None:
            pipe = self._r.pipeline(transaction=True)
            pipe.zadd(key, {member: ts})
            pipe.zremrangebyrank(key, 0, -(keep + 1))
            pipe.zremrangebyscore(key, "-inf", f"({ts - retention_s}")
            pipe.expire(key, retention_s)
            await pipe.execute()

        await self._call(run)

    async def take_served(self, user_id: str, until: int) -> list[ServedList]:
        """Remove and return the user's lists served at or before ``until``, oldest first."""
        key = self._skey(user_id)

        async def run() -> list[tuple[str, float]]:
            pipe = self._r.pipeline(transaction=True)
            pipe.zrangebyscore(key, "-inf", until, withscores=True)
            pipe.zremrangebyscore(key, "-inf", until)
            return cast(list[tuple[str, float]], (await pipe.execute())[0])

        rows = await self._call(run)
        return [ServedList(int(score), tuple(json.loads(member.split("|", 1)[1]))) for member, score in rows]

    async def forget(self, user_id: str) -> int:
        return await self.forget_many([user_id])

    async def forget_many(self, user_ids: list[str]) -> int:
        """Remove the users' histories and idempotency records, then schedule an AOF rewrite."""
        async def run() -> int:
            salt = await self._get_salt()
            n = 0
            for uid in user_ids:
                n += int(await self._forget_script(
                    keys=[self._hkey(uid), f"{self.prefix}u:{keyed_hash(salt, uid)}", self._skey(uid)],
                    args=[f"{self.prefix}e:"]))
            return n

        n = await self._call(run)
        self._schedule_rewrite()
        return n

    def _schedule_rewrite(self) -> None:
        if self._rewrite_task is not None and not self._rewrite_task.done():
            return  # one is already due: it covers this deletion too
        delay = max(0.0, self._last_rewrite + self.aof_rewrite_interval_s - time.monotonic())
        self._rewrite_task = asyncio.get_running_loop().create_task(self._rewrite_after(delay))

    async def _rewrite_after(self, delay: float) -> None:
        await asyncio.sleep(delay)
        await self.rewrite_aof()

    async def rewrite_aof(self) -> bool:
        """Ask Redis to rewrite its AOF now (the forgotten users' commands leave it); False if it refused."""
        import redis.exceptions as rex

        self._last_rewrite = time.monotonic()
        try:
            await self._r.bgrewriteaof()
        except rex.RedisError as err:  # already running is fine: Redis schedules another after it
            if "already in progress" not in str(err):
                log.warning("redis store: BGREWRITEAOF after a deletion failed: %s", err)
                return False
        return True

    async def wait_for_rewrite(self, timeout_s: float) -> bool:
        """Run a due rewrite now and wait until Redis has none running or scheduled; False on timeout."""
        task = self._rewrite_task
        if task is not None and not task.done():
            task.cancel()
            await self.rewrite_aof()
        deadline = time.monotonic() + timeout_s
        while True:
            info = await self._call(lambda: self._r.info("persistence"))
            if not int(info.get("aof_rewrite_in_progress", 0)) and not int(info.get("aof_rewrite_scheduled", 0)):
                return True
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)

    async def ping(self) -> bool:
        return bool(await self._call(self._r.ping))

    async def close(self) -> None:
        task = self._rewrite_task
        if task is not None and not task.done():  # a deletion is waiting for its rewrite: do it now
            task.cancel()
            await self.rewrite_aof()
        await self._r.aclose()
        await self._r.connection_pool.disconnect()
