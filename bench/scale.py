"""`shopformer prepare` at 10M / 30M / 100M synthetic Taobao events: time, peak RSS, Polars vs Spark.

    nice -n 5 .venv/bin/python bench/scale.py --sizes 10000000 30000000 100000000 --memory-limit 2GB
    nice -n 5 .venv/bin/python bench/scale.py --sizes 10000000 --spark          # + Spark local[2], compared

Each size: ``bench/synth.py`` writes the input (``--work``, deleted afterwards unless ``--keep``), then
``shopformer prepare`` runs in a child process (``--min-item-events 2``: one k-core over the whole
catalogue) and its wall time, peak RSS (``wait4``) and per-stage progress lines are recorded, with
``os.getloadavg()`` before and after: the machine is shared, so read the times beside the load.
``--spark`` also runs ``--engine spark`` (local[2]) on the same input and records whether its
``events.parquet`` and ``vocab.json`` are byte-identical to the Polars ones. Results are appended to
``bench/results/scale_prepare.json`` (rewritten after every run, so a partial run keeps its figures).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import RESULTS, ROOT, provenance

OUT = RESULTS / "scale_prepare.json"
COLUMNS = "user_id,item_id,category_id,behaviour,timestamp"
SHOPFORMER = ROOT / ".venv" / "bin" / "shopformer"


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def run_child(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, object]:
    """Run ``cmd``; wall time, peak RSS of the child (MB), load before/after, its stderr lines."""
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stderr is not None
    lines = [line.rstrip() for line in proc.stderr]
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {
        "seconds": round(time.perf_counter() - t0, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "exit_code": proc.returncode,
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "stderr": [line for line in lines if line.startswith("prepare") or "rror" in line][-20:],
    }


def prepare_cmd(src: Path, out: Path, memory: str, engine: str) -> list[str]:
    return [str(SHOPFORMER), "prepare", str(src), "-o", str(out), "--columns", COLUMNS, "--min-item-events", "2",
            "--memory-limit", memory, "--engine", engine, "--progress", "--overwrite"]


def save(meta: dict[str, object], row: dict[str, object]) -> None:
    """Add or update ``row`` (by its ``started`` stamp) in the results file, re-read first: another
    run of this script may have added its own rows meanwhile."""
    record: dict = json.loads(OUT.read_text()) if OUT.exists() else {}
    record.update(meta)
    runs = record.setdefault("runs", [])
    runs[:] = [r for r in runs if r.get("started") is None or r.get("started") != row["started"]] + [row]
    OUT.write_text(json.dumps(record, indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000_000, 30_000_000, 100_000_000])
    parser.add_argument("--memory-limit", default="2GB")
    parser.add_argument("--spark", action="store_true", help="also --engine spark on each size, compared")
    parser.add_argument("--work", type=Path, default=ROOT / "out" / "scale")
    parser.add_argument("--keep", action="store_true", help="keep the generated inputs and datasets")
    parser.add_argument("--reuse-polars", action="store_true", help="with --spark: compare with a kept Polars dataset")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    meta: dict[str, object] = {**provenance(__file__, argv), "cpus": os.cpu_count(),
                               "python": sys.version.split()[0], "nice": os.nice(0)}
    rows = []
    for n in args.sizes:
        src = args.work / f"taobao_synth_{n}.csv"
        row: dict[str, object] = {"events_generated": n, "memory_limit": args.memory_limit,
                                  "command": meta["command"], "nice": os.nice(0), "started": time.time()}
        rows.append(row)
        if not src.exists():
            synth = [sys.executable, str(ROOT / "bench" / "synth.py"), "--events", str(n), "-o", str(src)]
            row["synth"] = {k: v for k, v in run_child(synth).items() if k != "stderr"}
        row["input_bytes"] = src.stat().st_size
        ds = args.work / f"ds_polars_{n}"
        if not (args.reuse_polars and (ds / "stats.json").exists()):
            row["polars"] = run_child(prepare_cmd(src, ds, args.memory_limit, "polars"))
        if (ds / "stats.json").exists():
            stats = json.loads((ds / "stats.json").read_text())
            row["dataset"] = {k: stats[k] for k in ("rows_read", "events", "users", "items", "kcore_dropped",
                                                     "kcore_passes", "duplicates_dropped")}
        save(meta, row)
        if args.spark:
            sds = args.work / f"ds_spark_{n}"
            row["spark_local2"] = run_child(prepare_cmd(src, sds, args.memory_limit, "spark"),
                                            env={**os.environ, "SHOPFORMER_SPARK_MASTER": "local[2]"})
            row["spark_same_as_polars"] = {
                f: (sds / f).exists() and _sha(sds / f) == _sha(ds / f) for f in ("events.parquet", "vocab.json")
            }
            save(meta, row)
            if not args.keep:
                shutil.rmtree(sds, ignore_errors=True)
        if not args.keep:
            shutil.rmtree(ds, ignore_errors=True)
            src.unlink(missing_ok=True)
    print(json.dumps({**meta, "runs": rows}))


if __name__ == "__main__":
    main()
