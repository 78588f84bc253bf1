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

import numpy as np
import torch

from shopformer.baselines import Markov, Popularity, item_counts, training_mask
from shopformer.behaviour_metrics import binary_summary, fit_platt, multiclass_summary, sigmoid
from shopformer.config import Config
from shopformer.data.dataset import Batch, EventArrays, history_batches
from shopformer.data.schema import PAD
from shopformer.data.sequences import Sequences
from shopformer.data.split import EvalExamples, resolve_boundary
from shopformer.evaluate import ScoreFn, evaluate
from shopformer.experiment import Dataset
from shopformer.models.base import SequenceModel

# ---------------------------------------------------------------------------------------------
# Intent labels


def intent_labels_after(seq: Sequences, end: np.ndarray, target: int, horizon: int) -> np.ndarray:
    """(N,) int8 label of a prediction made right after flat event i: 1 if the target behaviour
    occurs among events i+1 .. i+horizon, 0 if not, -1 (unknown) if those events are not all
    before ``end[user]`` (exclusive flat bound: the end of the window the labels may read)."""
    n = len(seq.items)
    rows = seq.user_row_of_event()
    idx = np.arange(n)
    bound = np.asarray(end, dtype=np.int64)[rows]  # (N,)
    hit = ((seq.behaviours == target) & (idx < bound)).astype(np.int64)
    csum = np.concatenate([[0], np.cumsum(hit)])  # csum[j] = hits among events < j
    last = idx + horizon  # the horizon's last event
    known = last < bound
    count = csum[np.minimum(last + 1, n)] - csum[idx + 1]
    return np.where(known, (count > 0).astype(np.int8), np.int8(-1)).astype(np.int8)


# ---------------------------------------------------------------------------------------------
# Evaluation examples


@dataclass(frozen=True)
class Window:
    """One evaluation window [lo, hi) of event times, and the flat bound its labels may read."""

    name: str
    lo: int
    hi: int | None  # None: open-ended (test)
    label_end: np.ndarray  # (U,) exclusive flat index: first event at/after ``hi`` (or the user's end)


def make_windows(seq: Sequences, cfg: Config) -> tuple[np.ndarray, Window, Window]:
    """(train_end, validation window, test window) of the global temporal split."""
    t1 = resolve_boundary(seq, float(cfg.split.valid_start))  # type: ignore[arg-type]
    t2 = resolve_boundary(seq, float(cfg.split.test_start))  # type: ignore[arg-type]
    if not t1 < t2:
        raise ValueError(f"temporal split needs valid_start < test_start, got {t1} >= {t2}")
    train_end = _first_at_or_after(seq, t1)
    return train_end, Window("valid", t1, t2, _first_at_or_after(seq, t2)), Window("test", t2, None, seq.offsets[1:])


def _first_at_or_after(seq: Sequences, t: int) -> np.ndarray:
    """(U,) flat index of each user's first event with time >= t (the user's end if none)."""
    out = seq.offsets[1:].copy()
    idx = np.flatnonzero(seq.times >= t)
    rows = seq.user_row_of_event()[idx]
    out[rows[::-1]] = idx[::-1]  # reverse assignment keeps the smallest index per user
    return out.astype(np.int64)


def window_examples(seq: Sequences, w: Window, behaviour: int | None = None) -> tuple[EvalExamples, dict[str, int]]:
    """Every event in the window (of one behaviour type, if given) with a non-empty history.

    Returns the examples and the exclusions: users active in the window without such an event,
    and events without any earlier event of the user.
    """
    t = seq.times
    in_w = (t >= w.lo) if w.hi is None else (t >= w.lo) & (t < w.hi)
    rows = seq.user_row_of_event()
    pos = np.flatnonzero(in_w & (True if behaviour is None else seq.behaviours == behaviour))
    has_history = pos > seq.offsets[:-1][rows[pos]]
    active = np.unique(rows[in_w])
    with_target = np.unique(rows[pos])
    excluded = {
        "users_in_window_without_event": int(len(np.setdiff1d(active, with_target))),
        "events_without_history": int((~has_history).sum()),
    }
    pos = pos[has_history]
    return EvalExamples(rows[pos].astype(np.int64), pos.astype(np.int64)), excluded


