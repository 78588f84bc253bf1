"""One experiment end to end: prepared dataset -> split -> fit -> full-ranking test -> run dir.

The CLI, the demo and the benchmarks all call ``run_experiment`` so they share one protocol:
model selection on validation only, then a single test evaluation of the model and of the
popularity and Markov baselines on the same examples.
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shopformer.artifacts import save_run, write_metrics
from shopformer.config import Config
from shopformer.data.batches import EventArrays
from shopformer.data.corpus import Dataset, load_dataset, make_split
from shopformer.data.split import EvalExamples, Split
from shopformer.evaluation.baselines import item_counts, shop_baselines
from shopformer.evaluation.blend import Blend, blend_chunk, blend_scores, choose_blend, served_row
from shopformer.evaluation.metrics import needs_lists
from shopformer.evaluation.ranking import ScoreFn, evaluate, evaluate_each, model_scorer
from shopformer.evaluation.report import baseline_warnings, test_warnings, write_report
from shopformer.models import build_model
from shopformer.models.base import SequenceModel
from shopformer.training.distributed import is_main
from shopformer.training.fit import FitResult, Hook, fit, fit_warnings, set_seed
from shopformer.training.objectives import augmented_training


def protocol_text(cfg: Config, split: Split, n_items: int) -> str:
    seen = "removed from the ranking" if cfg.eval.exclude_seen else "kept in the ranking"
    kind = "leave-one-out" if cfg.split.kind == "loo" else "global temporal"
    refit = ("The number of epochs chosen on validation was then trained again from scratch on training + "
             "validation events (train.refit), for the model and both baselines. ") if cfg.train.refit else ""
    return (
        f"Protocol: {kind} split; full ranking over all {n_items:,} items (no sampled negatives); "
        f"items already in the user's history are {seen}; ties count against the system; "
        f"model selected on validation ({cfg.train.monitor}), test used once. {refit}"
        f"Test examples: {len(split.test):,} (excluded: {split.excluded}). 95% CIs by bootstrap over users."
    )


@dataclass
class ExperimentResult:
    run_dir: Path
    fit: FitResult
    test: dict[str, dict]  # system -> metrics
    valid: dict[str, float]
    table: str
    extra: dict = field(default_factory=dict)
    refit: FitResult | None = None
    warnings: list[str] = field(default_factory=list)  # plain words: small split, baseline wins, budget cut


def evaluate_systems(
    model: SequenceModel, ds: Dataset, split: Split, cfg: Config, arrays: EventArrays | None = None,
    blend: Blend | None = None, baselines: dict[str, ScoreFn] | None = None,
) -> dict[str, dict]:
    """Test metrics of the model (and its served blend, if any) and the shop baselines on the same
    examples, each from the model's window. The baselines must be fitted on the events the model
    trained on; by default they are fitted here. A blend whose counts go through validation adds its
    own baselines' rows ("markov (through validation)"), to read the served row against."""
    arrays = arrays or EventArrays.from_sequences(ds.seq, model.cfg.time_buckets)
    if baselines is None:
        baselines = _baselines(ds, split.training_end(cfg.train.refit))  # the events the model saw
    systems: dict[str, ScoreFn] = {cfg.model.name: model_scorer(model)}
    if blend is not None:
        systems[blend.row(cfg.model.name)] = blend.scorer(model_scorer(model))
    systems.update(baselines)
    if blend is not None:
        systems.update(blend.own_rows())
    return {
        name: evaluate(fn, ds.seq, arrays, split.test, ds.spec.n_items, model.max_len, cfg.eval).metrics
        for name, fn in systems.items()
    }


def before_refit_name(cfg: Config) -> str:
    return f"{cfg.model.name} (selected on validation, before refit)"


def tune_blend(trained: Trained, ds: Dataset, split: Split, cfg: Config, arrays: EventArrays,
               baselines: dict[str, ScoreFn], progress: bool = False) -> tuple[Blend | None, dict]:
    """``train.blend``: the mixture of the selected model with a baseline (fitted on training events)
    that scores best on the validation examples (None when the model alone is best), and the grid.
    With ``train.blend_counts = "validation"`` the chosen baseline is then refit on training +
    validation events: counts have no epochs to choose, and the histories the blend scores at test
    and serving time already end with those events. The model is not refit.
    ``progress``: one line on stderr per pass over the validation examples, with the time so far."""
    ecfg = cfg.eval.model_copy(update={"bootstrap": 0})

    model_fn = model_scorer(trained.model)
    lists = needs_lists(cfg.train.monitor)  # a rank metric chooses: no top-K lists, one pass per round

    def validate(blends: list[Blend | None]) -> list[float]:
        results = evaluate_each(blend_scores(model_fn, blends), len(blends), ds.seq, arrays, split.valid,
                                ds.spec.n_items, trained.model.max_len, ecfg, bootstrap=False,
                                lists=lists)
        return [float(res.metrics[cfg.train.monitor]) for res in results]

    start = time.perf_counter()

    def say(line: str) -> None:
        print(f"{line} on {len(split.valid):,} validation examples ({time.perf_counter() - start:.0f}s)",
              file=sys.stderr, flush=True)

    blend, grid = choose_blend(baselines, validate, blend_chunk(len(split.valid), max(ecfg.ks), lists),
                               say if progress else None)
    if blend is not None and cfg.train.blend_counts == "validation":
        through = shop_baselines(ds.seq, split.training_end(refit=True), ds.spec.n_items, ds.spec.n_behaviours,
                                 only=set(blend.weights))
        blend = blend.with_baselines(through, "validation")
    chosen = {**blend.summary(), "counts": f"{blend.counts} events"} if blend else None
    return blend, {"chosen": chosen, "monitor": f"valid_{cfg.train.monitor}",
                   "grid": {name: {str(a): v for a, v in g.items()} for name, g in grid.items()}}


