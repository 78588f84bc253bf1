"""Training and evaluating at 1M items: peak memory, speed, and sampled softmax vs chunked CE quality.

    nice -n 5 .venv/bin/python bench/large_catalogue.py [--items 1000000] [--steps 2] [--quality-epochs 3]

1. A synthetic catalogue (``--items``, Zipf item popularity, geometric history lengths; generated
   here, seeded) trains SASRec (d=64, max length 50) for a few steps with each loss — the chunked
   full softmax (models/chunked_ce.py, the default) and the sampled softmax (uniform negatives,
   alone and with in-batch negatives, logQ correction) — each in its own process, so ``ru_maxrss``
   is that loss's peak RSS. What the plain (materialised) cross-entropy would need is computed, not
   run: three (M, V) fp32 tensors.
2. Full-ranking evaluation of ``--eval-users`` histories over the same catalogue (random weights:
   the cost does not depend on them): seconds and peak RSS, with the score block capped by
   ``evaluation.ranking.SCORE_BLOCK``.
3. Quality and speed on Amazon Beauty, where both fit: validation NDCG@10 (bootstrap CI) after
   ``--quality-epochs`` epochs, chunked CE vs sampled softmax, for each seed, side by side.
Writes bench/results/large_catalogue.json.
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

import numpy as np
import torch
from common import RESULTS, ROOT, SHARED, load_or_prepare, machine, provenance

from shopformer.config import Config, load_config
from shopformer.data.batches import EventArrays, make_train_loader
from shopformer.data.corpus import DataSpec, make_split
from shopformer.data.ingest import IngestOptions
from shopformer.data.sequences import Sequences
from shopformer.data.split import leave_one_out
from shopformer.evaluation.ranking import evaluate, model_scorer
from shopformer.models import build_model
from shopformer.training.fit import fit, set_seed
from shopformer.training.objectives import make_sampler

BEAUTY = SHARED / "amazon_beauty" / "Beauty.txt"
SAMPLED = {"kind": "sampled", "negatives": 256, "sampler": "uniform", "logq_correction": True}
MIXED = {**SAMPLED, "in_batch": 1024}  # + up to 1,024 in-batch negatives (the batch's own targets)
LOSSES: dict[str, dict] = {"ce": {"kind": "ce"}, "sampled": SAMPLED, "mixed": MIXED}


def zipf_catalogue(n_items: int, n_users: int, mean_len: float = 12.0, a: float = 1.05, seed: int = 0,
                   min_len: int = 3) -> Sequences:
    """Histories of ``n_users`` users over ``n_items`` items: popularity ~ rank^-a (ids shuffled),
    lengths ``min_len`` + geometric (mean ``mean_len``)."""
    rng = np.random.default_rng(seed)
    lengths = min_len + rng.geometric(1.0 / max(mean_len - min_len, 1.0), n_users).clip(max=200)
    n = int(lengths.sum())
    cdf = np.cumsum(1.0 / np.arange(1, n_items + 1) ** a)
    ranks = np.searchsorted(cdf, rng.random(n) * cdf[-1])
    items = (rng.permutation(n_items)[ranks] + 1).astype(np.int32)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    pos = np.arange(n) - np.repeat(offsets[:-1], lengths)
    return Sequences(users=np.arange(n_users, dtype=np.int32), offsets=offsets, items=items,
                     behaviours=np.ones(n, dtype=np.int8), times=pos.astype(np.int64),
                     categories=np.zeros(n, dtype=np.int32), has_time=False)


def step_config(batch_size: int, loss: dict) -> Config:
    return Config().override(model={"name": "sasrec", "dim": 64, "layers": 2, "heads": 2, "max_len": 50},
                             train={"batch_size": batch_size, "epochs": 1, "threads": 1, "sliding_window": False},
                             loss=loss)


def run_step(n_items: int, loss_kind: str, batch_size: int, steps: int) -> dict:
    """A few training steps at ``n_items`` items in this process; its peak RSS."""
    torch.set_num_threads(1)
    # every training window full (51+ events): M = batch_size * 50 targets per step, the worst case
    seq = zipf_catalogue(n_items, n_users=max(batch_size * (steps + 1), 256), mean_len=60, min_len=53)
    split = leave_one_out(seq)
    cfg = step_config(batch_size, LOSSES[loss_kind])
    arrays = EventArrays.from_sequences(seq, cfg.model.time_buckets)
    loader = make_train_loader(cfg, seq, split.train_end, arrays)
    batches = [b for _, b in zip(range(steps + 1), loader, strict=False)]
    set_seed(0)
    model = build_model(cfg.model, DataSpec(n_items=n_items, n_behaviours=1))
    counts = np.bincount(seq.items, minlength=n_items + 1)
    sampler = make_sampler(cfg, n_items, counts)
    rss_model = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def objective(batch):  # noqa: ANN001, ANN202
        return model.loss(batch, cfg.loss, sampler)

    fit(model, cfg, loader=batches[:1], objective=objective, progress=False)  # warm-up: optimizer state exists
    t = time.perf_counter()
    c = time.process_time()
    fit(model, cfg, loader=batches[1:], objective=objective, progress=False)
    m = sum(int((b.targets != 0).sum()) for b in batches[1:])  # type: ignore[union-attr]
    return {"loss": loss_kind, "items": n_items, "batch_size": batch_size, "steps": steps, "targets": m,
            "seconds_per_step_wall": (time.perf_counter() - t) / steps,
            "seconds_per_step_cpu": (time.process_time() - c) / steps,
            "rss_after_build_mb": rss_model, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "plain_ce_logits_gb": 3 * m / steps * (n_items + 1) * 4 / 1e9, "load": os.getloadavg()[0]}


def run_eval(n_items: int, users: int) -> dict:
    torch.set_num_threads(1)
    seq = zipf_catalogue(n_items, n_users=users, seed=1)
    split = leave_one_out(seq)
    cfg = step_config(256, {"kind": "ce"})
    arrays = EventArrays.from_sequences(seq, cfg.model.time_buckets)
    set_seed(0)
    model = build_model(cfg.model, DataSpec(n_items=n_items, n_behaviours=1))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t, c = time.perf_counter(), time.process_time()
    evaluate(model_scorer(model), seq, arrays, split.test, n_items, 50, cfg.eval, bootstrap=False)
    return {"items": n_items, "users": len(split.test), "seconds": time.perf_counter() - t,
            "cpu_seconds": time.process_time() - c, "load": os.getloadavg()[0],
            "rss_before_mb": before, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def beauty_quality(epochs: int, seeds: list[int]) -> dict:
    from shopformer.pipelines.next_item import train_next_item

    ds = load_or_prepare(BEAUTY, IngestOptions(format="sequences"))
    out: dict = {}
    for seed in seeds:
        for name, loss in (("chunked_ce", {"kind": "ce"}), ("sampled_uniform_256_logq", SAMPLED)):
            cfg = load_config(ROOT / "configs" / "beauty.toml").override(
                train={"epochs": epochs, "seed": seed, "threads": 1, "patience": epochs}, loss=loss)
            split = make_split(ds, cfg)
            arrays = EventArrays.from_sequences(ds.seq, cfg.model.time_buckets)
            trained = train_next_item(ds, cfg, split, arrays)
            valid = evaluate(model_scorer(trained.model), ds.seq, arrays, split.valid, ds.spec.n_items,
                             cfg.model.max_len, cfg.eval).metrics
            out.setdefault(name, []).append({
                "seed": seed, "valid_ndcg@10": valid["ndcg@10"], "ci95": valid["ci95"]["ndcg@10"],
                "valid_hr@10": valid["hr@10"], "train_seconds": trained.fit.train_seconds,
                "tokens_per_second": trained.fit.tokens_per_second, "load": os.getloadavg()[0]})
    for rows in out.values():
        rows.append({"mean_ndcg@10": float(np.mean([r["valid_ndcg@10"] for r in rows])),
                     "mean_tokens_per_second": float(np.mean([r["tokens_per_second"] for r in rows]))})
    return out


def child(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, timeout=3000)
    if proc.returncode:
        return {"error": proc.stderr.strip().splitlines()[-3:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--eval-users", type=int, default=2000)
    ap.add_argument("--quality-epochs", type=int, default=3, help="0: skip the Beauty comparison")
    ap.add_argument("--seeds", default="42,43")
    ap.add_argument("--no-scale", action="store_true", help="only the Beauty comparison (skip parts 1 and 2)")
    ap.add_argument("--child", choices=[*LOSSES, "eval"], help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(RESULTS / "large_catalogue.json"))
    args = ap.parse_args(argv)
    if args.child == "eval":
        print(json.dumps(run_eval(args.items, args.eval_users)))
        return
    if args.child:
        print(json.dumps(run_step(args.items, args.child, args.batch_size, args.steps)))
        return
    common = ["--items", str(args.items), "--batch-size", str(args.batch_size), "--steps", str(args.steps)]
    result: dict = {**provenance(__file__, argv), "items": args.items}
    if not args.no_scale:
        result["step"] = {k: child([*common, "--child", k]) for k in LOSSES}
        result["eval"] = child(["--items", str(args.items), "--eval-users", str(args.eval_users), "--child", "eval"])
    if args.quality_epochs and BEAUTY.exists():
        torch.set_num_threads(1)
        result["beauty_quality"] = {"epochs": args.quality_epochs,
                                    **beauty_quality(args.quality_epochs, [int(s) for s in args.seeds.split(",")])}
    result.update({"loadavg": os.getloadavg(), "machine": machine()})
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k in ("step", "eval", "beauty_quality")}))


if __name__ == "__main__":
    main()
