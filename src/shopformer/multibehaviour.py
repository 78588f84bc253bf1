"""Multi-behaviour prediction on shop logs: protocol, baselines and the training entry point.

Four questions, one shared encoder (models/heads.py):

(a) next item, any behaviour; (b) next item of a given behaviour type (default: the data's
target behaviour, e.g. a purchase); (c) next behaviour type; (d) purchase intent: does the
target behaviour occur within the next N events?

Protocol (global temporal split on real timestamps, ``split.valid_start`` / ``split.test_start``):
the model trains on each user's events before t1; validation predictions are made at every event
in [t1, t2), test predictions at every event from t2 on, each from the user's full history before
that event (cut at the prediction time, so the history includes earlier events of the same
window, as it would online) and never anything after it. Users without any example of a kind in a
window are excluded and counted, never scored as zero. Intent labels need the N following events:
a prediction whose horizon runs past the end of its window (t2 for validation, the end of the
log for test) is censored: excluded and counted. Item rankings keep the items already in the
history (``exclude_seen=False``): in shop logs users buy what they viewed or carted, which is
exactly what the heuristic baselines exploit, so removing seen items would hide the main signal.

No behaviour names appear in code: the target defaults to the *end of the funnel* read from the
data (``default_target_behaviour``) and heuristics use "the majority behaviour" (the most
frequent type in training) instead of "view".
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from shopformer.artifacts import save_run, write_metrics
from shopformer.baselines import Markov, Popularity, item_counts, training_mask
from shopformer.behaviour_metrics import binary_summary, fit_platt, multiclass_summary, sigmoid
from shopformer.config import Config
from shopformer.data.dataset import Batch, EventArrays, TrainLoader, gather_windows, history_batches, training_windows
from shopformer.data.schema import PAD
from shopformer.data.sequences import Sequences
from shopformer.data.split import EvalExamples, resolve_boundary
from shopformer.evaluate import ScoreFn, evaluate
from shopformer.experiment import Dataset, load_dataset
from shopformer.models import build_model, check_task
from shopformer.models.base import SequenceModel
from shopformer.train import FitResult, fit

# ---------------------------------------------------------------------------------------------
# Target behaviour


def funnel_depth(seq: Sequences, n_behaviours: int) -> np.ndarray:
    """(n_behaviours + 1,) mean number of *other* behaviour types the same user already showed on
    the same item before each event of a type (NaN for a type that never occurs).

    A purchase typically follows a view and often a cart of the same item, so it sits deepest in
    the funnel; a view usually comes first. Measured on the Taobao, CIKM EComm and REES46 logs the
    deepest type is the purchase in all three, whereas "the rarest type" is not (collect on CIKM,
    cart on REES46).
    """
    n = len(seq.items)
    if n == 0:
        return np.full(n_behaviours + 1, np.nan)
    rows = seq.user_row_of_event().astype(np.int64)
    key = rows * (int(seq.items.max()) + 1) + seq.items.astype(np.int64)
    _, pair = np.unique(key, return_inverse=True)
    beh = seq.behaviours.astype(np.int64)
    first = np.full((pair.max() + 1, n_behaviours + 1), n, dtype=np.int64)
    np.minimum.at(first, (pair, beh), np.arange(n))
    earlier = first[pair] < np.arange(n)[:, None]  # (N, B + 1): type b' seen on this pair before
    earlier[np.arange(n), beh] = False  # "other" types only
    depth = earlier[:, 1:].sum(1)
    total = np.bincount(beh, weights=depth, minlength=n_behaviours + 1)
    count = np.bincount(beh, minlength=n_behaviours + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(count > 0, total / count, np.nan)
    out[PAD] = np.nan
    return out


def default_target_behaviour(seq: Sequences, n_behaviours: int) -> int:
    """The deepest funnel stage (``funnel_depth``); ties go to the rarer type."""
    depth = funnel_depth(seq, n_behaviours)
    count = np.bincount(seq.behaviours.astype(np.int64), minlength=n_behaviours + 1)
    candidates = [b for b in range(1, n_behaviours + 1) if count[b] > 0]
    if not candidates:
        raise ValueError("the data set has no events")
    return max(candidates, key=lambda b: (depth[b], -count[b]))


def resolve_target(ds: Dataset, name: str | None) -> tuple[str, int]:
    """(name, dense id) of the target behaviour; a name absent from the data is an error here."""
    if name is None:
        bid = default_target_behaviour(ds.seq, len(ds.vocabs.behaviours))
        return ds.vocabs.behaviours.tokens[bid], bid
    bid = ds.behaviour_id(name)  # raises, naming the known types, when the data lacks it
    assert bid is not None
    return name, bid


def configure(ds: Dataset, cfg: Config) -> tuple[Config, int]:
    """Check a multi-behaviour config against the data; return it resolved (target named) + id."""
    check_task(cfg.model, cfg.task)
    n_types = len(ds.vocabs.behaviours)
    if cfg.task.kind in ("next-action", "intent", "multi") and n_types < 2:
        raise ValueError(f"task.kind={cfg.task.kind!r} needs at least 2 behaviour types; {ds.path} has {n_types}")
    if cfg.split.kind != "temporal" or cfg.split.valid_start is None or cfg.split.test_start is None:
        raise ValueError(
            "multi-behaviour evaluation uses a temporal split: set split.kind=temporal, split.valid_start and "
            "split.test_start (Unix seconds, or fractions of the time range such as 0.8 and 0.9)"
        )
    name, bid = resolve_target(ds, cfg.task.target_behaviour)
    resolved = cfg.override(task={"target_behaviour": name}, eval={"exclude_seen": False})
    return resolved, bid


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
# Training batches with exact intent labels


@dataclass(frozen=True)
class TaskBatch(Batch):
    """A training Batch plus (B, L) intent labels read from the whole training prefix (-1 unknown)."""

    intent_labels: torch.Tensor | None = None


class MultiTaskLoader(TrainLoader):
    """TrainLoader whose batches carry intent labels computed on the training prefix, so a window's
    last positions are labelled from the events after the window whenever those are training data."""

    def __init__(
        self,
        labels: np.ndarray,
        arrays: EventArrays,
        ends: np.ndarray,
        starts: np.ndarray,
        max_len: int,
        batch_size: int,
        seed: int,
    ) -> None:
        super().__init__(arrays, ends, starts, max_len, batch_size, seed)
        self.labels = labels.astype(np.int64) + 2  # shift so that window padding (0) reads as unknown

    def __iter__(self) -> Iterator[Batch]:
        lengths = np.minimum(self.ends - self.starts, self.max_len + 1)
        order = self.rng.permutation(len(self.ends))
        chunk = self.batch_size * 50  # same length bucketing as TrainLoader
        batches = []
        for c in range(0, len(order), chunk):
            part = order[c : c + chunk]
            part = part[np.argsort(lengths[part], kind="stable")]
            batches += [part[i : i + self.batch_size] for i in range(0, len(part), self.batch_size)]
        for b in self.rng.permutation(len(batches)):
            sel = batches[b]
            width = int(lengths[sel].max())
            w = self.arrays.windows(self.ends[sel], self.starts[sel], width)
            lab = gather_windows(self.labels, self.ends[sel], self.starts[sel], width)[:, :-1] - 2
            t = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in w.items()}
            real = t["items"][:, :-1] != PAD
            yield TaskBatch(
                items=t["items"][:, :-1],
                behaviours=t["behaviours"][:, :-1],
                gaps=t["gaps"][:, :-1],
                categories=t["categories"][:, :-1],
                targets=t["items"][:, 1:] * real,
                target_behaviours=t["behaviours"][:, 1:] * real,
                intent_labels=torch.from_numpy(np.where(real.numpy(), lab, -1)).float(),
            )


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


def evaluate_items(ctx: EvalContext, models: dict[str, SequenceModel], bootstrap: int) -> dict:
    """(a) any-behaviour and (b) per-behaviour next-item rankings, models beside heuristics."""
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
        ctx.excluded[f"items_{key}"] = excl
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


# ---------------------------------------------------------------------------------------------
# Training entry point (`shopformer train --task ...`)


@dataclass
class MultiResult:
    run_dir: Path
    metrics: dict
    table: str
    fits: dict[str, FitResult]


def train_model(ds: Dataset, cfg: Config, target: int, train_end: np.ndarray, valid: EvalExamples,
                arrays: EventArrays, log_dir: Path | None, progress: bool) -> tuple[SequenceModel, FitResult]:
    """Build the model with its heads and fit it; early stopping on the primary ranking task."""
    model = build_model(cfg.model, ds.spec, task=cfg.task, target_behaviour=target)
    labels = intent_labels_after(ds.seq, train_end, target, cfg.task.intent_horizon)
    ends, starts = training_windows(ds.seq, train_end, cfg.model.max_len, cfg.train.sliding_window)
    loader = MultiTaskLoader(labels, arrays, ends, starts, cfg.model.max_len, cfg.train.batch_size, cfg.train.seed)
    counts = item_counts(ds.seq, train_end, ds.spec.n_items)
    result = fit(model, cfg, ds.seq, train_end, valid, arrays, counts, log_dir=log_dir, progress=progress,
                 loader=loader)
    return model, result


def run_multibehaviour(
    dataset: str | Path | Dataset,
    cfg: Config,
    out_dir: str | Path,
    progress: bool = True,
    ablation: bool = False,
    bootstrap: int | None = None,
) -> MultiResult:
    """Train (and, with ``ablation``, train again without behaviour inputs), evaluate every head
    beside the baselines on the test window, save the run (with its calibration) and the metrics."""
    ds = dataset if isinstance(dataset, Dataset) else load_dataset(dataset)
    cfg, target = configure(ds, cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train_end, valid_w, test_w = make_windows(ds.seq, cfg)
    arrays = EventArrays.from_sequences(ds.seq, cfg.model.time_buckets)
    primary = target if cfg.task.kind in ("next-purchase", "multi") else None
    valid_ex, _ = window_examples(ds.seq, valid_w, primary)
    if len(valid_ex) == 0:
        raise ValueError(f"no validation examples in [{valid_w.lo}, {valid_w.hi}): move split.valid_start")
    variants = {cfg.model.name: cfg}
    if ablation:
        variants[f"{cfg.model.name} without behaviour inputs"] = cfg.override(model={"use_behaviour": False})
    models: dict[str, SequenceModel] = {}
    fits: dict[str, FitResult] = {}
    t0 = time.perf_counter()
    for i, (name, vcfg) in enumerate(variants.items()):
        models[name], fits[name] = train_model(ds, vcfg, target, train_end, valid_ex, arrays,
                                               out if i == 0 else None, progress)
    train_seconds = time.perf_counter() - t0
    ctx = EvalContext(ds, cfg, arrays, train_end, valid_w, test_w, target)
    boot = cfg.eval.bootstrap if bootstrap is None else bootstrap
    metrics: dict = {
        "dataset": str(ds.path),
        "task": cfg.task.model_dump(),
        "target_behaviour": ds.vocabs.behaviours.tokens[target],
        "behaviours": ctx.names,
        "funnel_depth": {n: _num(d) for n, d in zip(ctx.names, funnel_depth(ds.seq, ctx.n_behaviours)[1:],
                                                     strict=True)},
        "split": {"valid_start": valid_w.lo, "test_start": test_w.lo, "train_events": int(
            (train_end - ds.seq.offsets[:-1]).sum()), "validation_examples_for_early_stopping": len(valid_ex)},
        "next_item": evaluate_items(ctx, models, boot),
    }
    heads = models[cfg.model.name].heads
    if heads is not None and "action" in heads.parts:
        metrics["next_action"] = evaluate_actions(ctx, models, out)
    if heads is not None and "intent" in heads.parts:
        metrics["intent"] = evaluate_intent(ctx, models, out)
    metrics["excluded"] = ctx.excluded
    metrics["fit"] = {name: {"best_epoch": f.best_epoch, "epochs": f.epochs, "stopped_by": f.stopped_by,
                             "train_seconds": f.train_seconds} for name, f in fits.items()}
    metrics["train_wall_seconds"] = train_seconds
    metrics["protocol"] = protocol_text(cfg)
    run_dir = save_run(out / "model", models[cfg.model.name], cfg, ds.vocabs, item_counts(
        ds.seq, train_end, ds.spec.n_items), ds.item_category(), metrics, data_fingerprint=ds.fingerprint,
        dataset_dir=str(ds.path.resolve()))
    write_metrics(out, metrics)
    table = markdown_summary(metrics, cfg.eval.ks)
    (out / "report.md").write_text(f"# Multi-behaviour results: {ds.path.name}\n\n{metrics['protocol']}\n\n{table}\n")
    return MultiResult(run_dir, metrics, table, fits)


def _num(x: float) -> float | None:
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
