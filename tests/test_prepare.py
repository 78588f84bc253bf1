"""`prepare`: cleaning, k-core, encoding, atomic dataset writing, the CLI and the shared-data recipes."""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import typer
from typer.testing import CliRunner

from shopformer.data import prepare as prepare_module
from shopformer.data import schema as S
from shopformer.data.ingest import DataValidationError, IngestOptions
from shopformer.data.prepare import DATASET_FILES, CleanOptions, EmptyDatasetError, kcore, prepare
from shopformer.data.sequences import Sequences
from shopformer.data.vocab import Vocabs

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "data" / "demo"
SHARED = Path(os.environ.get("SHOPFORMER_SHARED_DATA", REPO.parent / "shared" / "data"))
TAOBAO = DEMO / "taobao_head300.csv"
TAOBAO_OPTS = IngestOptions(columns=("user_id", "item_id", "category_id", "event_type", "timestamp"))
NOW = 1_700_000_000


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def events(out: Path) -> pl.DataFrame:
    return pl.read_parquet(out / "events.parquet")


def stats(out: Path) -> dict:
    return json.loads((out / "stats.json").read_text())


@pytest.fixture(scope="module")
def taobao_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ds") / "taobao"
    prepare([TAOBAO], out, TAOBAO_OPTS)
    return out


# ------------------------------------------------------------------------------------ demo data


def test_demo_dataset_layout(taobao_dataset: Path) -> None:
    assert sorted(p.name for p in taobao_dataset.iterdir()) == sorted(DATASET_FILES)
    df = events(taobao_dataset)
    assert df.columns == [*S.EVENTS_SCHEMA, S.ROW, S.SOURCE]
    assert df.schema[S.BEHAVIOUR_IDX] == pl.Int8 and df.schema[S.TIME] == pl.Int64
    st = stats(taobao_dataset)
    assert st["rows_read"] == 31446 and st["events"] == df.height == 31446
    assert st["users"] == 300 and st["rows_rejected"] == 0 and st["has_time"] is True
    assert st["behaviours"] == {"pv": 28258, "cart": 1707, "fav": 825, "buy": 656}
    assert st["sources"][0]["sha256"] and st["mapping"]["timestamp"] == "timestamp"
    assert df[S.SOURCE].unique().to_list() == ["taobao_head300.csv"]


def test_events_sorted_by_user_idx_time_row(taobao_dataset: Path) -> None:
    df = events(taobao_dataset)
    assert df.equals(df.sort([S.USER_IDX, S.TIME, S.ROW], maintain_order=True))
    assert df[S.USER_IDX].min() == 1 and df[S.ITEM_IDX].min() == 1 and df[S.BEHAVIOUR_IDX].min() == 1
    vocabs = Vocabs.load(taobao_dataset / "vocab.json")
    assert vocabs.users.decode(df[S.USER_IDX][:1]) == df[S.USER][:1].to_list()
    assert vocabs.items.decode(df[S.ITEM_IDX][-3:]) == df[S.ITEM][-3:].to_list()
    assert vocabs.behaviours.tokens[1] == "pv"  # most frequent first


def test_sequences_load(taobao_dataset: Path) -> None:
    seq = Sequences.load(taobao_dataset)
    assert seq.has_time and seq.n_users == 300 and len(seq.items) == 31446
    for u in range(0, 300, 37):  # times non-decreasing inside each user
        assert np.all(np.diff(seq.times[seq.offsets[u] : seq.offsets[u + 1]]) >= 0)


def test_deterministic_bytes(tmp_path: Path, taobao_dataset: Path) -> None:
    out = tmp_path / "again"
    prepare([TAOBAO], out, TAOBAO_OPTS)
    for name in DATASET_FILES:
        assert (out / name).read_bytes() == (taobao_dataset / name).read_bytes(), name


def test_beauty_demo_without_time(tmp_path: Path) -> None:
    out = tmp_path / "beauty"
    r = prepare([DEMO / "beauty_head.txt"], out, IngestOptions(format="sequences"))
    assert r.stats["has_time"] is False and r.stats["time_min"] is None
    assert r.stats["duplicates_dropped"] == 0  # no dedup without timestamps
    seq = Sequences.load(out)
    vocabs = Vocabs.load(out / "vocab.json")
    assert len(vocabs.categories) == 0 and vocabs.behaviours.tokens == ("<pad>", S.DEFAULT_BEHAVIOUR)
    line = (DEMO / "beauty_head.txt").read_text().splitlines()[0].split()
    u = vocabs.users.index[line[0]]
    row = int(np.flatnonzero(seq.users == u)[0])
    items = seq.items[seq.offsets[row] : seq.offsets[row + 1]]
    assert vocabs.items.decode(items) == line[1:]
    assert seq.times[seq.offsets[row] : seq.offsets[row + 1]].tolist() == list(range(len(line) - 1))


