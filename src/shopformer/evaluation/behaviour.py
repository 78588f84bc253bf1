"""Evaluation protocol of the multi-behaviour heads: windows, examples, baselines, metrics, plots.

Global temporal split on real timestamps (``split.valid_start`` / ``split.test_start``): the model
trains on each user's events before t1; validation predictions are made at every event in
[t1, t2), test predictions at every event from t2 on, each from the user's full history before
that event (cut at the prediction time, so it includes earlier events of the same window, as it
would online) and never anything after it. Users without any example of a kind in a window are
excluded and counted, never scored as zero. Intent labels need the N following events: a
prediction whose horizon runs past the end of its window (t2 for validation, the end of the log
for test) is censored, i.e. excluded and counted. Item rankings keep the items already in the
history (``exclude_seen=False``): in shop logs users buy what they viewed or carted, which is
exactly what the heuristic baselines exploit, so removing seen items would hide the main signal.

Heuristics never name a behaviour: "non-majority" is every type but the most frequent one in
training (views, on the shop logs here).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from shopformer.config import Config
from shopformer.data.batches import Batch, EventArrays, history_batches
from shopformer.data.corpus import Dataset
from shopformer.data.schema import PAD
from shopformer.data.sequences import Sequences, training_mask
from shopformer.data.split import (
    EvalExamples,
    Window,
    intent_examples,
    intent_labels_after,
    subsample,
    window_examples,
)
from shopformer.evaluation.baselines import (
    Markov,
    Popularity,
    RecentItems,
    WeightedRecentItems,
    behaviour_transitions,
    item_counts,
    majority_behaviour,
    shop_baselines,
)
from shopformer.evaluation.blend import Blend, blend_chunk, blend_scores, choose_blend
from shopformer.evaluation.classification import binary_summary, fit_platt, multiclass_summary, sigmoid
from shopformer.evaluation.metrics import metric_keys, needs_lists
from shopformer.evaluation.ranking import ScoreFn, evaluate, evaluate_each
from shopformer.evaluation.report import plot_confusion, plot_reliability
from shopformer.models.base import SequenceModel

T = TypeVar("T")
ProbFn = Callable[[Batch], np.ndarray]


def _collect(fn: ProbFn, seq: Sequences, arrays: EventArrays, ex: EvalExamples, max_len: int, bs: int) -> np.ndarray:
    parts = [fn(batch) for _, batch in history_batches(seq, arrays, ex, max_len, bs)]
    return np.concatenate(parts) if parts else np.zeros(0)


def behaviour_scorer(model: SequenceModel, behaviour: int) -> ScoreFn:
    def score(batch: Batch) -> torch.Tensor:
        model.eval()
        with torch.inference_mode():
            return model.score_all(batch, behaviour).float()

    score.max_len = model.max_len  # type: ignore[attr-defined]  # evaluate never feeds it more
    return score


def _item_metrics(m: dict, ks: tuple[int, ...]) -> dict:
    """The table metrics of the registry (+ n, CIs), overall and on repeat / explore targets."""
    keep = [*metric_keys(ks, table=True), "n"]

    def part(d: dict) -> dict:
        out = {k: d[k] for k in keep if k in d}
        if "share" in d:
            out["share"] = d["share"]
        if "ci95" in d:
            out["ci95"] = {k: v for k, v in d["ci95"].items() if k in keep}
        return out

    return {**part(m), **{p: part(m[p]) for p in ("repeat", "explore") if p in m}}


def decision_offsets(
    probs: np.ndarray, y: np.ndarray, prior: np.ndarray, labels: list[int]
) -> tuple[float, np.ndarray]:
    """Tune tau of the class decision argmax(log p - tau log prior) for macro-F1 on validation.

    Probabilities stay calibrated; only the decision is shifted toward rare classes. Returns
    (tau, (C,) additive log offsets)."""
    from shopformer.evaluation.classification import macro_f1

    logp, logprior = np.log(np.clip(probs, 1e-12, None)), np.log(np.clip(prior, 1e-12, None))
    best = (-1.0, 0.0)
    for tau in np.linspace(0.0, 1.5, 16):
        pred = _decide(logp, -tau * logprior, labels)
        best = max(best, (macro_f1(y, pred, labels), -tau))  # ties keep the smaller tau
    tau = -best[1]
    return float(tau), -tau * logprior


def _decide(logp: np.ndarray, offsets: np.ndarray, labels: list[int]) -> np.ndarray:
    cols = np.asarray(labels)
    return cols[np.argmax(logp[:, cols] + offsets[cols], axis=1)]


@dataclass
class EvalContext:
    """What every part of the protocol shares. ``max_len`` is the history window, read from the
    evaluated model (``SequenceModel.max_len``), never from the config: baselines see the same one."""

    ds: Dataset
    cfg: Config
    arrays: EventArrays
    train_end: np.ndarray
    valid: Window
    test: Window
    target: int
    max_len: int
    excluded: dict[str, dict[str, int]] = field(default_factory=dict)
    # Baselines fitted on training events, shared by every window and table of one run (and by
    # ``dataclasses.replace`` copies: the dict is passed by reference), so each is fitted once.
    fitted: dict[tuple, Any] = field(default_factory=dict, repr=False)

    def once(self, key: tuple, make: Callable[[], T]) -> T:
        if key not in self.fitted:
            self.fitted[key] = make()
        return self.fitted[key]

    def counts(self, behaviour: int | None = None) -> np.ndarray:
        """Training item counts (of one behaviour, or of all when None)."""
        return self.once(("counts", behaviour), lambda: item_counts(
            self.ds.seq, self.train_end, self.ds.spec.n_items, behaviour=behaviour))

    def markov(self) -> Markov:
        return self.once(("markov",), lambda: Markov(self.ds.seq, self.train_end, self.ds.spec.n_items))

    def weighted_recent(self, behaviour: int | None) -> WeightedRecentItems:
        return self.once(("weighted recent", behaviour), lambda: WeightedRecentItems.fit(
            self.ds.seq, self.train_end, self.ds.spec.n_items, self.n_behaviours, target_behaviour=behaviour))

    @property
    def n_behaviours(self) -> int:
        return len(self.ds.vocabs.behaviours)

    @property
    def names(self) -> list[str]:
        return list(self.ds.vocabs.behaviours.tokens[1:])


def evaluate_items(ctx: EvalContext, models: dict[str, SequenceModel], bootstrap: int,
                   max_examples: int | None = None, blends: dict[str, Blend] | None = None) -> dict:
    """(a) any-behaviour and (b) per-behaviour next-item rankings, models beside heuristics.

    ``max_examples`` caps each ranking task by a seeded uniform sample (full-catalogue ranking of
    every view in a window costs more than it tells); the count used is reported as ``n``.
    ``blends`` (model name -> its served blend) adds the blend's row for every behaviour asked."""
    seq, cfg, n_items = ctx.ds.seq, ctx.cfg, ctx.ds.spec.n_items
    ecfg = cfg.eval.model_copy(update={"exclude_seen": False, "bootstrap": bootstrap})
    counts = ctx.counts()
    majority = majority_behaviour(seq, ctx.train_end, ctx.n_behaviours)
    non_majority = np.ones(ctx.n_behaviours + 1, bool)
    non_majority[[PAD, majority]] = False
    # item-to-item neighbours and category popularity do not depend on the behaviour asked
    shop = ctx.once(("shop",), lambda: shop_baselines(seq, ctx.train_end, n_items, ctx.n_behaviours))
    discovery: dict[str, ScoreFn] = {k: shop[k] for k in ("co-occurrence", "category popularity") if k in shop}
    out: dict = {}
    for b in [PAD, *range(1, ctx.n_behaviours + 1)]:
        key = "any" if b == PAD else ctx.ds.vocabs.behaviours.tokens[b]
        ex, excl = window_examples(seq, ctx.test, None if b == PAD else b)
        ctx.excluded[f"items_{key}"] = {**excl, "not_sampled": max(0, len(ex) - (max_examples or len(ex)))}
        ex = subsample(ex, max_examples)
        if len(ex) == 0:
            out[key] = {}
            continue
        b_counts = counts if b == PAD else ctx.counts(b)
        systems: dict[str, ScoreFn] = {}
        for name, m in models.items():
            if m.heads is not None or b == PAD:
                systems[name] = behaviour_scorer(m, b)
            if b != PAD and m.heads is not None:
                systems[f"{name} (any-behaviour query)"] = behaviour_scorer(m, PAD)
            if blends and name in blends and (m.heads is not None or b == PAD):
                systems[blends[name].row(name)] = blends[name].scorer(behaviour_scorer(m, b))
        systems["popularity"] = Popularity(counts)
        if b != PAD:
            systems[f"popularity among {key}"] = Popularity(b_counts)
        systems["markov"] = ctx.markov()
        systems["recent non-majority items"] = RecentItems(non_majority, b_counts)
        all_types = np.ones(ctx.n_behaviours + 1, bool)
        all_types[PAD] = False
        systems["recent items"] = RecentItems(all_types, b_counts)
        systems["weighted recent items"] = ctx.weighted_recent(None if b == PAD else b)
        systems.update(discovery)
        out[key] = {
            name: _item_metrics(
                evaluate(fn, seq, ctx.arrays, ex, n_items, ctx.max_len, ecfg).metrics, cfg.eval.ks
            )
            for name, fn in systems.items()
        }
    return out


