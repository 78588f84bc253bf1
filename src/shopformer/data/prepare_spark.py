"""``shopformer prepare --engine spark``: the same dataset directory, with the heavy steps on PySpark.

* **validation** is not re-implemented: Spark reads the lines with their 1-based numbers
  (``textFile().zipWithIndex()``) and its executors run the Polars validator itself on batches of
  lines (``mapInArrow`` -> ``readers.DelimitedLayout.fields`` -> ``ingest.validate_events``), so the
  rejects, reasons and typed values are those of the Polars engine;
* **sort + dedupe, deletion ledger, time window, iterative k-core and id encoding** run as Spark
  DataFrame operations with the same keys and tie rules (nulls first, strings by bytes, vocabularies
  by count then raw id);
* the driver streams Spark's globally sorted parts into ``events.parquet`` with the Polars writer
  (``spill.sink_parts``), so the files are byte-identical to ``--engine polars`` on the same input
  (``tests/test_prepare_spark.py``).

Delimited text (CSV/TSV, UTF-8) only; other formats: ``--engine polars``. ``SHOPFORMER_SPARK_MASTER``
sets the master (default: what ``spark-submit`` gave, else ``local[*]``); ``SHOPFORMER_SPARK_WORK`` the
work folder, which executors write and the driver reads (a shared mount on a cluster). How to submit:
docs/scale-data.md. ``pyspark`` is imported only here, only when this engine is used.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa

from shopformer.data import schema as S
from shopformer.data.cleaning import (
    CODED,
    CleanOptions,
    check_kcore,
    check_left,
    ledger_of,
    no_valid_events,
    output_frame,
    window_bounds,
)
from shopformer.data.decoding import compression
from shopformer.data.ingest import (
    FILE,
    ORDER,
    POS,
    RAW,
    REJECTS_SCHEMA,
    TIME_US,
    DataValidationError,
    IngestOptions,
    summarise_errors,
    validate_events,
)
from shopformer.data.ledger import keyed_hash
from shopformer.data.outofcore import Ingested, dataset_stats
from shopformer.data.prepare import PrepareResult, Resources, _check_target, write_dataset_files
from shopformer.data.raw import RawEvents, ScannedEvents
from shopformer.data.readers import (
    DelimitedLayout,
    _Input,
    check_non_empty,
    delimited_layout,
    detect_format,
    expand_inputs,
    scan_events,
    tidy_lines,
)
from shopformer.data.spill import Progress, sink_parts, write_part
from shopformer.data.vocab import COUNT, PAD_TOKEN

SPARK_MASTER_ENV = "SHOPFORMER_SPARK_MASTER"
SPARK_WORK_ENV = "SHOPFORMER_SPARK_WORK"
_KIND = "_kind"  # 0 event, 1 reject, 2 per-batch counts
_REJECT = ("r_file", "r_line", "r_column", "r_reason", "r_value", "r_raw", "r_seq")
_COUNTS = ("rows_read", "blank_lines", "rows_rejected", "errors")
_EVENT_TYPES = {FILE: pa.int32(), S.ROW: pa.int64(), POS: pa.int32(), S.USER: pa.string(), S.ITEM: pa.string(),
                S.TIME: pa.int64(), S.BEHAVIOUR: pa.string(), S.SESSION: pa.string(), S.CATEGORY: pa.string(),
                S.PRICE: pa.float64(), TIME_US: pa.int64(), ORDER: pa.float64()}


def _schema() -> pa.Schema:
    reject = [pa.field(c, pa.int64() if c in ("r_line", "r_seq") else pa.string()) for c in _REJECT]
    counts = [pa.field(c, pa.int64()) for c in _COUNTS]
    return pa.schema([pa.field(_KIND, pa.int8()), *[pa.field(k, v) for k, v in _EVENT_TYPES.items()], *reject, *counts])


_SQL_TYPES = {pa.int8(): "tinyint", pa.int32(): "int", pa.int64(): "bigint", pa.float64(): "double",
              pa.string(): "string"}


def _ddl(schema: pa.Schema) -> str:
    """Spark's DDL string of an Arrow schema (of the types used here)."""
    return ", ".join(f"`{f.name}` {_SQL_TYPES[f.type]}" for f in schema)


