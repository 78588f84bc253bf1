import numpy as np
import pytest

from shopformer.data.sequences import Sequences
from shopformer.data.split import leave_one_out, temporal_split


def make_seq(items: list[list[int]], behaviours: list[list[int]] | None = None,
             times: list[list[int]] | None = None) -> Sequences:
    behaviours = behaviours or [[1] * len(x) for x in items]
    return Sequences.from_lists(items, behaviours, times)


def test_leave_one_out_targets_and_train_prefix() -> None:
    seq = make_seq([[1, 2, 3, 4], [5, 6, 7], [8, 9]])
    sp = leave_one_out(seq)
    # user 0: train = [1, 2], valid target 3, test target 4
    assert sp.train_end.tolist() == [2, 5, 7]
    # user 2's validation target (8) has no history: it is excluded from both evaluations
    assert seq.items[sp.valid.pos].tolist() == [3, 6]
    assert seq.items[sp.test.pos].tolist() == [4, 7]


def test_refit_end_adds_validation_events_and_never_a_test_target() -> None:
    seq = make_seq([[1, 2, 3, 4], [5, 6, 7], [8, 9]])
    sp = leave_one_out(seq)
    assert sp.refit_end.tolist() == [3, 6, 8]  # up to and including each validation target
    assert sp.training_end(refit=False) is sp.train_end and sp.training_end(refit=True) is sp.refit_end
    tp = temporal_split(make_seq([[1, 2, 3, 4, 5], [6, 7]], times=[[10, 20, 30, 40, 50], [35, 45]]), t1=30, t2=45)
    assert tp.refit_end.tolist() == [4, 6]  # the whole validation window [30, 45), nothing from the test window
    for s in (sp, tp):
        assert np.all(s.refit_end >= s.train_end) and np.all(s.refit_end[s.test.rows] <= s.test.pos)


def test_leave_one_out_excludes_users_without_history_for_validation() -> None:
    seq = make_seq([[1, 2, 3], [4, 5]])
    sp = leave_one_out(seq)
    # user 1: valid target 4 has an empty history -> excluded and counted
    assert sp.valid.rows.tolist() == [0]
    assert sp.excluded["valid_no_target_or_history"] == 1


def test_leave_one_out_never_leaks_the_target_into_its_history() -> None:
    rng = np.random.default_rng(0)
    items = [list(rng.integers(1, 50, size=rng.integers(3, 20))) for _ in range(40)]
    seq = make_seq(items)
    sp = leave_one_out(seq)
    for ex in (sp.valid, sp.test):
        start = seq.offsets[:-1][ex.rows]
        assert np.all(start < ex.pos)  # history non-empty
        assert np.all(ex.pos < seq.offsets[1:][ex.rows])  # target belongs to the same user
    assert np.all(sp.train_end[sp.valid.rows] <= sp.valid.pos)
    assert np.all(sp.train_end[sp.test.rows] < sp.test.pos)


def test_leave_one_out_with_target_behaviour_picks_last_two_of_that_type() -> None:
    seq = make_seq([[1, 2, 3, 4, 5, 6]], [[1, 2, 1, 2, 1, 1]])
    sp = leave_one_out(seq, target_behaviour=2)
    assert seq.items[sp.test.pos].tolist() == [4]
    assert seq.items[sp.valid.pos].tolist() == [2]
    assert sp.train_end.tolist() == [1]  # events before the validation target


def test_temporal_split_boundaries_and_history_cut() -> None:
    seq = make_seq([[1, 2, 3, 4, 5], [6, 7]], times=[[10, 20, 30, 40, 50], [35, 45]])
    sp = temporal_split(seq, t1=30, t2=45)
    assert sp.train_end.tolist() == [2, 5]  # user 1's first event (35) is already after t1
    assert seq.items[sp.valid.pos].tolist() == [3]  # user 1's valid target (35) has no history
    assert sp.excluded["valid_no_target_or_history"] == 1
    assert seq.items[sp.test.pos].tolist() == [5, 7]
    # every history ends strictly before the target, and only earlier events of the same user
    assert np.all(seq.times[sp.test.pos - 1] <= seq.times[sp.test.pos])


