"""``shopformer insights RUN [DATASET] -o insights.json``: what the dashboard's Trends, Item and
Customer pages show from the applications (trends, demand forecast, churn), computed once offline.

Serve it with ``shopformer serve RUN --dashboard --dashboard-insights insights.json``; the service
re-reads the file when it changes, so a cron job can refresh it while the service runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from shopformer.cli.common import USER_ERRORS, console, fail, model_dir


def insights_command(
    run: Annotated[Path, typer.Argument(help="run directory (RUN/model or the experiment folder)")],
    dataset: Annotated[Path | None, typer.Argument(
        help="prepared data set (default: the one the run was trained on)")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="the insights file (JSON) to write")] = Path(
        "insights.json"),
    horizon: Annotated[str | None, typer.Option(
        help="period length: 1d, 12h, 30min or seconds (default: 1 day for logs of up to 60 days, else 7 days)")]
    = None,
) -> None:
    """Trends, demand forecast and churn of a run for the dashboard, in one JSON file."""
    from shopformer.artifacts import ArtifactError

    try:
        from shopformer.artifacts import load_run
        from shopformer.data.corpus import load_dataset
        from shopformer.pipelines.applications.forecast import parse_horizon
        from shopformer.pipelines.insights import compute_insights, write_insights

        h = parse_horizon(horizon) if horizon is not None else None
        loaded = load_run(model_dir(run))
        path = dataset or loaded.manifest.get("dataset_dir")
        if not path:
            raise ValueError(f"{run}: the run does not record its data set; pass DATASET")
        data = compute_insights(loaded, load_dataset(path), h)
        write_insights(data, out)
    except (ArtifactError, *USER_ERRORS) as err:  # type: ignore[misc]  # mypy cannot read a starred tuple
        fail(str(err))
    for part in ("trends_item", "trends_category", "forecast", "churn"):
        if part in data:
            why = data[part].get("error")
            console.print(f"{part}: " + (f"[yellow]not available[/yellow]: {why}" if why else "ok"), highlight=False)
    console.print(f"wrote {out} (period {data['horizon_seconds'] / 3600:g} h)")
