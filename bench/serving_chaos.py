"""Chaos run of the service: concurrent writers with bad batches mixed in, ``kill -9`` of the service
(each store) and of redis-server, then an exact audit of what was acknowledged.

Per store: ``--writers`` threads post batches of 5 events (unique ``event_id``s, 40 users) while
the service is killed ``--kills`` times (SIGKILL at a random moment, restarted on the same store);
for Redis, redis-server itself is killed ``--redis-kills`` times as well. ``--bad-share`` of the
batches carry one bad event (timestamps 2**63, 10**400, milliseconds, -1, 2.5, "soon", a 300-char
id, both behaviour and event_type, ...). Counted:

- ``acked_lost`` / ``acked_duplicated``: acknowledged events missing from, or stored twice in, the
  store after the run (read from the store directly; histories hold every event: max_len 4000);
- ``innocent_failed``: good batches answered with anything but 200 while the service was up
  (503 during a redis-server outage is the documented answer and counted apart);
- ``bad_5xx``: bad batches answered with a 5xx (must be 0: they are 422s);
- ``bad_stored``: events of bad batches found in the store (must be 0: a batch is atomic).

    .venv/bin/python bench/serving_chaos.py --stores sqlite --kills 8 --seconds 2
    .venv/bin/python bench/serving_chaos.py --stores redis --kills 4 --redis-kills 3 --seconds 2

The issue's target (>= 50 kills per store, >= 5 of redis-server), one process per store side by side:

    nice -n 5 .venv/bin/python bench/serving_chaos.py --stores sqlite --kills 50 --seconds 1.2 \
        --workdir /tmp/shopformer-chaos-sqlite
    nice -n 5 .venv/bin/python bench/serving_chaos.py --stores redis --kills 50 --redis-kills 6 --seconds 1.2 \
        --workdir /tmp/shopformer-chaos-redis
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
from common import provenance

from shopformer.config import ModelConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fork_server import ForkedServer, ForkServer  # noqa: E402
from serving_support import RedisServer, ServerProcess, synthetic_run  # noqa: E402

KEY = "chaos-key"
BAD_EVENTS: list[dict] = [
    {"timestamp": 2**63}, {"timestamp": 10**400}, {"timestamp": 2**63 - 1}, {"timestamp": 1_700_000_000_000},
    {"timestamp": -1}, {"timestamp": 2.5}, {"timestamp": "soon"}, {"timestamp": "2023-02-29"},
    {"timestamp": True}, {"user_id": "u" * 300}, {"item_id": ""}, {"behaviour": "pv", "event_type": "buy"},
    {"price": -1.0}, {"price": "1e400"}, {"colour": "red"}, {"event_id": 5},
]


class Load:
    def __init__(self, url: str, writers: int, bad_share: float, seed: int) -> None:
        self.url, self.writers, self.bad_share = url, writers, bad_share
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.acked: list[str] = []
        self.bad_ids: list[str] = []
        self.counts: Counter[str] = Counter()
        self.seq = 0
        self.redis_down = threading.Event()
        self.halt = threading.Event()
        self.outages = 0  # redis-server outages begun or ended so far (a request spanning one changes it)

    def batch(self) -> tuple[list[dict], bool]:
        with self.lock:
            self.seq += 1
            n, bad = self.seq, self.rng.random() < self.bad_share
            which = self.rng.randrange(len(BAD_EVENTS))
        events = [{"user_id": f"u{(n + j) % 40}", "item_id": f"i{(n * 7 + j) % 30}", "timestamp": n,
                   "event_id": f"b{n}-{j}"} for j in range(5)]
        if bad:
            events[3] = {**events[3], **BAD_EVENTS[which]}
        return events, bad

    def run(self, seconds: float) -> None:
        stop = time.monotonic() + seconds

        def writer() -> None:
            with httpx.Client(base_url=self.url, timeout=60, headers={"Authorization": f"Bearer {KEY}"}) as c:
                while time.monotonic() < stop and not self.halt.is_set():
                    events, bad = self.batch()
                    outage_before = (self.redis_down.is_set(), self.outages)
                    try:
                        r = c.post("/v1/events", json={"events": events})
                    except httpx.HTTPError:
                        with self.lock:
                            self.counts["connection_error"] += 1
                        return  # the service was killed: this writer stops
                    with self.lock:
                        ids = [e["event_id"] for e in events if isinstance(e.get("event_id"), str)]
                        if bad:
                            self.bad_ids.extend(ids)
                            self.counts["bad_5xx" if r.status_code >= 500 else f"bad_{r.status_code}"] += 1
                        elif r.status_code == 200:
                            self.acked.extend(ids)
                            self.counts["good_200"] += 1
                        elif r.status_code == 503 and (self.redis_down.is_set()
                                                       or outage_before != (False, self.outages)):
                            # sent, answered or in flight during a redis-server outage: the documented 503
                            self.counts["good_503_during_redis_outage"] += 1
                        else:
                            self.counts["innocent_failed"] += 1
                            self.counts[f"innocent_failed_{r.status_code}"] += 1

        threads = [threading.Thread(target=writer) for _ in range(self.writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()


def stored_ids(store_url: str) -> Counter[str]:
    from shopformer.serving.store import open_store

    async def read() -> Counter[str]:
        store = open_store(store_url)
        try:
            ids: Counter[str] = Counter()
            for u in range(40):
                ids.update(e.event_id for e in await store.history(f"u{u}", 100_000) if e.event_id)
            return ids
        finally:
            await store.close()

    return asyncio.run(read())


def chaos(kind: str, work: Path, args: argparse.Namespace, run: Path) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    redis = RedisServer(work / "redis").start() if kind == "redis" else None
    url = redis.url if redis else f"sqlite:///{work / 'state.db'}"
    load = Load("", args.writers, args.bad_share, args.seed)
    rng = random.Random(args.seed)
    t0 = time.monotonic()
    forks = None if args.cold_start else ForkServer()
    ledger = work / "forget_ledger.jsonl"

    def service() -> ServerProcess | ForkedServer:
        log = work / f"server-{kind}.log"
        if forks is None:
            return ServerProcess(run, url, api_key=KEY, log_path=log, ledger_path=ledger)
        return ForkedServer(forks, run, url, KEY, log, ledger)

    redis_at = {round(i * args.kills / max(args.redis_kills, 1)) for i in range(args.redis_kills)}  # spread out
    def acks_after(base: int) -> None:
        """Wait until ``--min-acks`` more good batches were acknowledged: every kill hits a service
        under load, however slow the shared machine is (at most 60 s)."""
        deadline = time.monotonic() + 60
        while load.counts["good_200"] < base + args.min_acks and time.monotonic() < deadline:
            time.sleep(0.01)

    for k in range(args.kills):
        server = service().start()
        load.url = server.url
        delay, base = rng.uniform(0.0, args.seconds), load.counts["good_200"]

        def kill(s: ServerProcess | ForkedServer = server, delay: float = delay, base: int = base) -> None:
            acks_after(base)
            time.sleep(delay)
            s.stop(hard=True)

        killer = threading.Thread(target=kill)
        killer.start()
        load.run(300.0)  # writers stop at the kill (connection error)
        killer.join()
        server.stop(hard=True)
        if redis is not None and k in redis_at:  # redis-server killed under load, service up
            server = service().start()
            load.url = server.url
            t = threading.Thread(target=load.run, args=(300.0,))
            t.start()
            acks_after(load.counts["good_200"])
            time.sleep(rng.uniform(0.0, args.seconds / 2))
            load.outages += 1
            load.redis_down.set()
            redis.stop(hard=True)
            time.sleep(0.3)
            redis.start()
            load.redis_down.clear()
            load.outages += 1
            acks_after(load.counts["good_200"])  # the service recovers by itself
            load.halt.set()
            t.join()
            load.halt.clear()
            server.stop()
    if forks is not None:
        forks.close()
    ids = stored_ids(url)
    if redis is not None:
        redis.stop()
    acked = Counter(load.acked)
    return {
        "store": kind, "service_kills": args.kills,
        "redis_kills": len(redis_at & set(range(args.kills))) if redis else 0,
        "acked_events": len(acked), "acked_lost": sum(1 for i in acked if ids[i] == 0),
        "acked_duplicated": sum(1 for i in acked if ids[i] > 1) + sum(1 for n in acked.values() if n > 1),
        "bad_stored": sum(1 for i in load.bad_ids if ids[i] > 0), "bad_batches": sum(
            v for k, v in load.counts.items() if k.startswith("bad_")),
        "bad_5xx": load.counts["bad_5xx"], "innocent_failed": load.counts["innocent_failed"],
        "responses": dict(sorted(load.counts.items())), "seconds": round(time.monotonic() - t0, 1),
        "min_acks_before_each_kill": args.min_acks,
        "service_start": "cold process" if args.cold_start else "forked from a pre-imported parent",
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kills", type=int, default=10)
    p.add_argument("--redis-kills", type=int, default=5)
    p.add_argument("--seconds", type=float, default=1.5, help="random extra delay of a kill (up to this)")
    p.add_argument("--min-acks", type=int, default=3,
                   help="good batches acknowledged by each service before its kill may come")
    p.add_argument("--writers", type=int, default=6)
    p.add_argument("--bad-share", type=float, default=0.15)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cold-start", action="store_true",
                   help="start each service as a new python process (default: fork from a pre-imported parent)")
    p.add_argument("--stores", default="sqlite,redis")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/shopformer-chaos"))
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "serving_chaos.jsonl",
                   help="JSON lines, one per store, appended")
    args = p.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    run = synthetic_run(args.workdir / "run", [f"i{i}" for i in range(30)],
                        ModelConfig(dim=16, layers=1, heads=1, max_len=4000))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for kind in args.stores.split(","):
        if kind == "redis" and shutil.which("redis-server") is None:
            print("redis-server not found: skipping the Redis store", file=sys.stderr)
            continue
        load_before = os.getloadavg()
        res = {**provenance(__file__), **chaos(kind, args.workdir / kind, args, run),
               "loadavg_before": [round(x, 2) for x in load_before],
               "loadavg_after": [round(x, 2) for x in os.getloadavg()]}
        print(json.dumps(res), flush=True)
        with open(args.out, "a") as f:
            f.write(json.dumps(res) + "\n")


if __name__ == "__main__":
    main()
