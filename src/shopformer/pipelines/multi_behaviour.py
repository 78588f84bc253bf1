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

import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from shopformer.artifacts import Run, load_run, save_run, write_metrics
from shopformer.atomic import atomic_write_text
from shopformer.config import Config
from shopformer.data.batches import EventArrays, history_batches, make_train_loader
from shopformer.data.corpus import Dataset, funnel_depth, load_dataset
from shopformer.data.schema import PAD
from shopformer.data.split import (
    Window,
    intent_labels_after,
    make_windows,
    split_warnings,
    subsample,
    window_examples,
)
from shopformer.evaluation.baselines import item_counts
from shopformer.evaluation.behaviour import (
    EvalContext,
    calibrate_heads,
    evaluate_actions,
    evaluate_intent,
    evaluate_items,
    json_number,
    protocol_text,
    tune_item_blend,
)
from shopformer.evaluation.blend import Blend, served_row
from shopformer.evaluation.report import baseline_warnings, markdown_summary, test_warnings, warnings_markdown
from shopformer.models import build_model, check_task
from shopformer.models.base import SequenceModel
from shopformer.training.fit import FitResult, Hook, fit, fit_warnings, set_seed
from shopformer.training.heads import refit_heads, repeat_rates

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
            "split.test_start (Unix seconds, or quantiles of event times such as 0.8 and 0.9)"
        )
    if cfg.task.intent_seconds is not None and not ds.seq.has_time:
        raise ValueError(f"task.intent_seconds needs timestamps; {ds.path} has event order only")
    name, bid = ds.target_behaviour(cfg.task.target_behaviour)
    resolved = cfg.override(task={"target_behaviour": name}, eval={"exclude_seen": False})
    return resolved, bid


# ---------------------------------------------------------------------------------------------
# Training entry point (`shopformer train --task ...`)


@dataclass
class MultiResult:
    run_dir: Path
    metrics: dict
    table: str
    fits: dict[str, FitResult]


