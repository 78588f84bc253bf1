"""Ingest against hostile files: encodings, typed Parquet columns, directories, pseudonymous user ids."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
from pathlib import Path

import polars as pl
import pytest

from shopformer.data import decoding
from shopformer.data import schema as S
from shopformer.data.ingest import DataValidationError, IngestOptions, MappingError, ingest
from shopformer.data.prepare import DATASET_FILES, prepare
from shopformer.data.pseudonym import (
    PSEUDONYM_KEY_ENV,
    PseudonymKeyError,
    key_fingerprint,
    load_pseudonym_key,
    pseudonymise,
)

NOW = 1_700_000_000
OPTS = IngestOptions(now=NOW)
HEADER = b"user_id,item_id,behaviour,timestamp\n"


def write_bytes(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def rejects_at(rejects: pl.DataFrame, line: int) -> list[tuple[str, str]]:
    rows = rejects.filter(pl.col("line") == line)
    return list(zip(rows["column"].to_list(), rows["reason"].to_list(), strict=True))


# ------------------------------------------------------------------------------------ encodings


def test_one_bad_byte_quarantines_its_row_with_line_and_byte_offset(tmp_path: Path) -> None:
    data = HEADER + b"u1,i1,pv,1600000000\nu\xff2,i2,pv,1600000001\nu3,i3,pv,1600000002\n"
    path = write_bytes(tmp_path, "bad.csv", data)
    r = ingest([path], OPTS)
    assert r.events[S.USER].to_list() == ["u1", "u3"]
    assert r.counts["rows_rejected"] == 1
    [(column, reason)] = rejects_at(r.rejects, 3)
    offset = data.index(b"\xff")
    assert column == "<record>"
    hint = "(pass --encoding, e.g. gbk or latin-1)"
    assert reason == f"not valid utf-8 text: byte(s) 0xff at byte offset {offset} {hint}"
    assert r.rejects["raw"].to_list() == ["u\\xff2,i2,pv,1600000001"]  # the bad byte, visible


def test_strict_names_file_and_line_of_an_undecodable_row(tmp_path: Path) -> None:
    data = HEADER + b"u1,i1,pv,1600000000\nu2,i\xc3,pv,1600000001\n"
    path = write_bytes(tmp_path, "bad.csv", data)
    with pytest.raises(DataValidationError) as err:
        ingest([path], IngestOptions(now=NOW, strict=True))
    message = str(err.value)
    assert "\n" not in message and data.index(b"\xc3") == 60
    assert message.startswith(f"{path}:3: <record>: not valid utf-8 text: byte(s) 0xc3 at byte offset 60")


def test_gbk_file_reads_with_encoding_and_is_quarantined_without(tmp_path: Path) -> None:
    text = "user_id,item_id,behaviour,timestamp\n用户1,商品1,浏览,1600000000\n用户2,商品2,购买,1600000001\n"
    path = write_bytes(tmp_path, "gbk.csv", text.encode("gbk"))
    r = ingest([path], IngestOptions(now=NOW, encoding="gbk"))
    rows = r.events.select(S.USER, S.ITEM, S.BEHAVIOUR).rows()
    assert rows == [("用户1", "商品1", "浏览"), ("用户2", "商品2", "购买")]
    assert r.rejects.height == 0
    r = ingest([path], OPTS)  # as UTF-8: every data row quarantined, no crash
    assert r.events.height == 0 and r.rejects["line"].to_list() == [2, 3]
    assert all("not valid utf-8" in reason for reason in r.rejects["reason"])


def test_gbk_with_an_invalid_sequence_rejects_only_that_row(tmp_path: Path) -> None:
    data = "user_id,item_id,timestamp\n用户1,i1,1600000000\n".encode("gbk") + b"u\x81\x20,i2,1600000001\n"
    r = ingest([write_bytes(tmp_path, "g.csv", data)], IngestOptions(now=NOW, encoding="gbk"))
    assert r.events[S.USER].to_list() == ["用户1"]
    [(_, reason)] = rejects_at(r.rejects, 3)
    offset = data.index(b"\x81")
    assert f"byte offset {offset}" in reason and "(check --encoding)" in reason


def test_latin1_and_cp1252(tmp_path: Path) -> None:
    path = write_bytes(tmp_path, "l.csv", "user_id,item_id,timestamp\nJosé,café,1600000000\n".encode("latin-1"))
    r = ingest([path], IngestOptions(now=NOW, encoding="latin-1"))
    assert r.events.select(S.USER, S.ITEM).rows() == [("José", "café")]


def test_undecodable_lines_in_jsonl_and_sequences(tmp_path: Path) -> None:
    jsonl = b'{"user_id": "u1", "item_id": "i1"}\n{"user_id": "u\xfe", "item_id": "i2"}\n'
    r = ingest([write_bytes(tmp_path, "e.jsonl", jsonl)], OPTS)
    assert r.events[S.USER].to_list() == ["u1"] and r.rejects["line"].to_list() == [2]
    seq = b"u1 i1 i2 i3\nu2 i\xff i5 i6\nu3 i7 i8\n"
    r = ingest([write_bytes(tmp_path, "s.txt", seq)], IngestOptions(format="sequences"))
    assert r.events[S.USER].unique(maintain_order=True).to_list() == ["u1", "u3"]
    assert r.rejects.height == 1 and r.rejects["line"].to_list() == [2]  # one reject per line, not per item


def test_undecodable_header_is_an_error_naming_line_1(tmp_path: Path) -> None:
    path = write_bytes(tmp_path, "h.csv", b"user_id,it\xffem_id\nu1,i1\n")
    with pytest.raises(DataValidationError, match=r"h.csv:1: header line: not valid utf-8 text: byte\(s\) 0xff"):
        ingest([path], OPTS)


@pytest.mark.parametrize(
    ("encoding", "message"),
    [("klingon", "unknown encoding 'klingon'"), ("utf-16", "encoding 'utf-16' is not supported")],
)
def test_unusable_encodings_are_clear_errors(tmp_path: Path, encoding: str, message: str) -> None:
    path = write_bytes(tmp_path, "a.csv", HEADER + b"u1,i1,pv,1600000000\n")
    with pytest.raises(DataValidationError, match=message):
        ingest([path], IngestOptions(encoding=encoding))


def test_transcoding_keeps_line_numbers_and_offsets_across_blocks(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(decoding, "_BLOCK", 7)  # many blocks, lines longer than a block, CRLF endings
    lines = [b"user_id,item_id,timestamp"] + [
        (f"user{i},item{i},{1600000000 + i}".encode() if i % 3 else f"us\xe9r{i},item{i},{1600000000 + i}".encode(
            "latin-1"))
        for i in range(1, 13)
    ]
    data = b"\r\n".join(lines) + b"\r\n"
    path = write_bytes(tmp_path, "crlf.csv", data)
    r = ingest([path], OPTS)
    bad_lines = [i + 1 for i in range(1, 13) if i % 3 == 0]
    assert r.rejects["line"].to_list() == bad_lines
    for line, reason in zip(r.rejects["line"], r.rejects["reason"], strict=True):
        offset = int(reason.split("byte offset ")[1].split(" ")[0])
        assert data[offset] == 0xE9 and data[:offset].count(b"\n") == line - 1
    assert r.events.height == 8
    latin = ingest([path], IngestOptions(now=NOW, encoding="latin-1"))
    assert latin.events.height == 12 and "usér3" in latin.events[S.USER].to_list()


# -------------------------------------------------------------------------------------- Parquet


def test_parquet_list_or_struct_column_mapped_is_an_error_naming_file_and_column(tmp_path: Path) -> None:
    path = tmp_path / "l.parquet"
    pl.DataFrame({"user_id": [[1, 2], [3]], "item_id": ["a", "b"]}).write_parquet(path)
    with pytest.raises(MappingError, match=rf"{path}: column 'user_id' \(mapped to user_id\) has type List"):
        ingest([path], OPTS)
    path = tmp_path / "s.parquet"
    pl.DataFrame({"u": [{"id": 1}], "item_id": ["a"]}).write_parquet(path)
    with pytest.raises(MappingError, match=r"s.parquet: column 'u' \(mapped to user_id\) has type Struct"):
        ingest([path], IngestOptions(mapping={"user_id": "u"}))


def test_parquet_nested_and_binary_columns_that_are_not_mapped_are_kept_in_raw(tmp_path: Path) -> None:
    path = tmp_path / "n.parquet"
    frame = pl.DataFrame({"user_id": ["u1", ""], "item_id": ["a", "b"], "tags": [[1], [2, 3]],
                          "blob": [b"\xff\x00", b"ok"], "nested": [[b"x"], [b"y"]]})
    frame.write_parquet(path)
    r = ingest([path], OPTS)
    assert r.events[S.USER].to_list() == ["u1"]
    assert json.loads(r.rejects["raw"][0]) == {"user_id": "", "item_id": "b", "tags": [2, 3], "blob": "6f6b"}


def test_parquet_float_ids_become_integers_or_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "f.parquet"
    pl.DataFrame({
        "user_id": [2.0, 3.5, float("nan"), 1e20, 7.0],
        "item_id": [10.0, 11.0, 12.0, 13.0, -0.0],
        "timestamp": [1600000000.5, 1600000001.0, 1600000002.0, 1600000003.0, 1600000004.0],
    }).write_parquet(path)
    r = ingest([path], OPTS)
    assert r.events.select(S.USER, S.ITEM, S.TIME).rows() == [("2", "10", 1600000000), ("7", "0", 1600000004)]
    assert r.rejects.select("line", "column", "value").rows() == [
        (2, "user_id", "3.5"), (3, "user_id", "NaN"), (4, "user_id", "1e+20")]
    assert set(r.rejects["reason"]) == {"user_id in a float column is not a whole number"}
    with pytest.raises(DataValidationError, match=r"f.parquet:2: user_id: user_id in a float column is not a whole"):
        ingest([path], IngestOptions(now=NOW, strict=True))


def test_parquet_binary_ids_are_decoded_with_the_encoding(tmp_path: Path) -> None:
    path = tmp_path / "b.parquet"
    pl.DataFrame({"user_id": ["用户".encode("gbk"), b"\x81\x20"], "item_id": ["a", "b"]}).write_parquet(path)
    r = ingest([path], IngestOptions(encoding="gbk"))
    assert r.events[S.USER].to_list() == ["用户"]
    assert rejects_at(r.rejects, 2) == [("user_id", "bytes are not valid gbk text")]


def test_not_a_parquet_file(tmp_path: Path) -> None:
    path = write_bytes(tmp_path, "x.parquet", b"PAR1 this is not parquet")
    with pytest.raises(DataValidationError, match=r"x.parquet: not a readable Parquet file"):
        ingest([path], OPTS)


# -------------------------------------------------------------------------------- compressed files

PLAIN = HEADER + b"u1,i1,pv,1600000000\nu2,i2,pv,1600000001\nu3,i3,pv,1600000002\n"
PACK = {"gz": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress}


@pytest.mark.parametrize("kind", sorted(PACK))
def test_compressed_csv_reads_as_the_plain_file(tmp_path: Path, kind: str) -> None:
    plain = ingest([write_bytes(tmp_path, "e.csv", PLAIN)], OPTS)
    packed = ingest([write_bytes(tmp_path, f"e.csv.{kind}", PACK[kind](PLAIN))], OPTS)
    assert packed.events.equals(plain.events) and packed.counts == plain.counts


def test_compression_is_known_by_its_bytes_and_lines_keep_their_numbers(tmp_path: Path) -> None:
    """A gzip file named .csv still reads; a bad byte inside it costs its own row, by its decompressed line."""
    data = PLAIN.replace(b"u2,", b"u\xff2,")
    r = ingest([write_bytes(tmp_path, "misnamed.csv", gzip.compress(data))], OPTS)
    assert r.events[S.USER].to_list() == ["u1", "u3"]
    [(column, reason)] = rejects_at(r.rejects, 3)
    offset = data.index(b"\xff")
    assert column == "<record>" and f"byte offset {offset}" in reason


def test_compressed_input_in_a_directory_and_in_another_encoding(tmp_path: Path) -> None:
    folder = tmp_path / "logs"
    folder.mkdir()
    write_bytes(folder, "a.jsonl.gz", gzip.compress(b'{"user_id": "u1", "item_id": "i1", "timestamp": 1600000000}\n'))
    latin = "user_id,item_id,timestamp\nJosé,café,1600000001\n".encode("latin-1")
    write_bytes(folder, "b.csv.bz2", bz2.compress(latin))
    r = ingest([folder], IngestOptions(now=NOW, encoding="latin-1"))
    assert r.events[S.USER].to_list() == ["u1", "José"] and r.events[S.ITEM].to_list() == ["i1", "café"]


def test_truncated_or_corrupt_compressed_file_is_one_line_error(tmp_path: Path) -> None:
    broken = {"cut.csv.gz": gzip.compress(PLAIN * 50)[:-40], "bad.csv.xz": lzma.compress(PLAIN)[:12] + b"junk" * 8}
    for name, data in broken.items():
        path = write_bytes(tmp_path, name, data)
        with pytest.raises(DataValidationError) as err:
            ingest([path], OPTS)
        message = str(err.value)
        assert "\n" not in message and message.startswith(f"{path}: cannot read it as ")


def test_compressed_parquet_is_refused_with_a_reason(tmp_path: Path) -> None:
    frame = pl.DataFrame({"user_id": ["u1"], "item_id": ["i1"], "timestamp": [1600000000]})
    raw = tmp_path / "e.parquet"
    frame.write_parquet(raw)
    path = write_bytes(tmp_path, "e.parquet.gz", gzip.compress(raw.read_bytes()))
    with pytest.raises(DataValidationError, match="compressed Parquet file is not read; decompress it first"):
        ingest([path], OPTS)


# ----------------------------------------------------------------------------------- directories


def test_directory_reads_its_supported_files_in_name_order(tmp_path: Path) -> None:
    d = tmp_path / "logs"
    d.mkdir()
    (d / "b.csv").write_text("user_id,item_id,timestamp\nu2,i2,1600000002\n")
    (d / "a.csv").write_text("user_id,item_id,timestamp\nu1,i1,1600000001\n")
    pl.DataFrame({"user_id": ["u3"], "item_id": ["i3"], "timestamp": [1600000003]}).write_parquet(d / "c.parquet")
    (d / "README.md").write_text("not data")
    (d / "_SUCCESS").write_text("")
    (d / ".a.csv.crc").write_text("x")
    (d / "sub").mkdir()
    (d / "sub" / "z.csv").write_text("user_id,item_id\nzz,zz\n")
    r = ingest([d], OPTS)
    assert [Path(s.path).name for s in r.sources] == ["a.csv", "b.csv", "c.parquet"]
    assert sorted(r.events[S.USER].to_list()) == ["u1", "u2", "u3"]


def test_directory_without_input_files_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.md").write_text("x")
    with pytest.raises(DataValidationError, match=r"empty: directory has no input files \(read: .csv"):
        ingest([tmp_path / "empty"], OPTS)
    with pytest.raises(DataValidationError, match=r"nope: no such file or directory"):
        ingest([tmp_path / "nope"], OPTS)


# --------------------------------------------------------------------------------- pseudonyms

KEY = b"0123456789abcdef-test-key"
RAW_USERS = ("alice@example.com", "bob-raw-7731", "carol-raw-4410")


def test_prepared_dataset_holds_no_raw_user_id_and_no_key(tmp_path: Path) -> None:
    a, b, c = RAW_USERS
    text = (
        "user_id,item_id,behaviour,timestamp\n"
        f"{a},i1,pv,1600000000\n{a},i2,buy,1600000100\n{b},i1,pv,1600000200\n"
        f"{c},i3,pv,not-a-time\n"  # rejected: its raw line would hold the user id
        f"{b},i2,pv,{b}\n"  # rejected with the user id quoted in the reason and as the value
    )
    path = write_bytes(tmp_path, "log.csv", text.encode())
    out = prepare([path], tmp_path / "ds", IngestOptions(now=NOW, pseudonym_key=KEY)).path
    for name in DATASET_FILES:
        data = (out / name).read_bytes()
        for user in RAW_USERS:
            assert user.encode() not in data, (name, user)
        assert KEY not in data and KEY.hex().encode() not in data
    ev = pl.read_parquet(out / "events.parquet")
    assert set(ev[S.USER]) == {pseudonymise(a, KEY), pseudonymise(b, KEY)}
    rejects = pl.read_parquet(out / "rejects.parquet")
    assert rejects["raw"].null_count() == rejects.height
    assert pseudonymise(b, KEY) in rejects.filter(pl.col("line") == 6)["reason"][0]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["pseudonymised_users"] and stats["pseudonym_key_fingerprint"] == key_fingerprint(KEY)
    assert "pseudonym_key" not in stats["ingest_options"]


def test_pseudonyms_are_keyed_stable_and_strip_like_ingest() -> None:
    p = pseudonymise("alice", KEY)
    assert len(p) == 32 and int(p, 16) >= 0
    assert pseudonymise(" alice\t", KEY) == p
    assert pseudonymise("alice", KEY + b"x") != p and pseudonymise("alicf", KEY) != p
    assert key_fingerprint(KEY) != key_fingerprint(KEY + b"x") and KEY.hex() not in key_fingerprint(KEY)


def test_pseudonymised_strict_error_and_sequences(tmp_path: Path) -> None:
    path = write_bytes(tmp_path, "s.txt", b"alice i1 i2\nbob-raw-7731 i3\n")
    r = ingest([path], IngestOptions(format="sequences", pseudonym_key=KEY))
    assert set(r.events[S.USER]) == {pseudonymise("alice", KEY), pseudonymise("bob-raw-7731", KEY)}


def test_load_pseudonym_key(tmp_path: Path) -> None:
    key_file = write_bytes(tmp_path, "k", KEY + b"\n")
    assert load_pseudonym_key(key_file) == KEY
    assert load_pseudonym_key(None, {PSEUDONYM_KEY_ENV: KEY.decode()}) == KEY
    with pytest.raises(PseudonymKeyError, match="no pseudonym key"):
        load_pseudonym_key(None, {})
    with pytest.raises(PseudonymKeyError, match="has 5 bytes, at least 16"):
        load_pseudonym_key(None, {PSEUDONYM_KEY_ENV: "short"})
    with pytest.raises(PseudonymKeyError, match="missing: cannot read the pseudonym key file"):
        load_pseudonym_key(tmp_path / "missing")


def test_cli_pseudonymised_dataset_and_trained_run_hold_no_raw_user_id(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from shopformer.cli import app

    lines = ["user_id,item_id,behaviour,timestamp"]
    users = [f"raw-user-{u:03d}-x" for u in range(30)]
    for u, user in enumerate(users):
        behaviours = ["buy" if j % 4 == 3 else "pv" for j in range(8)]
        lines += [f"{user},i{(u + j) % 40},{b},{1600000000 + 3600 * j + u}" for j, b in enumerate(behaviours)]
    log = write_bytes(tmp_path, "log.csv", ("\n".join(lines) + "\n").encode())
    key_file = write_bytes(tmp_path, "pseudonym.key", KEY + b"\n")
    runner = CliRunner()
    r = runner.invoke(app, ["prepare", str(log), "-o", str(tmp_path / "ds"), "--pseudonymise-users",
                            "--pseudonym-key-file", str(key_file)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["train", str(tmp_path / "ds"), "-o", str(tmp_path / "run"), "--quiet",
                            "--set", "model.dim=16", "--set", "model.layers=1", "--set", "train.epochs=1",
                            "--set", "eval.bootstrap=10"])
    assert r.exit_code == 0, r.output
    files = [p for p in (tmp_path / "ds").rglob("*") if p.is_file()] + [
        p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert len(files) > 8
    for p in files:
        data = p.read_bytes()
        assert b"raw-user-" not in data and KEY not in data, p
    r = runner.invoke(app, ["recommend", str(tmp_path / "run"), "--user", pseudonymise(users[0], KEY), "-k", "3"])
    assert r.exit_code == 0, r.output