# ------------------------------------------------------------------------------------- cleaning

ROWS = (
    "user_id,item_id,timestamp,event_type\n"
    "u1,i1,1511544070,view\n"
    "u1,i2,1511544060,view\n"  # earlier than line 2: sorted first
    "u1,i1,1511544070,view\n"  # exact duplicate of line 2
    "u1,i1,1511544070,buy\n"  # same time, other behaviour: not a duplicate
    "u2,i1,1511544080,view\n"  # a user with a single event
)


def test_sort_dedup_and_single_event_user(tmp_path: Path) -> None:
    out = tmp_path / "d"
    r = prepare([write(tmp_path, "e.csv", ROWS)], out, IngestOptions(now=NOW))
    df = events(out)
    u1 = df.filter(pl.col(S.USER) == "u1")
    assert u1[S.ROW].to_list() == [3, 2, 5]
    assert r.stats["duplicates_dropped"] == 1
    assert r.stats["users_with_one_event"] == 1 and df.filter(pl.col(S.USER) == "u2").height == 1
    kept = prepare([tmp_path / "e.csv"], tmp_path / "k", IngestOptions(now=NOW), CleanOptions(dedup=False))
    assert kept.stats["events"] == 5 and kept.stats["duplicates_dropped"] == 0


def test_order_by_breaks_timestamp_ties(tmp_path: Path) -> None:
    text = "session_id;item_id;timeframe;eventdate\n1;a;500;2016-05-09\n1;b;100;2016-05-09\n1;c;300;2016-05-09\n"
    path = write(tmp_path, "d.csv", text)
    opts = IngestOptions(mapping={"user_id": "session_id", "timestamp": "eventdate"}, order_by="timeframe")
    prepare([path], tmp_path / "o", opts)
    assert events(tmp_path / "o")[S.ITEM].to_list() == ["b", "c", "a"]


def test_sub_second_order_and_dedup(tmp_path: Path) -> None:
    text = "SessionId\tItemId\tTime\n1\ta\t1396860669.900\n1\tb\t1396860669.100\n1\ta\t1396860669.950\n"
    path = write(tmp_path, "y.txt", text)
    opts = IngestOptions(mapping={"user_id": "SessionId", "item_id": "ItemId", "timestamp": "Time"})
    r = prepare([path], tmp_path / "y", opts)
    df = events(tmp_path / "y")
    assert df[S.ITEM].to_list() == ["b", "a", "a"]  # b is 0.8 s earlier although later in the file
    assert df[S.TIME].to_list() == [1396860669] * 3 and r.stats["duplicates_dropped"] == 0


def kcore_reference(df: pl.DataFrame, ku: int, ki: int) -> set[int]:
    """Row ids surviving a naive k-core loop over Python sets (reference implementation)."""
    rows = {r: (u, i) for r, u, i in zip(df["r"], df[S.USER], df[S.ITEM], strict=True)}
    while True:
        users: dict[str, int] = {}
        items: dict[str, int] = {}
        for u, i in rows.values():
            users[u] = users.get(u, 0) + 1
            items[i] = items.get(i, 0) + 1
        keep = {r: ui for r, ui in rows.items() if users[ui[0]] >= ku and items[ui[1]] >= ki}
        if len(keep) == len(rows):
            return set(keep)
        rows = keep


def test_kcore_reaches_fixed_point() -> None:
    rng = np.random.default_rng(0)
    n = 3000
    df = pl.DataFrame(
        {
            "r": np.arange(n),
            S.USER: (rng.zipf(1.5, n) % 400).astype(str),
            S.ITEM: (rng.zipf(1.4, n) % 600).astype(str),
        }
    )
    out, passes = kcore(df, 5, 3)
    assert passes >= 2  # needed more than one pass
    assert set(out["r"].to_list()) == kcore_reference(df, 5, 3)
    assert out.group_by(S.USER).len()["len"].min() >= 5
    assert out.group_by(S.ITEM).len()["len"].min() >= 3


