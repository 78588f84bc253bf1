"""Pre-train on every Taobao event, fine-tune for the next purchase; compare with training from scratch.

    nice -n 10 .venv/bin/python bench/pretrain_finetune.py --pre-minutes 4 --ft-minutes 1.5 \
        | tee bench/results/pretrain_finetune.jsonl

Target: the next event whose behaviour is "buy", all behaviours as context. Split: each user's
last purchase -> test, second-to-last -> validation, everything before -> training (users with
fewer than two purchases have no example). Ranking over every item, seen items kept (repeat
purchases of viewed items are the point on Taobao), model selected on validation NDCG@10.

Rows (one JSON line each): ``scratch`` (the fine-tuning objective from a random start, the
baseline), ``pretrained`` (next-item on all events, before any fine-tuning), ``finetune-full``,
``finetune-frozen`` (frozen model + new residual head), ``finetune-lora`` (adapters merged, then
saved with save_run and reloaded: ``reload_identical``). Each has validation and test metrics with
bootstrap 95% CIs, and the number of trainable parameters.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from common import SHARED, load_or_prepare, provenance
from zoo import KEEP

from shopformer.artifacts import load_run, save_run
from shopformer.config import Config, apply_overrides
from shopformer.data.batches import EventArrays, history_batches
from shopformer.data.corpus import make_split
from shopformer.data.ingest import IngestOptions
from shopformer.evaluation.baselines import Markov, Popularity, item_counts
from shopformer.evaluation.ranking import evaluate, model_scorer
from shopformer.models import build_model
from shopformer.models.lora import count_parameters
from shopformer.training.finetune import finetune, pretrain
from shopformer.training.fit import set_seed

TAOBAO = SHARED / "taobao_userbehavior" / "UserBehavior_head.csv"
COLUMNS = ("user_id", "item_id", "category_id", "event_type", "timestamp")


def summary(fn, ds, arrays, examples, cfg: Config) -> dict:
    scorer = fn if not hasattr(fn, "score_all") else model_scorer(fn)
    m = evaluate(scorer, ds.seq, arrays, examples, ds.spec.n_items, cfg.model.max_len, cfg.eval).metrics
    out = {k: round(float(m[k]), 5) if k != "n" else m[k] for k in KEEP}
    out["ci95"] = {k: [round(x, 5) for x in v] for k, v in m.get("ci95", {}).items() if k in ("hr@10", "ndcg@10")}
    return out


def in_history(seq, examples) -> float:
    """Share of targets the user had already interacted with (a repeat-consumption ceiling)."""
    starts = seq.offsets[:-1][examples.rows]
    hits = [seq.items[p] in set(seq.items[s:p].tolist()) for s, p in zip(starts, examples.pos, strict=True)]
    return round(float(np.mean(hits)), 4) if hits else 0.0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=TAOBAO)
    ap.add_argument("--model", default="sasrec")
    ap.add_argument("--pre-minutes", type=float, default=4.0)
    ap.add_argument("--ft-minutes", type=float, default=1.5, help="budget of each fine-tuning (and of scratch)")
    ap.add_argument("--lr", type=float, default=1e-3, help="learning rate (pre-training, full, scratch)")
    ap.add_argument("--adapter-lr", type=float, default=3e-3, help="learning rate of the frozen head and LoRA")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="section.key=value")
    args = ap.parse_args(argv)

    ds = load_or_prepare(args.data, IngestOptions(columns=COLUMNS))
    buy = ds.behaviour_id("buy")
    cfg = Config().override(
        model={"name": args.model, "dim": 64, "layers": 2, "heads": 2, "dropout": 0.3, "emb_dropout": 0.3,
               "max_len": 50},
        train={"epochs": 200, "batch_size": 128, "learning_rate": args.lr, "patience": 5, "seed": 42},
        eval={"exclude_seen": False, "bootstrap": 1000},
    )
    cfg = apply_overrides(cfg, args.overrides)
    split = make_split(ds, cfg, target_behaviour=buy)
    arrays = EventArrays.from_sequences(ds.seq, cfg.model.time_buckets)
    counts = item_counts(ds.seq, split.train_end, ds.spec.n_items)
    fast_valid = cfg.override(eval={"bootstrap": 0})  # fit's own validation passes
    ft_cfg = fast_valid.override(train={"max_minutes": args.ft_minutes})
    common = {**provenance(__file__, argv), "dataset": args.data.name, "target": "next purchase (buy)",
              "valid_n": len(split.valid), "test_n": len(split.test),
              "test_target_in_history": in_history(ds.seq, split.test)}

    def emit(row: dict) -> None:
        print(json.dumps({**row, **common}), flush=True)

    for name, fn in (("popularity", Popularity(item_counts(ds.seq, split.train_end, ds.spec.n_items, buy))),
                     ("markov", Markov(ds.seq, split.train_end, ds.spec.n_items))):
        emit({"config": name, "valid": summary(fn, ds, arrays, split.valid, cfg),
              "test": summary(fn, ds, arrays, split.test, cfg)})

    set_seed(cfg.train.seed)
    scratch = build_model(cfg.model, ds.spec)
    res = finetune(scratch, ft_cfg, ds.seq, split.train_end, split.valid, buy, "full", arrays, counts)
    emit({"config": "scratch", **res.summary(), "valid_before": None,
          "valid": summary(res.model, ds, arrays, split.valid, cfg), "test": summary(res.model, ds, arrays,
                                                                                    split.test, cfg)})

    set_seed(cfg.train.seed)
    model = build_model(cfg.model, ds.spec)
    pre_cfg = fast_valid.override(train={"max_minutes": args.pre_minutes},
                                  loss={"kind": "sampled", "negatives": 512, "sampler": "popularity"})
    pre = pretrain(model, pre_cfg, ds.seq, split.train_end, split.valid, arrays, counts)
    emit({"config": "pretrained", "objective": "next-item (all behaviours)", "epochs": pre.epochs,
          "best_epoch": pre.best_epoch, "stopped_by": pre.stopped_by, "train_seconds": round(pre.train_seconds, 1),
          "trainable_params": count_parameters(model)[0],
          "valid": summary(model, ds, arrays, split.valid, cfg), "test": summary(model, ds, arrays, split.test, cfg)})
    state = {k: v.clone() for k, v in model.state_dict().items()}

    for mode in ("full", "frozen", "lora"):
        m = build_model(cfg.model, ds.spec)
        m.load_state_dict(state)
        c = ft_cfg if mode == "full" else ft_cfg.override(train={"learning_rate": args.adapter_lr})
        res = finetune(m, c, ds.seq, split.train_end, split.valid, buy, mode, arrays, counts)
        row = {"config": f"finetune-{mode}", **res.summary(), "valid": summary(res.model, ds, arrays, split.valid, cfg),
               "test": summary(res.model, ds, arrays, split.test, cfg)}
        if mode == "lora":  # merged: saves and reloads as a plain model
            with tempfile.TemporaryDirectory() as tmp:
                save_run(Path(tmp) / "run", res.model, c, ds.vocabs, counts, ds.item_category())
                loaded = load_run(Path(tmp) / "run").model
            _, batch = next(history_batches(ds.seq, arrays, split.test, cfg.model.max_len, 64))
            res.model.eval()
            with torch.inference_mode():
                row["reload_identical"] = bool(torch.allclose(res.model.score_all(batch), loaded.score_all(batch),
                                                              atol=1e-5))
        emit(row)


if __name__ == "__main__":
    main()