def _baselines(ds: Dataset, train_end: np.ndarray) -> dict[str, ScoreFn]:
    return shop_baselines(ds.seq, train_end, ds.spec.n_items, ds.spec.n_behaviours)


def validation_warnings(trained: Trained, ds: Dataset, split: Split, cfg: Config, arrays: EventArrays,
                        baselines: dict[str, ScoreFn]) -> tuple[dict[str, dict], list[str]]:
    """The baselines (fitted on training events only) on the validation examples the model was
    selected on, and a warning for each one that beats the selected model there."""
    window = trained.model.max_len
    ecfg = cfg.eval.model_copy(update={"bootstrap": 0})
    valid = {name: evaluate(fn, ds.seq, arrays, split.valid, ds.spec.n_items, window, ecfg).metrics
             for name, fn in baselines.items()}
    results = {cfg.model.name: trained.valid, **valid}
    return valid, baseline_warnings(results, cfg.model.name, cfg.train.monitor, "validation",
                                    cfg.split.min_targets)


# prepare_model(model, ctx) -> (model, extra): changes a freshly built model before training
# (e.g. fuses item text); ctx holds ds, split, arrays, cfg, train_end and the item counts.
Prepare = Callable[[SequenceModel, dict], tuple[SequenceModel, dict]]


@dataclass
class Trained:
    model: SequenceModel  # the model to test: the refit one with train.refit
    fit: FitResult  # the run that chose the number of epochs on validation
    counts: np.ndarray  # item counts of the events the returned model trained on
    valid: dict[str, float]  # validation metrics of the selected model (before any refit)
    extra: dict = field(default_factory=dict)
    refit: FitResult | None = None
    wall_seconds: float = 0.0
    selected: SequenceModel | None = None  # with train.refit: the model selected on validation, before the refit


def train_next_item(
    ds: Dataset,
    cfg: Config,
    split: Split,
    arrays: EventArrays,
    prepare_model: Prepare | None = None,
    log_dir: Path | None = None,
    progress: bool = False,
    on_epoch: Hook | None = None,
    text_cache: Path | None = None,
) -> Trained:
    """Build, prepare, fit with early stopping on validation (augmentation from cfg.augment).

    The one next-item model builder: ``shopformer train``, ``shopformer tune`` and the benchmarks
    all come here, so they train the same model. ``prepare_model`` (default: fuse the titles and attributes of
    ``cfg.text`` when set, caching their vectors in ``text_cache``) changes the freshly built model.
    With ``train.refit`` a fresh model (same seed, same schedule) then trains on training +
    validation events for the selected number of epochs; that is the model returned. The test
    split is never read here.
    """
    t0 = time.perf_counter()
    prepare_model = prepare_model or side_preparer(cfg, text_cache)
    model, result, counts, extra = _train_once(ds, cfg, split, arrays, split.train_end, split.valid, None,
                                               prepare_model, log_dir, progress, on_epoch)
    valid = result.best_metrics  # fit evaluated these weights already when it kept them
    refit, selected = None, None
    if cfg.train.refit:
        selected = model
        model, refit, counts, extra = _train_once(
            ds, cfg, split, arrays, split.training_end(refit=True), None, max(result.best_epoch, 1), prepare_model,
            log_dir / "refit" if log_dir else None, progress, None)
    return Trained(model, result, counts, valid, extra, refit, time.perf_counter() - t0, selected)


def side_preparer(cfg: Config, text_cache: Path | None = None) -> Prepare | None:
    """``prepare_model`` fusing ``cfg.text``'s titles, attributes and neighbours; None without any."""
    if not cfg.text.fused:
        return None
    from shopformer.models.text import text_preparer

    t = cfg.text
    return text_preparer(t.titles, text_cache, t.id_dropout, t.attributes, t.neighbours, t.neighbour_window)


