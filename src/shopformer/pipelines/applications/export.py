"""Atomic Parquet / CSV output of per-user or per-series tables; Parquet streamed in row groups."""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from shopformer.atomic import atomic_write


def check_output(path: Path) -> None:
    """Refuse an output format we do not write, before any work is done."""
    if path.suffix not in (".parquet", ".csv"):
        raise ValueError(f"{path}: the output must end in .parquet or .csv")


def write_frame(frame: pl.DataFrame, path: Path) -> Path:
    """``frame`` to ``path`` (.parquet or .csv by suffix), atomically."""
    check_output(path)
    if path.suffix == ".csv":
        return atomic_write(path, lambda p: frame.write_csv(p))
    return atomic_write(path, lambda p: frame.write_parquet(p))


class ParquetStream:
    """Write record batches as row groups of one Parquet file; the file appears (atomically, by
    rename) only when the stream closes without error."""

    def __init__(self, path: Path, schema: pa.Schema) -> None:
        if path.suffix != ".parquet":
            raise ValueError(f"{path}: streamed output must end in .parquet")
        self.path, self.schema = path, schema
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = path.with_name(f".{path.name}.partial")
        self.writer = pq.ParquetWriter(self.tmp, schema)
        self.rows = 0

    def write(self, columns: dict[str, pa.Array]) -> None:
        table = pa.Table.from_pydict(columns, schema=self.schema)
        self.writer.write_table(table)  # one row group per call
        self.rows += table.num_rows

    def __enter__(self) -> ParquetStream:
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        self.writer.close()
        if kind is None:  # same folder: the rename is atomic, as in atomic_write
            with open(self.tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(self.tmp, self.path)
        self.tmp.unlink(missing_ok=True)
