"""Which form of the served blend? Mixtures of a saved run's model with Markov, chosen on validation.

    .venv/bin/python bench/blend_forms.py RUN_DIR [--threads 1] [--out bench/results/blend_forms.jsonl]

RUN_DIR is a run written by ``shopformer train`` (its dataset is read from the run's manifest). The model is
mixed with first-order Markov counted on training events only (the strict no-refit protocol) in both forms of
``evaluation/blend.py`` -- "z" (standardised scores) and "prob" (the model's softmax interpolated with
p(j | last item)) -- over the served grid ``ALPHAS``, by ``choose_blend`` itself. Appends one line: every
weight's validation NDCG@10 / HR@10, each form's best weight and its test metrics, the model alone, and which
form ``choose_blend`` picks.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from common import RESULTS, provenance

from shopformer.artifacts import load_run
from shopformer.data.batches import EventArrays
from shopformer.data.corpus import load_dataset, make_split
from shopformer.data.split import EvalExamples
from shopformer.evaluation.baselines import Markov
from shopformer.evaluation.blend import Blend, Form, choose_blend
from shopformer.evaluation.ranking import ScoreFn, evaluate, model_scorer


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULTS / "blend_forms.jsonl")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    run = load_run(args.run / "model" if (args.run / "model").is_dir() else args.run)
    ds = load_dataset(run.manifest["dataset_dir"])
    cfg = run.config
    split = make_split(ds, cfg)
    arrays = EventArrays.from_sequences(ds.seq, cfg.model.time_buckets)
    model = model_scorer(run.model)
    markov = Markov(ds.seq, split.train_end, ds.spec.n_items)
    ecfg = cfg.eval.model_copy(update={"bootstrap": 0})

    def measure(fn: ScoreFn, examples: EvalExamples) -> dict[str, float]:
        res = evaluate(fn, ds.seq, arrays, examples, ds.spec.n_items, run.model.max_len, ecfg)
        return {k: round(float(res.metrics[k]), 5) for k in ("ndcg@10", "hr@10")}

    valid: dict[tuple[str, float], dict[str, float]] = {}

    def validate(blend: Blend | None) -> float:
        key = ("z", 0.0) if blend is None else (blend.form, blend.alpha)
        valid[key] = measure(model if blend is None else blend.scorer(model), split.valid)
        return valid[key]["ndcg@10"]

    chosen, _ = choose_blend({"markov": markov}, validate)
    line: dict = {**provenance(__file__, argv), "run": str(args.run), "seed": cfg.train.seed,
                  "model_alone": {"valid": valid[("z", 0.0)], "test": measure(model, split.test)},
                  "chosen": chosen.summary() if chosen else None}
    forms: tuple[Form, ...] = ("z", "prob")
    for form in forms:
        grid = {a: m for (f, a), m in valid.items() if f == form and a > 0}
        best = max(grid, key=lambda a: (grid[a]["ndcg@10"], -a))
        line[form] = {"valid": {str(a): m for a, m in grid.items()}, "best": best,
                      "test": measure(Blend("markov", markov, best, form=form).scorer(model), split.test)}
        print(form, best, line[form]["valid"][str(best)], line[form]["test"], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as f:
        f.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
