"""Which rule should choose the served blend's weights? Each rule's choice on a saved run, measured on test.

    .venv/bin/python bench/blend_choice.py RUN_DIR [RUN_DIR ...] [--group TEXT] [--threads 1] [--out ...]
    .venv/bin/python bench/blend_choice.py --report bench/results/blend_choice.jsonl   # the table, from the lines

The product chooses its blend by the raw argmax of its validation monitor (NDCG@10) over a grid
(``evaluation/blend.py``, ``choose_blend``). Where that surface is flat, the argmax can land on a lucky cell at
the grid's edge (Beauty seed 2, stop 40: nine pairs within 0.0002 on validation, the chosen one below Markov
alone on test). Rules
measured, each on the same validation figures (every blend is ranked once on validation and once on test,
baselines counted on training events only, the strict no-refit protocol):

- "argmax": ``choose_blend`` itself (the product);
- "smooth": the same two rounds, each cell scored by the mean validation monitor of itself and its grid
  neighbours (round one: the weights before and after it on each baseline's curve, the model alone being weight
  0; round two: the 3 x 3 block around it in the grid of the round-one baseline's weight against the other
  baseline's, whose first column, weight 0, holds the single blends); a blend is served only when its own
  validation score also beats the model alone's. Cells at the grid's edge average fewer neighbours, so they are
  smoothed less (the edge is where the argmax's lucky cells sit);
- "oracle": the blend with the best test NDCG@10 among all those ranked (the headroom; not a rule).

Appends one line per run: each rule's choice with its validation and test NDCG@10 / HR@10, every ranked
blend's figures, and how often each side's targets are already in their history (``targets``). ``--report``
prints, from those lines, each rule's test figures by group (``--group``, e.g.
"Beauty, default config") and a rule computed from the recorded table alone: the product's two rounds choosing on
validation NDCG@10 + HR@10 instead of the monitor ("ndcg+hr"; every blend it asks for must be in the table).
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from common import RESULTS, provenance, saved_run

from shopformer.data.batches import EventArrays
from shopformer.data.corpus import make_split
from shopformer.data.sequences import Sequences
from shopformer.data.split import EvalExamples
from shopformer.evaluation.baselines import repeat_targets, shop_baselines
from shopformer.evaluation.blend import (
    ALPHAS,
    BLENDABLE,
    PAIR_ALPHAS,
    Blend,
    ScoreFn,
    blend_chunk,
    blend_scores,
    choose_blend,
)
from shopformer.evaluation.ranking import evaluate_each, model_scorer

METRICS = ("ndcg@10", "hr@10")


def key(blend: Blend | None) -> str:
    """A blend's name in the recorded table: "markov + co-occurrence @ 0.03 / 0.05", "model @ 0"."""
    return "model @ 0" if blend is None else f"{blend.baseline_name} @ {blend.weights_text}"


def smooth_choice(baselines: dict[str, ScoreFn], validate: Callable[[list[Blend | None]], list[float]]) -> Blend | None:
    """The "smooth" rule (module docstring)."""
    names = [n for n in baselines if n in BLENDABLE]
    if not names:
        return None
    singles = {n: [Blend.of(n, baselines[n], a) for a in ALPHAS[1:]] for n in names}
    curves = {n: validate([None, *singles[n]]) for n in names}  # index 0: the model alone
    model_score = curves[names[0]][0]

    def mean_around(values: np.ndarray, i: int, j: int) -> float:
        return float(values[max(i - 1, 0) : i + 2, max(j - 1, 0) : j + 2].mean())

    # round one: each baseline's curve over ALPHAS (index 0: the model alone), smoothed along the curve
    cells = [(mean_around(np.array([curves[n]]), 0, i), -ALPHAS[i], n, i)
             for n in names for i in range(1, len(ALPHAS)) if curves[n][i] > model_score]
    if not cells:
        return None
    _, _, name, at = max(cells, key=lambda c: c[:2])
    rows = list(range(max(at - 1, 1), min(at + 2, len(ALPHAS))))
    # the round-one winner stands unless round two, which scores it again among its neighbours, finds better
    best: tuple[float, float, Blend | None] = (float("-inf"), 0.0, singles[name][at - 1])
    for other in names:
        if other == name:
            continue
        # round two: rows = the winner's weight and its neighbours, columns = the other's weight (0: the single)
        grid = np.full((len(rows), len(PAIR_ALPHAS) + 1), np.nan)
        blends: dict[tuple[int, int], Blend] = {}
        for r, i in enumerate(rows):
            grid[r, 0] = curves[name][i]
            blends[r, 0] = singles[name][i - 1]
            for c, b in enumerate(PAIR_ALPHAS, start=1):
                if ALPHAS[i] + b <= 1.0:
                    blends[r, c] = Blend({name: baselines[name], other: baselines[other]}, {name: ALPHAS[i], other: b})
        pairs = [(rc, bl) for rc, bl in blends.items() if rc[1] > 0]
        asked: list[Blend | None] = [bl for _, bl in pairs]
        for (rc, _), score in zip(pairs, validate(asked), strict=True):
            grid[rc] = score
        for (r, c), blend in blends.items():
            smoothed = float(np.nanmean(grid[max(r - 1, 0) : r + 2, max(c - 1, 0) : c + 2]))
            if grid[r, c] > model_score:
                best = max(best, (smoothed, -blend.alpha, blend), key=lambda t: t[:2])
    return best[2]


