"""Growing vocabularies for continuous learning: new raw ids get dense ids appended, old ids never move.

A model, a cache or a client that stored dense ids stays valid after a retrain, because dense id
``i`` means the same raw id in every later version. New ids are appended in ``Vocab.build``
order (most frequent first, ties by raw id), so growing is deterministic.

    grown, growth = grow_vocabs(vocabs, frame)          # frame: canonical columns (raw strings)
    encoded = encode_with(frame, grown)                 # dense columns with the grown ids
    result = prepare_window(previous_dataset, new_files, out_dir, vocabs, window_days=14)

``prepare_window`` is ``prepare`` for a retrain: the previous data set's events plus the new
files, read and validated by the same ingest code, de-duplicated (a file sent twice adds
nothing), cut to a sliding time window and encoded with the grown vocabularies.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from shopformer.atomic import sha256_file
from shopformer.data import schema as S
from shopformer.data.ingest import FILE, ORDER, POS, TIME_US, DataValidationError, IngestOptions, IngestResult, ingest
from shopformer.data.ledger import Ledger, drop_forgotten, redact_forgotten
from shopformer.data.prepare import (
    FORMAT_VERSION,
    CleanOptions,
    EmptyDatasetError,
    clean,
    sort_events,
    time_window,
    write_dataset,
)
from shopformer.data.raw import SourceInfo
from shopformer.data.vocab import PAD_TOKEN, Vocab, Vocabs

VOCAB_NAMES = ("users", "items", "behaviours", "categories")
_RAW_COLUMN = {"users": S.USER, "items": S.ITEM, "behaviours": S.BEHAVIOUR, "categories": S.CATEGORY}
_DENSE_COLUMN = {"users": S.USER_IDX, "items": S.ITEM_IDX, "behaviours": S.BEHAVIOUR_IDX, "categories": S.CATEGORY_IDX}
MAX_BEHAVIOURS = 127  # behaviour_idx is int8
DAY = 86_400
_OLD_SOURCE = "_old_source"


@dataclass(frozen=True)
class Growth:
    """How many ids each vocabulary had before and how many were appended."""

    before: dict[str, int]
    added: dict[str, int]

    def to_dict(self) -> dict[str, dict[str, int]]:
        return {"before": dict(self.before), "added": dict(self.added)}


def grow_vocab(vocab: Vocab, values: pl.Series) -> Vocab:
    """``vocab`` with every raw id of ``values`` it lacks appended (most frequent first)."""
    raw = values.cast(pl.String).drop_nulls()
    unknown = raw.filter(~raw.is_in(list(vocab.tokens[1:])))
    if unknown.len() == 0:
        return vocab
    return Vocab((*vocab.tokens, *Vocab.build(unknown).tokens[1:]))


def grow_vocabs(vocabs: Vocabs, frame: pl.DataFrame) -> tuple[Vocabs, Growth]:
    """Grown vocabularies for the raw canonical columns of ``frame`` (missing columns add nothing)."""
    grown = {}
    for name in VOCAB_NAMES:
        old: Vocab = getattr(vocabs, name)
        col = _RAW_COLUMN[name]
        grown[name] = grow_vocab(old, frame[col]) if col in frame.columns else old
    out = Vocabs(**grown)
    if len(out.behaviours) > MAX_BEHAVIOURS:
        raise DataValidationError(f"{len(out.behaviours)} behaviour types; at most {MAX_BEHAVIOURS} fit behaviour_idx")
    before = {n: len(getattr(vocabs, n)) for n in VOCAB_NAMES}
    return out, Growth(before, {n: len(getattr(out, n)) - before[n] for n in VOCAB_NAMES})


def empty_vocabs() -> Vocabs:
    """Vocabularies with padding only (the start of a registry without a previous data set)."""
    return Vocabs(*(Vocab((PAD_TOKEN,)) for _ in VOCAB_NAMES))


def encode_with(frame: pl.DataFrame, vocabs: Vocabs) -> pl.DataFrame:
    """Add the dense columns of ``vocabs`` (which must know every raw id: grow them first)."""
    exprs = []
    for name in VOCAB_NAMES:
        raw, dense, v = _RAW_COLUMN[name], _DENSE_COLUMN[name], getattr(vocabs, name)
        exprs.append(
            pl.col(raw).replace_strict(list(v.tokens[1:]), range(1, len(v.tokens)), default=0,
                                       return_dtype=S.EVENTS_SCHEMA[dense]).fill_null(0).alias(dense)
        )
    out = frame.with_columns(exprs)
    missing = out.filter((pl.col(S.USER_IDX) == 0) | (pl.col(S.ITEM_IDX) == 0) | (pl.col(S.BEHAVIOUR_IDX) == 0))
    if missing.height:
        row = missing.row(0, named=True)
        raise ValueError(f"encode_with: raw id not in the vocabularies (grow them first): {row[S.USER]!r}, "
                         f"{row[S.ITEM]!r}, {row[S.BEHAVIOUR]!r}")
    return out


@dataclass(frozen=True)
class WindowResult:
    path: Path  # the dataset directory written
    stats: dict[str, object]
    vocabs: Vocabs  # grown
    growth: Growth
    new_events: pl.DataFrame  # the valid new events (canonical columns), before de-duplication and window
    window: tuple[int | None, int | None]  # [start, end] Unix seconds of the kept events


def _previous_events(previous: Path, has_order: bool) -> tuple[pl.DataFrame, SourceInfo, bool]:
    """The previous data set's events in the shape ingest produces (FILE 0, its original sources kept)."""
    path = previous / "events.parquet"
    if not path.exists():
        raise FileNotFoundError(f"{previous}: missing events.parquet (not a prepared dataset)")
    stats_path = previous / "stats.json"
    has_time = bool(json.loads(stats_path.read_text()).get("has_time", True)) if stats_path.exists() else True
    df = pl.read_parquet(path)
    cols = [pl.col(c).cast(S.EVENTS_SCHEMA[c]) for c in S.CANONICAL]
    extra = [
        pl.lit(0, pl.Int64).alias(FILE),
        pl.col(S.ROW).cast(pl.Int64),
        pl.lit(0, pl.Int64).alias(POS),
        pl.col(S.SOURCE).alias(_OLD_SOURCE),
    ]
    if has_time:
        extra.append((pl.col(S.TIME).cast(pl.Int64) * 1_000_000).alias(TIME_US))
    if has_order:
        extra.append(pl.lit(None, pl.Float64).alias(ORDER))
    info = SourceInfo(str(path), "dataset", None, True, tuple(df.columns), {}, sha256_file(path), path.stat().st_size)
    return df.select(*cols, *extra), info, has_time