def _validator(layouts: dict[int, DelimitedLayout], scanned: ScannedEvents,
               opts: IngestOptions) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The executors' function: batches of (raw, row, _file) lines -> events, rejects and counts."""
    schema = _schema()
    sources, present, has_order = scanned.sources, scanned.present, scanned.has_order

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            lines = pl.from_arrow(batch)
            assert isinstance(lines, pl.DataFrame)
            for key, part in lines.partition_by(FILE, as_dict=True).items():
                idx = int(key[0])
                frame = layouts[idx].fields(tidy_lines(part.lazy().select(RAW, S.ROW), idx)).collect()
                result = validate_events(RawEvents(frame, sources, present, has_order), opts)
                rejects = result.rejects.with_row_index("r_seq").select(
                    pl.lit(idx, pl.Int32).alias(FILE), *[pl.col(c[2:] if c != "r_line" else "line").alias(c)
                                                         for c in _REJECT if c != "r_seq"], "r_seq")
                counts = pl.DataFrame({FILE: [idx], **{c: [result.counts[c]] for c in _COUNTS}})
                out = pl.concat([result.events.with_columns(pl.lit(0).alias(_KIND)),
                                 rejects.with_columns(pl.lit(1).alias(_KIND)),
                                 counts.with_columns(pl.lit(2).alias(_KIND))], how="diagonal_relaxed")
                table = out.to_arrow()
                columns = [table.column(f.name).cast(f.type) if f.name in table.column_names
                           else pa.nulls(table.num_rows, f.type) for f in schema]
                yield from pa.Table.from_arrays(columns, schema=schema).to_batches()

    return run


def _session(resources: Resources) -> Any:
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # local workers: this interpreter (has shopformer)
    builder = SparkSession.builder.appName("shopformer-prepare")
    master = os.environ.get(SPARK_MASTER_ENV)
    if master:
        builder = builder.master(master)
    if (master or "local").startswith("local"):  # one machine: few shuffle partitions, no web UI
        builder = builder.config("spark.sql.shuffle.partitions", "4").config("spark.ui.enabled", "false")
    return builder.config("spark.sql.execution.arrow.maxRecordsPerBatch", str(resources.batch_rows)).getOrCreate()


def prepare_spark(
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    ingest_options: IngestOptions | None = None,
    clean_options: CleanOptions | None = None,
    overwrite: bool = False,
    resources: Resources | None = None,
) -> PrepareResult:
    """``prepare`` on Spark (see the module docstring): same arguments, same dataset directory."""
    iopts = ingest_options or IngestOptions()
    copts = clean_options or CleanOptions()
    res = resources or Resources()
    out = Path(out_dir)
    _check_target(out, overwrite)
    files = expand_inputs(inputs, iopts.format)
    if any(detect_format(f, iopts.format) not in ("csv", "tsv") or compression(f) for f in files) \
            or iopts.encoding.lower() not in ("utf-8", "utf8"):
        raise DataValidationError("--engine spark reads uncompressed UTF-8 CSV/TSV files; use --engine polars "
                                  "for other inputs")
    window_bounds(copts, True, iopts.time_format)
    spark = _session(res)
    base = os.environ.get(SPARK_WORK_ENV) or str(out.parent)
    Path(base).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", suffix=".spark", dir=base) as work:
        built = _build(spark, files, Path(work), iopts, copts, res)
        # no rejects: an empty file with the rejects' columns, as the Polars engine writes
        no_rejects = pl.DataFrame(schema=REJECTS_SCHEMA)
        path = write_dataset_files(out, lambda p: sink_parts(built[0], p, pl.DataFrame()), built[1], built[2],
                                   lambda p: sink_parts(built[3], p, no_rejects), overwrite)
    return PrepareResult(path, built[2])


