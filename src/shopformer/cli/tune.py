"""``shopformer tune``: hyper-parameter search on the validation split (pipelines/tune.py)."""

from __future__ import annotations

import math
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


def tune_command(
    dataset: Annotated[Path, typer.Argument(help="dataset directory written by `shopformer prepare`")],
    out: Annotated[Path, typer.Option("--out", "-o", help="output folder")] = Path("runs/tune"),
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    model: Annotated[str | None, typer.Option(help="model name (see `shopformer models`)")] = None,
    trials: Annotated[int, typer.Option(min=1, help="maximum number of trials")] = 20,
    minutes: Annotated[float, typer.Option(min=0.01, help="time budget of the whole search")] = 60.0,
    seed: Annotated[int, typer.Option(help="sampler seed")] = 0,
    augment: Annotated[bool, typer.Option(help="also search augmentation probabilities")] = False,
) -> None:
    """Search hyper-parameters on the validation split (never the test split) within a time budget."""
    from shopformer.pipelines.tune import tune

    try:
        check_dataset_dir(dataset)
        check_output_dir(out)
        base = build_config(config, overrides, **{"model.name": model})
        res = tune(dataset, base, out, trials=trials, minutes=minutes, seed=seed, augment=augment,
                   echo=console.print)
    except (*USER_ERRORS, RuntimeError) as err:  # type: ignore[misc]  # mypy cannot read a starred tuple
        fail(err)
        return
    score = "nan" if math.isnan(res.best_value) else f"{res.best_value:.4f}"
    console.print(f"best valid {base.train.monitor} = {score} after {res.n_trials} trials "
                  f"({res.seconds / 60:.1f} min)")
    console.print(f"best config: {out / 'best_config.json'} (retrain it with `shopformer train --config`)")