def intent_examples(
    seq: Sequences, w: Window, target: int, horizon: int
) -> tuple[EvalExamples, np.ndarray, dict[str, int]]:
    """Prediction points before each event of the window, their labels, and the censored count."""
    ex, excluded = window_examples(seq, w)
    labels = intent_labels_after(seq, w.label_end, target, horizon)[ex.pos - 1]  # predicted after event p - 1
    known = labels >= 0
    excluded = {**excluded, "censored_horizon": int((~known).sum())}
    return EvalExamples(ex.rows[known], ex.pos[known]), labels[known].astype(np.int64), excluded


# ---------------------------------------------------------------------------------------------
# Heuristic baselines (fitted on training events only)


def majority_behaviour(seq: Sequences, train_end: np.ndarray, n_behaviours: int) -> int:
    counts = np.bincount(seq.behaviours[training_mask(seq, train_end)], minlength=n_behaviours + 1)
    counts[PAD] = -1
    return int(counts.argmax())


class RecentItems:
    """Items of the history's events whose behaviour is allowed, most recent first; every other item
    below them by a prior (e.g. popularity among purchases), so the ranking is always complete.

    With the majority behaviour disallowed this is "the items the user recently carted or
    favourited" without naming either."""

    def __init__(self, allowed: np.ndarray, prior_counts: np.ndarray) -> None:
        self.allowed = torch.as_tensor(allowed, dtype=torch.bool)  # (n_behaviours + 1,)
        prior = np.asarray(prior_counts, dtype=np.float64)
        self.prior = torch.from_numpy(prior / (prior.max() + 1.0)).float()  # in [0, 1)

    def __call__(self, batch: Batch) -> torch.Tensor:
        b, length = batch.items.shape
        ok = (batch.items != PAD) & self.allowed[batch.behaviours]
        recency = torch.arange(1, length + 1, dtype=torch.float32).expand(b, length) + 1.0  # > any prior
        scores = self.prior.unsqueeze(0).repeat(b, 1)
        idx = torch.where(ok, batch.items, torch.zeros_like(batch.items))
        scores.scatter_reduce_(1, idx, torch.where(ok, recency, torch.zeros_like(recency)), reduce="amax")
        scores[:, PAD] = float("-inf")
        return scores


def behaviour_transitions(seq: Sequences, train_end: np.ndarray, n_behaviours: int) -> np.ndarray:
    """(B + 1, B + 1) P(next behaviour | previous behaviour) on training pairs, add-one smoothed."""
    mask = training_mask(seq, train_end)
    rows = seq.user_row_of_event()
    pair = mask[:-1] & mask[1:] & (rows[:-1] == rows[1:])
    counts = np.ones((n_behaviours + 1, n_behaviours + 1))
    np.add.at(counts, (seq.behaviours[:-1][pair], seq.behaviours[1:][pair]), 1)
    counts[:, PAD] = 0.0
    return counts / counts.sum(1, keepdims=True)


# ---------------------------------------------------------------------------------------------
# Evaluation


ProbFn = Callable[[Batch], np.ndarray]


def _collect(fn: ProbFn, seq: Sequences, arrays: EventArrays, ex: EvalExamples, max_len: int, bs: int) -> np.ndarray:
    parts = [fn(batch) for _, batch in history_batches(seq, arrays, ex, max_len, bs)]
    return np.concatenate(parts) if parts else np.zeros(0)


def behaviour_scorer(model: SequenceModel, behaviour: int) -> ScoreFn:
    def score(batch: Batch) -> torch.Tensor:
        model.eval()
        with torch.inference_mode():
            return model.score_all(batch, behaviour).float()

    return score


