"""The promotion gate of continuous learning: time slices, the old model on grown data, the rule.

The gate slice is the newest ``valid_days`` of events (no model trained on it); the selection slice
before it picks the candidate's epoch. The candidate, the current model and the shop baselines are
ranked on the gate slice; per user, the difference candidate - reference (current model, best
baseline) must be >= 0 on average, and the lower end of its 95% bootstrap CI >= -``margin``.

Too few examples of the target behaviour (a multi-task or next-purchase run gates on its next
purchase; a small shop's day can hold a handful of purchases): with ``fallback`` (default) the
gate is decided on the next item of *any* behaviour over the same slice instead, by the same rule,
and the result says so (``fallback``: why, and the target-behaviour figures). A CI over 14
purchases cannot tell a better model from a worse one; over the slice's next items it can. Only
when that slice is too small as well is the candidate rejected as "too few to tell".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from shopformer.artifacts import Run
from shopformer.config import Config
from shopformer.data import schema as S
from shopformer.data.batches import Batch, EventArrays
from shopformer.data.corpus import Dataset
from shopformer.data.drift import jensen_shannon, psi, score_bins
from shopformer.data.growth import DAY
from shopformer.data.split import Split, temporal_split
from shopformer.evaluation.metrics import bootstrap_ci, per_example
from shopformer.evaluation.ranking import ScoreFn, evaluate, model_scorer
from shopformer.models.base import SequenceModel


@dataclass(frozen=True)
class GateConfig:
    metric: str | None = None  # default: the run's train.monitor (e.g. ndcg@10)
    margin: float = 0.01  # largest loss (in metric units) the CI may leave possible
    min_examples: int = 20  # fewer gate examples: rejected, too few to tell
    bootstrap: int = 1000
    baselines: bool = True  # the candidate must also match the best shop baseline
    fallback: bool = True  # too few target-behaviour examples: gate on the next item of any behaviour


def slice_bounds(ds: Dataset, valid_days: float) -> tuple[int, int]:
    """(t_valid, t_gate): train < t_valid <= selection < t_gate <= gate, both slices ``valid_days``
    long, the gate slice ending at the newest event."""
    if not ds.seq.has_time:
        raise ValueError(f"{ds.path}: retraining needs timestamps (the slices are cut by time)")
    if valid_days <= 0:
        raise ValueError(f"valid_days must be > 0, got {valid_days}")
    t_gate = int(ds.seq.times.max()) - int(valid_days * DAY) + 1
    return t_gate - int(valid_days * DAY), t_gate


def recent_split(ds: Dataset, valid_days: float, behaviour: int | None = None) -> tuple[Split, int, int]:
    """The split of ``slice_bounds`` (``valid`` = selection, ``test`` = gate: each user's first event
    there with a history, of ``behaviour`` if given) and its two boundaries."""
    t_valid, t_gate = slice_bounds(ds, valid_days)
    split = temporal_split(ds.seq, t_valid, t_gate, behaviour)
    what = "" if behaviour is None else f" '{ds.vocabs.behaviours.tokens[behaviour]}'"
    # with a target behaviour, an empty gate slice falls back to the next item (``GateConfig.fallback``)
    for name, part in (("selection", split.valid), ("gate", split.test))[: 2 if behaviour is None else 1]:
        if len(part) == 0:
            raise ValueError(f"the {name} slice (last {valid_days:g} day(s)) has no{what} examples with a history; "
                             "pass more recent events or a larger --valid-days")
    return split, t_valid, t_gate


def old_model_scorer(run: Run, n_items: int, behaviour: int | None = None) -> ScoreFn:
    """Score histories encoded with grown vocabularies by a model built for the old ones: events on
    ids it does not know are dropped from the history (as the recommender skips unknown items), and
    the new items score -inf (the old model cannot recommend them). ``behaviour``: rank the next
    item of that behaviour (0 = any; models with heads only), None: the model's default ranking."""
    model, spec = run.model, run.spec
    base = model_scorer(model) if behaviour is None else behaviour_scorer(model, behaviour)
    inner = run.blend.scorer(base) if run.blend is not None else base

    def score(batch: Batch) -> torch.Tensor:
        keep = (batch.items > S.PAD) & (batch.items <= spec.n_items) & (batch.behaviours <= spec.n_behaviours)
        order = torch.sort(keep.to(torch.int8), dim=1, stable=True).indices  # dropped first: left padding
        kept = keep.gather(1, order)

        def pack(t: torch.Tensor) -> torch.Tensor:
            return torch.where(kept, t.gather(1, order), torch.zeros_like(t))

        cats = pack(batch.categories)
        cats = torch.where(cats <= spec.n_categories, cats, torch.zeros_like(cats))
        old = Batch(pack(batch.items), pack(batch.behaviours), pack(batch.gaps), cats)
        scores = inner(old)
        out = torch.full((scores.shape[0], n_items + 1), float("-inf"), dtype=scores.dtype)
        out[:, : scores.shape[1]] = scores
        return out

    score.max_len = model.max_len  # type: ignore[attr-defined]
    return score


