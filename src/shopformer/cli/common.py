"""What every command shares: the console, config options and the one way to fail."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console

from shopformer.config import Config, ConfigError, apply_overrides, load_config

console = Console()

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="TOML or JSON config file")]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", "-s", help="override a config value: section.key=value (repeatable)")
]
# Errors that mean "bad input from the user": one line on stderr, exit code 2, never a traceback.
USER_ERRORS: tuple[type[Exception], ...] = (ConfigError, ValueError, FileNotFoundError, KeyError, ImportError)


def build_config(config: Path | None, overrides: list[str] | None, **extra: object) -> Config:
    """The config file (or the defaults), then ``--set`` overrides, then the command's own options."""
    cfg = apply_overrides(load_config(config), list(overrides or []))
    sets = [f"{k}={json.dumps(v)}" for k, v in extra.items() if v is not None]
    return apply_overrides(cfg, sets)


def fail(message: str) -> NoReturn:
    if message.startswith("'") and message.endswith("'"):  # KeyError quotes its message
        message = message[1:-1]
    console.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(2)


def model_dir(run: Path) -> Path:
    """RUN/model when given the experiment folder, else RUN itself."""
    return run / "model" if (run / "model" / "manifest.json").exists() else run
