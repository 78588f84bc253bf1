"""Bounded memory for ``prepare``: the memory setting, progress lines, and Parquet parts on disk.

:class:`Resources` turns one setting (``--memory-limit``) into the number of rows held in memory at
once: ``prepare`` reads and validates that many rows per batch (a quarter of them: the raw lines and
error columns of a batch take several times the space of the typed events), cleans buckets of users of
about that many events, and sorts the final file in ranges of that many. Everything between the steps
is Parquet on disk (:func:`write_part`), and the dataset's files are written by streaming the parts
(:func:`sink_parts`) with a fixed row-group size, so the bytes of ``events.parquet`` do not depend on
how the work was cut.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import polars as pl

ROW_GROUP_ROWS = 1 << 17  # rows per Parquet row group of every written file
BYTES_PER_ROW = 640  # peak process memory per event of a chunk (measured: bench/scale.py)
MIN_CHUNK_ROWS = 50_000
DEFAULT_MEMORY_LIMIT = 2 << 30
_UNITS = {"": 1 << 20, "b": 1, "k": 1 << 10, "kb": 1 << 10, "m": 1 << 20, "mb": 1 << 20, "g": 1 << 30, "gb": 1 << 30}


def parse_memory(text: str) -> int:
    """Bytes of ``4GB``, ``512MB``, ``1.5g`` (a bare number is MB)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    unit = m.group(2).lower() if m else ""
    if m is None or unit not in _UNITS:
        raise ValueError(f"memory limit {text!r}: expected a size like 4GB, 512MB or 1.5g")
    return int(float(m.group(1)) * _UNITS[unit])


@dataclass(frozen=True)
class Resources:
    """How much ``prepare`` may hold at once. ``chunk_rows`` overrides the limit (tests, benchmarks)."""

    memory_limit: int = DEFAULT_MEMORY_LIMIT
    chunk_rows: int | None = None
    progress: bool = False  # one line per stage on stderr

    @property
    def rows(self) -> int:
        """Events per bucket / sorted range."""
        return self.chunk_rows or max(MIN_CHUNK_ROWS, self.memory_limit // BYTES_PER_ROW)

    @property
    def batch_rows(self) -> int:
        """Raw rows read and validated per batch."""
        return max(1, self.rows // 4)


@dataclass
class Progress:
    """``prepare: <stage>: N rows in S s (R rows/s)`` lines on a stream, when enabled."""

    enabled: bool
    stream: TextIO = field(default_factory=lambda: sys.stderr)
    started: float = field(default_factory=time.perf_counter)

    def start(self) -> None:
        self.started = time.perf_counter()

    def done(self, stage: str, rows: int, note: str = "") -> None:
        seconds = time.perf_counter() - self.started
        if self.enabled:
            rate = rows / seconds if seconds > 0 else float("inf")
            extra = f"; {note}" if note else ""
            print(f"prepare: {stage}: {rows:,} rows in {seconds:.1f} s ({rate:,.0f} rows/s){extra}",
                  file=self.stream, flush=True)
        self.started = time.perf_counter()


def write_part(frame: pl.DataFrame, path: Path) -> Path:
    """One intermediate part (fast compression: it is read once or twice and deleted)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.write_parquet(path, compression="lz4", statistics=False)
    return path


def write_frame(frame: pl.DataFrame, path: Path) -> None:
    """A dataset file from memory: the same bytes as :func:`sink_parts` of the same rows."""
    frame.write_parquet(path, compression="zstd", statistics=True, row_group_size=ROW_GROUP_ROWS)


def sink_parts(parts: Sequence[Path], path: Path, empty: pl.DataFrame) -> None:
    """A dataset file streamed from ``parts`` in order (``empty``: the frame to write when there are none)."""
    if not parts:
        write_frame(empty, path)
        return
    pl.scan_parquet(list(parts)).sink_parquet(
        path, compression="zstd", statistics=True, row_group_size=ROW_GROUP_ROWS, maintain_order=True
    )


def read_parts(parts: Sequence[Path]) -> pl.DataFrame:
    return pl.read_parquet(list(parts)) if parts else pl.DataFrame()
