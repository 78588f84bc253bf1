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

The same input and options give byte-identical files: nothing time-of-run dependent is written, and
the memory setting (``spill.Resources``, ``--memory-limit``) changes how the work is cut, never the
bytes. The steps run out of core (``outofcore.py``) on the kernels of ``cleaning.py``; progress goes to
stderr, one line per stage, with ``Resources(progress=True)`` (the CLI).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from shopformer.atomic import atomic_write, atomic_write_text, fsync_dir
from shopformer.data.cleaning import (
    CleanOptions,
    EmptyDatasetError,
    clean,
    drop_duplicates,
    encode,
    kcore,
    sort_events,
    time_window,
)
from shopformer.data.ingest import REJECTS_SCHEMA, IngestOptions
from shopformer.data.outofcore import FORMAT_VERSION, build
from shopformer.data.spill import Resources, sink_parts, write_frame
from shopformer.data.vocab import VOCAB_NAMES, Vocabs, vocab_json_chunks

__all__ = [
    "DATASET_FILES",
    "FORMAT_VERSION",
    "CleanOptions",
    "EmptyDatasetError",
    "PrepareResult",
    "Resources",
    "check_output_path",
    "clean",
    "drop_duplicates",
    "encode",
    "kcore",
    "prepare",
    "sort_events",
    "time_window",
    "write_dataset",
    "write_dataset_files",
]

DATASET_FILES = ("events.parquet", "vocab.json", "stats.json", "rejects.parquet")


@dataclass(frozen=True)
class PrepareResult:
    path: Path  # the dataset directory
    stats: dict[str, object]


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
    """Write the four files from memory (``growth.py``); see :func:`write_dataset_files`."""
    tokens = {name: pl.Series(getattr(vocabs, name).tokens, dtype=pl.String) for name in VOCAB_NAMES}
    return write_dataset_files(
        out_dir, lambda p: write_frame(events, p), tokens, stats, lambda p: write_frame(rejects, p), overwrite
    )


def write_dataset_files(
    out_dir: str | Path,
    events: Callable[[Path], None],
    tokens: dict[str, pl.Series],
    stats: dict[str, object],
    rejects: Callable[[Path], None],
    overwrite: bool = False,
) -> Path:
    """Write the four files into a temporary sibling folder, then rename it to ``out_dir``.

    ``events``/``rejects`` write their Parquet file to the path given; ``tokens`` are the vocabularies'
    token columns (padding first)."""
    out = Path(out_dir)
    _check_target(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        atomic_write(tmp / "events.parquet", events)
        atomic_write(tmp / "rejects.parquet", rejects)
        atomic_write(tmp / "vocab.json", lambda p: _write_chunks(p, vocab_json_chunks(tokens)))
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


def _write_chunks(path: Path, chunks: Iterable[str]) -> None:
    with path.open("w", encoding="utf-8") as f:
        f.writelines(chunks)


def prepare(
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    ingest_options: IngestOptions | None = None,
    clean_options: CleanOptions | None = None,
    overwrite: bool = False,
    resources: Resources | None = None,
) -> PrepareResult:
    """Raw files -> dataset directory (see the module docstring). Returns the path and stats.

    Intermediate parts live in a hidden sibling folder of ``out_dir`` (same disk as the output),
    removed before this returns, also on errors."""
    iopts = ingest_options or IngestOptions()
    copts = clean_options or CleanOptions()
    res = resources or Resources()
    out = Path(out_dir)
    _check_target(out, overwrite)  # fail before the work, not after it
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", suffix=".work", dir=out.parent) as work:
        built = build(inputs, Path(work), iopts, copts, res)
        empty = pl.DataFrame(schema=REJECTS_SCHEMA)
        path = write_dataset_files(
            out,
            lambda p: sink_parts(built.events, p, empty),
            built.tokens,
            built.stats,
            lambda p: sink_parts(built.rejects, p, empty),
            overwrite,
        )
    return PrepareResult(path, built.stats)