def test_temporal_split_rejects_bad_boundaries() -> None:
    seq = make_seq([[1, 2]], times=[[1, 2]])
    with pytest.raises(ValueError, match="valid_start < test_start"):
        temporal_split(seq, 5, 5)


def test_split_is_pure() -> None:
    seq = make_seq([[1, 2, 3, 4]])
    before = seq.items.copy()
    a, b = leave_one_out(seq), leave_one_out(seq)
    assert np.array_equal(a.train_end, b.train_end) and np.array_equal(seq.items, before)


def test_boundaries_in_0_1_are_quantiles_of_event_times_not_of_the_time_range() -> None:
    from shopformer.data.split import resolve_boundary

    # 9 events in a burst at t=0..8, one straggler at t=1000: 0.5 of the time range would be t=500
    seq = make_seq([list(range(1, 11))], times=[[*range(9), 1000]])
    assert resolve_boundary(seq, 0.5) == 4  # half of the events happened before t=4
    assert resolve_boundary(seq, 0.9) == 8
    assert resolve_boundary(seq, 1_500_000_000.0) == 1_500_000_000  # outside (0, 1): Unix seconds


def test_small_splits_are_reported_and_empty_ones_refused(tmp_path) -> None:
    from shopformer.config import Config
    from shopformer.data.corpus import Dataset, make_split
    from shopformer.data.split import split_warnings
    from shopformer.data.vocab import PAD_TOKEN, Vocab, Vocabs

    assert split_warnings(500, 500, 100) == []
    warned = split_warnings(500, 8, 100)
    assert len(warned) == 1 and "only 8 test targets" in warned[0]
    with pytest.raises(ValueError, match="0 test targets"):
        split_warnings(10, 0, 100)
    seq = make_seq([[1, 2, 3, 4]] * 5)
    vocab = Vocab((PAD_TOKEN, "a", "b", "c", "d"))
    ds = Dataset(tmp_path, seq, Vocabs(Vocab((PAD_TOKEN, *"uvwxy")), vocab, Vocab((PAD_TOKEN, "x")),
                                       Vocab((PAD_TOKEN,))), {}, "fp")
    split = make_split(ds, Config())
    assert len(split.test) == 5 and any("only 5 validation targets" in w for w in split.warnings)
    assert make_split(ds, Config().override(split={"min_targets": 5})).warnings == ()


def test_intent_labels_within_a_time_horizon_with_censoring() -> None:
    from shopformer.data.split import intent_labels_after

    # behaviour 2 = the target ("buy"); times in hours
    h = 3600
    seq = make_seq([[1, 2, 3, 4], [5, 6]], behaviours=[[1, 1, 2, 1], [1, 2]],
                   times=[[0, 10 * h, 30 * h, 100 * h], [0, 50 * h]])
    end = seq.offsets[1:]  # labels may read every event
    day = intent_labels_after(seq, end, target=2, horizon=99, seconds=24 * h, end_time=110 * h)
    # user 0: event at 0h -> buy at 30h (> 24h) -> 0; 10h -> 30h (20h) -> 1; 30h (the buy itself) -> no later
    # buy, horizon ends 54h < 110h -> 0; 100h -> horizon ends 124h > 110h, nothing seen -> censored
    # user 1: 0h -> buy at 50h -> 0; 50h -> horizon 74h < 110h, no later buy -> 0
    assert day.tolist() == [0, 1, 0, -1, 0, 0]
    # a bound that hides the buy: user 0's events before it cannot see it, and the period is cut at 20h
    cut = intent_labels_after(seq, np.array([2, 6]), target=2, horizon=99, seconds=24 * h, end_time=20 * h)
    assert cut[:2].tolist() == [-1, -1]
    # the event-count horizon is unchanged
    assert intent_labels_after(seq, end, target=2, horizon=2).tolist() == [1, 1, -1, -1, -1, -1]