def tune_item_blend(ctx: EvalContext, model: SequenceModel, max_examples: int | None = None
                    ) -> tuple[Blend | None, dict]:
    """Training step (``train.blend``): the mixture of ``model`` with a blendable baseline aimed at
    the target behaviour (fitted on training events) that ranks the validation window best by
    ``train.monitor``, averaged over the two questions a shop asks most: the next target-behaviour
    item and the next item of any behaviour (a saturated or tiny purchase window cannot decide
    alone); None when the model alone is best (``choose_blend``). One blend serves every behaviour
    asked."""
    seq, n_items, cfg, target = ctx.ds.seq, ctx.ds.spec.n_items, ctx.cfg, ctx.target
    ecfg = cfg.eval.model_copy(update={"exclude_seen": False, "bootstrap": 0})
    questions = [(b, subsample(window_examples(seq, ctx.valid, None if b == PAD else b)[0], max_examples))
                 for b in (target, PAD)]

    lists = needs_lists(cfg.train.monitor)  # a rank metric chooses: no top-K lists, one pass per round

    def validate(blends: list[Blend | None]) -> list[float]:
        per_question = [[float(res.metrics[cfg.train.monitor]) for res in evaluate_each(
            blend_scores(behaviour_scorer(model, b), blends), len(blends), seq, ctx.arrays, ex, n_items,
            ctx.max_len, ecfg, bootstrap=False, lists=lists)] for b, ex in questions]
        return [sum(scores) / len(scores) for scores in zip(*per_question, strict=True)]

    baselines: dict[str, ScoreFn] = {
        "popularity": Popularity(ctx.counts(target)),
        "markov": ctx.markov(),
        "recent items": RecentItems(np.arange(ctx.n_behaviours + 1) != PAD, ctx.counts(target)),
        "weighted recent items": ctx.weighted_recent(target),
    }
    chunk = blend_chunk(max(len(ex) for _, ex in questions), max(ecfg.ks), lists)
    blend, grid = choose_blend(baselines, validate, chunk)
    return blend, {"chosen": blend.summary() if blend else None,
                   "monitor": f"valid_{cfg.train.monitor} (mean of next '{ctx.names[target - 1]}' item and next item)",
                   "behaviour": ctx.names[target - 1],
                   "grid": {name: {str(a): v for a, v in g.items()} for name, g in grid.items()}}


