"""``shopformer churn | score | forecast | trends``: business applications on a trained run.

Each loads the run and its data set (default: the one it was trained on), runs the pipeline in
``pipelines/applications/`` and prints its table; metrics go to ``--metrics`` as JSON when given.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from shopformer.cli.common import USER_ERRORS, console, fail, model_dir

if TYPE_CHECKING:
    from shopformer.artifacts import Run
    from shopformer.data.corpus import Dataset

RunArg = Annotated[Path, typer.Argument(help="run directory (RUN/model or the experiment folder)")]
DatasetArg = Annotated[Path | None, typer.Argument(help="prepared data set (default: the one the run was trained on)")]
MetricsOpt = Annotated[Path | None, typer.Option("--metrics", help="also write the metrics here (JSON)")]
CutoffOpt = Annotated[float | None, typer.Option(
    help="evaluation cut-off: Unix seconds or a quantile of event times (default: the latest the data allow)")]


def _load(run: Path, dataset: Path | None) -> tuple[Run, Dataset]:
    from shopformer.artifacts import load_run
    from shopformer.data.corpus import load_dataset

    loaded = load_run(model_dir(run))
    path = dataset or loaded.manifest.get("dataset_dir")
    if not path:
        raise ValueError(f"{run}: the run does not record its data set; pass DATASET")
    return loaded, load_dataset(path)


RecordOpt = Annotated[bool, typer.Option(
    "--record/--no-record", help="keep the metrics in the run's applications/ folder and refresh its report.html")]


def _write_metrics(metrics: dict, path: Path | None, run: Path | None = None, kind: str = "",
                   record: bool = False) -> None:
    if path is not None:
        from shopformer.atomic import atomic_write_text

        atomic_write_text(path, json.dumps(metrics, indent=2, default=float))
    if record and run is not None:
        from shopformer.pipelines.applications.report_html import record_application

        kept = record_application(model_dir(run), kind, metrics)
        if kept is not None:
            console.print(f"recorded in {kept} (report: {kept.parent.parent / 'report.html'})", highlight=False)


def _print_warnings(warnings: list[str]) -> None:
    for w in warnings:
        console.print(f"[yellow]warning:[/yellow] {w}", highlight=False)


def churn_command(
    run: RunArg,
    dataset: DatasetArg = None,
    days: Annotated[float, typer.Option(help="churn horizon T in days: no event within T days")] = 1.0,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="per-user scores (.parquet or .csv)")] = None,
    target_only: Annotated[bool, typer.Option(
        "--target-only", help="churn = no event of the run's target behaviour (e.g. no purchase)")] = False,
    cutoff: CutoffOpt = None,
    active_days: Annotated[float | None, typer.Option(
        help="score only users with an event in the last N days before each cut-off")] = None,
    fit_cutoffs: Annotated[int, typer.Option(
        help="fit on this many cut-offs a horizon apart (pooled; none before the model's training end)")] = 3,
    metrics: MetricsOpt = None,
    record: RecordOpt = True,
) -> None:
    """Churn probability per user (encoder state + RFM, calibrated) beside an RFM-only baseline."""
    from shopformer.artifacts import ArtifactError

    try:
        from shopformer.pipelines.applications.churn import churn_table, run_churn
        from shopformer.pipelines.applications.export import check_output, write_frame

        if out is not None:
            check_output(out)
        loaded, ds = _load(run, dataset)
        result = run_churn(loaded, ds, days, target_only, cutoff, active_days, fit_cutoffs=fit_cutoffs)
        if out is not None:
            write_frame(result.scores, out)
        _write_metrics(result.metrics, metrics, run, "churn_target" if target_only else "churn", record)
    except (ArtifactError, *USER_ERRORS) as err:  # type: ignore[misc]  # mypy cannot read a starred tuple
        fail(str(err))
    console.print(churn_table(result.metrics))
    _print_warnings(result.warnings)
    if out is not None:
        console.print(f"wrote {len(result.scores)} users' churn scores to {out}")


def score_command(
    run: RunArg,
    dataset: DatasetArg = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="output file (.parquet, one row group per batch)")] = Path(
        "scores.parquet"),
    users: Annotated[str, typer.Option(help="'all', or a text file with one user id per line")] = "all",
    k: Annotated[int, typer.Option("-k", help="items per user")] = 10,
    exclude_seen: Annotated[bool, typer.Option("--exclude-seen", help="only items new to the user")] = False,
    behaviour: Annotated[str | None, typer.Option(
        help="rank the items of the next event of this type (default: the run's)")] = None,
    churn_days: Annotated[float | None, typer.Option(
        help="also fit churn over this many days (see `shopformer churn`) and add its probability")] = None,
    batch_size: Annotated[int, typer.Option(help="users per forward pass (each holds a catalogue of scores)")] = 256,
    threads: Annotated[int | None, typer.Option(
        min=1, help="CPU threads (default: SHOPFORMER_THREADS, else the cores free at start)")] = None,
) -> None:
    """Score every user: top-k items, next-action probabilities, intent (and churn) to Parquet."""
    from shopformer.artifacts import ArtifactError

    try:
        import torch

        from shopformer.pipelines.applications.score import score_users
        from shopformer.training.threads import choose_threads

        torch.set_num_threads(choose_threads(threads).threads)

        if out.suffix != ".parquet":
            raise ValueError(f"{out}: batch scores are written as Parquet; the output must end in .parquet")
        loaded, ds = _load(run, dataset)
        churn = None
        if churn_days is not None:
            from shopformer.pipelines.applications.churn import churn_scores

            churn = churn_scores(loaded, ds, churn_days)["churn_probability"].to_numpy()
        summary = score_users(loaded, ds, out, k, users, exclude_seen, behaviour, batch_size, churn)
    except (ArtifactError, *USER_ERRORS) as err:  # type: ignore[misc]  # mypy cannot read a starred tuple
        fail(str(err))
    console.print(f"scored {summary.rows} users in {summary.seconds:.1f} s ({summary.users_per_second:.0f}/s) "
                  f"-> {out} [{', '.join(summary.columns)}]", highlight=False)


HorizonOpt = Annotated[str, typer.Option(help="period length: 1d, 12h, 30min or seconds")]
LevelOpt = Annotated[str, typer.Option(help="item or category")]


def forecast_command(
    run: RunArg,
    dataset: DatasetArg = None,
    horizon: HorizonOpt = "1d",
    level: LevelOpt = "item",
    behaviour: Annotated[str | None, typer.Option(
        help="events to forecast: a behaviour name, or '*' for all (default: the run's target, e.g. buy)")] = None,
    origins: Annotated[int, typer.Option(help="consecutive test origins, ending at the last full horizon")] = 3,
    interval: Annotated[float, typer.Option(help="nominal coverage of the prediction intervals")] = 0.8,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="the forecast after the data (.parquet/.csv)")] = None,
    metrics: MetricsOpt = None,
    record: RecordOpt = True,
) -> None:
    """Expected demand per item / category over the next horizon, with intervals, beside naive baselines."""
    from shopformer.artifacts import ArtifactError

    try:
        import polars as pl

        from shopformer.pipelines.applications.export import check_output, write_frame
        from shopformer.pipelines.applications.forecast import forecast_table, parse_horizon, run_forecast

        if out is not None:
            check_output(out)
        if origins < 1:
            raise ValueError(f"--origins must be >= 1 (got {origins})")
        loaded, ds = _load(run, dataset)
        result, final = run_forecast(loaded, ds, parse_horizon(horizon), level, behaviour, origins, interval)
        if out is not None:
            columns = ("point", "expected", "lo", "hi", "last_period")
            frame = pl.DataFrame({level: final["series"][1:].tolist(), **{k: final[k][1:] for k in columns}})
            write_frame(frame.sort("expected", descending=True), out)
        _write_metrics(result, metrics, run, f"forecast_{level}", record)
    except (ArtifactError, *USER_ERRORS) as err:  # type: ignore[misc]  # mypy cannot read a starred tuple
        fail(str(err))
    console.print(forecast_table(result))
    if result["wape_ratio_to_best_baseline"] >= 1:
        _print_warnings([f"the model's WAPE is {result['wape_ratio_to_best_baseline']:.2f}x the best baseline's "
                         f"({result['best_baseline']}): use the baseline"])
    if result["summary"]["model"]["all"]["wape"] >= 1:
        _print_warnings(["the model's WAPE is at least 1: forecasting no demand at all would do as well"])


def trends_command(
    run: RunArg,
    dataset: DatasetArg = None,
    horizon: HorizonOpt = "1d",
    level: LevelOpt = "item",
    behaviour: Annotated[str, typer.Option(help="events that count as interest: a behaviour name or '*' (all)")] = "*",
    origins: Annotated[int, typer.Option(help="consecutive test origins, ending at the last full period")] = 3,
    k: Annotated[int, typer.Option("-k", help="K of precision@K (capped at a quarter of the series)")] = 20,
    min_volume: Annotated[int, typer.Option(help="evaluate series with at least this many events")] = 5,
    top: Annotated[int, typer.Option(help="risers / fallers to print")] = 5,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="the ranking after the data (.parquet/.csv)")] = None,
    metrics: MetricsOpt = None,
    record: RecordOpt = True,
) -> None:
    """Rising and falling items / categories for the next period, beside growth and momentum baselines."""
    from shopformer.artifacts import ArtifactError

    try:
        import polars as pl

        from shopformer.pipelines.applications.export import check_output, write_frame
        from shopformer.pipelines.applications.forecast import parse_horizon
        from shopformer.pipelines.applications.trends import run_trends, trends_table

        if out is not None:
            check_output(out)
        if origins < 1 or k < 1:
            raise ValueError("--origins and -k must be >= 1")
        loaded, ds = _load(run, dataset)
        result, final = run_trends(loaded, ds, parse_horizon(horizon), level, behaviour, origins, k, min_volume)
        if out is not None:
            write_frame(pl.DataFrame({level: final["series"].tolist(), "last_period": final["last_period"],
                                      "predicted_growth": final["predicted_growth"]}), out)
        _write_metrics(result, metrics, run, f"trends_{level}", record)
    except (ArtifactError, *USER_ERRORS) as err:  # type: ignore[misc]  # mypy cannot read a starred tuple
        fail(str(err))
    console.print(trends_table(result, final, top), highlight=False)
    if result["spearman_gain_vs_best_baseline"] <= 0:
        _print_warnings(["the model's growth ranking does not beat every baseline (Spearman): use the best one"])


def explain_command(
    run: RunArg,
    dataset: DatasetArg = None,
    user: Annotated[str, typer.Option(help="raw user id whose recommendations to explain")] = "",
    k: Annotated[int, typer.Option("-k", help="recommendations to explain")] = 5,
    reasons: Annotated[int, typer.Option(help="events named per recommendation")] = 2,
    method: Annotated[str, typer.Option(help="occlusion (what the service serves) or gradient_x_input")] = "occlusion",
    record: RecordOpt = True,
) -> None:
    """Why a user sees each of their top-k items: the history events that raised its score most.

    Occlusion explains the run's served top-k (``Recommender.recommend`` + ``Recommender.explain``,
    as ``?explain=true``); gradient x input explains the model's own top-k."""
    from shopformer.artifacts import ArtifactError

    try:
        import numpy as np

        from shopformer.evaluation.explain import METHODS

        if method not in METHODS:
            raise ValueError(f"--method {method!r}: expected one of {', '.join(METHODS)}")
        if k < 1 or reasons < 1:
            raise ValueError("-k and --reasons must be >= 1")
        loaded, ds = _load(run, dataset)
        from shopformer.pipelines.applications.snapshot import check_compatible

        check_compatible(loaded, ds)
        dense = ds.vocabs.users.index.get(user, 0)
        rows = np.flatnonzero(ds.seq.users == dense) if dense else np.zeros(0, np.int64)
        if len(rows) == 0:
            raise ValueError(f"--user {user!r}: no such user in {ds.path}")
        lo, hi = int(ds.seq.offsets[rows[0]]), int(ds.seq.offsets[rows[0] + 1])
        explained = (_explain_served(loaded, ds, lo, hi, k, reasons) if method == "occlusion"
                     else _explain_model(loaded, ds, lo, hi, k, reasons, method))
        _write_metrics({"user": user, "method": method, "examples": explained}, None, run, "explain", record)
    except (ArtifactError, *USER_ERRORS) as err:  # type: ignore[misc]  # mypy cannot read a starred tuple
        fail(str(err))
    for e in explained:
        why = [f"{r['behaviour']} {r['item']} ({r['weight']:+.3f})" for r in e["reasons"]]
        console.print(f"{e['item']}: because of {', '.join(why) if why else 'no single event (popularity)'}",
                      highlight=False)


