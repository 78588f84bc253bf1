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
    threads: Annotated[int | None, typer.Option(
        min=1, help="CPU threads (default: SHOPFORMER_THREADS, else the cores free at start)")] = None,
    quiet: bool = False,
) -> None:
    """Train with early stopping on validation, evaluate on test beside the baselines, save the run.

    Without --config: configs/default.toml, and the settings that follow the data
    (dropout, max length, epochs, patience, loss, seen items, served blend,
    neighbour attributes, frequency filter) set from its training events
    (docs/defaults.md); a key given with --set is kept."""
    from shopformer.data.corpus import Dataset, load_dataset
    from shopformer.pipelines.defaults import DEFAULT_CONFIG, apply_data_defaults, explicit_keys
    from shopformer.pipelines.multi_behaviour import run_multibehaviour
    from shopformer.pipelines.next_item import run_experiment
    from shopformer.training.distributed import is_main, launched_world
    from shopformer.training.threads import choose_threads

    try:
        check_dataset_dir(dataset)
        check_output_dir(out)
        options = {"model.name": model, "train.max_minutes": max_minutes, "task.kind": task,
                   "task.target_behaviour": target_behaviour, "train.threads": threads}
        base = config if config is not None else (DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None)
        cfg = build_config(base, overrides, **options)
        data: Path | Dataset = dataset
        if config is None:  # the default: the data-dependent settings follow the data (docs/defaults.md)
            data = load_dataset(dataset)
            cfg, line, _, _ = apply_data_defaults(cfg, data, explicit_keys(overrides or [], options))
            console.print(line, highlight=False)
        choice = choose_threads(cfg.train.threads)  # printed once: the threads training will use
        cfg = cfg.override(train={"threads": choice.threads})
        console.print(choice.describe(), highlight=False)
        if cfg.task.kind != "next-item" and launched_world() > 1:
            raise ValueError(f"multi-process training (torchrun) supports task.kind='next-item', not {cfg.task.kind!r}")
        if cfg.task.kind != "next-item":
            multi = run_multibehaviour(data, cfg, out, progress=not quiet, ablation=ablation)
            table, run_dir, warnings = multi.table, multi.run_dir, multi.metrics.get("warnings", [])
        else:
            res = run_experiment(data, cfg, out, progress=not quiet)
            table, run_dir, warnings = res.table, res.run_dir, res.warnings
    except USER_ERRORS as err:
        fail(err)
    if not is_main():  # torchrun: rank 0 reports and writes; the other ranks only trained
        return
    console.print(table)
    for w in warnings:  # also in report.md and metrics.json
        console.print(f"[bold yellow]warning:[/bold yellow] {w}", highlight=False)
    console.print(f"run saved to [bold]{run_dir}[/bold]; report: {out / 'report.md'}")
