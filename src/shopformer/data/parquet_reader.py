"""The Parquet reader: typed columns to the raw canonical strings the validator parses.

A column mapped to a canonical column must hold plain values (text, numbers, booleans, dates and
times); a list/array/struct column is a :class:`MappingError` naming the file and the column.
Datetimes become Unix microseconds. Float (and decimal) id columns that hold whole numbers become
integers (``2.0`` -> ``"2"``, never ``"2.0"``); any other value in them rejects its row with the
reason. Binary columns are decoded with ``IngestOptions.encoding`` (undecodable values reject their
row). ``row`` is the 1-based row number; the raw record is the row as JSON (binary as hex).
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

import polars as pl

from shopformer.data import schema as S
from shopformer.data.decoding import check_encoding
from shopformer.data.options import DataValidationError, IngestOptions, MappingError, _resolve
from shopformer.data.raw import BLANK, ERR, FILE, ORDER, POS, RAW, RECORD, SourceInfo, canonical_columns, source_info

if TYPE_CHECKING:
    from polars._typing import PolarsDataType

_ID_COLUMNS = frozenset({S.USER, S.ITEM, S.SESSION, S.CATEGORY})


def read_parquet(idx: int, path: str, opts: IngestOptions) -> tuple[pl.LazyFrame, SourceInfo]:
    try:
        lf = pl.scan_parquet(path)
        schema = lf.collect_schema()
    except (pl.exceptions.PolarsError, OSError) as err:
        raise DataValidationError(f"{path}: not a readable Parquet file ({first_line_of(err)})") from None
    names = list(schema.names())
    resolved = _resolve(path, names, opts.mapping, opts.order_by)
    values: dict[str, pl.Expr] = {}
    errors: list[pl.Expr] = []
    for c, i in resolved.items():
        values[c], error = _parquet_text(path, names[i], c, schema[names[i]], opts.encoding)
        if error is not None:
            errors.append(error.alias(ERR + c))
    raw_fields = [e for e in (_json_safe(n, schema[n]) for n in names) if e is not None]
    raw = pl.struct(raw_fields).struct.json_encode() if raw_fields else pl.lit(None, pl.String)
    lf = lf.with_row_index(S.ROW, offset=1).select(
        pl.lit(idx, pl.Int32).alias(FILE),
        pl.col(S.ROW).cast(pl.Int64),
        pl.lit(0, pl.Int32).alias(POS),
        raw.alias(RAW),
        pl.lit(False).alias(BLANK),
        pl.lit(None, pl.String).alias(ERR + RECORD),
        *canonical_columns(values),
        *errors,
    )
    return lf, source_info(path, "parquet", None, True, names, resolved)


def first_line_of(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def _parquet_text(
    path: str, name: str, canonical: str, dtype: pl.DataType, encoding: str
) -> tuple[pl.Expr, pl.Expr | None]:
    """(the value as the text the validator parses, a per-row error or None) of a typed column.

    Datetimes become Unix microseconds; whole-number float ids become integers (``2.0`` -> ``"2"``),
    other float ids are errors; binary columns are decoded with ``encoding``.
    """
    col = pl.col(name)
    label = "order_by" if canonical == ORDER else canonical
    if isinstance(dtype, pl.Datetime):
        return col.dt.epoch("us").cast(pl.String), None
    if isinstance(dtype, pl.Date):
        return col.cast(pl.Datetime("us")).dt.epoch("us").cast(pl.String), None
    if dtype.is_float() and canonical in _ID_COLUMNS:
        whole = col.cast(pl.Int64, strict=False)
        ok = (whole.cast(pl.Float64) == col.cast(pl.Float64)).fill_null(False)
        text = pl.when(ok).then(whole.cast(pl.String)).otherwise(col.cast(pl.String))
        return text, pl.when(col.is_not_null() & ~ok).then(pl.lit(f"{label} in a float column is not a whole number"))
    if isinstance(dtype, pl.Decimal) and canonical in _ID_COLUMNS:
        text = col.cast(pl.String)
        whole_text = text.str.replace(r"\.0*$", "")
        bad = col.is_not_null() & whole_text.str.contains(".", literal=True)
        return whole_text, pl.when(bad).then(pl.lit(f"{label} in a decimal column is not a whole number"))
    if isinstance(dtype, pl.Binary):
        codec = check_encoding(encoding)
        text = col.map_batches(partial(_decode_values, codec=codec), return_dtype=pl.String)
        return text, pl.when(col.is_not_null() & text.is_null()).then(pl.lit(f"bytes are not valid {codec} text"))
    if dtype.is_numeric() or isinstance(dtype, pl.String | pl.Categorical | pl.Enum | pl.Boolean | pl.Null):
        return col.cast(pl.String), None
    hint = "; explode or flatten it first" if dtype.is_nested() else ""
    raise MappingError(
        f"{path}: column {name!r} (mapped to {label}) has type {dtype}; {label} needs one plain value per row "
        f"(text, number, date or time){hint}"
    )


def _decode_values(s: pl.Series, codec: str) -> pl.Series:
    def decode(b: bytes | None) -> str | None:
        if b is None:
            return None
        try:
            return b.decode(codec)
        except UnicodeDecodeError:
            return None

    return pl.Series(s.name, [decode(b) for b in s.to_list()], dtype=pl.String)


def _has_binary(dtype: PolarsDataType) -> bool:
    if dtype == pl.Binary:
        return True
    if isinstance(dtype, pl.List | pl.Array):
        return _has_binary(dtype.inner)
    if isinstance(dtype, pl.Struct):
        return any(_has_binary(f.dtype) for f in dtype.fields)
    return False


def _json_safe(name: str, dtype: pl.DataType) -> pl.Expr | None:
    """A column for the raw-record JSON: binary as hex; nested columns holding binary left out."""
    if isinstance(dtype, pl.Binary):
        return pl.col(name).bin.encode("hex")
    return None if _has_binary(dtype) else pl.col(name)
