"""Batch scoring speed (issue 14): ``shopformer score RUN --users all`` on every user of a 20k-user
real log, timed end to end as a user runs it (process start, loading, churn fit, Parquet written).

    nice -n 19 .venv/bin/python bench/score_speed.py --threads 2 --results bench/results

Data: the first 20,000 users (by first event) of the time-sorted Taobao stream slice in
../shared/data, with all their events (timestamps, four behaviours: every column of the output is
filled). The model is SASRec with every head (``task.kind=multi``, dim 64, 2 layers, window 50, the
applications bench's size), saved untrained: scoring costs the same whatever the weights (training
it through ``shopformer train`` took over an hour of this shared machine). Reported: wall seconds
of the command, the CPU seconds of the scoring process, and the load average before and after
(the machine is shared: wall time under load is CPU time stretched; the CPU seconds say what an
idle machine would need).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import torch
from common import CACHE, RESULTS, ROOT, SHARED, load_or_prepare, machine, provenance

from shopformer.artifacts import save_run
from shopformer.config import Config
from shopformer.data.corpus import Dataset
from shopformer.data.ingest import IngestOptions
from shopformer.evaluation.baselines import item_counts
from shopformer.models import build_model

RAW = SHARED / "taobao_userbehavior_stream_slice" / "UserBehavior_flink_slice.csv"
COLUMNS = ("user_id", "item_id", "category_id", "event_type", "timestamp")
CLI = [str(ROOT / ".venv" / "bin" / "shopformer")]


def slice_users(n_users: int) -> Path:
    """The first ``n_users`` users of the stream slice with all their events, written once."""
    out = CACHE / f"taobao_stream_first{n_users}.csv"
    if not out.exists():
        df = pl.read_csv(RAW, has_header=False, new_columns=list(COLUMNS))
        users = df["user_id"].unique(maintain_order=True).head(n_users)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        df.filter(pl.col("user_id").is_in(users.to_list())).write_csv(tmp, include_header=False)
        tmp.replace(out)
    return out


def save_untrained(ds: Dataset, out: Path) -> None:
    """A run of the applications bench's model size with every head, its weights as initialised."""
    name, target = ds.target_behaviour(None)
    cfg = Config().override(model={"dim": 64, "layers": 2, "max_len": 50},
                            task={"kind": "multi", "target_behaviour": name},
                            split={"kind": "temporal", "valid_start": 0.8, "test_start": 0.9})
    torch.manual_seed(0)
    model = build_model(cfg.model, ds.spec, task=cfg.task, target_behaviour=target)
    save_run(out, model, cfg, ds.vocabs, item_counts(ds.seq, ds.seq.offsets[1:], ds.spec.n_items),
             ds.item_category(), {}, ds.fingerprint, str(ds.path.resolve()))


def run_cli(args: list[str], threads: int) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds of the child, its output) of one ``shopformer`` command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    done = subprocess.run([*CLI, *args], capture_output=True, text=True,
                          env={**os.environ, "SHOPFORMER_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)})
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"shopformer {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, done.stdout


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=20000)
    ap.add_argument("--threads", type=int, default=2, help="threads of the scoring command (the target: 2 cores)")
    ap.add_argument("--churn-days", type=float, default=0.02,
                    help="churn horizon of the scored column (the slice spans 2 hours: 0.02 d = 29 min)")
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "bench_score_speed")
    ap.add_argument("--results", type=Path, help=f"write DIR/score_speed.json (e.g. {RESULTS})")
    args = ap.parse_args(argv)
    ds = load_or_prepare(slice_users(args.users), IngestOptions(columns=COLUMNS), CACHE)
    run = args.out / "run"
    save_untrained(ds, run)
    out = args.out / "scores.parquet"
    load = list(os.getloadavg())
    wall, cpu, printed = run_cli(["score", str(run), "--users", "all", "-o", str(out), "--churn-days",
                                  str(args.churn_days), "--threads", str(args.threads)], args.threads)
    table = pq.read_table(out)
    rec = {**provenance(__file__, argv), "dataset": f"taobao stream slice, first {args.users} users",
           "users": ds.seq.n_users, "items": ds.spec.n_items, "events": len(ds.seq.items),
           "rows_written": table.num_rows, "columns": table.column_names, "threads": args.threads,
           "wall_seconds": wall, "cpu_seconds": cpu, "users_per_second_wall": table.num_rows / wall,
           "command_printed": " ".join(printed.split()),
           "target": "all users of a 20k-user data set in <= 120 s on 2 cores",
           "met_wall": wall <= 120, "met_cpu_le_120s": cpu <= 120,
           "load_avg_start": load, "load_avg_end": list(os.getloadavg()), "machine": machine()}
    print(json.dumps(rec))
    if args.results is not None:
        (args.results / "score_speed.json").write_text(json.dumps(rec, indent=1) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
