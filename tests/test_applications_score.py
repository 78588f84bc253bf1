"""Batch scoring: the streamed file agrees with the recommender, row groups, user lists, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from applications_support import prepare_demo, tiny_run
from typer.testing import CliRunner

from shopformer.cli import app
from shopformer.pipelines.applications.score import score_users
from shopformer.recommender import History, Recommender

runner = CliRunner()


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory, demo_taobao: Path) -> tuple:
    tmp = tmp_path_factory.mktemp("score")
    ds = prepare_demo(demo_taobao, tmp / "ds")
    return ds, tiny_run(ds, tmp / "multi"), tiny_run(ds, tmp / "plain", kind="next-item"), tmp


def user_history(ds, row: int) -> History:
    s = ds.seq
    sl = slice(s.offsets[row], s.offsets[row + 1])
    return History(ds.vocabs.items.decode(s.items[sl]), ds.vocabs.behaviours.decode(s.behaviours[sl]),
                   s.times[sl].tolist())


@pytest.mark.parametrize("kind", ["multi", "plain"])
def test_scores_match_the_recommender(demo: tuple, kind: str) -> None:
    ds, multi, plain, tmp = demo
    run = multi if kind == "multi" else plain
    out = tmp / f"{kind}.parquet"
    summary = score_users(run, ds, out, k=5, batch_size=64)
    table = pq.read_table(out)
    assert summary.rows == table.num_rows == ds.seq.n_users
    assert pq.ParquetFile(out).metadata.num_row_groups == -(-ds.seq.n_users // 64)  # one per batch
    frame = {c: table[c].to_pylist() for c in table.column_names}
    rec = Recommender(run)
    for i in (0, 7, ds.seq.n_users - 1):
        uid = frame["user_id"][i]
        row = int(np.flatnonzero(ds.seq.users == ds.vocabs.users.index[uid])[0])
        want = rec.recommend_many([user_history(ds, row)], k=5, exclude_seen=False)[0]
        np.testing.assert_allclose(frame["scores"][i], want.scores, rtol=1e-4, atol=1e-4)
        assert frame["items"][i][:2] == want.items[:2]
        if kind == "multi":
            probs = rec.predict_next_action(user_history(ds, row))
            assert frame["p_next_buy"][i] == pytest.approx(probs["buy"], abs=1e-4)
            assert frame["intent"][i] == pytest.approx(rec.purchase_intent(user_history(ds, row)), abs=1e-4)
    assert ("intent" in table.column_names) == (kind == "multi")


def test_exclude_seen_behaviour_and_user_list(demo: tuple) -> None:
    ds, multi, _, tmp = demo
    ids = ds.vocabs.users.decode(ds.seq.users[[3, 5]])
    (tmp / "users.txt").write_text("\n".join(ids) + "\n\n")
    out = tmp / "some.parquet"
    score_users(multi, ds, out, k=4, users=tmp / "users.txt", exclude_seen=True, behaviour="pv")
    table = pq.read_table(out)
    assert sorted(table["user_id"].to_pylist()) == sorted(ids)
    for uid, items in zip(table["user_id"].to_pylist(), table["items"].to_pylist(), strict=True):
        row = int(np.flatnonzero(ds.seq.users == ds.vocabs.users.index[uid])[0])
        seen = set(ds.vocabs.items.decode(ds.seq.items[ds.seq.offsets[row]:ds.seq.offsets[row + 1]]))
        assert not seen & set(items)
        rec = Recommender(multi).recommend_many([user_history(ds, row)], k=4, exclude_seen=True, behaviour="pv")
        assert items == rec[0].items
    (tmp / "bad.txt").write_text(f"{ids[0]}\nnobody\n")
    with pytest.raises(ValueError, match=r"bad.txt:2: unknown user id 'nobody'"):
        score_users(multi, ds, out, users=tmp / "bad.txt")


def test_cli_score_streams_parquet_and_refuses_csv(demo: tuple) -> None:
    ds, _, _, tmp = demo
    out = tmp / "cli.parquet"
    r = runner.invoke(app, ["score", str(tmp / "multi"), "--users", "all", "-o", str(out), "-k", "3",
                            "--batch-size", "100"])
    assert r.exit_code == 0, r.output
    assert "scored 300 users" in r.output
    assert pq.read_table(out).num_rows == ds.seq.n_users
    r = runner.invoke(app, ["score", str(tmp / "multi"), "-o", str(out), "--churn-days", "1", "-k", "2"])
    assert r.exit_code == 0, r.output
    churn = pq.read_table(out)["churn_probability"].to_numpy()
    assert len(churn) == ds.seq.n_users and ((churn > 0) & (churn < 1)).all()
    r = runner.invoke(app, ["score", str(tmp / "multi"), "-o", str(tmp / "x.csv")])
    assert r.exit_code == 2 and "must end in .parquet" in r.output, r.output
    r = runner.invoke(app, ["score", str(tmp / "multi"), "-o", str(tmp / "y.parquet"), "--behaviour", "teleport"])
    assert r.exit_code == 2 and "unknown behaviour 'teleport'" in r.output, r.output
    assert not (tmp / "y.parquet").exists()


def test_items_left_out_are_never_listed(demo: tuple) -> None:
    ds, _, plain, tmp = demo
    out = tmp / "all_items.parquet"
    score_users(plain, ds, out, k=ds.spec.n_items, exclude_seen=True, batch_size=128)
    table = pq.read_table(out)
    rows = list(zip(*(table[c].to_pylist() for c in ("user_id", "items", "scores")), strict=True))
    for uid, items, scores in rows[:3]:
        row = int(np.flatnonzero(ds.seq.users == ds.vocabs.users.index[uid])[0])
        n_seen = len(set(ds.seq.items[ds.seq.offsets[row]:ds.seq.offsets[row + 1]].tolist()))
        assert len(items) == len(scores) == ds.spec.n_items - n_seen
        assert "<pad>" not in items and np.isfinite(scores).all()


def test_streams_appear_only_when_complete(tmp_path: Path) -> None:
    import pyarrow as pa

    from shopformer.pipelines.applications.export import ParquetStream, check_output

    schema = pa.schema([("x", pa.int64())])
    with ParquetStream(tmp_path / "ok.parquet", schema) as s:
        s.write({"x": pa.array([1, 2])})
        s.write({"x": pa.array([3])})
    assert pq.read_table(tmp_path / "ok.parquet")["x"].to_pylist() == [1, 2, 3]
    assert pq.ParquetFile(tmp_path / "ok.parquet").metadata.num_row_groups == 2
    with pytest.raises(RuntimeError), ParquetStream(tmp_path / "bad.parquet", schema) as s:
        s.write({"x": pa.array([1])})
        raise RuntimeError("scoring failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.parquet"]  # no partial file left behind
    with pytest.raises(ValueError, match=r"must end in \.parquet or \.csv"):
        check_output(tmp_path / "x.json")
