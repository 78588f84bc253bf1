"""Read raw event logs into the canonical schema and validate every row.

Readers (all built on Polars, nothing loops over rows in Python):

* delimited text (CSV/TSV/...; with or without header) — read with ``pl.scan_lines`` so that every
  physical line keeps its 1-based number (the header counts, so an error on line N is what
  ``sed -n Np FILE`` shows) and is split in Polars. Quoted fields (``"a,b"``, ``""`` escapes) are
  honoured; a quoted field spanning several lines is *not* supported and is reported as a wrong
  field count. Blank lines are skipped and counted.
* JSON lines — one object per line, read the same way; a line that is not a JSON object is rejected.
* Parquet — ``row`` is the 1-based row number.
* ``sequences`` — one line per user, ``user item1 item2 ...`` in chronological order (the S3-Rec
  ``Beauty.txt`` layout). There are no timestamps (``has_time=False``); the within-line position keeps
  the order.

A column *mapping* ``{canonical name: source column}`` says where each canonical column comes from;
the source column is a header/key name or a 0-based index. Columns whose source name already is a
canonical name are mapped automatically.

Timestamps (``time_format=None``, the default) are detected per value:

* integers/decimals by magnitude: 8 digits -> ``YYYYMMDD`` date (Unix seconds of that size would be
  1970-1973 anyway); < 1e11 -> seconds; < 1e14 -> milliseconds; < 1e17 -> microseconds; else
  nanoseconds. Fractions are floored to whole seconds.
* strings: ISO-8601 dates and date-times (``T`` or space separated, optional fraction, optional
  ``Z``/``UTC``/``GMT`` suffix or ``+08:00`` offset) and ``YYYY-MM-DD HH`` (hour resolution).
  Values without an offset are read as UTC.

``time_format`` forces one rule: ``s``/``ms``/``us``/``ns`` for numbers, or a strftime format.
Valid timestamps lie in [1990-01-01, now + 1 day].
"""

from __future__ import annotations

import hashlib
import json
import time
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import polars as pl

from shopformer.data import schema as S

Format = Literal["auto", "csv", "tsv", "parquet", "jsonl", "sequences"]
FORMATS: tuple[str, ...] = ("auto", "csv", "tsv", "parquet", "jsonl", "sequences")

MIN_TIME = 631_152_000  # 1990-01-01T00:00:00Z
FUTURE_SLACK = 86_400  # timestamps up to one day past "now" are accepted (clock skew)
MAX_LISTED_ERRORS = 20

# Internal bookkeeping columns of the frames passed between reader, validator and `prepare`.
FILE = "_file"  # index of the source file in the input list
POS = "_pos"  # position within a line (sequence format), 0 otherwise
RAW = "_raw"  # the raw record, kept for rejects
BLANK = "_blank"
ORDER = "_order_by"  # optional numeric tie-break within equal (user, timestamp)
TIME_US = "_time_us"  # microseconds: sorts and de-duplicates below the written whole seconds
RECORD = "<record>"  # pseudo column of errors about a whole line (field count, bad JSON)
ERR = "_err_"

_EXT_FORMAT = {
    ".csv": "csv",
    ".txt": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
}
_SNIFF_DELIMITERS = ("\t", ";", "|", ",")
_INT_RE = r"^[+-]?\d+$"
_NUM_RE = r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$"
_NAIVE_FORMATS = ("%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%d %H:%M", "%Y-%m-%d")
_AWARE_FORMATS = ("%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%d %H:%M%#z")
_NUMERIC_UNITS = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}


class DataValidationError(ValueError):
    """Input that cannot become a dataset. ``errors`` holds the per-row errors when there are any."""

    def __init__(self, message: str, errors: pl.DataFrame | None = None) -> None:
        super().__init__(message)
        self.errors = errors


class MappingError(DataValidationError):
    """A column mapping that does not fit the data (unknown key, missing column, ...)."""