def test_kcore_and_window_in_prepare(tmp_path: Path) -> None:
    r = prepare(
        [TAOBAO],
        tmp_path / "k",
        TAOBAO_OPTS,
        CleanOptions(min_user_events=5, min_item_events=3, start="2017-11-25", end=1512230400),
    )
    df = events(tmp_path / "k")
    assert df[S.TIME].min() >= 1511568000 and df[S.TIME].max() < 1512230400
    assert r.stats["outside_time_window"] > 0 and r.stats["kcore_dropped"] > 0 and r.stats["kcore_passes"] >= 1
    assert df.group_by(S.USER_IDX).len()["len"].min() >= 5
    assert df.group_by(S.ITEM_IDX).len()["len"].min() >= 3
    total = r.stats["events"] + r.stats["outside_time_window"] + r.stats["kcore_dropped"]
    assert total == r.stats["rows_read"] - r.stats["rows_rejected"] - r.stats["duplicates_dropped"]


def test_empty_after_filter_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EmptyDatasetError, match=r"no events left after the k-core filter \(min_user_events=10000"):
        prepare([TAOBAO], tmp_path / "e", TAOBAO_OPTS, CleanOptions(min_user_events=10_000))
    with pytest.raises(EmptyDatasetError, match="time window"):
        prepare([TAOBAO], tmp_path / "e", TAOBAO_OPTS, CleanOptions(start="2030-01-01"))
    assert not (tmp_path / "e").exists()


def test_all_rows_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.csv", "user_id,item_id,timestamp\nu1,i1,x\nu2,i2,y\n")
    with pytest.raises(EmptyDatasetError, match=r"all 2 rows were rejected[\s\S]*bad.csv:2: timestamp"):
        prepare([path], tmp_path / "o")


def test_rejects_written_and_counted(tmp_path: Path) -> None:
    text = "u1,i1,c,pv,1511544070\nu1,i2,c,pv\nu1,i3,c,zap,1511544071\nu2,i4,c,pv,nope\n"
    path = write(tmp_path, "r.csv", text)
    opts = IngestOptions(columns=TAOBAO_OPTS.columns, behaviours=("pv", "buy"), now=NOW)
    r = prepare([path], tmp_path / "o", opts)
    rejects = pl.read_parquet(tmp_path / "o" / "rejects.parquet")
    assert rejects["line"].to_list() == [2, 3, 4]
    assert rejects["column"].to_list() == ["<record>", "behaviour", "timestamp"]
    assert rejects["raw"].to_list() == text.splitlines()[1:]
    assert rejects["file"].to_list() == [str(path)] * 3
    assert r.stats["rows_rejected"] == 3 and r.stats["events"] == 1


def test_strict_prepare_raises(tmp_path: Path) -> None:
    path = write(tmp_path, "r.csv", "user_id,item_id,timestamp\nu1,i1,1511544070\nu1,i2,-1\n")
    with pytest.raises(DataValidationError, match=r"r.csv:3: timestamp: negative timestamp '-1'"):
        prepare([path], tmp_path / "o", IngestOptions(strict=True, now=NOW))
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------ atomic writing


def test_refuses_to_replace_unknown_folders(tmp_path: Path) -> None:
    src = write(tmp_path, "e.csv", ROWS)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="already exists"):
        prepare([src], tmp_path / "busy")
    with pytest.raises(FileExistsError, match="not a shopformer dataset"):
        prepare([src], tmp_path / "busy", overwrite=True)
    assert (tmp_path / "busy" / "notes.txt").read_text() == "keep me"


def test_overwrite_replaces_dataset(tmp_path: Path) -> None:
    src = write(tmp_path, "e.csv", ROWS)
    out = tmp_path / "ds"
    prepare([src], out, IngestOptions(now=NOW))
    prepare([src], out, IngestOptions(now=NOW), CleanOptions(dedup=False), overwrite=True)
    assert stats(out)["events"] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "e.csv"]  # no temp folders left


def test_crash_while_writing_leaves_old_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = write(tmp_path, "e.csv", ROWS)
    out = tmp_path / "ds"
    prepare([src], out, IngestOptions(now=NOW))
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def crash(path: Path, text: str) -> Path:
        raise OSError("disk full")

    monkeypatch.setattr(prepare_module, "atomic_write_text", crash)
    with pytest.raises(OSError, match="disk full"):
        prepare([src], out, IngestOptions(now=NOW), CleanOptions(dedup=False), overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    with pytest.raises(OSError, match="disk full"):
        prepare([src], tmp_path / "new", IngestOptions(now=NOW))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "e.csv"]


