"""Continuous learning: retrain the current registry version on new events, gate, promote.

``retrain(registry, options)`` under the registry lock:

1. data: the newest version's events (a rejected candidate's too) plus the new files
   (``data.growth.prepare_window``: the same ingest and validation as ``prepare``, duplicates
   dropped, users forgotten in the deletion ledger dropped, a sliding window of the last N days),
   encoded with the current vocabularies grown — old dense ids never move;
2. drift of the new events against the current model's training window (``data.drift``);
3. split by time: train < t_valid <= selection slice < t_gate <= gate slice, each slice
   ``valid_days`` long (the gate slice is the most recent one and no model trained on it);
4. model: the current weights grown to the new vocabularies (``models.growth``; new items start
   from titles, co-occurrence or the mean vector) and trained on by the one ``fit`` loop, keeping the
   starting weights unless an epoch beats them on the selection slice; or, with ``from_scratch``,
   the standard next-item training (``pipelines.next_item.train_next_item``). The warm-start rule
   (``warm_since``): at most ``warm_epochs`` epochs (default 2), patience 1, over the *recent*
   training windows only, i.e. the windows whose newest target falls after the parent's training
   cut (every event the parent never trained on, at least one ``valid_days`` period); older events
   stay in those windows as context. Users with nothing new cost nothing, so a warm retrain costs
   a small fraction of a scratch one, which passes over every window until early stopping;
5. gate (``gate``): candidate vs current model vs the best shop baseline on the gate slice, paired
   per user; the candidate passes when it is at least as good on average *and* the 95% bootstrap CI
   of the difference rules out a loss larger than ``margin``. A run that gates on its target
   behaviour (next purchase) with fewer than ``min_examples`` of them on the slice is gated on the
   next item of any behaviour instead (``_gate``; recorded as ``gate.fallback``);
6. the version is written (``pipelines.registry``) with its manifest; with ``promote`` it becomes
   current when the gate passes, otherwise it is marked rejected with the reason.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from shopformer.artifacts import Run, load_run, save_run
from shopformer.config import Config, apply_overrides
from shopformer.data import schema as S
from shopformer.data.batches import EventArrays, make_train_loader
from shopformer.data.corpus import Dataset, load_dataset
from shopformer.data.drift import drift_report
from shopformer.data.growth import DAY, VOCAB_NAMES, prepare_window
from shopformer.data.ingest import IngestOptions
from shopformer.data.ledger import open_ledger
from shopformer.data.split import (
    Split,
    intent_labels_after,
    make_windows,
    subsample,
    temporal_split,
    window_examples,
)
from shopformer.data.vocab import Vocabs
from shopformer.evaluation.baselines import item_counts, shop_baselines
from shopformer.evaluation.ranking import ScoreFn, model_scorer
from shopformer.models.base import SequenceModel
from shopformer.models.growth import grow_model, new_item_vectors
from shopformer.models.text import ItemText
from shopformer.pipelines.gate import (
    GateConfig,
    behaviour_scorer,
    gate,
    old_model_scorer,
    recent_split,
    slice_bounds,
)
from shopformer.pipelines.multi_behaviour import calibrate_models, configure, train_multi_task
from shopformer.pipelines.next_item import fit_summary, train_next_item
from shopformer.pipelines.registry import Registry
from shopformer.pipelines.version_report import write_version_report
from shopformer.training.fit import FitResult, fit, set_seed
from shopformer.training.heads import refit_heads
from shopformer.training.objectives import augmented_training
from shopformer.training.tracking import TrackingConfig, session

TARGET_FIRST = ("next-purchase", "multi")  # task kinds whose primary ranking is the target behaviour's next item

# exit codes of `shopformer retrain` (and what `retrain` returns in ``Outcome.exit_code``)
EXIT_OK, EXIT_REJECTED, EXIT_BAD_INPUT, EXIT_LOCKED = 0, 1, 2, 3


@dataclass(frozen=True)
class RetrainOptions:
    events: tuple[Path, ...]
    ingest: IngestOptions = IngestOptions()
    from_scratch: bool = False
    window_days: float | None = None
    valid_days: float = 1.0
    promote: bool = False
    warm_epochs: int = 2  # warm start: epoch budget (patience 1) over the recent windows (module docstring)
    gate: GateConfig = GateConfig()
    overrides: tuple[str, ...] = ()  # config --set overrides (train.epochs=3, ...)
    forget_ledger: Path | None = None  # deletion ledger (data/ledger.py): forgotten users' events are dropped
    progress: bool = False
    report: bool = True  # write the version's report/ (drift, validation, gate plots: version_report.py)
    tracking: TrackingConfig | None = None  # TensorBoard / MLflow (training/tracking.py); None: SHOPFORMER_TRACK


@dataclass
class Outcome:
    version: str
    status: str  # candidate | promoted | rejected
    reason: str
    exit_code: int
    manifest: dict = field(default_factory=dict)


def _item_text(cfg: Config, ds: Dataset, cache: Path) -> ItemText | None:
    paths = [p for p in (cfg.text.titles, cfg.text.attributes) if p]
    if not paths or not all(Path(p).exists() for p in paths):
        return None
    from shopformer.models.text import catalogue_text

    return catalogue_text(ds.vocabs.items, cfg.text.titles, cfg.text.attributes, cache)


def warm_since(parent: dict, t_valid: int, valid_days: float) -> int:
    """The first time a warm start trains on (targets at or after it): the parent's training cut
    (``data_window.train_end`` of a retrained version; an imported one's: its data end minus
    2 ``valid_days``, the slices it held out), and at least ``valid_days`` before ``t_valid``."""
    window = parent.get("data_window") or {}
    cut = window.get("train_end")
    if cut is None and window.get("end") is not None:
        cut = int(window["end"]) - int(2 * valid_days * DAY)
    floor = t_valid - int(valid_days * DAY)
    return floor if cut is None else min(int(cut), floor)


def _train(cur: Run, ds: Dataset, cfg: Config, split: Split, target: int | None, opts: RetrainOptions, tmp: Path,
           cache: Path, since: int) -> tuple[SequenceModel, dict, np.ndarray, dict]:
    """(model, fit summary, training item counts, manifest extras incl. "valid") of the candidate;
    a warm one trains on the windows with targets at or after ``since`` (``warm_since``)."""
    arrays = EventArrays.from_sequences(ds.seq, cfg.model.time_buckets)
    extra: dict = {}
    model: SequenceModel | None = None
    # the warm budget changes the training only: the saved config keeps the parent's train.* settings
    tcfg = cfg if opts.from_scratch else cfg.override(train={"epochs": opts.warm_epochs, "patience": 1})
    if not opts.from_scratch:
        init = new_item_vectors(cur.model, ds.spec.n_items, ds.seq, _item_text(cfg, ds, cache))
        model = grow_model(cur.model, ds.spec, cfg.task, init)
        extra["new_item_init"] = init.counts()
    if target is not None:  # a multi-task run: the multi-behaviour training steps
        model, res = _fit_multi(model, ds, tcfg, target, arrays, tmp, opts.progress, since)
        counts = item_counts(ds.seq, make_windows(ds.seq, cfg)[0], ds.spec.n_items)
        extra["calibration"] = calibrate_models(ds, cfg, {cfg.model.name: model}, target)
    elif model is not None:  # warm next-item: the one fit loop, keeping the start unless an epoch beats it
        counts = item_counts(ds.seq, split.train_end, ds.spec.n_items)
        set_seed(cfg.train.seed)
        loader, objective = augmented_training(model, tcfg, ds.seq, split.train_end, arrays, counts,
                                               ds.item_category(), since=since)
        res = fit(model, tcfg, ds.seq, split.train_end, split.valid, arrays, counts, log_dir=tmp,
                  progress=opts.progress, loader=loader, objective=objective, score_start=True)
    else:
        trained = train_next_item(ds, cfg, split, arrays, log_dir=tmp, progress=opts.progress, text_cache=cache)
        model, res, counts = trained.model, trained.fit, trained.counts
        if cfg.text.fused:
            from shopformer.models.text import fold_text

            fold_text(model)
    if not opts.from_scratch:
        extra["kept_start_weights"] = res.best_epoch == 0
        extra["warm"] = {"epochs": opts.warm_epochs, "patience": 1, "since": since, "since_utc": _utc(since)}
    return model, {**fit_summary(res), "start_score": res.start_score}, counts, {**extra, "valid": res.best_metrics}


def _fit_multi(model: SequenceModel | None, ds: Dataset, cfg: Config, target: int, arrays: EventArrays, log_dir: Path,
               progress: bool, since: int) -> tuple[SequenceModel, FitResult]:
    """A multi-task candidate: from scratch, ``train_multi_task``; warm, the same steps on the grown
    model over the recent windows (targets at or after ``since``; intent labels censored at the
    selection slice, ``fit`` keeping the start unless an epoch beats it, then the next-action /
    intent heads refitted on the frozen encoder)."""
    train_end, valid_w, _ = make_windows(ds.seq, cfg)
    if model is None:
        return train_multi_task(ds, cfg, target, train_end, valid_w, arrays, log_dir, progress)
    labels = intent_labels_after(ds.seq, train_end, target, cfg.task.intent_horizon, cfg.task.intent_seconds,
                                 valid_w.lo)
    loader = make_train_loader(cfg, ds.seq, train_end, arrays, labels=labels, since=since)
    valid, _ = window_examples(ds.seq, valid_w, target if cfg.task.kind in TARGET_FIRST else None)
    if len(valid) == 0:
        raise ValueError("no selection-slice examples for the multi-task model; pass a larger --valid-days")
    res = fit(model, cfg, ds.seq, train_end, subsample(valid, cfg.eval.max_users), arrays,
              item_counts(ds.seq, train_end, ds.spec.n_items), log_dir=log_dir, progress=progress, loader=loader,
              score_start=True)
    if model.heads is not None:
        refit_heads(model, ds.seq, arrays, loader, valid_w, target, cfg)
    return model, res


def _utc(ts: int | None) -> str | None:
    return None if ts is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _gate(model: SequenceModel, cur: Run, parent: str, ds: Dataset, cfg: Config, split: Split, primary: int | None,
          bounds: tuple[int, int], gc: GateConfig) -> dict:
    """The gate on ``split``'s gate slice (next item of ``primary``, else of any behaviour); with
    ``gc.fallback``, a slice with fewer than ``gc.min_examples`` ``primary`` examples is gated on
    the next item of any behaviour instead (pipelines/gate.py), the target figures kept beside."""
    def run(rank: int | None, part: Split) -> dict:  # rank: None = the models' own ranking, 0 = any behaviour
        baselines = shop_baselines(ds.seq, part.train_end, ds.spec.n_items, ds.spec.n_behaviours,
                                   primary if rank is None else None)
        systems: dict[str, ScoreFn] = {
            "candidate": model_scorer(model) if rank is None else behaviour_scorer(model, rank),
            f"current ({parent})": old_model_scorer(cur, ds.spec.n_items, rank), **baselines}
        return gate(systems, "candidate", f"current ({parent})", ds, part, cfg, gc, list(baselines))

    n = len(split.test)
    if primary is None or not gc.fallback or n >= max(gc.min_examples, 1):
        if n == 0:
            raise ValueError("the gate slice has no examples of the target behaviour; pass a larger --valid-days")
        result = run(None, split)
        result["target_behaviour"] = None if primary is None else ds.vocabs.behaviours.tokens[primary]
        return result
    name = ds.vocabs.behaviours.tokens[primary]
    result = run(0, temporal_split(ds.seq, *bounds, None))
    result["target_behaviour"] = None
    result["fallback"] = {"reason": f"only {n} '{name}' gate examples (< {gc.min_examples}): gated on the next item "
                                    f"of any behaviour ({result['examples']} examples)",
                          "target_behaviour": name, "target_examples": n,
                          "target": run(None, split) if n else None}
    return result


def newest_data(registry: Registry, vocabs: Vocabs) -> str:
    """The newest version (rejected ones included) whose data set extends ``vocabs`` (the current
    model's): retrains build on it, so the events of a rejected candidate are not lost to the next one."""
    for version in reversed(registry.version_ids()):
        path = registry.version_dir(version) / "dataset" / "vocab.json"
        if not path.exists():
            continue
        data = Vocabs.load(path)
        if all(getattr(data, n).tokens[: len(getattr(vocabs, n).tokens)] == getattr(vocabs, n).tokens
               for n in VOCAB_NAMES):
            return version
    raise ValueError(f"{registry.root}: no version's data set extends the current model's vocabularies")


def build_candidate(registry: Registry, parent: str, opts: RetrainOptions, tmp: Path, version: str) -> dict:
    """Everything of one candidate version inside ``tmp`` (model/, dataset/); returns its manifest."""
    cur_dir = registry.version_dir(parent)
    cur = load_run(cur_dir / "model")
    cfg = apply_overrides(cur.config, list(opts.overrides))
    if not opts.from_scratch and cfg.model != cur.config.model:
        raise ValueError("model.* settings are fixed by the current weights; pass --from-scratch to change them")
    data_parent = newest_data(registry, cur.vocabs)
    data_dir = registry.version_dir(data_parent) / "dataset"
    ledger = open_ledger(opts.forget_ledger, create=False) if opts.forget_ledger else None
    window = prepare_window(data_dir, opts.events, tmp / "dataset", Vocabs.load(data_dir / "vocab.json"),
                            opts.ingest, opts.window_days, ledger)
    ds = load_dataset(tmp / "dataset")
    previous = pl.read_parquet(cur_dir / "dataset" / "events.parquet", columns=list(S.CANONICAL))
    drift = drift_report(previous, window.new_events, cur.vocabs)
    t_valid, t_gate = slice_bounds(ds, opts.valid_days)
    target = primary = None
    if cfg.task.kind != "next-item":  # the multi-behaviour windows are the two slices
        cfg = cfg.override(split={"kind": "temporal", "valid_start": float(t_valid), "test_start": float(t_gate)})
        cfg, target = configure(ds, cfg)
        primary = target if cfg.task.kind in TARGET_FIRST else None
    split, _, _ = recent_split(ds, opts.valid_days, primary)
    cache = registry.root / "cache" / "title_vectors.safetensors"
    since = warm_since(registry.read(parent), t_valid, opts.valid_days)
    model, fit_info, counts, extra = _train(cur, ds, cfg, split, target, opts, tmp, cache, since)
    result = _gate(model, cur, parent, ds, cfg, split, primary, (t_valid, t_gate), opts.gate)
    shift = result.get("score_shift") or {}  # top-1 scores, candidate vs current, same gate-slice histories
    drift.update({"score_psi": shift.get("psi"), "score_js": shift.get("js")})
    metrics = {"valid": extra.pop("valid"), "gate": result, "fit": fit_info}
    final_dataset = registry.root / "versions" / version / "dataset"
    save_run(tmp / "model", model, cfg, ds.vocabs, counts, ds.item_category(), metrics,
             data_fingerprint=ds.fingerprint, dataset_dir=str(final_dataset.resolve()))
    stats = window.stats
    return {
        "parent": parent,
        "data_parent": data_parent,
        "kind": "retrain",
        "warm_start": not opts.from_scratch,
        "sources": [str(p) for p in opts.events],
        "data_window": {"start": window.window[0], "end": window.window[1], "start_utc": _utc(window.window[0]),
                        "end_utc": _utc(window.window[1]), "window_days": opts.window_days, "train_end": t_valid,
                        "selection_start_utc": _utc(t_valid), "gate_start_utc": _utc(t_gate)},
        "events": {"total": stats["events"], "new_valid": window.new_events.height,
                   "new_rejected": stats.get("rows_rejected", 0), "duplicates_dropped": stats.get("duplicates_dropped"),
                   "forgotten_dropped": stats.get("forgotten_dropped", 0),
                   "outside_window": stats.get("outside_time_window", 0),
                   "selection_examples": len(split.valid), "gate_examples": len(split.test)},
        "growth": window.growth.to_dict(),
        **extra,
        "config": json.loads(cfg.to_json()),
        "validation": metrics["valid"],
        "gate": result,
        "fit": fit_info,
        "drift": drift,
    }


def retrain(registry_root: str | Path, opts: RetrainOptions) -> Outcome:
    """One retrain (see the module docstring). Raises ``RegistryLocked`` when another one runs."""
    registry = Registry(registry_root)
    track = opts.tracking or TrackingConfig.from_env()
    params = {"registry": str(registry.root), "events": [str(e) for e in opts.events],
              "from_scratch": opts.from_scratch, "window_days": opts.window_days, "valid_days": opts.valid_days,
              "overrides": list(opts.overrides),
              "gate": {k: str(v) for k, v in vars(opts.gate).items()}}
    with registry.lock(), session(track, f"retrain-{registry.root.name}-{time.strftime('%Y%m%d-%H%M%S')}",
                                  params) as tracker:
        parent = registry.require_current()
        version = registry.add_version(lambda tmp, vid: build_candidate(registry, parent, opts, tmp, vid))
        manifest = registry.read(version)
        passed = bool(manifest["gate"]["passed"])
        reason = "; ".join(manifest["gate"]["reasons"]) if not passed else "passed the gate"
        if "fallback" in manifest["gate"]:
            reason += f" ({manifest['gate']['fallback']['reason']})"
        if not passed:
            manifest = registry.set_status(version, "rejected", reason)
            out = Outcome(version, "rejected", reason, EXIT_REJECTED, manifest)
        elif opts.promote:
            registry.promote(version, reason)
            out = Outcome(version, "promoted", reason, EXIT_OK, registry.read(version))
        else:
            out = Outcome(version, "candidate", reason, EXIT_OK, manifest)
        if opts.report:
            write_version_report(registry.root, version)  # report/ with plots, switched atomically
        if tracker is not None:
            vdir = registry.version_dir(version)
            tracker.log_params({"version": version, "parent": parent, "config": out.manifest.get("config", {})})
            gate_rows = out.manifest.get("gate", {}).get("systems", {})
            tracker.close({"validation": out.manifest.get("validation", {}), "gate": gate_rows.get("candidate", {}),
                           "promoted": out.status == "promoted", "drift": out.manifest.get("drift", {})},
                          [vdir / "version.json", vdir / "train_log.csv", vdir / "training_curve.png",
                           vdir / "report"])
        return out


def add_run(registry_root: str | Path, run_dir: str | Path, dataset_dir: str | Path | None = None,
            promote: bool = True) -> str:
    """Import a trained run (and the data set it was trained on) as a new version; by default it
    becomes current (the start of a registry). The registry is created when missing."""
    registry = Registry(registry_root, create=True)
    run = load_run(run_dir)
    data = Path(dataset_dir or run.manifest.get("dataset_dir") or "")
    if not (data / "events.parquet").exists():
        raise FileNotFoundError(f"{data}: the run's dataset directory is missing; pass --dataset")

    def build(tmp: Path, version: str) -> dict:
        shutil.copytree(Path(run_dir), tmp / "model")
        shutil.copytree(data, tmp / "dataset", ignore=shutil.ignore_patterns(".*"))
        stats = json.loads((data / "stats.json").read_text())
        return {"parent": None, "kind": "import", "source_run": str(Path(run_dir).resolve()),
                "source_dataset": str(data.resolve()),
                "data_window": {"start": stats.get("time_min"), "end": stats.get("time_max"),
                                "start_utc": _utc(stats.get("time_min")), "end_utc": _utc(stats.get("time_max"))},
                "events": {"total": stats.get("events")}, "config": json.loads(run.config.to_json()),
                "validation": run.metrics.get("valid", {})}

    with registry.lock():
        version = registry.add_version(build)
        if promote:
            registry.promote(version, "imported")
    return version
