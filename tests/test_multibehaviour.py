"""Multi-behaviour protocol: target choice, labels, examples, baselines, training entry, Recommender.

Behaviour names here are deliberately not Taobao's ("look" / "keep" / "take"): nothing in the
package may depend on a particular vocabulary.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from shopformer.config import Config
from shopformer.data.batches import Batch, EventArrays, TaskBatch, TrainLoader, training_windows
from shopformer.data.corpus import default_target_behaviour, funnel_depth
from shopformer.data.sequences import Sequences
from shopformer.data.split import Window, intent_examples, intent_labels_after, subsample, window_examples
from shopformer.evaluation.baselines import RecentItems, behaviour_transitions
from shopformer.evaluation.behaviour import decision_offsets
from shopformer.models.heads import window_intent_labels

LOOK, KEEP, TAKE = 1, 2, 3


def seqs(users: list[list[tuple[int, int, int]]]) -> Sequences:
    """Users as lists of (item, behaviour, time)."""
    return Sequences.from_lists([[e[0] for e in u] for u in users], [[e[1] for e in u] for u in users],
                                [[e[2] for e in u] for u in users])


def test_funnel_depth_and_default_target_by_hand() -> None:
    s = seqs([[(1, LOOK, 0), (1, KEEP, 1), (1, TAKE, 2), (2, LOOK, 3), (2, TAKE, 4), (3, KEEP, 5)],
              [(4, TAKE, 0)]])
    depth = funnel_depth(s, 3)
    # look: nothing before it on its item (0, 0); keep: (look) 1 and 0; take: (look, keep) 2, (look) 1, 0
    assert depth[1:].tolist() == pytest.approx([0.0, 0.5, 1.0])
    # "keep" is the rarest type (2 events vs 3), but "take" ends the funnel
    assert default_target_behaviour(s, 3) == TAKE
    # another user's events on the same item do not count
    assert funnel_depth(seqs([[(1, LOOK, 0)], [(1, TAKE, 0)]]), 3)[TAKE] == 0.0


def test_intent_labels_after_by_hand() -> None:
    s = seqs([[(1, LOOK, 0), (2, KEEP, 1), (2, TAKE, 2), (3, LOOK, 3), (4, LOOK, 4)],
              [(5, TAKE, 0), (6, LOOK, 1)]])
    ends = s.offsets[1:]
    # after event i: is TAKE among events i+1, i+2 (same user, before the user's end)?
    assert intent_labels_after(s, ends, TAKE, 2).tolist() == [1, 1, 0, -1, -1, -1, -1]
    # horizon 1: event 4 is the user's last; the next flat event belongs to another user -> unknown
    assert intent_labels_after(s, ends, TAKE, 1).tolist() == [0, 1, 0, 0, -1, 0, -1]
    # a bound cuts the readable future: user 0 may read events < 3 only
    cut = np.array([3, 7])
    assert intent_labels_after(s, cut, TAKE, 2).tolist() == [1, -1, -1, -1, -1, -1, -1]


def test_loader_labels_agree_with_window_labels_and_know_more() -> None:
    rng = np.random.default_rng(0)
    users = [[(int(rng.integers(1, 20)), int(rng.choice([1, 1, 1, 2, 3])), t) for t in range(n)]
             for n in (25, 7, 40)]
    s = seqs(users)
    train_end = s.offsets[1:] - 2
    labels = intent_labels_after(s, train_end, TAKE, 3)
    ends, starts = training_windows(s, train_end, 6)
    loader = TrainLoader(EventArrays.from_sequences(s, 8), ends, starts, 6, 4, 0, labels=labels)
    known_loader = known_window = 0
    for b in loader:
        assert isinstance(b, TaskBatch)
        win = window_intent_labels(b.target_behaviours, TAKE, 3)
        both = (win >= 0) & (b.intent_labels >= 0)
        assert torch.equal(win[both], b.intent_labels[both])
        assert ((win >= 0) <= (b.intent_labels >= 0)).all(), "the prefix knows at least what the window knows"
        assert (b.intent_labels[b.items == 0] == -1).all()
        known_loader += int((b.intent_labels >= 0).sum())
        known_window += int((win >= 0).sum())
    assert known_loader > known_window  # positions near a window's end are labelled from later events


def test_window_examples_count_exclusions() -> None:
    s = seqs([[(1, LOOK, 0), (2, TAKE, 5), (3, LOOK, 6)],  # take in the window, with history
              [(4, TAKE, 5), (5, LOOK, 7)],  # take in the window but no history: excluded
              [(6, LOOK, 1), (7, LOOK, 5)],  # active in the window, never takes: excluded
              [(8, TAKE, 1)]])  # not active in the window: not counted
    w = Window("test", 5, None, s.offsets[1:])
    ex, excl = window_examples(s, w, TAKE)
    assert ex.pos.tolist() == [1] and ex.rows.tolist() == [0]
    # user 2 never takes in the window; user 1's take has no history (counted as such)
    assert excl == {"users_in_window_without_event": 1, "events_without_history": 1}
    ex_all, excl_all = window_examples(s, w)
    assert ex_all.pos.tolist() == [1, 2, 4, 6] and excl_all["events_without_history"] == 1
    ex_i, y, excl_i = intent_examples(s, w, TAKE, 1)
    # predictions before events 1, 2, 4, 6 read events 1, 2, 4, 6 themselves (horizon 1)
    assert ex_i.pos.tolist() == [1, 2, 4, 6] and y.tolist() == [1, 0, 0, 0] and excl_i["censored_horizon"] == 0
    _, _, excl_2 = intent_examples(s, w, TAKE, 2)
    assert excl_2["censored_horizon"] == 3  # only user 0's first prediction has two events left


def test_subsample_is_seeded_and_ordered() -> None:
    s = seqs([[(i + 1, LOOK, i) for i in range(50)]])
    ex, _ = window_examples(s, Window("t", 0, None, s.offsets[1:]))
    a, b = subsample(ex, 10), subsample(ex, 10)
    assert len(a) == 10 and np.array_equal(a.pos, b.pos) and np.all(np.diff(a.pos) > 0)
    assert subsample(ex, None) is ex


def test_recent_items_heuristic_by_hand() -> None:
    items = torch.tensor([[0, 4, 5, 4, 6]])
    beh = torch.tensor([[0, KEEP, LOOK, LOOK, KEEP]])
    b = Batch(items, beh, torch.ones_like(items), torch.zeros_like(items))
    prior = np.zeros(10)
    prior[9] = 5  # the most popular item ranks right after the history items
    allowed = np.array([False, False, True, True])  # everything but the majority (look)
    s = RecentItems(allowed, prior)(b)[0]
    order = s.topk(3).indices.tolist()
    # item 6 kept last, then item 4 (kept at position 1; its later look does not count), then the prior
    assert order == [6, 4, 9]
    s_all = RecentItems(np.array([False, True, True, True]), prior)(b)[0]
    assert s_all.topk(4).indices.tolist() == [6, 4, 5, 9]
    assert torch.isneginf(s[0])


def test_behaviour_transitions_by_hand() -> None:
    s = seqs([[(1, LOOK, 0), (2, KEEP, 1), (3, LOOK, 2)], [(1, LOOK, 0), (1, LOOK, 1)]])
    p = behaviour_transitions(s, s.offsets[1:], 3)
    # from look: look->keep once, look->look once (+1 smoothing each): (2, 2, 1) / 5
    assert p[LOOK, 1:].tolist() == pytest.approx([2 / 5, 2 / 5, 1 / 5])
    assert p[KEEP, 1:].tolist() == pytest.approx([2 / 4, 1 / 4, 1 / 4])
    assert np.allclose(p[1:].sum(1), 1.0)


def test_decision_offsets_raise_macro_f1_over_argmax() -> None:
    from shopformer.evaluation.classification import macro_f1

    rng = np.random.default_rng(0)
    y = rng.choice([1, 2], 2000, p=[0.9, 0.1])
    # a calibrated but weak model: class 2 gets probability 0.3 when true, 0.08 otherwise
    p2 = np.where(y == 2, 0.3, 0.08) + rng.normal(0, 0.02, len(y))
    probs = np.stack([np.zeros_like(p2), 1 - p2, p2], 1)
    prior = np.array([0.0, 0.9, 0.1])
    argmax = np.argmax(probs, 1)
    tau, off = decision_offsets(probs, y, prior, [1, 2])
    tuned = np.argmax(np.log(probs + 1e-12) + off, 1)
    assert tau > 0 and macro_f1(y, tuned, [1, 2]) > macro_f1(y, argmax, [1, 2]) + 0.2


# ---- end to end on a prepared data set with its own behaviour names ----------------------------


@pytest.fixture(scope="module")
def prepared(shop_log: Path) -> Path:
    return shop_log


def small_cfg(**task: object) -> Config:
    return Config().override(
        model={"dim": 16, "layers": 1, "heads": 2, "max_len": 12, "dropout": 0.0, "emb_dropout": 0.0},
        task={"kind": "multi", "intent_horizon": 3, **task},
        train={"epochs": 2, "batch_size": 32, "threads": 1},
        split={"kind": "temporal", "valid_start": 0.6, "test_start": 0.8},
        eval={"bootstrap": 0, "ks": [5, 10]},
    )


def test_configuration_errors_are_clear(prepared: Path) -> None:
    from shopformer.data.corpus import load_dataset
    from shopformer.pipelines.multi_behaviour import configure

    ds = load_dataset(prepared)
    with pytest.raises(ValueError, match=r"unknown behaviour 'buy'; known: look, keep, take"):
        configure(ds, small_cfg(target_behaviour="buy"))
    with pytest.raises(ValueError, match="temporal split"):
        configure(ds, small_cfg().override(split={"kind": "loo"}))
    with pytest.raises(ValueError, match="causal"):
        configure(ds, small_cfg().override(model={"name": "bert4rec"}))
    cfg, bid = configure(ds, small_cfg())
    assert cfg.task.target_behaviour == "take" and ds.vocabs.behaviours.tokens[bid] == "take"
    assert cfg.eval.exclude_seen is False


def test_run_multibehaviour_end_to_end(prepared: Path, tmp_path: Path) -> None:
    from shopformer.pipelines.multi_behaviour import run_multibehaviour
    from shopformer.recommender import ANY_BEHAVIOUR, History, Recommender

    res = run_multibehaviour(prepared, small_cfg(), tmp_path / "run", progress=False, ablation=True)
    m = res.metrics
    assert m["target_behaviour"] == "take" and m["behaviours"] == ["look", "keep", "take"]
    items = m["next_item"]
    assert set(items) == {"any", "look", "keep", "take"}
    take = items["take"]
    for system in ("sasrec", "sasrec without behaviour inputs", "popularity among take", "markov",
                   "recent non-majority items", "recent items"):
        assert 0.0 <= take[system]["ndcg@10"] <= 1.0 and take[system]["n"] > 0
    assert set(m["next_action"]) >= {"sasrec", "sasrec without behaviour inputs", "majority class"}
    assert m["next_action"]["majority class"]["per_class_recall"]["look"] == 1.0
    intent = m["intent"]["sasrec"]
    assert 0.0 <= intent["roc_auc"] <= 1.0 and 0.0 <= intent["ece"] <= 1.0
    # users active in the test window without a "take" there: counted, not scored (by hand)
    from shopformer.data.corpus import load_dataset
    from shopformer.data.split import make_windows
    from shopformer.pipelines.multi_behaviour import configure

    ds = load_dataset(prepared)
    rcfg, take_id = configure(ds, small_cfg())
    test_w = make_windows(ds.seq, rcfg)[2]
    in_test = (ds.seq.times >= test_w.lo) & (True if test_w.hi is None else ds.seq.times < test_w.hi)
    user = ds.seq.user_row_of_event()
    without = set(user[in_test].tolist()) - set(user[in_test & (ds.seq.behaviours == take_id)].tolist())
    assert len(without) > 0
    assert m["excluded"]["items_take"]["users_in_window_without_event"] == len(without)
    assert m["excluded"]["intent"]["censored_horizon"] > 0  # last events of each user cannot be labelled
    for f in ("metrics.json", "report.md", "confusion_sasrec.png", "reliability_sasrec.png", "train_log.csv"):
        assert (tmp_path / "run" / f).exists(), f
    json.loads((tmp_path / "run" / "metrics.json").read_text())

    rec = Recommender.load(res.run_dir)
    assert rec.target_behaviour == "take"
    assert set(rec.target_behaviours) == {ANY_BEHAVIOUR, "look", "keep", "take"}
    h = History(["i3", "i5", "i3"], ["look", "keep", "look"], [1_600_000_000, 1_600_000_100, 1_600_000_300])
    probs = rec.predict_next_action(h)
    assert list(probs) == ["look", "keep", "take"] and sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
    p = rec.purchase_intent(h)
    assert 0.0 < p < 1.0
    a, b = m["intent"]["sasrec"]["platt"]
    assert rec.model.heads.intent_calibration.tolist() == pytest.approx([a, b], rel=1e-5)
    takes = rec.recommend(h.items, k=5, behaviours=h.behaviours, timestamps=h.timestamps, behaviour="take")
    looks = rec.recommend(h.items, k=5, behaviours=h.behaviours, timestamps=h.timestamps, behaviour="look")
    default = rec.recommend(h.items, k=5, behaviours=h.behaviours, timestamps=h.timestamps)
    assert default.items == takes.items and takes.scores != looks.scores
    with pytest.raises(ValueError, match="unknown behaviour 'buy'"):
        rec.recommend(h.items, behaviour="buy")
    with pytest.raises(ValueError, match="no known item"):
        rec.purchase_intent(["not-an-item"])

    # the saved run re-evaluates to the same numbers (calibration and weights travel with it)
    from shopformer.pipelines.multi_behaviour import evaluate_run

    again, table = evaluate_run(res.run_dir)

    def numbers(d: dict, prefix: str = "") -> dict[str, float]:  # nested metrics, flattened
        out: dict[str, float] = {}
        for k, v in d.items():
            out.update(numbers(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    assert numbers(again["next_item"]["take"]["sasrec"]) == pytest.approx(numbers(take["sasrec"]))
    assert again["intent"]["sasrec"]["roc_auc"] == pytest.approx(intent["roc_auc"])
    assert again["next_action"]["sasrec"]["macro_f1"] == pytest.approx(m["next_action"]["sasrec"]["macro_f1"])
    assert "next action" in table


def test_refit_heads_goes_through_fit_and_lowers_the_heads_validation_loss(prepared: Path, monkeypatch) -> None:
    import torch.nn.functional as F

    import shopformer.pipelines.multi_behaviour as mb
    import shopformer.training.heads as training_heads
    from shopformer.data.batches import history_batches
    from shopformer.data.corpus import load_dataset
    from shopformer.data.split import make_windows

    ds = load_dataset(prepared)
    cfg, target = mb.configure(ds, small_cfg())
    train_end, valid_w, _ = make_windows(ds.seq, cfg)
    arrays = EventArrays.from_sequences(ds.seq, cfg.model.time_buckets)

    def features(model, ex) -> torch.Tensor:
        batches = history_batches(ds.seq, arrays, ex, cfg.model.max_len, 64)
        return torch.cat([model.head_features(b) for _, b in batches])

    def valid_losses(model) -> dict[str, float]:
        """The heads' losses at the validation window's events (what the refit early-stops on)."""
        model.eval()
        with torch.no_grad():
            ex, _ = window_examples(ds.seq, valid_w)
            y = torch.from_numpy(ds.seq.behaviours[ex.pos].astype(np.int64))
            action = F.cross_entropy(model.heads.action_logits(features(model, ex))[:, 1:], y - 1)
            ex, labels, _ = intent_examples(ds.seq, valid_w, target, cfg.task.intent_horizon)
            logit = model.heads.intent_logit(features(model, ex))
            intent = F.binary_cross_entropy_with_logits(logit, torch.from_numpy(labels).float())
        return {"action": float(action), "intent": float(intent)}

    calls: list = []
    before: dict[str, float] = {}
    real_fit, real_refit = training_heads.fit, mb.refit_heads

    def fit_spy(module, cfg_, *args, **kwargs):
        calls.append((module, cfg_.train, kwargs))
        return real_fit(module, cfg_, *args, **kwargs)

    def refit_spy(model, *args, **kwargs):
        before.update(valid_losses(model))  # the heads as the encoder's fit left them
        return real_refit(model, *args, **kwargs)

    monkeypatch.setattr(training_heads, "fit", fit_spy)
    monkeypatch.setattr(mb, "refit_heads", refit_spy)
    model, _ = mb.train_multi_task(ds, cfg, target, train_end, valid_w, arrays, None, False)
    assert before, "train_multi_task refits the heads"
    assert [c[0] for c in calls] == [model.heads.action, model.heads.intent], "each head MLP is refitted by fit"
    for _, tc, kwargs in calls:
        assert kwargs["validate"] is not None and kwargs["score_start"] and tc.learning_rate == 1e-3
    after = valid_losses(model)
    assert after["action"] < before["action"] and after["intent"] < before["intent"], (before, after)


def test_unknown_behaviours_in_a_fixed_vocabulary(tmp_path: Path) -> None:
    """Strict prepare names the value and the line; the default quarantines the row."""
    import polars as pl

    from shopformer.data.ingest import DataValidationError, IngestOptions
    from shopformer.data.prepare import prepare

    path = tmp_path / "log.csv"
    path.write_text("u1,i1,look,1600000000\nu1,i2,grab,1600000001\nu1,i3,take,1600000002\n")
    cols = ("user_id", "item_id", "event_type", "timestamp")
    fixed = IngestOptions(columns=cols, behaviours=("look", "keep", "take"), now=2_000_000_000)
    with pytest.raises(DataValidationError, match=r"log.csv:2: behaviour: unknown behaviour 'grab'"):
        prepare([path], tmp_path / "strict", IngestOptions(**{**fixed.__dict__, "strict": True}))
    out = prepare([path], tmp_path / "lenient", fixed)
    rejects = pl.read_parquet(out.path / "rejects.parquet")
    assert rejects["line"].to_list() == [2] and rejects["value"].to_list() == ["grab"]
    assert out.stats["events"] == 2


def test_intent_within_a_time_horizon_end_to_end(prepared: Path, tmp_path: Path) -> None:
    """task.intent_seconds: labels by time (censored at each window's end), the protocol says so."""
    from shopformer.pipelines.multi_behaviour import run_multibehaviour

    res = run_multibehaviour(prepared, small_cfg(intent_seconds=86400), tmp_path / "run", progress=False)
    m = res.metrics
    assert "within 1 d" in m["protocol"] and m["task"]["intent_seconds"] == 86400
    assert m["intent"]["sasrec"]["n"] > 0 and 0.0 < m["intent"]["sasrec"]["positive_rate"] < 1.0
    assert m["excluded"]["intent"]["censored_horizon"] > 0  # the last day of the log cannot be labelled
    assert "within 1 d" in res.table