def behaviour_scorer(model: SequenceModel, behaviour: int) -> ScoreFn:
    """The model's ranking of the next item of ``behaviour`` (0 = any; its default ranking without heads)."""
    if model.heads is None:
        return model_scorer(model)

    def score(batch: Batch) -> torch.Tensor:
        model.eval()
        with torch.inference_mode():
            return model.score_all(batch, behaviour).float()

    score.max_len = model.max_len  # type: ignore[attr-defined]
    return score


def gate(systems: dict[str, ScoreFn], candidate: str, current: str | None, ds: Dataset, split: Split, cfg: Config,
         gc: GateConfig, baselines: Sequence[str]) -> dict:
    """Every system on the gate slice, and the candidate's paired comparison with the current model
    and the best baseline (per-user differences, bootstrap CI). ``passed`` and ``reasons`` say why."""
    metric = gc.metric or cfg.train.monitor
    arrays = EventArrays.from_sequences(ds.seq, cfg.model.time_buckets)
    ecfg = cfg.eval.model_copy(update={"bootstrap": 0})
    values, metrics, top1 = {}, {}, {}
    for name, fn in systems.items():
        res = evaluate(fn, ds.seq, arrays, split.test, ds.spec.n_items, cfg.model.max_len, ecfg, bootstrap=False)
        top1[name] = res.top1
        if metric not in res.metrics:
            raise ValueError(f"gate metric {metric!r} is not reported; one of: "
                             f"{', '.join(k for k, v in res.metrics.items() if isinstance(v, float))}")
        metrics[name] = {k: v for k, v in res.metrics.items() if ("@" in k and isinstance(v, float)) or k == "n"}
        values[name] = per_example(res.ranks, cfg.eval.ks)[metric]
    n = len(split.test)
    refs = [current] if current else []
    best = max(baselines, key=lambda b: values[b].mean()) if baselines else None
    if gc.baselines and best is not None:
        refs.append(best)
    comparisons, reasons = {}, []
    if n < gc.min_examples:
        reasons.append(f"only {n} gate examples (< {gc.min_examples}): too few to tell")
    for ref in refs:
        diff = values[candidate] - values[ref]
        lo, hi = bootstrap_ci(diff, gc.bootstrap) if gc.bootstrap else (float(diff.mean()), float(diff.mean()))
        ok = bool(diff.mean() >= 0 and lo >= -gc.margin)
        comparisons[ref] = {"diff": float(diff.mean()), "ci95": [lo, hi], "passed": ok}
        if not ok:
            why = "worse on average" if diff.mean() < 0 else f"CI allows a loss larger than the margin {gc.margin:g}"
            reasons.append(f"{metric} {values[candidate].mean():.4f} vs {ref} {values[ref].mean():.4f} "
                           f"(diff {diff.mean():+.4f}, 95% CI [{lo:+.4f}, {hi:+.4f}]): {why}")
    return {"metric": metric, "examples": n, "margin": gc.margin, "best_baseline": best,
            "systems": metrics, "comparisons": comparisons, "passed": not reasons, "reasons": reasons,
            "score_shift": score_shift(top1[candidate], top1[current]) if current else None}


def score_shift(candidate: np.ndarray | None, current: np.ndarray | None) -> dict | None:
    """How the top-1 score distribution moves from the current model to the candidate on the same
    gate-slice histories: PSI and Jensen-Shannon over the current model's score deciles
    (``data.drift.score_bins``), and both means. None without finite scores on either side."""
    if candidate is None or current is None:
        return None
    a, b = current[np.isfinite(current)], candidate[np.isfinite(candidate)]
    if len(a) == 0 or len(b) == 0:
        return None
    p, q = score_bins(a, b)
    return {"psi": psi(p, q), "js": jensen_shannon(p, q), "current_mean": float(a.mean()),
            "candidate_mean": float(b.mean()), "examples": len(b)}
