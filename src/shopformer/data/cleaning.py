"""The cleaning kernels of ``prepare``: sort, de-duplicate, deletion ledger, time window, k-core, encode.

Each works on one in-memory frame. ``prepare`` (``outofcore.py``) applies them to one bucket of users
at a time — every step but the k-core item counts and the vocabularies is per user, so a bucket
holding all events of its users gives the same rows as the whole input would — and :func:`clean`
applies them to a whole frame (``growth.py``: re-windowing a dataset).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from shopformer.data import schema as S
from shopformer.data.ingest import FILE, ORDER, POS, TIME_US, DataValidationError, IngestResult, parse_time_value
from shopformer.data.ingest import summarise_errors as summarise_errors
from shopformer.data.ledger import Ledger, drop_forgotten, open_ledger
from shopformer.data.vocab import COUNT, PAD_TOKEN, Vocab, Vocabs, ranked

MAX_BEHAVIOURS = 127  # behaviour_idx is int8
CODED = (  # raw column, dense column, vocabulary name
    (S.USER, S.USER_IDX, "users"),
    (S.ITEM, S.ITEM_IDX, "items"),
    (S.BEHAVIOUR, S.BEHAVIOUR_IDX, "behaviours"),
    (S.CATEGORY, S.CATEGORY_IDX, "categories"),
)


class EmptyDatasetError(DataValidationError):
    """No events survived validation and filtering; the message names the step that removed the last."""


@dataclass(frozen=True)
class CleanOptions:
    """Filters applied after validation."""

    dedup: bool = True
    min_user_events: int = 0
    min_item_events: int = 0
    start: str | int | None = None  # inclusive; any timestamp form the data accepts
    end: str | int | None = None  # exclusive
    # a deletion ledger (data/ledger.py, written by `shopformer forget` and the service): forgotten
    # users' events dated at or before their deletion are dropped; ids as the data holds them
    # (pseudonyms with --pseudonymise-users, as the service then knows them too)
    forget_ledger: str | None = None

    @property
    def kcore(self) -> bool:
        return self.min_user_events > 1 or self.min_item_events > 1


Window = tuple[int | None, int | None]


def _sort_keys(columns: Sequence[str], first: str) -> list[str]:
    keys = [first, TIME_US if TIME_US in columns else S.TIME]
    if ORDER in columns:
        keys.append(ORDER)
    return [*keys, FILE, S.ROW, POS]


def sort_events(frame: pl.DataFrame, by: str = S.USER) -> pl.DataFrame:
    """Sort by (``by``, timestamp, order-by, file, line, position): a total, reproducible order.

    The timestamp key is the microsecond one when present, so sub-second order is kept.
    """
    return frame.sort(_sort_keys(frame.columns, by), nulls_last=False, maintain_order=True)


def drop_duplicates(frame: pl.DataFrame) -> pl.DataFrame:
    """Keep the first of each group of events equal on every canonical (and order-by) column.

    Times compare at microsecond precision: two clicks 0.3 s apart are not duplicates.
    """
    extra = [c for c in (TIME_US, ORDER) if c in frame.columns]
    subset = [c for c in S.CANONICAL if not (c == S.TIME and TIME_US in frame.columns)] + extra
    return frame.unique(subset=subset, keep="first", maintain_order=True)


def time_window(frame: pl.DataFrame, start: int | None, end: int | None) -> pl.DataFrame:
    """Events with ``start <= timestamp < end`` (either bound optional)."""
    keep = pl.lit(True)
    if start is not None:
        keep &= pl.col(S.TIME) >= start
    if end is not None:
        keep &= pl.col(S.TIME) < end
    return frame.filter(keep)


def kcore_keep(frame: pl.DataFrame, item_counts: pl.DataFrame, min_user: int, min_item: int) -> pl.DataFrame:
    """One k-core pass over the users of ``frame``; ``item_counts`` (item_id, n) counts over all users."""
    counted = frame.join(item_counts, on=S.ITEM, how="left", maintain_order="left")
    keep = (pl.len().over(S.USER) >= min_user) & (pl.col(COUNT) >= min_item)
    return counted.filter(keep).drop(COUNT)


def item_counts(frame: pl.DataFrame | pl.LazyFrame) -> pl.LazyFrame:
    return frame.lazy().group_by(S.ITEM).agg(pl.len().cast(pl.UInt32).alias(COUNT))


def kcore(frame: pl.DataFrame, min_user_events: int, min_item_events: int) -> tuple[pl.DataFrame, int]:
    """Iteratively drop users/items with too few events until both thresholds hold (a fixed point).

    Returns the filtered frame and the number of passes that removed something.
    """
    passes = 0
    while frame.height:
        kept = kcore_keep(frame, item_counts(frame).collect(), min_user_events, min_item_events)
        if kept.height == frame.height:
            break
        frame, passes = kept, passes + 1
    return frame, passes


def vocab_counts(frame: pl.DataFrame | pl.LazyFrame, column: str) -> pl.LazyFrame:
    """``(column, n)`` counts of the non-null values, as :meth:`Vocab.build` counts them."""
    return frame.lazy().drop_nulls(column).group_by(column).agg(pl.len().cast(pl.UInt32).alias(COUNT))


def code_table(counts: pl.DataFrame, column: str, dense: str) -> pl.DataFrame:
    """``(column, dense, n)``: the vocabulary of ``counts`` with dense ids from 1 (0 = padding)."""
    table = ranked(counts, column).with_columns(pl.int_range(1, pl.len() + 1).cast(S.EVENTS_SCHEMA[dense]).alias(dense))
    if dense == S.BEHAVIOUR_IDX and table.height > MAX_BEHAVIOURS:
        raise DataValidationError(f"{table.height} behaviour types; at most 127 fit behaviour_idx (int8)")
    return table


def apply_codes(frame: pl.DataFrame, tables: dict[str, pl.DataFrame]) -> pl.DataFrame:
    """Add the dense id columns (0 where the raw value is null) from :func:`code_table` tables."""
    for raw, dense, name in CODED:
        codes = tables[name].select(pl.col(raw).cast(frame.schema[raw]), dense)
        frame = frame.join(codes, on=raw, how="left", maintain_order="left")
        frame = frame.with_columns(pl.col(dense).fill_null(0))
    return frame


def vocab_of(table: pl.DataFrame, column: str) -> Vocab:
    return Vocab((PAD_TOKEN, *table[column].cast(pl.String).to_list()))


def encode(frame: pl.DataFrame) -> tuple[pl.DataFrame, Vocabs]:
    """Dense ids for users, items, behaviours and categories (0 = padding / unknown category)."""
    tables = {name: code_table(vocab_counts(frame, raw).collect(), raw, dense) for raw, dense, name in CODED}
    vocabs = Vocabs(**{name: vocab_of(tables[name], raw) for raw, _, name in CODED})
    return apply_codes(frame, tables), vocabs


def output_frame(frame: pl.DataFrame, sources: Sequence[str]) -> pl.DataFrame:
    """Final column order and types, sorted by (user_idx, timestamp, ..., row)."""
    names = {i: Path(p).name for i, p in enumerate(sources)}
    ordered = sort_events(frame, by=S.USER_IDX)
    return ordered.select(
        *[pl.col(c).cast(S.EVENTS_SCHEMA[c]) for c in S.EVENTS_SCHEMA],
        pl.col(S.ROW).cast(pl.Int64),
        pl.col(FILE).replace_strict(names, return_dtype=pl.String).alias(S.SOURCE),
    )


def window_bounds(options: CleanOptions, has_time: bool, time_format: str | None) -> Window | None:
    """The ``[start, end)`` window in Unix seconds, or None when no bound is set."""
    if options.start is None and options.end is None:
        return None
    if not has_time:
        raise DataValidationError("--start/--end need a timestamp column")
    start = None if options.start is None else parse_time_value(options.start, time_format)
    end = None if options.end is None else parse_time_value(options.end, time_format)
    return start, end


def ledger_of(options: CleanOptions) -> Ledger | None:
    return None if options.forget_ledger is None else open_ledger(options.forget_ledger, create=False)


def clean_part(
    frame: pl.DataFrame, options: CleanOptions, has_time: bool, window: Window | None, ledger: Ledger | None
) -> tuple[pl.DataFrame, dict[str, int]]:
    """Sort, de-duplicate, apply the ledger and the window to the events of some users (all of their events)."""
    counts = {"duplicates_dropped": 0, "outside_time_window": 0}
    frame = sort_events(frame)
    if options.dedup and has_time:
        before = frame.height
        frame = drop_duplicates(frame)
        counts["duplicates_dropped"] = before - frame.height
    if ledger is not None:
        frame, counts["forgotten_dropped"] = drop_forgotten(frame, ledger, S.USER, S.TIME if has_time else None)
    if window is not None:
        before = frame.height
        frame = time_window(frame, *window)
        counts["outside_time_window"] = before - frame.height
    return frame, counts


def no_valid_events(rows_read: int, rejects: pl.DataFrame | pl.LazyFrame) -> EmptyDatasetError:
    first = summarise_errors(rejects)
    return EmptyDatasetError(f"no valid events: all {rows_read} rows were rejected" +
                             ("" if first == "no errors" else f"; first: {first}"))


def check_left(valid: int, counts: dict[str, int], options: CleanOptions) -> None:
    """Fail with the step that removed the last event (``counts`` of :func:`clean_part`, summed)."""
    left = valid - counts["duplicates_dropped"]
    if "forgotten_dropped" in counts:
        _require(left - counts["forgotten_dropped"], f"the deletion ledger {options.forget_ledger}", left)
        left -= counts["forgotten_dropped"]
    if options.start is not None or options.end is not None:
        _require(left - counts["outside_time_window"], f"the time window [{options.start}, {options.end})", left)


def check_kcore(left: int, options: CleanOptions, before: int) -> None:
    step = f"the k-core filter (min_user_events={options.min_user_events}, min_item_events={options.min_item_events})"
    _require(left, step, before)


def _require(left: int, step: str, before: int) -> None:
    if left == 0:
        raise EmptyDatasetError(f"no events left after {step} ({before} events before it); relax the filter")


def clean(
    ingested: IngestResult, options: CleanOptions, time_format: str | None = None
) -> tuple[pl.DataFrame, dict[str, int]]:
    """Sort, de-duplicate, window and k-core filter the valid events; returns the counts dropped."""
    frame = ingested.events
    if frame.height == 0:
        raise no_valid_events(ingested.counts["rows_read"], ingested.rejects)
    window = window_bounds(options, ingested.has_time, time_format)
    cleaned, part = clean_part(frame, options, ingested.has_time, window, ledger_of(options))
    counts = {**part, "kcore_dropped": 0, "kcore_passes": 0}
    check_left(frame.height, counts, options)
    if options.kcore:
        before = cleaned.height
        cleaned, counts["kcore_passes"] = kcore(cleaned, options.min_user_events, options.min_item_events)
        counts["kcore_dropped"] = before - cleaned.height
        check_kcore(cleaned.height, options, before)
    return cleaned, counts
