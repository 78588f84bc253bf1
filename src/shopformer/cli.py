"""`shopformer` command line: prepare | train | evaluate | recommend | serve | demo."""

from __future__ import annotations

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


if __name__ == "__main__":
    app()
