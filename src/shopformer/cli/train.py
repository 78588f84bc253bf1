"""``shopformer train``: fit on a prepared data set, test beside the baselines, save the run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from shopformer.cli.common import (
    USER_ERRORS,
    ConfigOpt,
    SetOpt,
    build_config,
    check_dataset_dir,
    check_output_dir,
    console,
    fail,
)


def train_command(
    dataset: Annotated[Path, typer.Argument(help="dataset directory written by `shopformer prepare`")],
    out: Annotated[Path, typer.Option("--out", "-o", help="run directory to create")] = Path("runs/latest"),
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    model: Annotated[str | None, typer.Option(help="model name (see `shopformer models`)")] = None,
    max_minutes: Annotated[float | None, typer.Option(help="training time budget")] = None,
    task: Annotated[str | None, typer.Option(help="next-item | next-purchase | next-action | intent | multi")] = None,
    target_behaviour: Annotated[
        str | None, typer.Option(help="behaviour the purchase/intent heads predict (default: from the data)")
    ] = None,
    ablation: Annotated[bool, typer.Option(help="multi-behaviour: also train without behaviour inputs")] = False,
    quiet: bool = False,
) -> None:
    """Train with early stopping on validation, evaluate on test beside the baselines, save the run."""
    from shopformer.pipelines.multi_behaviour import run_multibehaviour
    from shopformer.pipelines.next_item import run_experiment

    try:
        check_dataset_dir(dataset)
        check_output_dir(out)
        cfg = build_config(config, overrides, **{"model.name": model, "train.max_minutes": max_minutes,
                                                 "task.kind": task, "task.target_behaviour": target_behaviour})
        if cfg.task.kind != "next-item":
            multi = run_multibehaviour(dataset, cfg, out, progress=not quiet, ablation=ablation)
            table, run_dir, warnings = multi.table, multi.run_dir, multi.metrics.get("warnings", [])
        else:
            res = run_experiment(dataset, cfg, out, progress=not quiet)
            table, run_dir, warnings = res.table, res.run_dir, res.warnings
    except USER_ERRORS as err:
        fail(err)
    console.print(table)
    for w in warnings:  # also in report.md and metrics.json
        console.print(f"[bold yellow]warning:[/bold yellow] {w}", highlight=False)
    console.print(f"run saved to [bold]{run_dir}[/bold]; report: {out / 'report.md'}")