def _build(spark: Any, files: list[str], work: Path, iopts: IngestOptions, copts: CleanOptions,
           res: Resources) -> tuple[list[Path], dict[str, pl.Series], dict[str, object], list[Path]]:
    from pyspark.sql import functions as F

    progress = Progress(res.progress)
    now = iopts.now if iopts.now is not None else int(datetime.now(UTC).timestamp())
    with scan_events(files, iopts) as scanned:
        layouts = {i: delimited_layout(_Input(i, f), detect_format(f, iopts.format), iopts)[0]
                   for i, f in enumerate(files)}
    lines = None
    for i, f in enumerate(files):
        rdd = spark.sparkContext.textFile(f).zipWithIndex().map(lambda t, i=i: (t[0], t[1] + 1, i))
        part = spark.createDataFrame(rdd, f"{RAW} string, {S.ROW} long, {FILE} int")
        lines = part if lines is None else lines.unionAll(part)
    assert lines is not None
    checked = lines.mapInArrow(_validator(layouts, scanned, replace(iopts, strict=False, now=now)), _ddl(_schema()))
    checked = checked.localCheckpoint()
    counts_rows = checked.filter(F.col(_KIND) == 2).groupBy(FILE).agg(*[F.sum(c).alias(c) for c in _COUNTS]).collect()
    check_non_empty({r[FILE] for r in counts_rows if r["rows_read"] > 0}, scanned.sources)
    totals = {c: int(sum(r[c] for r in counts_rows)) for c in _COUNTS}
    rejects = _rejects(checked.filter(F.col(_KIND) == 1), work)
    if iopts.strict and rejects:
        table = pl.read_parquet(rejects)
        raise DataValidationError(summarise_errors(table), table)
    valid = totals["rows_read"] - totals["rows_rejected"]
    if valid == 0:
        raise no_valid_events(totals["rows_read"], pl.scan_parquet(rejects) if rejects else pl.DataFrame())
    events = checked.filter(F.col(_KIND) == 0).select(*[c for c in _EVENT_TYPES if c != ORDER or scanned.has_order])
    if not scanned.has_time:
        events = events.drop(TIME_US)
    progress.done("read + validate (spark)", totals["rows_read"])
    events, counts = _clean(events, copts, scanned.has_time, iopts.time_format, valid)
    progress.done("sort + dedupe, k-core (spark)", valid)
    tables, encoded = _encode(spark, events, work)
    sorted_dir = work / "sorted"
    order = [ORDER] if scanned.has_order else []
    keys = [S.USER_IDX, TIME_US if scanned.has_time else S.TIME, *order, FILE, S.ROW, POS]
    encoded.orderBy(*keys).write.parquet(str(sorted_dir))
    parts = []
    names = [s.path for s in scanned.sources]
    t_min: int | None = None
    t_max: int | None = None
    for k, p in enumerate(sorted(sorted_dir.glob("part-*.parquet"))):
        frame = output_frame(pl.read_parquet(p), names)
        if scanned.has_time and frame.height:
            lo, hi = (int(v) for v in frame.select(pl.col(S.TIME).min(), pl.col(S.TIME).max().alias("hi")).row(0))
            t_min, t_max = (lo, hi) if t_min is None or t_max is None else (min(t_min, lo), max(t_max, hi))
        parts.append(write_part(frame, work / "final" / f"{k:06d}.parquet"))
    progress.done("encode + sort (spark)", int(tables["users"][COUNT].sum()))
    ingested = Ingested([], [], rejects, scanned.sources, scanned.has_time, totals)
    stats = dataset_stats(tables, (t_min, t_max), ingested, counts, iopts, copts)
    tokens = {name: pl.concat([pl.Series([PAD_TOKEN]), tables[name][raw].cast(pl.String)]) for raw, _, name in CODED}
    return parts, tokens, stats, rejects


def _rejects(frame: Any, work: Path) -> list[Path]:
    """The rejects in file/line order, as Parquet parts with the Polars engine's columns."""
    from pyspark.sql import functions as F

    cols = [F.col(c).alias(c[2:] if c != "r_line" else "line") for c in _REJECT if c != "r_seq"]
    target = work / "rejects"
    frame.orderBy(FILE, "r_line", "r_seq").select(*cols).coalesce(1).write.parquet(str(target))
    parts = sorted(target.glob("part-*.parquet"))
    table = pl.read_parquet(parts) if parts else pl.DataFrame()
    return [write_part(table, work / "rejects.parquet")] if table.height else []


