"""Augmentation ablation: SASRec on Amazon Beauty with each operator alone, and with none.

    nice -n 10 .venv/bin/python bench/augment_ablation.py --max-minutes 20 | tee bench/results/augment_ablation.jsonl
    .venv/bin/python bench/augment_ablation.py --data data/demo/beauty_head.txt --quick --max-minutes 1

Same protocol, base hyper-parameters and seed as bench/zoo.py; one JSON line per configuration
with validation and test metrics. Operators: crop, prefix, reorder, substitute, mask (each on a
window with probability ``--prob``, touching ``--ratio`` of it), and the contrastive auxiliary
loss with CL4SRec views or dropout-only (DuoRec) views. Pick the best on *validation* and pass
it to bench/zoo.py as ``--augment``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import load_or_prepare, provenance
from zoo import BEAUTY, base_config, train_and_evaluate

from shopformer.data.ingest import IngestOptions


def variants(prob: float, ratio: float, weight: float) -> dict[str, dict]:
    ops = {op: {op: prob, "ratio": ratio} for op in ("crop", "prefix", "reorder", "substitute", "mask")}
    return {
        "none": {},
        **ops,
        "contrastive-cl4srec": {"contrastive_weight": weight, "contrastive_views": "cl4srec", "ratio": ratio},
        "contrastive-dropout": {"contrastive_weight": weight, "contrastive_views": "dropout"},
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=BEAUTY)
    ap.add_argument("--max-minutes", type=float, default=20.0, help="training budget of each configuration")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--prob", type=float, default=0.5, help="probability that an operator touches a window")
    ap.add_argument("--ratio", type=float, default=0.2, help="share of the window an operator touches")
    ap.add_argument("--weight", type=float, default=0.1, help="contrastive loss weight")
    ap.add_argument("--only", default="", help="comma-separated variant names")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="section.key=value")
    args = ap.parse_args(argv)

    ds = load_or_prepare(args.data, IngestOptions(format="sequences"))
    cfg = base_config(args.quick, args.max_minutes, args.overrides)
    only = {s for s in args.only.split(",") if s}
    common = {**provenance(__file__, argv), "dataset": args.data.name, "quick": args.quick}
    for name, aug in variants(args.prob, args.ratio, args.weight).items():
        if only and name not in only:
            continue
        line = train_and_evaluate(f"sasrec+{name}", cfg.override(augment=aug), ds)
        print(json.dumps({**line, "variant": name, **common}, default=float), flush=True)


if __name__ == "__main__":
    main()
