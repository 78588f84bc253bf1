"""Run by tests/test_ddp.py under torchrun (2 processes, gloo, 1 thread each).

Usage: ddp_worker.py DATASET OUT WEIGHTS_DIR. Trains the next-item model twice on the prepared
dataset: once through ``train_next_item`` to save each rank's final weights in WEIGHTS_DIR (for
comparison, outside any run), once through ``run_experiment`` into OUT, as ``shopformer train``
does (rank 0 alone should write there)."""

import json
import sys
from pathlib import Path

import torch

from shopformer.config import Config, apply_overrides
from shopformer.data.batches import EventArrays
from shopformer.data.corpus import load_dataset, make_split
from shopformer.pipelines.next_item import run_experiment, train_next_item
from shopformer.training import distributed

SETTINGS = ["model.dim=16", "model.layers=1", "model.heads=1", "model.max_len=12", "train.epochs=3",
            "train.batch_size=32", "train.threads=1", "eval.bootstrap=0", "augment.crop=0.3"]

if __name__ == "__main__":
    dataset, out, weights = (Path(a) for a in sys.argv[1:4])
    torch.set_num_threads(1)
    cfg = apply_overrides(Config(), SETTINGS)
    ds = load_dataset(dataset)
    split = make_split(ds, cfg)
    trained = train_next_item(ds, cfg, split, EventArrays.from_sequences(ds.seq, cfg.model.time_buckets))
    rank, world = distributed.world()
    weights.mkdir(parents=True, exist_ok=True)
    torch.save(trained.model.state_dict(), weights / f"rank{rank}.pt")
    res = run_experiment(ds, cfg, out, progress=False)
    (weights / f"rank{rank}.json").write_text(json.dumps({
        "world": world, "table": bool(res.table), "valid_ndcg@10": trained.valid["ndcg@10"]}))
