"""Load benchmark of the real-time service: real HTTP, client and server in separate processes.

Replays the time-ordered Taobao stream slice (/work/shared/data/taobao_userbehavior_stream_slice,
see its PROVENANCE.md: a row-level sample of two hours of real events, most users with 1-2
events) as ``POST /v1/events`` batches, interleaved with recommendation reads, at increasing
client concurrency. Prints one JSON line per level and writes them all to ``--out``.

Catalogues (random weights: latency does not depend on training):
- ``beauty``: SASRec (dim 64, 2 layers, max_len 50) over 12,101 items, the Amazon Beauty size.
  The vocabulary is the stream's 12,101 most frequent items, so replayed events hit known and
  unknown items in realistic proportions (unknown ones are stored and reported, not scored).
- ``1m``: the same model over a synthetic 1,000,000-item catalogue (all stream items plus
  synthetic ids) whose item vectors are clustered like trained embeddings; served through the
  FAISS IVF index. Its recall against exact search (user-vector queries) is measured and reported.

Operation mix per client request: 80% GET user recommendations (users that recently had events),
10% POST /v1/events (20 stream events, each with an event_id), 5% POST ad-hoc recommendations,
5% GET similar items. Latencies are measured in the client (what a caller sees).

    .venv/bin/python bench/serve_load.py --catalogue beauty --levels 1,4,16,32,64 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import random
import resource
import sys
import time
from collections import Counter, deque
from pathlib import Path

import httpx
import numpy as np
from common import provenance

from shopformer.config import ModelConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the service fixtures live with the tests
from serving_support import ServerProcess, synthetic_run  # noqa: E402

STREAM = Path("/work/shared/data/taobao_userbehavior_stream_slice/UserBehavior_flink_slice.csv")
KEY = "bench-key"
BEAUTY_ITEMS = 12_101
MIX = (("user_recs", 0.80), ("events", 0.10), ("adhoc", 0.05), ("similar", 0.05))


def load_stream(path: Path) -> list[tuple[str, str, str, str, int]]:
    """(user, item, category, behaviour, timestamp) rows in file (time) order."""
    with open(path, newline="") as f:
        return [(u, i, c, b, int(t)) for u, i, c, b, t in csv.reader(f)]


def build_run(kind: str, rows: list, workdir: Path) -> Path:
    out = workdir / f"run-{kind}"
    if (out / "manifest.json").exists():
        return out
    freq = Counter(r[1] for r in rows)
    ranked = [i for i, _ in freq.most_common()]
    model = ModelConfig(dim=64, layers=2, heads=2, max_len=50)
    if kind == "beauty":
        return synthetic_run(out, ranked[:BEAUTY_ITEMS], model)
    n = 1_000_000
    items = ranked + [f"syn-{j}" for j in range(n - len(ranked))]
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1 / 8, size=(4000, 64)).astype(np.float32)
    vectors = centres[rng.integers(0, len(centres), n)] + rng.normal(0, 0.35 / 8, size=(n, 64)).astype(np.float32)
    return synthetic_run(out, items, model, item_vectors=vectors)


def user_vector_recall(run_dir: Path, rows: list, nprobes: list[int], k: int = 10, n: int = 200) -> dict[str, float]:
    """Recall@k of the FAISS IVF index vs exact scoring for user-vector queries, per nprobe."""
    import torch

    from shopformer.recommender import History, Recommender, RecRequest
    from shopformer.serving.ann import ExactIndex, FaissIndex

    rec = Recommender.load(run_dir)
    emb = rec.model.output_embeddings().detach().float()
    ann, exact = FaissIndex(emb, nprobe=nprobes[0], threads=1), ExactIndex(emb)
    by_user: dict[str, list] = {}
    for u, i, _, b, t in rows:
        by_user.setdefault(u, []).append((i, b, t))
    hists = [h for h in by_user.values() if len(h) >= 3][:n]
    reqs = [RecRequest(History([e[0] for e in h], [e[1] for e in h], [e[2] for e in h]), k, False) for h in hists]
    torch.manual_seed(0)
    e = rec.recommend_requests(reqs, exact)
    out = {}
    for nprobe in nprobes:
        ann.index.nprobe = nprobe
        a = rec.recommend_requests(reqs, ann)
        out[str(nprobe)] = round(float(np.mean([len(set(x.items) & set(y.items)) / k
                                                for x, y in zip(a, e, strict=True)])), 3)
    return out


class Load:
    """Shared replay state: the stream cursor and recently active users/items."""

    def __init__(self, rows: list, known_items: list[str], seed: int = 0) -> None:
        self.rows, self.cursor, self.passes = rows, 0, 0
        # later passes over the stream are new events: fresh event_ids, times shifted past the stream
        self.span = (max(r[4] for r in rows) - min(r[4] for r in rows) + 1) if rows else 0
        self.recent_users: deque[str] = deque(maxlen=5000)
        self.recent_items: deque[str] = deque(maxlen=5000)
        self.known_items = known_items
        self.rng = random.Random(seed)

    def next_events(self, n: int = 20) -> list[dict]:
        if self.cursor >= len(self.rows):
            self.cursor, self.passes = 0, self.passes + 1
        chunk = self.rows[self.cursor : self.cursor + n]
        start, self.cursor = self.cursor, self.cursor + len(chunk)
        shift, out = self.passes * self.span, []
        for j, (u, i, c, b, t) in enumerate(chunk):
            out.append({"user_id": u, "item_id": i, "category_id": c, "event_type": b, "timestamp": t + shift,
                        "event_id": f"row-{self.passes}-{start + j}"})
            self.recent_users.append(u)
            self.recent_items.append(i)
        return out

    def pick(self) -> str:
        r, acc = self.rng.random(), 0.0
        for name, p in MIX:
            acc += p
            if r < acc:
                return name
        return MIX[0][0]


async def one_request(client: httpx.AsyncClient, load: Load, op: str) -> httpx.Response:
    if op == "events":
        return await client.post("/v1/events", json={"events": load.next_events()},
                                 headers={"Authorization": f"Bearer {KEY}"})
    if op == "user_recs":
        user = load.rng.choice(load.recent_users)
        return await client.get(f"/v1/users/{user}/recommendations", params={"k": 10})
    if op == "adhoc":
        hist = [{"item_id": load.rng.choice(load.recent_items), "event_type": "pv"} for _ in range(5)]
        return await client.post("/v1/recommendations", json={"history": hist, "k": 10})
    item = load.rng.choice(load.known_items)
    return await client.get(f"/v1/items/{item}/similar", params={"k": 10})


def server_buckets(url: str, route: str) -> dict[float, float]:
    """Cumulative latency histogram buckets (seconds -> count) of one route, from /metrics."""
    out: dict[float, float] = {}
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        if line.startswith("shopformer_http_request_duration_seconds_bucket") and f'route="{route}"' in line:
            le = line.split('le="', 1)[1].split('"', 1)[0]
            out[float("inf") if le == "+Inf" else float(le)] = float(line.rsplit(" ", 1)[1])
    return out


def server_quantile_ms(before: dict[float, float], after: dict[float, float], q: float) -> float | None:
    """Upper bound of the histogram bucket holding quantile q (server-side time, no client/network)."""
    les = sorted(after)
    counts = [after[le] - before.get(le, 0.0) for le in les]
    if not counts or counts[-1] == 0:
        return None
    for le, c in zip(les, counts, strict=True):
        if c >= q * counts[-1]:
            return le * 1e3
    return None


def proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def schedstat(pid: int) -> tuple[float, float]:
    """(seconds on CPU, seconds runnable but waiting for a CPU) of a process's main thread."""
    run_ns, wait_ns, _ = Path(f"/proc/{pid}/schedstat").read_text().split()
    return int(run_ns) / 1e9, int(wait_ns) / 1e9


