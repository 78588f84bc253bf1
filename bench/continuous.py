"""Continuous learning replay: a log in time order, day by day, through the model registry.

    nice -n 10 .venv/bin/python bench/continuous.py | tee -a bench/results/continuous.jsonl
    .venv/bin/python bench/continuous.py --quick          # smoke run: tiny model, 2 replay days (< 3 min)

A model is trained on the first ``--initial-days`` days and imported into two registries. Then, for
each following day d: that day's events are ingested, and every system predicts day d + 1:

(a) ``frozen``  the initial model, never retrained;
(b) ``warm``    ``retrain`` (warm start from the current version, the gate against it, ``--promote``);
(c) ``scratch`` a full retrain from scratch on everything up to day d, promoted every day;
(d) the best shop heuristic, fitted on everything up to day d.

Next-day examples are the first event of each user on day d + 1 that has a history (any item, and
the first purchase for "next purchase"); full ranking, seen items kept (shop repeats). Also: the
share of next-day targets on items born after the initial training and each system's NDCG@10 on
those. At the end the warm registry is rolled back once and the previous version's answers are
compared with the ones recorded while it was current (byte for byte). One JSON line per run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch
from common import ROOT, machine, peak_rss_mb, provenance

from shopformer.artifacts import load_run
from shopformer.config import Config, apply_overrides
from shopformer.data.batches import EventArrays
from shopformer.data.corpus import load_dataset
from shopformer.data.growth import prepare_window
from shopformer.data.ingest import IngestOptions
from shopformer.data.prepare import prepare
from shopformer.data.split import temporal_split
from shopformer.evaluation.baselines import shop_baselines
from shopformer.evaluation.metrics import per_example
from shopformer.evaluation.ranking import ScoreFn, evaluate
from shopformer.pipelines.continuous import RetrainOptions, add_run, build_candidate, retrain
from shopformer.pipelines.gate import GateConfig, old_model_scorer
from shopformer.pipelines.next_item import run_experiment
from shopformer.pipelines.registry import Registry
from shopformer.recommender import Recommender

DAY = 86_400
TAOBAO = ROOT / "data" / "demo" / "taobao_head300.csv"
TAOBAO_COLUMNS = "user_id,item_id,category_id,behaviour,timestamp"


def split_days(raw: Path, opts: IngestOptions, out: Path) -> list[Path]:
    """The raw log cut into one CSV per UTC day (canonical columns, with a header), oldest first. Stray
    leading days (under 10% of the median day's events, e.g. a few events weeks early) join the
    first real day."""
    prepared = prepare([raw], out / "all", opts)
    events = pl.read_parquet(prepared.path / "events.parquet", columns=["user_id", "item_id", "category_id",
                                                                        "behaviour", "timestamp"])
    day = pl.col("timestamp") // DAY
    counts = events.group_by(day.alias("d")).len().sort("d")
    real = counts.filter(pl.col("len") >= 0.1 * counts["len"].median())["d"]  # type: ignore[operator]
    events = events.with_columns(pl.max_horizontal(day, pl.lit(real.min())).alias("_day"))
    files = []
    for (d,), part in events.sort("timestamp", maintain_order=True).group_by("_day", maintain_order=True):
        path = out / f"day_{d}.csv"
        part.drop("_day").write_csv(path)
        files.append(path)
    return files


def next_day(eval_dir: Path, systems: dict[str, ScoreFn], cfg: Config, born: int, baselines: bool) -> dict:
    """Every system on the first event of each user on the newest day (any item; first purchase)."""
    ds = load_dataset(eval_dir)
    day_start = int(ds.seq.times.max()) // DAY * DAY
    arrays = EventArrays.from_sequences(ds.seq, cfg.model.time_buckets)
    ecfg = cfg.eval.model_copy(update={"bootstrap": 0})
    out: dict = {}
    _, target = ds.target_behaviour(None)
    for task, behaviour in (("next_item", None), ("next_purchase", target)):
        split = temporal_split(ds.seq, day_start, int(ds.seq.times.max()) + 1, behaviour)
        pool = dict(systems)
        if baselines:
            pool.update(shop_baselines(ds.seq, split.train_end, ds.spec.n_items, ds.spec.n_behaviours, behaviour))
        targets = ds.seq.items[split.valid.pos]
        new = targets > born
        row: dict = {"examples": len(split.valid), "new_item_share": float(new.mean()) if len(new) else 0.0}
        for name, fn in pool.items():
            res = evaluate(fn, ds.seq, arrays, split.valid, ds.spec.n_items, cfg.model.max_len, ecfg, bootstrap=False)
            ndcg = per_example(res.ranks, (10,))["ndcg@10"]
            row[name] = {"ndcg@10": res.metrics["ndcg@10"], "hr@10": res.metrics["hr@10"],
                         "ndcg@10_new_items": float(ndcg[new].mean()) if new.any() else None}
        out[task] = row
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=TAOBAO)
    ap.add_argument("--columns", default=TAOBAO_COLUMNS)
    ap.add_argument("--initial-days", type=int, default=5)
    ap.add_argument("--days", type=int, default=None, help="replay at most this many days")
    ap.add_argument("--window-days", type=float, default=None)
    ap.add_argument("--baseline-gate", action="store_true", help="the warm gate also demands the best baseline")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="config override (all trainings)")
    ap.add_argument("--warm-epochs", type=int, default=10)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--work", type=Path, default=None, help="keep the registries here (default: a temp dir)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    base = ["model.dim=64", "model.max_len=50", "train.epochs=40", "train.patience=4", "train.batch_size=64",
            "train.learning_rate=0.002", "eval.exclude_seen=false", "eval.bootstrap=0"]
    if args.quick:
        base += ["model.dim=16", "model.max_len=20", "train.epochs=2", "model.layers=1"]
        args.days, args.warm_epochs = args.days or 2, 1
    cfg = apply_overrides(Config(), base + args.overrides)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-continuous-"))
    opts = IngestOptions(columns=tuple(args.columns.split(",")))
    days = split_days(args.data, opts, work / "days")
    canonical = IngestOptions(has_header=True)
    init, rest = days[: args.initial_days], days[args.initial_days:]
    replay = rest[: (args.days or len(rest) - 1) + 1]
    prepare(init, work / "initial", canonical)
    t0 = time.perf_counter()
    initial = run_experiment(work / "initial", cfg, work / "run0", progress=False)
    initial_seconds = time.perf_counter() - t0
    regs = {name: work / f"registry_{name}" for name in ("warm", "scratch")}
    for reg in regs.values():
        add_run(reg, initial.run_dir)
    frozen = load_run(initial.run_dir)
    born = len(frozen.vocabs.items)
    probe = [list(frozen.vocabs.items.tokens[1:4]), list(frozen.vocabs.items.tokens[10:14])]
    answers: dict[str, list] = {}
    per_day, overrides = [], tuple(args.overrides)
    for i, day in enumerate(replay[:-1]):
        row: dict = {"day": day.stem}
        warm_opts = RetrainOptions(events=(day,), ingest=canonical, window_days=args.window_days, promote=True,
                                   gate=GateConfig(baselines=args.baseline_gate),
                                   overrides=(f"train.epochs={args.warm_epochs}", *overrides))
        cur = Registry(regs["warm"]).require_current()
        answers[cur] = [Recommender.load(regs["warm"] / "current").recommend(h, k=10).pairs() for h in probe]
        t = time.perf_counter()
        out = retrain(regs["warm"], warm_opts)
        row["warm"] = {"status": out.status, "reason": out.reason, "seconds": time.perf_counter() - t,
                       "train_seconds": out.manifest["fit"]["train_seconds"],
                       "gate_diff_vs_current": next(iter(out.manifest["gate"]["comparisons"].values()))["diff"],
                       "drift": out.manifest["drift"]}
        sc_opts = RetrainOptions(events=(day,), ingest=canonical, window_days=args.window_days, from_scratch=True,
                                 gate=GateConfig(min_examples=0), overrides=overrides)
        t = time.perf_counter()
        manifest = always_promote(Registry(regs["scratch"]), sc_opts)
        row["scratch"] = {"seconds": time.perf_counter() - t, "train_seconds": manifest["fit"]["train_seconds"]}
        warm_dir = Registry(regs["warm"]).version_dir(Registry(regs["warm"]).require_current())
        eval_dir = work / f"eval_{i}"
        prepare_window(warm_dir / "dataset", [replay[i + 1]], eval_dir, None, canonical)
        n_eval = len(load_dataset(eval_dir).vocabs.items)
        systems = {name: old_model_scorer(run, n_eval) for name, run in (
            ("frozen", frozen), ("warm", load_run(regs["warm"] / "current")),
            ("scratch", load_run(regs["scratch"] / "current")))}
        row["next_day"] = next_day(eval_dir, systems, cfg, born, baselines=True)
        per_day.append(row)
        print(json.dumps({"day": row["day"], "warm": row["warm"]["status"],
                          "next_item_ndcg@10": {k: v["ndcg@10"] for k, v in row["next_day"]["next_item"].items()
                                                if isinstance(v, dict)}}), flush=True)
    warm = Registry(regs["warm"])
    rollback = None
    if warm.pointer().get("history"):
        back = warm.rollback()
        again = [Recommender.load(regs["warm"] / "current").recommend(h, k=10).pairs() for h in probe]
        rollback = {"to": back, "same_answers": again == answers.get(back)}
    record = {**provenance(Path(__file__), argv), "data": str(args.data), "initial_days": args.initial_days,
              "initial_train_seconds": initial_seconds, "days": per_day, "summary": summarise(per_day),
              "rollback": rollback, "peak_rss_mb": peak_rss_mb(), "machine": machine(),
              "config": json.loads(cfg.to_json())}
    print(json.dumps(record, default=float))
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


def always_promote(registry: Registry, opts: RetrainOptions) -> dict:
    """System (c): a candidate built like `retrain` does, promoted whatever its gate says."""
    with registry.lock():
        parent = registry.require_current()
        version = registry.add_version(lambda tmp, v: build_candidate(registry, parent, opts, tmp, v))
        registry.promote(version, "bench: the from-scratch system is promoted every day")
    return registry.read(version)


def summarise(days: list[dict]) -> dict:
    """Mean next-day NDCG@10 per system and task, training time of warm vs scratch, promotions."""
    out: dict = {}
    for task in ("next_item", "next_purchase"):
        names = [k for k, v in days[0]["next_day"][task].items() if isinstance(v, dict)] if days else []
        out[task] = {n: float(np.mean([d["next_day"][task][n]["ndcg@10"] for d in days])) for n in names}
        baselines = [n for n in names if n not in ("frozen", "warm", "scratch")]
        if baselines:
            out[task]["best_baseline"] = max(baselines, key=lambda n: out[task][n])
    warm_t = sum(d["warm"]["train_seconds"] for d in days)
    scratch_t = sum(d["scratch"]["train_seconds"] for d in days)
    out["train_seconds"] = {"warm": warm_t, "scratch": scratch_t, "ratio": warm_t / scratch_t if scratch_t else None}
    out["promoted_days"] = sum(d["warm"]["status"] == "promoted" for d in days)
    out["promoted_worse_than_current"] = sum(d["warm"]["status"] == "promoted" and d["warm"]["gate_diff_vs_current"] < 0
                                             for d in days)
    return out


if __name__ == "__main__":
    main()
