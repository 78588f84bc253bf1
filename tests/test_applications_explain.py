"""Explanations: leave-one-out copies by hand, occlusion against one-at-a-time scoring, gradient x input
against a finite difference, and the deletion test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from applications_support import prepare_demo, tiny_run

from shopformer.data.batches import EventArrays
from shopformer.data.sequences import Sequences
from shopformer.evaluation.explain import (
    Attribution,
    bootstrap_mean,
    deletion_test,
    gradient_x_input,
    occlusion,
    window_events,
    without_events,
)

BUCKETS = 32


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory, demo_taobao: Path) -> tuple:
    tmp = tmp_path_factory.mktemp("explain")
    ds = prepare_demo(demo_taobao, tmp / "ds")
    return ds, tiny_run(ds, tmp / "multi"), tiny_run(ds, tmp / "plain", kind="next-item")


def histories(ds, n: int = 12, max_events: int = 30) -> Sequences:
    """The last ``max_events`` events of the first ``n`` users, as their own Sequences."""
    s = ds.seq
    rows = range(n)
    sl = [slice(max(s.offsets[u], s.offsets[u + 1] - max_events), s.offsets[u + 1]) for u in rows]
    return Sequences.from_lists([s.items[x].tolist() for x in sl], [s.behaviours[x].tolist() for x in sl],
                                [s.times[x].tolist() for x in sl], [s.categories[x].tolist() for x in sl])


def direct_batch(seq: Sequences, row: int, drop: list[int], max_len: int):
    """The window of history ``row`` without flat events ``drop``, built the plain way."""
    keep = [i for i in range(seq.offsets[row], seq.offsets[row + 1]) if i not in drop]
    one = Sequences.from_lists([seq.items[keep].tolist()], [seq.behaviours[keep].tolist()],
                               [seq.times[keep].tolist()], [seq.categories[keep].tolist()])
    w = EventArrays.from_sequences(one, BUCKETS).windows(one.offsets[1:], one.offsets[:-1], max_len)
    return {k: v[0] for k, v in w.items()}


def test_copies_equal_histories_rebuilt_without_the_events() -> None:
    s = Sequences.from_lists([[1, 2, 3, 4, 5], [6, 7]], [[1, 2, 1, 1, 2], [1, 1]],
                             [[0, 10, 1000, 40000, 40010], [0, 7]], [[1, 1, 2, 2, 3], [4, 4]])
    owner = np.array([0, 0, 0, 1, 1])
    removed = np.array([[-1, -1], [3, -1], [0, 4], [6, -1], [-1, -1]])
    batch = without_events(s, owner, removed, BUCKETS, max_len=3)
    for c in range(len(owner)):
        want = direct_batch(s, int(owner[c]), [int(r) for r in removed[c] if r >= 0], 3)
        for name, arr in want.items():
            np.testing.assert_array_equal(getattr(batch, name)[c].numpy(), arr, err_msg=f"copy {c} {name}")
    # removing event 3 (time 40000) makes event 4's gap read from event 2 (time 1000): recomputed
    assert batch.gaps[1, -1] != batch.gaps[0, -1]
    assert window_events(s, 3).tolist() == [[2, 3, 4], [-1, 5, 6]]


@pytest.mark.parametrize("kind", ["multi", "plain"])
def test_occlusion_equals_one_removal_at_a_time(demo: tuple, kind: str) -> None:
    ds, multi, plain = demo
    run = multi if kind == "multi" else plain
    model = run.model.eval()
    seq = histories(ds, n=4)
    items = np.array([[5, 9], [1, 2], [3, 4], [7, 8]])
    attr = occlusion(model, seq, items, BUCKETS, max_rows=37)  # chunks cut across histories
    assert attr.values.shape == (4, 2, model.max_len)
    for b in (0, 3):
        def score(drop: list[int], b: int = b) -> np.ndarray:
            w = direct_batch(seq, b, drop, model.max_len)
            from shopformer.data.batches import Batch
            batch = Batch(**{k: torch.from_numpy(v[None]) for k, v in w.items()})
            with torch.inference_mode():
                return model.score_all(batch)[0, items[b]].numpy()

        full = score([])
        for j in (0, 7, model.max_len - 1):
            e = int(attr.events[b, j])
            np.testing.assert_allclose(attr.values[b, :, j], full - score([e]), atol=1e-4)
    top = attr.top(0, 0, n=3)
    assert [w for _, w in top] == sorted((w for _, w in top), reverse=True) and all(w > 0 for _, w in top)


def test_gradient_x_input_is_the_derivative_along_each_embedding(demo: tuple) -> None:
    ds, _, plain = demo
    model = plain.model.eval()
    seq = histories(ds, n=3)
    items = np.array([[4], [6], [8]])
    attr = gradient_x_input(model, seq, items, BUCKETS)
    batch = without_events(seq, np.arange(3), np.full((3, 1), -1), BUCKETS, model.max_len)
    j, eps = model.max_len - 2, 1e-3

    def scaled(f: float) -> np.ndarray:
        scale = torch.ones(model.max_len)
        scale[j] = f
        h = model.item_emb.register_forward_hook(lambda _m, _i, out: out * scale[None, :, None])
        try:
            with torch.no_grad():
                return model.score_all(batch).gather(1, torch.from_numpy(items)).numpy()[:, 0]
        finally:
            h.remove()

    numeric = (scaled(1 + eps) - scaled(1 - eps)) / (2 * eps)  # d score / d (scale of embedding j) = grad . emb_j
    np.testing.assert_allclose(attr.values[:, 0, j], numeric, rtol=2e-2, atol=1e-3)
    assert not model.training


def test_deletion_test_separates_a_faithful_method_from_chance(demo: tuple) -> None:
    ds, multi, _ = demo
    model = multi.model.eval()
    seq = histories(ds, n=40)
    with torch.inference_mode():
        batch = without_events(seq, np.arange(40), np.full((40, 1), -1), BUCKETS, model.max_len)
        items = model.score_all(batch).argmax(1).numpy()
    res = deletion_test(model, seq, items, BUCKETS, "occlusion", k=1, n_boot=200)
    assert res["n"] == 40 and res["gap"]["lo"] > 0  # removing the top event costs more than a random one
    assert res["drop_top"] >= res["drop_random"]
    three = deletion_test(model, seq, items, BUCKETS, "occlusion", k=3, n_boot=200)
    assert three["drop_top"] > res["drop_top"] * 0.5
    with pytest.raises(ValueError, match="unknown attribution method"):
        deletion_test(model, seq, items, BUCKETS, "shap")
    # served with a capped window: the top event is the largest drop among the last 2 events only
    capped = deletion_test(model, seq, items, BUCKETS, "occlusion", k=1, n_boot=0, recent=2)
    attr = occlusion(model, seq, items, BUCKETS, recent=2)
    assert np.isnan(attr.values[:, 0, :-2]).all() and not np.isnan(attr.values[:, 0, -2:]).any()
    assert capped["drop_top"] == pytest.approx(float(np.nanmax(attr.values[:, 0], 1).mean()), rel=1e-4)
    assert capped["recent"] == 2 and res["drop_top"] >= capped["drop_top"]
    shared = deletion_test(model, seq, items, BUCKETS, "occlusion", k=1, n_boot=0, attribution=attr)
    assert shared["drop_top"] == pytest.approx(capped["drop_top"], rel=1e-6)  # a given attribution is used as is
    with pytest.raises(ValueError, match="recent"):
        deletion_test(model, seq, items, BUCKETS, "gradient_x_input", recent=2)


def test_bootstrap_and_top_by_hand() -> None:
    ci = bootstrap_mean(np.array([1.0, 2.0, 3.0, 4.0]), n_boot=500)
    assert ci["mean"] == 2.5 and 1.0 <= ci["lo"] < 2.5 < ci["hi"] <= 4.0
    attr = Attribution(np.array([[[0.1, np.nan, 0.5, -0.2]]]), np.array([[10, -1, 12, 13]]))
    assert attr.top(0, 0, n=4) == [(12, 0.5), (10, 0.1)]


def test_cli_explain_names_the_events(demo: tuple, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from shopformer.cli import app

    ds, multi, _ = demo
    user = ds.vocabs.users.tokens[int(ds.seq.users[0])]
    r = CliRunner().invoke(app, ["explain", str(multi.path), "--user", user, "-k", "3", "--reasons", "2"])
    assert r.exit_code == 0, r.output
    lines = [x for x in r.output.splitlines() if ": because of " in x]
    assert len(lines) == 3
    names = set(ds.vocabs.behaviours.tokens[1:])
    assert any(x.split(": because of ")[1].split()[0] in names for x in lines)  # "<behaviour> <item> (+w)"
    r = CliRunner().invoke(app, ["explain", str(multi.path), "--user", "nobody"])
    assert r.exit_code == 2 and "no such user" in r.output, r.output
    r = CliRunner().invoke(app, ["explain", str(multi.path), "--user", user, "--method", "shap"])
    assert r.exit_code == 2 and "--method 'shap'" in r.output, r.output