@dataclass(frozen=True)
class IngestOptions:
    """How to read and validate raw files. All inputs of one ``prepare`` share these options."""

    format: Format = "auto"
    delimiter: str | None = None  # None: by extension, else sniffed from the first line
    has_header: bool | None = None  # None: False when `columns` or an index mapping is given
    columns: tuple[str, ...] | None = None  # names of the file's columns (headerless files)
    mapping: Mapping[str, str | int] = field(default_factory=dict)  # canonical -> source column
    order_by: str | int | None = None  # numeric source column breaking ties within a timestamp
    time_format: str | None = None
    event_types: tuple[str, ...] | None = None  # fixed behaviour vocabulary; None = open
    event_names: Mapping[str, str] = field(default_factory=dict)  # rename raw codes, e.g. 4 -> buy
    strict: bool = False
    now: int | None = None  # Unix seconds; None = the current time (upper bound of valid times)


@dataclass(frozen=True)
class SourceInfo:
    """Where one input file came from and how it was read (recorded in stats.json)."""

    path: str
    format: str
    delimiter: str | None
    has_header: bool
    columns: tuple[str, ...]
    mapping: dict[str, str]
    sha256: str
    bytes: int

    def as_dict(self) -> dict[str, object]:
        return {
            "path": self.path,
            "name": Path(self.path).name,
            "format": self.format,
            "delimiter": self.delimiter,
            "has_header": self.has_header,
            "columns": list(self.columns),
            "mapping": self.mapping,
            "sha256": self.sha256,
            "bytes": self.bytes,
        }


@dataclass(frozen=True)
class RawEvents:
    """Canonical columns as raw strings, one row per event, before validation."""

    frame: pl.DataFrame
    sources: tuple[SourceInfo, ...]
    present: frozenset[str]  # canonical columns that come from the data
    has_order: bool

    @property
    def has_time(self) -> bool:
        return S.TIME in self.present


@dataclass(frozen=True)
class IngestResult:
    """Valid canonical events (typed), the rejected rows' errors and the counts."""

    events: pl.DataFrame
    rejects: pl.DataFrame
    sources: tuple[SourceInfo, ...]
    has_time: bool
    has_order: bool
    counts: dict[str, int]


# ----------------------------------------------------------------------------------------- mapping


def parse_mapping(items: Sequence[str]) -> dict[str, str | int]:
    """Parse CLI ``canonical=source`` pairs; an all-digit source is a 0-based column index."""
    mapping: dict[str, str | int] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise MappingError(f"mapping {item!r} must look like canonical=source, e.g. timestamp=ts")
        mapping[key] = int(value) if value.isdigit() else value
    return mapping


