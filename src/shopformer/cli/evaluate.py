"""``shopformer evaluate``: re-evaluate a saved run on its data set's test split."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from shopformer.cli.common import USER_ERRORS, SetOpt, console, fail, model_dir


def evaluate_command(
    run: Annotated[Path, typer.Argument(help="run directory (RUN/model or the experiment folder)")],
    dataset: Annotated[Path | None, typer.Option(help="dataset directory (default: the one it was trained on)")] = None,
    overrides: SetOpt = None,
) -> None:
    """Re-evaluate a saved model and the baselines on the test split."""
    from shopformer.artifacts import ArtifactError, load_run
    from shopformer.config import apply_overrides
    from shopformer.data.corpus import load_dataset, make_split
    from shopformer.evaluation.report import markdown_table
    from shopformer.pipelines.next_item import evaluate_systems

    try:
        loaded = load_run(model_dir(run))
        cfg = apply_overrides(loaded.config, list(overrides or []))
        ds = load_dataset(dataset or loaded.manifest.get("dataset_dir") or "")
        split = make_split(ds, cfg)
        results = evaluate_systems(loaded.model, ds, split, cfg)
    except (ArtifactError, *USER_ERRORS) as err:
        fail(str(err))
    console.print(markdown_table(results, cfg.eval.ks))