def _training_prior(ctx: EvalContext) -> np.ndarray:
    """(n_behaviours + 1,) share of each behaviour type among training events (0 at padding)."""
    seq = ctx.ds.seq
    mask = training_mask(seq, ctx.train_end)
    prior = np.bincount(seq.behaviours[mask], minlength=ctx.n_behaviours + 1).astype(np.float64)
    prior[PAD] = 0.0
    return prior / prior.sum()


def calibrate_heads(ctx: EvalContext, model: SequenceModel) -> dict:
    """Fit a model's validation-time post-processing and store it in its head buffers.

    A training step (the training pipeline calls it once, before saving the run), never part of
    evaluation: the next-action decision offsets (macro-F1 on the validation window) and the
    intent Platt scaling (validation window) are written into ``heads.action_offsets`` and
    ``heads.intent_calibration``; ``evaluate_actions`` / ``evaluate_intent`` only read them.
    Returns what was fitted ({"decision_tau": ..., "platt": [a, b]}, for the parts present)."""
    heads = model.heads
    if heads is None:
        return {}
    seq, bs = ctx.ds.seq, ctx.cfg.eval.batch_size
    out: dict = {}
    if "action" in heads.parts:
        labels = list(range(1, ctx.n_behaviours + 1))
        ex_v, _ = window_examples(seq, ctx.valid)
        y_v = seq.behaviours[ex_v.pos].astype(np.int64)
        p_v = _collect(_action_probs(model), seq, ctx.arrays, ex_v, model.max_len, bs)
        tau, offsets = decision_offsets(p_v, y_v, _training_prior(ctx), labels)
        heads.action_offsets.copy_(torch.from_numpy(offsets).float())
        out["decision_tau"] = tau
    if "intent" in heads.parts:
        task = ctx.cfg.task
        ex_v, y_v, _ = intent_examples(seq, ctx.valid, ctx.target, task.intent_horizon, task.intent_seconds)
        a, b = fit_platt(_collect(_intent_logits(model), seq, ctx.arrays, ex_v, model.max_len, bs), y_v)
        heads.intent_calibration.copy_(torch.tensor([a, b]))
        out["platt"] = [float(v) for v in heads.intent_calibration.tolist()]
    return out