def load_mapping_file(path: str | Path) -> dict[str, str | int]:
    """Read a flat ``{canonical: source}`` mapping from a JSON or TOML file."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text()) if p.suffix == ".toml" else json.loads(p.read_text())
    except (OSError, tomllib.TOMLDecodeError, json.JSONDecodeError) as err:
        raise MappingError(f"{p}: cannot read mapping file: {err}") from None
    if not isinstance(data, dict) or not all(isinstance(v, str | int) for v in data.values()):
        raise MappingError(f"{p}: a mapping file must hold a flat table of canonical = source column")
    return {str(k): v for k, v in data.items()}


def parse_event_names(items: Sequence[str]) -> dict[str, str]:
    """Parse ``raw=name`` pairs (``4=buy``) into a renaming table for behaviour codes."""
    pairs = [item.partition("=") for item in items]
    bad = [item for item, (k, sep, v) in zip(items, pairs, strict=True) if not (sep and k and v)]
    if bad:
        raise MappingError(f"event names {bad} must look like raw=name, e.g. 4=buy")
    return {k.strip(): v.strip() for k, _, v in pairs}


def _check_mapping_keys(mapping: Mapping[str, str | int]) -> None:
    unknown = sorted(set(mapping) - set(S.CANONICAL))
    if unknown:
        raise MappingError(f"unknown canonical column(s) {unknown} in mapping; allowed: {list(S.CANONICAL)}")


def _resolve(
    path: str, names: Sequence[str], mapping: Mapping[str, str | int], order_by: str | int | None
) -> dict[str, int]:
    """Canonical (and order-by) column -> position in ``names``; fails on columns that do not exist."""
    wanted: dict[str, str | int] = {c: c for c in S.CANONICAL if c in names and c not in mapping}
    wanted.update(mapping)
    if order_by is not None:
        wanted[ORDER] = order_by
    resolved: dict[str, int] = {}
    for canonical, source in wanted.items():
        if isinstance(source, int):
            if not 0 <= source < len(names):
                raise MappingError(
                    f"{path}: mapping {canonical}={source}: column index out of range "
                    f"(the file has {len(names)} columns: {list(names)})"
                )
            resolved[canonical] = source
        elif source in names:
            resolved[canonical] = list(names).index(source)
        else:
            raise MappingError(
                f"{path}: mapping {canonical}={source!r}: no such column; available columns: {list(names)}"
            )
    missing = [c for c in S.REQUIRED if c not in resolved]
    if missing:
        hint = (
            " Only one column was found: check --delimiter, or use --format sequences for `user item1 item2 ...`."
            if len(names) == 1
            else ""
        )
        raise MappingError(
            f"{path}: required column(s) {missing} not found; available columns: {list(names)}. "
            f"Map them with --map {missing[0]}=<column>.{hint}"
        )
    return resolved


# ----------------------------------------------------------------------------------------- readers


def detect_format(path: str | Path, fmt: Format) -> str:
    """``fmt`` unless it is ``auto``; then the file extension decides."""
    if fmt != "auto":
        return fmt
    ext = Path(path).suffix.lower()
    if ext not in _EXT_FORMAT:
        raise DataValidationError(f"{path}: cannot tell the format from {ext!r}; pass --format")
    return _EXT_FORMAT[ext]


def _first_line(path: str) -> tuple[int, str] | None:
    """(1-based number, text without BOM / CR) of the first non-blank line; None for an empty file."""
    lines = (
        pl.scan_lines(path, name="l", row_index_name="n", row_index_offset=1)
        .filter(pl.col("l").str.strip_chars().str.strip_chars("\ufeff") != "")
        .head(1)
        .collect()
    )
    if lines.height == 0:
        return None
    return int(lines["n"][0]), lines["l"][0].removeprefix("\ufeff").removesuffix("\r")


def sniff_delimiter(first_line: str, fmt: str, path: str) -> str:
    """The extension's delimiter if it occurs on the first line, else the most frequent candidate."""
    if fmt == "tsv":
        return "\t"
    if Path(path).suffix.lower() == ".csv" and "," in first_line:
        return ","
    counts = {d: first_line.count(d) for d in _SNIFF_DELIMITERS}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] else ","


def _regex_char(c: str) -> str:
    return f"\\x{{{ord(c):X}}}"


def split_fields(line: pl.Expr, delimiter: str) -> pl.Expr:
    """Split a CSV line into its fields, honouring double-quoted fields and ``""`` escapes.

    Lines without a quote take the fast ``str.split`` path; the others are tokenised by a regex on
    ``delimiter + line`` so that every field starts with the delimiter (no empty-match pitfalls).
    """
    d = _regex_char(delimiter)
    field_re = f'{d}(?:"(?:[^"]|"")*"|[^{d}]*)'
    tokens = (pl.lit(delimiter) + line).str.extract_all(field_re)
    unquoted = tokens.list.eval(_unquote(pl.element().str.slice(1)))
    return pl.when(line.str.contains('"', literal=True)).then(unquoted).otherwise(line.str.split(delimiter))


def _unquote(value: pl.Expr) -> pl.Expr:
    is_quoted = value.str.starts_with('"') & value.str.ends_with('"') & (value.str.len_chars() >= 2)
    inner = value.str.slice(1, value.str.len_chars() - 2).str.replace_all('""', '"', literal=True)
    return pl.when(is_quoted).then(inner).otherwise(value)


