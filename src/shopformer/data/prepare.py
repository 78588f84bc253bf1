"""``prepare``: validated canonical events -> cleaned, encoded, atomically written dataset directory.

Steps, in order (each step's drop count lands in ``stats.json``):

1. read + validate (``ingest.py``); bad rows go to ``rejects.parquet`` or, with ``strict``, raise;
2. stable sort by (user, timestamp, order-by column, source file, line, position in line);
3. drop exact duplicate events (all canonical columns equal; the first in that order is kept). Only
   with timestamps: without them two identical events cannot be told apart from a genuine repeat;
4. optional time window ``[start, end)``;
5. optional iterative k-core (``min_user_events``/``min_item_events``) until nothing changes;
6. deterministic encoding (``Vocab.build``) and a final sort by (user_idx, timestamp, ..., row) —
   the order ``Sequences.from_frame`` requires.

Output directory (written to a temporary sibling, then renamed into place, so a crash never leaves a
half-written dataset)::

    events.parquet   canonical columns + user_idx, item_idx, behaviour_idx, category_idx, row, source
    vocab.json       Vocabs.to_json()
    stats.json       counts, behaviour mix, time range, sources with sha256, mapping and options
    rejects.parquet  file, line, column, reason, value, raw (one row per error)

With ``IngestOptions.pseudonym_key`` none of these files holds a raw user id (see ``pseudonym.py``);
``stats.json`` records ``pseudonymised_users`` and the key's fingerprint, never the key.

The same input and options give byte-identical files: nothing time-of-run dependent is written.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl

from shopformer.atomic import atomic_write, atomic_write_text, fsync_dir
from shopformer.data import schema as S
from shopformer.data.ingest import (
    FILE,
    ORDER,
    POS,
    TIME_US,
    DataValidationError,
    IngestOptions,
    IngestResult,
    ingest,
    parse_time_value,
    summarise_errors,
)
from shopformer.data.ledger import drop_forgotten, open_ledger
from shopformer.data.pseudonym import key_fingerprint
from shopformer.data.vocab import PAD_TOKEN, Vocab, Vocabs

FORMAT_VERSION = 1
DATASET_FILES = ("events.parquet", "vocab.json", "stats.json", "rejects.parquet")


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


@dataclass(frozen=True)
class PrepareResult:
    path: Path  # the dataset directory
    stats: dict[str, object]


def _sort_keys(frame: pl.DataFrame, first: str) -> list[str]:
    keys = [first, TIME_US if TIME_US in frame.columns else S.TIME]
    if ORDER in frame.columns:
        keys.append(ORDER)
    return [*keys, FILE, S.ROW, POS]


def sort_events(frame: pl.DataFrame, by: str = S.USER) -> pl.DataFrame:
    """Sort by (``by``, timestamp, order-by, file, line, position): a total, reproducible order.

    The timestamp key is the microsecond one when present, so sub-second order is kept.
    """
    return frame.sort(_sort_keys(frame, by), nulls_last=False, maintain_order=True)


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


def kcore(frame: pl.DataFrame, min_user_events: int, min_item_events: int) -> tuple[pl.DataFrame, int]:
    """Iteratively drop users/items with too few events until both thresholds hold (a fixed point).

    Returns the filtered frame and the number of passes that removed something.
    """
    passes = 0
    while frame.height:
        keep = (pl.len().over(S.USER) >= min_user_events) & (pl.len().over(S.ITEM) >= min_item_events)
        kept = frame.filter(keep)
        if kept.height == frame.height:
            break
        frame, passes = kept, passes + 1
    return frame, passes


def _build_vocab(frame: pl.DataFrame, column: str) -> Vocab:
    if frame[column].null_count() == frame.height:
        return Vocab((PAD_TOKEN,))
    return Vocab.build(frame[column])


def encode(frame: pl.DataFrame) -> tuple[pl.DataFrame, Vocabs]:
    """Dense ids for users, items, behaviours and categories (0 = padding / unknown category)."""
    vocabs = Vocabs(
        users=_build_vocab(frame, S.USER),
        items=_build_vocab(frame, S.ITEM),
        behaviours=_build_vocab(frame, S.BEHAVIOUR),
        categories=_build_vocab(frame, S.CATEGORY),
    )
    if len(vocabs.behaviours) > 127:
        raise DataValidationError(f"{len(vocabs.behaviours)} behaviour types; at most 127 fit behaviour_idx (int8)")
    pairs = (
        (S.USER, S.USER_IDX, vocabs.users),
        (S.ITEM, S.ITEM_IDX, vocabs.items),
        (S.BEHAVIOUR, S.BEHAVIOUR_IDX, vocabs.behaviours),
        (S.CATEGORY, S.CATEGORY_IDX, vocabs.categories),
    )
    encoded = frame.with_columns(
        pl.col(raw)
        .replace_strict(list(v.tokens[1:]), range(1, len(v.tokens)), default=0, return_dtype=S.EVENTS_SCHEMA[dense])
        .fill_null(0)
        .alias(dense)
        for raw, dense, v in pairs
    )
    return encoded, vocabs


def _output_frame(frame: pl.DataFrame, sources: Sequence[str]) -> pl.DataFrame:
    """Final column order and types, sorted by (user_idx, timestamp, ..., row)."""
    names = {i: Path(p).name for i, p in enumerate(sources)}
    ordered = sort_events(frame, by=S.USER_IDX)
    return ordered.select(
        *[pl.col(c).cast(S.EVENTS_SCHEMA[c]) for c in S.EVENTS_SCHEMA],
        pl.col(S.ROW).cast(pl.Int64),
        pl.col(FILE).replace_strict(names, return_dtype=pl.String).alias(S.SOURCE),
    )


def _iso(ts: int | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _stats(
    events: pl.DataFrame,
    vocabs: Vocabs,
    ingested: IngestResult,
    counts: dict[str, int],
    ingest_opts: IngestOptions,
    clean_opts: CleanOptions,
) -> dict[str, object]:
    per_user = events.group_by(S.USER_IDX).len()
    behaviour_counts = events[S.BEHAVIOUR].value_counts()
    by_name = dict(zip(behaviour_counts[S.BEHAVIOUR].to_list(), behaviour_counts["count"].to_list(), strict=True))
    lengths = per_user["len"].to_numpy()
    times = events[S.TIME].to_numpy() if ingested.has_time else None
    t_min = None if times is None else int(times.min())
    t_max = None if times is None else int(times.max())
    return {
        "format_version": FORMAT_VERSION,
        "has_time": ingested.has_time,
        **ingested.counts,
        **counts,
        "events": events.height,
        "users": len(vocabs.users),
        "items": len(vocabs.items),
        "categories": len(vocabs.categories),
        "behaviours": {b: by_name[b] for b in vocabs.behaviours.tokens[1:]},
        "users_with_one_event": int((per_user["len"] == 1).sum()),
        "events_per_user": {
            "min": int(lengths.min()),
            "median": float(np.median(lengths)),
            "max": int(lengths.max()),
        },
        "time_min": t_min,
        "time_max": t_max,
        "time_min_utc": _iso(t_min),
        "time_max_utc": _iso(t_max),
        "sources": [s.as_dict() for s in ingested.sources],
        "mapping": ingested.sources[0].mapping,
        "ingest_options": _jsonable(asdict(ingest_opts), drop=("now", "pseudonym_key")),
        "pseudonymised_users": ingest_opts.pseudonym_key is not None,
        "pseudonym_key_fingerprint": key_fingerprint(ingest_opts.pseudonym_key) if ingest_opts.pseudonym_key else None,
        "clean_options": _jsonable(asdict(clean_opts)),
    }


def _jsonable(d: dict[str, object], drop: tuple[str, ...] = ()) -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        if k in drop:
            continue
        out[k] = list(v) if isinstance(v, tuple) else dict(v) if isinstance(v, dict) else v
    return out


def _require_events(frame: pl.DataFrame, step: str, before: int) -> None:
    if frame.height == 0:
        raise EmptyDatasetError(f"no events left after {step} ({before} events before it); relax the filter")


def clean(
    ingested: IngestResult, options: CleanOptions, time_format: str | None = None
) -> tuple[pl.DataFrame, dict[str, int]]:
    """Sort, de-duplicate, window and k-core filter the valid events; returns the counts dropped."""
    frame = ingested.events
    if frame.height == 0:
        first = f"; first: {summarise_errors(ingested.rejects)}" if ingested.rejects.height else ""
        raise EmptyDatasetError(f"no valid events: all {ingested.counts['rows_read']} rows were rejected{first}")
    counts = {"duplicates_dropped": 0, "outside_time_window": 0, "kcore_dropped": 0, "kcore_passes": 0}
    frame = sort_events(frame)
    if options.dedup and ingested.has_time:
        before = frame.height
        frame = drop_duplicates(frame)
        counts["duplicates_dropped"] = before - frame.height
    if options.forget_ledger is not None:
        ledger = open_ledger(options.forget_ledger, create=False)
        time_col = S.TIME if ingested.has_time else None
        frame, counts["forgotten_dropped"] = drop_forgotten(frame, ledger, S.USER, time_col)
        _require_events(frame, f"the deletion ledger {options.forget_ledger}",
                        frame.height + counts["forgotten_dropped"])
    if options.start is not None or options.end is not None:
        if not ingested.has_time:
            raise DataValidationError("--start/--end need a timestamp column")
        start = None if options.start is None else parse_time_value(options.start, time_format)
        end = None if options.end is None else parse_time_value(options.end, time_format)
        before = frame.height
        frame = time_window(frame, start, end)
        counts["outside_time_window"] = before - frame.height
        _require_events(frame, f"the time window [{options.start}, {options.end})", before)
    if options.min_user_events > 1 or options.min_item_events > 1:
        before = frame.height
        frame, counts["kcore_passes"] = kcore(frame, options.min_user_events, options.min_item_events)
        counts["kcore_dropped"] = before - frame.height
        _require_events(
            frame,
            f"the k-core filter (min_user_events={options.min_user_events}, min_item_events={options.min_item_events})",
            before,
        )
    return frame, counts


def _write_parquet(frame: pl.DataFrame) -> Callable[[Path], None]:
    return lambda p: frame.write_parquet(p, compression="zstd", statistics=True)


def check_output_path(out: Path) -> None:
    """Fail before any work when the directory ``out`` cannot be created or written: a file in the
    way, a parent that is a file, no permission."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory")
    parent = out if out.exists() else out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise NotADirectoryError(f"{parent} is not a directory (cannot create {out})")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"{parent}: permission denied (cannot create {out})")


