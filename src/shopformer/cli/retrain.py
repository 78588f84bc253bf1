"""``shopformer retrain REGISTRY --events FILES...``: a candidate from the current version and new events.

Exit codes (for cron, systemd timers, orchestrators): 0 promoted (with ``--promote``) or kept as a
candidate that passed the gate, 1 rejected by the gate, 2 bad input, 3 another retrain holds the
registry lock. ``--every 1d`` repeats the retrain in a loop (a simple scheduler), reading the same
event sources each time; duplicates are dropped, so re-reading a growing file adds only new events.
"""

from __future__ import annotations

import re
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from shopformer.cli.common import USER_ERRORS, SetOpt, console, fail
from shopformer.cli.prepare import _DELIMITER_NAMES, _mapping, _split_list

if TYPE_CHECKING:
    from shopformer.pipelines.continuous import RetrainOptions

_EVERY = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_every(text: str) -> float:
    m = _EVERY.match(text.strip())
    if not m:
        raise ValueError(f"--every {text!r}: expected a number and a unit, e.g. 30m, 6h, 1d")
    return float(m.group(1)) * _SECONDS[m.group(2)]


def service_ledger(store: str) -> Path:
    """The deletion ledger a service on ``store`` keeps by default (serving/settings.py); an error when
    it is missing: without it, users forgotten through the service would come back from the events of
    earlier versions."""
    from shopformer.data.store_events import is_redis
    from shopformer.serving.settings import LEDGER_NAME

    path = Path(LEDGER_NAME) if is_redis(store) else Path(store.removeprefix("sqlite:///")).parent / LEDGER_NAME
    if not path.exists():
        raise ValueError(f"no deletion ledger at {path}: pass the service's with --forget-ledger FILE "
                         "(forgotten users' events must not come back from earlier versions' data)")
    return path


def retrain_command(
    registry: Annotated[Path, typer.Argument(help="model registry directory (see `shopformer models`)")],
    events: Annotated[list[Path] | None, typer.Option("--events", "-e", help="new event files (repeatable)")] = None,
    store: Annotated[str | None, typer.Option(
        help="read new events from the service's store, read-only while it keeps running: its SQLite file "
             "(or sqlite:///path) or its Redis URL (redis://host:port/db)")] = None,
    from_scratch: Annotated[bool, typer.Option(help="train a fresh model instead of warm-starting")] = False,
    warm_epochs: Annotated[int, typer.Option(
        min=1, help="warm start: at most this many epochs (patience 1) over the windows with events the current "
                    "model never trained on")] = 2,
    window_days: Annotated[float | None, typer.Option(help="train on the last N days of events only")] = None,
    valid_days: Annotated[float, typer.Option(help="length of the selection and of the gate slice (days)")] = 1.0,
    promote: Annotated[bool, typer.Option(help="make the candidate current when it passes the gate")] = False,
    metric: Annotated[str | None, typer.Option(help="gate metric (default: the run's train.monitor)")] = None,
    margin: Annotated[float, typer.Option(help="largest loss the gate's 95% CI may leave possible")] = 0.01,
    min_examples: Annotated[int, typer.Option(help="fewer gate examples: rejected")] = 20,
    gate_fallback: Annotated[bool, typer.Option(
        "--gate-fallback/--no-gate-fallback", help="fewer than --min-examples target-behaviour (purchase) examples: "
        "gate on the next item of any behaviour instead of rejecting")] = True,
    baseline_gate: Annotated[bool, typer.Option(
        "--baseline-gate/--no-baseline-gate", help="the candidate must also match the best shop baseline")] = True,
    every: Annotated[str | None, typer.Option(help="repeat every interval (30m, 6h, 1d) until interrupted")] = None,
    fmt: Annotated[str, typer.Option("--format", help="input format (as `prepare`)")] = "auto",
    delimiter: Annotated[str | None, typer.Option(help="field delimiter (as `prepare`)")] = None,
    header: Annotated[bool | None, typer.Option("--header/--no-header")] = None,
    columns: Annotated[str | None, typer.Option(help="headerless files: column names (as `prepare`)")] = None,
    map_items: Annotated[list[str] | None, typer.Option("--map", help="canonical=source column")] = None,
    mapping_file: Annotated[Path | None, typer.Option(help="JSON/TOML file with canonical = source")] = None,
    time_format: Annotated[str | None, typer.Option(help="as `prepare`")] = None,
    forget_ledger: Annotated[Path | None, typer.Option(
        help="deletion ledger: forgotten users' events never come back into training (with --store, default: "
             "the service's default, shopformer_forget_ledger.jsonl beside the SQLite file, or in the working "
             "directory for Redis)")] = None,
    overrides: SetOpt = None,
    track: Annotated[list[str] | None, typer.Option(
        help="log params, per-epoch metrics and artifacts to tensorboard and/or mlflow (repeatable; default: "
             "env SHOPFORMER_TRACK; needs the [track] extra)")] = None,
    track_dir: Annotated[Path | None, typer.Option(
        help="tracking folder: tensorboard/ and mlruns/ inside (default: env SHOPFORMER_TRACK_DIR or ./tracking)")]
    = None,
) -> None:
    """Retrain the current version on new events; gate against it and the baselines; optionally promote."""
    from shopformer.data.ingest import IngestOptions
    from shopformer.pipelines.continuous import EXIT_BAD_INPUT, GateConfig, RetrainOptions
    from shopformer.training.tracking import TrackingConfig

    try:
        tracking = TrackingConfig.from_env()
        if track or track_dir:
            tracking = TrackingConfig(tuple(track or tracking.backends), track_dir or tracking.root)
        if bool(events) == (store is not None):
            raise ValueError("pass new events with --events FILE... or --store STATE.db|redis://... (one of them)")
        if store is not None and forget_ledger is None:
            forget_ledger = service_ledger(store)
        interval = parse_every(every) if every else None
        ingest = IngestOptions(
            format=fmt,  # type: ignore[arg-type]
            delimiter=_DELIMITER_NAMES.get(delimiter, delimiter) if delimiter else None,
            has_header=header, columns=_split_list(columns), mapping=_mapping(map_items or [], mapping_file),
            time_format=time_format,
        ) if store is None else IngestOptions(format="csv", has_header=True)
        gate = GateConfig(metric=metric, margin=margin, min_examples=min_examples, baselines=baseline_gate,
                          fallback=gate_fallback)
        opts = RetrainOptions(events=tuple(events or ()), ingest=ingest, from_scratch=from_scratch,
                              warm_epochs=warm_epochs, window_days=window_days, valid_days=valid_days,
                              promote=promote, gate=gate,
                              overrides=tuple(overrides or ()), forget_ledger=forget_ledger, progress=True,
                              tracking=tracking)
    except USER_ERRORS as err:
        fail(str(err))
    code = EXIT_BAD_INPUT
    while True:
        code = _once(registry, opts, store)
        if interval is None:
            raise typer.Exit(code)
        console.print(f"next retrain in {every} (Ctrl-C to stop)")
        time.sleep(interval)


