"""Read raw event logs into the canonical schema and validate every row.

The work is split over a few modules; this one validates and re-exports their public names:

* ``options.py`` — :class:`IngestOptions`, the error types and the column mapping;
* ``readers.py`` — the per-format readers (CSV/TSV, JSON lines, Parquet, ``sequences``) that produce
  :class:`RawEvents` (``raw.py``: canonical columns as raw strings plus bookkeeping columns);
* ``timestamps.py`` — timestamp detection and parsing;
* ``decoding.py`` / ``parquet_reader.py`` — text encodings, typed Parquet columns;
* here — per-row validation (:func:`validate_events`, the rejects table) and :func:`ingest`.

Valid timestamps lie in [1990-01-01, now + 1 day]. With ``IngestOptions.pseudonym_key`` every user id
is replaced by its keyed pseudonym (``pseudonym.py``) right after validation: the events carry only
pseudonyms, and the rejects table drops the raw record and pseudonymises the user id wherever it
appears as a value, so no file written from an :class:`IngestResult` holds a raw user id.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from shopformer.data import schema as S
from shopformer.data.options import (
    FORMATS,
    DataValidationError,
    Format,
    IngestOptions,
    MappingError,
    load_mapping_file,
    parse_behaviour_names,
    parse_mapping,
)
from shopformer.data.pseudonym import pseudonymise, pseudonymise_expr
from shopformer.data.raw import BLANK, ERR, FILE, ORDER, POS, RAW, RECORD, TIME_US, RawEvents, SourceInfo
from shopformer.data.readers import detect_format, expand_inputs, read_events, sniff_delimiter, split_fields
from shopformer.data.timestamps import _NUM_RE, parse_time_value, timestamp_micros, timestamp_seconds

__all__ = [
    # options.py
    "FORMATS",
    "DataValidationError",
    "Format",
    "IngestOptions",
    "MappingError",
    "load_mapping_file",
    "parse_behaviour_names",
    "parse_mapping",
    # raw.py
    "BLANK",
    "ERR",
    "FILE",
    "ORDER",
    "POS",
    "RAW",
    "RECORD",
    "TIME_US",
    "RawEvents",
    "SourceInfo",
    # readers.py
    "detect_format",
    "expand_inputs",
    "read_events",
    "sniff_delimiter",
    "split_fields",
    # timestamps.py
    "parse_time_value",
    "timestamp_micros",
    "timestamp_seconds",
    # this module
    "FUTURE_SLACK",
    "MAX_LISTED_ERRORS",
    "MIN_TIME",
    "REJECTS_SCHEMA",
    "IngestResult",
    "format_errors",
    "ingest",
    "summarise_errors",
    "validate_events",
]

MIN_TIME = 631_152_000  # 1990-01-01T00:00:00Z
FUTURE_SLACK = 86_400  # timestamps up to one day past "now" are accepted (clock skew)
MAX_LISTED_ERRORS = 20


@dataclass(frozen=True)
class IngestResult:
    """Valid canonical events (typed), the rejected rows' errors and the counts."""

    events: pl.DataFrame
    rejects: pl.DataFrame
    sources: tuple[SourceInfo, ...]
    has_time: bool
    has_order: bool
    counts: dict[str, int]


# -------------------------------------------------------------------------------------- validation


MAX_ID_CHARS = 256  # user and item ids: the HTTP API's bound too (serving/stored.py)


def _text(name: str) -> pl.Expr:
    """A raw string column, stripped, with empty strings as null."""
    v = pl.col(name).str.strip_chars()
    return pl.when(v != "").then(v)


def _quoted(v: pl.Expr) -> pl.Expr:
    return pl.lit("'") + v.str.slice(0, 60) + pl.lit("'")


_MICROS = "_micros"  # the parsed timestamp, computed once per batch


