"""Multi-process training on Amazon Beauty: 2 processes vs 1, same epochs, same global batch.

    nice -n 5 .venv/bin/python bench/ddp.py [--epochs 2] [--seeds 42] [--procs 1,2]

Each configuration runs under ``torchrun --standalone --nproc-per-node N`` (gloo, one thread per
process) through ``train_next_item``, the path ``shopformer train`` takes; rank 0 records the
validation NDCG@10 of the selected model (with its bootstrap CI) and the training throughput
(targets per second summed over ranks). Runs alternate between process counts so that a load
change on the shared machine hits both. Writes bench/results/ddp.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from common import RESULTS, ROOT, SHARED, load_or_prepare, machine, provenance, skip_if_missing

from shopformer.data.ingest import IngestOptions

BEAUTY = SHARED / "amazon_beauty" / "Beauty.txt"


def worker(epochs: int, seed: int, out: Path) -> None:
    import torch

    from shopformer.config import load_config
    from shopformer.data.batches import EventArrays
    from shopformer.data.corpus import make_split
    from shopformer.evaluation.ranking import evaluate, model_scorer
    from shopformer.pipelines.next_item import train_next_item
    from shopformer.training import distributed

    torch.set_num_threads(1)
    ds = load_or_prepare(BEAUTY, IngestOptions(format="sequences"))
    cfg = load_config(ROOT / "configs" / "beauty.toml").override(
        train={"epochs": epochs, "seed": seed, "threads": 1, "patience": epochs})
    split = make_split(ds, cfg)
    arrays = EventArrays.from_sequences(ds.seq, cfg.model.time_buckets)
    trained = train_next_item(ds, cfg, split, arrays)
    if not distributed.is_main():
        return
    valid = evaluate(model_scorer(trained.model), ds.seq, arrays, split.valid, ds.spec.n_items, cfg.model.max_len,
                     cfg.eval).metrics
    out.write_text(json.dumps({
        "world": distributed.world()[1], "seed": seed, "epochs": trained.fit.epochs,
        "valid_ndcg@10": valid["ndcg@10"], "ci95": valid["ci95"]["ndcg@10"], "valid_hr@10": valid["hr@10"],
        "train_seconds": trained.fit.train_seconds, "tokens_per_second": trained.fit.tokens_per_second,
        "load": os.getloadavg()[0]}))


def launch(procs: int, epochs: int, seed: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(procs),
               __file__, "--worker", "--epochs", str(epochs), "--seeds", str(seed), "--result", str(out)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=7200)
        if proc.returncode or not out.exists():
            return {"procs": procs, "seed": seed, "error": proc.stderr.strip().splitlines()[-5:]}
        return {"procs": procs, **json.loads(out.read_text())}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--seeds", default="42")
    ap.add_argument("--procs", default="1,2")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(RESULTS / "ddp.json"))
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.epochs, int(args.seeds), Path(args.result))
        return
    skip_if_missing(BEAUTY, "ddp")
    load_or_prepare(BEAUTY, IngestOptions(format="sequences"))  # prepared once, before the workers race for it
    runs = [launch(int(p), args.epochs, int(s)) for s in args.seeds.split(",") for p in args.procs.split(",")]
    summary: dict = {}
    for p in args.procs.split(","):
        ok = [r for r in runs if r["procs"] == int(p) and "error" not in r]
        if ok:
            summary[p] = {"valid_ndcg@10": float(np.mean([r["valid_ndcg@10"] for r in ok])),
                          "tokens_per_second": float(np.mean([r["tokens_per_second"] for r in ok]))}
    procs = args.procs.split(",")
    if len(summary) == len(procs) == 2:
        a, b = (summary[p] for p in procs)
        summary["ndcg_relative_difference"] = (b["valid_ndcg@10"] - a["valid_ndcg@10"]) / a["valid_ndcg@10"]
        summary["throughput_ratio"] = b["tokens_per_second"] / a["tokens_per_second"]
    result = {**provenance(__file__, argv), "epochs": args.epochs, "summary": summary, "runs": runs,
              "note": "global batch = train.batch_size split across processes; gloo; 1 thread per process",
              "loadavg": os.getloadavg(), "machine": machine()}
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
