"""The repeat / explore mixture of item scores (models/heads.py): probabilities, the loss, the gate
learning when shoppers repeat, and runs saved before the gate."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import perturb_heads, random_task_batch

from shopformer.config import Config, LossConfig, ModelConfig, TaskConfig
from shopformer.data.batches import Batch
from shopformer.data.corpus import DataSpec
from shopformer.data.schema import PAD
from shopformer.models import build_model
from shopformer.models.heads import LEGACY_REPEAT_LOGIT, mixture_log_probs, mixture_nll
from shopformer.models.losses import NegativeSampler

SPEC = DataSpec(n_items=30, n_behaviours=3, n_categories=0, has_time=True)
VIEW, BUY = 1, 3


def cfg(**kw: object) -> ModelConfig:
    return ModelConfig(name="sasrec", dim=16, layers=1, heads=2, max_len=8, dropout=0.0, emb_dropout=0.0, **kw)


def headed(spec: DataSpec = SPEC, kind: str = "multi", seed: int = 0, **kw: object):
    torch.manual_seed(seed)
    return build_model(cfg(**kw), spec, task=TaskConfig(kind=kind, intent_horizon=2), target_behaviour=BUY)


def batch(seed: int = 0, b: int = 4, length: int = 8, pad: int = 2, n_items: int = SPEC.n_items) -> Batch:
    return random_task_batch(n_items, SPEC.n_behaviours, seed, b, length, pad)


def perturb(model) -> None:
    perturb_heads(model)


def random_mixture(m: int = 6, length: int = 5, v: int = 12, seed: int = 0):
    """Random catalogue logits, windows (with repeats and padding) and pointer outputs."""
    g = torch.Generator().manual_seed(seed)
    items = torch.randint(1, v + 1, (m, length), generator=g)
    items[0, :2] = PAD
    rep = torch.zeros(m, length, dtype=torch.bool)
    for r in range(m):  # the latest occurrence of each item represents it, as the pointer does
        seen: set[int] = set()
        for s in reversed(range(length)):
            it = int(items[r, s])
            rep[r, s] = it != PAD and it not in seen
            seen.add(it)
    return (torch.randn(m, v + 1, generator=g), items, torch.randn(m, length, generator=g), rep,
            torch.randn(m, generator=g))


# ---- the distribution ---------------------------------------------------------------------------


@pytest.mark.parametrize("exclude", [True, False])
def test_mixture_is_a_distribution_over_the_real_items(exclude: bool) -> None:
    explore, items, bonus, rep, gate = random_mixture()
    lp = mixture_log_probs(explore, items, bonus, rep, gate, exclude)
    assert torch.isneginf(lp[:, PAD]).all() and torch.isfinite(lp[:, 1:]).all()
    assert torch.allclose(lp.exp().sum(1), torch.ones(len(lp)), atol=1e-5)
    # the probability mass on the window's items is exactly g when explore excludes them
    in_window = torch.zeros_like(lp, dtype=torch.bool).scatter(1, torch.where(rep, items, 0), rep)
    mass = (lp.exp() * in_window).sum(1)
    g = torch.sigmoid(gate)
    assert torch.allclose(mass, g, atol=1e-5) if exclude else bool((mass > g - 1e-5).all())


def test_empty_components_are_exact() -> None:
    """A window without items can only explore; one holding the whole catalogue can only repeat."""
    v = 4
    explore = torch.randn(2, v + 1)
    items = torch.tensor([[0, 0, 0, 0], [1, 2, 3, 4]])
    rep = items != PAD
    bonus = torch.randn(2, 4, requires_grad=True)
    gate = torch.randn(2, requires_grad=True)
    lp = mixture_log_probs(explore, items, bonus, rep, gate, True)
    assert torch.isfinite(lp[:, 1:]).all() and torch.allclose(lp.exp().sum(1), torch.ones(2), atol=1e-5)
    assert torch.allclose(lp[0, 1:].exp(), torch.softmax(explore[0, 1:], 0), atol=1e-5)
    assert torch.allclose(lp[1, 1:].exp(), torch.softmax(bonus[1].detach(), 0), atol=1e-5)
    lp[:, 1:].sum().backward()
    assert torch.isfinite(bonus.grad).all() and torch.isfinite(gate.grad).all()


@pytest.mark.parametrize("exclude", [True, False])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_full_loss_is_minus_the_log_probability_of_the_target(exclude: bool, smoothing: float) -> None:
    """The loss never builds the (M, V) matrix; it must agree with the one inference builds."""
    torch.manual_seed(0)
    m, length, v, d = 6, 5, 12, 8
    q, emb = torch.randn(m, d), torch.randn(v + 1, d)
    emb[0] = 0
    _, items, bonus, rep, gate = random_mixture(m, length, v)
    targets = torch.tensor([int(items[0, -1]), 12, 11, int(items[3, 2]), 1, 2])
    lp = mixture_log_probs(q @ emb.T, items, bonus, rep, gate, exclude)
    want = -lp[torch.arange(m), targets]
    if smoothing:
        want = (1 - smoothing) * want - smoothing * lp[:, 1:].mean(1)
    got = mixture_nll(q, targets, emb, items, bonus, rep, gate, LossConfig(label_smoothing=smoothing), None, None,
                      exclude)
    assert torch.allclose(got, want, atol=1e-5)


def test_scores_are_log_probabilities_with_new_items_finite() -> None:
    model = headed()
    perturb(model)
    model.eval()
    b = batch()
    for beh in (None, 0, 1, 3):
        s = model.score_all(b, beh)
        assert torch.isneginf(s[:, PAD]).all() and torch.isfinite(s[:, 1:]).all()
        assert torch.allclose(s[:, 1:].exp().sum(1), torch.ones(len(s)), atol=1e-4)
    g = model.repeat_probability(b)
    assert g.shape == (4,) and ((g > 0) & (g < 1)).all()
    assert not torch.allclose(model.repeat_probability(b, 1), model.repeat_probability(b, 3))  # per behaviour
    with pytest.raises(ValueError, match="no task heads"):
        build_model(cfg(), SPEC).repeat_probability(b)


@pytest.mark.parametrize("kind", ["ce", "sampled"])
def test_gradients_reach_gate_pointer_and_item_table(kind: str) -> None:
    model = headed().train()
    sampler = NegativeSampler(np.arange(SPEC.n_items + 1), "popularity", seed=0)
    out = model.loss(batch(), LossConfig(kind=kind, negatives=8, label_smoothing=0.1 if kind == "ce" else 0.0),
                     sampler)
    out.total.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert all(torch.isfinite(g).all() for g in grads.values())
    for name in ("heads.gate.1.weight", "heads.gate.3.weight", "heads.gate.3.bias", "heads.gate_bias.weight",
                 "heads.pointer.q.weight",
                 "heads.pointer.k.weight", "heads.pointer.dist.weight", "item_emb.weight"):
        assert grads[name].abs().sum() > 0, name


# ---- training -------------------------------------------------------------------------------------

GATE_SPEC = DataSpec(n_items=200, n_behaviours=3, n_categories=0, has_time=True)


def pair_windows(repeat: bool, n: int, g: torch.Generator, length: int = 8) -> Batch:
    """Windows of (view x, buy y) pairs, each pair about fresh items: y = x when ``repeat`` (users
    buy what they just viewed), otherwise another fresh item (a purchase is never a repeat)."""
    n_pairs = length // 2 + 1
    rows_i, rows_b = [], []
    for _ in range(n):
        fresh = torch.randperm(GATE_SPEC.n_items, generator=g)[: 2 * n_pairs] + 1
        x, y = fresh[:n_pairs], fresh[n_pairs:]
        items = torch.stack([x, x if repeat else y], 1).flatten()
        beh = torch.tensor([VIEW, BUY]).repeat(n_pairs)
        off = int(torch.randint(0, 2, (1,), generator=g))  # windows end on a view or on a buy
        rows_i.append(items[off: off + length + 1])
        rows_b.append(beh[off: off + length + 1])
    items, beh = torch.stack(rows_i), torch.stack(rows_b)
    gaps = torch.ones_like(items)
    return Batch(items[:, :-1], beh[:, :-1], gaps[:, :-1], torch.zeros_like(items[:, :-1]), items[:, 1:],
                 beh[:, 1:])


def train_on_pairs(repeat: bool, loss: LossConfig, steps: int = 120):
    model = headed(GATE_SPEC, kind="next-purchase")
    sampler = NegativeSampler(np.ones(GATE_SPEC.n_items + 1), "uniform", seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        model.loss(pair_windows(repeat, 32, g), loss, sampler).total.backward()
        opt.step()
    return model.eval()


def ending_on(behaviour: int, g: torch.Generator) -> Batch:
    b = pair_windows(True, 64, g)
    keep = b.behaviours[:, -1] == behaviour
    return Batch(b.items[keep], b.behaviours[keep], b.gaps[keep], b.categories[keep])


@pytest.mark.parametrize("loss", [LossConfig(), LossConfig(kind="sampled", negatives=32)], ids=["ce", "sampled"])
def test_the_gate_learns_when_users_repeat(loss: LossConfig) -> None:
    """Users who buy what they just viewed: after a view, P(the next purchase is a repeat) -> 1,
    while the view after a purchase is a new item (-> 0: the gate is per behaviour and per step).
    Users whose purchases are always new items: it -> 0. Both loss paths train it."""
    g = torch.Generator().manual_seed(1)
    after_view, after_buy = ending_on(VIEW, g), ending_on(BUY, g)
    rebuy_model, never_model = train_on_pairs(True, loss), train_on_pairs(False, loss)
    with torch.no_grad():
        rebuy = rebuy_model.repeat_probability(after_view, BUY)
        next_view = rebuy_model.repeat_probability(after_buy, VIEW)
        never = never_model.repeat_probability(after_view, BUY)
    assert rebuy.mean() > 0.9 and never.mean() < 0.1 and next_view.mean() < 0.1, (rebuy, never, next_view)


def test_a_trained_model_recommends_new_items_too() -> None:
    """Top-k holds items outside the history, each with its own finite score (no 0.0 filler)."""
    model = train_on_pairs(False, LossConfig(), steps=40)
    b = pair_windows(False, 8, torch.Generator().manual_seed(2))
    with torch.no_grad():
        scores = model.score_all(b)
    top = scores.topk(20, dim=1)
    for r in range(len(b.items)):
        new = [float(s) for i, s in zip(top.indices[r].tolist(), top.values[r].tolist(), strict=True)
               if i not in set(b.items[r].tolist())]
        assert len(new) >= 10 and all(np.isfinite(new)) and 0.0 not in new
        assert len(set(new)) == len(new)  # no ties among the discovered items
    assert torch.isfinite(scores[:, 1:]).all()


def test_repeat_rates_by_hand() -> None:
    from shopformer.data.sequences import Sequences
    from shopformer.training.heads import repeat_rates

    # user 0: 5 (view), 6 (view), 5 (buy: repeat, 2 back), 7 (view), 6 (buy: repeat, 3 back) | 5 (test)
    # user 1: 9 (view), 9 (view: repeat, 1 back)
    seq = Sequences.from_lists([[5, 6, 5, 7, 6, 5], [9, 9]], [[1, 1, 3, 1, 3, 1], [1, 1]],
                               [list(range(6)), [0, 1]])
    train_end = np.array([5, 8])  # flat exclusive ends: user 0's last event is not training data
    r = repeat_rates(seq, train_end, 3, window=50)
    # counted (first events left out): 6 v, 5 b (rep), 7 v, 6 b (rep); 9 v (rep)
    assert r[0] == pytest.approx(3 / 5) and r[1] == pytest.approx(1 / 3) and r[3] == pytest.approx(1.0)
    assert np.isnan(r[2])
    r2 = repeat_rates(seq, train_end, 3, window=2)  # 6 (buy) was 3 events back: no longer a repeat
    assert r2[3] == pytest.approx(0.5) and r2[0] == pytest.approx(2 / 5)


def test_the_gate_starts_at_the_repeat_prior() -> None:
    model = headed().eval()
    with torch.no_grad():
        model.heads.gate[3].weight.zero_()  # only the biases: the prior itself
    model.heads.set_repeat_prior([0.2, 0.1, float("nan"), 0.6])
    b = batch()
    for beh, want in ((0, 0.2), (1, 0.1), (2, 0.2), (3, 0.6)):
        assert torch.allclose(model.repeat_probability(b, beh), torch.tensor(want), atol=1e-5)
    with pytest.raises(ValueError, match="need 4 repeat rates"):
        model.heads.set_repeat_prior([0.5])


# ---- runs saved before the gate -------------------------------------------------------------------


def legacy_state(model) -> dict[str, torch.Tensor]:
    """The state dict the additive pointer + catalogue weight code saved: no gate, one more buffer."""
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("heads.gate.")}
    state["heads.catalogue_weight"] = torch.tensor(0.0)
    return state


def test_old_state_dicts_load_strictly_with_a_constant_gate() -> None:
    old = headed()
    fresh = headed(seed=5)
    fresh.load_state_dict(legacy_state(old))  # strict: no missing or unexpected keys
    fresh.eval()
    b = batch()
    assert torch.allclose(fresh.repeat_probability(b), torch.sigmoid(torch.tensor(LEGACY_REPEAT_LOGIT)))
    s = fresh.score_all(b)
    assert torch.isfinite(s[:, 1:]).all() and torch.allclose(s[:, 1:].exp().sum(1), torch.ones(4), atol=1e-4)
    assert "catalogue_weight" not in dict(fresh.heads.named_buffers())
    assert (fresh.heads.gate_bias.weight == 0).all()
    # a state dict with both (never written, but harmless) keeps its own gate
    both = {**old.state_dict(), "heads.catalogue_weight": torch.tensor(1.0)}
    fresh.load_state_dict(both)
    assert torch.allclose(fresh.heads.gate[3].weight, old.heads.gate[3].weight)


def test_old_run_directories_still_load(tmp_path) -> None:
    from safetensors.torch import save_file

    from shopformer.artifacts import WEIGHTS, load_run, save_run
    from shopformer.atomic import sha256_file
    from shopformer.data.vocab import Vocab, Vocabs

    config = Config().override(model=cfg().model_dump(), task={"kind": "multi", "intent_horizon": 2,
                                                               "target_behaviour": "buy"})
    model = headed()
    vocabs = Vocabs(users=Vocab(("<pad>", "u1")), items=Vocab(("<pad>", *[f"i{i}" for i in range(1, 31)])),
                    behaviours=Vocab(("<pad>", "view", "cart", "buy")), categories=Vocab(("<pad>",)))
    run = save_run(tmp_path / "run", model, config, vocabs, np.arange(31), np.zeros(31, np.int64))
    # rewrite it as the old code wrote it (weights and their hash in the manifest)
    save_file({k: v.contiguous() for k, v in legacy_state(model).items()}, str(run / WEIGHTS))
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["files"][WEIGHTS] = sha256_file(run / WEIGHTS)
    (run / "manifest.json").write_text(json.dumps(manifest))
    loaded = load_run(run)
    b = batch()
    s = loaded.model.score_all(b)
    assert torch.isfinite(s[:, 1:]).all()
    assert torch.allclose(loaded.model.heads.pointer.q.weight, model.heads.pointer.q.weight)
    assert torch.allclose(loaded.model.repeat_probability(b), torch.sigmoid(torch.tensor(LEGACY_REPEAT_LOGIT)))