def percentiles(xs: list[float]) -> dict[str, float | None]:
    if not xs:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None}
    a = np.asarray(xs) * 1e3
    return {f"p{q}_ms": round(float(np.percentile(a, q)), 2) for q in (50, 95, 99)}


async def run_level(url: str, load: Load, concurrency: int, duration: float, server_pid: int) -> dict:
    lat: dict[str, list[float]] = {name: [] for name, _ in MIX}
    errors: Counter = Counter()
    events_posted = 0
    deadline = time.perf_counter() + duration
    # One keep-alive connection per worker (independent callers); httpx's shared pool costs
    # noticeably more client CPU per request as the number of connections grows.
    clients = [httpx.AsyncClient(base_url=url, timeout=30, limits=httpx.Limits(max_connections=1))
               for _ in range(concurrency)]
    try:
        async def worker(client: httpx.AsyncClient) -> None:
            nonlocal events_posted
            while time.perf_counter() < deadline:
                op = load.pick()
                t0 = time.perf_counter()
                try:
                    r = await one_request(client, load, op)
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                dt = time.perf_counter() - t0
                if ok:
                    lat[op].append(dt)
                    if op == "events":
                        events_posted += r.json()["accepted"]
                else:
                    errors[op] += 1

        route = "/v1/users/{user_id}/recommendations"
        hist0 = server_buckets(url, route)
        cpu_server0, cpu_client0 = proc_cpu_seconds(server_pid), resource.getrusage(resource.RUSAGE_SELF)
        sched0 = {"server": schedstat(server_pid), "client": schedstat(os.getpid())}
        t_start = time.perf_counter()
        await asyncio.gather(*(worker(c) for c in clients))
        elapsed = time.perf_counter() - t_start
        cpu_server = proc_cpu_seconds(server_pid) - cpu_server0
        ru = resource.getrusage(resource.RUSAGE_SELF)
        cpu_client = ru.ru_utime + ru.ru_stime - cpu_client0.ru_utime - cpu_client0.ru_stime
        sched1 = {"server": schedstat(server_pid), "client": schedstat(os.getpid())}
        hist1 = server_buckets(url, route)
    finally:
        for c in clients:
            await c.aclose()

    total = sum(len(v) for v in lat.values())
    reco = len(lat["user_recs"]) + len(lat["adhoc"])
    return {
        "concurrency": concurrency,
        "duration_s": round(elapsed, 2),
        "requests_ok": total,
        "errors": sum(errors.values()),
        "throughput_rps": round(total / elapsed, 1),
        "recommendation_rps": round(reco / elapsed, 1),
        "events_ingested_per_s": round(events_posted / elapsed, 1),
        "endpoints": {op: {"count": len(v), "rps": round(len(v) / elapsed, 1), "errors": errors[op],
                           **percentiles(v)} for op, v in lat.items()},
        "user_recs_server_side_ms": {f"p{round(q * 100)}_le": server_quantile_ms(hist0, hist1, q) for q in (0.5, 0.99)},
        "cpu_cores_used": {"server": round(cpu_server / elapsed, 2), "client": round(cpu_client / elapsed, 2)},
        "server_cpu_ms_per_request": round(cpu_server / max(total, 1) * 1e3, 3),
        # Share of the time a main thread was ready to run but waited for a CPU (other load).
        "runqueue_wait_share": {
            who: round((w1 - w0) / max((r1 - r0) + (w1 - w0), 1e-9), 2)
            for who, ((r0, w0), (r1, w1)) in ((k, (sched0[k], sched1[k])) for k in sched0)
        },
        "loadavg_1m_after": float(Path("/proc/loadavg").read_text().split()[0]),
    }