# ------------------------------------------------------------------------------------------- CLI


def cli() -> typer.Typer:
    from shopformer.cli.prepare import prepare_command

    app = typer.Typer()
    app.command("prepare")(prepare_command)
    app.command("other")(lambda: None)  # keep `prepare` a sub-command, as in cli.py
    return app


def test_cli_prepare_demo(tmp_path: Path) -> None:
    mapping = write(tmp_path, "m.toml", "user_id = 0\nitem_id = 1\ncategory_id = 2\n")
    args = ["prepare", str(TAOBAO), "--mapping-file", str(mapping), "--map", "event_type=3", "--map", "timestamp=4"]
    args += ["--min-user-events", "5", "-o", str(tmp_path / "ds")]
    res = CliRunner().invoke(cli(), args)
    assert res.exit_code == 0, res.output
    assert "users" in res.output
    st = stats(tmp_path / "ds")
    assert st["mapping"] == {"user_id": "0", "item_id": "1", "category_id": "2", "behaviour": "3", "timestamp": "4"}
    assert Sequences.load(tmp_path / "ds").n_users == st["users"]


def test_cli_reports_errors(tmp_path: Path) -> None:
    path = write(tmp_path, "e.csv", "user_id,item_id,ts\nu,i,1\n")
    res = CliRunner().invoke(cli(), ["prepare", str(path), "--map", "timestamp=time", "-o", str(tmp_path / "o")])
    assert res.exit_code == 2
    assert "timestamp='time': no such column" in res.output
    res = CliRunner().invoke(
        cli(), ["prepare", str(path), "--map", "timestamp=ts", "--strict", "-o", str(tmp_path / "o")]
    )
    assert res.exit_code == 2 and "e.csv:2: timestamp: timestamp '1' is before 1990-01-01" in res.output


# ----------------------------------------------------------------------- the shared data sets


def readme_commands() -> list[list[str]]:
    """The `shopformer prepare` commands of data/demo/README.md, split like a shell would."""
    text = (DEMO / "README.md").read_text()
    return [shlex.split(line)[1:] for line in re.findall(r"^shopformer prepare .*$", text, flags=re.M)]


@pytest.mark.slow
@pytest.mark.parametrize("args", readme_commands(), ids=lambda a: Path(a[1]).stem)
def test_readme_recipes(args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if any("../shared/data" in a for a in args) and not SHARED.is_dir():
        pytest.skip(f"shared data not found at {SHARED}")
    monkeypatch.chdir(REPO)
    out = args.index("-o") + 1
    args = [*args[:out], str(tmp_path / "ds"), *args[out + 1 :]]
    args = [a.replace("../shared/data", str(SHARED)) for a in args]
    res = CliRunner().invoke(cli(), args)
    assert res.exit_code == 0, res.output
    st = stats(tmp_path / "ds")
    # the README says which rows a recipe rejects: UCI Online Retail's guest invoices have no customer id
    assert st["rows_rejected"] == {"online_retail.csv.gz": 135_080}.get(Path(args[1]).name, 0) and st["events"] > 0
    assert Sequences.load(tmp_path / "ds").n_users == st["users"]


def test_prepare_skips_users_in_the_deletion_ledger(tmp_path: Path) -> None:
    """`shopformer forget` records a user; a later prepare drops their events up to the deletion and
    keeps what they did afterwards (they came back), counted in stats.json."""
    from shopformer.data.ledger import open_ledger

    raw = tmp_path / "log.csv"
    raw.write_text("user_id,item_id,behaviour,timestamp\n" + "".join(
        f"{u},{i},view,{1_600_000_000 + 60 * i}\n" for u in ("alice", "bob") for i in range(1, 6)))
    ledger = open_ledger(tmp_path / "ledger.jsonl")
    ledger.record(["alice"], 1_600_000_000 + 60 * 3)  # forgotten after her third event
    out = tmp_path / "ds"
    ledger_opt = ["--forget-ledger", str(tmp_path / "ledger.jsonl")]
    r = CliRunner().invoke(cli(), ["prepare", str(raw), "-o", str(out), *ledger_opt])
    assert r.exit_code == 0, r.output
    stats = json.loads((out / "stats.json").read_text())
    assert stats["forgotten_dropped"] == 3 and stats["events"] == 7
    r = CliRunner().invoke(cli(), ["prepare", str(raw), "-o", str(tmp_path / "x"), "--forget-ledger", "nope"])
    assert r.exit_code == 2 and "no such deletion ledger" in r.output
