"""Continuous learning: growing vocabularies and models, the registry, retrain and its gate."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from conftest import random_task_batch
from continuous_support import DAY, FAST, OPTS, T0, small_retrain, write_cycle_log
from typer.testing import CliRunner

from shopformer.artifacts import load_run
from shopformer.cli.app import app
from shopformer.config import Config, apply_overrides
from shopformer.data.corpus import DataSpec
from shopformer.data.growth import grow_vocabs, prepare_window
from shopformer.data.sequences import Sequences
from shopformer.data.vocab import Vocab, Vocabs
from shopformer.models import REGISTRY, build_model
from shopformer.models.growth import grow_model, new_item_vectors
from shopformer.models.text import ItemText
from shopformer.pipelines.continuous import EXIT_REJECTED, add_run
from shopformer.pipelines.gate import GateConfig, gate, recent_split
from shopformer.pipelines.registry import Registry, RegistryError
from shopformer.recommender import Recommender

# ---------------------------------------------------------------------------------- vocabularies

pytest_plugins = ["continuous_support"]  # the fixtures logs, base_run, registry


def test_grow_vocabs_appends_and_never_moves_old_ids() -> None:
    old = Vocabs(Vocab(("<pad>", "u1")), Vocab(("<pad>", "b", "a")), Vocab(("<pad>", "view")), Vocab(("<pad>",)))
    frame = pl.DataFrame({"user_id": ["u1", "u2"], "item_id": ["c", "a"], "behaviour": ["buy", "view"],
                          "category_id": ["k", None]})
    frame = pl.concat([frame, pl.DataFrame({"user_id": ["u2"], "item_id": ["d"], "behaviour": ["view"],
                                            "category_id": ["k"]})])
    frame = pl.concat([frame, frame.tail(1)])  # d twice: most frequent new item first
    grown, growth = grow_vocabs(old, frame)
    assert grown.items.tokens == ("<pad>", "b", "a", "d", "c")
    assert grown.users.tokens == ("<pad>", "u1", "u2")
    assert grown.behaviours.tokens == ("<pad>", "view", "buy")
    assert grown.categories.tokens == ("<pad>", "k")
    assert growth.added == {"users": 1, "items": 2, "behaviours": 1, "categories": 1}
    again, growth2 = grow_vocabs(grown, frame)
    assert again == grown and sum(growth2.added.values()) == 0


def test_prepare_window_grows_dedups_and_cuts(logs: Path, base_run: Path, tmp_path: Path) -> None:
    old = Vocabs.load(logs / "ds0" / "vocab.json")
    res = prepare_window(logs / "ds0", [logs / "b.csv", logs / "b.csv"], tmp_path / "w", None, OPTS, window_days=5)
    assert res.vocabs.items.tokens[: len(old.items.tokens)] == old.items.tokens
    assert set(res.vocabs.items.tokens[len(old.items.tokens):]) == {f"i{i}" for i in range(41, 51)}
    assert res.stats["duplicates_dropped"] >= res.new_events.height // 2  # the second copy adds nothing
    assert res.stats["outside_time_window"] > 0 and res.window[1] - res.window[0] <= 5 * DAY
    events = pl.read_parquet(tmp_path / "w" / "events.parquet")
    assert events["timestamp"].min() >= res.window[0]
    assert set(events["source"].unique()) <= {"a.csv", "b.csv"}


def test_prepare_window_drops_forgotten_users(logs: Path, base_run: Path, tmp_path: Path) -> None:
    from shopformer.data.ledger import open_ledger

    ledger = open_ledger(tmp_path / "ledger.jsonl")
    ledger.record(["u5", "u250"], at=T0 + 100 * DAY)  # u5: old events only; u250: old and new ones
    res = prepare_window(logs / "ds0", [logs / "b.csv"], tmp_path / "w", None, OPTS, ledger=open_ledger(
        tmp_path / "ledger.jsonl", create=False))
    users = set(pl.read_parquet(tmp_path / "w" / "events.parquet")["user_id"].unique())
    assert "u5" not in users and "u250" not in users and "u6" in users
    assert res.stats["forgotten_dropped"] > 0


# --------------------------------------------------------------------------------------- models


@pytest.mark.parametrize("name", [*sorted(REGISTRY), "sasrec:untied", "sasrec:cosine"])
def test_grown_model_scores_old_items_as_before(name: str) -> None:
    name, _, variant = name.partition(":")
    cfg = Config().model.model_copy(update={"name": name, "dim": 16, "max_len": 8, "tie_output": variant != "untied",
                                            "cosine": variant == "cosine"})
    model = build_model(cfg, DataSpec(10, 2, 3, True)).eval()
    batch = random_task_batch(10, 2)
    batch = type(batch)(batch.items, batch.behaviours, batch.gaps, batch.categories)
    grown = grow_model(model, DataSpec(14, 2, 3, True), None, new_item_vectors(model, 14)).eval()
    with torch.no_grad():
        before, after = model.score_all(batch), grown.score_all(batch)
        assert torch.equal(grown.item_emb.weight[:11], model.item_emb.weight[:11])
        assert torch.equal(grown.item_emb.weight[15], model.item_emb.weight[11])  # [MASK] moved to the end
        if model.out_emb is not None:  # untied: the scoring table keeps its rows; new ones get the new vectors
            assert grown.out_emb is not None and torch.equal(grown.out_emb.weight[:11], model.out_emb.weight[:11])
            assert not torch.equal(grown.out_emb.weight[11], grown.item_emb.weight[11])
    torch.testing.assert_close(after[:, :11], before, rtol=0, atol=1e-5)
    assert torch.isfinite(after[:, 11:]).all()  # new items score like any item
    assert torch.equal(after[:, 1:11].argsort(1, descending=True), before[:, 1:].argsort(1, descending=True))


def test_grown_multitask_model_keeps_hidden_states_with_new_behaviours_and_categories() -> None:
    c = Config()
    task = c.task.model_copy(update={"kind": "multi"})
    model = build_model(c.model.model_copy(update={"dim": 16, "max_len": 8, "use_category": True}),
                        DataSpec(10, 3, 2, True), task=task).eval()
    batch = random_task_batch(10, 3)
    batch = type(batch)(batch.items, batch.behaviours, batch.gaps, batch.categories)
    grown = grow_model(model, DataSpec(12, 5, 4, True), task).eval()
    with torch.no_grad():
        torch.testing.assert_close(grown.encode(batch), model.encode(batch), rtol=0, atol=1e-6)
        assert grown.action_logits(batch).shape == (3, 6)
    with pytest.raises(ValueError, match="only grow"):
        grow_model(model, DataSpec(9, 3, 2, True), task)


def test_new_item_vectors_prefer_text_then_cooccurrence_then_mean() -> None:
    cfg = Config().model.model_copy(update={"dim": 8, "max_len": 8})
    model = build_model(cfg, DataSpec(4, 1, 0, True))
    table = model.item_emb.weight.detach()
    vectors = np.zeros((8, 3), np.float32)  # items 5, 6, 7 are new; 5 has a title like item 2's
    vectors[2], vectors[5] = [1, 0, 0], [1, 0, 0]
    vectors[3] = [0, 1, 0]
    text = ItemText(vectors, np.array([0, 0, 1, 1, 0, 1, 0, 0], bool))
    seq = Sequences.from_lists([[1, 6, 3], [6, 1]], [[1, 1, 1], [1, 1]], [[0, 1, 2], [0, 1]])
    init = new_item_vectors(model, 7, seq, text, k=1)
    assert init.methods == ("text", "cooccurrence", "mean")
    torch.testing.assert_close(init.vectors[0], table[2])
    torch.testing.assert_close(init.vectors[1], (2 * table[1] + table[3]) / 3)  # 1 twice, 3 once nearby
    torch.testing.assert_close(init.vectors[2], table[1:5].mean(0))
    assert init.counts() == {"text": 1, "cooccurrence": 1, "mean": 1}
    # cosine scoring: still the table's own rows (unit vectors would give a tied input table rows of another scale)
    cosine = build_model(cfg.model_copy(update={"cosine": True}), DataSpec(4, 1, 0, True))
    raw = cosine.item_emb.weight.detach()
    torch.testing.assert_close(new_item_vectors(cosine, 7, seq, text, k=1).vectors[2], raw[1:5].mean(0))


# ------------------------------------------------------------------------------------- registry


def test_retrain_promotes_and_new_items_become_recommendable(registry: Path, logs: Path) -> None:
    before = Recommender.load(registry / "current").recommend(["i38", "i39", "i40"], k=10).pairs()
    assert not any(item in {f"i{i}" for i in range(41, 51)} for item, _ in before)  # unknown to v0001
    out = small_retrain(registry, logs, promote=True, warm_epochs=20, overrides=("train.learning_rate=0.005",))
    assert (out.status, out.exit_code) == ("promoted", 0), out.reason
    reg = Registry(registry)
    assert reg.current() == "v0002" and reg.pointer()["history"] == ["v0001"]
    m = reg.read("v0002")
    assert m["parent"] == "v0001" and m["growth"]["added"]["items"] == 10
    assert sum(m["new_item_init"].values()) == 10 and m["new_item_init"]["cooccurrence"] == 10
    assert m["drift"]["unknown_item_share"] > 0 and "behaviour_psi" in m["drift"]
    assert set(m["gate"]["systems"]) >= {"candidate", "current (v0001)", "popularity"}
    old_vocab, new_vocab = load_run(registry / "versions" / "v0001" / "model").vocabs, load_run(
        registry / "current").vocabs
    assert new_vocab.items.tokens[: len(old_vocab.items.tokens)] == old_vocab.items.tokens
    rec = Recommender.load(registry / "current")
    top = [item for item, _ in rec.recommend(["i38", "i39", "i40"], k=3).pairs()]
    assert "i41" in top, top
    top = [item for item, _ in rec.recommend(["i42", "i43", "i44"], k=3).pairs()]
    assert "i45" in top, top


def test_warm_start_trains_recent_windows_only(registry: Path, logs: Path) -> None:
    from shopformer.data.batches import recent_windows, training_windows
    from shopformer.pipelines.continuous import warm_since

    seq = Sequences.from_lists([[1, 2, 3, 4, 5], [6, 7, 8]], [[1] * 5, [1] * 3], [[10, 20, 30, 40, 50], [5, 6, 7]])
    ends, starts = training_windows(seq, seq.offsets[1:], 2)  # user 0: windows ending at 5 and 3; user 1: at 8
    kept = recent_windows(seq, ends, starts, since=30)
    assert sorted(kept[0].tolist()) == [3, 5]  # user 1 (nothing since t=30) costs nothing
    assert sorted(recent_windows(seq, ends, starts, since=45)[0].tolist()) == [5]
    # the rule: the parent's training cut, at least one valid_days period before the candidate's cut
    assert warm_since({"data_window": {"train_end": 1000}}, 100 * DAY, 1.0) == 1000
    assert warm_since({"data_window": {"end": 50 * DAY}}, 100 * DAY, 1.0) == 48 * DAY
    assert warm_since({"data_window": {"train_end": 99 * DAY}}, 100 * DAY, 1.0) == 99 * DAY
    assert warm_since({}, 100 * DAY, 2.0) == 98 * DAY
    out = small_retrain(registry, logs, warm_epochs=1)
    m = out.manifest
    assert m["warm"] == {"epochs": 1, "patience": 1, "since": m["warm"]["since"], "since_utc": m["warm"]["since_utc"]}
    assert m["warm"]["since"] <= m["data_window"]["train_end"] - DAY and m["fit"]["epochs"] == 1
    assert m["config"]["train"]["epochs"] == 2  # the saved config keeps the train.* settings, not the warm budget


def test_rollback_restores_previous_answers_byte_for_byte(registry: Path, logs: Path) -> None:
    history = ["i3", "i4", "i5", "i6"]
    first = Recommender.load(registry / "current").recommend(history, k=10).pairs()
    weights = (registry / "current" / "model.safetensors").read_bytes()
    small_retrain(registry, logs, promote=True)
    assert Registry(registry).current() == "v0002"
    assert (registry / "current" / "model.safetensors").read_bytes() != weights
    runner = CliRunner()
    res = runner.invoke(app, ["models", "rollback", str(registry)])
    assert res.exit_code == 0, res.output
    assert Registry(registry).current() == "v0001"
    assert (registry / "current" / "model.safetensors").read_bytes() == weights
    assert Recommender.load(registry / "current").recommend(history, k=10).pairs() == first
    res = runner.invoke(app, ["models", "rollback", str(registry)])
    assert res.exit_code == 2 and "nothing to roll back" in res.output


def test_rejected_candidate_is_never_current(registry: Path, logs: Path) -> None:
    out = small_retrain(registry, logs, promote=True, gate=GateConfig(min_examples=10**6))
    assert (out.status, out.exit_code) == ("rejected", EXIT_REJECTED)
    assert "too few" in out.reason
    reg = Registry(registry)
    assert reg.current() == "v0001" and reg.read("v0002")["status"] == "rejected"
    with pytest.raises(RegistryError, match="rejected"):
        reg.promote("v0002")
    assert reg.current() == "v0001" and os.readlink(registry / "current") == "versions/v0001/model"
    res = CliRunner().invoke(app, ["models", "promote", str(registry), "v0002"])
    assert res.exit_code == 2 and reg.current() == "v0001"
    # the next retrain builds on the rejected candidate's data, not only on the current version's
    write_cycle_log(logs / "c.csv", 50, 11, 2, 100, seed=2, user_offset=600)
    out = small_retrain(registry, logs, events=(logs / "c.csv",))
    m = reg.read("v0003")
    assert (m["parent"], m["data_parent"]) == ("v0001", "v0002")
    assert m["events"]["total"] == reg.read("v0002")["events"]["total"] + m["events"]["new_valid"]
    assert m["growth"]["before"]["items"] == 50 and m["growth"]["added"]["items"] == 0


def test_retrain_warm_starts_a_multitask_run(logs: Path, base_run: Path, tmp_path: Path) -> None:
    from shopformer.pipelines.multi_behaviour import run_multibehaviour

    cfg = apply_overrides(Config(), [*FAST, "train.epochs=2", "task.kind=multi", "split.kind=temporal",
                                     "split.valid_start=0.8", "split.test_start=0.9"])
    multi = run_multibehaviour(logs / "ds0", cfg, tmp_path / "multi", progress=False, bootstrap=0)
    add_run(tmp_path / "reg", multi.run_dir)
    out = small_retrain(tmp_path / "reg", logs, promote=True)
    m = out.manifest
    assert m["gate"]["target_behaviour"] == "buy" and m["growth"]["added"]["items"] == 10
    assert m["config"]["task"]["kind"] == "multi" and "calibration" in m
    rec = Recommender.load(tmp_path / "reg" / "versions" / "v0002" / "model")
    assert len(rec.recommend(["i38", "i39", "i40"], k=5, behaviour="buy").pairs()) == 5
    # too few purchases on the gate slice: gated on the next item of any behaviour, and said so
    n_buy = m["gate"]["examples"]
    strict = GateConfig(baselines=False, min_examples=n_buy + 1, margin=1.0, fallback=False)
    assert small_retrain(tmp_path / "reg", logs, gate=strict).status == "rejected"
    out = small_retrain(tmp_path / "reg", logs, gate=GateConfig(baselines=False, min_examples=n_buy + 1, margin=1.0))
    fb = out.manifest["gate"]["fallback"]
    assert out.status == "candidate" and "gated on the next item of any behaviour" in out.reason
    assert (fb["target_behaviour"], fb["target_examples"], fb["target"]["examples"]) == ("buy", n_buy, n_buy)
    assert out.manifest["gate"]["examples"] > n_buy and out.manifest["gate"]["target_behaviour"] is None
    again = small_retrain(tmp_path / "reg", logs, from_scratch=True).manifest
    assert again["warm_start"] is False and "calibration" in again and "new_item_init" not in again
    assert again["events"]["duplicates_dropped"] >= again["events"]["new_valid"]  # b.csv a second time


def test_gate_rule_paired_and_ci_aware(logs: Path, base_run: Path) -> None:
    from shopformer.data.corpus import load_dataset

    ds = load_dataset(logs / "ds0")
    split, _, _ = recent_split(ds, 1.0)
    cfg = apply_overrides(Config(), ["eval.bootstrap=0"])
    targets = torch.zeros(ds.spec.n_items + 1)

    def perfect(batch: object) -> torch.Tensor:  # ranks the cycle's next item first
        items = batch.items[:, -1]
        s = targets.repeat(len(items), 1)
        s[torch.arange(len(items)), [ds.vocabs.items.index.get(f"i{int(ds.vocabs.items.tokens[i][1:]) % 40 + 1}", 1)
                                     for i in items.tolist()]] = 1.0
        return s

    def constant(batch: object) -> torch.Tensor:
        return torch.arange(ds.spec.n_items + 1, dtype=torch.float).repeat(len(batch.items), 1)

    systems = {"good": perfect, "bad": constant}
    ok = gate(systems, "good", "bad", ds, split, cfg, GateConfig(min_examples=1), [])
    assert ok["passed"] and ok["comparisons"]["bad"]["diff"] > 0.3
    no = gate(systems, "bad", "good", ds, split, cfg, GateConfig(min_examples=1), [])
    assert not no["passed"] and "worse on average" in no["reasons"][0]
    few = gate(systems, "good", "bad", ds, split, cfg, GateConfig(min_examples=10**6), [])
    assert not few["passed"] and "too few" in few["reasons"][0]


