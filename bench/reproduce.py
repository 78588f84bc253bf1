"""Does a code change reproduce an earlier revision's numbers? Train both, side by side, same seed.

    python bench/reproduce.py --old 8448b58 [--epochs 4] [--config configs/beauty.toml]

Checks out ``--old`` and ``--new`` (default HEAD) into temporary git worktrees, and in each runs the
CLI of that revision: ``prepare`` Amazon Beauty, then ``train`` for ``--epochs`` epochs with one
thread each (the two run at the same time on the two cores, so neither oversubscribes). Compares the
per-epoch training loss and validation metrics and the final test metrics of the model; prints one
JSON line (``--results`` appends it to bench/results/reproduce.jsonl). Identical numbers mean the
change kept training and evaluation bit for bit; a full-length benchmark then reproduces too.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import RESULTS, ROOT, SHARED, provenance, skip_if_missing

CLI = "from shopformer.cli import app; app()"


def run_revision(rev: str, work: Path, raw: Path, config: str, epochs: int) -> subprocess.Popen:
    """Start prepare + train of revision ``rev`` in a worktree under ``work`` (returns the process)."""
    tree = work / "tree"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-f", "--detach", str(tree), rev],
                   check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(tree / "src"), "OMP_NUM_THREADS": "1"}
    py = sys.executable
    script = (f"{py} -c '{CLI}' prepare {raw} --format sequences -o {work / 'ds'} --overwrite && "
              f"{py} -c '{CLI}' train {work / 'ds'} -o {work / 'run'} --config {config} --quiet "
              f"--set train.epochs={epochs} --set train.threads=1 --set train.eval_every=1")
    return subprocess.Popen(["bash", "-c", script], cwd=tree, env=env, stdout=open(work / "log.txt", "w"),
                            stderr=subprocess.STDOUT)


def curve(run: Path) -> list[dict[str, float]]:
    with open(run / "train_log.csv") as f:
        return [{k: round(float(v), 6) for k, v in row.items() if k == "loss" or k.startswith("valid_")}
                for row in csv.DictReader(f)]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", required=True, help="git revision to compare against")
    ap.add_argument("--new", default="HEAD", help="git revision under test (default HEAD)")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--config", default="configs/beauty.toml", help="config path inside each revision")
    ap.add_argument("--results", action="store_true", help="append the JSON line to bench/results/reproduce.jsonl")
    args = ap.parse_args(argv)
    raw = SHARED / "amazon_beauty" / "Beauty.txt"
    skip_if_missing(raw, "reproduce")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        works = {name: Path(tmp) / name for name in ("old", "new")}
        procs = {}
        try:
            for name, rev in (("old", args.old), ("new", args.new)):
                works[name].mkdir()
                procs[name] = run_revision(rev, works[name], raw, args.config, args.epochs)
            for name, p in procs.items():
                if p.wait() != 0:
                    log = (works[name] / "log.txt").read_text()[-3000:]
                    sys.exit(f"{name} ({getattr(args, name)}) failed:\n{log}")
            curves = {name: curve(w / "run") for name, w in works.items()}
            tests = {name: json.loads((w / "run" / "metrics.json").read_text())["test"] for name, w in works.items()}
        finally:
            for w in works.values():
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(w / "tree")],
                               capture_output=True)
    model = next(iter(tests["old"]))
    keys = ("hr@10", "ndcg@10", "mrr")
    line = {
        **provenance(__file__, argv),
        "old": args.old, "new": args.new, "epochs": args.epochs, "config": args.config, "data": "amazon_beauty",
        "curve_old": curves["old"], "curve_new": curves["new"],
        "test_old": {k: tests["old"][model][k] for k in keys}, "test_new": {k: tests["new"][model][k] for k in keys},
        "identical_curves": curves["old"] == curves["new"],
        "identical_test": all(tests["old"][model][k] == tests["new"][model][k] for k in keys),
        "max_abs_diff_test": max(abs(tests["old"][model][k] - tests["new"][model][k]) for k in keys),
        "wall_seconds": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(line))
    if args.results:
        with open(RESULTS / "reproduce.jsonl", "a") as f:
            f.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