def prepare_window(
    previous: str | Path | None,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    vocabs: Vocabs | None = None,
    ingest_options: IngestOptions | None = None,
    window_days: float | None = None,
    ledger: Ledger | None = None,
) -> WindowResult:
    """Previous data set + new raw files -> a dataset directory encoded with grown vocabularies.

    ``vocabs`` (default: the previous data set's, else empty) only ever grows. ``window_days``
    keeps the events of the last N days before the newest event (needs timestamps). ``ledger``: the
    deletion ledger; events of forgotten users up to their deletion are dropped (old and new ones).
    """
    opts = ingest_options or IngestOptions()
    new = ingest(inputs, opts)
    if new.events.height == 0:
        raise EmptyDatasetError(f"no valid new events in {', '.join(str(p) for p in inputs)} "
                                f"({new.counts['rows_read']} rows read, {new.counts['rows_rejected']} rejected)")
    frames, sources, has_time = [], list(new.sources), new.has_time
    new_events = new.events.with_columns(pl.col(FILE) + 1, pl.lit(None, pl.String).alias(_OLD_SOURCE))
    if previous is not None:
        prev = Path(previous)
        old, info, old_time = _previous_events(prev, new.has_order)
        if old_time != has_time:
            raise DataValidationError(f"{prev} {'has' if old_time else 'lacks'} timestamps but the new events "
                                      f"{'do' if has_time else 'do not'}: both must agree")
        frames.append(old)
        sources.insert(0, info)
        vocabs = vocabs or Vocabs.load(prev / "vocab.json")
    else:
        sources.insert(0, SourceInfo("<none>", "dataset", None, True, (), {}, "", 0))
    frames.append(new_events)
    combined = pl.concat(frames, how="diagonal_relaxed")
    result = IngestResult(combined, new.rejects, tuple(sources), has_time, new.has_order, new.counts)
    frame, counts = clean(result, CleanOptions(), opts.time_format)
    if ledger is not None:
        if not has_time:
            raise DataValidationError("the deletion ledger needs timestamps (deletions are dated)")
        frame, counts["forgotten_dropped"] = drop_forgotten(frame, ledger)
    start = end = None
    if has_time:
        start, end = int(frame[S.TIME].min()), int(frame[S.TIME].max())  # type: ignore[arg-type]
    if window_days is not None:
        if not has_time or end is None:
            raise DataValidationError("--window-days needs a timestamp column")
        if window_days <= 0:
            raise ValueError(f"window_days must be > 0, got {window_days}")
        start = max(start or 0, end - int(window_days * DAY))
        before = frame.height
        frame = time_window(frame, start, None)
        counts["outside_time_window"] = before - frame.height
    grown, growth = grow_vocabs(vocabs or empty_vocabs(), frame)
    if ledger is not None:  # issue 12: no forgotten user's raw id survives in the grown vocabulary
        users, counts["users_redacted"] = redact_forgotten(grown.users, ledger, frame[S.USER].cast(pl.String))
        grown = Vocabs(users, grown.items, grown.behaviours, grown.categories)
    names = {i: Path(s.path).name for i, s in enumerate(sources)}
    encoded = sort_events(encode_with(frame, grown), by=S.USER_IDX)
    events = encoded.select(
        *[pl.col(c).cast(S.EVENTS_SCHEMA[c]) for c in S.EVENTS_SCHEMA],
        pl.col(S.ROW).cast(pl.Int64),
        pl.when(pl.col(FILE) == 0).then(pl.col(_OLD_SOURCE))
        .otherwise(pl.col(FILE).replace_strict(names, return_dtype=pl.String)).alias(S.SOURCE),
    )
    stats = _window_stats(events, grown, result, counts, growth, (start, end))
    path = write_dataset(out_dir, events, grown, stats, new.rejects)
    canonical = new.events.select(S.CANONICAL)
    return WindowResult(path, stats, grown, growth, canonical, (start, end))


def _window_stats(events: pl.DataFrame, vocabs: Vocabs, ingested: IngestResult, counts: dict[str, int],
                  growth: Growth, window: tuple[int | None, int | None]) -> dict[str, object]:
    by_name = dict(events.group_by(S.BEHAVIOUR).len().iter_rows())
    return {
        "format_version": FORMAT_VERSION,
        "has_time": ingested.has_time,
        **ingested.counts,
        **counts,
        "events": events.height,
        "users": len(vocabs.users),
        "items": len(vocabs.items),
        "categories": len(vocabs.categories),
        "behaviours": {b: int(by_name.get(b, 0)) for b in vocabs.behaviours.tokens[1:]},
        "users_in_window": events[S.USER_IDX].n_unique(),
        "items_in_window": events[S.ITEM_IDX].n_unique(),
        "time_min": window[0],
        "time_max": window[1],
        "sources": [s.as_dict() for s in ingested.sources],
        "growth": growth.to_dict(),
    }
