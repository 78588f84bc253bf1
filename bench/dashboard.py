"""Dashboard page times: server time (the page's ``Server-Timing`` header) and client round trip of
every /ui page, median and p95, against a real ``shopformer serve REGISTRY/current --dashboard``.

    python bench/dashboard.py [--run out/dashboard_bench/beauty_run/model] [--demo runs/demo/model
                              --demo-insights out/dashboard_dev/insights.json] [--n 30]

Cases: the Amazon Beauty run (12,101 items, the issue's target: <= 300 ms server time per page;
Beauty has no timestamps, so its Trends / forecast / churn panels show why they are empty) served
from a model registry (the Overview lists versions), and, when given, the Taobao demo run
(22,267 items) with its insights file, so the insight panels are timed too. The customer page
explains every recommendation (one occlusion forward pass over the user's window): the heaviest.
Writes bench/results/dashboard.json with the command and the machine load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import polars as pl
from common import ROOT, provenance

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the service fixtures live with the tests
from serving_support import ServerProcess  # noqa: E402

KEY = "bench-key"
USERS = 5


def pick_histories(dataset: Path, max_len: int = 50) -> dict[str, list[dict]]:
    """The events of ``USERS`` users with the longest histories (last ``max_len`` each), as POST /v1/events rows."""
    ev = pl.read_parquet(dataset / "events.parquet")
    counts = ev.group_by("user_id").len().sort(["len", "user_id"], descending=[True, False]).head(USERS)
    out = {}
    for user in counts["user_id"].to_list():
        rows = ev.filter(pl.col("user_id") == user).tail(max_len)
        has_time = "timestamp" in rows.columns and rows["timestamp"].null_count() == 0
        beh = rows["behaviour"].to_list() if "behaviour" in rows.columns else [None] * len(rows)
        out[str(user)] = [{"user_id": f"bench-{user}", "item_id": str(i), "behaviour": b,
                           "timestamp": int(t) if has_time else 1_700_000_000 + 60 * j}
                          for j, (i, b, t) in enumerate(zip(rows["item_id"].to_list(), beh,
                                                            rows["timestamp"].to_list() if has_time
                                                            else [None] * len(rows), strict=True))]
    return out


def summary(values: list[float]) -> dict[str, float]:
    s = sorted(values)
    return {"median_ms": round(statistics.median(s), 2), "p95_ms": round(s[min(len(s) - 1, int(0.95 * len(s)))], 2),
            "max_ms": round(s[-1], 2)}


def time_pages(url: str, pages: dict[str, list[str]], n: int) -> dict[str, dict]:
    out = {}
    with httpx.Client(base_url=url, timeout=60) as c:
        for name, paths in pages.items():
            server, client = [], []
            for i in range(n + 3):
                path = paths[i % len(paths)]
                t0 = time.perf_counter()
                r = c.get(path)
                rt = (time.perf_counter() - t0) * 1000
                if r.status_code != 200:
                    raise RuntimeError(f"{path}: HTTP {r.status_code}: {r.text[:300]}")
                if i >= 3:  # warm-up excluded
                    server.append(float(r.headers["server-timing"].split("dur=")[1]))
                    client.append(rt)
            out[name] = {"server": summary(server), "round_trip": summary(client), "requests": n,
                         "bytes": len(r.content)}
    return out


def bench_case(name: str, run_dir: Path, insights: Path | None, registry: Path | None, n: int,
               work: Path) -> dict:
    from shopformer.artifacts import load_run

    run = load_run(run_dir)
    dataset = Path(run.manifest["dataset_dir"])
    served = run_dir
    if registry is not None:
        from shopformer.pipelines.continuous import add_run

        if not (registry / "current.json").exists():
            add_run(registry, run_dir)
        served = registry / "current"
    histories = pick_histories(dataset, run.model.max_len)
    counts = run.item_counts
    top_items = [run.vocabs.items.tokens[i] for i in sorted(range(1, len(counts)), key=lambda i: -counts[i])[:5]]
    del run
    args = ["--dashboard"] + (["--dashboard-insights", str(insights)] if insights else [])
    srv = ServerProcess(served, f"sqlite:///{work}/{name}.db", api_key=KEY, log_path=work / f"{name}.log",
                        extra_args=tuple(args)).start()
    try:
        for events in histories.values():
            r = httpx.post(f"{srv.url}/v1/events", json={"events": events},
                           headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
            r.raise_for_status()
        pages = {"overview": ["/ui"], "customers": [f"/ui/customers?user=bench-{u}" for u in histories],
                 "items": [f"/ui/items?item={i}" for i in top_items], "trends": ["/ui/trends"],
                 "health": ["/ui/health"]}
        load_before = os.getloadavg()
        result = time_pages(srv.url, pages, n)
        load_after = os.getloadavg()
        n_items = next(line.split()[1] for line in httpx.get(f"{srv.url}/metrics").text.splitlines()
                       if line.startswith("shopformer_model_items "))
    finally:
        srv.stop()
    worst = max(v["server"]["p95_ms"] for v in result.values())
    return {"case": name, "run": str(run_dir), "insights": str(insights) if insights else None,
            "registry": registry is not None, "n_items": int(float(n_items)), "history_events": [len(h) for h in
                                                                                                    histories.values()],
            "pages": result, "worst_server_p95_ms": worst, "target_ms": 300, "meets_target": worst <= 300,
            "loadavg_before": [round(x, 2) for x in load_before], "loadavg_after": [round(x, 2) for x in load_after]}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=ROOT / "out" / "dashboard_bench" / "beauty_run" / "model")
    ap.add_argument("--registry", type=Path, default=ROOT / "out" / "dashboard_bench" / "registry")
    ap.add_argument("--demo", type=Path, default=None, help="a second run to time (with --demo-insights)")
    ap.add_argument("--demo-insights", type=Path, default=None)
    ap.add_argument("--n", type=int, default=30, help="timed requests per page (after 3 warm-up ones)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "dashboard.json")
    args = ap.parse_args(argv)
    if not (args.run / "manifest.json").exists():
        sys.exit(f"{args.run}: no trained run there; train one first, e.g. `shopformer prepare "
                 "../shared/data/amazon_beauty/Beauty.txt -o out/dashboard_bench/beauty_ds --format sequences && "
                 "shopformer train out/dashboard_bench/beauty_ds -o out/dashboard_bench/beauty_run --config "
                 "configs/beauty.toml --set train.epochs=1`")
    with tempfile.TemporaryDirectory() as tmp:
        cases = [bench_case("beauty", args.run, None, args.registry, args.n, Path(tmp))]
        if args.demo is not None:
            cases.append(bench_case("taobao_demo", args.demo, args.demo_insights, None, args.n, Path(tmp)))
    result = {**provenance(__file__, argv), "cases": cases, "cpu_count": os.cpu_count(),
              "note": "server time = the page's Server-Timing header (handler start to rendered HTML); round trip "
                      "adds HTTP on localhost. Sequential requests, one client."}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({c["case"]: {p: v["server"]["p95_ms"] for p, v in c["pages"].items()} for c in cases}))


if __name__ == "__main__":
    main()
