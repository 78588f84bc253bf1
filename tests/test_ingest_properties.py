"""Property-based tests of ingest (hypothesis): random CSV / JSON-lines files with random bad fields.

1. Anything at all (random bytes, quotes, delimiters, bad JSON, bad encodings) either raises the
   documented :class:`DataValidationError` or gives a consistent result: every non-blank line is
   either an event or a reject, never both, and the counts add up; ``strict`` fails exactly when
   the lenient run rejects something.
2. Rows built from known-good and known-bad fields: exactly the good rows are accepted, with their
   values unchanged (ids stripped, timestamps in Unix seconds), in CSV and JSON lines, in UTF-8 and GBK.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shopformer.data import schema as S
from shopformer.data.ingest import MIN_TIME, DataValidationError, IngestOptions, IngestResult, ingest

NOW = 1_700_000_000
HEADER = "user_id,item_id,behaviour,timestamp"
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def run_ingest(data: bytes, name: str, opts: IngestOptions) -> IngestResult | DataValidationError:
    """Ingest ``data`` as file ``name``; the result, or the DataValidationError (anything else fails)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        try:
            return ingest([path], opts)
        except DataValidationError as err:
            return err


def check_consistent(data: bytes, name: str, opts: IngestOptions) -> None:
    result = run_ingest(data, name, opts)
    if isinstance(result, DataValidationError):
        assert str(result) and "\n" not in str(result)
        return
    counts = result.counts
    assert counts["rows_read"] == result.events.height + counts["rows_rejected"]
    event_lines = set(result.events[S.ROW].to_list())
    reject_lines = set(result.rejects["line"].to_list())
    assert not event_lines & reject_lines
    lines = data.split(b"\n")
    non_blank = {i + 1 for i, line in enumerate(lines) if line.strip(b" \t\r")}
    assert event_lines | reject_lines <= non_blank
    assert result.events[S.USER].null_count() == 0 and result.events[S.ITEM].null_count() == 0
    strict = run_ingest(data, name, replace(opts, strict=True))
    assert isinstance(strict, DataValidationError) == (result.rejects.height > 0)


# ------------------------------------------------------------------------- 1. anything goes

FIELD = st.one_of(
    st.text(st.characters(exclude_characters="\n"), max_size=10).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.binary(max_size=6).map(lambda b: b.replace(b"\n", b"")),
    st.sampled_from([b"", b" ", b'"', b'""', b'"a,b"', b"1600000000", b"-1", b"1e400", b"nan", b"2020-01-01",
                     b"19991231", b"1600000000000", b"\xff", b"\r", b"\xe7\x94", b"\x00", b"\\", b"\t"]),
)
LINE = st.lists(FIELD, max_size=6).map(b",".join)
HEADER_LINE = st.one_of(st.just(HEADER.encode()), LINE)


@SETTINGS
@given(header=HEADER_LINE, lines=st.lists(LINE, max_size=12), encoding=st.sampled_from(["utf-8", "gbk", "latin-1"]),
       crlf=st.booleans())
def test_random_csv_never_raises_anything_but_validation_errors(
    header: bytes, lines: list[bytes], encoding: str, crlf: bool
) -> None:
    end = b"\r\n" if crlf else b"\n"
    data = end.join([header, *lines]) + end
    check_consistent(data, "f.csv", IngestOptions(now=NOW, encoding=encoding))


JSON_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**20), 10**20) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)
KEYS = st.sampled_from(["user_id", "item_id", "timestamp", "behaviour", "price", "event_type", "x"])
JSON_LINE = st.one_of(
    st.dictionaries(KEYS, JSON_VALUE, max_size=6).map(lambda d: json.dumps(d).encode()),
    st.dictionaries(KEYS, JSON_VALUE, max_size=6).map(lambda d: json.dumps(d, ensure_ascii=False).encode()),
    LINE,
)


@SETTINGS
@given(first=st.fixed_dictionaries({"user_id": st.text(max_size=5), "item_id": st.integers()}),
       lines=st.lists(JSON_LINE, max_size=10))