def _explain_served(loaded: Run, ds: Dataset, lo: int, hi: int, k: int, n: int) -> list[dict]:
    """The served top-k of events ``lo:hi`` of the data set and their reasons (``Recommender.explain``)."""
    from shopformer.recommender import History, Recommender, describe_reasons

    rec, s, v = Recommender(loaded), ds.seq, ds.vocabs
    h = History([v.items.tokens[i] for i in s.items[lo:hi]], [v.behaviours.tokens[b] for b in s.behaviours[lo:hi]],
                [int(t) for t in s.times[lo:hi]] if s.has_time else None)
    top = rec.recommend(h.items, k=k, behaviours=h.behaviours, timestamps=h.timestamps)
    return [{"item": item, "score": score, "explanation": describe_reasons(why),
             "reasons": [{"item": r.item, "behaviour": r.behaviour, "position": r.position, "weight": r.weight}
                         for r in why]}
            for item, score, why in zip(top.items, top.scores, rec.explain(h, top.items, n), strict=True)]


def _explain_model(loaded: Run, ds: Dataset, lo: int, hi: int, k: int, n: int, method: str) -> list[dict]:
    """The model's own top-k (no blend, no exclusion) attributed by ``method`` (evaluation/explain.py)."""
    import numpy as np
    import torch

    from shopformer.data.sequences import Sequences
    from shopformer.evaluation.explain import METHODS, describe_events, without_events

    s = ds.seq
    hist = Sequences.from_lists([s.items[lo:hi].tolist()], [s.behaviours[lo:hi].tolist()],
                                [s.times[lo:hi].tolist()], [s.categories[lo:hi].tolist()])
    model, buckets = loaded.model.eval(), loaded.config.model.time_buckets
    with torch.inference_mode():
        batch = without_events(hist, np.array([0]), np.array([[-1]]), buckets, model.max_len)
        scores = model.score_all(batch).float()
        top = scores.topk(min(k, ds.spec.n_items), dim=1)
    attr = METHODS[method](model, hist, top.indices.numpy(), buckets, None)
    items, behs = ds.vocabs.items.tokens, ds.vocabs.behaviours.tokens
    out = []
    for j, (item, score) in enumerate(zip(top.indices[0].tolist(), top.values[0].tolist(), strict=True)):
        why = [{"item": items[hist.items[e]], "behaviour": behs[hist.behaviours[e]], "position": e, "weight": w}
               for e, w in attr.top(0, j, n)]
        out.append({"item": items[item], "score": score, "reasons": why,
                    "explanation": describe_events([(r["item"], r["behaviour"]) for r in why])})
    return out


def report_command(
    run: RunArg,
    examples: Annotated[int, typer.Option(help="users whose top-3 items are explained in the report (0: none)")] = 3,
) -> None:
    """Write RUN/report.html: a self-contained page (opens offline) with every table and chart of the run
    (metrics with CIs, training curves, repeat / explore, recorded applications, example explanations)."""
    from shopformer.artifacts import ArtifactError

    try:
        from shopformer.pipelines.applications.report_html import report_dir, write_html_report

        out = report_dir(run)
        if not out.is_dir():
            raise ValueError(f"{run}: no such run directory")
        if examples < 0:
            raise ValueError(f"--examples must be >= 0 (got {examples})")
        path = write_html_report(out, examples)
    except (ArtifactError, *USER_ERRORS) as err:  # type: ignore[misc]  # mypy cannot read a starred tuple
        fail(str(err))
    console.print(f"report: {path}", highlight=False)
