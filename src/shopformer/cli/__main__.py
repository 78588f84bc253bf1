"""``python -m shopformer.cli ...`` (same as the ``shopformer`` script)."""

from shopformer.cli.app import app

if __name__ == "__main__":
    app()
