"""``shopformer evaluate``: re-evaluate a saved run on its data set's test split.

The protocol follows the run's task: next-item runs get the next-item table (model beside the
popularity and Markov baselines), multi-task runs the multi-behaviour protocol (next item per
behaviour, next action, intent). Evaluation never changes the saved model; ``--set`` may change
evaluation settings but not ``model.*`` or ``task.kind``, which the trained weights fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from shopformer.cli.common import USER_ERRORS, SetOpt, check_dataset_dir, console, fail, model_dir


def evaluate_command(
    run: Annotated[Path, typer.Argument(help="run directory (RUN/model or the experiment folder)")],
    dataset: Annotated[Path | None, typer.Option(help="dataset directory (default: the one it was trained on)")] = None,
    overrides: SetOpt = None,
) -> None:
    """Re-evaluate a saved model and the baselines on the test split (the protocol of its task)."""
    from shopformer.artifacts import ArtifactError, load_run
    from shopformer.config import ConfigError, apply_overrides, parse_override
    from shopformer.data.vocab import Vocabs

    try:
        for o in overrides or []:
            section, key, _ = parse_override(o)
            if section == "model" or (section, key) == ("task", "kind"):
                raise ConfigError(f"{section}.{key} is fixed by the trained weights (retrain to change it)")
        loaded = load_run(model_dir(run))
        cfg = apply_overrides(loaded.config, list(overrides or []))
        ds_dir = check_dataset_dir(dataset or Path(loaded.manifest.get("dataset_dir") or "."))
        if Vocabs.load(ds_dir / "vocab.json").items.tokens != loaded.vocabs.items.tokens:
            raise ValueError(f"{ds_dir}: its item vocabulary is not the one {run} was trained on; "
                             "evaluate on that data set, or retrain")
        if loaded.config.task.kind != "next-item":
            from shopformer.pipelines.multi_behaviour import evaluate_run

            _, table = evaluate_run(loaded, dataset, cfg=cfg)
        else:
            from shopformer.data.corpus import load_dataset, make_split
            from shopformer.evaluation.report import markdown_table
            from shopformer.pipelines.next_item import evaluate_systems

            ds = load_dataset(dataset or loaded.manifest.get("dataset_dir") or "")
            results = evaluate_systems(loaded.model, ds, make_split(ds, cfg), cfg, blend=loaded.blend)
            table = markdown_table(results, cfg.eval.ks)
    except (ArtifactError, *USER_ERRORS) as err:  # type: ignore[misc]  # mypy cannot read a starred tuple
        fail(err)
    console.print(table)