def _item_metrics(m: dict, ks: tuple[int, ...]) -> dict:
    keep = [f"hr@{k}" for k in ks] + [f"ndcg@{k}" for k in ks] + ["mrr", "n"]
    out = {k: m[k] for k in keep if k in m}
    if "ci95" in m:
        out["ci95"] = {k: v for k, v in m["ci95"].items() if k.startswith(("ndcg@", "mrr"))}
    return out


def decision_offsets(
    probs: np.ndarray, y: np.ndarray, prior: np.ndarray, labels: list[int]
) -> tuple[float, np.ndarray]:
    """Tune tau of the class decision argmax(log p - tau log prior) for macro-F1 on validation.

    Probabilities stay calibrated; only the decision is shifted toward rare classes. Returns
    (tau, (C,) additive log offsets)."""
    from shopformer.behaviour_metrics import macro_f1

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
    ds: Dataset
    cfg: Config
    arrays: EventArrays
    train_end: np.ndarray
    valid: Window
    test: Window
    target: int
    excluded: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def n_behaviours(self) -> int:
        return len(self.ds.vocabs.behaviours)

    @property
    def names(self) -> list[str]:
        return list(self.ds.vocabs.behaviours.tokens[1:])


def subsample(ex: EvalExamples, n: int | None, seed: int = 0) -> EvalExamples:
    """At most ``n`` examples, drawn uniformly without replacement (seeded), in their original order."""
    if n is None or len(ex) <= n:
        return ex
    keep = np.sort(np.random.default_rng(seed).choice(len(ex), n, replace=False))
    return EvalExamples(ex.rows[keep], ex.pos[keep])


def evaluate_items(ctx: EvalContext, models: dict[str, SequenceModel], bootstrap: int,
                   max_examples: int | None = None) -> dict:
    """(a) any-behaviour and (b) per-behaviour next-item rankings, models beside heuristics.

    ``max_examples`` caps each ranking task by a seeded uniform sample (full-catalogue ranking of
    every view in a window costs more than it tells); the count used is reported as ``n``."""
    seq, cfg, n_items = ctx.ds.seq, ctx.cfg, ctx.ds.spec.n_items
    ecfg = cfg.eval.model_copy(update={"exclude_seen": False, "bootstrap": bootstrap})
    counts = item_counts(seq, ctx.train_end, n_items)
    majority = majority_behaviour(seq, ctx.train_end, ctx.n_behaviours)
    non_majority = np.ones(ctx.n_behaviours + 1, bool)
    non_majority[[PAD, majority]] = False
    markov = Markov(seq, ctx.train_end, n_items)
    out: dict = {}
    for b in [PAD, *range(1, ctx.n_behaviours + 1)]:
        key = "any" if b == PAD else ctx.ds.vocabs.behaviours.tokens[b]
        ex, excl = window_examples(seq, ctx.test, None if b == PAD else b)
        ctx.excluded[f"items_{key}"] = {**excl, "not_sampled": max(0, len(ex) - (max_examples or len(ex)))}
        ex = subsample(ex, max_examples)
        if len(ex) == 0:
            out[key] = {}
            continue
        b_counts = counts if b == PAD else item_counts(seq, ctx.train_end, n_items, behaviour=b)
        systems: dict[str, ScoreFn] = {}
        for name, m in models.items():
            if m.heads is not None or b == PAD:
                systems[name] = behaviour_scorer(m, b)
            if b != PAD and m.heads is not None:
                systems[f"{name} (any-behaviour query)"] = behaviour_scorer(m, PAD)
        systems["popularity"] = Popularity(counts)
        if b != PAD:
            systems[f"popularity among {key}"] = Popularity(b_counts)
        systems["markov"] = markov
        systems["recent non-majority items"] = RecentItems(non_majority, b_counts)
        all_types = np.ones(ctx.n_behaviours + 1, bool)
        all_types[PAD] = False
        systems["recent items"] = RecentItems(all_types, b_counts)
        out[key] = {
            name: _item_metrics(
                evaluate(fn, seq, ctx.arrays, ex, n_items, cfg.model.max_len, ecfg).metrics, cfg.eval.ks
            )
            for name, fn in systems.items()
        }
    return out


