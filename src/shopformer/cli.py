"""`shopformer` command line: prepare | train | evaluate | recommend | serve | demo."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__, pretty_exceptions_enable=False)
console = Console()

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="TOML or JSON config file")]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", "-s", help="override a config value: section.key=value (repeatable)")
]


def _config(config: Path | None, overrides: list[str] | None, **extra: object):
    from shopformer.config import apply_overrides, load_config

    cfg = apply_overrides(load_config(config), list(overrides or []))
    sets = [f"{k}={json.dumps(v)}" for k, v in extra.items() if v is not None]
    return apply_overrides(cfg, sets)


def _fail(message: str) -> None:
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(2)


@app.command()
def train(
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
    from shopformer.config import ConfigError
    from shopformer.experiment import run_experiment

    try:
        cfg = _config(config, overrides, **{"model.name": model, "train.max_minutes": max_minutes,
                                            "task.kind": task, "task.target_behaviour": target_behaviour})
        if cfg.task.kind != "next-item":
            from shopformer.multibehaviour import run_multibehaviour

            res = run_multibehaviour(dataset, cfg, out, progress=not quiet, ablation=ablation)
        else:
            res = run_experiment(dataset, cfg, out, progress=not quiet)
    except (ConfigError, ValueError, FileNotFoundError, ImportError) as err:
        _fail(str(err))
        return
    console.print(res.table)
    console.print(f"run saved to [bold]{res.run_dir}[/bold]; report: {out / 'report.md'}")


@app.command()
def evaluate(
    run: Annotated[Path, typer.Argument(help="run directory (RUN/model or the experiment folder)")],
    dataset: Annotated[Path | None, typer.Option(help="dataset directory (default: the one it was trained on)")] = None,
    overrides: SetOpt = None,
) -> None:
    """Re-evaluate a saved model and the baselines on the test split."""
    from shopformer.artifacts import ArtifactError, load_run
    from shopformer.config import apply_overrides
    from shopformer.experiment import evaluate_systems, load_dataset, make_split
    from shopformer.report import markdown_table

    try:
        loaded = load_run(_model_dir(run))
        cfg = apply_overrides(loaded.config, list(overrides or []))
        ds = load_dataset(dataset or loaded.manifest.get("dataset_dir") or "")
        split = make_split(ds, cfg)
        results = evaluate_systems(loaded.model, ds, split, cfg)
    except (ArtifactError, ValueError, FileNotFoundError) as err:
        _fail(str(err))
        return
    console.print(markdown_table(results, cfg.eval.ks))


def _model_dir(run: Path) -> Path:
    return run / "model" if (run / "model" / "manifest.json").exists() else run


@app.command()
def recommend(
    run: Annotated[Path, typer.Argument(help="run directory")],
    user: Annotated[str | None, typer.Option(help="a user id from the training data set")] = None,
    history: Annotated[str | None, typer.Option(help="comma-separated raw item ids, oldest first")] = None,
    k: Annotated[int, typer.Option("-k", help="how many items")] = 10,
    exclude_seen: Annotated[bool | None, typer.Option(help="drop items already in the history")] = None,
    behaviour: Annotated[str | None, typer.Option(
        help="rank for the next event of this type, e.g. the purchase type ('*' = any); multi-task runs only")] = None,
) -> None:
    """Print the top-k next items (raw ids with scores) for a user or an ad-hoc history.

    Multi-behaviour runs also print the next-action probabilities and the purchase intent."""
    from shopformer.artifacts import ArtifactError
    from shopformer.recommender import History, Recommender, describe_actions

    if (user is None) == (history is None):
        _fail("give exactly one of --user or --history")
    try:
        rec = Recommender.load(_model_dir(run))
        if user is not None:
            h = user_history(rec, user)
        else:
            h = History([s.strip() for s in (history or "").split(",") if s.strip()])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = rec.recommend_many([h], k=k, exclude_seen=exclude_seen, behaviour=behaviour)[0]
            parts = () if out.fallback else rec.head_parts
            action = rec.predict_next_action(h) if "action" in parts else None
            intent = rec.purchase_intent(h) if "intent" in parts else None
        for w in caught:
            console.print(f"[yellow]warning:[/yellow] {w.message}")
    except (ArtifactError, KeyError, ValueError) as err:
        _fail(str(err))
        return
    if out.fallback:
        console.print("[yellow]no known item in the history: popularity fallback[/yellow]")
    for rank, (item, score) in enumerate(out.pairs(), 1):
        console.print(f"{rank:>3}  {item}  {score:.4f}")
    if action is not None:
        console.print(f"next action: {describe_actions(action)}")
    if intent is not None:
        console.print(f"purchase intent: P({rec.target_behaviour} within {rec.cfg.task.intent_horizon} events) = "
                      f"{intent:.3f}")


def user_history(rec, user: str):
    """The stored history of one user from the data set the run was trained on."""
    import polars as pl

    from shopformer.data import schema as S
    from shopformer.recommender import History

    ds = rec.run.manifest.get("dataset_dir")
    if not ds or not (Path(ds) / "events.parquet").exists():
        raise ValueError("the run's data set is not available; use --history")
    ev = pl.read_parquet(Path(ds) / "events.parquet").filter(pl.col(S.USER) == user)
    if ev.is_empty():
        raise KeyError(f"unknown user {user!r} in {ds}")
    times = ev[S.TIME].to_list() if rec.spec.has_time and S.TIME in ev.columns else None
    return History(ev[S.ITEM].to_list(), ev[S.EVENT].to_list() if S.EVENT in ev.columns else None, times)


@app.command()
def models() -> None:
    """List the registered models."""
    from shopformer.models import REGISTRY

    for name, cls in sorted(REGISTRY.items()):
        doc = (sys.modules[cls.__module__].__doc__ or "").strip().splitlines()
        console.print(f"{name:10s} {doc[0] if doc else ''}")


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o")] = Path("runs/demo"),
    max_minutes: Annotated[float, typer.Option(help="training budget")] = 4.0,
) -> None:
    """Prepare the bundled Taobao slice, train, compare with baselines, show example users."""
    from shopformer.demo import run_demo

    run_demo(out, max_minutes, console)


def _register_feature_commands() -> None:
    """Sub-commands defined beside their feature; they import heavy modules lazily."""
    from shopformer.commands_prepare import prepare_command
    from shopformer.serving.cli import serve_command
    from shopformer.tune import tune_command

    app.command("prepare")(prepare_command)
    app.command("tune")(tune_command)
    app.command("serve")(serve_command)


_register_feature_commands()

if __name__ == "__main__":
    app()
