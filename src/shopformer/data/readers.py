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

Text files are decoded with ``IngestOptions.encoding`` (``decoding.py``): a line that is not valid in
that encoding is quarantined (reason with its byte offset), never fatal. Parquet columns mapped to a
canonical column must hold plain values (a list or struct column is a :class:`MappingError` naming the
file and column); float ids that are whole numbers become ``"2"``, others are rejected per row. A
directory given as input stands for its files (see :func:`expand_inputs`).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from shopformer.data import schema as S
from shopformer.data.decoding import (
    COMPRESSED_SUFFIXES,
    UNDECODABLE,
    DecodedText,
    check_encoding,
    compression,
    decode_text,
)
from shopformer.data.options import (
    DataValidationError,
    Format,
    IngestOptions,
    MappingError,
    _check_mapping_keys,
    _resolve,
)
from shopformer.data.parquet_reader import first_line_of, read_parquet
from shopformer.data.raw import (
    BLANK,
    ERR,
    FILE,
    ORDER,
    POS,
    RAW,
    RECORD,
    RawEvents,
    ScannedEvents,
    SourceInfo,
    canonical_columns,
    source_info,
)

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
_SKIPPED_PREFIXES = (".", "_")  # hidden files, Spark's _SUCCESS / _metadata


@dataclass(frozen=True)
class _Input:
    """One input file: its index, its path as given, and for text formats where to read it as UTF-8."""

    idx: int
    path: str
    text: DecodedText | None = None

    @property
    def read_path(self) -> str:
        return self.text.path if self.text is not None else self.path


def expand_inputs(paths: Sequence[str | Path], fmt: Format = "auto") -> list[str]:
    """Input paths with each directory replaced by its files, sorted by name (not recursive).

    Hidden files and names starting with ``_`` are skipped; with ``fmt="auto"`` so are files whose
    extension names no format. A directory with nothing to read is an error naming it.
    """
    out: list[str] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            files = sorted(
                (f for f in path.iterdir() if f.is_file() and not f.name.startswith(_SKIPPED_PREFIXES)),
                key=lambda f: f.name,
            )
            if fmt == "auto":
                files = [f for f in files if data_suffix(f) in _EXT_FORMAT]
            if not files:
                exts = " ".join(sorted(set(_EXT_FORMAT)))
                raise DataValidationError(
                    f"{path}: directory has no input files (read: {exts}; sub-directories are not read; "
                    "--format reads files of any extension)"
                )
            out.extend(str(f) for f in files)
        elif path.is_file():
            out.append(str(p))
        elif path.exists():
            raise DataValidationError(f"{path}: not a regular file or directory")
        else:
            raise DataValidationError(f"{path}: no such file or directory")
    return out


def data_suffix(path: str | Path) -> str:
    """The extension that names the format: ``events.csv.gz`` -> ``.csv`` (a compression's suffix dropped)."""
    p = Path(path)
    if p.suffix.lower() in COMPRESSED_SUFFIXES:
        p = p.with_suffix("")
    return p.suffix.lower()


def detect_format(path: str | Path, fmt: Format) -> str:
    """``fmt`` unless it is ``auto``; then the file extension decides (``.csv.gz`` reads as CSV)."""
    if fmt != "auto":
        return fmt
    ext = data_suffix(path)
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
    if data_suffix(path) == ".csv" and "," in first_line:
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


def _lines(src: _Input) -> pl.LazyFrame:
    """Physical lines with their 1-based number; CR and BOM removed, blank lines flagged, and the
    decoding error of undecodable lines in ``UNDECODABLE``."""
    undecodable = src.text.reason() if src.text is not None else pl.lit(None, pl.String)
    scanned = pl.scan_lines(src.read_path, name=RAW, row_index_name=S.ROW, row_index_offset=1)
    return tidy_lines(scanned, src.idx, undecodable)


def tidy_lines(lines: pl.LazyFrame, idx: int, undecodable: pl.Expr | None = None) -> pl.LazyFrame:
    """Raw lines (``RAW`` and 1-based ``row``) of input file ``idx`` as the readers take them: CR and
    BOM removed, blank lines flagged, ``UNDECODABLE`` set (null: decoded fine)."""
    raw = pl.col(RAW).str.strip_suffix("\r")
    raw = pl.when(pl.col(S.ROW) == 1).then(raw.str.strip_prefix("\ufeff")).otherwise(raw)
    numbered = lines.with_columns(raw.alias(RAW), pl.col(S.ROW).cast(pl.Int64), pl.lit(idx, pl.Int32).alias(FILE))
    return numbered.with_columns(
        (pl.col(RAW).str.strip_chars() == "").alias(BLANK),
        pl.lit(0, pl.Int32).alias(POS),
        (undecodable if undecodable is not None else pl.lit(None, pl.String)).alias(UNDECODABLE),
    )


