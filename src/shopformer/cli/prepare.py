"""``shopformer prepare``: raw event logs -> a validated, encoded dataset directory.

Registered in ``cli.py`` as ``app.command("prepare")(prepare_command)``. Examples for every bundled
data set are in ``data/demo/README.md``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from shopformer.cli.common import USER_ERRORS, fail
from shopformer.data.ingest import (
    FORMATS,
    DataValidationError,
    IngestOptions,
    load_mapping_file,
    parse_behaviour_names,
    parse_mapping,
)
from shopformer.data.prepare import CleanOptions, PrepareResult, Resources, prepare
from shopformer.data.pseudonym import PSEUDONYM_KEY_ENV, load_pseudonym_key
from shopformer.data.spill import DEFAULT_MEMORY_LIMIT, parse_memory

ENGINES = ("polars", "spark")
PROGRESS_BYTES = 100 << 20

_DELIMITER_NAMES = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";", "pipe": "|", "space": " "}


def _split_list(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _mapping(map_items: list[str], mapping_file: Path | None) -> dict[str, str | int]:
    """The mapping file's entries, overridden by ``--map`` options."""
    mapping = load_mapping_file(mapping_file) if mapping_file else {}
    mapping.update(parse_mapping(map_items))
    return mapping


def _order_by(text: str | None) -> str | int | None:
    if text is None:
        return None
    return int(text) if text.isdigit() else text


def _summary(stats: dict[str, object], out: Path) -> Table:
    table = Table(title=f"prepared {out}", show_header=False)
    keys = (
        "rows_read", "rows_rejected", "errors", "blank_lines", "duplicates_dropped", "outside_time_window",
        "kcore_dropped", "events", "users", "items", "categories", "users_with_one_event", "has_time",
        "time_min_utc", "time_max_utc", "behaviours",
    )  # fmt: skip
    for key in keys:
        table.add_row(key, str(stats.get(key)))
    # which source column became which canonical one, and which were left out: a header the
    # aliases (data/schema.py) do not know is dropped, and --map is how to keep it
    for src in stats.get("sources", []):  # type: ignore[attr-defined]
        if not src.get("columns"):  # sequence files: no named columns
            continue
        used = {v: k for k, v in src.get("mapping", {}).items()}
        table.add_row(f"columns of {src['name']}", ", ".join(_column(c, used.get(c)) for c in src["columns"]))
    return table


def _column(name: str, canonical: str | None) -> str:
    """How a source column was read: as is, renamed to its canonical name, or not at all."""
    if canonical is None:
        return f"{name} (not used; --map)"
    return name if canonical == name else f"{name} -> {canonical}"


def _input_bytes(inputs: list[Path]) -> int:
    files = [f for p in inputs for f in (p.iterdir() if p.is_dir() else [p])]
    return sum(f.stat().st_size for f in files if f.is_file())


def _memory(text: str) -> int:
    try:
        return parse_memory(text)
    except ValueError as err:
        raise DataValidationError(f"--memory-limit: {err}") from None


def _run(engine: str, inputs: list[Path], out: Path, ingest_options: IngestOptions, clean_options: CleanOptions,
         overwrite: bool, resources: Resources) -> PrepareResult:
    if engine == "polars":
        return prepare(inputs, out, ingest_options, clean_options, overwrite=overwrite, resources=resources)
    if engine == "spark":
        from shopformer.data.prepare_spark import prepare_spark

        return prepare_spark(inputs, out, ingest_options, clean_options, overwrite=overwrite, resources=resources)
    raise DataValidationError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")