def _train_once(
    ds: Dataset, cfg: Config, split: Split, arrays: EventArrays, train_end: np.ndarray,
    valid: EvalExamples | None, stop_after: int | None, prepare_model: Prepare | None,
    log_dir: Path | None, progress: bool, on_epoch: Hook | None,
) -> tuple[SequenceModel, FitResult, np.ndarray, dict]:
    counts = item_counts(ds.seq, train_end, ds.spec.n_items)
    set_seed(cfg.train.seed)  # initial weights follow train.seed too
    model = build_model(cfg.model, ds.spec)
    extra: dict = {}
    if prepare_model is not None:
        ctx = {"ds": ds, "split": split, "arrays": arrays, "cfg": cfg, "train_end": train_end, "counts": counts}
        model, extra = prepare_model(model, ctx)
    # augmentation (crop/mask/reorder/substitute/prefix, optional contrastive loss) from cfg.augment
    loader, objective = augmented_training(model, cfg, ds.seq, train_end, arrays, counts, ds.item_category())
    result = fit(model, cfg, ds.seq, train_end, valid, arrays, counts, log_dir=log_dir, progress=progress,
                 loader=loader, objective=objective, stop_after=stop_after, on_epoch=on_epoch)
    return model, result, counts, extra


def fit_summary(res: FitResult) -> dict:
    return {"best_epoch": res.best_epoch, "epochs": res.epochs, "stopped_by": res.stopped_by,
            "train_seconds": res.train_seconds, "tokens_per_second": res.tokens_per_second,
            **({"privacy": res.privacy} if res.privacy is not None else {})}  # train.dp (training/privacy.py)


def run_experiment(
    dataset: str | Path | Dataset, cfg: Config, out_dir: str | Path, progress: bool = True
) -> ExperimentResult:
    ds = dataset if isinstance(dataset, Dataset) else load_dataset(dataset)
    out = Path(out_dir)
    split = make_split(ds, cfg)  # refuses an empty validation or test side
    arrays = EventArrays.from_sequences(ds.seq, cfg.model.time_buckets)
    trained = train_next_item(ds, cfg, split, arrays, log_dir=out, progress=progress,
                              text_cache=out / "title_vectors.safetensors")
    if not is_main():  # multi-process training (torchrun): rank 0 alone tests and writes the run
        return ExperimentResult(out / "model", trained.fit, {}, trained.valid, "", refit=trained.refit)
    model = trained.model
    if cfg.text.fused:
        from shopformer.models.text import fold_text

        fold_text(model)  # a plain item table again: the run loads and serves without the encoder
    fitted = _baselines(ds, split.train_end)  # fitted once: validation, blend and (without refit) test
    blend, blend_report = (tune_blend(trained, ds, split, cfg, arrays, fitted, progress)
                               if cfg.train.blend else (None, None))
    if progress:
        print(f"testing the model, the baselines{' and the blend' if blend else ''} on {len(split.test):,} "
              "test examples", file=sys.stderr, flush=True)
    test = evaluate_systems(model, ds, split, cfg, arrays, blend, None if cfg.train.refit else fitted)
    if trained.selected is not None:  # the published protocol's row: the model selected on validation, no refit
        test[before_refit_name(cfg)] = evaluate(model_scorer(trained.selected), ds.seq, arrays, split.test,
                                                ds.spec.n_items, trained.selected.max_len, cfg.eval).metrics
    valid_baselines, warnings = validation_warnings(trained, ds, split, cfg, arrays, fitted)
    own_rows = list(blend.own_rows()) if blend is not None else []
    warnings += test_warnings(test, served_row(cfg.model.name, blend), [*fitted, *own_rows], cfg.train.monitor)
    if blend is not None:
        warnings.append(blend.notice(cfg.model.name))
    warnings = [*split.warnings, *warnings, *fit_warnings(trained.fit, cfg)]
    protocol = protocol_text(cfg, split, ds.spec.n_items)
    table = write_report(test, cfg.eval.ks, out, f"{cfg.model.name} on {ds.path.name}", protocol, warnings)
    metrics = {
        "protocol": protocol,
        "warnings": warnings,
        "valid": trained.valid,
        "valid_baselines": valid_baselines,
        "test": test,
        "fit": {**fit_summary(trained.fit), "wall_seconds": trained.wall_seconds},
    }
    if trained.refit is not None:
        metrics["refit"] = fit_summary(trained.refit)
    if blend_report is not None:
        metrics["blend"] = blend_report
    metrics.update(trained.extra)  # e.g. {"text": {"missing": ..., "id_dropout": ...}}
    run_dir = save_run(
        out / "model", model, cfg, ds.vocabs, trained.counts, ds.item_category(), metrics,
        data_fingerprint=ds.fingerprint, dataset_dir=str(ds.path.resolve()), blend=blend,
    )
    write_metrics(out, metrics)
    from shopformer.pipelines.applications.report_html import write_html_report

    write_html_report(out)  # report.html beside report.md: self-contained, opens offline
    return ExperimentResult(run_dir, trained.fit, test, trained.valid, table, refit=trained.refit, warnings=warnings)


def config_hash(cfg: Config) -> str:
    return hashlib.sha256(cfg.to_json().encode()).hexdigest()[:12]