def test_random_jsonl_never_raises_anything_but_validation_errors(first: dict, lines: list[bytes]) -> None:
    data = b"\n".join([json.dumps(first).encode(), *lines]) + b"\n"
    check_consistent(data, "f.jsonl", IngestOptions(now=NOW))


@SETTINGS
@given(lines=st.lists(st.lists(FIELD, max_size=5).map(b" ".join), max_size=10))
def test_random_sequence_files_never_raise_anything_but_validation_errors(lines: list[bytes]) -> None:
    check_consistent(b"\n".join(lines) + b"\n", "f.txt", IngestOptions(format="sequences"))


# ----------------------------------------------------------------- 2. accepted rows round-trip

ALPHABET = st.sampled_from(list("abcXYZ0189_-.@:/ ,;'\"\\{}用户é"))
GOOD_TEXT = st.text(ALPHABET, min_size=1, max_size=8).filter(lambda s: s.strip() != "")
BAD_TEXT = st.sampled_from(["", " ", "   "])
GOOD_TIME = st.integers(MIN_TIME, NOW).flatmap(
    lambda t: st.sampled_from([
        (str(t), t),
        (str(t * 1000 + 123), t),  # milliseconds
        (datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), t),
        (datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S"), t),
    ])
)
BAD_TIME = st.sampled_from(["", "soon", "-5", "12", "99999999999", "1e400", "nan", "inf", "2020-13-45", "1.2.3"])


def field(good: st.SearchStrategy, bad: st.SearchStrategy) -> st.SearchStrategy:
    """(value, expected parsed value or None when the field is bad)."""
    return st.one_of(good.map(lambda v: (v, v.strip())), bad.map(lambda v: (v, None)))


TIME_FIELD = st.one_of(GOOD_TIME, BAD_TIME.map(lambda v: (v, None)))
ROW = st.tuples(field(GOOD_TEXT, BAD_TEXT), field(GOOD_TEXT, BAD_TEXT), field(GOOD_TEXT, BAD_TEXT), TIME_FIELD)


def expected_events(rows: list[tuple], first_line: int) -> dict[int, tuple]:
    out = {}
    for i, ((_, user), (_, item), (_, behaviour), (_, t)) in enumerate(rows):
        if None not in (user, item, behaviour, t):
            out[first_line + i] = (user, item, behaviour, t)
    return out


def accepted(result: IngestResult) -> dict[int, tuple]:
    ev = result.events.select(S.ROW, S.USER, S.ITEM, S.BEHAVIOUR, S.TIME)
    return {row[0]: row[1:] for row in ev.rows()}


def quoted(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


@SETTINGS
@given(rows=st.lists(ROW, min_size=1, max_size=12), encoding=st.sampled_from(["utf-8", "gbk", "gb18030"]))
def test_accepted_csv_rows_round_trip(rows: list[tuple], encoding: str) -> None:
    lines = [HEADER] + [",".join(quoted(v) for v, _ in row) for row in rows]
    result = run_ingest(("\n".join(lines) + "\n").encode(encoding), "r.csv", IngestOptions(now=NOW, encoding=encoding))
    assert not isinstance(result, DataValidationError), result
    assert accepted(result) == expected_events(rows, first_line=2)
    assert sorted(set(result.rejects["line"])) == [i + 2 for i in range(len(rows)) if i + 2 not in accepted(result)]


@SETTINGS
@given(rows=st.lists(ROW, min_size=1, max_size=12), ascii_only=st.booleans())
def test_accepted_jsonl_rows_round_trip(rows: list[tuple], ascii_only: bool) -> None:
    def record(row: tuple) -> str:
        (u, _), (i, _), (b, _), (t, _) = row
        time_value: str | int = int(t) if t.isdigit() else t
        return json.dumps({"user_id": u, "item_id": i, "behaviour": b, "timestamp": time_value},
                          ensure_ascii=ascii_only)

    data = ("\n".join(record(r) for r in rows) + "\n").encode()
    result = run_ingest(data, "r.jsonl", IngestOptions(now=NOW))
    assert not isinstance(result, DataValidationError), result
    assert accepted(result) == expected_events(rows, first_line=1)
    assert result.rejects.filter(pl.col("column") == "<record>").height == 0
