"""Readers and per-row validation of `shopformer.data.ingest` (generated fixtures + committed demo slices)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from shopformer.data import schema as S
from shopformer.data.ingest import (
    DataValidationError,
    IngestOptions,
    MappingError,
    format_errors,
    ingest,
    load_mapping_file,
    parse_behaviour_names,
    parse_mapping,
    parse_time_value,
)

DEMO = Path(__file__).resolve().parents[1] / "data" / "demo"
TAOBAO_COLUMNS = ("user_id", "item_id", "category_id", "event_type", "timestamp")
NOW = 1_700_000_000  # fixed "now" so far-future checks do not depend on the clock
OPTS = IngestOptions(columns=TAOBAO_COLUMNS, now=NOW)


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def line_of(path: Path, n: int) -> str:
    """What `sed -n Np path` prints."""
    return path.read_text().split("\n")[n - 1].rstrip("\r")


def errors_at(result, line: int) -> list[tuple[str, str]]:
    rows = result.rejects.filter(pl.col("line") == line)
    return list(zip(rows["column"].to_list(), rows["reason"].to_list(), strict=True))


# ------------------------------------------------------------------------------ real (demo) data


def test_taobao_demo_reads_every_row() -> None:
    r = ingest([DEMO / "taobao_head300.csv"], OPTS)
    assert r.counts == {"rows_read": 31446, "blank_lines": 0, "rows_rejected": 0, "errors": 0}
    assert r.events[S.USER].n_unique() == 300
    assert r.events[S.ROW].to_list()[:3] == [1, 2, 3]
    assert sorted(r.events[S.BEHAVIOUR].unique().to_list()) == ["buy", "cart", "fav", "pv"]
    assert r.events[S.TIME].dtype == pl.Int64 and r.events[S.TIME].min() == 1505117799
    assert r.has_time


def test_beauty_demo_sequences_keep_order() -> None:
    path = DEMO / "beauty_head.txt"
    r = ingest([path], IngestOptions(format="sequences"))
    assert not r.has_time
    assert r.events.height == 24226 and r.events[S.USER].n_unique() == 2000
    assert set(r.events[S.BEHAVIOUR].unique()) == {S.DEFAULT_BEHAVIOUR}
    first = line_of(path, 2).split()
    user2 = r.events.filter(pl.col(S.ROW) == 2)
    assert user2[S.USER].unique().to_list() == [first[0]]
    assert user2[S.ITEM].to_list() == first[1:]


# ----------------------------------------------------------------------------------- bad inputs


def test_empty_file(tmp_path: Path) -> None:
    path = write(tmp_path, "empty.csv", "")
    with pytest.raises(DataValidationError, match="empty.csv: empty file"):
        ingest([path])


def test_header_only_file(tmp_path: Path) -> None:
    path = write(tmp_path, "h.csv", "user_id,item_id\n")
    with pytest.raises(DataValidationError, match="no data rows"):
        ingest([path])


def test_missing_required_column(tmp_path: Path) -> None:
    path = write(tmp_path, "e.csv", "user_id,product,timestamp\nu1,i1,1600000000\n")
    with pytest.raises(MappingError, match=r"required column\(s\) \['item_id'\] not found") as err:
        ingest([path])
    assert "product" in str(err.value)  # lists the available columns


def test_one_column_hint_for_sequence_files() -> None:
    with pytest.raises(MappingError, match="--format sequences"):
        ingest([DEMO / "beauty_head.txt"])


def test_mapping_names_missing_column(tmp_path: Path) -> None:
    path = write(tmp_path, "e.csv", "user_id,item_id,time\nu1,i1,1600000000\n")
    with pytest.raises(MappingError, match=r"timestamp='ts': no such column.*'time'"):
        ingest([path], IngestOptions(mapping={"timestamp": "ts"}))
    with pytest.raises(MappingError, match="column index out of range"):
        ingest([path], IngestOptions(mapping={"timestamp": 7}))
    with pytest.raises(MappingError, match="unknown canonical column"):
        ingest([path], IngestOptions(mapping={"time": "time"}))


def test_bad_timestamps_quarantined_with_lines(tmp_path: Path) -> None:
    text = (
        "u1,i1,c1,pv,1511544070\n"
        "u1,i2,c1,pv,abc\n"
        "u1,i3,c1,pv,-5\n"
        "u1,i4,c1,pv,99999999999\n"  # ~5138 AD in seconds -> far future
        "u1,i5,c1,pv,1200\n"  # 1970 -> before 1990
        "u1,i6,c1,pv,\n"
        f"u1,i7,c1,pv,{NOW + 3600}\n"  # within the one-day slack: fine
        "u1,i8,c1,pv,2019-13-45\n"
    )
    path = write(tmp_path, "t.csv", text)
    r = ingest([path], OPTS)
    assert r.events[S.ITEM].to_list() == ["i1", "i7"]
    assert errors_at(r, 2) == [("timestamp", "unparsable timestamp 'abc'")]
    assert errors_at(r, 3) == [("timestamp", "negative timestamp '-5'")]
    assert errors_at(r, 4) == [("timestamp", "timestamp '99999999999' is more than 1 day in the future")]
    assert errors_at(r, 5) == [("timestamp", "timestamp '1200' is before 1990-01-01")]
    assert errors_at(r, 6) == [("timestamp", "missing timestamp")]
    assert errors_at(r, 8) == [("timestamp", "unparsable timestamp '2019-13-45'")]
    for line, raw in zip(r.rejects["line"], r.rejects["raw"], strict=True):
        assert raw == line_of(path, line)
    assert r.counts["rows_rejected"] == 6


def test_strict_lists_file_line_column_reason(tmp_path: Path) -> None:
    path = write(tmp_path, "t.csv", "user_id,item_id,timestamp\nu1,i1,1511544070\nu1,i2,soon\n")
    with pytest.raises(DataValidationError) as err:
        ingest([path], IngestOptions(strict=True, now=NOW))
    assert f"{path}:3: timestamp: unparsable timestamp 'soon'" in str(err.value)
    assert line_of(path, 3) == "u1,i2,soon"


def test_strict_names_the_first_error_in_one_line_and_keeps_them_all(tmp_path: Path) -> None:
    rows = "".join(f"u{i},,1511544070\n" for i in range(30))
    path = write(tmp_path, "t.csv", "user_id,item_id,timestamp\n" + rows)
    with pytest.raises(DataValidationError) as err:
        ingest([path], IngestOptions(strict=True, now=NOW))
    assert str(err.value) == f"{path}:2: item_id: missing item_id (+29 more error(s); 30 bad row(s) in all)"
    assert err.value.errors is not None and err.value.errors.height == 30
    listing = format_errors(err.value.errors).splitlines()  # the long form, for scripts
    assert listing[0] == "30 error(s) in 30 row(s):" and listing[21] == "... and 10 more"


def test_timestamp_forms() -> None:
    expect = int(datetime(2019, 10, 1, tzinfo=UTC).timestamp())
    for value in (
        expect,
        expect * 1000,
        f"{expect}.250",
        "2019-10-01 00:00:00 UTC",
        "2019-10-01T00:00:00Z",
        "2019-10-01T08:00:00+08:00",
        "2019-10-01 00",
        "2019-10-01",
        "20191001",
        "2019/10/01",
        expect * 1_000_000,
    ):
        assert parse_time_value(value) == expect, value
    assert parse_time_value("1396860669.277") == 1396860669
    assert parse_time_value("01/10/2019", "%d/%m/%Y") == expect
    assert parse_time_value("1569888000000", "ms") == expect
    with pytest.raises(DataValidationError):
        parse_time_value("yesterday")


def test_ids_with_quoted_delimiter(tmp_path: Path) -> None:
    text = 'user_id,item_id,price\n"a,b","x""y",1.5\n"c",d,\n'
    r = ingest([write(tmp_path, "q.csv", text)])
    assert r.events[S.USER].to_list() == ["a,b", "c"]
    assert r.events[S.ITEM].to_list() == ['x"y', "d"]
    assert r.events[S.PRICE].to_list() == [1.5, None]
    assert r.rejects.height == 0


def test_single_event_user_is_kept(tmp_path: Path) -> None:
    path = write(tmp_path, "s.csv", "u1,i1,c,pv,1511544070\nu1,i2,c,pv,1511544071\nu2,i1,c,pv,1511544072\n")
    r = ingest([path], OPTS)
    assert r.events.filter(pl.col(S.USER) == "u2").height == 1


def test_wrong_column_count(tmp_path: Path) -> None:
    text = "u1,i1,c,pv,1511544070\nu1,i2,c,pv\nu1,i3,c,pv,1511544070,extra\nu1,i4,c,pv,1511544071\n"
    path = write(tmp_path, "w.csv", text)
    r = ingest([path], OPTS)
    assert r.events[S.ITEM].to_list() == ["i1", "i4"]
    assert errors_at(r, 2) == [("<record>", "expected 5 fields, found 4")]
    assert errors_at(r, 3) == [("<record>", "expected 5 fields, found 6")]
    with pytest.raises(DataValidationError, match=rf"{path}:2: <record>: expected 5 fields, found 4"):
        ingest([path], IngestOptions(columns=TAOBAO_COLUMNS, strict=True, now=NOW))


def test_unknown_behaviour_with_fixed_vocabulary(tmp_path: Path) -> None:
    text = "u1,i1,c,pv,1511544070\nu1,i2,c,like,1511544071\nu1,i3,c,buy,1511544072\n"
    path = write(tmp_path, "e.csv", text)
    fixed = IngestOptions(columns=TAOBAO_COLUMNS, behaviours=("pv", "cart", "buy"), now=NOW)
    r = ingest([path], fixed)
    assert r.events[S.BEHAVIOUR].to_list() == ["pv", "buy"]
    assert errors_at(r, 2) == [("behaviour", "unknown behaviour 'like' (allowed: pv, cart, buy)")]
    strict = IngestOptions(columns=TAOBAO_COLUMNS, behaviours=("pv", "cart", "buy"), strict=True, now=NOW)
    with pytest.raises(DataValidationError, match=rf"{path}:2: behaviour: unknown behaviour 'like'"):
        ingest([path], strict)
    # Open vocabulary by default: any behaviour name is accepted.
    assert ingest([path], OPTS).events.height == 3


def test_missing_ids_and_non_numeric_price(tmp_path: Path) -> None:
    text = "user_id,item_id,price\n,i1,1\nu1,  ,2\nu1,i3,cheap\nu1,i4,nan\nu1,i5,3.25\n"
    r = ingest([write(tmp_path, "p.csv", text)])
    assert errors_at(r, 2) == [("user_id", "missing user_id")]
    assert errors_at(r, 3) == [("item_id", "missing item_id")]
    assert errors_at(r, 4) == [("price", "non-numeric price 'cheap'")]
    assert errors_at(r, 5) == [("price", "non-numeric price 'nan'")]
    assert r.events[S.PRICE].to_list() == [3.25]
    assert r.rejects.filter(pl.col("line") == 4)["value"].to_list() == ["cheap"]


def test_line_numbers_count_header_and_blank_lines(tmp_path: Path) -> None:
    text = "\ufeffuser_id,item_id,timestamp\r\nu1,i1,1511544070\r\n\r\nu1,i2,bad\r\n"
    path = write(tmp_path, "b.csv", text)
    r = ingest([path], IngestOptions(now=NOW))
    assert r.counts["blank_lines"] == 1
    assert r.events[S.ROW].to_list() == [2]
    assert errors_at(r, 4) == [("timestamp", "unparsable timestamp 'bad'")]
    assert line_of(path, 4) == "u1,i2,bad"


def test_delimiter_sniffing_and_tsv(tmp_path: Path) -> None:
    semi = write(tmp_path, "s.csv", "session_id;item_id;eventdate\n1;10;2016-05-09\n")
    r = ingest([semi], IngestOptions(mapping={"user_id": "session_id", "timestamp": "eventdate"}))
    assert r.sources[0].delimiter == ";" and r.events[S.TIME].to_list() == [1462752000]
    tsv = write(tmp_path, "t.txt", "SessionId\tItemId\tTime\n1\t214536502\t1396860669.277\n")
    r = ingest([tsv], IngestOptions(mapping={"user_id": "SessionId", "item_id": "ItemId", "timestamp": "Time"}))
    assert r.sources[0].delimiter == "\t" and r.events[S.TIME].to_list() == [1396860669]


def test_index_mapping_for_headerless_file(tmp_path: Path) -> None:
    path = write(tmp_path, "h.tsv", "23067537\t1184664230\t1\t20190616\n")
    opts = IngestOptions(mapping=parse_mapping(["user_id=0", "item_id=1", "event_type=2", "timestamp=3"]))
    r = ingest([path], opts)
    assert not r.sources[0].has_header
    assert r.events[S.USER].to_list() == ["23067537"]
    assert r.events[S.TIME].to_list() == [int(datetime(2019, 6, 16, tzinfo=UTC).timestamp())]


def test_event_names_rename_codes(tmp_path: Path) -> None:
    path = write(tmp_path, "c.csv", "user_id,item_id,event_type\nu,i,1\nu,j,4\n")
    r = ingest([path], IngestOptions(behaviour_names=parse_behaviour_names(["1=click", "4=buy"])))
    assert r.events[S.BEHAVIOUR].to_list() == ["click", "buy"]
    assert not r.has_time


def test_jsonl_reader(tmp_path: Path) -> None:
    lines = [
        json.dumps({"user": 2103807459595387724, "item": "a", "ts": "2019-10-01 00:00:00 UTC"}),
        "{not json",
        json.dumps({"user": "u2", "item": "b", "ts": 1569888000}),
    ]
    path = write(tmp_path, "e.jsonl", "\n".join(lines) + "\n")
    opts = IngestOptions(mapping={"user_id": "user", "item_id": "item", "timestamp": "ts"}, now=NOW)
    r = ingest([path], opts)
    assert r.events[S.USER].to_list() == ["2103807459595387724", "u2"]
    assert r.events[S.TIME].to_list() == [1569888000, 1569888000]
    assert errors_at(r, 2) == [("<record>", "not a JSON object")]


def test_parquet_reader(tmp_path: Path) -> None:
    path = tmp_path / "e.parquet"
    pl.DataFrame(
        {
            "uid": [1, 2, None],
            "iid": ["a", "b", "c"],
            "when": [datetime(2019, 10, 1), datetime(2019, 10, 2), datetime(2019, 10, 3)],
        }
    ).write_parquet(path)
    r = ingest([path], IngestOptions(mapping={"user_id": "uid", "item_id": "iid", "timestamp": "when"}, now=NOW))
    assert r.events[S.USER].to_list() == ["1", "2"]
    assert r.events[S.TIME].to_list() == [1569888000, 1569974400]
    assert errors_at(r, 3) == [("user_id", "missing user_id")]
    assert json.loads(r.rejects["raw"][0])["iid"] == "c"


def test_sequences_line_without_items(tmp_path: Path) -> None:
    path = write(tmp_path, "s.txt", "1 5 6 7\n2\n3 7 5\n")
    r = ingest([path], IngestOptions(format="sequences"))
    assert r.events[S.ITEM].to_list() == ["5", "6", "7", "7", "5"]
    assert errors_at(r, 2) == [("<record>", "a user id but no items")]
    with pytest.raises(MappingError, match="fixed layout"):
        ingest([path], IngestOptions(format="sequences", mapping={"user_id": 0}))


def test_mapping_files(tmp_path: Path) -> None:
    toml = write(tmp_path, "m.toml", 'user_id = 0\ntimestamp = "ts"\n')
    assert load_mapping_file(toml) == {"user_id": 0, "timestamp": "ts"}
    js = write(tmp_path, "m.json", '{"item_id": "product_id"}')
    assert load_mapping_file(js) == {"item_id": "product_id"}
    with pytest.raises(MappingError, match="flat table"):
        load_mapping_file(write(tmp_path, "bad.json", '{"item_id": ["x"]}'))
    with pytest.raises(MappingError, match="canonical=source"):
        parse_mapping(["timestamp"])


def test_format_errors_counts_rows() -> None:
    rejects = pl.DataFrame(
        {"file": ["f", "f"], "line": [3, 3], "column": ["a", "b"], "reason": ["x", "y"], "value": [None, None]}
    )
    assert format_errors(rejects) == "2 error(s) in 1 row(s):\nf:3: a: x\nf:3: b: y"


def test_behaviour_column_has_one_name_and_event_type_is_an_alias(tmp_path: Path) -> None:
    """The canonical column is `behaviour`; a source column or mapping key named `event_type` (REES46,
    older recipes) still maps to it, and the validated events only ever say `behaviour`."""
    header = write(tmp_path, "h.csv", "user_id,item_id,event_type\nu,i,view\n")
    canonical = write(tmp_path, "c.csv", "user_id,item_id,behaviour\nu,i,view\n")
    mapped = write(tmp_path, "m.csv", "user_id,item_id,kind\nu,i,view\n")
    for path, opts in ((header, IngestOptions()), (canonical, IngestOptions()),
                       (mapped, IngestOptions(mapping=parse_mapping(["event_type=kind"])))):
        r = ingest([path], opts)
        assert S.BEHAVIOUR == "behaviour" and "event_type" not in r.events.columns
        assert r.events[S.BEHAVIOUR].to_list() == ["view"], path.name
    # a mapping file may use the old key too
    mf = write(tmp_path, "map.json", json.dumps({"event_type": "kind"}))
    assert load_mapping_file(mf) == {"behaviour": "kind"}


def test_public_log_headers_map_to_canonical_columns_without_a_mapping(tmp_path: Path) -> None:
    """Tianchi's `behavior_type,item_category,time` and REES46's `event_time,product_id,user_session`
    are read as behaviour / category / timestamp / item / session; an exact canonical name wins over an
    alias, and a --map over both."""
    tianchi = write(tmp_path, "t.csv", "user_id,item_id,behavior_type,user_geohash,item_category,time\n"
                    "u,i,1,,c7,2014-12-06 02\nu,j,4,,c8,2014-12-06 03\n")
    r = ingest([tianchi], IngestOptions())
    assert r.has_time and r.events[S.BEHAVIOUR].to_list() == ["1", "4"]
    assert r.events[S.CATEGORY].to_list() == ["c7", "c8"] and r.events[S.TIME][1] - r.events[S.TIME][0] == 3600
    rees = write(tmp_path, "r.csv", "event_time,event_type,product_id,user_id,user_session\n"
                 "2019-10-01 00:00:00 UTC,view,p1,u1,s1\n")
    ev = ingest([rees], IngestOptions()).events
    assert ev[S.ITEM].to_list() == ["p1"] and ev[S.SESSION].to_list() == ["s1"] and ev[S.BEHAVIOUR][0] == "view"
    both = write(tmp_path, "b.csv", "user_id,item_id,item,time,timestamp\nu,i,x,1600000005,1600000007\n")
    ev = ingest([both], IngestOptions()).events
    assert ev[S.ITEM].to_list() == ["i"] and ev[S.TIME].to_list() == [1600000007]
    ev = ingest([both], IngestOptions(mapping=parse_mapping(["item_id=item"]))).events
    assert ev[S.ITEM].to_list() == ["x"]
