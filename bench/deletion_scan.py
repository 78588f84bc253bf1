"""After deletion: 0 bytes of the user's ids or events left in the store files, WAL/AOF, the next
version's artifacts and the service's logs (issue 12's target), end to end.

A registry holds v0001, trained on a log that includes the user. A real service process (SQLite,
then Redis: AOF + fsync always) ingests the user's events with ids built from the user id, serves
them recommendations, and deletes them (DELETE /v1/users/{id}); it logs at INFO with the access
log on. Then the store's events are exported and ``retrain`` builds v0002 with the deletion ledger.
Every file is scanned for the raw id's bytes: the SQLite database + WAL + shm, the Redis
directory (AOF, RDB), the ledger, the service log, and v0002 (model + data set, vocabularies
included); v0002's events are checked for the user's (item, time) pairs. JSON to
bench/results/deletion_scan.json.

    nice -n 5 .venv/bin/python bench/deletion_scan.py
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx
import polars as pl
import torch
from common import provenance

from shopformer.config import Config, apply_overrides
from shopformer.data.ingest import IngestOptions
from shopformer.data.prepare import prepare
from shopformer.data.store_events import export_store_events
from shopformer.pipelines.continuous import RetrainOptions, add_run, retrain
from shopformer.pipelines.gate import GateConfig
from shopformer.pipelines.next_item import run_experiment

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from serving_support import RedisServer, ServerProcess  # noqa: E402

SECRET = "erin.raw-7d2f@example.net"
T0 = 1_700_000_000
CSV = IngestOptions(format="csv", has_header=True)


def hits(paths: list[Path], needle: bytes) -> dict[str, int]:
    out: dict[str, int] = {}
    for root in paths:
        for p in [root] if root.is_file() else sorted(root.rglob("*")):
            if p.is_file() and (n := p.read_bytes().count(needle)):
                out[str(p.name if root.is_file() else p.relative_to(root.parent))] = n
    return out


def write_log(path: Path, users: int) -> list[tuple[str, int]]:
    lines = ["user_id,item_id,behaviour,timestamp"]
    for u in range(users):
        lines += [f"u{u},i{(u + j) % 25},view,{T0 + 90_000 * u // users + 60 * j}" for j in range(6)]
    secret = [(f"i{(3 * k) % 25}", T0 + 7 + 41 * k) for k in range(8)]
    lines += [f"{SECRET},{i},view,{t}" for i, t in secret]
    path.write_text("\n".join(lines) + "\n")
    return secret


def serve_and_forget(kind: str, work: Path, run: Path, secret: list[tuple[str, int]]) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    redis = RedisServer(work / "redis").start() if kind == "redis" else None
    url = redis.url if redis else f"sqlite:///{work / 'state.db'}"
    log, ledger = work / "service.log", work / "ledger.jsonl"
    server = ServerProcess(run, url, api_key="k", log_path=log, ledger_path=ledger,
                           extra_args=("--log-level", "info"),
                           env={"SHOPFORMER_ACCESS_LOG": "true", "SHOPFORMER_AOF_REWRITE_INTERVAL_S": "0"}).start()
    h = {"Authorization": "Bearer k"}
    try:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            events = [{"user_id": SECRET, "item_id": i, "timestamp": t + 90_000, "behaviour": "view",
                       "event_id": f"{SECRET}#{t}", "session_id": f"{SECRET}/s"} for i, t in secret]
            events += [{"user_id": f"u{u}", "item_id": f"i{u % 25}", "behaviour": "view",  # both retrain slices
                        "timestamp": T0 + (95_000 if u % 2 else 89_000) + u} for u in range(40)]
            assert c.post("/v1/events", headers=h, json={"events": events}).json()["accepted"] == len(events)
            assert c.get(f"/v1/users/{SECRET}/recommendations").status_code == 200
            before = hits([work], SECRET.encode())
            r = c.delete(f"/v1/users/{SECRET}", headers=h)
            assert r.status_code == 200 and r.json()["deleted_events"] == len(secret), r.text
            time.sleep(2.0)  # Redis: the rewrite asked for at once (interval 0) completes
            c.get("/metrics")
    finally:
        server.stop()
        if redis is not None:
            deadline = time.monotonic() + 30
            import redis as redis_lib

            client = redis_lib.Redis(port=redis.port)
            while int(client.info("persistence").get("aof_rewrite_in_progress", 0)) and time.monotonic() < deadline:
                time.sleep(0.1)
            client.close()
            redis.stop()
    return {"store": kind, "raw_id_bytes_before_deletion": before,
            "raw_id_bytes_after": hits([work], SECRET.encode()), "files_scanned": sorted(
                str(p.relative_to(work)) for p in work.rglob("*") if p.is_file())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--users", type=int, default=80)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "deletion_scan.json")
    args = p.parse_args()
    torch.set_num_threads(1)
    t0, load = time.monotonic(), os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="shopformer-deletion-") as tmp:
        root = Path(tmp)
        secret = write_log(root / "a.csv", args.users)
        prepare([root / "a.csv"], root / "ds0", CSV)
        cfg = apply_overrides(Config(), ["model.dim=16", "model.layers=1", "model.max_len=10", "train.epochs=1",
                                         "eval.bootstrap=0", "train.threads=1"])
        run0 = run_experiment(root / "ds0", cfg, root / "run0", progress=False).run_dir
        add_run(root / "reg", run0)
        stores = [serve_and_forget(k, root / k, root / "reg" / "current", secret)
                  for k in ("sqlite", "redis") if k == "sqlite" or shutil.which("redis-server")]
        export_store_events(root / "sqlite" / "state.db", root / "store.csv")
        out = retrain(root / "reg", RetrainOptions(
            events=(root / "store.csv",), ingest=CSV, overrides=("train.epochs=1",), promote=False, valid_days=0.05,
            gate=GateConfig(baselines=False, min_examples=1, margin=1.0),
            forget_ledger=root / "sqlite" / "ledger.jsonl"))
        v2 = root / "reg" / "versions" / out.version
        events = pl.read_parquet(v2 / "dataset" / "events.parquet")
        pairs = set(zip(events["item_id"].to_list(), events["timestamp"].to_list(), strict=True))
        left = sorted(pairs & {(i, t + dt) for i, t in secret for dt in (0, 90_000)})
        res = {**provenance(__file__), "stores": stores, "next_version": out.version,
               "next_version_raw_id_bytes": hits([v2], SECRET.encode()),
               "previous_version_raw_id_bytes": hits([root / "reg" / "versions" / "v0001"], SECRET.encode()),
               "next_version_user_event_pairs": len(left),
               "next_version_forgotten_dropped": json.loads((v2 / "dataset" / "stats.json").read_text()).get(
                   "forgotten_dropped"),
               "note": "v0001 predates the deletion and keeps the user (rollback history); the target is the next "
                       "version. Weights of a warm-started v0002 start from v0001's: --from-scratch for unlearning.",
               "seconds": round(time.monotonic() - t0, 1), "loadavg_before": [round(x, 2) for x in load],
               "loadavg_after": [round(x, 2) for x in os.getloadavg()]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps({k: v for k, v in res.items() if k != "stores"}))
    for s in res["stores"]:
        print(s["store"], "before:", s["raw_id_bytes_before_deletion"], "after:", s["raw_id_bytes_after"])


if __name__ == "__main__":
    main()
