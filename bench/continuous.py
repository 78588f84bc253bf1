"""Continuous learning replay: a log in time order, day by day, through the model registry.

    nice -n 5 .venv/bin/python bench/continuous.py --dataset taobao --users 150 --initial-days 5 --days 3 \
        --set task.kind=multi --set split.kind=temporal ... --out bench/results/continuous_taobao
    .venv/bin/python bench/continuous.py --quick          # smoke run: tiny model, 2 replay days
(the exact command of a result is in its JSON and markdown.)

A model is trained on the first ``--initial-days`` days and imported into two registries. Then, for
each following day d: that day's events are ingested, and every system predicts day d + 1:

(a) ``frozen``  the initial model, never retrained;
(b) ``warm``    ``retrain`` (warm start from the current version, the gate against it, ``--promote``);
(c) ``scratch`` a full retrain from scratch on everything up to day d, promoted every day;
(d) the best shop heuristic, fitted on everything up to day d.

Next-day examples are the first event of each user on day d + 1 that has a history (any item, and
the first purchase for "next purchase"); full ranking, seen items kept (shop repeats); multi-task
models rank the next item of any behaviour, resp. of the target behaviour, with their heads. Also: the
share of next-day targets on items born after the initial training and seen before the day (ranks of
those per system; items first seen on the day itself are counted apart: no model can rank them),
training seconds and peak RSS per system, paired bootstrap CIs of warm - scratch and warm - frozen,
and the issue's targets, each met or missed. At the end the warm registry is rolled back once and
the previous version's answers are compared with the ones recorded while it was current (byte for
byte). ``--out PREFIX`` writes PREFIX.json and PREFIX.md; the JSON record is printed as well.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import polars as pl
import torch
from common import ROOT, SHARED, machine, peak_rss_mb, provenance

from shopformer.artifacts import load_run
from shopformer.config import Config, apply_overrides
from shopformer.data.batches import EventArrays
from shopformer.data.corpus import load_dataset
from shopformer.data.growth import prepare_window
from shopformer.data.ingest import IngestOptions
from shopformer.data.prepare import prepare
from shopformer.data.split import temporal_split
from shopformer.evaluation.baselines import shop_baselines
from shopformer.evaluation.metrics import bootstrap_ci, per_example
from shopformer.evaluation.ranking import ScoreFn, evaluate
from shopformer.pipelines.continuous import RetrainOptions, add_run, build_candidate, retrain
from shopformer.pipelines.gate import GateConfig, old_model_scorer
from shopformer.pipelines.multi_behaviour import run_multibehaviour
from shopformer.pipelines.next_item import run_experiment
from shopformer.pipelines.registry import Registry
from shopformer.recommender import Recommender

DAY = 86_400
TAOBAO = ROOT / "data" / "demo" / "taobao_head300.csv"
TAOBAO_COLUMNS = "user_id,item_id,category_id,behaviour,timestamp"
# Real multi-day logs (../shared/data; PROVENANCE.md there): path, columns, behaviour code names.
PRESETS: dict[str, tuple[Path, str, tuple[str, ...]]] = {
    "taobao-demo": (TAOBAO, TAOBAO_COLUMNS, ()),
    "taobao": (SHARED / "taobao_userbehavior" / "UserBehavior_head.csv", TAOBAO_COLUMNS, ()),
    "cikm": (SHARED / "alibaba_cikm2019_ecomm" / "ecomm_edge_train.txt", "user_id,item_id,behaviour,timestamp",
             ("1=click", "2=collect", "3=cart", "4=buy")),
}


class PeakRSS:
    """Peak resident memory of this process while the block runs (sampled every 20 ms), in MB."""

    def __init__(self) -> None:
        self.peak, self._stop = 0.0, threading.Event()

    @staticmethod
    def now() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.now())

    def __enter__(self) -> PeakRSS:
        self.peak = self.now()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.now())


def split_days(raw: Path, opts: IngestOptions, out: Path, users: int | None = None) -> list[Path]:
    """The raw log cut into one CSV per UTC day (canonical columns, with a header), oldest first. Stray
    leading days (under 10% of the median day's events, e.g. a few events weeks early) join the
    first real day. ``users``: a random sample of that many users (seed 0), all their events."""
    prepared = prepare([raw], out / "all", opts)
    events = pl.read_parquet(prepared.path / "events.parquet")
    events = events.select([c for c in ("user_id", "item_id", "category_id", "behaviour", "timestamp")
                            if c in events.columns and events[c].null_count() < events.height])
    if users is not None:
        all_users = np.sort(events["user_id"].unique().to_numpy())
        keep = np.random.default_rng(0).choice(all_users, size=min(users, len(all_users)), replace=False)
        events = events.filter(pl.col("user_id").is_in(keep.tolist()))
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


def next_day(eval_dir: Path, systems: dict[str, Callable[[int], ScoreFn]], cfg: Config, born: int, known: int,
             baselines: bool) -> dict:
    """Every system on the first event of each user on the newest day (any item; first purchase;
    ``systems[name](behaviour)`` ranks the next item of that behaviour, 0 = any). Per system: NDCG@10 /
    HR@10, and on *new-item* targets (items born after the initial training) that the retrained
    models know (seen before the day, ids < ``known``) their NDCG@10, HR@10 and median rank (1 = top).
    ``_per_example``: the NDCG@10 arrays (for paired CIs)."""
    ds = load_dataset(eval_dir)
    day_start = int(ds.seq.times.max()) // DAY * DAY
    arrays = EventArrays.from_sequences(ds.seq, cfg.model.time_buckets)
    ecfg = cfg.eval.model_copy(update={"bootstrap": 0})
    out: dict = {}
    _, target = ds.target_behaviour(None)
    for task, behaviour in (("next_item", None), ("next_purchase", target)):
        split = temporal_split(ds.seq, day_start, int(ds.seq.times.max()) + 1, behaviour)
        pool = {name: make(behaviour or 0) for name, make in systems.items()}
        if baselines:
            pool.update(shop_baselines(ds.seq, split.train_end, ds.spec.n_items, ds.spec.n_behaviours, behaviour))
        targets = ds.seq.items[split.valid.pos]
        new = (targets > born) & (targets < known)  # born after the initial model, seen before this day
        row: dict = {"examples": len(split.valid), "new_item_targets": int(new.sum()),
                     "new_item_share": float(new.mean()) if len(new) else 0.0,
                     "unseen_item_share": float((targets >= known).mean()) if len(new) else 0.0,
                     "_per_example": {}}
        for name, fn in pool.items():
            res = evaluate(fn, ds.seq, arrays, split.valid, ds.spec.n_items, cfg.model.max_len, ecfg, bootstrap=False)
            values = per_example(res.ranks, (10,))
            ndcg, hr = values["ndcg@10"], values["hr@10"]
            row[name] = {"ndcg@10": res.metrics["ndcg@10"], "hr@10": res.metrics["hr@10"],
                         "ndcg@10_new_items": float(ndcg[new].mean()) if new.any() else None,
                         "hr@10_new_items": float(hr[new].mean()) if new.any() else None,
                         "median_rank_new_items": float(np.median(res.ranks[new]) + 1) if new.any() else None}
            if name in SYSTEMS:
                row["_per_example"][name] = {"ndcg": ndcg, "new": new}
        out[task] = row
    return out


SYSTEMS = ("frozen", "warm", "scratch")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", choices=sorted(PRESETS), default="taobao-demo")
    ap.add_argument("--data", type=Path, default=None, help="another raw log (with --columns)")
    ap.add_argument("--columns", default=None)
    ap.add_argument("--users", type=int, default=None, help="a random sample of this many users")
    ap.add_argument("--initial-days", type=int, default=5)
    ap.add_argument("--days", type=int, default=None, help="replay at most this many days")
    ap.add_argument("--window-days", type=float, default=None)
    ap.add_argument("--baseline-gate", action="store_true", help="the warm gate also demands the best baseline")
    ap.add_argument("--min-examples", type=int, default=20, help="the warm gate's minimum of gate-slice examples")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="config override (all trainings)")
    ap.add_argument("--warm-epochs", type=int, default=2, help="the warm start's epoch budget (RetrainOptions)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=None, help="write JSON + markdown here (default: print JSON only)")
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
    data, columns, names = PRESETS[args.dataset]
    data, columns = args.data or data, args.columns or columns
    opts = IngestOptions(columns=tuple(columns.split(",")), behaviour_names=dict(n.split("=", 1) for n in names))
    days = split_days(data, opts, work / "days", args.users)
    canonical = IngestOptions(has_header=True)
    init, rest = days[: args.initial_days], days[args.initial_days:]
    replay = rest[: (args.days or len(rest) - 1) + 1]
    prepare(init, work / "initial", canonical)
    t0 = time.perf_counter()
    with PeakRSS() as mem:
        if cfg.task.kind == "next-item":
            initial_dir = run_experiment(work / "initial", cfg, work / "run0", progress=False).run_dir
        else:  # multi-task heads (repeat / explore mixture, next purchase): temporal validation window
            initial_dir = run_multibehaviour(work / "initial", cfg, work / "run0", progress=False).run_dir
    initial_seconds = time.perf_counter() - t0
    regs = {name: work / f"registry_{name}" for name in ("warm", "scratch")}
    for reg in regs.values():
        add_run(reg, initial_dir)
    frozen = load_run(initial_dir)
    born = len(frozen.vocabs.items)
    probe = [list(frozen.vocabs.items.tokens[1:4]), list(frozen.vocabs.items.tokens[10:14])]
    answers: dict[str, list] = {}
    per_day, overrides = [], tuple(args.overrides)
    pooled: dict[str, dict[str, list]] = {}
    for i, day in enumerate(replay[:-1]):
        row: dict = {"day": day.stem}
        warm_opts = RetrainOptions(events=(day,), ingest=canonical, window_days=args.window_days, promote=True,
                                   gate=GateConfig(baselines=args.baseline_gate, min_examples=args.min_examples),
                                   warm_epochs=args.warm_epochs, overrides=overrides)
        cur = Registry(regs["warm"]).require_current()
        answers[cur] = [Recommender.load(regs["warm"] / "current").recommend(h, k=10).pairs() for h in probe]
        t = time.perf_counter()
        with PeakRSS() as warm_mem:
            out = retrain(regs["warm"], warm_opts)
        row["warm"] = {"status": out.status, "reason": out.reason, "seconds": time.perf_counter() - t,
                       "train_seconds": out.manifest["fit"]["train_seconds"], "peak_rss_mb": warm_mem.peak,
                       "gate_diff_vs_current": next(iter(out.manifest["gate"]["comparisons"].values()))["diff"],
                       "gate_examples": out.manifest["gate"]["examples"],
                       "gate_fallback": out.manifest["gate"].get("fallback", {}).get("reason"),
                       "epochs": out.manifest["fit"]["epochs"], "warm_since_utc": out.manifest["warm"]["since_utc"],
                       "drift": out.manifest["drift"]}
        sc_opts = RetrainOptions(events=(day,), ingest=canonical, window_days=args.window_days, from_scratch=True,
                                 gate=GateConfig(min_examples=0), overrides=overrides)
        t = time.perf_counter()
        with PeakRSS() as sc_mem:
            manifest = always_promote(Registry(regs["scratch"]), sc_opts)
        row["scratch"] = {"seconds": time.perf_counter() - t, "train_seconds": manifest["fit"]["train_seconds"],
                          "epochs": manifest["fit"]["epochs"], "peak_rss_mb": sc_mem.peak}
        # every event up to day d: the scratch system's current data (the warm one's may be older: a
        # rejected candidate is not current); vocabularies grow identically, so ids agree across systems
        scratch_dir = Registry(regs["scratch"]).version_dir(Registry(regs["scratch"]).require_current())
        eval_dir = work / f"eval_{i}"
        prepare_window(scratch_dir / "dataset", [replay[i + 1]], eval_dir, None, canonical)
        n_eval = len(load_dataset(eval_dir).vocabs.items)
        runs = {"frozen": frozen, "warm": load_run(regs["warm"] / "current"),
                "scratch": load_run(regs["scratch"] / "current")}
        systems = {name: partial(old_model_scorer, run, n_eval) for name, run in runs.items()}
        known = len(runs["scratch"].vocabs.items)
        row["next_day"] = next_day(eval_dir, systems, cfg, born, known, baselines=True)
        for task, res in row["next_day"].items():
            for name, arrs in res.pop("_per_example").items():
                pooled.setdefault(task, {}).setdefault(name, []).append(arrs)
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
    summary = summarise(per_day)
    summary["initial_train_peak_rss_mb"] = mem.peak
    paired = paired_differences(pooled)
    record = {**provenance(Path(__file__), argv), "dataset": args.dataset, "data": str(data), "users": args.users,
              "initial_days": args.initial_days, "initial_train_seconds": initial_seconds, "days": per_day,
              "summary": summary, "paired": paired, "rollback": rollback,
              "targets": targets(summary, paired, per_day, rollback), "peak_rss_mb": peak_rss_mb(),
              "load_avg": os.getloadavg(), "machine": machine(), "config": json.loads(cfg.to_json())}
    print(json.dumps(record, default=float))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(record, indent=1, default=float) + "\n")
        args.out.with_suffix(".md").write_text(markdown(record))
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
    """Mean next-day NDCG@10 / HR@10 per system and task, training time and peak memory of warm vs
    scratch, promotions."""
    out: dict = {}
    for task in ("next_item", "next_purchase"):
        names = [k for k, v in days[0]["next_day"][task].items() if isinstance(v, dict)] if days else []
        out[task] = {n: {m: float(np.mean([d["next_day"][task][n][m] for d in days])) for m in ("ndcg@10", "hr@10")}
                     for n in names}
        baselines = [n for n in names if n not in SYSTEMS]
        if baselines:
            out[task]["best_baseline"] = max(baselines, key=lambda n: out[task][n]["ndcg@10"])
        for share in ("new_item_share", "unseen_item_share"):
            out[task][share] = float(np.mean([d["next_day"][task][share] for d in days]))
        half = days[len(days) // 2:]
        out[task]["last_days_ndcg@10"] = {n: float(np.mean([d["next_day"][task][n]["ndcg@10"] for d in half]))
                                          for n in SYSTEMS}
    warm_t = sum(d["warm"]["train_seconds"] for d in days)
    scratch_t = sum(d["scratch"]["train_seconds"] for d in days)
    out["train_seconds"] = {"warm": warm_t, "scratch": scratch_t, "ratio": warm_t / scratch_t if scratch_t else None}
    warm_w, scratch_w = (sum(d[n]["seconds"] for d in days) for n in ("warm", "scratch"))
    out["retrain_wall_seconds"] = {"warm": warm_w, "scratch": scratch_w,  # data, training, heads, gate, report
                                   "ratio": warm_w / scratch_w if scratch_w else None}
    out["peak_rss_mb"] = {n: max((d[n]["peak_rss_mb"] for d in days), default=None) for n in ("warm", "scratch")}
    out["promoted_days"] = sum(d["warm"]["status"] == "promoted" for d in days)
    out["promoted_worse_than_current"] = sum(d["warm"]["status"] == "promoted" and d["warm"]["gate_diff_vs_current"] < 0
                                             for d in days)
    return out


def paired_differences(pooled: dict[str, dict[str, list]]) -> dict:
    """All replay days' examples pooled: warm - scratch and warm - frozen NDCG@10 with a 95% paired
    bootstrap CI, overall and on new-item targets."""
    out: dict = {}
    for task, by in pooled.items():
        ndcg = {n: np.concatenate([a["ndcg"] for a in arrs]) for n, arrs in by.items()}
        new = np.concatenate([a["new"] for a in by["warm"]])
        row: dict = {"examples": len(new), "new_item_targets": int(new.sum())}
        for ref in ("scratch", "frozen"):
            for part, mask in (("all", np.ones_like(new)), ("new_items", new)):
                d = ndcg["warm"][mask] - ndcg[ref][mask]
                lo, hi = bootstrap_ci(d, 1000) if len(d) else (float("nan"), float("nan"))
                row[f"warm_minus_{ref}_{part}"] = {"diff": float(d.mean()) if len(d) else None, "ci95": [lo, hi],
                                                  "ref_mean": float(ndcg[ref][mask].mean()) if len(d) else None}
        out[task] = row
    return out


def targets(summary: dict, paired: dict, days: list[dict], rollback: dict | None) -> dict:
    """The issue's targets, each met or missed (next item; next purchase reported beside)."""
    out: dict = {}
    for task in ("next_item", "next_purchase"):
        p = paired.get(task, {})
        vs = p.get("warm_minus_scratch_all", {})
        ref = vs.get("ref_mean") or 0.0
        within = vs.get("diff") is not None and (vs["diff"] >= -0.02 * ref or vs["ci95"][0] <= 0 <= vs["ci95"][1])
        last = summary[task]["last_days_ndcg@10"]
        new = p.get("warm_minus_frozen_new_items", {})
        out[task] = {
            "warm_within_2pct_or_ci_of_scratch": {"met": bool(within), "diff": vs.get("diff"), "ci95": vs.get("ci95"),
                                                  "scratch": ref},
            "warm_beats_frozen_last_days": {"met": last["warm"] > last["frozen"], **last},
            "warm_beats_frozen_on_new_items": {"met": bool(new.get("diff") is not None and new["diff"] > 0),
                                               "diff": new.get("diff"), "ci95": new.get("ci95"),
                                               "targets": p.get("new_item_targets")},
        }
    ratio = summary["train_seconds"]["ratio"]
    out["warm_train_time_at_most_quarter_of_scratch"] = {"met": ratio is not None and ratio <= 0.25, "ratio": ratio}
    out["no_promoted_model_worse_on_its_day"] = {"met": summary["promoted_worse_than_current"] == 0,
                                                 "promoted": summary["promoted_days"], "days": len(days)}
    out["rollback_restores_answers_byte_for_byte"] = {"met": bool(rollback and rollback["same_answers"]),
                                                      "rollback": rollback}
    return out


def markdown(r: dict) -> str:
    """The record as a short markdown report (per-day table, summary, targets met / missed)."""
    def f(x: object) -> str:
        return f"{x:.4f}" if isinstance(x, float) else str(x)

    lines = [f"# Continuous learning replay: {r['dataset']}", "", f"Generated by `{r['command']}`", "",
             f"Data: `{r['data']}` ({r['users'] or 'all'} users), initial model on the first {r['initial_days']} "
             f"days, then day by day. Load average at the end: {f(r['load_avg'][0])}.", ""]
    for task in ("next_item", "next_purchase"):
        names = [n for n, v in r["days"][0]["next_day"][task].items() if isinstance(v, dict)] if r["days"] else []
        lines += [f"## Next-day {task.replace('_', ' ')}: NDCG@10 (HR@10)", "",
                  "| day | examples | new-item share | unseen-item share | " + " | ".join(names) + " |",
                  "|---" * (4 + len(names)) + "|"]
        for d in r["days"]:
            nd = d["next_day"][task]
            lines.append(f"| {d['day']} | {nd['examples']} | {f(nd['new_item_share'])} | "
                         f"{f(nd['unseen_item_share'])} | " + " | ".join(
                f"{f(nd[n]['ndcg@10'])} ({f(nd[n]['hr@10'])})" for n in names) + " |")
        s = r["summary"][task]
        lines.append(f"| **mean** | | {f(s['new_item_share'])} | {f(s['unseen_item_share'])} | " + " | ".join(
            f"**{f(s[n]['ndcg@10'])}** ({f(s[n]['hr@10'])})" for n in names) + " |")
        lines += ["", "New-item targets (items born after the initial training and seen before the day; unseen "
                  "items no model can rank): NDCG@10 / median rank per day: " +
                  "; ".join(f"{d['day']}: " + ", ".join(
                      f"{n} {f(d['next_day'][task][n]['ndcg@10_new_items'])} / "
                      f"{f(d['next_day'][task][n]['median_rank_new_items'])}" for n in SYSTEMS)
                      for d in r["days"]), ""]
    s = r["summary"]
    lines += ["## Cost", "", "| system | training seconds (all days) | peak RSS MB |", "|---|---|---|",
              f"| warm (b) | {f(s['train_seconds']['warm'])} | {f(s['peak_rss_mb']['warm'])} |",
              f"| scratch (c) | {f(s['train_seconds']['scratch'])} | {f(s['peak_rss_mb']['scratch'])} |",
              f"| initial | {f(r['initial_train_seconds'])} | {f(s['initial_train_peak_rss_mb'])} |", "",
              f"Whole retrain (data, training, heads, gate, report), all days: warm "
              f"{f(s['retrain_wall_seconds']['warm'])} s, scratch {f(s['retrain_wall_seconds']['scratch'])} s "
              f"(ratio {f(s['retrain_wall_seconds']['ratio'])}). Epochs per day, warm / scratch: " + ", ".join(
                  f"{d['day']} {d['warm']['epochs']} / {d['scratch']['epochs']}" for d in r["days"]), "",
              "Warm gate per day (status, candidate - current on the gate slice, gate examples): " + ", ".join(
                  f"{d['day']} {d['warm']['status']} ({f(d['warm']['gate_diff_vs_current'])}, "
                  f"n={d['warm']['gate_examples']}{', fallback' if d['warm']['gate_fallback'] else ''})"
                  for d in r["days"]),
              "", "## Targets", ""]
    for key, val in r["targets"].items():
        if "met" in val:
            lines.append(f"- {'MET' if val['met'] else 'MISSED'}: {key} — " +
                         ", ".join(f"{k}={f(v)}" for k, v in val.items() if k != "met"))
        else:
            lines += [f"- {'MET' if v['met'] else 'MISSED'}: {key} / {k} — " +
                      ", ".join(f"{a}={f(b)}" for a, b in v.items() if a != "met") for k, v in val.items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