def evaluate_actions(ctx: EvalContext, models: dict[str, SequenceModel], plot_dir: Path | None) -> dict:
    """(c) next behaviour type: models (with the decision offsets stored by ``calibrate_heads``)
    and baselines (offsets tuned on validation here: they are not saved). Never modifies a model."""
    seq, cfg = ctx.ds.seq, ctx.cfg
    labels = list(range(1, ctx.n_behaviours + 1))
    ex_v, _ = window_examples(seq, ctx.valid)
    ex_t, excl = window_examples(seq, ctx.test)
    ctx.excluded["action"] = excl
    y_v, y_t = seq.behaviours[ex_v.pos].astype(np.int64), seq.behaviours[ex_t.pos].astype(np.int64)
    prior = _training_prior(ctx)
    trans = behaviour_transitions(seq, ctx.train_end, ctx.n_behaviours)
    fns: dict[str, ProbFn] = {}
    for name, m in models.items():
        if m.heads is not None and "action" in m.heads.parts:
            fns[name] = _action_probs(m)
    fns["majority class"] = lambda batch: np.repeat(prior[None], len(batch), 0)
    fns["markov (previous behaviour)"] = lambda batch: trans[batch.behaviours[:, -1].numpy()]
    out = {}
    bs = cfg.eval.batch_size
    for name, fn in fns.items():
        window = models[name].max_len if name in models else ctx.max_len
        p_t = _collect(fn, seq, ctx.arrays, ex_t, window, bs)
        stored: list[float] | None = None
        if name in models:  # the model's own offsets, fitted once in training (calibrate_heads)
            heads = models[name].heads
            assert heads is not None  # only models with an action head are in fns
            offsets = heads.action_offsets.detach().double().cpu().numpy()
            stored = [float(v) for v in offsets]
        elif name == "majority class":
            tau, offsets = 0.0, np.zeros(ctx.n_behaviours + 1)  # always the majority: the reference point
        else:
            tau, offsets = decision_offsets(_collect(fn, seq, ctx.arrays, ex_v, window, bs), y_v, prior, labels)
        pred = _decide(np.log(np.clip(p_t, 1e-12, None)), offsets, labels)
        res = multiclass_summary(y_t, pred, ctx.names, labels)
        if stored is None:
            res["decision_tau"] = tau
        else:
            res["decision_offsets"] = stored
        res["log_loss"] = float(-np.mean(np.log(np.clip(p_t[np.arange(len(y_t)), y_t], 1e-12, None))))
        out[name] = res
        if plot_dir is not None and name in models:
            plot_confusion(np.asarray(res["confusion"]), ctx.names, plot_dir / f"confusion_{_slug(name)}.png",
                           f"next action: {name}")
    return out


def _action_probs(model: SequenceModel) -> ProbFn:
    def fn(batch: Batch) -> np.ndarray:
        model.eval()
        with torch.inference_mode():
            return torch.softmax(model.action_logits(batch).float(), -1).numpy()

    return fn