def _once(registry: Path, opts: RetrainOptions, store: str | None) -> int:
    """One retrain; returns its exit code (and prints what happened)."""
    from dataclasses import replace

    from shopformer.artifacts import ArtifactError
    from shopformer.data.ingest import DataValidationError
    from shopformer.data.store_events import export_store_events, redacted
    from shopformer.pipelines.continuous import EXIT_BAD_INPUT, EXIT_LOCKED, retrain
    from shopformer.pipelines.registry import RegistryLocked

    with tempfile.TemporaryDirectory(prefix="shopformer-retrain-") as tmp:
        try:
            if store is not None:
                csv = Path(tmp) / "store_events.csv"
                n = export_store_events(store, csv)
                console.print(f"read {n:,} events from {redacted(store)} (read-only; deletion ledger "
                              f"{opts.forget_ledger})", highlight=False)
                opts = replace(opts, events=(csv,))
            outcome = retrain(registry, opts)
        except RegistryLocked as err:
            console.print(f"[yellow]locked:[/yellow] {err}", highlight=False)
            return EXIT_LOCKED
        except (ArtifactError, DataValidationError, *USER_ERRORS) as err:  # type: ignore[misc]
            console.print(f"[red]error:[/red] {err}", highlight=False)
            return EXIT_BAD_INPUT
    m = outcome.manifest
    g = m.get("gate", {})
    colour = {"promoted": "green", "candidate": "cyan", "rejected": "red"}[outcome.status]
    console.print(f"[{colour}]{outcome.version} {outcome.status}[/{colour}]: {outcome.reason}", highlight=False)
    for name, row in g.get("systems", {}).items():
        console.print(f"  {name:28s} {g['metric']} {row.get(g['metric'], float('nan')):.4f}  (n={row.get('n')})")
    d = m.get("drift", {})
    console.print(f"  drift: unknown items {d.get('unknown_item_share', 0):.1%} of new events, behaviour PSI "
                  f"{d.get('behaviour_psi', float('nan')):.3f}, JS {d.get('behaviour_js', float('nan')):.3f}; top-1 "
                  f"score PSI vs current {d.get('score_psi') or float('nan'):.3f}; "
                  f"new items {m.get('growth', {}).get('added', {}).get('items', 0)} "
                  f"(start vectors: {m.get('new_item_init', {})})", highlight=False)
    return outcome.exit_code
