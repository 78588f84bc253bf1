"""The SASRec training step on Amazon Beauty against this machine's measured fp32 matmul rate.

    nice -n 5 .venv/bin/python bench/train_step.py [--steps 30] [--rounds 2] [--quality-epochs 4]

The same fixed list of real Beauty batches (d=64, batch 256, max length 50, full cross-entropy over
12,101 items) is trained by ``fit`` under each variant, each in its own process (so rusage, page
faults and peak RSS are its own), alternating variants over ``--rounds`` so that a load change on
the shared machine hits all of them alike:

- ``plain``: the (M, V) logits materialised and ``F.cross_entropy`` (the former path);
- ``chunked`` (the default): models/chunked_ce.py, gradients fused into the forward pass,
  one reused 16 MiB workspace (``chunked_1M`` / ``chunked_16M``: other block budgets);
- ``plain_malloc``: the plain path with glibc told to keep freed memory (MALLOC_MMAP_THRESHOLD_ /
  MALLOC_TRIM_THRESHOLD_, see docs/scale-training.md);
- ``chunked_bf16``: bf16 autocast of the encoder (train.precision=bf16);
- ``chunked_compile``: torch.compile of the encoder (train.compile=true), after warm-up steps.

Rates are FLOPs per CPU second (user + system, one thread), matmul FLOPs counted by torch's
FlopCounterMode on the plain path, so every variant is credited with the same work; the matmul
peak is measured the same way in the same run. Also recorded: kernel share of CPU time, minor page
faults per step, peak RSS, the time of full-ranking evaluation of all users, and (``--quality-epochs``)
validation NDCG@10 of plain vs chunked (vs bf16) after the same short training, two seeds each.
Writes bench/results/train_step.json.
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
from common import RESULTS, ROOT, SHARED, load_or_prepare, machine, provenance, skip_if_missing
from torch.utils.flop_counter import FlopCounterMode

from shopformer.config import Config, load_config
from shopformer.data.batches import Batch, EventArrays, make_train_loader
from shopformer.data.corpus import Dataset, make_split
from shopformer.data.ingest import IngestOptions
from shopformer.data.schema import PAD
from shopformer.evaluation.ranking import evaluate, model_scorer
from shopformer.models import build_model
from shopformer.models.base import LossOutput, SequenceModel
from shopformer.models.losses import full_cross_entropy
from shopformer.training.fit import fit, set_seed

BEAUTY = SHARED / "amazon_beauty" / "Beauty.txt"
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 32),
              "MALLOC_TOP_PAD_": str(1 << 28)}
# variant -> (CE block budget or None for the plain path, config overrides, extra environment)
VARIANTS: dict[str, tuple[int | None, dict, dict]] = {
    "plain": (None, {}, {}),
    "chunked": (1 << 22, {}, {}),
    "chunked_1M": (1 << 20, {}, {}),
    "chunked_16M": (1 << 24, {}, {}),
    "plain_malloc": (None, {}, MALLOC_ENV),
    "chunked_bf16": (1 << 22, {"precision": "bf16"}, {}),
    "chunked_compile": (1 << 22, {"compile": True}, {}),
}


def beauty_config(batch_size: int) -> Config:
    cfg = load_config(ROOT / "configs" / "beauty.toml")
    return cfg.override(train={"batch_size": batch_size, "threads": 1})


def fixed_batches(ds: Dataset, cfg: Config, n: int) -> list[Batch]:
    split = make_split(ds, cfg)
    arrays = EventArrays.from_sequences(ds.seq, cfg.model.time_buckets)
    loader = make_train_loader(cfg.override(train={"seed": 0}), ds.seq, split.train_end, arrays)
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) == n:
            break
    return out


def item_objective(model: SequenceModel, budget: int | None):  # noqa: ANN201
    """The model's next-item loss with an explicit CE block budget (None: the plain path)."""

    def objective(batch: Batch) -> LossOutput:
        assert batch.targets is not None
        h = model.encode(batch)
        real = batch.targets != PAD
        loss = full_cross_entropy(h[real], batch.targets[real], model.output_embeddings(), 0.0, model.cold_items(),
                                  budget=budget)
        return LossOutput(loss, {})

    return objective


