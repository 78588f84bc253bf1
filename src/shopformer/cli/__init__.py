"""The ``shopformer`` command line (Typer). ``app`` is the console-script entry point."""

from shopformer.cli.app import app

__all__ = ["app"]
