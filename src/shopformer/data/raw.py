"""The raw-event frame that the readers hand to the validator (and, typed, on to ``prepare``).

Holds the internal bookkeeping column names of those frames, :class:`SourceInfo` (where one input
file came from and how it was read) and :class:`RawEvents` (canonical columns as raw strings).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from shopformer.atomic import file_digest
from shopformer.data import schema as S

# Internal bookkeeping columns of the frames passed between reader, validator and `prepare`.
FILE = "_file"  # index of the source file in the input list
POS = "_pos"  # position within a line (sequence format), 0 otherwise
RAW = "_raw"  # the raw record, kept for rejects
BLANK = "_blank"
ORDER = "_order_by"  # optional numeric tie-break within equal (user, timestamp)
TIME_US = "_time_us"  # microseconds: sorts and de-duplicates below the written whole seconds
RECORD = "<record>"  # pseudo column of errors about a whole line (field count, bad JSON)
ERR = "_err_"


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
class ScannedEvents:
    """:class:`RawEvents` not read yet: a lazy frame that ``prepare`` streams in batches."""

    frame: pl.LazyFrame
    sources: tuple[SourceInfo, ...]
    present: frozenset[str]
    has_order: bool

    @property
    def has_time(self) -> bool:
        return S.TIME in self.present

    def batch(self, frame: pl.DataFrame) -> RawEvents:
        """One collected batch of this scan as raw events."""
        return RawEvents(frame, self.sources, self.present, self.has_order)


def canonical_columns(values: Mapping[str, pl.Expr]) -> list[pl.Expr]:
    """All canonical columns as strings (null when unmapped), plus the order-by column if mapped."""
    out = [values.get(c, pl.lit(None, pl.String)).cast(pl.String).alias(c) for c in S.CANONICAL]
    if ORDER in values:
        out.append(values[ORDER].cast(pl.String).alias(ORDER))
    return out


def source_info(
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
