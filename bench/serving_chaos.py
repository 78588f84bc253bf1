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
"""

from __future__ import annotations

import argparse
import asyncio
import json
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
            with httpx.Client(base_url=self.url, timeout=10, headers={"Authorization": f"Bearer {KEY}"}) as c:
                while time.monotonic() < stop:
                    events, bad = self.batch()
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
                        elif r.status_code == 503 and self.redis_down.is_set():
                            self.counts["good_503_during_redis_outage"] += 1
                        else:
                            self.counts["innocent_failed"] += 1

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
    for k in range(args.kills):
        server = ServerProcess(run, url, api_key=KEY, log_path=work / f"server-{kind}.log").start()
        load.url = server.url
        killer = threading.Timer(rng.uniform(0.3, args.seconds), lambda s=server: s.stop(hard=True))
        killer.start()
        load.run(args.seconds + 1.0)  # writers stop at the kill (connection error) or the deadline
        killer.join()
        server.stop(hard=True)
        if redis is not None and k < args.redis_kills:  # redis-server killed under load, service up
            server = ServerProcess(run, url, api_key=KEY, log_path=work / f"server-{kind}.log").start()
            load.url = server.url
            t = threading.Thread(target=load.run, args=(args.seconds + 1.0,))
            t.start()
            time.sleep(rng.uniform(0.2, args.seconds / 2))
            load.redis_down.set()
            redis.stop(hard=True)
            time.sleep(0.3)
            redis.start()
            load.redis_down.clear()
            t.join()
            server.stop()
    ids = stored_ids(url)
    if redis is not None:
        redis.stop()
    acked = Counter(load.acked)
    return {
        "store": kind, "service_kills": args.kills, "redis_kills": min(args.redis_kills, args.kills) if redis else 0,
        "acked_events": len(acked), "acked_lost": sum(1 for i in acked if ids[i] == 0),
        "acked_duplicated": sum(1 for i in acked if ids[i] > 1) + sum(1 for n in acked.values() if n > 1),
        "bad_stored": sum(1 for i in load.bad_ids if ids[i] > 0), "bad_batches": sum(
            v for k, v in load.counts.items() if k.startswith("bad_")),
        "bad_5xx": load.counts["bad_5xx"], "innocent_failed": load.counts["innocent_failed"],
        "responses": dict(sorted(load.counts.items())), "seconds": round(time.monotonic() - t0, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kills", type=int, default=10)
    p.add_argument("--redis-kills", type=int, default=5)
    p.add_argument("--seconds", type=float, default=1.5)
    p.add_argument("--writers", type=int, default=6)
    p.add_argument("--bad-share", type=float, default=0.15)
    p.add_argument("--seed", type=int, default=0)
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
        res = {**provenance(__file__), **chaos(kind, args.workdir / kind, args, run)}
        print(json.dumps(res), flush=True)
        with open(args.out, "a") as f:
            f.write(json.dumps(res) + "\n")


if __name__ == "__main__":
    main()