def matmul_peak(n: int = 1024, repeat: int = 8, tries: int = 5) -> float:
    """Best fp32 matmul GFLOP per CPU second (one thread) over a few tries."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = 0.0
    for _ in range(tries):
        t = time.process_time()
        for _ in range(repeat):
            a @ b
        best = max(best, 2 * n**3 * repeat / max(time.process_time() - t, 1e-9) / 1e9)
    return best


def count_flops(ds: Dataset, cfg: Config, batches: list[Batch]) -> float:
    set_seed(0)
    model = build_model(cfg.model, ds.spec)
    obj = item_objective(model, None)
    with FlopCounterMode(display=False) as counter:
        for batch in batches:
            obj(batch).total.backward()
    return float(counter.get_total_flops())


def run_variant(name: str, steps: int, warm: int, batch_size: int) -> dict:
    budget, overrides, _ = VARIANTS[name]
    torch.set_num_threads(1)
    ds = load_or_prepare(BEAUTY, IngestOptions(format="sequences"))
    cfg = beauty_config(batch_size)
    batches = fixed_batches(ds, cfg, warm + steps)
    cfg = cfg.override(train={"epochs": 1, "warmup_steps": 0, "schedule": "constant", **overrides})
    set_seed(0)
    model = build_model(cfg.model, ds.spec)
    obj = item_objective(model, budget)
    t_compile = time.perf_counter()
    fit(model, cfg, loader=batches[:warm], objective=obj, progress=False)
    warm_s = time.perf_counter() - t_compile
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    fit(model, cfg, loader=batches[warm:], objective=obj, progress=False)
    wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    user, system = r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime
    return {"variant": name, "steps": steps, "wall_s": wall, "user_s": user, "sys_s": system,
            "minflt_per_step": (r1.ru_minflt - r0.ru_minflt) / steps, "warmup_s": warm_s,
            "peak_rss_mb": peak_rss_mb(), "load": os.getloadavg()[0]}


def peak_rss_mb() -> float:
    """This process's own peak RSS (VmHWM: unlike ru_maxrss it is not inherited from the parent)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def eval_seconds(ds: Dataset, cfg: Config) -> dict:
    """Full-ranking evaluation of every validation user (random weights: the cost does not depend on them)."""
    split = make_split(ds, cfg)
    arrays = EventArrays.from_sequences(ds.seq, cfg.model.time_buckets)
    set_seed(0)
    model = build_model(cfg.model, ds.spec)
    t, c = time.perf_counter(), time.process_time()
    evaluate(model_scorer(model), ds.seq, arrays, split.valid, ds.spec.n_items, cfg.model.max_len, cfg.eval,
             bootstrap=False)
    return {"users": len(split.valid), "items": ds.spec.n_items, "wall_s": round(time.perf_counter() - t, 2),
            "cpu_s": round(time.process_time() - c, 2), "threads": torch.get_num_threads()}


def quality(ds: Dataset, epochs: int, seeds: list[int], variants: list[str]) -> dict:
    """Validation NDCG@10 after ``epochs`` epochs (schedule spanning them), per variant and seed."""
    from shopformer.pipelines.next_item import train_next_item

    out: dict = {}
    for name in variants:
        budget, overrides, _ = VARIANTS[name]
        rows = []
        for seed in seeds:
            cfg = load_config(ROOT / "configs" / "beauty.toml").override(
                train={"epochs": epochs, "seed": seed, "threads": 1, "patience": epochs, **overrides})
            split = make_split(ds, cfg)
            arrays = EventArrays.from_sequences(ds.seq, cfg.model.time_buckets)
            loss_path = None if budget is not None else "plain"
            t = time.perf_counter()
            trained = _train_with_budget(train_next_item, ds, cfg, split, arrays, loss_path)
            valid = evaluate(model_scorer(trained.model), ds.seq, arrays, split.valid, ds.spec.n_items,
                             cfg.model.max_len, cfg.eval).metrics  # with the bootstrap CI
            rows.append({"seed": seed, "valid_ndcg@10": valid["ndcg@10"], "ci95": valid["ci95"]["ndcg@10"],
                         "train_seconds": trained.fit.train_seconds, "wall_s": time.perf_counter() - t})
        vals = [r["valid_ndcg@10"] for r in rows]
        out[name] = {"runs": rows, "mean": float(np.mean(vals)), "std": float(np.std(vals))}
    return out


