"""Does the default configuration generalise? configs/default.toml + the data-derived rule, no tuning.

    .venv/bin/python bench/defaults.py --data beauty          # Amazon Beauty (the rule's published anchor)
    .venv/bin/python bench/defaults.py --data yoochoose       # a session log the rule was not derived from
    .venv/bin/python bench/defaults.py --data diginetica --seed 1 --threads 1

Exactly what ``shopformer train DATASET`` does without ``--config`` (``pipelines/defaults.py``): the rule reads
counts of the training events, validation early stopping picks the epoch. Appends to
``bench/results/defaults.jsonl``, as soon as each is known: one line with the test metrics of the model selected
on validation (no refit: the published protocol) beside the shop baselines, then, with ``--refit`` (default), one
line for the refit model (a fresh model, same seed and schedule, trained on training + validation events for the
selected number of epochs; baselines then fitted on the same events). Load average recorded (shared machine).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from common import RESULTS, ROOT, SHARED, load_or_prepare, peak_rss_mb, provenance

from shopformer.config import apply_overrides, load_config
from shopformer.data.batches import EventArrays
from shopformer.data.corpus import Dataset, make_split
from shopformer.data.options import IngestOptions
from shopformer.evaluation.blend import served_row
from shopformer.evaluation.ranking import evaluate, model_scorer
from shopformer.pipelines.defaults import DEFAULT_CONFIG, apply_data_defaults, explicit_keys
from shopformer.pipelines.next_item import (
    _baselines,
    _train_once,
    evaluate_systems,
    side_preparer,
    train_next_item,
    tune_blend,
)

# the recipes of data/demo/README.md
SOURCES: dict[str, tuple[list[Path], IngestOptions]] = {
    "beauty": ([SHARED / "amazon_beauty" / "Beauty.txt"], IngestOptions(format="sequences")),
    "yoochoose": ([SHARED / "yoochoose_rsc15_100k" / "yoochoose-clicks-100k_train_full.txt",
                   SHARED / "yoochoose_rsc15_100k" / "yoochoose-clicks-100k_test.txt"],
                  IngestOptions(mapping={"user_id": "SessionId", "session_id": "SessionId", "item_id": "ItemId",
                                         "timestamp": "Time"})),
    "diginetica": ([SHARED / "diginetica_sample" / "sample_train-item-views.csv"],
                   IngestOptions(mapping={"user_id": "session_id", "timestamp": "eventdate"}, order_by="timeframe")),
}
KEYS = ("hr@10", "ndcg@10", "hr@20", "ndcg@20", "mrr")


def load(name: str) -> Dataset:
    files, options = SOURCES[name]
    if len(files) == 1:
        return load_or_prepare(files[0], options)
    # several files: prepared together (one dataset), cached under a name of their own
    from shopformer.data.corpus import load_dataset
    from shopformer.data.prepare import prepare

    out = ROOT / "out" / "bench_data" / f"{name}-combined"
    if not (out / "stats.json").exists():
        prepare(files, out, options, overwrite=True)
    return load_dataset(out)


def table(test: dict[str, dict], model: str) -> dict:
    return {name: {k: round(float(m[k]), 5) for k in KEYS}
            | ({"ci95_ndcg@10": [round(float(x), 5) for x in m["ci95"]["ndcg@10"]]} if name.startswith(model) else {})
            for name, m in test.items()}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", choices=sorted(SOURCES), default="beauty")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-refit", dest="refit", action="store_false")
    ap.add_argument("--set", action="append", default=[], dest="overrides", help="explicit overrides (kept)")
    ap.add_argument("--out", type=Path, default=RESULTS / "defaults.jsonl")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    ds = load(args.data)
    sets = [*args.overrides, f"train.seed={args.seed}", f"train.threads={args.threads}"]
    cfg = apply_overrides(load_config(DEFAULT_CONFIG), sets)
    cfg, line, stats, applied = apply_data_defaults(cfg, ds, explicit_keys(sets))
    print(line, flush=True)
    split = make_split(ds, cfg)
    arrays = EventArrays.from_sequences(ds.seq, cfg.model.time_buckets)
    base = {**provenance(__file__, argv), "data": args.data, "seed": args.seed, "stats": stats.to_dict(),
            "applied": applied, "protocol": f"LOO, full ranking over {ds.spec.n_items} items, exclude_seen="
            f"{cfg.eval.exclude_seen}", "valid_targets": len(split.valid), "test_targets": len(split.test)}
    load0, t0 = os.getloadavg(), time.perf_counter()
    trained = train_next_item(ds, cfg, split, arrays, progress=True)
    fitted = _baselines(ds, split.train_end)
    blend, blend_report = tune_blend(trained, ds, split, cfg, arrays, fitted) if cfg.train.blend else (None, None)
    test = evaluate_systems(trained.model, ds, split, cfg, arrays, blend, fitted)
    if blend is not None and blend.counts == "validation":  # the strict no-refit row: nothing learnt from validation
        strict = blend.with_baselines(fitted, "training").scorer(model_scorer(trained.model))
        test[f"{blend.row(cfg.model.name)}, baseline counts from training events only"] = evaluate(
            strict, ds.seq, arrays, split.test, ds.spec.n_items, trained.model.max_len, cfg.eval).metrics
    # what `shopformer train` serves: the validation-chosen blend when the rule turned it on and it won there
    served = served_row(cfg.model.name, blend)
    rows = [{**base, "row": "no refit (selected on validation)", "valid_ndcg@10": round(trained.valid["ndcg@10"], 5),
             "served": served, "blend": blend_report,
             "best_epoch": trained.fit.best_epoch, "epochs": trained.fit.epochs, "stopped_by": trained.fit.stopped_by,
             "train_seconds": round(trained.fit.train_seconds, 1), "test": table(test, cfg.model.name),
             "load_before_after": [round(load0[0], 2), round(os.getloadavg()[0], 2)],
             "peak_rss_mb": round(peak_rss_mb())}]
    write(args.out, rows[-1])
    if args.refit:
        rcfg = cfg.override(train={"refit": True, "blend": False})  # blend is chosen on validation: not with refit
        load0, t1 = os.getloadavg(), time.perf_counter()
        model, refit, _, _ = _train_once(ds, rcfg, split, arrays, split.training_end(refit=True), None,
                                         max(trained.fit.best_epoch, 1), side_preparer(rcfg), None, True, None)
        test = evaluate_systems(model, ds, split, rcfg, arrays)
        rows.append({**base, "row": "refit (train + validation, selected epochs)", "epochs": refit.epochs,
                     "train_seconds": round(refit.train_seconds, 1), "test": table(test, cfg.model.name),
                     "load_before_after": [round(load0[0], 2), round(os.getloadavg()[0], 2)],
                     "wall_seconds": round(time.perf_counter() - t1, 1)})
        write(args.out, rows[-1])
    print(json.dumps({"data": args.data, "seconds": round(time.perf_counter() - t0, 1),
                      **{r["row"]: r["test"][r.get("served", cfg.model.name)] for r in rows}}))


def write(path: Path, row: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