def evaluate_actions(ctx: EvalContext, models: dict[str, SequenceModel], plot_dir: Path | None) -> dict:
    """(c) next behaviour type: models and baselines, decision offsets tuned on validation."""
    seq, cfg = ctx.ds.seq, ctx.cfg
    labels = list(range(1, ctx.n_behaviours + 1))
    ex_v, _ = window_examples(seq, ctx.valid)
    ex_t, excl = window_examples(seq, ctx.test)
    ctx.excluded["action"] = excl
    y_v, y_t = seq.behaviours[ex_v.pos].astype(np.int64), seq.behaviours[ex_t.pos].astype(np.int64)
    mask = training_mask(seq, ctx.train_end)
    prior = np.bincount(seq.behaviours[mask], minlength=ctx.n_behaviours + 1).astype(np.float64)
    prior[PAD] = 0.0
    prior /= prior.sum()
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
        p_v = _collect(fn, seq, ctx.arrays, ex_v, cfg.model.max_len, bs)
        p_t = _collect(fn, seq, ctx.arrays, ex_t, cfg.model.max_len, bs)
        if name == "majority class":
            tau, offsets = 0.0, np.zeros(ctx.n_behaviours + 1)  # always the majority: the reference point
        else:
            tau, offsets = decision_offsets(p_v, y_v, prior, labels)
        pred = _decide(np.log(np.clip(p_t, 1e-12, None)), offsets, labels)
        res = multiclass_summary(y_t, pred, ctx.names, labels)
        res["decision_tau"] = tau
        res["log_loss"] = float(-np.mean(np.log(np.clip(p_t[np.arange(len(y_t)), y_t], 1e-12, None))))
        out[name] = res
        if name in models and models[name].heads is not None:
            models[name].heads.action_offsets.copy_(torch.from_numpy(offsets).float())
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
    """(d) purchase intent: ROC-AUC, PR-AUC and calibration; Platt scaling fitted on validation."""
    seq, cfg, target = ctx.ds.seq, ctx.cfg, ctx.target
    horizon = cfg.task.intent_horizon
    ex_v, y_v, _ = intent_examples(seq, ctx.valid, target, horizon)
    ex_t, y_t, excl = intent_examples(seq, ctx.test, target, horizon)
    ctx.excluded["intent"] = excl
    train_labels = intent_labels_after(seq, ctx.train_end, target, horizon)
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
        s_v = _collect(fn, seq, ctx.arrays, ex_v, cfg.model.max_len, bs)
        s_t = _collect(fn, seq, ctx.arrays, ex_t, cfg.model.max_len, bs)
        a, b = fit_platt(s_v, y_v)
        prob = sigmoid(a * s_t + b)
        res = binary_summary(y_t, prob)
        res["platt"] = [a, b]
        res["uncalibrated_roc_auc"] = res["roc_auc"]  # Platt is monotone (a > 0): AUC unchanged
        out[name] = res
        if name in models:
            models[name].heads.intent_calibration.copy_(torch.tensor([a, b]))
            if plot_dir is not None:
                plot_reliability(res["reliability"], plot_dir / f"reliability_{_slug(name)}.png",
                                 f"purchase intent: {name} (ECE {res['ece']:.3f})")
    out["constant training rate"] = binary_summary(y_t, np.full(len(y_t), base_rate))
    return out


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


# ---------------------------------------------------------------------------------------------
# Plots