def _parse_header(line: str, delimiter: str) -> list[str]:
    frame = pl.DataFrame({"l": [line]}).select(split_fields(pl.col("l"), delimiter).alias("f"))
    return [name.strip() for name in frame["f"][0].to_list()]


def _lines(path: str, file_idx: int) -> pl.LazyFrame:
    """Physical lines with their 1-based number; CR and BOM removed, blank lines flagged."""
    raw = pl.col(RAW).str.strip_suffix("\r")
    raw = pl.when(pl.col(S.ROW) == 1).then(raw.str.strip_prefix("\ufeff")).otherwise(raw)
    return (
        pl.scan_lines(path, name=RAW, row_index_name=S.ROW, row_index_offset=1)
        .with_columns(raw.alias(RAW), pl.col(S.ROW).cast(pl.Int64), pl.lit(file_idx, pl.Int32).alias(FILE))
        .with_columns((pl.col(RAW).str.strip_chars() == "").alias(BLANK), pl.lit(0, pl.Int32).alias(POS))
    )


def _canonical_columns(values: Mapping[str, pl.Expr]) -> list[pl.Expr]:
    """All canonical columns as strings (null when unmapped), plus the order-by column if mapped."""
    out = [values.get(c, pl.lit(None, pl.String)).cast(pl.String).alias(c) for c in S.CANONICAL]
    if ORDER in values:
        out.append(values[ORDER].cast(pl.String).alias(ORDER))
    return out


def _read_delimited(path: str, file_idx: int, fmt: str, opts: IngestOptions) -> tuple[pl.LazyFrame, SourceInfo]:
    found = _first_line(path)
    if found is None:
        raise DataValidationError(f"{path}: empty file")
    header_line, first = found
    delimiter = opts.delimiter or sniff_delimiter(first, fmt, path)
    if len(delimiter) != 1:
        raise DataValidationError(f"delimiter must be one character, got {delimiter!r}")
    uses_index = any(isinstance(v, int) for v in opts.mapping.values()) or isinstance(opts.order_by, int)
    has_header = opts.has_header if opts.has_header is not None else not (opts.columns or uses_index)
    first_fields = _parse_header(first, delimiter)
    names = (
        list(opts.columns)
        if opts.columns
        else first_fields
        if has_header
        else [str(i) for i in range(len(first_fields))]
    )
    resolved = _resolve(path, names, opts.mapping, opts.order_by)
    n_expected = len(names)
    fields = split_fields(pl.col(RAW), delimiter)
    lf = _lines(path, file_idx)
    if has_header:  # the header is the first non-blank line
        lf = lf.filter(pl.col(S.ROW) > header_line)
    n = pl.col("_fields").list.len()
    count_err = pl.when(~pl.col(BLANK) & (n != n_expected)).then(
        pl.format(f"expected {n_expected} fields, found {{}}", n)
    )
    values = {c: pl.col("_fields").list.get(i, null_on_oob=True) for c, i in resolved.items()}
    lf = lf.with_columns(fields.alias("_fields")).select(
        FILE, S.ROW, POS, RAW, BLANK, count_err.alias(ERR + RECORD), *_canonical_columns(values)
    )
    info = _source_info(path, fmt, delimiter, has_header, names, resolved)
    return lf, info


def _read_jsonl(path: str, file_idx: int, opts: IngestOptions) -> tuple[pl.LazyFrame, SourceInfo]:
    if _first_line(path) is None:
        raise DataValidationError(f"{path}: empty file")
    raw = pl.col(RAW).str.strip_chars()
    is_object = raw.str.starts_with("{") & raw.str.json_path_match("$").is_not_null()
    sample = _lines(path, file_idx).head(1000).filter(is_object).select(raw).collect()[RAW]
    names = list(sample.str.json_decode(infer_schema_length=None).struct.fields) if len(sample) else []
    resolved = _resolve(path, names, opts.mapping, opts.order_by)
    values = {c: raw.str.json_path_match(_json_path(names[i])) for c, i in resolved.items()}
    bad = pl.when(~pl.col(BLANK) & ~is_object).then(pl.lit("not a JSON object"))
    lf = _lines(path, file_idx).select(
        FILE, S.ROW, POS, RAW, BLANK, bad.alias(ERR + RECORD), *_canonical_columns(values)
    )
    return lf, _source_info(path, "jsonl", None, False, names, resolved)