def _train_with_budget(train_next_item, ds, cfg, split, arrays, loss_path):  # noqa: ANN001, ANN202
    """train_next_item, with the plain CE path swapped in for ``loss_path == "plain"``."""
    if loss_path != "plain":
        return train_next_item(ds, cfg, split, arrays)
    import shopformer.models.base as base

    original = base.full_cross_entropy

    def plain(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        return original(*args, **kwargs, budget=None)

    base.full_cross_entropy = plain  # type: ignore[assignment]
    try:
        return train_next_item(ds, cfg, split, arrays)
    finally:
        base.full_cross_entropy = original  # type: ignore[assignment]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warm", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--quality-epochs", type=int, default=0, help="0: skip the quality runs")
    ap.add_argument("--quality-variants", default="plain,chunked")
    ap.add_argument("--quality-seeds", default="42,43")
    ap.add_argument("--variant", help=argparse.SUPPRESS)  # internal: run one variant in this process
    ap.add_argument("--out", default=str(RESULTS / "train_step.json"))
    args = ap.parse_args(argv)
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.steps, args.warm, args.batch_size)))
        return
    skip_if_missing(BEAUTY, "train_step")
    torch.set_num_threads(1)
    ds = load_or_prepare(BEAUTY, IngestOptions(format="sequences"))
    cfg = beauty_config(args.batch_size)
    batches = fixed_batches(ds, cfg, args.warm + args.steps)
    flops = count_flops(ds, cfg, batches[args.warm:])
    targets = sum(int((b.targets != 0).sum()) for b in batches[args.warm:])  # type: ignore[union-attr]
    names = args.variants.split(",")
    runs: dict[str, list[dict]] = {n: [] for n in names}
    peaks = []
    for _ in range(args.rounds):
        peaks.append(matmul_peak())
        for name in names:
            env = {**os.environ, **VARIANTS[name][2]}
            cmd = [sys.executable, __file__, "--variant", name, "--steps", str(args.steps), "--warm", str(args.warm),
                   "--batch-size", str(args.batch_size)]
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
            if proc.returncode:
                runs[name].append({"error": proc.stderr.strip().splitlines()[-1:]})
                continue
            runs[name].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    peak = max(peaks, default=float("nan"))
    summary = {}
    for name, rs in runs.items():
        ok = [r for r in rs if "error" not in r]
        if not ok:
            summary[name] = {"error": rs[0]["error"] if rs else "not run"}
            continue
        best = min(ok, key=lambda r: r["user_s"] + r["sys_s"])
        cpu = best["user_s"] + best["sys_s"]
        summary[name] = {
            "gflops_per_cpu_s": round(flops / cpu / 1e9, 2),
            "matmul_peak_share": round(flops / cpu / 1e9 / peak, 3),
            "kernel_share": round(best["sys_s"] / cpu, 3),
            "minflt_per_step": round(best["minflt_per_step"]),
            "ms_per_step_cpu": round(1000 * cpu / args.steps, 1),
            "ms_per_step_wall": round(1000 * best["wall_s"] / args.steps, 1),
            "peak_rss_mb": round(best["peak_rss_mb"]),
            "warmup_s": round(best["warmup_s"], 1),
        }
    result = {
        **provenance(__file__, argv),
        "workload": {"data": "Amazon Beauty", "d": cfg.model.dim, "batch_size": args.batch_size,
                     "max_len": cfg.model.max_len, "items": ds.spec.n_items, "steps": args.steps,
                     "targets": targets, "matmul_gflop": round(flops / 1e9, 2)},
        "matmul_peak_gflops_per_cpu_s": round(peak, 2),
        "matmul_peaks": [round(p, 2) for p in peaks],
        "summary": summary,
        "runs": runs,
        "eval_full_ranking": eval_seconds(ds, cfg) if args.rounds else None,
        "loadavg": os.getloadavg(),
        "machine": machine(),
        "cpu_bf16_native": any(f in Path("/proc/cpuinfo").read_text() for f in ("amx_bf16", "avx512_bf16")),
    }
    if args.quality_epochs:
        seeds = [int(s) for s in args.quality_seeds.split(",")]
        result["quality"] = {"epochs": args.quality_epochs, "seeds": seeds,
                             **quality(ds, args.quality_epochs, seeds, args.quality_variants.split(","))}
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result["summary"]))


if __name__ == "__main__":
    main()
