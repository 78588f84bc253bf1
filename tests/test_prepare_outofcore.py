"""Out-of-core `prepare`: the same bytes as the in-memory reference whatever the memory setting."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from shopformer.data import vocab as vocab_module
from shopformer.data.cleaning import clean, encode, output_frame
from shopformer.data.ingest import DataValidationError, IngestOptions, ingest
from shopformer.data.prepare import DATASET_FILES, CleanOptions, EmptyDatasetError, Resources, prepare
from shopformer.data.spill import Progress, parse_memory, write_frame
from shopformer.data.vocab import VOCAB_NAMES, Vocab, Vocabs, vocab_json_chunks

NOW = 1_700_000_000
OPTS = IngestOptions(now=NOW)


def _log(path: Path, seed: int, users: int, rows: int) -> Path:
    """A CSV with repeats, exact duplicates, ties, bad rows and a blank line."""
    rng = np.random.default_rng(seed)
    u = rng.integers(0, users, rows)
    item = (rng.zipf(1.6, rows) % 300).astype(str)
    t = 1_600_000_000 + rng.integers(0, 5_000, rows)
    beh = rng.choice(["pv", "pv", "pv", "cart", "buy"], rows)
    lines = ["user_id,item_id,timestamp,behaviour,category_id"]
    lines += [f"u{a},i{b},{c},{d},c{int(b) % 7}" for a, b, c, d in zip(u, item, t, beh, strict=True)]
    lines += lines[5:40]  # exact duplicates
    lines += ["u1,i1,notatime,pv,c1", "u2,,1600000001,pv,c2", "", "u3,i3,1600000002", "u4,i4,-5,pv,c4"]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    d = tmp_path_factory.mktemp("raw")
    return [_log(d / "a.csv", 0, 40, 900), _log(d / "b.csv", 1, 50, 600)]


def _reference(inputs: list[Path], copts: CleanOptions, out: Path) -> dict[str, bytes]:
    """The in-memory path: everything in one frame, written from memory."""
    ingested = ingest(inputs, OPTS)
    frame, _ = clean(ingested, copts)
    encoded, vocabs = encode(frame)
    out.mkdir()
    write_frame(output_frame(encoded, [str(p) for p in inputs]), out / "events.parquet")
    write_frame(ingested.rejects, out / "rejects.parquet")
    return {
        "events.parquet": (out / "events.parquet").read_bytes(),
        "rejects.parquet": (out / "rejects.parquet").read_bytes(),
        "vocab.json": vocabs.to_json().encode(),
    }


def _files(out: Path) -> dict[str, bytes]:
    return {name: (out / name).read_bytes() for name in DATASET_FILES}


@pytest.mark.parametrize(
    "copts",
    [CleanOptions(), CleanOptions(min_user_events=20, min_item_events=3, start="2020-09-13T12:30:00Z")],
    ids=["plain", "kcore+window"],
)
def test_same_bytes_as_in_memory_reference_at_any_chunk_size(
    inputs: list[Path], copts: CleanOptions, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ref = _reference(inputs, copts, tmp_path / "ref")
    whole = _files(prepare(inputs, tmp_path / "whole", OPTS, copts).path)
    # 400 rows per chunk: 100-row batches, several shards, buckets and sorted ranges
    chunked = prepare(inputs, tmp_path / "chunked", OPTS, copts, resources=Resources(chunk_rows=400, progress=True))
    lines = capsys.readouterr().err.splitlines()
    assert {k: whole[k] for k in ref} == ref
    assert _files(chunked.path) == whole
    stats = json.loads(whole["stats.json"])
    assert stats["rows_rejected"] == 8 and stats["duplicates_dropped"] >= 35
    assert (stats["kcore_passes"] >= 1) == (copts.min_user_events > 0)
    assert [line.split(":")[1].strip() for line in lines][:2] == ["read + validate", "sort + dedupe"]
    assert all("rows/s" in line for line in lines) and any("ranges" in line for line in lines)
    buckets = next(line for line in lines if "sort + dedupe" in line)
    assert int(buckets.rsplit(";", 1)[1].split()[0]) > 1  # the work really was cut into several buckets


def test_errors_are_the_same_at_any_chunk_size(inputs: list[Path], tmp_path: Path) -> None:
    small = Resources(chunk_rows=600)
    strict = IngestOptions(now=NOW, strict=True)
    messages = []
    for res in (None, small):
        with pytest.raises(DataValidationError) as err:
            prepare(inputs, tmp_path / "s", strict, resources=res)
        assert err.value.errors is not None and err.value.errors.height == 8
        messages.append(str(err.value))
    assert messages[0] == messages[1] and "a.csv:937: timestamp: unparsable timestamp" in messages[0]
    too_strict = CleanOptions(min_user_events=10_000)
    with pytest.raises(EmptyDatasetError, match="after the k-core filter"):
        prepare(inputs, tmp_path / "k", OPTS, too_strict, resources=small)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no work or temp folders left


def test_all_rows_rejected_names_the_first(tmp_path: Path) -> None:
    src = tmp_path / "e.csv"
    src.write_text("user_id,item_id,timestamp\n" + "u,i,bad\n" * 50)
    with pytest.raises(EmptyDatasetError, match=r"all 50 rows were rejected; first: .*e.csv:2: timestamp"):
        prepare([src], tmp_path / "ds", OPTS, resources=Resources(chunk_rows=8))


def test_vocab_json_written_in_pieces_is_to_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vocab_module, "_JSON_CHUNK", 2)
    tokens = {"users": ("<pad>", "a", "b", "c", 'q"\u00e9'), "items": ("<pad>",), "behaviours": ("<pad>", "pv"),
              "categories": ("<pad>", "1", "2")}
    vocabs = Vocabs(**{k: Vocab(v) for k, v in tokens.items()})
    series = {k: pl.Series(tokens[k], dtype=pl.String) for k in VOCAB_NAMES}
    assert "".join(vocab_json_chunks(series)) == vocabs.to_json()


def test_memory_setting() -> None:
    assert parse_memory("4GB") == 4 << 30 and parse_memory("512mb") == 512 << 20 and parse_memory("1.5g") == 3 << 29
    assert parse_memory("300") == 300 << 20
    with pytest.raises(ValueError, match="4GB"):
        parse_memory("lots")
    assert Resources(memory_limit=4 << 30).rows > Resources(memory_limit=1 << 30).rows
    assert Resources(chunk_rows=1000).batch_rows == 250


def test_progress_line() -> None:
    out = io.StringIO()
    p = Progress(True, out)
    p.done("stage", 1234, "note")
    assert out.getvalue().startswith("prepare: stage: 1,234 rows in ") and "rows/s); note" in out.getvalue()
    quiet = io.StringIO()
    Progress(False, quiet).done("stage", 1)
    assert quiet.getvalue() == ""
