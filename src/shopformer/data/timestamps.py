"""Timestamp parsing: raw strings to Unix microseconds / seconds, as Polars expressions.

Timestamps (``time_format=None``, the default) are detected per value:

* integers/decimals by magnitude: 8 digits -> ``YYYYMMDD`` date (Unix seconds of that size would be
  1970-1973 anyway); < 1e11 -> seconds; < 1e14 -> milliseconds; < 1e17 -> microseconds; else
  nanoseconds. Fractions are floored to whole seconds.
* strings: ISO-8601 dates and date-times (``T`` or space separated, optional fraction, optional
  ``Z``/``UTC``/``GMT`` suffix or ``+08:00`` offset) and ``YYYY-MM-DD HH`` (hour resolution).
  Values without an offset are read as UTC.

``time_format`` forces one rule: ``s``/``ms``/``us``/``ns`` for numbers, or a strftime format.
"""

from __future__ import annotations

import polars as pl

from shopformer.data.options import DataValidationError

_INT_RE = r"^[+-]?\d+$"
_NUM_RE = r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$"
_NAIVE_FORMATS = ("%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%d %H:%M", "%Y-%m-%d")
_AWARE_FORMATS = ("%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%d %H:%M%#z")
_NUMERIC_UNITS = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}


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
