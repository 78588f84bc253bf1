"""``prepare`` with memory bounded by :class:`~shopformer.data.spill.Resources`, not by the input size.

One path for every input size; between the stages the events are Parquet parts in a work folder:

1. **read + validate** — the inputs are streamed (``readers.scan_events``) in batches; each batch is
   validated (``ingest.validate_events``), its rejects are spilled, and its valid events are spread
   over *shards* by a hash of the user id (every event of a user lands in one shard);
2. **sort + dedupe** — consecutive shards are grouped into *buckets* of about ``Resources.rows``
   events; each bucket is sorted, de-duplicated and filtered by the ledger and the time window
   (``cleaning.clean_part``): all per-user steps, so buckets give the rows the whole input would;
3. **k-core** — each pass counts items over all buckets (a streaming group-by), then filters bucket
   by bucket, until a pass removes nothing;
4. **vocabularies** — counts over all buckets, ranked as ``Vocab.build`` ranks them;
5. **encode + sort** — each bucket gets its dense ids and is split into *ranges* of consecutive
   ``user_idx`` (about ``Resources.rows`` events each); each range is sorted in memory, and the
   ranges in order are the final event order, streamed into ``events.parquet`` by ``prepare``.

The same input and options give byte-identical files whatever the memory setting
(``tests/test_prepare_outofcore.py``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl

from shopformer.data import schema as S
from shopformer.data.cleaning import (
    CODED,
    CleanOptions,
    apply_codes,
    check_kcore,
    check_left,
    clean_part,
    code_table,
    item_counts,
    kcore_keep,
    ledger_of,
    no_valid_events,
    output_frame,
    vocab_counts,
    window_bounds,
)
from shopformer.data.ingest import DataValidationError, IngestOptions, summarise_errors, validate_events
from shopformer.data.pseudonym import key_fingerprint
from shopformer.data.raw import SourceInfo
from shopformer.data.readers import check_non_empty, non_blank_files, read_error, scan_events
from shopformer.data.spill import Progress, Resources, read_parts, write_part
from shopformer.data.vocab import COUNT, PAD_TOKEN

FORMAT_VERSION = 1
MAX_SHARDS = 512
_BYTES_PER_ROW_GUESS = {"parquet": 4, "sequences": 8}  # low guesses (more shards than needed is cheap)
_TEXT_BYTES_PER_ROW_GUESS = 16
_SHARD = "_shard"
_RANGE = "_range"


@dataclass(frozen=True)
class Ingested:
    """Stage 1's output: valid events in shards (parts in batch order), rejects, counts."""

    shards: list[list[Path]]
    shard_rows: list[int]
    rejects: list[Path]
    sources: tuple[SourceInfo, ...]
    has_time: bool
    counts: dict[str, int]

    @property
    def valid(self) -> int:
        return sum(self.shard_rows)


@dataclass(frozen=True)
class Built:
    """What ``prepare`` writes: sorted event parts (in order), reject parts, vocab tokens and stats."""

    events: list[Path]
    rejects: list[Path]
    tokens: dict[str, pl.Series]
    stats: dict[str, object]


def build(
    inputs: Sequence[str | Path], work: Path, iopts: IngestOptions, copts: CleanOptions, res: Resources
) -> Built:
    """Run the stages of the module docstring in ``work`` (an empty folder the caller removes)."""
    progress = Progress(res.progress)
    window_bounds(copts, True, iopts.time_format)  # a bad --start/--end fails before the work
    ingested = ingest_to_shards(inputs, work, iopts, res, progress)
    buckets, counts = clean_buckets(ingested, work, copts, iopts.time_format, res, progress)
    if copts.kcore:
        buckets = kcore_buckets(buckets, work, copts, counts, progress)
    tables = vocabulary_tables(buckets, progress)
    events, time_range = encode_sorted(buckets, tables, ingested.sources, work, res, progress)
    tokens = {name: pl.concat([pl.Series([PAD_TOKEN]), tables[name][raw].cast(pl.String)]) for raw, _, name in CODED}
    stats = dataset_stats(tables, time_range, ingested, counts, iopts, copts)
    return Built(events, ingested.rejects, tokens, stats)


