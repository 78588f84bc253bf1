"""The heuristics a shop tries first (weighted recent items, co-occurrence, category popularity) and
the repeat / explore split of ranking metrics, against hand-computed values on tiny data.

Behaviour names are deliberately not Taobao's: nothing may depend on a particular vocabulary.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from shopformer.data.batches import Batch
from shopformer.data.sequences import Sequences
from shopformer.data.split import EvalExamples
from shopformer.evaluation.baselines import (
    CategoryPopularity,
    CoOccurrence,
    Markov,
    Popularity,
    RecentItems,
    WeightedRecentItems,
    behaviour_repeat_weights,
    item_categories,
    item_counts,
    item_similarity,
    repeat_targets,
)
from shopformer.evaluation.metrics import metric_keys, per_example, repeat_mask, split_repeat_explore

LOOK, KEEP, TAKE = 1, 2, 3
INF = float("-inf")


def seqs(users: list[list[tuple[int, int, int]]]) -> Sequences:
    """Users as lists of (item, behaviour, category); times are the positions."""
    return Sequences.from_lists(
        [[e[0] for e in u] for u in users],
        [[e[1] for e in u] for u in users],
        [list(range(len(u))) for u in users],
        [[e[2] for e in u] for u in users],
    )


def batch(rows: list[list[tuple[int, int, int]]]) -> Batch:
    """Histories as lists of (item, behaviour, category), left-padded with 0 (most recent last)."""
    length = max(len(r) for r in rows)
    pad = [[(0, 0, 0)] * (length - len(r)) + r for r in rows]
    t = torch.tensor(pad, dtype=torch.int64)  # (B, L, 3)
    return Batch(t[..., 0], t[..., 1], torch.ones_like(t[..., 0]), t[..., 2])


def close(a: torch.Tensor, b: list[float]) -> bool:
    """Equal scores (including -inf at padding), whatever the order of tied items."""
    return torch.allclose(a, torch.tensor(b, dtype=a.dtype), atol=1e-6)


# --- weighted recent items -------------------------------------------------------------------------


def test_behaviour_repeat_weights_by_hand() -> None:
    s = seqs([[(1, LOOK, 0), (1, KEEP, 0), (2, LOOK, 0), (3, LOOK, 0), (3, TAKE, 0)],
              [(4, LOOK, 0), (4, LOOK, 0), (4, LOOK, 0)]])
    train_end = np.array([5, 6])  # the second user has one training event: nothing follows it there
    # next event on the same item: look 2 of 3 (events 0 and 3), keep 0 of 1, take never followed;
    # (hits + 1) / (events + 2) = 3/5, 1/3, 1/2, divided by the largest
    w = behaviour_repeat_weights(s, train_end, 3)
    assert w.tolist() == pytest.approx([0.0, 1.0, (1 / 3) / 0.6, 0.5 / 0.6])
    # as a "take" of the same item within the next two events: only event 3 (look -> take of item 3)
    w_take = behaviour_repeat_weights(s, train_end, 3, horizon=2, target_behaviour=TAKE)
    assert w_take.tolist() == pytest.approx([0.0, 0.4 / 0.5, (1 / 3) / 0.5, 1.0])


def test_weighted_recent_items_by_hand() -> None:
    prior = np.array([0, 0, 3, 0, 1, 0, 0, 0, 9])  # 8 items; prior = count / (9 + 1)
    wr = WeightedRecentItems(np.array([0.0, 1.0, 2.0, 4.0]), prior, decay=0.5)
    b = batch([[(4, LOOK, 0), (5, LOOK, 0), (4, KEEP, 0), (6, LOOK, 0)], []])
    s = wr(b)
    # item 4: look at age 3 (1 * 0.125) + keep at age 1 (2 * 0.5); item 5: 1 * 0.25; item 6: 1 * 1
    assert close(s[0], [INF, 0, 0.3, 0, 1 + 1.125, 1 + 0.25, 1 + 1.0, 0, 0.9])
    assert close(s[1], [INF, 0, 0.3, 0, 0.1, 0, 0, 0, 0.9])  # empty history: the prior alone
    # a behaviour weighted 0 says nothing: item 4 keeps only its look, and an item only kept drops to the prior
    s0 = WeightedRecentItems(np.array([0.0, 1.0, 0.0, 4.0]), prior, decay=0.5)(batch([[(4, LOOK, 0), (2, KEEP, 0)]]))
    assert close(s0[0], [INF, 0, 0.3, 0, 1.5, 0, 0, 0, 0.9])


def test_weighted_recent_items_fit_reads_training_weights_and_prior() -> None:
    s = seqs([[(1, LOOK, 0), (1, KEEP, 0), (2, TAKE, 0), (2, TAKE, 0)], [(3, TAKE, 0), (1, LOOK, 0)]])
    train_end = np.array([3, 6])
    wr = WeightedRecentItems.fit(s, train_end, 3, 3, decay=0.7, target_behaviour=TAKE)
    assert wr.weights.tolist() == pytest.approx(behaviour_repeat_weights(s, train_end, 3, 1, TAKE).tolist())
    assert wr.prior.tolist() == pytest.approx([0.0, 0.0, 0.5, 0.5])  # takes in training: items 2 and 3 once each
    assert wr.decay == 0.7


# --- co-occurrence ---------------------------------------------------------------------------------

CO_USERS = [[(1, LOOK, 0), (2, LOOK, 0), (3, LOOK, 0)], [(2, LOOK, 0), (3, KEEP, 0), (2, LOOK, 0)], [(4, LOOK, 0)]]


def test_item_similarity_by_hand() -> None:
    s = seqs(CO_USERS)
    end = s.offsets[1:]
    # adjacent pairs: (1,2) once, (2,3) once in user 0 and twice in user 1 ((2,3), (3,2)); a repeat (2,2) never
    # counts. Counts n: 1 -> 1, 2 -> 3, 3 -> 2, 4 -> 1. sim = c / sqrt(n_i n_j)
    a, b, c = 1 / math.sqrt(3), 3 / math.sqrt(6), 1 / math.sqrt(2)
    sim1 = item_similarity(s, end, 4, window=1).to_dense()
    expected = torch.zeros(5, 5)
    expected[1, 2] = expected[2, 1] = a
    expected[2, 3] = expected[3, 2] = b
    assert torch.allclose(sim1, expected)
    # two events apart adds (1, 3) from user 0
    sim2 = item_similarity(s, end, 4, window=2).to_dense()
    expected[1, 3] = expected[3, 1] = c
    assert torch.allclose(sim2, expected)
    # one neighbour per item: the strongest
    top1 = item_similarity(s, end, 4, window=2, neighbours=1).to_dense()
    kept = torch.zeros(5, 5)
    kept[1, 3], kept[2, 3], kept[3, 2] = c, b, b
    assert torch.allclose(top1, kept)
    assert item_similarity(s, end, 4, window=2, neighbours=1).values().numel() == 3  # sparse, never dense


def test_cooccurrence_scores_by_hand() -> None:
    s = seqs(CO_USERS)
    co = CoOccurrence(s, s.offsets[1:], 4, window=2, last=2, decay=0.5)
    out = co(batch([[(4, LOOK, 0), (1, LOOK, 0), (3, LOOK, 0)], [(4, LOOK, 0)], []]))
    a, b, c = 1 / math.sqrt(3), 3 / math.sqrt(6), 1 / math.sqrt(2)
    # last two events: item 1 (age 1, weight 0.5) and item 3 (age 0, weight 1); item 4 is out of the window.
    # item 1 <- 3: c; item 2 <- 1: 0.5 a, <- 3: b; item 3 <- 1: 0.5 c (nothing from itself: no repeat credit)
    prior = [0.25, 0.75, 0.5, 0.25]  # training counts 1, 3, 2, 1 over (3 + 1)
    assert close(out[0], [INF, 1 + c, 1 + 0.5 * a + b, 1 + 0.5 * c, 0.25])
    assert close(out[1], [INF, *prior])  # item 4 has no neighbour: the prior alone
    assert close(out[2], [INF, *prior])


# --- category popularity ---------------------------------------------------------------------------


def test_item_categories_from_training_events() -> None:
    s = seqs([[(1, LOOK, 1), (1, LOOK, 1), (2, LOOK, 3), (4, LOOK, 5)], [(1, KEEP, 2), (2, LOOK, 2), (3, LOOK, 0)]])
    cat = item_categories(s, np.array([3, 7]), 4)
    # item 1: category 1 twice, 2 once; item 2: 3 and 2 once each -> the smaller; item 3 unknown;
    # item 4 only after train_end
    assert cat.tolist() == [0, 1, 2, 0, 0]


def test_category_popularity_by_hand() -> None:
    cat = np.array([0, 1, 1, 2, 2, 2, 3])
    counts = np.array([0, 4, 2, 1, 5, 0, 7])
    cp = CategoryPopularity(cat, counts, decay=0.5)
    out = cp(batch([[(3, LOOK, 2), (1, LOOK, 1), (2, KEEP, 1)], [(6, LOOK, 9), (1, LOOK, 0)]]))
    # u(2) = 0.25 (age 2), u(1) = 0.5 + 1; within-category popularity: 1 -> 4/4, 2 -> 2/4, 3 -> 1/5, 4 -> 5/5,
    # 5 -> 0 (no count: prior tier); category 3 was not browsed; prior = count / (7 + 1)
    assert close(out[0], [INF, 1 + 1.5, 1 + 0.75, 1 + 0.25 * 0.2, 1 + 0.25, 0.0, 0.875])
    # unknown (0) and never-trained (9) categories say nothing
    assert close(out[1], [INF, 0.5, 0.25, 0.125, 0.625, 0.0, 0.875])


# --- shared properties -----------------------------------------------------------------------------


def _fitted(s: Sequences, end: np.ndarray) -> dict[str, object]:
    return {
        "weighted recent": WeightedRecentItems.fit(s, end, 6, 3, decay=0.8, horizon=2),
        "co-occurrence": CoOccurrence(s, end, 6, window=2, last=3),
        "category popularity": CategoryPopularity.fit(s, end, 6, decay=0.8),
    }


TRAIN = [[(1, LOOK, 1), (2, LOOK, 1), (1, KEEP, 1), (3, TAKE, 2), (5, LOOK, 3)],
         [(2, LOOK, 1), (4, LOOK, 2), (4, KEEP, 2), (3, LOOK, 2)]]
AFTER_A = [[(6, TAKE, 3), (6, TAKE, 3)], [(1, LOOK, 1), (2, KEEP, 1), (2, TAKE, 1)]]
AFTER_B = [[(1, LOOK, 2), (2, LOOK, 2)], [(5, TAKE, 3), (5, LOOK, 1), (3, KEEP, 2)]]


@pytest.mark.parametrize("name", ["weighted recent", "co-occurrence", "category popularity"])
def test_fitted_on_training_events_only(name: str) -> None:
    """Events after train_end (different items, behaviours, categories) never change the scores."""
    sa, sb = seqs([t + a for t, a in zip(TRAIN, AFTER_A, strict=True)]), seqs([t + b for t, b in zip(TRAIN, AFTER_B,
                                                                                                    strict=True)])
    end = sa.offsets[:-1] + np.array([len(t) for t in TRAIN])
    assert np.array_equal(sa.offsets, sb.offsets)
    b = batch([[(1, LOOK, 1), (4, KEEP, 2)], [(2, TAKE, 1)], [(6, LOOK, 3), (3, LOOK, 2), (5, KEEP, 3)]])
    fa, fb = _fitted(sa, end)[name], _fitted(sb, end)[name]
    assert torch.equal(fa(b), fb(b))  # type: ignore[operator]
    # ... while fitting on everything does see them
    fc = _fitted(sa, sa.offsets[1:])[name]
    assert not torch.equal(fa(b), fc(b))  # type: ignore[operator]


@pytest.mark.parametrize("name", ["weighted recent", "co-occurrence", "category popularity"])
def test_vectorised_rows_are_independent_and_complete(name: str) -> None:
    s = seqs([t + a for t, a in zip(TRAIN, AFTER_A, strict=True)])
    fn = _fitted(s, s.offsets[1:])[name]
    rows = [[(1, LOOK, 1), (4, KEEP, 2)], [(2, TAKE, 1)], [], [(6, LOOK, 3), (3, LOOK, 2), (5, KEEP, 3)]]
    together = fn(batch(rows))  # type: ignore[operator]
    assert together.shape == (4, 7) and together.dtype == torch.float32
    assert torch.isneginf(together[:, 0]).all() and torch.isfinite(together[:, 1:]).all()
    for i, r in enumerate(rows):  # a row's scores do not depend on the other rows or on its padding
        alone = fn(batch([r] if r else [[(0, 0, 0)]]))  # type: ignore[operator]
        assert torch.allclose(alone[0], together[i])
    assert isinstance(fn.name, str) and fn.__doc__  # type: ignore[attr-defined]


def test_every_baseline_has_a_name() -> None:
    names = {c.name for c in (Popularity, Markov, RecentItems, WeightedRecentItems, CoOccurrence, CategoryPopularity)}
    assert len(names) == 6


def test_first_tier_always_above_prior() -> None:
    """A history item (weighted recent) beats the most popular item, however old the event."""
    prior = np.zeros(4)
    prior[3] = 1000
    wr = WeightedRecentItems(np.array([0.0, 1.0]), prior, decay=0.01)
    items = [(1, LOOK, 0)] + [(2, LOOK, 0)] * 40  # item 1's event is 40 events old: 0.01 ** 40 underflows
    s = wr(batch([items]))[0]
    assert s[1] > s[3] and s[2] > s[1]


# --- repeat / explore ------------------------------------------------------------------------------


def test_repeat_mask_by_hand() -> None:
    # example 0 saw {7, 8}, example 1 saw {7}, example 2 nothing: item 7 elsewhere does not count
    assert repeat_mask(np.array([0, 0, 1]), np.array([7, 8, 7]), np.array([8, 8, 7])).tolist() == [True, False, False]
    assert repeat_mask(np.zeros(0, int), np.zeros(0, int), np.zeros(0, int)).tolist() == []


def test_repeat_targets_from_sequences() -> None:
    s = seqs([[(1, LOOK, 0), (2, LOOK, 0), (1, LOOK, 0), (3, LOOK, 0)], [(4, LOOK, 0), (5, LOOK, 0), (5, LOOK, 0)]])
    ex = EvalExamples(np.array([0, 0, 1, 1]), np.array([2, 3, 6, 5]))
    # 1 after [1, 2]: repeat; 3 after [1, 2, 1]: explore; 5 after [4, 5]: repeat; 5 after [4]: explore
    assert repeat_targets(s, ex).tolist() == [True, False, True, False]


def test_split_repeat_explore_by_hand() -> None:
    ranks = np.array([0, 1, 4, 10])
    out = split_repeat_explore(ranks, np.array([True, False, True, True]), (1, 5))
    rep, exp, all_ = out["repeat"], out["explore"], out["overall"]
    assert (rep["n"], exp["n"], all_["n"]) == (3, 1, 4)
    assert rep["share"] + exp["share"] == pytest.approx(1.0) and rep["share"] == 0.75 and all_["share"] == 1.0
    assert rep["hr@1"] == pytest.approx(1 / 3) and rep["hr@5"] == pytest.approx(2 / 3)
    assert rep["mrr"] == pytest.approx((1 + 0.2 + 1 / 11) / 3)
    assert rep["ndcg@5"] == pytest.approx((1 + 1 / math.log2(6)) / 3)
    assert exp["hr@1"] == 0.0 and exp["hr@5"] == 1.0 and exp["mrr"] == 0.5
    assert exp["ndcg@5"] == pytest.approx(1 / math.log2(3))
    assert all_["hr@5"] == 0.75 and all_["mrr"] == pytest.approx((1 + 0.5 + 0.2 + 1 / 11) / 4)
    assert "ci95" not in rep  # as summarise: CIs only when asked for


def test_split_repeat_explore_cis_and_empty_part() -> None:
    ranks = np.array([0, 1, 4, 10, 2, 0])
    out = split_repeat_explore(ranks, np.ones(6, bool), (1, 5), n_boot=200, seed=3)
    assert out["explore"]["n"] == 0 and out["explore"]["share"] == 0.0 and out["explore"]["hr@5"] == 0.0
    assert out["repeat"] == out["overall"]  # same examples, same seed
    for part in ("repeat", "overall"):
        ci = out[part]["ci95"]
        assert list(ci) == metric_keys((1, 5), ci=True)
        for name, (lo, hi) in ci.items():
            assert lo <= out[part][name] <= hi
    assert all(math.isnan(x) for lo_hi in out["explore"]["ci95"].values() for x in lo_hi)
    with pytest.raises(ValueError):
        split_repeat_explore(ranks, np.ones(5, bool), (1,))


def test_split_repeat_explore_reads_the_registry(monkeypatch) -> None:
    """Every registry metric (and only those) appears in each part; a new entry needs no other change."""
    from shopformer.evaluation import metrics as M

    extra = M.RankingMetric("hit_top1", lambda r, k: (r < 1).astype(np.float64), at_k=False)
    monkeypatch.setattr(M, "RANKING_METRICS", (*M.RANKING_METRICS, extra))
    ranks, rep = np.array([0, 3, 1]), np.array([True, False, False])
    out = split_repeat_explore(ranks, rep, (2,), n_boot=10)
    names = set(per_example(ranks, (2,)))
    assert "hit_top1" in names and "ndcg@2" in names
    for part in out.values():
        assert set(part) - {"n", "share", "ci95"} == names
        assert list(part["ci95"]) == metric_keys((2,), ci=True) and "hit_top1" in part["ci95"]
    assert out["repeat"]["hit_top1"] == 1.0 and out["explore"]["hit_top1"] == 0.0


def test_counts_helper_still_matches() -> None:
    s = seqs(CO_USERS)
    assert item_counts(s, s.offsets[1:], 4).tolist() == [0, 1, 3, 2, 1]
