"""Read raw input files into one frame of canonical columns as raw strings (:class:`RawEvents`).

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
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import polars as pl

from shopformer.atomic import file_digest
from shopformer.data import schema as S
from shopformer.data.options import (
    DataValidationError,
    Format,
    IngestOptions,
    MappingError,
    _check_mapping_keys,
    _resolve,
)
from shopformer.data.raw import BLANK, ERR, FILE, ORDER, POS, RAW, RECORD, RawEvents, SourceInfo

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
    digest, size = file_digest(path)
    return SourceInfo(path, fmt, delimiter, has_header, tuple(names), mapping, digest, size)


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
