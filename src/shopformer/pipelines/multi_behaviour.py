"""Multi-behaviour prediction on shop logs: target choice, training batches, the training entry point.

Four questions, one shared encoder (models/heads.py): (a) next item, any behaviour; (b) next item
of a given behaviour type (default: the data's target behaviour, e.g. a purchase); (c) next
behaviour type; (d) purchase intent: does the target behaviour occur within the next N events?
``run_multibehaviour`` (``shopformer train --task ...``) trains, evaluates every head beside the
baselines with the protocol of ``behaviour_eval`` and saves the run; ``evaluate_run`` re-evaluates
a saved one.

No behaviour names appear in code: the target defaults to the *end of the funnel* read from the
data (``default_target_behaviour``), and heuristics use "the majority behaviour" instead of "view".
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from shopformer.artifacts import load_run, save_run, write_metrics
from shopformer.config import Config
from shopformer.data.batches import (
    EventArrays,
    MultiTaskLoader,
    history_batches,
    training_windows,
)
from shopformer.data.corpus import Dataset, funnel_depth, load_dataset
from shopformer.data.schema import PAD
from shopformer.data.sequences import Sequences
from shopformer.data.split import (
    EvalExamples,
    Window,
    intent_examples,
    intent_labels_after,
    make_windows,
    subsample,
    window_examples,
)
from shopformer.evaluation.baselines import item_counts
from shopformer.evaluation.behaviour import (
    EvalContext,
    behaviour_scorer,
    evaluate_actions,
    evaluate_intent,
    evaluate_items,
    json_number,
    protocol_text,
)
from shopformer.evaluation.ranking import evaluate
from shopformer.evaluation.report import markdown_summary
from shopformer.models import build_model, check_task
from shopformer.models.base import SequenceModel
from shopformer.training.fit import FitResult, fit

# ---------------------------------------------------------------------------------------------
# Target behaviour


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
    name, bid = ds.target_behaviour(cfg.task.target_behaviour)
    resolved = cfg.override(task={"target_behaviour": name}, eval={"exclude_seen": False})
    return resolved, bid


# ---------------------------------------------------------------------------------------------
# Training batches with exact intent labels


# ---------------------------------------------------------------------------------------------
# Training entry point (`shopformer train --task ...`)


@dataclass
class MultiResult:
    run_dir: Path
    metrics: dict
    table: str
    fits: dict[str, FitResult]


CATALOGUE_WEIGHTS = (0.0, 0.05, 0.1, 0.2, 0.5, 1.0)


def train_model(ds: Dataset, cfg: Config, target: int, train_end: np.ndarray, valid_w: Window,
                arrays: EventArrays, log_dir: Path | None, progress: bool) -> tuple[SequenceModel, FitResult]:
    """Build the model with its heads and fit it, then finish the heads on validation:

    1. ``fit`` with the multi-task loss; early stopping on the primary ranking task (next item
       of the target behaviour for next-purchase / multi, else of any behaviour), scored with the
       history pointer alone (catalogue weight 0), which is what overfits last;
    2. the catalogue weight of inference scores is chosen on the same validation examples;
    3. the next-action / intent MLPs are refitted on the frozen encoder (``refit_heads``): the
       encoder's best epoch comes early, when these small heads are still under-trained.
    """
    model = build_model(cfg.model, ds.spec, task=cfg.task, target_behaviour=target)
    labels = intent_labels_after(ds.seq, train_end, target, cfg.task.intent_horizon)
    ends, starts = training_windows(ds.seq, train_end, cfg.model.max_len, cfg.train.sliding_window)
    loader = MultiTaskLoader(labels, arrays, ends, starts, cfg.model.max_len, cfg.train.batch_size, cfg.train.seed)
    counts = item_counts(ds.seq, train_end, ds.spec.n_items)
    primary = target if cfg.task.kind in ("next-purchase", "multi") else None
    valid, _ = window_examples(ds.seq, valid_w, primary)
    if len(valid) == 0:
        raise ValueError(f"no validation examples in [{valid_w.lo}, {valid_w.hi}): move split.valid_start")
    valid = subsample(valid, cfg.eval.max_users)
    if model.heads is not None:
        model.heads.catalogue_weight.fill_(0.0)
    result = fit(model, cfg, ds.seq, train_end, valid, arrays, counts, log_dir=log_dir, progress=progress,
                 loader=loader)
    if model.heads is not None:
        choose_catalogue_weight(model, ds.seq, arrays, valid, ds.spec.n_items, cfg)
        refit_heads(model, ds.seq, arrays, loader, valid_w, target, cfg)
    return model, result


def choose_catalogue_weight(model: SequenceModel, seq: Sequences, arrays: EventArrays, valid: EvalExamples,
                            n_items: int, cfg: Config) -> dict[float, float]:
    """Set the heads' catalogue weight to the best of CATALOGUE_WEIGHTS by validation NDCG@10."""
    heads = model.heads
    assert heads is not None
    ecfg = cfg.eval.model_copy(update={"exclude_seen": False})
    scores = {}
    for w in CATALOGUE_WEIGHTS:
        heads.catalogue_weight.fill_(w)
        scores[w] = float(evaluate(behaviour_scorer(model, heads.default_behaviour), seq, arrays, valid, n_items,
                                   cfg.model.max_len, ecfg, bootstrap=False).metrics["ndcg@10"])
    best = max(scores, key=lambda w: (scores[w], -w))  # ties keep the smaller weight
    heads.catalogue_weight.fill_(best)
    return scores


