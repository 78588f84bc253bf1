"""Recommender.explain (the agreed explanation API): reasons map back to the history as given,
weights are the real score drops, the recent-window cap, errors, and the "because you ..." text."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from applications_support import prepare_demo, tiny_run

from shopformer.evaluation.explain import describe_events
from shopformer.recommender import History, Reason, Recommender, describe_reasons

pytestmark = pytest.mark.filterwarnings("ignore:skipped:UserWarning")  # the unknown events, on purpose


@pytest.fixture(scope="module")
def recs(tmp_path_factory: pytest.TempPathFactory, demo_taobao: Path) -> tuple:
    tmp = tmp_path_factory.mktemp("rec_explain")
    ds = prepare_demo(demo_taobao, tmp / "ds")
    multi = Recommender(tiny_run(ds, tmp / "multi"))
    plain = Recommender(tiny_run(ds, tmp / "plain", kind="next-item"))
    return ds, multi, plain


def a_history(ds, user: int = 3, n: int = 12) -> History:
    """The last ``n`` events of a user in raw ids, with an unknown item and an unknown behaviour
    inserted (they are skipped, so positions must still point into the history as given)."""
    s, v = ds.seq, ds.vocabs
    lo, hi = max(int(s.offsets[user]), int(s.offsets[user + 1]) - n), int(s.offsets[user + 1])
    items = [v.items.tokens[i] for i in s.items[lo:hi]]
    behs: list[str | None] = [v.behaviours.tokens[b] for b in s.behaviours[lo:hi]]
    times = [int(t) for t in s.times[lo:hi]]
    items.insert(2, "no-such-item")
    behs.insert(2, "pv")
    times.insert(2, times[2])
    items.insert(5, items[4])
    behs.insert(5, "teleport")  # unknown behaviour: skipped
    times.insert(5, times[5])
    return History(items, behs, times)


def scores_of(rec: Recommender, h: History, items: list[str]) -> np.ndarray:
    """The model's own scores of ``items`` after history ``h`` (no blend: tiny runs have none)."""
    assert rec.run.blend is None
    scores, _, _ = rec.score_histories([h])
    ids = [rec.vocabs.items.index[i] for i in items]
    return scores[0, ids].numpy()


@pytest.mark.parametrize("which", ["multi", "plain"])
def test_reasons_are_the_real_score_drops_at_the_given_positions(recs: tuple, which: str) -> None:
    ds, multi, plain = recs
    rec = multi if which == "multi" else plain
    h = a_history(ds)
    top = rec.recommend(h.items, k=4, behaviours=h.behaviours, timestamps=h.timestamps, exclude_seen=False).items
    reasons = rec.explain(h, top, n=3)
    assert len(reasons) == len(top)
    full = scores_of(rec, h, top)
    assert any(reasons), "random weights still move some score"
    for j, why in enumerate(reasons):
        assert len(why) <= 3
        assert [r.weight for r in why] == sorted((r.weight for r in why), reverse=True)
        for r in why:
            assert isinstance(r, Reason) and r.weight > 0
            assert r.item == h.items[r.position] and r.behaviour == h.behaviours[r.position]  # type: ignore[index]
            assert r.position not in (2, 5)  # the skipped events are never reasons
            keep = [i for i in range(len(h.items)) if i != r.position]
            without = History([h.items[i] for i in keep], [h.behaviours[i] for i in keep],  # type: ignore[index]
                              [h.timestamps[i] for i in keep])  # type: ignore[index]
            drop = full[j] - scores_of(rec, without, [top[j]])[0]
            assert drop == pytest.approx(r.weight, rel=1e-3, abs=1e-4)


def test_recent_caps_the_occluded_events_and_n_limits(recs: tuple) -> None:
    ds, multi, _ = recs
    h = a_history(ds)
    top = multi.recommend(h.items, k=3, behaviours=h.behaviours, timestamps=h.timestamps).items
    capped = multi.explain(h, top, n=10, recent=2)
    last_two = {len(h.items) - 1, len(h.items) - 2}
    assert all(r.position in last_two for why in capped for r in why)
    assert all(len(why) <= 1 for why in multi.explain(h, top, n=1))
    with pytest.raises(ValueError, match="recent"):
        multi.explain(h, top, recent=0)


def test_plain_lists_untimed_histories_errors_and_empty(recs: tuple) -> None:
    ds, multi, _ = recs
    h = a_history(ds)
    known = [i for i in h.items if i in multi.vocabs.items.index]
    top = multi.recommend(known, k=2).items
    reasons = multi.explain(known, top)  # a plain list: no behaviours (None), no timestamps
    assert all(r.behaviour is None and r.item == known[r.position] for why in reasons for r in why)
    with pytest.raises(ValueError, match="no-such-item"):
        multi.explain(known, ["no-such-item"])
    with pytest.raises(ValueError, match="n must be"):
        multi.explain(known, top, n=0)
    assert multi.explain(["no-such-item"], top) == [[], []]  # no known event: nothing to attribute
    assert multi.explain(known, []) == []
    # the behaviour the items were ranked for is the one explained ("*": any behaviour)
    assert len(multi.explain(h, top, behaviour="*")) == 2


def test_reason_text() -> None:
    rs = [Reason("X", "pv", 0, 0.5), Reason("Y", "cart", 3, 0.2), Reason("Z", "return_request", 4, 0.1)]
    assert describe_reasons(rs[:2]) == "because you viewed X and carted Y"
    assert describe_reasons(rs) == "because you viewed X, carted Y and return_request Z"
    assert describe_reasons([Reason("W", None, 1, 0.3)]) == "because you interacted with W"
    assert describe_reasons([]) == ""
    assert describe_events([("A", "remove_from_cart")]) == "because you removed from cart A"
    assert describe_events([("A", "pv"), ("A", "fav"), ("A", "pv")]) == "because you viewed A and favourited A"
