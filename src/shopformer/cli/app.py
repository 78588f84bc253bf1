"""`shopformer` command line: prepare | train | evaluate | recommend | tune | serve | demo | models.

One Typer app; each command lives in its own module of this package and imports the heavy
layers (torch, the pipelines) only when it runs, so ``shopformer --help`` stays instant.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from shopformer.cli.applications import (
    churn_command,
    explain_command,
    forecast_command,
    report_command,
    score_command,
    trends_command,
)
from shopformer.cli.common import UserErrorGroup, console
from shopformer.cli.evaluate import evaluate_command
from shopformer.cli.export import export_command
from shopformer.cli.forget import forget_command
from shopformer.cli.insights import insights_command
from shopformer.cli.models import models_group
from shopformer.cli.prepare import prepare_command
from shopformer.cli.recommend import recommend_command
from shopformer.cli.retrain import retrain_command
from shopformer.cli.serve import serve_command
from shopformer.cli.train import train_command
from shopformer.cli.tune import tune_command

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__, pretty_exceptions_enable=False,
                  cls=UserErrorGroup)


def models() -> None:
    """List the registered models."""
    from shopformer.models import REGISTRY

    for name, cls in sorted(REGISTRY.items()):
        doc = (sys.modules[cls.__module__].__doc__ or "").strip().splitlines()
        console.print(f"{name:10s} {doc[0] if doc else ''}")


def demo(
    out: Annotated[Path, typer.Option("--out", "-o")] = Path("runs/demo"),
    epochs: Annotated[int | None, typer.Option(help="training epochs (default: configs/demo.toml)")] = None,
    max_minutes: Annotated[float | None, typer.Option(
        help="wall-clock safety net (off by default: a clock makes numbers depend on machine load)")] = None,
) -> None:
    """Prepare the bundled Taobao slice, train, compare with baselines, show example users."""
    from shopformer.pipelines.demo import run_demo

    run_demo(out, console, epochs=epochs, max_minutes=max_minutes)


app.command("prepare")(prepare_command)
app.command("train")(train_command)
app.command("evaluate")(evaluate_command)
app.command("recommend")(recommend_command)
app.command("tune")(tune_command)
app.command("serve")(serve_command)
app.command("forget")(forget_command)
app.command("demo")(demo)
app.add_typer(models_group(models), name="models")
app.command("retrain")(retrain_command)
app.command("churn")(churn_command)
app.command("score")(score_command)
app.command("forecast")(forecast_command)
app.command("trends")(trends_command)
app.command("explain")(explain_command)
app.command("report")(report_command)
app.command("export")(export_command)
app.command("insights")(insights_command)