def refit_heads(model: SequenceModel, seq: Sequences, arrays: EventArrays, loader: MultiTaskLoader,
                valid_w: Window, target: int, cfg: Config, max_epochs: int = 200, patience: int = 10) -> None:
    """Retrain the next-action and intent MLPs on the frozen encoder's states.

    Training examples are every real training position (encoder in eval mode, no dropout); the
    epoch with the lowest validation loss (predictions at the validation window's events) is kept.
    """
    heads = model.heads
    assert heads is not None
    parts = [p for p in ("action", "intent") if p in heads.parts]
    if not parts:
        return
    model.eval()
    feats, actions, intents = [], [], []
    with torch.no_grad():  # not inference_mode: these tensors feed an autograd graph below
        for b in loader:
            real = b.targets != PAD
            feats.append(heads.summary(model.encode(b), b)[real])
            actions.append(b.target_behaviours[real])
            intents.append(b.intent_labels[real])  # type: ignore[attr-defined]
    x, act, inten = torch.cat(feats), torch.cat(actions), torch.cat(intents)
    horizon, max_len, bs = cfg.task.intent_horizon, cfg.model.max_len, cfg.eval.batch_size

    def last_states(ex: EvalExamples) -> torch.Tensor:
        with torch.no_grad():
            parts_ = [model.head_features(b) for _, b in history_batches(seq, arrays, ex, max_len, bs)]
        return torch.cat(parts_) if parts_ else torch.zeros(0, x.shape[1])

    gen = torch.Generator().manual_seed(cfg.train.seed)
    for part in parts:
        if part == "action":
            ex, _ = window_examples(seq, valid_w)
            xv, yv = last_states(ex), torch.from_numpy(seq.behaviours[ex.pos].astype(np.int64))
            xt, yt = x, act

            def loss_fn(h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
                return torch.nn.functional.cross_entropy(heads.action_logits(h)[:, 1:], y - 1)
        else:
            ex, y_np, _ = intent_examples(seq, valid_w, target, horizon)
            xv, yv = last_states(ex), torch.from_numpy(y_np).float()
            keep = inten >= 0
            xt, yt = x[keep], inten[keep]

            def loss_fn(h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
                return torch.nn.functional.binary_cross_entropy_with_logits(heads.intent_logit(h), y)
        module = getattr(heads, part)
        if len(xt) == 0 or len(xv) == 0:
            continue
        opt = torch.optim.Adam(module.parameters(), lr=1e-3)
        with torch.no_grad():
            best, best_state, waited = float(loss_fn(xv, yv)), copy.deepcopy(module.state_dict()), 0
        for _ in range(max_epochs):
            module.train()
            for idx in torch.randperm(len(xt), generator=gen).split(2048):
                loss = loss_fn(xt[idx], yt[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
            module.eval()
            with torch.no_grad():
                v = float(loss_fn(xv, yv))
            if v < best - 1e-5:
                best, best_state, waited = v, copy.deepcopy(module.state_dict()), 0
            else:
                waited += 1
                if waited >= patience:
                    break
        module.load_state_dict(best_state)


def run_multibehaviour(
    dataset: str | Path | Dataset,
    cfg: Config,
    out_dir: str | Path,
    progress: bool = True,
    ablation: bool = False,
    bootstrap: int | None = None,
    max_item_examples: int | None = 5000,
) -> MultiResult:
    """Train (and, with ``ablation``, train again without behaviour inputs), evaluate every head
    beside the baselines on the test window, save the run (with its calibration) and the metrics."""
    ds = dataset if isinstance(dataset, Dataset) else load_dataset(dataset)
    cfg, target = configure(ds, cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train_end, valid_w, _ = make_windows(ds.seq, cfg)
    arrays = EventArrays.from_sequences(ds.seq, cfg.model.time_buckets)
    variants = {cfg.model.name: cfg}
    if ablation:
        variants[f"{cfg.model.name} without behaviour inputs"] = cfg.override(model={"use_behaviour": False})
    models: dict[str, SequenceModel] = {}
    fits: dict[str, FitResult] = {}
    t0 = time.perf_counter()
    for i, (name, vcfg) in enumerate(variants.items()):
        models[name], fits[name] = train_model(ds, vcfg, target, train_end, valid_w, arrays,
                                               out if i == 0 else None, progress)
    train_seconds = time.perf_counter() - t0
    boot = cfg.eval.bootstrap if bootstrap is None else bootstrap
    metrics = evaluate_models(ds, cfg, models, target, out, boot, max_item_examples)
    metrics["fit"] = {name: {"best_epoch": f.best_epoch, "epochs": f.epochs, "stopped_by": f.stopped_by,
                             "train_seconds": f.train_seconds} for name, f in fits.items()}
    metrics["train_wall_seconds"] = train_seconds
    train_end, _, _ = make_windows(ds.seq, cfg)
    run_dir = save_run(out / "model", models[cfg.model.name], cfg, ds.vocabs, item_counts(
        ds.seq, train_end, ds.spec.n_items), ds.item_category(), metrics, data_fingerprint=ds.fingerprint,
        dataset_dir=str(ds.path.resolve()))
    table = write_outputs(out, ds, metrics, cfg)
    return MultiResult(run_dir, metrics, table, fits)


def evaluate_models(ds: Dataset, cfg: Config, models: dict[str, SequenceModel], target: int, out: Path | None,
                    bootstrap: int, max_item_examples: int | None) -> dict:
    """Every head of every model beside the baselines on the test window (``cfg`` already resolved).

    Validation-fitted post-processing (intent Platt scaling, next-action decision offsets) is
    (re)fitted here and stored in each model's head buffers."""
    train_end, valid_w, test_w = make_windows(ds.seq, cfg)
    arrays = EventArrays.from_sequences(ds.seq, cfg.model.time_buckets)
    ctx = EvalContext(ds, cfg, arrays, train_end, valid_w, test_w, target)
    metrics: dict = {
        "dataset": str(ds.path),
        "task": cfg.task.model_dump(),
        "target_behaviour": ds.vocabs.behaviours.tokens[target],
        "behaviours": ctx.names,
        "funnel_depth": {n: json_number(d) for n, d in zip(ctx.names, funnel_depth(ds.seq, ctx.n_behaviours)[1:],
                                                     strict=True)},
        "split": {"valid_start": valid_w.lo, "test_start": test_w.lo, "train_events": int(
            (train_end - ds.seq.offsets[:-1]).sum())},
        "catalogue_weight": {name: None if m.heads is None else float(m.heads.catalogue_weight)
                             for name, m in models.items()},
        "next_item": evaluate_items(ctx, models, bootstrap, max_item_examples),
    }
    heads = models[cfg.model.name].heads
    if heads is not None and "action" in heads.parts:
        metrics["next_action"] = evaluate_actions(ctx, models, out)
    if heads is not None and "intent" in heads.parts:
        metrics["intent"] = evaluate_intent(ctx, models, out)
    metrics["excluded"] = ctx.excluded
    metrics["protocol"] = protocol_text(cfg)
    return metrics


def write_outputs(out: Path, ds: Dataset, metrics: dict, cfg: Config) -> str:
    out.mkdir(parents=True, exist_ok=True)
    write_metrics(out, metrics)
    table = markdown_summary(metrics, cfg.eval.ks)
    (out / "report.md").write_text(f"# Multi-behaviour results: {ds.path.name}\n\n{metrics['protocol']}\n\n{table}\n")
    return table


def evaluate_run(run_dir: str | Path, dataset: str | Path | None = None, out_dir: str | Path | None = None,
                 bootstrap: int | None = None, max_item_examples: int | None = 5000) -> tuple[dict, str]:
    """Re-evaluate a saved multi-behaviour run (``shopformer evaluate``) on its data set's test window."""
    run = load_run(run_dir)
    ds = load_dataset(dataset or run.manifest.get("dataset_dir") or "")
    cfg, target = configure(ds, run.config)
    heads = run.model.heads
    if heads is not None and int(heads.target) != target:
        raise ValueError(f"the run was trained for behaviour id {int(heads.target)}, the data set resolves "
                         f"{cfg.task.target_behaviour!r} to {target}: not the same vocabulary")
    boot = cfg.eval.bootstrap if bootstrap is None else bootstrap
    metrics = evaluate_models(ds, cfg, {cfg.model.name: run.model}, target, Path(out_dir) if out_dir else None,
                              boot, max_item_examples)
    table = write_outputs(Path(out_dir), ds, metrics, cfg) if out_dir else markdown_summary(metrics, cfg.eval.ks)
    return metrics, table
