"""Multi-task heads: labels, pointer, conditioning, losses, leakage, ablation and persistence.

The repeat / explore mixture itself (gate, probabilities, old runs) is tested in test_repeat_gate.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import perturb_heads, random_task_batch

from shopformer.config import LossConfig, ModelConfig, TaskConfig
from shopformer.data.batches import Batch
from shopformer.data.corpus import DataSpec
from shopformer.models import REGISTRY, build_model
from shopformer.models.heads import PARTS, mixture_nll, window_intent_labels
from shopformer.models.losses import NegativeSampler

SPEC = DataSpec(n_items=30, n_behaviours=3, n_categories=0, has_time=True)
CAUSAL = sorted(n for n, c in REGISTRY.items() if c.causal)


def cfg(name: str = "sasrec", **kw: object) -> ModelConfig:
    return ModelConfig(name=name, dim=16, layers=1, heads=2, max_len=8, dropout=0.0, emb_dropout=0.0, **kw)


def headed(name: str = "sasrec", kind: str = "multi", target: int = 3, horizon: int = 2, **kw: object):
    torch.manual_seed(0)
    return build_model(cfg(name, **kw), SPEC, task=TaskConfig(kind=kind, intent_horizon=horizon),
                       target_behaviour=target)


def batch(seed: int = 0, b: int = 3, length: int = 8, pad: int = 2) -> Batch:
    return random_task_batch(SPEC.n_items, SPEC.n_behaviours, seed, b, length, pad)


def perturb(model) -> None:
    perturb_heads(model)


# ---- labels ---------------------------------------------------------------------------------


def test_window_intent_labels_by_hand() -> None:
    # next-event behaviours of a left-padded window; target 2, horizon 2 (columns t and t+1)
    tb = torch.tensor([[0, 1, 2, 1, 1], [3, 3, 3, 3, 2]])
    lab = window_intent_labels(tb, target=2, horizon=2)
    # t=0: padding; t=1: (1, 2) -> 1; t=2: (2, 1) -> 1; t=3: (1, 1) -> 0; t=4: horizon leaves the window
    assert lab[0].tolist() == [-1, 1, 1, 0, -1]
    assert lab[1].tolist() == [0, 0, 0, 1, -1]
    assert window_intent_labels(tb, target=2, horizon=1)[0].tolist() == [-1, 0, 1, 0, 0]


def test_loader_labels_take_precedence_over_window_labels() -> None:
    from shopformer.data.batches import TaskBatch

    model = headed()
    b = batch()
    given = torch.full(b.items.shape, -1.0)
    given[1, 3] = 1.0
    tb = TaskBatch(**{f: getattr(b, f) for f in ("items", "behaviours", "gaps", "categories", "targets",
                                                   "target_behaviours")}, intent_labels=given)
    assert torch.equal(model.heads.intent_labels(tb), given)
    assert not torch.equal(model.heads.intent_labels(b), given)


# ---- pointer ----------------------------------------------------------------------------------


def test_pointer_pools_repeats_once_per_item_by_hand() -> None:
    model = headed()
    ptr = model.heads.pointer
    with torch.no_grad():
        ptr.q.weight.zero_()  # every visible occurrence gets logit 0
        ptr.dist.weight.zero_()
    items = torch.tensor([[0, 5, 7, 5]])
    b = Batch(items, torch.ones_like(items) * (items != 0), torch.ones_like(items) * (items != 0),
              torch.zeros_like(items))
    keys = torch.randn(1, 4, 16)
    bonus, rep = ptr(torch.randn(1, 4, 16), torch.arange(4), keys, b)
    # query at t=3 sees items 5, 7, 5: item 5 pooled log(e^0 + e^0) = log 2 on its latest occurrence
    assert rep[0, 3].tolist() == [False, False, True, True]
    assert bonus[0, 3, 3].item() == pytest.approx(np.log(2))
    assert bonus[0, 3, 2].item() == pytest.approx(0.0)
    # query at t=2 sees only 5 (at 1) and 7: its item 5 is represented at position 1, once
    assert rep[0, 2].tolist() == [False, True, True, False]
    assert bonus[0, 2, 1].item() == pytest.approx(0.0)
    # padding is never pointed at
    assert not rep[0, :, 0].any()


def test_pointer_logits_are_the_repeat_distribution_in_score_all() -> None:
    model = headed(kind="next-purchase").eval()
    with torch.no_grad():
        model.item_emb.weight.zero_()  # no embedding signal: explore is uniform over the new items
        model.heads.pointer.q.weight.zero_()
        model.heads.pointer.dist.weight.zero_()
    items = torch.tensor([[0, 5, 7, 5]])
    b = Batch(items, torch.ones_like(items) * (items != 0), torch.ones_like(items) * (items != 0),
              torch.zeros_like(items))
    s = model.score_all(b)
    g = model.repeat_probability(b).item()
    # pooled pointer logits: item 5 log 2, item 7 0 -> P_repeat = 2/3, 1/3
    assert s[0, 5].item() == pytest.approx(np.log(g * 2 / 3), abs=1e-5)
    assert s[0, 7].item() == pytest.approx(np.log(g / 3), abs=1e-5)
    assert s[0, 1].item() == pytest.approx(np.log((1 - g) / (SPEC.n_items - 2)), abs=1e-5)
    assert torch.isneginf(s[0, 0])


def test_pointer_starts_from_a_recency_prior() -> None:
    model = headed().eval()
    with torch.no_grad():
        model.item_emb.weight.zero_()
        model.heads.pointer.q.weight.zero_()
    items = torch.tensor([[4, 5, 6, 7]])
    b = Batch(items, torch.ones_like(items), torch.ones_like(items), torch.zeros_like(items))
    s = model.score_all(b, 0)[0]
    assert s[7] > s[6] > s[5] > s[4]  # most recent first
    unseen = s[torch.tensor([1, 2, 3, *range(8, SPEC.n_items + 1)])]
    assert torch.isfinite(unseen).all() and torch.allclose(unseen, unseen[0].expand_as(unseen))  # explore: uniform


def test_pointer_does_not_read_future_events() -> None:
    model = headed()
    perturb(model)
    b = batch(pad=0)
    t = 4
    items = b.items.clone()
    items[:, t + 1:] = 1 + items[:, t + 1:] % SPEC.n_items
    other = Batch(items, b.behaviours, b.gaps, b.categories)
    model.eval()
    h1, h2 = model.encode(b), model.encode(other)
    qpos = torch.arange(8)
    b1, _ = model.heads.pointer(h1, qpos, h1, b)
    b2, _ = model.heads.pointer(h2, qpos, h2, other)
    assert torch.allclose(b1[:, : t + 1, : t + 1], b2[:, : t + 1, : t + 1], atol=1e-5)


# ---- conditioning, heads, losses --------------------------------------------------------------


def test_behaviour_zero_is_the_unconditioned_query_and_types_differ_once_trained() -> None:
    model = headed().eval()
    b = batch()
    # the adapter starts at zero: every behaviour scores like "any" before training
    assert torch.allclose(model.score_all(b, 1), model.score_all(b, 0))
    perturb(model)
    s0, s1, s3 = model.score_all(b, 0), model.score_all(b, 1), model.score_all(b, 3)
    assert not torch.allclose(s1, s0) and not torch.allclose(s1, s3)
    # the default of a multi model is its target behaviour; one behaviour per row also works
    assert torch.allclose(model.score_all(b), s3)
    rows = model.score_all(b, torch.tensor([0, 1, 3]))
    assert torch.allclose(rows[0], s0[0]) and torch.allclose(rows[1], s1[1]) and torch.allclose(rows[2], s3[2])
    with pytest.raises(ValueError, match="0..3"):
        model.score_all(b, 4)


def test_next_item_models_have_no_heads_and_unchanged_weights() -> None:
    plain = build_model(cfg(), SPEC)
    same = build_model(cfg(), SPEC, task=TaskConfig(kind="next-item"))
    assert plain.heads is None and same.heads is None
    assert plain.state_dict().keys() == same.state_dict().keys()
    with pytest.raises(ValueError, match="no behaviour-conditioned head"):
        plain.score_all(batch(), 2)
    with pytest.raises(ValueError, match="no task heads"):
        plain.action_logits(batch())
    plain.score_all(batch(), 0)  # "any behaviour" is what a plain model does


@pytest.mark.parametrize("kind", sorted(PARTS))
def test_loss_parts_follow_the_task_kind(kind: str) -> None:
    model = headed(kind=kind).train()
    assert (model.heads is None) == (kind == "next-item")  # next-item: the plain model, no heads
    out = model.loss(batch(), LossConfig())
    assert set(out.parts) == set(PARTS[kind])
    assert torch.isfinite(out.total)
    out.total.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert all(torch.isfinite(g).all() for g in grads.values())

    def moved(name: str) -> bool:
        return bool(grads[name].abs().sum() > 0)

    assert moved("item_emb.weight")
    if kind == "next-item":
        assert not any(n.startswith("heads.") for n in grads)
        return
    assert moved("heads.pointer.q.weight") and moved("heads.pointer.k.weight")
    # the behaviour conditioning (queries + adapter) is trained by the "target" part only
    assert any(n.startswith(("heads.query.", "heads.adapt.")) for n in grads) == ("target" in PARTS[kind])
    if "target" in PARTS[kind]:
        # the adapter's output layer starts at zero, so it is the first to move (then the queries)
        assert moved("heads.adapt.3.weight")
    for part in ("action", "intent"):
        present = any(n.startswith(f"heads.{part}.") for n in grads)  # a gradient reached the part
        assert present == (part in PARTS[kind])
        if present:
            assert moved(f"heads.{part}.1.weight") and moved(f"heads.{part}.3.weight")


def test_untrained_heads_are_refused() -> None:
    model = headed(kind="next-purchase")
    with pytest.raises(ValueError, match="no 'action' head"):
        model.action_logits(batch())
    with pytest.raises(ValueError, match="no 'intent' head"):
        model.intent_logit(batch())


def test_head_outputs_shapes_and_padding_class() -> None:
    model = headed().eval()
    b = batch()
    logits = model.action_logits(b)
    assert logits.shape == (3, SPEC.n_behaviours + 1) and torch.isneginf(logits[:, 0]).all()
    assert model.intent_logit(b).shape == (3,)
    p = model.heads.calibrated(model.intent_logit(b))
    assert ((p > 0) & (p < 1)).all()


def test_target_part_weights_each_behaviour_equally() -> None:
    from shopformer.models.heads import _balanced_mean

    values = torch.tensor([1.0, 1.0, 1.0, 4.0])  # three of behaviour 1, one of behaviour 2
    assert _balanced_mean(values, torch.tensor([1, 1, 1, 2]), 3).item() == pytest.approx(2.5)


def test_intent_loss_uses_known_labels_only() -> None:
    model = headed(kind="intent", horizon=20).train()  # horizon longer than the window: all unknown
    out = model.loss(batch(), LossConfig())
    assert out.parts["intent"] == 0.0
    out.total.backward()
    assert model.heads.intent[3].weight.grad is None or model.heads.intent[3].weight.grad.abs().sum() == 0


@pytest.mark.parametrize("exclude", [True, False])
def test_sampled_ce_with_every_item_as_negative_equals_full_ce(exclude: bool) -> None:
    torch.manual_seed(0)
    m, length, v, d = 5, 4, 12, 8
    q, emb = torch.randn(m, d), torch.randn(v + 1, d)
    emb[0] = 0
    items = torch.randint(1, v + 1, (m, length))
    bonus, rep = torch.randn(m, length), torch.rand(m, length) > 0.3
    # one representative per item, as the pointer guarantees
    for r in range(m):
        seen: set[int] = set()
        for s in range(length):
            if rep[r, s] and int(items[r, s]) in seen:
                rep[r, s] = False
            seen.add(int(items[r, s])) if rep[r, s] else None
    targets = items[:, 0].clone()
    targets[:2] = torch.tensor([v, v - 1])  # some targets outside the window too
    rep[0] &= items[0] != v
    rep[1] &= items[1] != v - 1
    gate = torch.randn(m)
    full = mixture_nll(q, targets, emb, items, bonus, rep, gate, LossConfig(), None, None, exclude)
    everything = torch.arange(1, v + 1)
    sampled = mixture_nll(q, targets, emb, items, bonus, rep, gate, LossConfig(kind="sampled"), everything, None,
                          exclude)
    assert torch.isfinite(full).all()
    assert torch.allclose(full, sampled, atol=1e-5)


@pytest.mark.parametrize("name", CAUSAL)
def test_every_causal_model_trains_all_heads(name: str) -> None:
    model = headed(name).train()
    sampler = NegativeSampler(np.arange(SPEC.n_items + 1), "popularity", seed=0)
    for loss_cfg in (LossConfig(), LossConfig(kind="sampled", negatives=8),
                     LossConfig(kind="sampled", negatives=4, in_batch=8)):
        out = model.loss(batch(), loss_cfg, sampler)
        assert torch.isfinite(out.total)
        out.total.backward()


def test_bidirectional_models_are_rejected_at_configuration_time() -> None:
    with pytest.raises(ValueError, match="needs a causal model"):
        build_model(cfg("bert4rec"), SPEC, task=TaskConfig(kind="multi"))
    build_model(cfg("bert4rec"), SPEC, task=TaskConfig(kind="next-item"))  # plain next item is fine


def test_ablation_ignores_behaviours_everywhere() -> None:
    """use_behaviour=False: scores and heads must not depend on the behaviour of past events."""
    b = batch()
    flipped = Batch(b.items, (1 + b.behaviours % SPEC.n_behaviours) * (b.items != 0), b.gaps, b.categories)
    for use, changes in ((False, False), (True, True)):
        model = headed(use_behaviour=use)
        perturb(model)
        model.eval()
        same = torch.allclose(model.score_all(b), model.score_all(flipped), atol=1e-5) and torch.allclose(
            model.action_logits(b)[:, 1:], model.action_logits(flipped)[:, 1:], atol=1e-5)
        assert same != changes


def test_heads_are_left_padding_invariant() -> None:
    model = headed()
    perturb(model)
    model.eval()
    b = batch(pad=0)
    wider = Batch(*(torch.nn.functional.pad(getattr(b, f), (3, 0)) for f in ("items", "behaviours", "gaps",
                                                                             "categories")))
    assert torch.allclose(model.score_all(b)[:, 1:], model.score_all(wider)[:, 1:], atol=1e-4)
    assert torch.allclose(model.action_logits(b)[:, 1:], model.action_logits(wider)[:, 1:], atol=1e-4)
    assert torch.allclose(model.intent_logit(b), model.intent_logit(wider), atol=1e-4)


def test_target_and_calibration_travel_with_the_weights(tmp_path) -> None:
    from safetensors.torch import load_file, save_file

    model = headed(target=2)
    model.heads.intent_calibration.copy_(torch.tensor([0.5, -1.0]))
    path = tmp_path / "m.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    fresh = build_model(cfg(), SPEC, task=TaskConfig(kind="multi", intent_horizon=2))  # target unknown here
    fresh.load_state_dict(load_file(str(path)))
    assert int(fresh.heads.target) == 2
    assert fresh.heads.intent_calibration.tolist() == [0.5, -1.0]
    with pytest.raises(ValueError, match="outside"):
        fresh.heads.set_target(0)


def test_summary_features_by_hand() -> None:
    model = headed(horizon=2)
    items = torch.tensor([[0, 4, 5, 6]])
    beh = torch.tensor([[0, 1, 3, 3]])
    b = Batch(items, beh, torch.ones_like(items), torch.zeros_like(items))
    hidden = torch.arange(4, dtype=torch.float).view(1, 4, 1).expand(1, 4, 16)
    f = model.heads.summary(hidden, b)[0]  # (L, 2D + 2 nb + 1)
    d, nb = 16, 3
    assert f[3, d].item() == pytest.approx((1 + 2 + 3) / 3)  # running mean of the real states
    assert f[3, 2 * d: 2 * d + nb].tolist() == pytest.approx([0.0, 0.0, 1.0])  # last 2 events: both type 3
    assert f[3, 2 * d + nb: 2 * d + 2 * nb].tolist() == pytest.approx([1 / 3, 0.0, 2 / 3])  # whole window
    assert f[3, -1].item() == pytest.approx(np.log1p(3))
    assert f[1, 2 * d: 2 * d + nb].tolist() == pytest.approx([1.0, 0.0, 0.0])  # causal: only event 1 so far
    blind = headed(horizon=2, use_behaviour=False).heads.summary(hidden, b)[0]
    assert blind[:, 2 * d: 2 * d + 2 * nb].abs().sum() == 0  # the ablation sees no behaviour shares