def targets_seen(seq: Sequences, examples: EvalExamples) -> dict[str, float]:
    """The share of ``examples`` whose target is already in the user's history, and the mean history length:
    a test history is one event longer than its validation one (it ends with the validation item)."""
    repeats = repeat_targets(seq, examples)
    return {"share_in_history": round(float(repeats.mean()) if len(repeats) else 0.0, 4),
            "mean_history": round(float((examples.pos - seq.offsets[examples.rows]).mean()), 2)}


def study(run_dir: Path, group: str) -> dict:
    """Every rule's choice on one saved run, and every blend ranked on the way."""
    run, ds = saved_run(run_dir)
    cfg = run.config
    split = make_split(ds, cfg)
    arrays = EventArrays.from_sequences(ds.seq, cfg.model.time_buckets)
    model = model_scorer(run.model)
    fitted = shop_baselines(ds.seq, split.train_end, ds.spec.n_items, ds.spec.n_behaviours)
    ecfg = cfg.eval.model_copy(update={"bootstrap": 0})
    chunk = blend_chunk(max(len(split.valid), len(split.test)), max(ecfg.ks))
    metrics = sorted({*METRICS, cfg.train.monitor})
    table: dict[str, dict[str, dict[str, float]]] = {}

    def validate(blends: list[Blend | None]) -> list[float]:
        """The validation monitor of each blend, ranking the ones not seen yet on validation and test."""
        todo = list({key(b): b for b in blends if key(b) not in table}.values())
        for i in range(0, len(todo), chunk):
            part = todo[i : i + chunk]
            for side, examples in (("valid", split.valid), ("test", split.test)):  # one side's ranks held at a time
                results = evaluate_each(blend_scores(model, part), len(part), ds.seq, arrays, examples,
                                        ds.spec.n_items, run.model.max_len, ecfg, bootstrap=False)
                for blend, res in zip(part, results, strict=True):
                    table.setdefault(key(blend), {})[side] = {m: float(res.metrics[m]) for m in metrics}
        return [table[key(b)]["valid"][cfg.train.monitor] for b in blends]

    argmax, _ = choose_blend(fitted, validate, chunk)
    chosen = {"argmax": key(argmax), "smooth": key(smooth_choice(fitted, validate)),
              "oracle": max(table, key=lambda k: table[k]["test"]["ndcg@10"])}
    rounded = {k: {side: {m: round(v, 5) for m, v in ms.items()} for side, ms in sides.items()}
               for k, sides in table.items()}
    for rule, k in chosen.items():
        print(run_dir, rule, k, rounded[k], flush=True)
    return {"run": str(run_dir), "group": group, "seed": cfg.train.seed, "monitor": cfg.train.monitor,
            "rules": {rule: {"blend": k, **rounded[k]} for rule, k in chosen.items()},
            "model_alone": rounded["model @ 0"], "table": rounded,
            "targets": {side: targets_seen(ds.seq, ex) for side, ex in (("valid", split.valid), ("test", split.test))}}


def rechoose(table: dict[str, dict[str, dict[str, float]]], score: Callable[[dict[str, float]], float]) -> str:
    """A recorded line's choice by the product's two rounds under another validation score (e.g. NDCG@10 +
    HR@10), read from its table (KeyError: a blend the rule asks for was not ranked)."""
    names = [n for n in BLENDABLE if f"{n} @ {ALPHAS[1]:g}" in table]  # the run's blendable baselines, in order

    def unused(batch: object) -> torch.Tensor:
        raise AssertionError("a recorded table is never scored")

    def validate(blends: list[Blend | None]) -> list[float]:
        return [score(table[key(b)]["valid"]) for b in blends]

    blend, _ = choose_blend(dict.fromkeys(names, unused), validate)
    return key(blend)


def report(path: Path) -> None:
    """Each rule's test NDCG@10 / HR@10 by run and, averaged, by group (module docstring)."""
    groups: dict[str, dict[str, list[tuple[float, float]]]] = {}
    targets: dict[str, dict] = {}
    for line in map(json.loads, path.read_text().splitlines()):
        targets[line.get("group", "")] = line.get("targets", {})
        table = line["table"]
        chosen = {rule: v["blend"] for rule, v in line["rules"].items()}
        chosen["ndcg+hr"] = rechoose(table, lambda v: v["ndcg@10"] + v["hr@10"])
        row = groups.setdefault(line.get("group", ""), {})
        for rule, blend in chosen.items():
            test = table[blend]["test"]
            row.setdefault(rule, []).append((test["ndcg@10"], test["hr@10"]))
            print(f"{line['run']} seed {line['seed']} {rule}: {blend}, "
                  f"test {test['ndcg@10']:.4f} / {test['hr@10']:.4f}")
    for group, rules in groups.items():
        means = {rule: f"{statistics.mean(n for n, _ in v):.4f} / {statistics.mean(h for _, h in v):.4f}"
                 for rule, v in rules.items()}
        print(f"{group} ({len(next(iter(rules.values())))} runs): {means}; targets in their history: {targets[group]}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path, nargs="*")
    ap.add_argument("--group", default="", help="what the runs share, e.g. 'Beauty, default config'")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULTS / "blend_choice.jsonl")
    ap.add_argument("--report", type=Path, default=None, help="print the rules' figures from recorded lines")
    args = ap.parse_args(argv)
    if args.report is not None:
        report(args.report)
        return
    torch.set_num_threads(args.threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for run_dir in args.runs:
        line = {**provenance(__file__, argv), **study(run_dir, args.group)}
        with args.out.open("a") as f:
            f.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