def _timestamp_checks(opts: IngestOptions) -> tuple[pl.Expr, pl.Expr]:
    """(error reason, failed) expressions for the timestamp column, on the parsed ``_MICROS`` column.

    ``failed`` is cheap (no strings built): validation builds reasons only for the rows that failed.
    """
    now = opts.now if opts.now is not None else int(time.time())
    t = _text(S.TIME)
    micros = pl.col(_MICROS)
    secs = micros // 1_000_000
    is_num = t.str.contains(_NUM_RE)
    reason = (
        pl.when(t.is_null())
        .then(pl.lit("missing timestamp"))
        .when(is_num & (t.cast(pl.Float64, strict=False) < 0))
        .then(pl.lit("negative timestamp ") + _quoted(t))
        .when(micros.is_null() & is_num)
        .then(pl.lit("timestamp ") + _quoted(t) + pl.lit(" is neither a YYYYMMDD date nor a Unix time in range"))
        .when(micros.is_null())
        .then(pl.lit("unparsable timestamp ") + _quoted(t))
        .when(secs < MIN_TIME)
        .then(pl.lit("timestamp ") + _quoted(t) + pl.lit(" is before 1990-01-01"))
        .when(secs > now + FUTURE_SLACK)
        .then(pl.lit("timestamp ") + _quoted(t) + pl.lit(" is more than 1 day in the future"))
    )
    failed = micros.is_null() | (secs < MIN_TIME) | (secs > now + FUTURE_SLACK)
    return reason, failed


def _behaviour_checks(
    opts: IngestOptions, present: frozenset[str]
) -> tuple[pl.Expr, pl.Expr | None, pl.Expr | None]:
    if S.BEHAVIOUR not in present:
        if opts.behaviours is not None and S.DEFAULT_BEHAVIOUR not in opts.behaviours:
            raise MappingError("--behaviours was given but the data has no behaviour column")
        return pl.lit(S.DEFAULT_BEHAVIOUR, pl.String), None, None
    e = _text(S.BEHAVIOUR)
    if opts.behaviour_names:
        e = e.replace(dict(opts.behaviour_names))
    reason: Any = pl.when(e.is_null()).then(pl.lit("missing behaviour"))  # polars when/then types are private
    failed = e.is_null()
    if opts.behaviours is not None:
        allowed = ", ".join(opts.behaviours)
        reason = reason.when(~e.is_in(list(opts.behaviours))).then(
            pl.lit("unknown behaviour ") + _quoted(e) + pl.lit(f" (allowed: {allowed})")
        )
        failed = failed | ~e.is_in(list(opts.behaviours)).fill_null(True)
    return e, reason, failed


def _number_check(name: str, label: str) -> tuple[pl.Expr, pl.Expr, pl.Expr]:
    v = _text(name)
    num = v.cast(pl.Float64, strict=False)
    ok = v.str.contains(_NUM_RE) & num.is_finite()
    failed = (v.is_not_null() & ~ok).fill_null(False)
    return pl.when(ok).then(num), pl.when(failed).then(pl.lit(f"non-numeric {label} ") + _quoted(v)), failed


@dataclass(frozen=True)
class _Checks:
    values: dict[str, pl.Expr]  # typed value per kept column
    reasons: dict[str, pl.Expr]  # error reason per column (null: fine); built only on failed rows
    failed: list[pl.Expr]  # cheap: does a row fail some column's check?


def _checks(raw: RawEvents, opts: IngestOptions) -> _Checks:
    """Typed value and error-reason expressions per canonical column."""
    values: dict[str, pl.Expr] = {c: _text(c) for c in S.CANONICAL}
    reasons: dict[str, pl.Expr] = {c: pl.when(_text(c).is_null()).then(pl.lit(f"missing {c}")) for c in S.REQUIRED}
    failed = [_text(c).is_null() for c in S.REQUIRED]
    for c in (S.USER, S.ITEM):  # issue 12: the service's id bound: a model never holds an id it cannot be asked for
        long = (_text(c).str.len_chars() > MAX_ID_CHARS).fill_null(False)
        reasons[c] = pl.coalesce(reasons[c], pl.when(long).then(
            pl.format(f"{c} longer than {MAX_ID_CHARS} characters ({{}})", _text(c).str.len_chars())))
        failed.append(long)
    if raw.has_time:
        reasons[S.TIME], time_failed = _timestamp_checks(opts)
        failed.append(time_failed)
        values[TIME_US] = pl.col(_MICROS)
        values[S.TIME] = pl.col(_MICROS) // 1_000_000
    else:
        values[S.TIME] = pl.lit(None, pl.Int64)
    values[S.BEHAVIOUR], behaviour_reason, behaviour_failed = _behaviour_checks(opts, raw.present)
    if behaviour_reason is not None and behaviour_failed is not None:
        reasons[S.BEHAVIOUR] = behaviour_reason
        failed.append(behaviour_failed)
    values[S.PRICE], reasons[S.PRICE], price_failed = _number_check(S.PRICE, "price")
    failed.append(price_failed)
    if raw.has_order:
        values[ORDER], reasons[ORDER], order_failed = _number_check(ORDER, "order_by value")
        failed.append(order_failed)
    for c in (*S.CANONICAL, ORDER):  # errors the reader found (a float id 2.5 in Parquet, undecodable bytes)
        if ERR + c in raw.frame.columns:
            own = reasons.get(c)
            reasons[c] = pl.col(ERR + c) if own is None else pl.coalesce(pl.col(ERR + c), own)
            failed.append(pl.col(ERR + c).is_not_null())
    failed.append(pl.col(ERR + RECORD).is_not_null())
    return _Checks(values, reasons, failed)