def _record_error(own: pl.Expr) -> pl.Expr:
    """A line's record-level error: not decodable first, else the reader's own check."""
    return pl.coalesce(pl.col(UNDECODABLE), own).alias(ERR + RECORD)


@dataclass(frozen=True)
class DelimitedLayout:
    """How the lines of one delimited file become fields (found once, from its first lines)."""

    delimiter: str
    header_line: int | None  # the header's line number; None: no header
    n_fields: int
    resolved: dict[str, int]  # canonical column -> field index

    def fields(self, lines: pl.LazyFrame) -> pl.LazyFrame:
        """:func:`tidy_lines` output -> the raw canonical columns of :class:`RawEvents` (a pure transform:
        the Spark engine applies it to batches of lines on its executors)."""
        if self.header_line is not None:
            lines = lines.filter(pl.col(S.ROW) > self.header_line)
        n = pl.col("_fields").list.len()
        count_err = pl.when(~pl.col(BLANK) & (n != self.n_fields)).then(
            pl.format(f"expected {self.n_fields} fields, found {{}}", n)
        )
        values = {c: pl.col("_fields").list.get(i, null_on_oob=True) for c, i in self.resolved.items()}
        return lines.with_columns(split_fields(pl.col(RAW), self.delimiter).alias("_fields")).select(
            FILE, S.ROW, POS, RAW, BLANK, _record_error(count_err), *canonical_columns(values)
        )


def delimited_layout(src: _Input, fmt: str, opts: IngestOptions) -> tuple[DelimitedLayout, SourceInfo]:
    path = src.path
    found = _first_line(src.read_path)
    if found is None:
        raise DataValidationError(f"{path}: empty file")
    header_line, first = found
    delimiter = opts.delimiter or sniff_delimiter(first, fmt, path)
    if len(delimiter) != 1:
        raise DataValidationError(f"delimiter must be one character, got {delimiter!r}")
    uses_index = any(isinstance(v, int) for v in opts.mapping.values()) or isinstance(opts.order_by, int)
    has_header = opts.has_header if opts.has_header is not None else not (opts.columns or uses_index)
    if has_header and src.text is not None:
        bad = src.text.undecodable.filter(pl.col(S.ROW) == header_line)
        if bad.height:
            raise DataValidationError(f"{path}:{header_line}: header line: {bad[UNDECODABLE][0]}")
    first_fields = _parse_header(first, delimiter)
    names = (
        list(opts.columns)
        if opts.columns
        else first_fields
        if has_header
        else [str(i) for i in range(len(first_fields))]
    )
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:  # issue 12: which one is meant? refuse rather than silently read the first
        raise DataValidationError(f"{path}:{header_line}: duplicate column name(s) {dup}")
    resolved = _resolve(path, names, opts.mapping, opts.order_by)
    layout = DelimitedLayout(delimiter, header_line if has_header else None, len(names), resolved)
    return layout, source_info(path, fmt, delimiter, has_header, names, resolved)


def _read_delimited(src: _Input, fmt: str, opts: IngestOptions) -> tuple[pl.LazyFrame, SourceInfo]:
    layout, info = delimited_layout(src, fmt, opts)
    return layout.fields(_lines(src)), info


def _read_jsonl(src: _Input, opts: IngestOptions) -> tuple[pl.LazyFrame, SourceInfo]:
    path = src.path
    if _first_line(src.read_path) is None:
        raise DataValidationError(f"{path}: empty file")
    raw = pl.col(RAW).str.strip_chars()
    is_object = raw.str.starts_with("{") & raw.str.json_path_match("$").is_not_null()
    sample = (
        _lines(src).head(1000).filter(is_object & pl.col(UNDECODABLE).is_null()).select(raw).collect()[RAW]
    )
    names = _json_keys(sample.to_list())
    resolved = _resolve(path, names, opts.mapping, opts.order_by)
    values = {c: raw.str.json_path_match(_json_path(names[i])) for c, i in resolved.items()}
    bad = pl.when(~pl.col(BLANK) & ~is_object).then(pl.lit("not a JSON object"))
    lf = _lines(src).select(FILE, S.ROW, POS, RAW, BLANK, _record_error(bad), *canonical_columns(values))
    return lf, source_info(path, "jsonl", None, False, names, resolved)


def _json_keys(lines: Sequence[str]) -> list[str]:
    """The keys of the sampled objects, in order of first appearance (values may differ in type)."""
    keys: dict[str, None] = {}
    for line in lines:
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            keys.update(dict.fromkeys(obj))
    return list(keys)


def _json_path(key: str) -> str:
    return "$['" + key.replace("\\", "\\\\").replace("'", "\\'") + "']"