async def bench_catalogue(kind: str, rows: list, levels: list[int], args: argparse.Namespace,
                          results: list[dict]) -> None:
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    run_dir = build_run(kind, rows, workdir)
    build_s = time.perf_counter() - t0
    n_items = len(json.loads((run_dir / "vocab.json").read_text())["items"]) - 1
    nprobes = sorted({args.nprobe, 8, 16, 32, 64, 128}, key=lambda x: (x != args.nprobe, x))
    recall = user_vector_recall(run_dir, rows, nprobes) if kind == "1m" else None
    db = workdir / f"state-{kind}.db"
    for p in workdir.glob(f"state-{kind}.db*"):
        p.unlink()
    server = ServerProcess(run_dir, f"sqlite:///{db}", api_key=KEY, log_path=workdir / f"server-{kind}.log",
                           env={"SHOPFORMER_FAISS_NPROBE": str(args.nprobe)})
    t0 = time.perf_counter()
    server.start(timeout=600)
    startup_s = time.perf_counter() - t0
    try:
        assert server.proc is not None
        info = httpx.get(f"{server.url}/metrics").text
        index = "faiss-ivf" if 'index="faiss-ivf"' in info else "exact"
        vocab = json.loads((run_dir / "vocab.json").read_text())["items"][1:]
        load = Load(rows, vocab[:50_000])
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as c:  # users with histories first
            for _ in range(args.preload // 100):
                r = await c.post("/v1/events", json={"events": load.next_events(100)},
                                 headers={"Authorization": f"Bearer {KEY}"})
                r.raise_for_status()
            for _ in range(200):  # warm-up reads, not measured
                await one_request(c, load, "user_recs")
        for level in levels:
            res = await run_level(server.url, load, level, args.duration, server.proc.pid)
            line = {"catalogue": kind, "n_items": n_items, "index": index, "store": "sqlite", **res}
            if recall is not None:
                line["faiss_nprobe"] = args.nprobe
                line["ann_recall_at_10_by_nprobe"] = recall  # user-vector queries, vs exact, 200 stream users
            line["server_startup_s"], line["run_build_s"] = round(startup_s, 1), round(build_s, 1)
            print(json.dumps(line), flush=True)
            results.append(line)
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--catalogue", choices=["beauty", "1m", "all"], default="all")
    ap.add_argument("--levels", default="1,4,16,32,64", help="client concurrency levels")
    ap.add_argument("--levels-1m", default="1,4,16,32", help="client concurrency levels, 1M catalogue")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per level")
    ap.add_argument("--preload", type=int, default=20_000, help="stream events ingested before measuring")
    ap.add_argument("--nprobe", type=int, default=16, help="FAISS lists probed per query (1M catalogue)")
    ap.add_argument("--workdir", default="/tmp/shopformer-serve-bench")
    ap.add_argument("--out", default="bench/results/serve_load.json")
    ap.add_argument("--note", default="", help="free text stored with the results (e.g. machine conditions)")
    args = ap.parse_args(argv)
    loadavg0 = Path("/proc/loadavg").read_text().split()[:3]
    rows = load_stream(STREAM)
    results: list[dict] = []
    kinds = ["beauty", "1m"] if args.catalogue == "all" else [args.catalogue]
    for kind in kinds:
        levels = args.levels_1m if kind == "1m" else args.levels
        asyncio.run(bench_catalogue(kind, rows, [int(x) for x in levels.split(",")], args, results))
    out = {
        **provenance(__file__, argv),
        "machine": {"cpus": os.cpu_count(), "loadavg_at_start": loadavg0,
                    "loadavg_at_end": Path("/proc/loadavg").read_text().split()[:3]},
        "note": args.note,
        "data": str(STREAM),
        "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