def _parsed_times(raw: RawEvents, frame: pl.DataFrame, opts: IngestOptions) -> pl.DataFrame:
    """``frame`` with the ``_MICROS`` column (the date-string parsers only when some value needs them)."""
    if not raw.has_time:
        return frame
    t = frame[S.TIME].str.strip_chars()
    numeric_only = bool((t.str.contains(_NUM_RE) | (t == "")).fill_null(True).all())
    micros = timestamp_micros(_text(S.TIME), opts.time_format, numeric_only=numeric_only)
    return frame.with_columns(micros.alias(_MICROS))


def validate_events(raw: RawEvents, options: IngestOptions | None = None) -> IngestResult:
    """Type the canonical columns and split rows into valid events and per-row errors.

    A row with a record-level error (wrong field count, bad JSON, bytes not valid in the encoding)
    gets only that error. With ``options.strict`` any error raises :class:`DataValidationError` whose
    one-line message names the first (``file:line: column: reason``) and counts the others; all of
    them are in its ``errors`` table.
    """
    opts = options or IngestOptions()
    checks = _checks(raw, opts)
    record = pl.col(ERR + RECORD)
    err_cols = [record.alias(ERR + RECORD)] + [
        pl.when(record.is_null()).then(r).alias(ERR + c) for c, r in checks.reasons.items()
    ]
    frame = _parsed_times(raw, raw.frame.filter(~pl.col(BLANK)), opts)
    flagged = frame.with_columns(pl.any_horizontal(checks.failed).fill_null(True).alias(_BAD))
    err_names = [ERR + RECORD] + [ERR + c for c in checks.reasons]
    checked = flagged.filter(pl.col(_BAD)).with_columns(err_cols)
    rejects = _error_table(checked, err_names, raw.sources, opts.pseudonym_key)
    if opts.strict and rejects.height:
        raise DataValidationError(summarise_errors(rejects), rejects)
    keep = [*S.CANONICAL, *([TIME_US] if raw.has_time else []), *([ORDER] if raw.has_order else [])]
    typed = flagged.filter(~pl.col(_BAD)).select(FILE, S.ROW, POS, *[checks.values[c].alias(c) for c in keep])
    if opts.pseudonym_key is not None:
        typed = typed.with_columns(pseudonymise_expr(pl.col(S.USER), opts.pseudonym_key))
    events = typed.cast({k: v for k, v in S.EVENTS_SCHEMA.items() if k in S.CANONICAL})
    counts = {
        "rows_read": frame.height,
        "blank_lines": raw.frame.height - frame.height,
        "rows_rejected": frame.height - events.height,
        "errors": rejects.height,
    }
    return IngestResult(events, rejects, raw.sources, raw.has_time, raw.has_order, counts)


_BAD = "_bad"


REJECTS_SCHEMA: dict[str, pl.DataType] = {
    "file": pl.String(),
    "line": pl.Int64(),
    "column": pl.String(),
    "reason": pl.String(),
    "value": pl.String(),
    "raw": pl.String(),
}