def _read_sequences(src: _Input, opts: IngestOptions) -> tuple[pl.LazyFrame, SourceInfo]:
    path = src.path
    if opts.mapping or opts.columns or opts.order_by is not None:
        raise MappingError("the sequences format has a fixed layout (user item1 item2 ...): drop --map/--columns")
    if _first_line(src.read_path) is None:
        raise DataValidationError(f"{path}: empty file")
    tokens = pl.col(RAW).str.extract_all(r"\S+")
    no_items = pl.when(~pl.col(BLANK) & (tokens.list.len() < 2)).then(pl.lit("a user id but no items"))
    # an undecodable line is one rejected row, not one per item
    items = pl.when(pl.col(UNDECODABLE).is_null()).then(tokens.list.slice(1)).otherwise(tokens.list.slice(0, 0))
    lf = (
        _lines(src)
        .with_columns(
            tokens.list.first().alias(S.USER),
            items.alias(S.ITEM),
            pl.int_ranges(0, items.list.len(), dtype=pl.Int32).alias(POS),
            _record_error(no_items),
        )
        .explode([S.ITEM, POS], empty_as_null=True)
        .with_columns(pl.col(POS).fill_null(0))
    )
    values = {S.USER: pl.col(S.USER), S.ITEM: pl.col(S.ITEM)}
    lf = lf.select(FILE, S.ROW, POS, RAW, BLANK, ERR + RECORD, *canonical_columns(values))
    info = source_info(path, "sequences", " ", False, ["user_id", "item_ids"], {S.USER: 0, S.ITEM: 1})
    return lf, info


def _read_one(src: _Input, fmt: str, opts: IngestOptions) -> tuple[pl.LazyFrame, SourceInfo]:
    if fmt in ("csv", "tsv"):
        return _read_delimited(src, fmt, opts)
    if fmt == "jsonl":
        return _read_jsonl(src, opts)
    if fmt == "parquet":
        return read_parquet(src.idx, src.path, opts)
    return _read_sequences(src, opts)


@contextmanager
def scan_events(paths: Sequence[str | Path], options: IngestOptions | None = None) -> Iterator[ScannedEvents]:
    """All input files (directories: their files) as one lazy frame of raw canonical strings.

    Text files that are not valid UTF-8 are first transcoded into a temporary folder (``$TMPDIR``),
    which lives as long as the context. Collecting the frame may raise a Polars error: pass it to
    :func:`read_error`.
    """
    opts = options or IngestOptions()
    if not paths:
        raise DataValidationError("no input files given")
    _check_mapping_keys(opts.mapping)
    check_encoding(opts.encoding)
    files = expand_inputs(paths, opts.format)
    frames: list[pl.LazyFrame] = []
    infos: list[SourceInfo] = []
    with tempfile.TemporaryDirectory(prefix="shopformer-ingest-") as work:
        for idx, path in enumerate(files):
            fmt = detect_format(path, opts.format)
            try:
                if fmt == "parquet" and compression(path) is not None:
                    raise DataValidationError(f"{path}: a compressed Parquet file is not read; decompress it "
                                              "first (Parquet compresses its own columns)")
                text = None if fmt == "parquet" else decode_text(path, opts.encoding, Path(work), str(idx))
                lf, info = _read_one(_Input(idx, path, text), fmt, opts)
            except OSError as err:
                raise DataValidationError(f"{path}: cannot read: {err.strerror or err}") from None
            frames.append(lf)
            infos.append(info)
        frame = pl.concat(frames, how="diagonal")
        present = frozenset(c for c in S.CANONICAL if c in infos[0].mapping)
        yield ScannedEvents(frame, tuple(infos), present, has_order=ORDER in frame.collect_schema().names())


def read_error(sources: Sequence[SourceInfo], err: pl.exceptions.PolarsError) -> DataValidationError:
    """The one-line error for a Polars failure while reading ``sources``."""
    return DataValidationError(f"cannot read {', '.join(s.path for s in sources)}: {first_line_of(err)}")


def read_events(paths: Sequence[str | Path], options: IngestOptions | None = None) -> RawEvents:
    """Read all input files (directories: their files) into one in-memory frame of raw canonical strings."""
    with scan_events(paths, options) as scanned:
        try:
            frame = scanned.frame.collect(engine="streaming")
        except pl.exceptions.PolarsError as err:
            raise read_error(scanned.sources, err) from None
    check_non_empty(non_blank_files(frame), scanned.sources)
    return scanned.batch(frame)


def non_blank_files(frame: pl.DataFrame) -> set[int]:
    """Indices of the input files with at least one non-blank row in ``frame``."""
    return set(frame.filter(~pl.col(BLANK))[FILE].unique().to_list())


def check_non_empty(have: set[int], infos: Sequence[SourceInfo]) -> None:
    """Fail on the first input file without data rows (``have``: files with some, see :func:`non_blank_files`)."""
    empty = [info.path for i, info in enumerate(infos) if i not in have]
    if empty:
        raise DataValidationError(f"{empty[0]}: no data rows (empty file or header only)")