def prepare_command(
    inputs: Annotated[list[Path], typer.Argument(help="Raw event files (CSV/TSV/Parquet/JSONL/sequences).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Dataset directory to write.")],
    fmt: Annotated[str, typer.Option("--format", help=f"One of {', '.join(FORMATS)}.")] = "auto",
    delimiter: Annotated[
        str | None, typer.Option(help="Field delimiter (default: by extension / sniffed); 'tab' for TSV.")
    ] = None,
    header: Annotated[
        bool | None,
        typer.Option("--header/--no-header", help="Whether line 1 is a header (default: guessed)."),
    ] = None,
    columns: Annotated[
        str | None, typer.Option(help="Names of a headerless file's columns, e.g. user_id,item_id,timestamp.")
    ] = None,
    map_items: Annotated[
        list[str] | None,
        typer.Option("--map", help="canonical=source column (name or 0-based index); repeatable."),
    ] = None,
    mapping_file: Annotated[Path | None, typer.Option(help="JSON/TOML file with canonical = source.")] = None,
    order_by: Annotated[
        str | None, typer.Option(help="Numeric column ordering events with equal timestamps (e.g. timeframe).")
    ] = None,
    time_format: Annotated[
        str | None, typer.Option(help="Force s/ms/us/ns or a strftime format (default: detected per value).")
    ] = None,
    behaviours: Annotated[str | None, typer.Option(
        "--behaviours", "--event-types",
        help="Fixed behaviour vocabulary, e.g. view,cart,buy; others are rejected. (--event-types: old name)")
    ] = None,
    behaviour_name: Annotated[list[str] | None, typer.Option(
        "--behaviour-name", "--event-name",
        help="Rename a behaviour code, e.g. 4=buy; repeatable. (--event-name: old name)")
    ] = None,
    strict: Annotated[bool, typer.Option(help="Fail on the first bad rows instead of quarantining them.")] = False,
    dedup: Annotated[bool, typer.Option("--dedup/--no-dedup", help="Drop exact duplicate events.")] = True,
    min_user_events: Annotated[int, typer.Option(min=0, help="k-core: minimum events per user.")] = 0,
    forget_ledger: Annotated[Path | None, typer.Option(
        help="Deletion ledger (`shopformer forget`): drop forgotten users' events.")] = None,
    min_item_events: Annotated[int, typer.Option(min=0, help="k-core: minimum events per item.")] = 0,
    start: Annotated[str | None, typer.Option(help="Keep events at or after this time.")] = None,
    end: Annotated[str | None, typer.Option(help="Keep events before this time.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing dataset directory.")] = False,
    encoding: Annotated[str, typer.Option(
        help="Text encoding of CSV/TSV/JSONL/sequence files, e.g. gbk, latin-1; undecodable lines are "
        "quarantined with their byte offset.")] = "utf-8",
    pseudonymise_users: Annotated[bool, typer.Option(
        "--pseudonymise-users", help="Replace user ids by keyed HMAC-SHA256 pseudonyms (docs/data-privacy.md).")
    ] = False,
    pseudonym_key_file: Annotated[Path | None, typer.Option(
        help=f"File holding the pseudonym key (default: env {PSEUDONYM_KEY_ENV}); never written anywhere.")
    ] = None,
    memory_limit: Annotated[str, typer.Option(
        help="Memory to work in, e.g. 4GB or 512MB: peak memory follows it, not the input size "
        "(docs/scale-data.md).")] = f"{DEFAULT_MEMORY_LIMIT >> 20}MB",
    engine: Annotated[str, typer.Option(
        help="polars (this machine) or spark (PySpark, the `spark` extra; local or spark-submit).")] = "polars",
    progress: Annotated[bool | None, typer.Option(
        "--progress/--quiet", help="One line per stage on stderr, with rows/s (default: on for a terminal "
        f"or inputs over {PROGRESS_BYTES >> 20} MB).")] = None,
) -> None:
    """Validate, clean and encode raw event logs into a dataset directory.

    A directory given as input stands for the files in it with a known extension (sorted by name;
    hidden files, names starting with '_' and sub-directories are skipped)."""
    try:
        if pseudonym_key_file is not None and not pseudonymise_users:
            raise DataValidationError("--pseudonym-key-file needs --pseudonymise-users")
        key = load_pseudonym_key(pseudonym_key_file) if pseudonymise_users else None
        if fmt not in FORMATS:
            raise DataValidationError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        ingest_options = IngestOptions(
            format=fmt,  # type: ignore[arg-type]
            delimiter=_DELIMITER_NAMES.get(delimiter, delimiter) if delimiter else None,
            has_header=header,
            columns=_split_list(columns),
            mapping=_mapping(map_items or [], mapping_file),
            order_by=_order_by(order_by),
            time_format=time_format,
            behaviours=_split_list(behaviours),
            behaviour_names=parse_behaviour_names(behaviour_name or []),
            strict=strict,
            encoding=encoding,
            pseudonym_key=key,
        )
        clean_options = CleanOptions(dedup, min_user_events, min_item_events, start, end,
                                     str(forget_ledger) if forget_ledger else None)
        show = progress if progress is not None else sys.stderr.isatty() or _input_bytes(inputs) > PROGRESS_BYTES
        resources = Resources(memory_limit=_memory(memory_limit), progress=show)
        result = _run(engine, inputs, out, ingest_options, clean_options, overwrite, resources)
    except USER_ERRORS as err:
        fail(err, prefix="prepare failed: ")
    Console().print(_summary(result.stats, result.path))