def _intent_logits(model: SequenceModel) -> ProbFn:
    def fn(batch: Batch) -> np.ndarray:
        model.eval()
        with torch.inference_mode():
            return model.intent_logit(batch).float().numpy()

    return fn


def evaluate_intent(ctx: EvalContext, models: dict[str, SequenceModel], plot_dir: Path | None) -> dict:
    """(d) purchase intent: ROC-AUC, PR-AUC and calibration. Models use the Platt scaling stored in
    their heads (fitted on validation in training, ``calibrate_heads``); baselines are Platt-scaled
    on validation here (they are not saved). Never modifies a model."""
    seq, cfg, target = ctx.ds.seq, ctx.cfg, ctx.target
    horizon, seconds = cfg.task.intent_horizon, cfg.task.intent_seconds
    ex_v, y_v, _ = intent_examples(seq, ctx.valid, target, horizon, seconds)
    ex_t, y_t, excl = intent_examples(seq, ctx.test, target, horizon, seconds)
    ctx.excluded["intent"] = excl
    train_labels = intent_labels_after(seq, ctx.train_end, target, horizon, seconds, ctx.valid.lo)
    known = (train_labels >= 0) & training_mask(seq, ctx.train_end)
    base_rate = float(train_labels[known].mean()) if known.any() else 0.0
    majority = majority_behaviour(seq, ctx.train_end, ctx.n_behaviours)

    def history_rate(batch: Batch) -> np.ndarray:  # share of target events in the visible history
        real = (batch.items != PAD).float()
        return (((batch.behaviours == target).float().sum(1) + base_rate) / (real.sum(1) + 1.0)).numpy()

    def recent_non_majority(batch: Batch) -> np.ndarray:  # non-majority events among the last N
        last = batch.behaviours[:, -horizon:]
        return ((last != PAD) & (last != majority)).float().sum(1).numpy()

    fns: dict[str, ProbFn] = {}
    for name, m in models.items():
        if m.heads is not None and "intent" in m.heads.parts:
            fns[name] = _intent_logits(m)
    fns["history target rate"] = history_rate
    fns["recent non-majority events"] = recent_non_majority
    out: dict = {}
    bs = cfg.eval.batch_size
    for name, fn in fns.items():
        window = models[name].max_len if name in models else ctx.max_len
        s_t = _collect(fn, seq, ctx.arrays, ex_t, window, bs)
        if name in models:
            heads = models[name].heads
            assert heads is not None  # only models with an intent head are in fns
            a, b = (float(v) for v in heads.intent_calibration.tolist())
        else:
            a, b = fit_platt(_collect(fn, seq, ctx.arrays, ex_v, window, bs), y_v)
        prob = sigmoid(a * s_t + b)
        res = binary_summary(y_t, prob)
        res["platt"] = [a, b]
        res["uncalibrated_roc_auc"] = res["roc_auc"]  # Platt is monotone (a > 0): AUC unchanged
        out[name] = res
        if name in models and plot_dir is not None:
            plot_reliability(res["reliability"], plot_dir / f"reliability_{_slug(name)}.png",
                             f"purchase intent: {name} (ECE {res['ece']:.3f})")
    out["constant training rate"] = binary_summary(y_t, np.full(len(y_t), base_rate))
    return out


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


# ---------------------------------------------------------------------------------------------
# Plots


def json_number(x: float) -> float | None:
    return None if np.isnan(x) else float(x)


def protocol_text(cfg: Config) -> str:
    return (
        "Global temporal split: training events before valid_start; validation predictions at every event in "
        "[valid_start, test_start), test predictions at every event from test_start on, each from the full history "
        "before it. Item rankings: full ranking over the whole catalogue, items already seen kept (users re-buy "
        "what they viewed or carted), ties count against the system. Next action: decision offsets "
        f"(argmax log p - tau log prior) tuned for macro-F1 on validation. Intent: target behaviour "
        f"{cfg.task.intent_text}; Platt scaling fitted on validation; censored horizons excluded and "
        "counted. A model's offsets and Platt scaling are fitted once in training and saved with it (evaluation "
        "reads them, never refits); baselines are fitted on validation. Model selected on validation, test used once."
    )


def metrics_json_line(metrics: dict) -> str:
    return json.dumps(metrics, default=float, separators=(",", ":"))