def _error_table(
    bad: pl.DataFrame, err_names: list[str], sources: Sequence[SourceInfo], pseudonym_key: bytes | None = None
) -> pl.DataFrame:
    """One row per error: file, 1-based line, column, reason, the column's raw value and the raw record
    (with a pseudonym key: no raw record, and user ids replaced by pseudonyms)."""
    if bad.height == 0:
        return pl.DataFrame(schema=REJECTS_SCHEMA)
    rank = {name: i for i, name in enumerate(err_names)}
    long = bad.unpivot(
        on=err_names,
        index=[FILE, S.ROW, POS, RAW, *S.CANONICAL, *([ORDER] if ORDER in bad.columns else [])],
        variable_name="column",
        value_name="reason",
    ).drop_nulls("reason")
    long = long.with_columns(pl.col("column").replace_strict(rank, return_dtype=pl.Int32).alias("_rank"))
    long = long.with_columns(pl.col("column").str.strip_prefix(ERR))
    value = pl.lit(None, pl.String)
    for c in [*S.CANONICAL, *([ORDER] if ORDER in bad.columns else [])]:
        value = pl.when(pl.col("column") == c).then(pl.col(c)).otherwise(value)
    paths = {i: s.path for i, s in enumerate(sources)}
    table = long.sort(FILE, S.ROW, POS, "_rank").select(
        pl.col(FILE).replace_strict(paths, return_dtype=pl.String).alias("file"),
        pl.col(S.ROW).alias("line"),
        pl.col("column").replace(ORDER, "order_by"),
        "reason",
        value.alias("value"),
        pl.col(RAW).alias("raw"),
        pl.col(S.USER).str.strip_chars().alias("_user"),
    )
    return (table if pseudonym_key is None else _pseudonymise_rejects(table, pseudonym_key)).drop("_user")


def _pseudonymise_rejects(table: pl.DataFrame, key: bytes) -> pl.DataFrame:
    """No raw record; the row's user id, wherever it is a value (or quoted in a reason), as its pseudonym."""
    is_user = pl.col("value").str.strip_chars() == pl.col("_user")
    table = table.with_columns(
        pl.lit(None, pl.String).alias("raw"),
        pl.when(is_user.fill_null(False)).then(pseudonymise_expr(pl.col("value"), key)).otherwise("value"),
    )
    quoted = table.select("reason", "_user").rows()
    reasons = [
        r.replace(f"'{u[:60]}'", f"'{pseudonymise(u, key)}'") if u and r and f"'{u[:60]}'" in r else r
        for r, u in quoted
    ]
    return table.with_columns(pl.Series("reason", reasons, dtype=pl.String))


def format_errors(rejects: pl.DataFrame, limit: int = MAX_LISTED_ERRORS) -> str:
    """``file:line: column: reason`` for the first ``limit`` errors, with a total."""
    n_rows = rejects.select(pl.struct("file", "line").n_unique()).item()
    head = [
        f"{f}:{line}: {col}: {reason}"
        for f, line, col, reason in rejects.head(limit).select("file", "line", "column", "reason").iter_rows()
    ]
    more = rejects.height - len(head)
    lines = [f"{rejects.height} error(s) in {n_rows} row(s):", *head]
    if more > 0:
        lines.append(f"... and {more} more")
    return "\n".join(lines)


def summarise_errors(rejects: pl.DataFrame | pl.LazyFrame) -> str:
    """One line: the first error as ``file:line: column: reason``, and how many more there are.

    A lazy table (rejects spilled to disk by ``prepare``) is read only as far as needed."""
    table = rejects.lazy()
    head = table.head(1).collect()
    if head.height == 0:
        return "no errors"
    f, line, col, reason = head.row(0)[:4]
    n, n_rows = table.select(pl.len(), pl.struct("file", "line").n_unique()).collect().row(0)
    more = f" (+{n - 1} more error(s); {n_rows} bad row(s) in all)" if n > 1 else ""
    return f"{f}:{line}: {col}: {reason}{more}"


def ingest(paths: Sequence[str | Path], options: IngestOptions | None = None) -> IngestResult:
    """Read and validate: the canonical, typed events plus the rejects table."""
    opts = options or IngestOptions()
    return validate_events(read_events(paths, opts), opts)