def train_multi_task(ds: Dataset, cfg: Config, target: int, train_end: np.ndarray, valid_w: Window,
                     arrays: EventArrays, log_dir: Path | None, progress: bool,
                     on_epoch: Hook | None = None) -> tuple[SequenceModel, FitResult]:
    """Build the model with its heads and fit it, then finish the heads on validation:

    1. ``fit`` with the multi-task loss, the repeat gate starting at the training repeat rate of
       each behaviour (``training.heads.repeat_rates``); early stopping on the primary ranking
       task (next item of the target behaviour for next-purchase / multi, else of any behaviour),
       ranked by the heads' repeat / explore mixture exactly as at inference (its gate is trained
       end to end, nothing is chosen afterwards);
    2. the next-action / intent MLPs are refitted on the frozen encoder, again with ``fit``
       (``training.heads.refit_heads``): the encoder's best epoch comes early, when these small
       heads are still under-trained.
    """
    set_seed(cfg.train.seed)  # initial weights follow train.seed (the torch default seed is random)
    model = build_model(cfg.model, ds.spec, task=cfg.task, target_behaviour=target)
    if model.heads is not None:  # the repeat gate starts at the training repeat rates
        model.heads.set_repeat_prior(repeat_rates(ds.seq, train_end, ds.spec.n_behaviours, model.max_len).tolist())
    # training labels may read training events only: a time horizon past valid_start is censored
    labels = intent_labels_after(ds.seq, train_end, target, cfg.task.intent_horizon, cfg.task.intent_seconds,
                                 valid_w.lo)
    loader = make_train_loader(cfg, ds.seq, train_end, arrays, labels=labels)
    counts = item_counts(ds.seq, train_end, ds.spec.n_items)
    primary = target if cfg.task.kind in ("next-purchase", "multi") else None
    valid, _ = window_examples(ds.seq, valid_w, primary)
    if len(valid) == 0:
        raise ValueError(f"no validation examples in [{valid_w.lo}, {valid_w.hi}): move split.valid_start")
    valid = subsample(valid, cfg.eval.max_users)
    result = fit(model, cfg, ds.seq, train_end, valid, arrays, counts, log_dir=log_dir, progress=progress,
                 loader=loader, on_epoch=on_epoch)
    if model.heads is not None:
        refit_heads(model, ds.seq, arrays, loader, valid_w, target, cfg)
    return model, result


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
        models[name], fits[name] = train_multi_task(ds, vcfg, target, train_end, valid_w, arrays,
                                                    out if i == 0 else None, progress)
    train_seconds = time.perf_counter() - t0
    # one context for the whole run: the baselines are fitted on training events once and shared
    ctx = eval_context(ds, cfg, models[cfg.model.name], target)
    calibration = calibrate_models(ds, cfg, models, target, ctx)  # part of training: saved with the weights
    blend, blend_report = None, None
    if cfg.train.blend:  # also a training step: chosen on validation, saved with the run
        blend, blend_report = tune_item_blend(ctx, models[cfg.model.name], max_item_examples)
    blends = {cfg.model.name: blend} if blend is not None else {}
    boot = cfg.eval.bootstrap if bootstrap is None else bootstrap
    metrics = evaluate_models(ds, cfg, models, target, out, boot, max_item_examples, blends, ctx)
    metrics["calibration"] = calibration
    if blend_report is not None:
        metrics["blend"] = blend_report
    metrics["fit"] = {name: {"best_epoch": f.best_epoch, "epochs": f.epochs, "stopped_by": f.stopped_by,
                             "train_seconds": f.train_seconds} for name, f in fits.items()}
    metrics["train_wall_seconds"] = train_seconds
    metrics["warnings"] = run_warnings(ds, cfg, models[cfg.model.name], fits[cfg.model.name], target,
                                       max_item_examples, ctx) + head_warnings(
        metrics, cfg, ds.vocabs.behaviours.tokens[target], blend)
    if blend is not None:
        metrics["warnings"].append(blend.notice(cfg.model.name, "validation next-target-item ranking"))
    train_end, _, _ = make_windows(ds.seq, cfg)
    run_dir = save_run(out / "model", models[cfg.model.name], cfg, ds.vocabs, item_counts(
        ds.seq, train_end, ds.spec.n_items), ds.item_category(), metrics, data_fingerprint=ds.fingerprint,
        dataset_dir=str(ds.path.resolve()), blend=blend)
    table = write_outputs(out, ds, metrics, cfg)
    from shopformer.pipelines.applications.report_html import write_html_report

    write_html_report(out)  # report.html beside report.md: self-contained, opens offline
    return MultiResult(run_dir, metrics, table, fits)


def run_warnings(ds: Dataset, cfg: Config, model: SequenceModel, result: FitResult, target: int,
                 max_item_examples: int | None, ctx: EvalContext | None = None) -> list[str]:
    """Plain-words problems of a multi-behaviour run: too few target events in validation or test,
    a training run cut by the clock or saturated, and every heuristic that beats the model on the
    validation window it was selected on (next target-behaviour item, and next item of any behaviour)."""
    ctx = ctx or eval_context(ds, cfg, model, target)
    name = ds.vocabs.behaviours.tokens[target]
    n_valid, n_test = (len(window_examples(ds.seq, w, target)[0]) for w in (ctx.valid, ctx.test))
    out = [*split_warnings(n_valid, n_test, cfg.split.min_targets, f"'{name}' targets"), *fit_warnings(result, cfg)]
    # the same tables on the validation window; its exclusion counts are not the test's
    on_valid = replace(ctx, test=ctx.valid, excluded={})
    items = evaluate_items(on_valid, {cfg.model.name: model}, 0, max_item_examples)
    for key, what in ((name, f"next-'{name}'-item"), ("any", "next-item")):
        rows = {s: m for s, m in (items.get(key) or {}).items() if not s.startswith(f"{cfg.model.name} (")}
        if cfg.model.name in rows:
            out += baseline_warnings(rows, cfg.model.name, cfg.train.monitor, f"validation {what}",
                                     cfg.split.min_targets)
    return out


