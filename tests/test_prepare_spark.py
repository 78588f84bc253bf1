"""`prepare --engine spark` (local mode): the same dataset directory as the Polars engine."""

from __future__ import annotations

import gzip
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from shopformer.data.ingest import DataValidationError, IngestOptions
from shopformer.data.prepare import DATASET_FILES, CleanOptions, prepare

pyspark = pytest.importorskip("pyspark", reason="the `spark` extra (pyspark) is not installed")
if shutil.which("java") is None:
    pytest.skip("Spark needs Java (17) on PATH", allow_module_level=True)

from shopformer.data.prepare_spark import SPARK_MASTER_ENV, prepare_spark  # noqa: E402

NOW = 1_700_000_000
ROWS = """user_id,item_id,timestamp,behaviour,category_id,price
u1,i1,1600000000,pv,c1,1.5
u1,i1,1600000000,pv,c1,1.5
u1,i2,1600000003,cart,c1,2
u2,i2,notatime,pv,c2,2
u2,,1600000001,buy,c2,3

u2,i3,2020-01-01T00:00:00Z,cart,,x
u3,i1,1600000005.5,pv,c1,
"u4","i,5",1600000009,pv,c3,1
u4,i5,1600000009
u10,i1,1600000004,buy,c1,9
u10,i2,1600000002,pv,c1,
u3,i2,1600000001,pv,,
u4,i2,1600000012,fav,c2,4
"""


@pytest.fixture(scope="module")
def spark_local(monkeypatch_module: pytest.MonkeyPatch) -> Iterator[None]:
    """One local[2] SparkSession for the whole module (started by the first test, stopped at the end)."""
    from pyspark.sql import SparkSession

    monkeypatch_module.setenv(SPARK_MASTER_ENV, "local[2]")
    yield
    active = SparkSession.getActiveSession()
    if active is not None:
        active.stop()


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def _files(out: Path) -> dict[str, bytes]:
    return {name: (out / name).read_bytes() for name in DATASET_FILES}


KCORE = CleanOptions(min_user_events=2, min_item_events=2, start=1600000001)


@pytest.mark.parametrize("copts", [CleanOptions(), KCORE],
                         ids=["plain", "kcore+window"])
def test_spark_writes_the_polars_dataset(spark_local: None, copts: CleanOptions, tmp_path: Path) -> None:
    src = tmp_path / "e.csv"
    src.write_text(ROWS)
    opts = IngestOptions(now=NOW)
    polars = _files(prepare([src], tmp_path / "polars", opts, copts).path)
    spark = _files(prepare_spark([src], tmp_path / "spark", opts, copts).path)
    assert spark["vocab.json"] == polars["vocab.json"]
    assert spark["events.parquet"] == polars["events.parquet"]
    assert spark["rejects.parquet"] == polars["rejects.parquet"]
    assert json.loads(spark["stats.json"]) == json.loads(polars["stats.json"])


def test_spark_demo_slice_and_errors(spark_local: None, tmp_path: Path) -> None:
    demo = Path(__file__).resolve().parents[1] / "data" / "demo" / "taobao_head300.csv"
    opts = IngestOptions(columns=("user_id", "item_id", "category_id", "behaviour", "timestamp"))
    polars = _files(prepare([demo], tmp_path / "polars", opts, CleanOptions(min_item_events=2)).path)
    assert _files(prepare_spark([demo], tmp_path / "spark", opts, CleanOptions(min_item_events=2)).path) == polars
    bad = tmp_path / "bad.csv"
    bad.write_text(ROWS)
    with pytest.raises(DataValidationError, match=r"bad.csv:5: timestamp: unparsable timestamp 'notatime' \(\+"):
        prepare_spark([bad], tmp_path / "strict", IngestOptions(now=NOW, strict=True))
    with pytest.raises(DataValidationError, match="--engine spark reads uncompressed UTF-8 CSV/TSV"):
        prepare_spark([Path(__file__).resolve().parents[1] / "data" / "demo" / "beauty_head.txt"], tmp_path / "b",
                      IngestOptions(format="sequences"))
    packed = tmp_path / "demo.csv.gz"
    packed.write_bytes(gzip.compress(demo.read_bytes()))
    with pytest.raises(DataValidationError, match="--engine spark reads uncompressed UTF-8 CSV/TSV"):
        prepare_spark([packed], tmp_path / "gz", opts)
