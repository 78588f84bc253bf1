"""Repeats and discoveries in the one request path (``Recommender``) and the CLI: each returned item
says whether it is already in the user's history; ``min_new_share`` / ``exclude_seen`` bound the
repeats; non-finite scores are never returned and exact ties are ordered by popularity, not by id."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from typer.testing import CliRunner

from shopformer.artifacts import save_run
from shopformer.cli import app
from shopformer.config import Config, apply_overrides
from shopformer.data import schema as S
from shopformer.data.batches import Batch
from shopformer.data.corpus import DataSpec
from shopformer.data.vocab import Vocab, Vocabs
from shopformer.models import build_model
from shopformer.recommender import History, Recommendations, Recommender, RecRequest
from shopformer.serving.ann import ExactIndex

N = 60
ITEMS = [f"i{i}" for i in range(1, N + 1)]
runner = CliRunner()


def popularity_counts(seed: int = 5) -> np.ndarray:
    """Counts in no relation to id order, with ties (so the id breaks ties among equal counts)."""
    rng = np.random.default_rng(seed)
    return np.concatenate([[0], rng.permutation(N) // 3 + 1])


def popularity_order(counts: np.ndarray) -> list[str]:
    """Raw ids, most popular first; equal counts in dense-id order."""
    dense = sorted(range(1, N + 1), key=lambda i: (-counts[i], i))
    return [ITEMS[i - 1] for i in dense]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("discovery")
    cfg = apply_overrides(Config(), ["model.dim=16", "model.max_len=10", "eval.exclude_seen=true"])
    spec = DataSpec(n_items=N, n_behaviours=2, has_time=True)
    torch.manual_seed(1)
    model = build_model(cfg.model, spec)
    vocabs = Vocabs(Vocab(("<pad>", "u1", "u2")), Vocab(("<pad>", *ITEMS)), Vocab(("<pad>", "view", "buy")),
                    Vocab(("<pad>",)))
    events = pl.DataFrame({S.USER: ["u1"] * 14 + ["u2"] * 3,
                           S.ITEM: [f"i{j}" for j in range(1, 15)] + ["i40", "i41", "i40"],
                           S.BEHAVIOUR: ["view"] * 17, S.TIME: list(range(100, 1800, 100))})
    (tmp / "ds").mkdir()
    events.write_parquet(tmp / "ds" / "events.parquet")
    return save_run(tmp / "run", model, cfg, vocabs, popularity_counts(), np.zeros(N + 1, np.int64), {"test": {}},
                    dataset_dir=str(tmp / "ds"))


@pytest.fixture()
def rec(run_dir: Path) -> Recommender:
    return Recommender.load(run_dir)


def greedy(full: Recommendations, history: set[str], k: int, share: float) -> list[str]:
    """The reference rule on the unconstrained full ranking: every discovery, the first
    k - ceil(share * k) repeats, up to k items."""
    max_rep, reps, out = k - math.ceil(round(share * k, 9)), 0, []
    for item in full.items:
        if item in history:
            if reps == max_rep:
                continue
            reps += 1
        out.append(item)
        if len(out) == k:
            break
    return out


def test_repeat_flags_cover_the_whole_history_not_just_the_window(rec: Recommender) -> None:
    history = [f"i{j}" for j in range(1, 26)]  # 25 events, window of 10: i1..i15 are outside it
    out = rec.recommend(history, k=N, exclude_seen=False)
    assert len(out.items) == N and len(out.repeat) == N
    assert out.repeat == [i in history for i in out.items]
    assert out.n_new == N - 25 and sum(out.repeat) == 25
    assert any(r for i, r in zip(out.items, out.repeat, strict=True) if i in history[:15])
    # an event of an unknown behaviour is not scored, but its item is still one the user has seen
    with pytest.warns(UserWarning, match="unknown behaviour"):
        odd = rec.recommend(["i3", "i50"], k=N, behaviours=["view", "teleport"], exclude_seen=False)
    assert {i for i, r in zip(odd.items, odd.repeat, strict=True) if r} == {"i3", "i50"}
    with pytest.warns(UserWarning, match="unknown behaviour"):
        fresh = rec.recommend(["i3", "i50"], k=N, behaviours=["view", "teleport"], exclude_seen=True)
    assert "i50" not in fresh.items and "i3" not in fresh.items and not any(fresh.repeat)
    # unknown items are skipped (they cannot be recommended anyway); popular() has no history
    assert not any(rec.popular(5).repeat) and len(rec.popular(5).repeat) == 5


@pytest.mark.parametrize("k", [1, 5, 10, 13])
@pytest.mark.parametrize("share", [0.0, 0.1, 0.25, 0.3, 0.5, 0.7, 0.75, 1.0])
def test_min_new_share_is_honoured_exactly_and_keeps_the_order(rec: Recommender, k: int, share: float) -> None:
    history = ["i5", "i9", "i12", "i20", "i33", "i41", "i42", "i43", "i44", "i50", "i51", "i52", "i53", "i54"]
    full = rec.recommend(history, k=N, exclude_seen=False)
    out = rec.recommend(history, k=k, min_new_share=share)
    need = math.ceil(round(share * k, 9))
    assert out.items == greedy(full, set(history), k, share)
    assert len(out.items) == k and out.n_new >= need
    assert out.repeat == [i in history for i in out.items]
    # each group keeps the model's order, and the list is ranked by score
    new = [i for i in full.items if i not in history]
    reps = [i for i in full.items if i in history]
    assert [i for i, r in zip(out.items, out.repeat, strict=True) if not r] == new[: out.n_new]
    assert [i for i, r in zip(out.items, out.repeat, strict=True) if r] == reps[: k - out.n_new]
    assert out.scores == sorted(out.scores, reverse=True)
    by_item = dict(full.pairs())
    assert out.scores == pytest.approx([by_item[i] for i in out.items], rel=1e-6)
    # the share decides over the run's default exclusion; exclude_seen=True is discovery only
    assert rec.recommend(history, k=k, exclude_seen=False, min_new_share=share).items == out.items
    assert rec.recommend(history, k=k, exclude_seen=True, min_new_share=share).items == \
        rec.recommend(history, k=k, min_new_share=1.0).items


def test_exclude_seen_is_discovery_only(rec: Recommender) -> None:
    history = [f"i{j}" for j in range(1, 30)]
    out = rec.recommend(history, k=20, exclude_seen=True)
    assert not any(out.repeat) and not set(out.items) & set(history) and len(out.items) == 20
    assert rec.recommend(history, k=20).items == out.items  # the run's default (eval.exclude_seen=true)
    assert rec.recommend(history, k=20, min_new_share=1.0).items == out.items
    # fewer discoveries than k: a shorter list, never a repeat
    everything = rec.recommend(ITEMS[:55], k=10, min_new_share=1.0)
    assert everything.items == [i for i in rec.recommend(ITEMS[:55], k=N, exclude_seen=False).items
                                if i not in ITEMS[:55]] and len(everything.items) == 5
    half = rec.recommend(ITEMS[:55], k=12, min_new_share=0.5)
    assert half.n_new == 5 and sum(half.repeat) == 6 and len(half.items) == 11  # at most 12 - 6 repeats


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_min_new_share_outside_0_1_is_an_error(rec: Recommender, bad: float) -> None:
    with pytest.raises(ValueError, match="min_new_share"):
        rec.recommend(["i1"], k=3, min_new_share=bad)
    with pytest.raises(ValueError, match="min_new_share"):
        rec.recommend_requests([RecRequest(History(["i1"]), 3, min_new_share=bad)])


def test_batches_mixing_shares_and_exclusions_answer_each_request_alone(rec: Recommender) -> None:
    hists = [History(["i1", "i2", "i3", "i4"], ["view", "buy", "view", "view"], [10, 20, 30, 40]),
             History([f"i{j}" for j in range(10, 30)]),
             History(["nope"]),
             History(["i7", "i7", "i8"])]
    reqs = [RecRequest(hists[0], 5, None, None, 0.4), RecRequest(hists[1], 12, False, None, 0.75),
            RecRequest(hists[2], 4, True), RecRequest(hists[3], 3, False),
            RecRequest(hists[1], 7, True), RecRequest(hists[0], 9, False, None, 0.0)]
    out = rec.recommend_requests(reqs)
    alone = [rec.recommend_requests([r])[0] for r in reqs]
    for r, o, a in zip(reqs, out, alone, strict=True):
        assert o.items == a.items and o.repeat == a.repeat and o.scores == pytest.approx(a.scores, abs=1e-5)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # recommend_many warns about the unknown item of hists[2]
            ref = rec.recommend_many([r.history], r.k, r.exclude_seen, r.behaviour, r.min_new_share)[0]
        assert o.items == ref.items and o.repeat == ref.repeat and o.fallback == ref.fallback
    many = rec.recommend_many([hists[0], hists[1], hists[3]], 8, False, None, 0.5)
    for h, m in zip([hists[0], hists[1], hists[3]], many, strict=True):
        assert m.items == rec.recommend_many([h], 8, False, None, 0.5)[0].items
    assert out[1].n_new >= 9 and out[4].n_new == 7 and out[2].fallback and not any(out[2].repeat)
    # an item index gives the exact path's answer, flags and shares included
    index = ExactIndex(rec.model.output_embeddings())
    for o, x in zip(out, rec.recommend_requests(reqs, index), strict=True):
        assert o.items == x.items and o.repeat == x.repeat and o.scores == pytest.approx(x.scores, rel=1e-5)


def test_a_flat_catalogue_gives_a_popularity_ordered_tail(rec: Recommender) -> None:
    """A model whose catalogue scores are all 0 (e.g. its catalogue switched off) never presents an
    arbitrary id-ordered tail as a ranking: exact ties are ordered by training popularity."""
    counts = popularity_counts()
    pop = popularity_order(counts)
    history = ["i2", "i30", "i31"]

    def flat(batch: Batch, behaviour: int | torch.Tensor | None = None) -> torch.Tensor:
        scores = torch.zeros(batch.items.shape[0], N + 1)
        scores[:, 0] = float("-inf")
        bonus = torch.arange(batch.items.shape[1], dtype=torch.float32) + 1.0  # the history: recency bonus
        return scores.scatter_add(1, batch.items, bonus.expand_as(batch.items) * (batch.items > 0))

    rec.model.score_all = flat  # type: ignore[method-assign]
    kept = rec.recommend(history, k=12, exclude_seen=False)
    assert kept.items[:3] == ["i31", "i30", "i2"] and kept.repeat == [True] * 3 + [False] * 9
    assert kept.items[3:] == [i for i in pop if i not in history][:9]
    assert kept.scores[3:] == [0.0] * 9
    new = rec.recommend(history, k=10, exclude_seen=True)
    assert new.items == [i for i in pop if i not in history][:10]
    # the same through the serving path (per-request k and shares in one batch)
    reqs = [RecRequest(History(history), 12, False), RecRequest(History(history), 10, True),
            RecRequest(History(["i9"]), 5, None, None, 0.6)]
    got = rec.recommend_requests(reqs)
    assert got[0].items == kept.items and got[1].items == new.items
    assert got[2].items == ["i9", *[i for i in pop if i != "i9"][:4]]
    # all tied, every item: the whole catalogue in popularity order
    rec.model.score_all = lambda b, beh=None: torch.zeros(b.items.shape[0], N + 1)  # type: ignore[method-assign]
    assert rec.recommend(["i2"], k=N, exclude_seen=False).items == pop
    assert rec.popular(N).items == pop


def test_non_finite_scores_are_never_returned(rec: Recommender) -> None:
    def broken(batch: Batch, behaviour: int | torch.Tensor | None = None) -> torch.Tensor:
        scores = torch.linspace(0.0, 1.0, N + 1).repeat(batch.items.shape[0], 1)
        scores[:, 0] = float("-inf")
        scores[:, N] = float("nan")
        scores[:, N - 1] = float("inf")
        scores[:, N - 2] = float("-inf")
        return scores

    rec.model.score_all = broken  # type: ignore[method-assign]
    out = rec.recommend(["i1"], k=N, exclude_seen=False)
    assert not {f"i{N}", f"i{N - 1}", f"i{N - 2}"} & set(out.items) and len(out.items) == N - 3
    assert all(math.isfinite(s) for s in out.scores) and out.items[0] == f"i{N - 3}"
    served = rec.recommend_requests([RecRequest(History(["i1"]), 5, False)])[0]
    assert served.items == out.items[:5]


# ---------------------------------------------------------------------------------------------- CLI
def _ranked_lines(output: str) -> list[list[str]]:
    return [ln.split() for ln in output.splitlines() if ln.strip()[:1].isdigit()]


def test_cli_marks_repeats_and_discoveries_and_takes_min_new_share(run_dir: Path) -> None:
    rec = Recommender.load(run_dir)
    stored = [f"i{j}" for j in range(1, 15)]
    r = runner.invoke(app, ["recommend", str(run_dir), "--user", "u1", "-k", "10", "--no-exclude-seen"])
    assert r.exit_code == 0, r.output
    lines = _ranked_lines(r.output)
    ref = rec.recommend(stored, k=10, behaviours=["view"] * 14, timestamps=list(range(100, 1500, 100)),
                        exclude_seen=False)
    assert [ln[1] for ln in lines] == ref.items
    assert [ln[3] for ln in lines] == ["repeat" if i in stored else "new" for i in ref.items]
    assert "repeat" in [ln[3] for ln in lines], "the test needs a repeat in the answer"
    r = runner.invoke(app, ["recommend", str(run_dir), "--user", "u1", "-k", "10", "--min-new-share", "0.5"])
    assert r.exit_code == 0, r.output
    lines = _ranked_lines(r.output)
    assert len(lines) == 10 and sum(ln[3] == "new" for ln in lines) >= 5
    share = rec.recommend(stored, k=10, behaviours=["view"] * 14, timestamps=list(range(100, 1500, 100)),
                          min_new_share=0.5)
    assert [ln[1] for ln in lines] == share.items
    r = runner.invoke(app, ["recommend", str(run_dir), "--history", "i40,i41,i40", "-k", "4", "--exclude-seen"])
    assert r.exit_code == 0 and [ln[3] for ln in _ranked_lines(r.output)] == ["new"] * 4, r.output
    r = runner.invoke(app, ["recommend", str(run_dir), "--history", "i40", "--min-new-share", "1.5"])
    assert r.exit_code == 2, r.output