def _json_path(key: str) -> str:
    return "$['" + key.replace("\\", "\\\\").replace("'", "\\'") + "']"


def _read_parquet(path: str, file_idx: int, opts: IngestOptions) -> tuple[pl.LazyFrame, SourceInfo]:
    lf = pl.scan_parquet(path)
    schema = lf.collect_schema()
    names = list(schema.names())
    resolved = _resolve(path, names, opts.mapping, opts.order_by)
    values = {c: _as_text(pl.col(names[i]), schema[names[i]]) for c, i in resolved.items()}
    lf = lf.with_row_index(S.ROW, offset=1).select(
        pl.lit(file_idx, pl.Int32).alias(FILE),
        pl.col(S.ROW).cast(pl.Int64),
        pl.lit(0, pl.Int32).alias(POS),
        pl.struct(names).struct.json_encode().alias(RAW),
        pl.lit(False).alias(BLANK),
        pl.lit(None, pl.String).alias(ERR + RECORD),
        *_canonical_columns(values),
    )
    return lf, _source_info(path, "parquet", None, True, names, resolved)


def _as_text(col: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    """Typed Parquet values as the text the validator parses; datetimes become Unix microseconds."""
    if isinstance(dtype, pl.Datetime):
        return col.dt.epoch("us").cast(pl.String)
    if isinstance(dtype, pl.Date):
        return col.cast(pl.Datetime("us")).dt.epoch("us").cast(pl.String)
    return col.cast(pl.String)


def _read_sequences(path: str, file_idx: int, opts: IngestOptions) -> tuple[pl.LazyFrame, SourceInfo]:
    if opts.mapping or opts.columns or opts.order_by is not None:
        raise MappingError("the sequences format has a fixed layout (user item1 item2 ...): drop --map/--columns")
    if _first_line(path) is None:
        raise DataValidationError(f"{path}: empty file")
    tokens = pl.col(RAW).str.extract_all(r"\S+")
    no_items = pl.when(~pl.col(BLANK) & (tokens.list.len() < 2)).then(pl.lit("a user id but no items"))
    items = tokens.list.slice(1)
    lf = (
        _lines(path, file_idx)
        .with_columns(
            tokens.list.first().alias(S.USER),
            items.alias(S.ITEM),
            pl.int_ranges(0, items.list.len(), dtype=pl.Int32).alias(POS),
            no_items.alias(ERR + RECORD),
        )
        .explode([S.ITEM, POS], empty_as_null=True)
        .with_columns(pl.col(POS).fill_null(0))
    )
    values = {S.USER: pl.col(S.USER), S.ITEM: pl.col(S.ITEM)}
    lf = lf.select(FILE, S.ROW, POS, RAW, BLANK, ERR + RECORD, *_canonical_columns(values))
    info = _source_info(path, "sequences", " ", False, ["user_id", "item_ids"], {S.USER: 0, S.ITEM: 1})
    return lf, info


def _source_info(
    path: str,
    fmt: str,
    delimiter: str | None,
    has_header: bool,
    names: Sequence[str],
    resolved: dict[str, int],
) -> SourceInfo:
    mapping = {("order_by" if c == ORDER else c): names[i] for c, i in resolved.items()}
    digest, size = file_sha256(path)
    return SourceInfo(path, fmt, delimiter, has_header, tuple(names), mapping, digest, size)


def file_sha256(path: str | Path) -> tuple[str, int]:
    """SHA-256 hex digest and size of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def read_events(paths: Sequence[str | Path], options: IngestOptions | None = None) -> RawEvents:
    """Read all input files into one frame of raw canonical strings (one streaming collect)."""
    opts = options or IngestOptions()
    if not paths:
        raise DataValidationError("no input files given")
    _check_mapping_keys(opts.mapping)
    frames: list[pl.LazyFrame] = []
    infos: list[SourceInfo] = []
    for idx, p in enumerate(paths):
        path = str(p)
        if not Path(path).is_file():
            raise DataValidationError(f"{path}: no such file")
        fmt = detect_format(path, opts.format)
        if fmt in ("csv", "tsv"):
            lf, info = _read_delimited(path, idx, fmt, opts)
        elif fmt == "jsonl":
            lf, info = _read_jsonl(path, idx, opts)
        elif fmt == "parquet":
            lf, info = _read_parquet(path, idx, opts)
        else:
            lf, info = _read_sequences(path, idx, opts)
        frames.append(lf)
        infos.append(info)
    frame = pl.concat(frames, how="vertical").collect(engine="streaming")
    present = frozenset(c for c in S.CANONICAL if c in infos[0].mapping)
    _check_non_empty(frame, infos)
    return RawEvents(frame, tuple(infos), present, has_order=ORDER in frame.columns)


def _check_non_empty(frame: pl.DataFrame, infos: Sequence[SourceInfo]) -> None:
    counts = frame.filter(~pl.col(BLANK)).group_by(FILE).len()
    have = set(counts[FILE].to_list())
    empty = [info.path for i, info in enumerate(infos) if i not in have]
    if empty:
        raise DataValidationError(f"{empty[0]}: no data rows (empty file or header only)")


# -------------------------------------------------------------------------------------- validation


def _text(name: str) -> pl.Expr:
    """A raw string column, stripped, with empty strings as null."""
    v = pl.col(name).str.strip_chars()
    return pl.when(v != "").then(v)


def _quoted(v: pl.Expr) -> pl.Expr:
    return pl.lit("'") + v.str.slice(0, 60) + pl.lit("'")


def timestamp_micros(t: pl.Expr, time_format: str | None = None, *, numeric_only: bool = False) -> pl.Expr:
    """Unix microseconds (Int64) of a stripped string column; null where it cannot be parsed.

    Microseconds, not seconds, so that sub-second order (YOOCHOOSE's ``1396860669.277``) survives for
    sorting and de-duplication even though the written ``timestamp`` is whole seconds. See the module
    docstring for the detection rules. ``numeric_only`` skips the (slower) date-string parsers when the
    caller knows every value is a number.
    """
    if time_format in _NUMERIC_UNITS:
        return _numeric_micros(t, pl.lit(_NUMERIC_UNITS[time_format], pl.Int64))
    if time_format is not None:
        return t.str.to_datetime(time_format, strict=False, time_unit="us").dt.epoch("us")
    a = t.cast(pl.Float64, strict=False).abs()
    unit = (
        pl.when(a < 1e11)
        .then(pl.lit(1, pl.Int64))
        .when(a < 1e14)
        .then(pl.lit(1_000, pl.Int64))
        .when(a < 1e17)
        .then(pl.lit(1_000_000, pl.Int64))
        .otherwise(pl.lit(1_000_000_000, pl.Int64))
    )
    yyyymmdd = t.str.to_date("%Y%m%d", strict=False).cast(pl.Datetime("us")).dt.epoch("us")
    is_date = t.str.contains(_INT_RE) & (a >= 1e7) & (a < 1e8)
    numeric = pl.when(is_date).then(yyyymmdd).otherwise(_numeric_micros(t, unit))
    if numeric_only:
        return numeric
    return pl.coalesce(numeric, _string_micros(t))


def timestamp_seconds(t: pl.Expr, time_format: str | None = None, *, numeric_only: bool = False) -> pl.Expr:
    """Whole Unix seconds (floored) of :func:`timestamp_micros`."""
    return timestamp_micros(t, time_format, numeric_only=numeric_only) // 1_000_000


def _numeric_micros(t: pl.Expr, per_second: pl.Expr) -> pl.Expr:
    """Microseconds of a number given in units of ``1 / per_second`` s; exact for integers."""
    i = t.cast(pl.Int64, strict=False)
    f = t.cast(pl.Float64, strict=False)
    from_int = (
        pl.when(per_second <= 1_000_000).then(i * (1_000_000 // per_second)).otherwise(i // (per_second // 1_000_000))
    )
    from_float = (f * (1e6 / per_second.cast(pl.Float64))).floor().cast(pl.Int64, strict=False)
    return (
        pl.when(t.str.contains(_INT_RE) & i.is_not_null())
        .then(from_int)
        .when(t.str.contains(_NUM_RE) & f.is_finite())
        .then(from_float)
    )


def _string_micros(t: pl.Expr) -> pl.Expr:
    norm = (
        t.str.replace(r"(?i)\s*(?:UTC|GMT|Z)$", "")
        .str.replace(r"^(\d{4})/(\d{1,2})/(\d{1,2})", "$1-$2-$3")
        .str.replace(r"^(\d{4}-\d{2}-\d{2})T", "$1 ")
        .str.replace(r"^(\d{4}-\d{2}-\d{2} \d{2})$", "$1:00")
    )
    parsed = [norm.str.to_datetime(f, strict=False, time_unit="us").dt.epoch("us") for f in _NAIVE_FORMATS]
    parsed += [
        norm.str.to_datetime(f, strict=False, time_unit="us", time_zone="UTC").dt.epoch("us") for f in _AWARE_FORMATS
    ]
    return pl.coalesce(parsed)


def parse_time_value(value: str | int, time_format: str | None = None) -> int:
    """Unix seconds of a single value (e.g. the --start/--end options), by the same rules as the data."""
    frame = pl.DataFrame({"t": [str(value).strip()]})
    secs = frame.select(timestamp_seconds(pl.col("t"), time_format))["t"][0]
    if secs is None:
        raise DataValidationError(f"cannot parse time value {value!r}")
    return int(secs)


def _timestamp_checks(opts: IngestOptions, numeric_only: bool) -> tuple[pl.Expr, pl.Expr]:
    """(microseconds, error reason) expressions for the timestamp column."""
    now = opts.now if opts.now is not None else int(time.time())
    t = _text(S.TIME)
    micros = timestamp_micros(t, opts.time_format, numeric_only=numeric_only)
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
    return micros, reason


def _event_checks(opts: IngestOptions, present: frozenset[str]) -> tuple[pl.Expr, pl.Expr | None]:
    if S.EVENT not in present:
        if opts.event_types is not None and S.DEFAULT_EVENT not in opts.event_types:
            raise MappingError("--event-types was given but the data has no event_type column")
        return pl.lit(S.DEFAULT_EVENT, pl.String), None
    e = _text(S.EVENT)
    if opts.event_names:
        e = e.replace(dict(opts.event_names))
    reason = pl.when(e.is_null()).then(pl.lit("missing event_type"))
    if opts.event_types is not None:
        allowed = ", ".join(opts.event_types)
        reason = reason.when(~e.is_in(list(opts.event_types))).then(
            pl.lit("unknown event type ") + _quoted(e) + pl.lit(f" (allowed: {allowed})")
        )
    return e, reason


def _number_check(name: str, label: str) -> tuple[pl.Expr, pl.Expr]:
    v = _text(name)
    num = v.cast(pl.Float64, strict=False)
    ok = v.str.contains(_NUM_RE) & num.is_finite()
    return pl.when(ok).then(num), pl.when(v.is_not_null() & ~ok).then(pl.lit(f"non-numeric {label} ") + _quoted(v))


def _checks(raw: RawEvents, opts: IngestOptions) -> tuple[dict[str, pl.Expr], dict[str, pl.Expr]]:
    """Typed value and error-reason expressions per canonical column."""
    values: dict[str, pl.Expr] = {c: _text(c) for c in S.CANONICAL}
    reasons: dict[str, pl.Expr] = {c: pl.when(_text(c).is_null()).then(pl.lit(f"missing {c}")) for c in S.REQUIRED}
    if raw.has_time:
        t = raw.frame[S.TIME].str.strip_chars()
        numeric_only = bool((t.str.contains(_NUM_RE) | (t == "")).fill_null(True).all())
        values[TIME_US], reasons[S.TIME] = _timestamp_checks(opts, numeric_only)
        values[S.TIME] = values[TIME_US] // 1_000_000
    else:
        values[S.TIME] = pl.lit(None, pl.Int64)
    values[S.EVENT], event_reason = _event_checks(opts, raw.present)
    if event_reason is not None:
        reasons[S.EVENT] = event_reason
    values[S.PRICE], reasons[S.PRICE] = _number_check(S.PRICE, "price")
    if raw.has_order:
        values[ORDER], reasons[ORDER] = _number_check(ORDER, "order_by value")
    return values, reasons


def validate_events(raw: RawEvents, options: IngestOptions | None = None) -> IngestResult:
    """Type the canonical columns and split rows into valid events and per-row errors.

    A row with a record-level error (wrong field count, bad JSON) gets only that error. With
    ``options.strict`` any error raises :class:`DataValidationError` listing the first 20.
    """
    opts = options or IngestOptions()
    values, reasons = _checks(raw, opts)
    record = pl.col(ERR + RECORD)
    err_cols = [record.alias(ERR + RECORD)] + [
        pl.when(record.is_null()).then(r).alias(ERR + c) for c, r in reasons.items()
    ]
    frame = raw.frame.filter(~pl.col(BLANK))
    checked = frame.with_columns(err_cols)
    err_names = [ERR + RECORD] + [ERR + c for c in reasons]
    bad = pl.any_horizontal(pl.col(err_names).is_not_null())
    rejects = _error_table(checked.filter(bad), err_names, raw.sources)
    if opts.strict and rejects.height:
        raise DataValidationError(format_errors(rejects), rejects)
    keep = [*S.CANONICAL, *([TIME_US] if raw.has_time else []), *([ORDER] if raw.has_order else [])]
    typed = checked.filter(~bad).select(FILE, S.ROW, POS, *[values[c].alias(c) for c in keep])
    events = typed.cast({k: v for k, v in S.EVENTS_SCHEMA.items() if k in S.CANONICAL})
    counts = {
        "rows_read": frame.height,
        "blank_lines": raw.frame.height - frame.height,
        "rows_rejected": frame.height - events.height,
        "errors": rejects.height,
    }
    return IngestResult(events, rejects, raw.sources, raw.has_time, raw.has_order, counts)


REJECTS_SCHEMA: dict[str, pl.DataType] = {
    "file": pl.String(),
    "line": pl.Int64(),
    "column": pl.String(),
    "reason": pl.String(),
    "value": pl.String(),
    "raw": pl.String(),
}


def _error_table(bad: pl.DataFrame, err_names: list[str], sources: Sequence[SourceInfo]) -> pl.DataFrame:
    """One row per error: file, 1-based line, column, reason, the column's raw value and the raw record."""
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
    return long.sort(FILE, S.ROW, POS, "_rank").select(
        pl.col(FILE).replace_strict(paths, return_dtype=pl.String).alias("file"),
        pl.col(S.ROW).alias("line"),
        pl.col("column").replace(ORDER, "order_by"),
        "reason",
        value.alias("value"),
        pl.col(RAW).alias("raw"),
    )


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


def ingest(paths: Sequence[str | Path], options: IngestOptions | None = None) -> IngestResult:
    """Read and validate: the canonical, typed events plus the rejects table."""
    opts = options or IngestOptions()
    return validate_events(read_events(paths, opts), opts)
