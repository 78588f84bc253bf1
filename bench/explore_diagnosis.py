"""Why a multi-behaviour model misses explore targets: is it the ranking policy or the explore scores?

    .venv/bin/python bench/explore_diagnosis.py --run out/bench_multibehaviour/taobao/model \\
        --dataset out/bench_data/UserBehavior_head-6f7023508e9c --results bench/results

On the test window's explore targets (the item is not in the user's history before it: the
tables' definition, ``evaluation.baselines.repeat_targets``), NDCG@10 of the saved run and of
the discovery heuristics, twice: in the full ranking (as every table reports it) and with the
history removed from the ranking, i.e. the discovery list a shop would show (``exclude_seen``).
If the model scores 0 in both, its explore distribution itself ranks new items badly; if only in
the first, the repeat items simply fill the top 10. One JSON line per behaviour asked goes to
stdout and, with ``--results``, replaces the lines of the same run in DIR/explore_diagnosis.jsonl.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from common import machine, provenance, rel

from shopformer.artifacts import load_run
from shopformer.data.batches import EventArrays
from shopformer.data.corpus import load_dataset
from shopformer.data.schema import PAD
from shopformer.data.split import EvalExamples, make_windows, subsample, window_examples
from shopformer.evaluation.baselines import repeat_targets, shop_baselines
from shopformer.evaluation.behaviour import behaviour_scorer
from shopformer.evaluation.ranking import evaluate
from shopformer.pipelines.multi_behaviour import configure

RIVALS = ("co-occurrence", "category popularity", "markov")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--dataset", type=Path, required=True)
    ap.add_argument("--examples", type=int, default=2000, help="seeded sample of test prediction points")
    ap.add_argument("--results", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    run, ds = load_run(args.run), load_dataset(args.dataset)
    cfg, target = configure(ds, run.config)
    train_end, _, test_w = make_windows(ds.seq, cfg)
    arrays = EventArrays.from_sequences(ds.seq, cfg.model.time_buckets)
    shop = shop_baselines(ds.seq, train_end, ds.spec.n_items, ds.spec.n_behaviours)
    lines = []
    for b in (PAD, target):
        ex = subsample(window_examples(ds.seq, test_w, None if b == PAD else b)[0], args.examples)
        new = ~repeat_targets(ds.seq, ex)
        ex = EvalExamples(ex.rows[new], ex.pos[new])
        systems = {"model": behaviour_scorer(run.model, b), **{k: shop[k] for k in RIVALS if k in shop}}
        line = {**provenance(__file__, argv), "run": rel(args.run), "dataset": rel(args.dataset),
                "behaviour": "any" if b == PAD else ds.vocabs.behaviours.tokens[b], "explore_targets": len(ex)}
        for excl, key in ((False, "full_ranking_ndcg10"), (True, "history_removed_ndcg10")):
            ecfg = cfg.eval.model_copy(update={"exclude_seen": excl, "bootstrap": 0})
            line[key] = {name: evaluate(fn, ds.seq, arrays, ex, ds.spec.n_items, run.model.max_len, ecfg,
                                        bootstrap=False).metrics["ndcg@10"] for name, fn in systems.items()}
        line["machine"] = machine()
        print(json.dumps(line), flush=True)
        lines.append(line)
    if args.results:
        path = args.results / "explore_diagnosis.jsonl"
        old = [x for x in (path.read_text().splitlines() if path.exists() else [])
               if x.strip() and json.loads(x)["run"] != rel(args.run)]
        path.write_text("\n".join([*old, *(json.dumps(x) for x in lines)]) + "\n")


if __name__ == "__main__":
    main()