def _check_target(out_dir: Path, overwrite: bool) -> None:
    """Refuse to replace anything but an empty folder or, with ``overwrite``, an earlier dataset."""
    check_output_path(out_dir)
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a directory")
    entries = [p.name for p in out_dir.iterdir()]
    if not entries:
        return
    if not overwrite:
        raise FileExistsError(f"{out_dir} already exists; pass overwrite=True (--overwrite) to replace it")
    if "stats.json" not in entries:
        raise FileExistsError(f"{out_dir} is not a shopformer dataset (no stats.json); refusing to replace it")


def write_dataset(
    out_dir: str | Path,
    events: pl.DataFrame,
    vocabs: Vocabs,
    stats: dict[str, object],
    rejects: pl.DataFrame,
    overwrite: bool = False,
) -> Path:
    """Write the four files into a temporary sibling folder, then rename it to ``out_dir``."""
    out = Path(out_dir)
    _check_target(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        atomic_write(tmp / "events.parquet", _write_parquet(events))
        atomic_write(tmp / "rejects.parquet", _write_parquet(rejects))
        atomic_write_text(tmp / "vocab.json", vocabs.to_json())
        atomic_write_text(tmp / "stats.json", json.dumps(stats, indent=2, sort_keys=True) + "\n")
        _normal_permissions(tmp)
        fsync_dir(tmp)
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _normal_permissions(folder: Path) -> None:
    """mkdtemp/mkstemp create owner-only entries; give the dataset the usual umask-based modes."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for f in folder.iterdir():
        f.chmod(0o666 & ~umask)


def _swap_into_place(tmp: Path, out: Path) -> None:
    """Rename ``tmp`` to ``out``; an old ``out`` is moved aside first and deleted afterwards."""
    old: Path | None = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
        os.replace(out, old / out.name)
    os.replace(tmp, out)
    fsync_dir(out.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def prepare(
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    ingest_options: IngestOptions | None = None,
    clean_options: CleanOptions | None = None,
    overwrite: bool = False,
) -> PrepareResult:
    """Raw files -> dataset directory (see the module docstring). Returns the path and stats."""
    iopts = ingest_options or IngestOptions()
    copts = clean_options or CleanOptions()
    _check_target(Path(out_dir), overwrite)  # fail before the work, not after it
    ingested = ingest(inputs, iopts)
    frame, counts = clean(ingested, copts, iopts.time_format)
    encoded, vocabs = encode(frame)
    events = _output_frame(encoded, [s.path for s in ingested.sources])
    stats = _stats(events, vocabs, ingested, counts, iopts, copts)
    out = write_dataset(out_dir, events, vocabs, stats, ingested.rejects, overwrite)
    return PrepareResult(out, stats)
