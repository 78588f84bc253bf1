"""Cold start on Amazon Beauty: can a model rank items it never saw in training?

    nice -n 10 .venv/bin/python bench/cold_start.py --max-minutes 15 | tee bench/results/cold_start.jsonl
    .venv/bin/python bench/cold_start.py --data data/demo/beauty_head.txt --quick --max-minutes 1

A random ``--hide`` share of the items (seeded) is removed from the data entirely, except where
one is a user's very last event (the leave-one-out test target). No hidden item is in any
training sequence, validation target or history. Then SASRec id-only and SASRec + title vectors
(``models/text.py``: items without training events use their title vector alone and stay out of
the training softmax; ``--id-dropout`` trains warm items on their titles alone now and then) are
trained with the zoo protocol and evaluated on the test examples whose target is hidden
(``test_cold``) and on the others (``test_warm``). An id-only model has nothing to go on for a
hidden item (its id vector is still its random initialisation), so its cold numbers should be ~0.
The text model is also evaluated with every hidden item given the mean trained vector of its
``--neighbours`` most title-similar known items (``test_cold_neighbours``; no extra training).
"""

from __future__ import annotations

import argparse
import copy
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
from common import ROOT, load_or_prepare, provenance
from zoo import BEAUTY, TITLES, base_config, train_and_evaluate

from shopformer.data.corpus import make_split
from shopformer.data.ingest import IngestOptions
from shopformer.data.sequences import Sequences
from shopformer.data.split import EvalExamples
from shopformer.pipelines.next_item import side_preparer


def hide_items(seq: Sequences, hidden: np.ndarray) -> Sequences:
    """Drop every event of ``hidden`` items except each user's last event (vectorised)."""
    last = np.zeros(len(seq.items), bool)
    last[seq.offsets[1:][seq.lengths > 0] - 1] = True
    keep = ~np.isin(seq.items, hidden) | last
    counts = np.bincount(seq.user_row_of_event()[keep], minlength=seq.n_users)
    return Sequences(
        users=seq.users,
        offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        items=seq.items[keep],
        behaviours=seq.behaviours[keep],
        times=seq.times[keep],
        categories=seq.categories[keep],
        has_time=seq.has_time,
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=BEAUTY)
    ap.add_argument("--titles", type=Path, default=TITLES)
    ap.add_argument("--text-cache", type=Path, default=ROOT / "out" / "cache" / "beauty_titles_minilm.safetensors")
    ap.add_argument("--hide", type=float, default=0.05, help="share of items hidden from training")
    ap.add_argument("--max-minutes", type=float, default=15.0)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seed", type=int, default=0, help="which items are hidden")
    ap.add_argument("--id-dropout", type=float, default=0.3,
                    help="share of warm items trained on their title alone at each step (text model)")
    ap.add_argument("--neighbours", type=int, default=10,
                    help="also evaluate the text model with cold items given their k title neighbours' mean vector")
    ap.add_argument("--only", choices=("id", "text"), help="train only the id-only or only the title-aware model")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="section.key=value")
    args = ap.parse_args(argv)

    full = load_or_prepare(args.data, IngestOptions(format="sequences"))
    n_items = full.spec.n_items
    rng = np.random.default_rng(args.seed)
    hidden = np.sort(rng.choice(np.arange(1, n_items + 1), size=max(1, round(args.hide * n_items)), replace=False))
    ds = replace(full, seq=hide_items(full.seq, hidden))
    cfg = base_config(args.quick, args.max_minutes, args.overrides)
    split = make_split(ds, cfg)
    cold = np.isin(ds.seq.items[split.test.pos], hidden)
    subsets = {"cold": EvalExamples(split.test.rows[cold], split.test.pos[cold]),
               "warm": EvalExamples(split.test.rows[~cold], split.test.pos[~cold])}
    train_items = ds.seq.items[np.arange(len(ds.seq.items)) < np.repeat(split.train_end, ds.seq.lengths)]
    assert not np.isin(train_items, hidden).any(), "a hidden item leaked into training"
    common = {**provenance(__file__, argv), "dataset": args.data.name, "hidden_items": len(hidden),
              "cold_test_examples": int(cold.sum()), "warm_test_examples": int((~cold).sum()),
              "n_items": n_items, "neighbours": args.neighbours, "quick": args.quick}
    titled = cfg.override(text={"titles": str(args.titles), "id_dropout": args.id_dropout})
    text = side_preparer(titled, args.text_cache)

    def neighbours(model, counts):  # the same trained model, cold items given their title neighbours' vectors
        from shopformer.models.text import align_text, fill_cold_from_neighbours, title_vectors

        item_text = align_text(title_vectors(args.titles, args.text_cache), ds.vocabs.items)
        return {"neighbours": fill_cold_from_neighbours(copy.deepcopy(model), item_text, counts == 0, args.neighbours)}

    runs = (("id", "sasrec (id only)", None, None), ("text", "sasrec + text", text, neighbours))
    for key, name, prep, variants in runs:
        if args.only and key != args.only:
            continue
        line = train_and_evaluate(name, cfg, ds, prep, split=split, subsets=subsets, variants=variants)
        print(json.dumps({**line, **common}, default=float), flush=True)


if __name__ == "__main__":
    main()
