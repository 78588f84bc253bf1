"""``shopformer serve RUN_DIR``: run the service under uvicorn (one process, one event loop).

Flags override ``SHOPFORMER_*`` environment variables; unset flags leave the environment (or
the defaults) in charge. Keys are never flags (they would show in ``ps``): use the
``SHOPFORMER_{API,INGEST,ADMIN,READ}_KEY`` variables or the ``--*-key-file`` options.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from shopformer.pipelines.registry import Registry


def serve_command(
    run_dir: Annotated[Path, typer.Argument(help="Run directory to serve (as written by `shopformer train`).")],
    host: Annotated[str | None, typer.Option(help="Bind address (env SHOPFORMER_HOST, default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (env SHOPFORMER_PORT, default 8000).")] = None,
    store: Annotated[str | None, typer.Option(
        "--store", help="State store URL: sqlite:///state.db (default) or redis://host:port/0.")] = None,
    api_key_file: Annotated[Path | None, typer.Option(
        help="File holding the fallback key of the ingest and admin scopes (or env SHOPFORMER_API_KEY).")] = None,
    ingest_key_file: Annotated[Path | None, typer.Option(
        help="File holding the key for POST /v1/events (or env SHOPFORMER_INGEST_KEY).")] = None,
    admin_key_file: Annotated[Path | None, typer.Option(
        help="File holding the key for deletion and reload (or env SHOPFORMER_ADMIN_KEY).")] = None,
    read_key_file: Annotated[Path | None, typer.Option(
        help="File holding the key for reads and /metrics (or env SHOPFORMER_READ_KEY; reads are open "
             "without one).")] = None,
    threads: Annotated[int | None, typer.Option(help="Inference threads (default 1).")] = None,
    max_batch_size: Annotated[int | None, typer.Option(help="Most requests per forward pass (default 64).")] = None,
    batch_window_us: Annotated[int | None, typer.Option(
        help="Extra wait to grow a micro-batch, microseconds (default 0).")] = None,
    faiss_threshold: Annotated[int | None, typer.Option(
        help="Catalogue size from which a FAISS IVF index is used (default 300000).")] = None,
    reload_root: Annotated[Path | None, typer.Option(
        help="Only allow /v1/admin/reload of run directories under this folder (default: RUN_DIR's "
             "parent).")] = None,
    forget_ledger: Annotated[Path | None, typer.Option(
        help="Deletion ledger file (default: shopformer_forget_ledger.jsonl beside the SQLite state file; env "
             "SHOPFORMER_FORGET_LEDGER).")] = None,
    pseudonymise_users: Annotated[bool | None, typer.Option(
        "--pseudonymise-users/--raw-user-ids", help="Keep only HMAC pseudonyms of user ids (and of event/session "
        "ids) in the store, ledger and logs, as `prepare --pseudonymise-users` does; requests keep raw ids. Key: "
        "--pseudonym-key-file or env SHOPFORMER_PSEUDONYM_KEY (env SHOPFORMER_PSEUDONYMISE_USERS).")] = None,
    pseudonym_key_file: Annotated[Path | None, typer.Option(
        help="File holding the pseudonym key (implies --pseudonymise-users).")] = None,
    log_level: Annotated[str | None, typer.Option(help="Log level (default info).")] = None,
    workers: Annotated[int | None, typer.Option(
        help="Service processes on this port, sharing a Redis store (env SHOPFORMER_WORKERS, default 1; "
             "docs/scale-serving.md).")] = None,
    max_in_flight: Annotated[int | None, typer.Option(
        help="Per worker: /v1 requests in flight beyond this are answered 503 + Retry-After at once (0: no bound; "
             "default 4).")] = None,
    backend: Annotated[str | None, typer.Option(
        help="User vectors by 'torch' or by the run's exported 'onnx' encoder (`shopformer export RUN --format "
             "onnx`; env SHOPFORMER_BACKEND).")] = None,
    watch: Annotated[bool | None, typer.Option(
        "--watch/--no-watch", help="Reload whenever RUN_DIR (e.g. registry/current) points at another run: the "
        "service follows promotions and rollbacks (env SHOPFORMER_WATCH_RUN_DIR; SHOPFORMER_WATCH_INTERVAL_S, "
        "default 5).")] = None,
    dashboard: Annotated[bool | None, typer.Option(
        "--dashboard/--no-dashboard", help="Serve the web dashboard under /ui (env SHOPFORMER_DASHBOARD; "
        "docs/dashboard.md).")] = None,
    dashboard_insights: Annotated[Path | None, typer.Option(
        help="Trends / forecast / churn file for the dashboard, written by `shopformer insights` (re-read when it "
             "changes).")] = None,
    dashboard_registry: Annotated[Path | None, typer.Option(
        help="Model registry whose versions the dashboard lists and switches (default: the one RUN_DIR is in).")]
    = None,
) -> None:
    """Serve recommendations over HTTP: events in, top-k out, hot reload."""
    import uvicorn

    from shopformer.serving.app import create_app
    from shopformer.serving.settings import ServeSettings

    overrides = {
        "run_dir": run_dir, "host": host, "port": port, "store_url": store, "threads": threads,
        "max_batch_size": max_batch_size, "batch_window_us": batch_window_us, "faiss_threshold": faiss_threshold,
        "reload_root": reload_root, "log_level": log_level, "forget_ledger": forget_ledger,
        "watch_run_dir": watch,
        "dashboard": dashboard, "dashboard_insights": dashboard_insights, "dashboard_registry": dashboard_registry,
        "pseudonymise_users": pseudonymise_users, "pseudonym_key_file": pseudonym_key_file,
        "workers": workers, "max_in_flight": max_in_flight, "backend": backend,
    }
    key_files = {"api_key": api_key_file, "ingest_key": ingest_key_file, "admin_key": admin_key_file,
                 "read_key": read_key_file}
    for name, path in key_files.items():
        if path is not None:
            try:
                overrides[name] = path.read_text().strip()
            except OSError as err:
                raise typer.BadParameter(f"{path}: cannot read the key file ({err.strerror})",
                                         param_hint=f"--{name.replace('_', '-')}-file") from None
    settings = ServeSettings.model_validate({k: v for k, v in overrides.items() if v is not None})
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.workers > 1:  # N processes on one port (cli/serve_workers.py)
        from shopformer.cli.serve_workers import run_workers

        run_workers(settings)
        return
    config = uvicorn.Config(
        create_app(settings, registry_opener()), host=settings.host, port=settings.port, log_level=settings.log_level,
        access_log=settings.access_log, lifespan="on", backlog=2048, timeout_keep_alive=30,
    )
    server = uvicorn.Server(config)
    server.run()
    if not server.started:  # the lifespan failed (bad run directory, unreachable store, ...)
        raise typer.Exit(code=1)


def registry_opener() -> Callable[[Path], Registry]:
    """The dashboard's way into the model registry: the service may not import the pipelines layer,
    the CLI (above both) hands it ``Registry``."""
    from shopformer.pipelines.registry import Registry

    return Registry
