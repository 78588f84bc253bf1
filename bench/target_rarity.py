"""How often the training events show each validation and test target item (leave-one-out, Beauty).

    .venv/bin/python bench/target_rarity.py                   # Amazon Beauty
    .venv/bin/python bench/target_rarity.py --data diginetica

Why: on Beauty every system scores ~20% lower on test than on validation, and changes that gain on
validation (label smoothing, ensembles) gain much less on test, while one that only changes how rare
items start (``model.init_std``) gained on test alone. This measures the one difference between the two
target sets that no model choice causes: how many training events their items have. Appends one line
to ``bench/results/target_rarity.jsonl``; reads no model and no metric.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from common import RESULTS, provenance
from defaults import SOURCES, load

from shopformer.config import load_config
from shopformer.data.corpus import make_split
from shopformer.pipelines.defaults import DEFAULT_CONFIG

THRESHOLDS = (1, 5, 10, 20)


def describe(counts: np.ndarray) -> dict:
    """Training events of each target's item -> median, mean log(1 + n) and the share at or below each threshold."""
    return {"targets": len(counts), "median": float(np.median(counts)),
            "mean_log1p": round(float(np.log1p(counts).mean()), 4),
            **{f"share_le_{t}": round(float((counts <= t).mean()), 4) for t in THRESHOLDS}}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", choices=sorted(SOURCES), default="beauty")
    ap.add_argument("--out", default=str(RESULTS / "target_rarity.jsonl"))
    args = ap.parse_args(argv)
    ds = load(args.data)
    split = make_split(ds, load_config(DEFAULT_CONFIG))  # the leave-one-out split every Beauty row uses
    seq = ds.seq
    rows = seq.user_row_of_event()
    training = np.arange(len(seq.items)) < split.train_end[rows]  # each user's events before validation
    counts = np.bincount(seq.items[training], minlength=ds.spec.n_items + 1)
    line = {**provenance(__file__, argv), "data": args.data, "items": ds.spec.n_items,
            "training_events": int(training.sum()),
            "valid": describe(counts[seq.items[split.valid.pos]]),
            "test": describe(counts[seq.items[split.test.pos]])}
    with open(args.out, "a") as f:
        f.write(json.dumps(line) + "\n")
    print(json.dumps(line))


if __name__ == "__main__":
    main()