def head_warnings(metrics: dict, cfg: Config, target: str, blend: Blend | None = None) -> list[str]:
    """Where the served answers do no better than a heuristic on the test window (reported, never
    used for selection): the next-target-item and next-item rankings (the blend's row when one is
    served), next-action macro-F1 vs each baseline, intent calibration vs a constant."""
    model = cfg.model.name
    out = []
    for key, what in ((target, f"test next-'{target}'-item"), ("any", "test next-item")):
        rows = metrics.get("next_item", {}).get(key) or {}
        heuristics = [name for name in rows if not name.startswith(model)]  # the model's variants are not heuristics
        out += test_warnings(rows, served_row(model, blend), heuristics, cfg.train.monitor, what)
    actions = metrics.get("next_action", {})
    if model in actions:
        out += baseline_warnings(actions, model, "macro_f1", "test next-action")
    intent = metrics.get("intent", {})
    const = intent.get("constant training rate")
    if model in intent and const is not None and intent[model]["ece"] > const["ece"]:
        out.append(f"purchase intent of {model} is worse calibrated than the constant training rate on test "
                   f"(ECE {intent[model]['ece']:.4f} vs {const['ece']:.4f}): use the rank (ROC-AUC "
                   f"{intent[model]['roc_auc']:.3f}), not the probability")
    return out


def eval_context(ds: Dataset, cfg: Config, model: SequenceModel, target: int) -> EvalContext:
    """The protocol's windows and feature arrays for ``model`` (its own history window)."""
    train_end, valid_w, test_w = make_windows(ds.seq, cfg)
    arrays = EventArrays.from_sequences(ds.seq, model.cfg.time_buckets)
    return EvalContext(ds, cfg, arrays, train_end, valid_w, test_w, target, model.max_len)


def calibrate_models(ds: Dataset, cfg: Config, models: dict[str, SequenceModel], target: int,
                     ctx: EvalContext | None = None) -> dict:
    """Training step: fit each model's validation-time post-processing (next-action decision
    offsets, intent Platt scaling) once and store it in its head buffers (``calibrate_heads``)."""
    ctx = ctx or eval_context(ds, cfg, models[cfg.model.name], target)
    return {name: calibrate_heads(ctx, m) for name, m in models.items()}


def evaluate_models(ds: Dataset, cfg: Config, models: dict[str, SequenceModel], target: int, out: Path | None,
                    bootstrap: int, max_item_examples: int | None, blends: dict[str, Blend] | None = None,
                    ctx: EvalContext | None = None) -> dict:
    """Every head of every model beside the baselines on the test window (``cfg`` already resolved).

    Read-only: the models' validation-fitted post-processing (intent Platt scaling, next-action
    decision offsets) is the one stored in their heads by training (``calibrate_models``); nothing
    is refitted or written here, so evaluating twice gives the same numbers and the same weights."""
    ctx = ctx or eval_context(ds, cfg, models[cfg.model.name], target)
    train_end, valid_w, test_w = ctx.train_end, ctx.valid, ctx.test
    metrics: dict = {
        "dataset": str(ds.path),
        "task": cfg.task.model_dump(),
        "target_behaviour": ds.vocabs.behaviours.tokens[target],
        "behaviours": ctx.names,
        "funnel_depth": {n: json_number(d) for n, d in zip(ctx.names, funnel_depth(ds.seq, ctx.n_behaviours)[1:],
                                                     strict=True)},
        "split": {"valid_start": valid_w.lo, "test_start": test_w.lo, "train_events": int(
            (train_end - ds.seq.offsets[:-1]).sum())},
        "repeat_gate": repeat_gate_report(ctx, models, max_item_examples),
        "next_item": evaluate_items(ctx, models, bootstrap, max_item_examples, blends),
    }
    heads = models[cfg.model.name].heads
    if heads is not None and "action" in heads.parts:
        metrics["next_action"] = evaluate_actions(ctx, models, out)
    if heads is not None and "intent" in heads.parts:
        metrics["intent"] = evaluate_intent(ctx, models, out)
    metrics["excluded"] = dict(ctx.excluded)
    metrics["protocol"] = protocol_text(cfg)
    return metrics