def plot_confusion(cm: np.ndarray, names: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = cm / np.clip(cm.sum(1, keepdims=True), 1, None)  # row-normalised: recall on the diagonal
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2, 1.1 * len(names) + 1.5))
    ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{cm[i, j]}\n{rows[i, j]:.2f}", ha="center", va="center", fontsize=8,
                    color="white" if rows[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_reliability(rel: dict[str, list[float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mean_p, obs, count = (np.asarray(rel[k], dtype=float) for k in ("mean_prob", "observed", "count"))
    ok = count > 0
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    ax.plot(mean_p[ok], obs[ok], marker="o", label="model")
    ax.set_ylabel("observed rate")
    ax.set_title(title)
    ax.legend()
    edges = np.linspace(0, 1, len(count) + 1)
    ax2.bar(edges[:-1], count, width=np.diff(edges), align="edge", color="tab:blue", alpha=0.6)
    ax2.set_yscale("log")
    ax2.set_xlabel("predicted probability")
    ax2.set_ylabel("examples")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def json_number(x: float) -> float | None:
    return None if np.isnan(x) else float(x)


def protocol_text(cfg: Config) -> str:
    return (
        "Global temporal split: training events before valid_start; validation predictions at every event in "
        "[valid_start, test_start), test predictions at every event from test_start on, each from the full history "
        "before it. Item rankings: full ranking over the whole catalogue, items already seen kept (users re-buy "
        "what they viewed or carted), ties count against the system. Next action: decision offsets "
        "(argmax log p - tau log prior) tuned for macro-F1 on validation. Intent: target behaviour within the next "
        f"{cfg.task.intent_horizon} events; Platt scaling fitted on validation; censored horizons excluded and "
        "counted. Model selected on validation, test used once."
    )


def markdown_summary(metrics: dict, ks: tuple[int, ...] = (10,)) -> str:
    """Compact tables: next-target-behaviour ranking, any-behaviour ranking, next action, intent."""
    k = 10 if 10 in ks else max(ks)
    lines: list[str] = []
    target = metrics["target_behaviour"]
    for key, title in ((target, f"next item with behaviour '{target}'"), ("any", "next item, any behaviour")):
        rows = metrics["next_item"].get(key) or {}
        if not rows:
            continue
        n = next(iter(rows.values())).get("n", 0)
        lines += [f"**{title}** ({n} test examples)", "", f"| system | HR@{k} | NDCG@{k} | MRR |", "|---|---|---|---|"]
        lines += [f"| {s} | {m[f'hr@{k}']:.4f} | {m[f'ndcg@{k}']:.4f} | {m['mrr']:.4f} |" for s, m in rows.items()]
        lines.append("")
    if "next_action" in metrics:
        rows = metrics["next_action"]
        lines += ["**next action**", "", "| system | accuracy | macro-F1 | " + " | ".join(
            f"recall {n}" for n in metrics["behaviours"]) + " |", "|---|---|---|" + "---|" * len(metrics["behaviours"])]
        for s, m in rows.items():
            rec = " | ".join("–" if m["per_class_recall"][n] is None else f"{m['per_class_recall'][n]:.3f}"
                             for n in metrics["behaviours"])
            lines.append(f"| {s} | {m['accuracy']:.4f} | {m['macro_f1']:.4f} | {rec} |")
        lines.append("")
    if "intent" in metrics:
        lines += [f"**purchase intent** ('{target}' within the next {metrics['task']['intent_horizon']} events)", "",
                  "| system | ROC-AUC | PR-AUC | ECE | positive rate |", "|---|---|---|---|---|"]
        lines += [f"| {s} | {m['roc_auc']:.4f} | {m['pr_auc']:.4f} | {m['ece']:.4f} | {m['positive_rate']:.3f} |"
                  for s, m in metrics["intent"].items()]
    return "\n".join(lines)


def metrics_json_line(metrics: dict) -> str:
    return json.dumps(metrics, default=float, separators=(",", ":"))
