"""What every command shares: the console, config options and the one way to fail.

User errors (bad files, config keys or values, data set or run directories, names) end as one line
on stderr, ``error: <file[:line]: what is wrong>``, with exit code 2 — never a traceback. Commands
may catch them themselves and call :func:`fail`; anything in :data:`USER_ERRORS` (or an
``ArtifactError``) that escapes a command is caught by :class:`UserErrorGroup`, the app's command
group. ``SHOPFORMER_TRACEBACK=1`` re-raises instead, for debugging.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperGroup

from shopformer.config import Config, ConfigError, apply_overrides, load_config

console = Console()
error_console = Console(stderr=True, soft_wrap=True, highlight=False)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="TOML or JSON config file")]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", "-s", help="override a config value: section.key=value (repeatable)")
]
# Errors that mean "bad input from the user": one line on stderr, exit code 2, never a traceback.
# OSError covers missing, unreadable and wrong-kind paths (FileNotFoundError, PermissionError, ...).
USER_ERRORS: tuple[type[Exception], ...] = (ConfigError, ValueError, OSError, KeyError, ImportError)
TRACEBACK_ENV = "SHOPFORMER_TRACEBACK"


def build_config(config: Path | None, overrides: list[str] | None, **extra: object) -> Config:
    """The config file (or the defaults), then ``--set`` overrides, then the command's own options.

    The model name is checked against the registry here, before any work starts."""
    cfg = apply_overrides(_load_config_file(config), list(overrides or []))
    sets = [f"{k}={json.dumps(v)}" for k, v in extra.items() if v is not None]
    cfg = apply_overrides(cfg, sets)
    from shopformer.models import model_class

    model_class(cfg.model.name)  # ValueError naming the registered models
    return cfg


def _load_config_file(path: Path | None) -> Config:
    """``load_config`` with the failures it does not name the file for mapped to a ConfigError."""
    try:
        return load_config(path)
    except ConfigError:
        raise
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte offset {err.start})") from None
    except (AttributeError, TypeError):  # a JSON file whose top level is not an object
        raise ConfigError(f"{path}: a config must be a table of sections, e.g. [model] dim = 64") from None


def error_message(err: BaseException | str) -> str:
    """One line describing a user error; OS errors name their path, KeyError loses its quotes."""
    if isinstance(err, str):
        text = err
    elif isinstance(err, KeyError) and err.args:
        text = str(err.args[0])
    elif isinstance(err, OSError) and err.filename is not None:
        text = f"{err.filename}: {err.strerror or err}"
    else:
        text = str(err) or type(err).__name__
    if len(text) > 1 and text[0] == text[-1] == "'":  # a KeyError's message passed as str(err)
        text = text[1:-1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    out = ""
    for line in lines:  # "invalid config (x.toml):" + "model.dim: ..." -> one line
        out = line if not out else f"{out} {line}" if out.endswith(":") else f"{out}; {line}"
    return out or type(err).__name__


def fail(message: BaseException | str, prefix: str = "error: ") -> NoReturn:
    """Print one error line to stderr and exit with code 2 (``SHOPFORMER_TRACEBACK=1``: re-raise an
    exception instead, traceback included)."""
    if isinstance(message, BaseException) and os.environ.get(TRACEBACK_ENV):
        raise message
    error_console.print(Text.assemble((prefix, "bold red"), error_message(message)))
    raise typer.Exit(2)


def is_user_error(err: BaseException) -> bool:
    """Bad input rather than a bug: USER_ERRORS, or a broken run directory (ArtifactError)."""
    if isinstance(err, USER_ERRORS):
        return True
    artifacts = sys.modules.get("shopformer.artifacts")  # not imported here: it pulls in torch
    return artifacts is not None and isinstance(err, artifacts.ArtifactError)


class UserErrorGroup(TyperGroup):
    """The app's command group: a user error escaping any command becomes one line, exit code 2."""

    def invoke(self, ctx: Any) -> Any:
        from shopformer.training.allocator import keep_freed_memory

        keep_freed_memory()  # large score tensors reuse freed memory instead of new pages (SHOPFORMER_MALLOC)
        try:
            return super().invoke(ctx)
        except Exception as err:
            if not is_user_error(err):
                raise
            fail(err)


def check_dataset_dir(path: Path) -> Path:
    """``path`` if it holds a readable prepared data set; else an error naming the file at fault."""
    import polars as pl

    from shopformer.data import schema as S

    for name in ("events.parquet", "vocab.json", "stats.json"):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path}: missing {name}; run `shopformer prepare` first")
    try:
        columns = set(pl.read_parquet_schema(path / "events.parquet"))
    except (pl.exceptions.PolarsError, OSError) as err:
        raise ValueError(f"{path / 'events.parquet'}: not a readable Parquet file ({error_message(err)})") from None
    missing = sorted({S.USER_IDX, S.ITEM_IDX} - columns)
    if missing:
        raise ValueError(f"{path / 'events.parquet'}: no column(s) {missing}; not a data set written by `prepare`")
    for name in ("vocab.json", "stats.json"):
        try:
            data = json.loads((path / name).read_text())
        except (ValueError, OSError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise ValueError(f"{path / name}: unreadable ({error_message(err)}); prepare the data set again") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path / name}: not a JSON object; prepare the data set again")
    return path


def check_output_dir(out: Path) -> Path:
    """``out`` if it can be created or written (checked before a long job starts)."""
    from shopformer.data.prepare import check_output_path

    check_output_path(out)
    return out


def model_dir(run: Path) -> Path:
    """RUN/model when given the experiment folder, else RUN itself."""
    return run / "model" if (run / "model" / "manifest.json").exists() else run