def _clean(events: Any, copts: CleanOptions, has_time: bool, time_format: str | None,
           valid: int) -> tuple[Any, dict[str, int]]:
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    counts = {"duplicates_dropped": 0, "outside_time_window": 0, "kcore_dropped": 0, "kcore_passes": 0}
    cols = events.columns
    if copts.dedup and has_time:
        subset = [c for c in S.CANONICAL if c != S.TIME] + [c for c in (TIME_US, ORDER) if c in cols]
        keys = [S.USER, TIME_US, *([ORDER] if ORDER in cols else []), FILE, S.ROW, POS]
        rank = F.row_number().over(Window.partitionBy(*subset).orderBy(*keys))
        events = events.withColumn("_rn", rank).filter(F.col("_rn") == 1).drop("_rn").localCheckpoint()
        counts["duplicates_dropped"] = valid - events.count()
    left = valid - counts["duplicates_dropped"]
    ledger = ledger_of(copts)
    if ledger is not None:
        hits = [(u, at) for (u,) in events.select(S.USER).distinct().collect()
                if ledger.forgotten and (at := ledger.forgotten.get(keyed_hash(ledger.salt, u))) is not None]
        counts["forgotten_dropped"] = 0
        if hits:
            gone = events.sparkSession.createDataFrame(hits, f"{S.USER} string, _at long")
            events = events.join(gone, S.USER, "left")
            keep = F.col("_at").isNull() | ((F.col(S.TIME) > F.col("_at")) if has_time else F.lit(False))
            events = events.filter(keep).drop("_at").localCheckpoint()
            counts["forgotten_dropped"] = left - events.count()
            left -= counts["forgotten_dropped"]
    window = window_bounds(copts, has_time, time_format)
    if window is not None:
        keep = F.lit(True)
        if window[0] is not None:
            keep &= F.col(S.TIME) >= window[0]
        if window[1] is not None:
            keep &= F.col(S.TIME) < window[1]
        events = events.filter(keep).localCheckpoint()
        counts["outside_time_window"] = left - events.count()
    check_left(valid, counts, copts)
    if copts.kcore:
        before = left = events.count()
        while left:
            items = events.groupBy(S.ITEM).count()
            users = events.groupBy(S.USER).count()
            if (items.agg(F.min("count")).first()[0] >= copts.min_item_events
                    and users.agg(F.min("count")).first()[0] >= copts.min_user_events):
                break
            kept_items = items.filter(F.col("count") >= copts.min_item_events).select(S.ITEM)
            kept_users = users.filter(F.col("count") >= copts.min_user_events).select(S.USER)
            events = events.join(kept_items, S.ITEM, "left_semi").join(kept_users, S.USER, "left_semi")
            events = events.localCheckpoint()
            counts["kcore_passes"] += 1
            left = events.count()
        counts["kcore_dropped"] = before - left
        check_kcore(left, copts, before)
    return events, counts


def _encode(spark: Any, events: Any, work: Path) -> tuple[dict[str, pl.DataFrame], Any]:
    """Vocabularies (count desc, raw id asc) ranked in Spark, joined in; the tables read back with Polars."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    tables: dict[str, pl.DataFrame] = {}
    for raw, dense, name in CODED:
        counted = events.filter(F.col(raw).isNotNull()).groupBy(raw).agg(F.count(F.lit(1)).alias(COUNT))
        ranked = counted.withColumn(dense, F.row_number().over(Window.orderBy(F.desc(COUNT), F.asc(raw))).cast("int"))
        target = work / f"vocab_{name}"
        ranked.orderBy(dense).coalesce(1).write.parquet(str(target))
        table = pl.read_parquet(sorted(target.glob("part-*.parquet"))) if list(target.glob("part-*.parquet")) else None
        if table is None:
            table = pl.DataFrame(schema={raw: pl.String, COUNT: pl.Int64, dense: pl.Int32})
        if dense == S.BEHAVIOUR_IDX and table.height > 127:
            raise DataValidationError(f"{table.height} behaviour types; at most 127 fit behaviour_idx (int8)")
        tables[name] = table.sort(dense)
        codes = spark.read.parquet(str(target)).select(raw, dense) if table.height else None
        if codes is not None:
            events = events.join(F.broadcast(codes) if table.height < 1_000_000 else codes, raw, "left")
        else:
            events = events.withColumn(dense, F.lit(None).cast("int"))
        events = events.withColumn(dense, F.coalesce(F.col(dense), F.lit(0)))
    return tables, events
