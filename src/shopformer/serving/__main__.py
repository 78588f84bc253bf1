"""``python -m shopformer.serving RUN_DIR [options]`` (same as ``shopformer serve``)."""

from __future__ import annotations

import typer

from shopformer.serving.cli import serve_command

if __name__ == "__main__":
    typer.run(serve_command)
