"""Serving at scale (issue 16, items 5-6): ONNX encoder parity and speed, then several worker
processes on one Redis store under overload, with load shedding.

1. ONNX: the run's encoder exported (``pipelines/export_onnx.py``, parity on 512 real histories:
   max abs difference), user vectors timed in process (torch vs onnxruntime, batches of 1 / 7 / 64
   real histories), then the HTTP service with each backend (one worker, Redis, ``--clients-backend``
   closed-loop clients, no shedding): throughput, latency and the service's CPU time per answer (the
   backend with less CPU per answer serves step 2).
2. Scale-out: ``serve --workers 2`` on Redis, ``--clients`` closed-loop clients, per-worker bound
   ``--max-in-flight``: accepted-request latency (p50/p99), requests shed (503 + Retry-After, clients
   wait Retry-After as told), other errors, for each bound given (``scale_out`` for the first,
   ``scale_out_bound_N`` for the others); then the same without a bound (``scale_out_unbounded``).
   ``--client lean`` (default) generates the load with ``bench/lean_http.py`` on uvloop: about a sixth
   of httpx's CPU per request, which on 2 shared cores is run-queue wait in every measured latency.

Traffic is ``bench/serve_load.py``'s mix (80% user recommendations, 10% event posts of 20 events, 5%
ad-hoc, 5% similar items), replayed from the run's own data set (Amazon Beauty: each user's events
spread over a synthetic clock, since Beauty has order only), so histories hit known items.
Latency is measured in the client (what a caller sees). The box is shared: ``os.getloadavg()`` is
recorded before and after each phase.

    nice -n 5 .venv/bin/python bench/scale_serving.py --run out/scale_serving/beauty/model
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
import uvloop
from common import provenance
from lean_http import LeanClient, LeanHTTPError
from serve_load import KEY, MIX, Load, one_request, percentiles, proc_cpu_seconds

from shopformer.data.corpus import load_dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the service fixtures live with the tests
from serving_support import RedisServer, ServerProcess  # noqa: E402

BEAUTY = Path("/work/shared/data/amazon_beauty/Beauty.txt")


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def train_small(workdir: Path) -> Path:
    """No trained Beauty run given: prepare Amazon Beauty and train SASRec for 4 epochs (the CLI)."""
    cli = [sys.executable, "-m", "shopformer.cli"]
    subprocess.run([*cli, "prepare", str(BEAUTY), "--format", "sequences", "-o", str(workdir / "ds"), "--overwrite"],
                   check=True)
    subprocess.run([*cli, "train", str(workdir / "ds"), "-o", str(workdir / "run"), "--config", "configs/beauty.toml",
                    "--set", "train.epochs=4", "--set", "eval.bootstrap=0"], check=True)
    return workdir / "run" / "model"


def stream_rows(ds_path: Path, seed: int = 0) -> list[tuple[str, str, str, str, int]]:
    """(user, item, category, behaviour, timestamp) of every event, users interleaved on one clock."""
    ds = load_dataset(ds_path)
    seq, rng = ds.seq, np.random.default_rng(seed)
    users, items, behs = ds.vocabs.users.tokens, ds.vocabs.items.tokens, ds.vocabs.behaviours.tokens
    rows = []
    for u in range(seq.n_users):
        lo, hi = int(seq.offsets[u]), int(seq.offsets[u + 1])
        start = 1_600_000_000 + int(rng.integers(0, 86_400 * 30))
        for j in range(lo, hi):
            rows.append((users[int(seq.users[u])], items[int(seq.items[j])], "0", behs[int(seq.behaviours[j])],
                         start + 600 * (j - lo)))
    rows.sort(key=lambda r: r[4])
    return rows


def encoder_timing(run_dir: Path, ds_path: Path, reps: int = 30) -> dict:
    """Milliseconds per batch of user vectors (real histories), torch vs onnxruntime: the median wall
    time, and the mean CPU time (on a busy box, wall time mostly measures waiting for a core)."""
    from shopformer.pipelines.export_onnx import history_batches
    from shopformer.recommender import Recommender

    torch.set_num_threads(1)
    recs = {b: Recommender.load(run_dir, backend=b) for b in ("torch", "onnx")}
    batches = history_batches(recs["torch"], load_dataset(ds_path).seq, 512)[1::2]  # trimmed, as served
    out: dict[str, dict[str, float]] = {}
    for size in (1, 7, 64):
        full = next(b for b in batches if len(b.items) == size)
        times: dict[str, float] = {}
        for name, rec in recs.items():
            with torch.inference_mode():
                for _ in range(3):
                    rec.user_vectors(full)
                ts = []
                cpu0 = time.process_time()
                for _ in range(reps):
                    t0 = time.perf_counter()
                    rec.user_vectors(full)
                    ts.append(time.perf_counter() - t0)
                cpu = (time.process_time() - cpu0) / reps
            times[f"{name}_ms"] = round(statistics.median(ts) * 1e3, 3)  # wall: includes waiting for a CPU
            times[f"{name}_cpu_ms"] = round(cpu * 1e3, 3)  # CPU time of this process: load-independent
        times["speedup_wall"] = round(times["torch_ms"] / times["onnx_ms"], 2)
        times["speedup_cpu"] = round(times["torch_cpu_ms"] / times["onnx_cpu_ms"], 2)
        out[f"batch_{size}"] = times
    return out


async def preload(url: str, load: Load, n: int) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=60) as c:
        for _ in range(max(n // 100, 1)):
            r = await c.post("/v1/events", json={"events": load.next_events(100)},
                             headers={"Authorization": f"Bearer {KEY}"})
            r.raise_for_status()
        for _ in range(100):  # warm-up reads, not measured
            await one_request(c, load, "user_recs")


def worker_pids(pid: int) -> list[int]:
    """The service's processes: ``pid`` itself, or its spawned workers (``--workers N``)."""
    kids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid \
                    and b"spawn_main" in (proc / "cmdline").read_bytes():
                kids.append(int(proc.name))
        except (OSError, IndexError, ValueError):
            continue
    return kids or [pid]


