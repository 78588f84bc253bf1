"""Which form of the served blend? Mixtures of a saved run's model with Markov, chosen on validation.

    .venv/bin/python bench/blend_forms.py RUN_DIR [--threads 1] [--out bench/results/blend_forms.jsonl]

RUN_DIR is a run written by ``shopformer train`` (its dataset is read from the run's manifest). The model is
mixed with first-order Markov counted on training events only (the strict no-refit protocol) in two forms:

- "z", the served form (``evaluation/blend.py``): ``(1 - a) z(model) + a z(markov)``, rows standardised;
- "prob", the interpolation of language models (not adopted: see bench/results/blend_forms.jsonl):
  ``log[(1 - a) softmax(model) + a p(j | last item)]``, ``p(j | last)`` the last item's transition counts
  normalised; a last item never followed in training leaves the model's ranking as it is.

Each form's weight is chosen on validation NDCG@10 over the served grid (ties keep the smaller weight; "prob"
stops short of 1, which is Markov alone without its popularity backoff), then measured on test. A third entry,
"gate", chooses the "z" weight (0 to 0.2) apart for each bucket of how often the last item was followed in
training (``GATE_EDGES``). Appends one line: every weight's validation NDCG@10 / HR@10, each form's choice and
its test metrics, the gate's weights per bucket, the model alone.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from common import RESULTS, provenance

from shopformer.artifacts import load_run
from shopformer.data.batches import Batch, EventArrays
from shopformer.data.corpus import load_dataset, make_split
from shopformer.data.split import EvalExamples
from shopformer.evaluation.baselines import Markov
from shopformer.evaluation.blend import ALPHAS, Blend
from shopformer.evaluation.ranking import ScoreFn, evaluate, model_scorer

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

    def ranks(fn: ScoreFn, examples: EvalExamples) -> np.ndarray:
        return evaluate(fn, ds.seq, arrays, examples, ds.spec.n_items, run.model.max_len, ecfg).ranks

    def metrics(r: np.ndarray) -> dict[str, float]:  # one target per example: NDCG@10 = 1 / log2(rank + 2)
        return {"ndcg@10": round(float(np.where(r < 10, 1 / np.log2(r + 2), 0).mean()), 5),
                "hr@10": round(float((r < 10).mean()), 5)}

    def measure(fn: ScoreFn, examples: EvalExamples) -> dict[str, float]:
        return metrics(ranks(fn, examples))

    forms: dict[str, tuple[Callable[[float], ScoreFn], tuple[float, ...]]] = {
        "z": (lambda a: Blend("markov", markov, a).scorer(model), ALPHAS[1:]),
        "prob": (prob_form(model, markov), ALPHAS[1:-1])}
    line: dict = {**provenance(__file__, argv), "run": str(args.run), "seed": cfg.train.seed,
                  "model_alone": {"valid": measure(model, split.valid), "test": measure(model, split.test)}}
    for form, (at, weights) in forms.items():
        grid = {a: measure(at(a), split.valid) for a in weights}
        best = max(grid, key=lambda a: (grid[a]["ndcg@10"], -a))
        line[form] = {"valid": {str(a): m for a, m in grid.items()}, "best": best,
                      "test": measure(at(best), split.test)}
        print(form, best, grid[best], line[form]["test"], flush=True)
    # "gate": the "z" weight chosen apart for each bucket of the last item's training out-count (users are
    # disjoint across buckets, so each bucket's weight is chosen on its own validation examples)
    out_count = torch.sparse.sum(markov.transitions, 1).to_dense().numpy()

    def bucket(examples: EvalExamples) -> np.ndarray:
        return np.digitize(out_count[ds.seq.items[examples.pos - 1]], GATE_EDGES)

    weights = (0.0, *ALPHAS[1:4])
    at = forms["z"][0]
    valid_ranks = {a: ranks(model if a == 0 else at(a), split.valid) for a in weights}
    b = bucket(split.valid)
    chosen = [max(weights, key=lambda a: (metrics(valid_ranks[a][b == k])["ndcg@10"] if (b == k).any() else 0, -a))
              for k in range(len(GATE_EDGES) + 1)]
    b = bucket(split.test)
    test = np.zeros(len(b))
    for a in set(chosen):
        r = ranks(model if a == 0 else at(a), split.test)
        for k in np.flatnonzero(np.array(chosen) == a):
            test[b == k] = r[b == k]
    valid = np.choose(bucket(split.valid), [valid_ranks[a] for a in chosen])
    line["gate"] = {"edges": list(GATE_EDGES), "weights": chosen, "valid": metrics(valid), "test": metrics(test),
                    "sizes_valid": np.bincount(bucket(split.valid), minlength=len(chosen)).tolist()}
    print("gate", chosen, line["gate"]["valid"], line["gate"]["test"], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as f:
        f.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
