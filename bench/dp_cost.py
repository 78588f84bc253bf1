"""Accuracy cost of differentially private training (train.dp, DP-SGD) on Amazon Beauty.

The same SASRec config (configs/beauty.toml, a small epoch budget, one window per user so the
privacy unit is the user) trained without DP and with DP at a few noise multipliers; per run the
test HR@10 / NDCG@10 (full ranking, leave-one-out) and the (epsilon, delta) spent. ``--users``
keeps the first N users of Beauty.txt: DP-SGD takes per-example gradients one example at a time
(training/privacy.py), which a shared 2-core box affords only on a slice. One JSON line per run,
appended as each finishes, to bench/results/dp_cost.jsonl.

    nice -n 5 .venv/bin/python bench/dp_cost.py --users 2000 --epochs 4 --sigmas 0.8,2.0 \
        --set train.learning_rate=0.005 --set train.warmup_steps=0
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from common import provenance

from shopformer.config import apply_overrides, load_config
from shopformer.data.ingest import IngestOptions
from shopformer.data.prepare import prepare
from shopformer.pipelines.next_item import run_experiment

ROOT = Path(__file__).resolve().parents[1]
BEAUTY = ROOT.parent / "shared" / "data" / "amazon_beauty" / "Beauty.txt"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--users", type=int, default=2000, help="first N users of Beauty.txt (0: all)")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--sigmas", default="0.6,1.2", help="noise multipliers of the DP runs")
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--delta", type=float, default=None, help="default: 1 / (10 * users)")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   help="config override for every run (e.g. train.learning_rate=0.005)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "dp_cost.jsonl")
    args = p.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="shopformer-dp-") as tmp:
        lines = BEAUTY.read_text().splitlines()
        lines = lines[: args.users] if args.users else lines
        src = Path(tmp) / "beauty_head.txt"
        src.write_text("\n".join(lines) + "\n")
        ds = prepare([src], Path(tmp) / "ds", IngestOptions(format="sequences")).path
        delta = args.delta or 1.0 / (10 * len(lines))
        base = apply_overrides(load_config(ROOT / "configs" / "beauty.toml"), [
            f"train.epochs={args.epochs}", f"train.patience={args.epochs}", "train.sliding_window=false",
            "eval.bootstrap=0", "train.threads=1", *args.overrides])
        runs: list[tuple[str, list[str]]] = [("no-dp", [])]
        for s in args.sigmas.split(","):
            dp = json.dumps({"noise_multiplier": float(s), "max_grad_norm": args.clip, "delta": delta})
            runs.append((f"dp-sigma-{s}", [f"train.dp={dp}"]))
        for name, extra in runs:
            cfg = apply_overrides(base, extra)
            t0, load = time.monotonic(), os.getloadavg()
            res = run_experiment(ds, cfg, Path(tmp) / name, progress=False)
            metrics = json.loads((res.run_dir / "metrics.json").read_text())
            test = metrics["test"][cfg.model.name]
            row = {**provenance(__file__), "run": name, "users": len(lines), "epochs": args.epochs,
                   "hr@10": test.get("hr@10"), "ndcg@10": test.get("ndcg@10"),
                   "privacy": metrics["fit"].get("privacy"), "best_epoch": metrics["fit"]["best_epoch"],
                   "seconds": round(time.monotonic() - t0, 1), "loadavg_before": [round(x, 2) for x in load],
                   "loadavg_after": [round(x, 2) for x in os.getloadavg()]}
            print(json.dumps(row), flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