def run_load(level: Coroutine[Any, Any, dict], client: str) -> dict:
    """Run one load level: the lean client on uvloop (the least client CPU), httpx on asyncio's loop."""
    if client == "lean":
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(level)
    return asyncio.run(level)


async def shed_level(url: str, load: Load, clients: int, duration: float, server_pid: int, *, client: str) -> dict:
    """Closed-loop clients; a 503 with Retry-After is a shed request (the client waits as told).
    Also the service's CPU time per answered request (all its worker processes): on a shared box the
    one figure that does not depend on how long the service waited for a core. The load generator's
    own CPU is recorded too: on the service's cores it is what turns into run-queue wait."""
    lat: dict[str, list[float]] = {name: [] for name, _ in MIX}
    shed_lat: list[float] = []
    errors: Counter = Counter()
    conns: list = ([LeanClient(url, timeout=30) for _ in range(clients)] if client == "lean" else
                   [httpx.AsyncClient(base_url=url, timeout=30, limits=httpx.Limits(max_connections=1))
                    for _ in range(clients)])
    await asyncio.gather(*(c.get("/healthz") for c in conns))  # connections open before the clock starts
    pids = worker_pids(server_pid)
    cpu0, client_cpu0 = sum(proc_cpu_seconds(p) for p in pids), time.process_time()
    deadline = time.perf_counter() + duration

    async def worker(c: LeanClient | httpx.AsyncClient) -> None:
        while time.perf_counter() < deadline:
            op = load.pick()
            t0 = time.perf_counter()
            try:
                r = await one_request(c, load, op)
            except (httpx.HTTPError, LeanHTTPError) as err:
                errors[f"{op}:{type(err).__name__}"] += 1
                continue
            dt = time.perf_counter() - t0
            if r.status_code == 200:
                lat[op].append(dt)
            elif r.status_code == 503 and "retry-after" in r.headers:
                shed_lat.append(dt)
                await asyncio.sleep(min(float(r.headers["retry-after"]), max(deadline - time.perf_counter(), 0)))
            else:
                errors[f"{op}:{r.status_code}"] += 1

    try:
        t_start = time.perf_counter()
        await asyncio.gather(*(worker(c) for c in conns))
        elapsed = time.perf_counter() - t_start
        cpu = sum(proc_cpu_seconds(p) for p in pids) - cpu0
        client_cpu = time.process_time() - client_cpu0
    finally:
        await asyncio.gather(*(c.aclose() for c in conns))
    accepted = [x for v in lat.values() for x in v]
    n_requests = len(accepted) + len(shed_lat) + sum(errors.values())
    return {
        "clients": clients, "duration_s": round(elapsed, 2), "accepted": len(accepted),
        "accepted_rps": round(len(accepted) / elapsed, 1), "accepted_latency": percentiles(accepted),
        "shed_503": len(shed_lat), "shed_answer_latency": percentiles(shed_lat),
        "other_errors": sum(errors.values()), "error_kinds": dict(errors), "server_processes": len(pids),
        "server_cpu_ms_per_answer": round(cpu * 1e3 / max(len(accepted) + len(shed_lat), 1), 3),
        "server_cores_used": round(cpu / elapsed, 2), "client": client,
        "client_cpu_ms_per_request": round(client_cpu * 1e3 / max(n_requests, 1), 3),
        "client_cores_used": round(client_cpu / elapsed, 2),
        "endpoints": {op: {"count": len(v), **percentiles(v)} for op, v in lat.items()},
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, help="trained run (model dir); default: train a small Beauty run")
    ap.add_argument("--dataset", type=Path, help="its prepared data set (default: the run's dataset_dir)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/shopformer-scale-serving"))
    ap.add_argument("--duration", type=float, default=8.0, help="seconds per measured level")
    ap.add_argument("--preload", type=int, default=3000, help="events ingested before measuring")
    ap.add_argument("--clients-backend", type=int, default=8, help="clients of the backend comparison")
    ap.add_argument("--clients", type=int, default=32, help="clients of the 2-worker overload level")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--max-in-flight", default="1,2,4,8",
                    help="per-worker bounds, comma-separated: each is one overload level (the first is 'scale_out')")
    ap.add_argument("--client", choices=("lean", "httpx"), default="lean",
                    help="load generator: lean (bench/lean_http.py on uvloop, least CPU) or httpx (stop 24's)")
    ap.add_argument("--export", action="store_true", help="export again even if encoder.onnx exists")
    ap.add_argument("--out", type=Path, default=Path("bench/results/scale_serving.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    random.seed(0)
    args.workdir.mkdir(parents=True, exist_ok=True)
    result: dict = {**provenance(__file__, argv), "cpus": os.cpu_count(), "loadavg_start": loadavg()}
    run = args.run or train_small(args.workdir / "train")
    manifest = json.loads((run / "manifest.json").read_text())
    ds_path = args.dataset or Path(manifest["dataset_dir"])
    result["run"] = {"path": str(run), "version": manifest.get("version_id"), "dataset": str(ds_path),
                     "n_items": json.loads((run / "config.json").read_text())["spec"]["n_items"]}

    from shopformer.onnx_encoder import CHECK_FILE
    from shopformer.pipelines.export_onnx import export_onnx

    if args.export or not (run / CHECK_FILE).exists():
        export_onnx(run, ds_path, n_histories=512)
    record = json.loads((run / CHECK_FILE).read_text())
    result["onnx_export"] = {"max_abs_diff": record["check"]["max_abs_diff"], "target": 1e-4,
                             "histories": record["check"]["histories"], "export_seconds": record["export_seconds"],
                             "versions": record["versions"]}
    result["encoder_ms_per_batch"] = encoder_timing(run, ds_path)
    result["loadavg_after_encoder"] = loadavg()
    print(json.dumps({"onnx": result["onnx_export"], "encoder": result["encoder_ms_per_batch"]}), flush=True)

    rows = stream_rows(ds_path)
    vocab = json.loads((run / "vocab.json").read_text())["items"][1:]
    redis = RedisServer(args.workdir / "redis").start()
    try:
        result["backends"] = {}
        for backend in ("torch", "onnx"):
            redis_flush(redis)
            server = ServerProcess(run, redis.url, api_key=KEY, log_path=args.workdir / f"server-{backend}.log",
                                   extra_args=("--max-in-flight", "0", "--backend", backend))
            server.start(timeout=600)
            try:
                assert server.proc is not None
                load = Load(rows, vocab)
                asyncio.run(preload(server.url, load, args.preload))
                level = shed_level(server.url, load, args.clients_backend, args.duration, server.proc.pid,
                                   client=args.client)
                res = run_load(level, args.client)
                res["loadavg_after"] = loadavg()
                result["backends"][backend] = res
                print(json.dumps({"backend": backend, **{k: res[k] for k in ("accepted_rps", "accepted_latency",
                                  "server_cpu_ms_per_answer", "other_errors")}}), flush=True)
            finally:
                server.stop()
        fastest = min(result["backends"], key=lambda b: result["backends"][b]["server_cpu_ms_per_answer"])
        result["faster_backend"] = fastest
        # the same overload with the bound and without it (0): what shedding buys the accepted requests
        bounds = [int(b) for b in args.max_in_flight.split(",")]
        levels = [("scale_out", bounds[0])] + [(f"scale_out_bound_{b}", b) for b in bounds[1:]]
        for key, bound in (*levels, ("scale_out_unbounded", 0)):
            redis_flush(redis)
            server = ServerProcess(run, redis.url, api_key=KEY, log_path=args.workdir / f"server-workers-{bound}.log",
                                   extra_args=("--workers", str(args.workers), "--max-in-flight", str(bound),
                                               "--backend", fastest))
            server.start(timeout=600)
            try:
                load = Load(rows, vocab, seed=1)
                asyncio.run(preload(server.url, load, args.preload))
                assert server.proc is not None
                level = shed_level(server.url, load, args.clients, args.duration, server.proc.pid, client=args.client)
                res = run_load(level, args.client)
                res.update(workers=args.workers, max_in_flight_per_worker=bound, backend=fastest, store="redis",
                           loadavg_after=loadavg(), target={"accepted_p99_ms": 20.0, "other_errors": 0})
                result[key] = res
                print(json.dumps({key: {k: res[k] for k in ("accepted_rps", "accepted_latency", "shed_503",
                                                            "other_errors")}}), flush=True)
            finally:
                server.stop()
    finally:
        redis.stop()
    result["loadavg_end"] = loadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


def redis_flush(server: RedisServer) -> None:
    import redis

    client = redis.Redis(port=server.port)
    client.flushall()
    client.close()


if __name__ == "__main__":
    main()
