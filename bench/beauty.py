"""Amazon Beauty benchmark: LOO, full ranking over all 12,101 items, seen items removed.

    python bench/beauty.py [--config configs/beauty.toml] [--set section.key=value ...]
    python bench/beauty.py --set train.refit=true    # + re-train on train + validation for the chosen epochs

Prints one JSON line: test HR/NDCG@5/10/20, MRR, coverage, epochs, train seconds, tokens/s,
achieved GFLOP/s of the training step (matmul FLOPs counted by torch's FlopCounterMode) and
the machine's measured fp32 matmul GFLOP/s in the same run, so the ratio is comparable.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from common import ROOT, SHARED, machine, matmul_gflops, peak_rss_mb, provenance, skip_if_missing
from torch.utils.flop_counter import FlopCounterMode

from shopformer.config import apply_overrides, load_config
from shopformer.data.batches import EventArrays, make_train_loader
from shopformer.data.corpus import Dataset, load_dataset, make_split
from shopformer.data.ingest import IngestOptions
from shopformer.data.prepare import prepare
from shopformer.evaluation.baselines import item_counts
from shopformer.models import build_model
from shopformer.pipelines.next_item import run_experiment
from shopformer.training.objectives import make_sampler


def train_step_flops(ds: Dataset, cfg, n_batches: int = 20) -> float:
    """Matmul FLOPs per training target (forward + backward), measured on real batches."""
    split = make_split(ds, cfg)
    arrays = EventArrays.from_sequences(ds.seq, cfg.model.time_buckets)
    loader = make_train_loader(cfg.override(train={"seed": 0}), ds.seq, split.train_end, arrays)
    model = build_model(cfg.model, ds.spec)
    sampler = make_sampler(cfg, ds.spec.n_items, item_counts(ds.seq, split.train_end, ds.spec.n_items))
    flops, targets = 0, 0
    for i, batch in enumerate(loader):
        if i == n_batches:
            break
        with FlopCounterMode(display=False) as counter:
            model.loss(batch, cfg.loss, sampler).total.backward()
        flops += counter.get_total_flops()
        targets += int((batch.targets != 0).sum())
    return flops / max(targets, 1)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "beauty.toml"))
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    ap.add_argument("--out", default=None, help="run directory (default: a temporary one)")
    args = ap.parse_args(argv)
    src = SHARED / "amazon_beauty" / "Beauty.txt"
    skip_if_missing(src, "beauty")
    cfg = apply_overrides(load_config(args.config), args.overrides)
    torch.set_num_threads(cfg.train.threads or torch.get_num_threads())
    gflops_machine = matmul_gflops()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out) if args.out else Path(tmp) / "run"
        t0 = time.perf_counter()
        prepared = prepare([src], Path(tmp) / "beauty", IngestOptions(format="sequences"))
        prepare_s = time.perf_counter() - t0
        ds = load_dataset(prepared.path)
        flops_per_target = train_step_flops(ds, cfg)
        res = run_experiment(ds, cfg, out, progress=False)
    m = res.test[cfg.model.name]
    fit = res.fit
    achieved = flops_per_target * fit.tokens_per_second / 1e9
    line = {
        **provenance(__file__, argv),
        "protocol": "LOO, full ranking over 12,101 items, seen items removed, ties pessimistic",
        "config": args.config,
        "overrides": args.overrides,
        "model": cfg.model.name,
        **{k: round(m[k], 5) for k in ("hr@5", "hr@10", "hr@20", "ndcg@5", "ndcg@10", "ndcg@20", "mrr")},
        "coverage@10": round(m["coverage@10"], 4),
        "ci95_ndcg@10": [round(x, 5) for x in m["ci95"]["ndcg@10"]],
        "ci95_hr@10": [round(x, 5) for x in m["ci95"]["hr@10"]],
        "valid_ndcg@10": round(res.valid["ndcg@10"], 5),
        "baselines": {name: {k: round(res.test[name][k], 5) for k in ("hr@10", "ndcg@10", "mrr")}
                      for name in res.test if name != cfg.model.name},
        "epochs": fit.epochs,
        "best_epoch": fit.best_epoch,
        "stopped_by": fit.stopped_by,
        "train_seconds": round(fit.train_seconds, 1),
        **({"refit_epochs": res.refit.epochs, "refit_train_seconds": round(res.refit.train_seconds, 1),
            "total_train_minutes": round((fit.train_seconds + res.refit.train_seconds) / 60, 1)} if res.refit else {}),
        "seconds_per_epoch": round(fit.train_seconds / max(fit.epochs, 1), 2),
        "train_tokens_per_second": round(fit.tokens_per_second),
        "train_gflops_per_second": round(achieved, 2),
        "machine_matmul_gflops": round(gflops_machine, 1),
        "train_matmul_utilisation": round(achieved / gflops_machine, 3),
        "prepare_seconds": round(prepare_s, 2),
        "peak_rss_mb": round(peak_rss_mb()),
        "machine": machine(),
    }
    print(json.dumps(line))


if __name__ == "__main__":
    main()
