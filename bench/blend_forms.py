"""Which form of the served blend? Mixtures of a saved run's model with its baselines, chosen on validation.

    .venv/bin/python bench/blend_forms.py RUN_DIR [--threads 1] [--forms z,served,prob,gate] [--out ...]

RUN_DIR is a run written by ``shopformer train`` (its dataset is read from the run's manifest). Baselines are
counted on training events only (the strict no-refit protocol). Forms:

- "z", the stop-38 served form with Markov alone: ``(1 - a) z(model) + a z(markov)``, rows standardised;
- "served", what ``shopformer train`` chooses now (``evaluation/blend.py``, ``next_item.tune_blend``): every
  blendable baseline alone, then the winner beside each other one (e.g. Markov + co-occurrence), all ranked in
  one pass per chunk of the grid; its wall time is recorded beside the "z" grid's (one evaluation per weight);
- "prob", the interpolation of language models (not adopted: see bench/results/blend_forms.jsonl):
  ``log[(1 - a) softmax(model) + a p(j | last item)]``, ``p(j | last)`` the last item's transition counts
  normalised; a last item never followed in training leaves the model's ranking as it is;
- "gate" chooses the "z" weight (0 to 0.2) apart for each bucket of how often the last item was followed in
  training (``GATE_EDGES``).

Each weight is chosen on validation NDCG@10 (ties keep the smaller weight; "prob" stops short of 1, which is
Markov alone without its popularity backoff), then measured on test. The "z" and "served" choices are also
measured with their baselines counted through validation, as ``shopformer train`` serves them
(``train.blend_counts``). Appends one line: every weight's validation NDCG@10 / HR@10 (the served grid: its
monitor), each form's choice and its test metrics, the gate's weights per bucket, the model alone.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import RESULTS, provenance, saved_run

from shopformer.data.batches import Batch, EventArrays
from shopformer.data.corpus import make_split
from shopformer.evaluation.baselines import Markov, shop_baselines
from shopformer.evaluation.blend import ALPHAS, Blend
from shopformer.evaluation.metrics import per_example
from shopformer.evaluation.ranking import ScoreFn, evaluate, model_scorer
from shopformer.pipelines.next_item import Trained, tune_blend
from shopformer.training.fit import FitResult

GATE_EDGES = (1, 3, 10, 30)  # last item followed 0 / 1-2 / 3-9 / 10-29 / 30+ times in training


def prob_form(model: ScoreFn, markov: Markov) -> Callable[[float], ScoreFn]:
    def at(a: float) -> ScoreFn:
        def score(batch: Batch) -> torch.Tensor:
            logp = torch.log_softmax(model(batch).float(), 1)  # (B, V); -inf (padding) stays -inf
            counts = markov.transitions.index_select(0, batch.items[:, -1]).to_dense()  # (B, V)
            p_next = counts / counts.sum(1, keepdim=True).clamp(min=1.0)  # p(j | last); 0 rows: no transitions
            mixed = torch.logaddexp(logp + math.log1p(-a), p_next.log() + math.log(a))
            return torch.where(torch.isfinite(logp), mixed, logp)
        return score
    return at


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--forms", default="z,served,prob,gate", help="comma-separated subset to measure")
    ap.add_argument("--out", type=Path, default=RESULTS / "blend_forms.jsonl")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    run, ds = saved_run(args.run)
    cfg = run.config
    split = make_split(ds, cfg)
    arrays = EventArrays.from_sequences(ds.seq, cfg.model.time_buckets)
    model = model_scorer(run.model)
    markov = Markov(ds.seq, split.train_end, ds.spec.n_items)
    markov_through = Markov(ds.seq, split.training_end(refit=True), ds.spec.n_items)
    ecfg = cfg.eval.model_copy(update={"bootstrap": 0})

    examples = {"valid": split.valid, "test": split.test}
    forms: dict[str, Callable[[Any], ScoreFn]] = {
        "z": lambda a: Blend.of("markov", markov, a).scorer(model), "prob": prob_form(model, markov),
        # what `shopformer train` serves: the "z" form with Markov refit through validation (train.blend_counts)
        "through": lambda a: Blend.of("markov", markov_through, a).scorer(model)}
    cache: dict[tuple[str, Any, str], np.ndarray] = {}

    def ranks(form: str, a: Any, side: str) -> np.ndarray:
        """Each target's rank under one mixture (weight 0: the model alone), each evaluated once."""
        key = ("model", 0.0, side) if a == 0 else (form, a, side)
        if key not in cache:
            fn = model if a == 0 else forms[form](a)
            cache[key] = evaluate(fn, ds.seq, arrays, examples[side], ds.spec.n_items, run.model.max_len, ecfg).ranks
        return cache[key]

    def metrics(r: np.ndarray) -> dict[str, float]:
        values = per_example(r, (10,))  # the metric registry's definitions
        return {k: round(float(values[k].mean()), 5) for k in ("ndcg@10", "hr@10")}

    line: dict = {**provenance(__file__, argv), "run": str(args.run), "seed": cfg.train.seed,
                  "model_alone": {side: metrics(ranks("z", 0.0, side)) for side in examples}}
    wanted = set(args.forms.split(","))
    for form, weights in (("z", ALPHAS[1:]), ("prob", ALPHAS[1:-1])):
        if form not in wanted:
            continue
        t0 = time.perf_counter()
        grid = {a: metrics(ranks(form, a, "valid")) for a in weights}
        best = max(grid, key=lambda a: (grid[a]["ndcg@10"], -a))
        line[form] = {"valid": {str(a): m for a, m in grid.items()}, "best": best, "grid_seconds":
                      round(time.perf_counter() - t0, 1), "test": metrics(ranks(form, best, "test"))}
        print(form, best, grid[best], line[form]["test"], flush=True)
    if "z" in wanted:
        line["z"]["test_through_validation"] = metrics(ranks("through", line["z"]["best"], "test"))
    if "served" in wanted:
        fitted = shop_baselines(ds.seq, split.train_end, ds.spec.n_items, ds.spec.n_behaviours)
        t0 = time.perf_counter()
        # the product's choice (on training counts), its baselines then refit through validation as it serves them
        through, report = tune_blend(Trained(run.model, FitResult(), np.zeros(ds.spec.n_items + 1), {}), ds, split,
                                     cfg.override(train={"blend_counts": "validation"}), arrays, fitted)
        line["served"] = {**report, "grid_seconds": round(time.perf_counter() - t0, 1)}
        if through is not None:
            strict = through.with_baselines(fitted, "training")
            forms["served"], forms["served through"] = (lambda _: strict.scorer(model)), lambda _: through.scorer(model)
            line["served"]["test"] = metrics(ranks("served", 1, "test"))
            line["served"]["test_through_validation"] = metrics(ranks("served through", 1, "test"))
        print("served", report["chosen"], line["served"].get("test"), line["served"]["grid_seconds"], flush=True)
    if "gate" in wanted:
        # "gate": the "z" weight chosen apart for each bucket of the last item's training out-count (users are
        # disjoint across buckets, so each bucket's weight is chosen on its own validation examples)
        out_count = torch.sparse.sum(markov.transitions, 1).to_dense().numpy()
        bucket = {side: np.digitize(out_count[ds.seq.items[ex.pos - 1]], GATE_EDGES) for side, ex in examples.items()}
        weights = tuple(a for a in ALPHAS if a <= 0.2)
        b = bucket["valid"]

        def in_bucket(a: float, k: int) -> tuple[float, float]:  # ties keep the smaller weight
            return (metrics(ranks("z", a, "valid")[b == k])["ndcg@10"] if (b == k).any() else 0.0, -a)

        chosen = [max(weights, key=partial(in_bucket, k=k)) for k in range(len(GATE_EDGES) + 1)]
        gated = {side: np.choose(bucket[side], [ranks("z", a, side) for a in chosen]) for side in examples}
        line["gate"] = {"edges": list(GATE_EDGES), "weights": chosen, "valid": metrics(gated["valid"]),
                        "test": metrics(gated["test"]), "sizes_valid": np.bincount(b, minlength=len(chosen)).tolist()}
        print("gate", chosen, line["gate"]["valid"], line["gate"]["test"], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as f:
        f.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
