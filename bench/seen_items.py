"""Why shopformer SASRec trails RecBole when seen items are kept (bench/results/peers_beauty*.json).

    .venv/bin/python bench/seen_items.py --epochs 8 --threads 1

Trains the peers configuration (d=64, 2 layers, 2 heads, dropout 0.5, max length 50, batch 32, lr 2e-3 cosine) on
Amazon Beauty for a few epochs, then on the validation examples measures NDCG@10 with seen items kept and removed,
the share of top-10 slots held by items already in the history, and how often the top-1 item is the user's newest
event itself (Beauty has almost no repeats, so that slot is nearly always wasted). Appends one JSON line to
bench/results/seen_items.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from common import RESULTS, SHARED, load_or_prepare, provenance, skip_if_missing

from shopformer.config import Config
from shopformer.data.batches import EventArrays, history_batches
from shopformer.data.corpus import make_split
from shopformer.data.options import IngestOptions
from shopformer.evaluation.ranking import evaluate, model_scorer
from shopformer.pipelines.next_item import _train_once

BEAUTY = SHARED / "amazon_beauty" / "Beauty.txt"


def main(argv: list[str] | None = None, variant: str | None = None) -> None:
    """``variant``: set by bench/seen_items_variants.py, which patches the model before calling this."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--norm", choices=["pre", "post"], default="pre", help="model.norm (layers.Block)")
    ap.add_argument("--untied", action="store_true", help="model.tie_output = false")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--out", type=Path, default=RESULTS / "seen_items.jsonl")
    args = ap.parse_args(argv)
    skip_if_missing(BEAUTY, "seen_items")
    torch.set_num_threads(args.threads)
    ds = load_or_prepare(BEAUTY, IngestOptions(format="sequences"))
    cfg = Config().override(
        model={"name": "sasrec", "dim": 64, "layers": 2, "heads": 2, "dropout": 0.5, "emb_dropout": 0.5,
               "max_len": 50, "norm": args.norm,
               "tie_output": not args.untied},
        train={"epochs": 60, "batch_size": 32, "learning_rate": 0.002, "schedule": "cosine", "warmup_steps": 20,
               "patience": 10, "seed": args.seed, "threads": args.threads},
        eval={"exclude_seen": False, "bootstrap": 0})
    split = make_split(ds, cfg)
    arrays = EventArrays.from_sequences(ds.seq, cfg.model.time_buckets)
    model, fit, _, _ = _train_once(ds, cfg, split, arrays, split.train_end, split.valid, args.epochs, None, None,
                                   True, None)
    fn = model_scorer(model)
    n_items, window = ds.spec.n_items, cfg.model.max_len
    kept = evaluate(fn, ds.seq, arrays, split.valid, n_items, window, cfg.eval).metrics
    removed = evaluate(fn, ds.seq, arrays, split.valid, n_items, window,
                       cfg.eval.model_copy(update={"exclude_seen": True})).metrics
    in_history = last_first = n = 0.0
    model.eval()
    with torch.no_grad():
        for _, batch in history_batches(ds.seq, arrays, split.valid, window, 512):
            top = fn(batch).topk(10, dim=1).indices  # (B, 10)
            hist = batch.items  # (B, L), left padded: the newest event is the last column
            seen = (top.unsqueeze(2) == hist.unsqueeze(1)).any(2) & (top != 0)
            in_history += seen.float().mean(1).sum().item()
            last_first += (top[:, 0] == hist[:, -1]).sum().item()
            n += len(top)
    row = {**provenance(__file__ if variant is None else str(Path(__file__).with_name("seen_items_variants.py")),
                        argv if variant is None else [variant, *(argv or [])]),
           "variant": variant, "norm": args.norm,
           "tie_output": not args.untied, "seed": args.seed, "epochs": fit.epochs, "examples": int(n),
           "valid_ndcg@10_seen_kept": round(float(kept["ndcg@10"]), 5),
           "valid_ndcg@10_seen_removed": round(float(removed["ndcg@10"]), 5),
           "top10_share_history_items": round(in_history / n, 4), "top1_is_newest_event": round(last_first / n, 4),
           "load": [round(x, 2) for x in os.getloadavg()]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row))


if __name__ == "__main__":
    main()