def _shard_count(sources: Sequence[SourceInfo], rows: int) -> int:
    guess = sum(s.bytes // _BYTES_PER_ROW_GUESS.get(s.format, _TEXT_BYTES_PER_ROW_GUESS) for s in sources)
    return max(1, min(MAX_SHARDS, -(-guess // rows)))


def ingest_to_shards(
    inputs: Sequence[str | Path], work: Path, iopts: IngestOptions, res: Resources, progress: Progress
) -> Ingested:
    """Stage 1: stream, validate and shard (see the module docstring)."""
    now = iopts.now if iopts.now is not None else int(datetime.now(UTC).timestamp())
    batch_opts = replace(iopts, strict=False, now=now)  # one "now" for every batch
    counts: Counter[str] = Counter()
    rejects: list[Path] = []
    have: set[int] = set()
    with scan_events(inputs, iopts) as scanned:
        n_shards = _shard_count(scanned.sources, res.rows)
        shards: list[list[Path]] = [[] for _ in range(n_shards)]
        shard_rows = [0] * n_shards
        try:
            for i, batch in enumerate(scanned.frame.collect_batches(chunk_size=res.batch_rows)):
                have |= non_blank_files(batch)
                result = validate_events(scanned.batch(batch), batch_opts)
                counts.update(result.counts)
                if result.rejects.height:
                    rejects.append(write_part(result.rejects, work / "rejects" / f"{i:06d}.parquet"))
                for s, part in _by_shard(result.events, n_shards).items():
                    shards[s].append(write_part(part, work / "shards" / f"{s:04d}" / f"{i:06d}.parquet"))
                    shard_rows[s] += part.height
        except pl.exceptions.PolarsError as err:
            raise read_error(scanned.sources, err) from None
    check_non_empty(have, scanned.sources)
    if iopts.strict and rejects:
        table = read_parts(rejects)
        raise DataValidationError(summarise_errors(table), table)
    totals = {k: counts[k] for k in ("rows_read", "blank_lines", "rows_rejected", "errors")}
    progress.done("read + validate", totals["rows_read"], f"{totals['rows_rejected']:,} rejected, {n_shards} shards")
    return Ingested(shards, shard_rows, rejects, scanned.sources, scanned.has_time, totals)


def _by_shard(events: pl.DataFrame, n_shards: int) -> dict[int, pl.DataFrame]:
    if events.height == 0:
        return {}
    if n_shards == 1:
        return {0: events}
    keyed = events.with_columns((pl.col(S.USER).hash(seed=0) % n_shards).alias(_SHARD))
    return {int(k[0]): f.drop(_SHARD) for k, f in keyed.partition_by(_SHARD, as_dict=True).items()}


def _groups(sizes: Sequence[int], limit: int) -> list[list[int]]:
    """Consecutive non-empty indices grouped so that each group's total stays within ``limit`` (if it can)."""
    groups: list[list[int]] = []
    current: list[int] = []
    total = 0
    for i, size in enumerate(sizes):
        if size == 0:
            continue
        if current and total + size > limit:
            groups.append(current)
            current, total = [], 0
        current.append(i)
        total += size
    return [*groups, current] if current else groups


def _remove(paths: Sequence[Path]) -> None:
    for p in paths:
        p.unlink(missing_ok=True)


def clean_buckets(
    ing: Ingested, work: Path, copts: CleanOptions, time_format: str | None, res: Resources, progress: Progress
) -> tuple[list[Path], dict[str, int]]:
    """Stage 2: sort, de-duplicate, ledger and window per bucket of shards."""
    if ing.valid == 0:
        rejects = pl.scan_parquet(ing.rejects) if ing.rejects else pl.DataFrame()
        raise no_valid_events(ing.counts["rows_read"], rejects)
    window = window_bounds(copts, ing.has_time, time_format)
    ledger = ledger_of(copts)
    totals: Counter[str] = Counter()
    buckets: list[Path] = []
    for b, group in enumerate(_groups(ing.shard_rows, res.rows)):
        parts = [p for s in group for p in ing.shards[s]]
        frame, dropped = clean_part(read_parts(parts), copts, ing.has_time, window, ledger)
        totals.update(dropped)
        _remove(parts)
        if frame.height:
            buckets.append(write_part(frame, work / "clean" / f"{b:05d}.parquet"))
    counts = {"duplicates_dropped": totals["duplicates_dropped"], "outside_time_window": totals["outside_time_window"],
              "kcore_dropped": 0, "kcore_passes": 0}
    if ledger is not None:
        counts["forgotten_dropped"] = totals["forgotten_dropped"]
    check_left(ing.valid, counts, copts)
    progress.done("sort + dedupe", ing.valid, f"{len(buckets)} buckets")
    return buckets, counts


def kcore_buckets(
    buckets: list[Path], work: Path, copts: CleanOptions, counts: dict[str, int], progress: Progress
) -> list[Path]:
    """Stage 3: iterative k-core; items are counted over all buckets, users within theirs."""
    before = left = pl.scan_parquet(buckets).select(pl.len()).collect().item()
    while buckets:
        scan = pl.scan_parquet(buckets)
        items, users = pl.collect_all(
            [item_counts(scan), scan.group_by(S.USER).agg(pl.len().alias(COUNT)).select(pl.col(COUNT).min())],
            engine="streaming",
        )
        if items[COUNT].min() >= copts.min_item_events and users[COUNT][0] >= copts.min_user_events:  # type: ignore[operator]
            break
        kept: list[Path] = []
        for b, path in enumerate(buckets):
            frame = kcore_keep(pl.read_parquet(path), items, copts.min_user_events, copts.min_item_events)
            if frame.height:
                kept.append(write_part(frame, work / f"kcore{counts['kcore_passes']}" / f"{b:05d}.parquet"))
        _remove(buckets)
        buckets = kept
        counts["kcore_passes"] += 1
        left = pl.scan_parquet(buckets).select(pl.len()).collect().item() if buckets else 0
        progress.done(f"k-core pass {counts['kcore_passes']}", left)
    counts["kcore_dropped"] = before - left
    check_kcore(left, copts, before)
    return buckets


def vocabulary_tables(buckets: list[Path], progress: Progress) -> dict[str, pl.DataFrame]:
    """Stage 4: ``(raw, n, dense)`` per vocabulary, counted over all buckets."""
    scan = pl.scan_parquet(buckets)
    counted = pl.collect_all([vocab_counts(scan, raw) for raw, _, _ in CODED], engine="streaming")
    tables = {name: code_table(c, raw, dense) for (raw, dense, name), c in zip(CODED, counted, strict=True)}
    progress.done("vocabularies", int(tables["users"][COUNT].sum()))
    return tables


def encode_sorted(
    buckets: list[Path],
    tables: dict[str, pl.DataFrame],
    sources: Sequence[SourceInfo],
    work: Path,
    res: Resources,
    progress: Progress,
) -> tuple[list[Path], tuple[int | None, int | None]]:
    """Stage 5: dense ids, then ranges of ``user_idx`` sorted one at a time; returns the parts in order."""
    users = tables["users"]
    ranges = users.select(
        S.USER_IDX, ((pl.col(COUNT).cum_sum() - pl.col(COUNT)) // res.rows).cast(pl.Int32).alias(_RANGE)
    )
    parts: dict[int, list[Path]] = {}
    for b, path in enumerate(buckets):
        frame = apply_codes(pl.read_parquet(path), tables).join(ranges, on=S.USER_IDX, maintain_order="left")
        for key, part in frame.partition_by(_RANGE, as_dict=True).items():
            r = int(key[0])
            target = work / "ranges" / f"{r:06d}" / f"{b:05d}.parquet"
            parts.setdefault(r, []).append(write_part(part.drop(_RANGE), target))
    _remove(buckets)
    events = int(users[COUNT].sum())
    progress.done("encode", events, f"{len(parts)} ranges")
    out: list[Path] = []
    t_min: int | None = None
    t_max: int | None = None
    names = [s.path for s in sources]
    for r in sorted(parts):
        frame = output_frame(read_parts(parts[r]), names)
        lo, hi = frame.select(pl.col(S.TIME).min(), pl.col(S.TIME).max().alias("hi")).row(0)
        if lo is not None and hi is not None:
            t_min = int(lo) if t_min is None else min(t_min, int(lo))
            t_max = int(hi) if t_max is None else max(t_max, int(hi))
        out.append(write_part(frame, work / "sorted" / f"{r:06d}.parquet"))
        _remove(parts[r])
    progress.done("sort by user", events)
    return out, (t_min, t_max)


def _iso(ts: int | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _jsonable(d: dict[str, object], drop: tuple[str, ...] = ()) -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        if k in drop:
            continue
        out[k] = list(v) if isinstance(v, tuple) else dict(v) if isinstance(v, dict) else v
    return out


def dataset_stats(
    tables: dict[str, pl.DataFrame],
    time_range: tuple[int | None, int | None],
    ingested: Ingested,
    counts: dict[str, int],
    iopts: IngestOptions,
    copts: CleanOptions,
) -> dict[str, object]:
    """``stats.json`` from the vocabulary counts (the per-user counts are the user vocabulary's)."""
    lengths = tables["users"][COUNT].to_numpy()
    behaviours = tables["behaviours"]
    t_min, t_max = time_range if ingested.has_time else (None, None)
    return {
        "format_version": FORMAT_VERSION,
        "has_time": ingested.has_time,
        **ingested.counts,
        **counts,
        "events": int(lengths.sum()),
        "users": tables["users"].height,
        "items": tables["items"].height,
        "categories": tables["categories"].height,
        "behaviours": dict(zip(behaviours[S.BEHAVIOUR].to_list(), behaviours[COUNT].to_list(), strict=True)),
        "users_with_one_event": int((lengths == 1).sum()),
        "events_per_user": {"min": int(lengths.min()), "median": float(np.median(lengths)), "max": int(lengths.max())},
        "time_min": t_min,
        "time_max": t_max,
        "time_min_utc": _iso(t_min),
        "time_max_utc": _iso(t_max),
        "sources": [s.as_dict() for s in ingested.sources],
        "mapping": ingested.sources[0].mapping,
        "ingest_options": _jsonable(asdict(iopts), drop=("now", "pseudonym_key")),
        "pseudonymised_users": iopts.pseudonym_key is not None,
        "pseudonym_key_fingerprint": key_fingerprint(iopts.pseudonym_key) if iopts.pseudonym_key else None,
        "clean_options": _jsonable(asdict(copts)),
    }