def repeat_gate_report(ctx: EvalContext, models: dict[str, SequenceModel], max_examples: int | None) -> dict:
    """Each headed model's mean repeat probability g beside the observed repeat rate (the item of
    the event is in the model's history window) on the test window, for any behaviour and the
    target behaviour: a calibration check of the gate. Read-only."""
    seq, bs = ctx.ds.seq, ctx.cfg.eval.batch_size
    out: dict = {}
    for name, m in models.items():
        if m.heads is None:
            continue
        m.eval()
        per: dict = {}
        for b in (PAD, ctx.target):
            ex, _ = window_examples(seq, ctx.test, None if b == PAD else b)
            ex = subsample(ex, max_examples)
            g, seen = [], []
            for idx, batch in history_batches(seq, ctx.arrays, ex, m.max_len, bs):
                with torch.inference_mode():
                    g.append(m.repeat_probability(batch, b).float().numpy())
                seen.append((batch.items.numpy() == seq.items[ex.pos[idx]][:, None]).any(1))
            key = "any" if b == PAD else ctx.names[b - 1]
            per[key] = {"mean_g": json_number(float(np.concatenate(g).mean())) if g else None,
                        "repeat_rate": json_number(float(np.concatenate(seen).mean())) if seen else None,
                        "n": len(ex)}
        out[name] = per
    return out


def write_outputs(out: Path, ds: Dataset, metrics: dict, cfg: Config) -> str:
    out.mkdir(parents=True, exist_ok=True)
    write_metrics(out, metrics)
    table = markdown_summary(metrics, cfg.eval.ks)
    warned = warnings_markdown(metrics.get("warnings", []))
    atomic_write_text(out / "report.md",
                      f"# Multi-behaviour results: {ds.path.name}\n\n{warned}{metrics['protocol']}\n\n{table}\n")
    return table


def evaluate_run(run_dir: str | Path | Run, dataset: str | Path | None = None, out_dir: str | Path | None = None,
                 bootstrap: int | None = None, max_item_examples: int | None = 5000,
                 cfg: Config | None = None) -> tuple[dict, str]:
    """Re-evaluate a saved multi-behaviour run (``shopformer evaluate``) on its data set's test window.

    ``cfg`` (default: the run's own) may change evaluation settings only; the model is never
    modified (its stored calibration is used as saved)."""
    run = run_dir if isinstance(run_dir, Run) else load_run(run_dir)
    ds = load_dataset(dataset or run.manifest.get("dataset_dir") or "")
    cfg, target = configure(ds, cfg or run.config)
    heads = run.model.heads
    if heads is not None and int(heads.target) != target:
        raise ValueError(f"the run was trained for behaviour id {int(heads.target)}, the data set resolves "
                         f"{cfg.task.target_behaviour!r} to {target}: not the same vocabulary")
    boot = cfg.eval.bootstrap if bootstrap is None else bootstrap
    metrics = evaluate_models(ds, cfg, {cfg.model.name: run.model}, target, Path(out_dir) if out_dir else None,
                              boot, max_item_examples, {cfg.model.name: run.blend} if run.blend else None)
    table = write_outputs(Path(out_dir), ds, metrics, cfg) if out_dir else markdown_summary(metrics, cfg.eval.ks)
    return metrics, table
