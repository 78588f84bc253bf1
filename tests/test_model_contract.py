"""The contract every registered model must pass."""

from __future__ import annotations

import pytest
import torch

from shopformer.config import LossConfig, ModelConfig
from shopformer.data.batches import Batch
from shopformer.data.corpus import DataSpec
from shopformer.models import REGISTRY, build_model

SPEC = DataSpec(n_items=30, n_behaviours=3, n_categories=5, has_time=True)
L = 8


def make_batch(seed: int = 0, pad: tuple[int, ...] = (0, 3, 6, 1)) -> Batch:
    g = torch.Generator().manual_seed(seed)
    b = len(pad)
    items = torch.randint(1, SPEC.n_items + 1, (b, L), generator=g)
    beh = torch.randint(1, SPEC.n_behaviours + 1, (b, L), generator=g)
    gaps = torch.randint(1, 10, (b, L), generator=g)
    cats = torch.randint(1, SPEC.n_categories + 1, (b, L), generator=g)
    for row, p in enumerate(pad):
        for t in (items, beh, gaps, cats):
            t[row, :p] = 0
    targets = torch.roll(items, -1, dims=1)
    targets[:, -1] = torch.randint(1, SPEC.n_items + 1, (b,), generator=g)
    targets = targets * (items != 0)
    tb = torch.roll(beh, -1, dims=1)
    tb[:, -1] = 1
    return Batch(items, beh, gaps, cats, targets, tb * (items != 0))


def model_cfg(name: str) -> ModelConfig:
    """``name`` is a registered model, or ``model:variant`` for an architecture option that must pass too."""
    name, _, variant = name.partition(":")
    extra = {"post-ln": {"norm": "post"}, "ligr": {"norm": "ligr"}, "untied": {"tie_output": False},
             "positions-end": {"positions": "end"}, "members": {"members": 2},
             "freq": {"freq_mix": 0.7, "freq_keep": 3}, "cosine": {"cosine": True},
             "members-cosine": {"members": 2, "cosine": True}, "": {}}[variant]
    return ModelConfig(name=name, dim=16, layers=2, heads=2, max_len=L, dropout=0.1, emb_dropout=0.1,
                       use_category=True, **extra)


@pytest.fixture(params=[*sorted(REGISTRY), "sasrec:post-ln", "sasrec:ligr", "sasrec:untied", "bert4rec:untied",
                        "sasrec:positions-end", "sasrec:members", "sasrec:freq", "bert4rec:freq",
                        "sasrec:cosine", "sasrec:members-cosine", "bert4rec:cosine"])
def model(request: pytest.FixtureRequest):
    torch.manual_seed(0)
    return build_model(model_cfg(request.param), SPEC)


def test_shapes(model) -> None:
    batch = make_batch()
    model.eval()
    h = model.encode(batch)
    assert h.shape == (4, L, 16)
    s = model.score_all(batch)
    assert s.shape == (4, SPEC.n_items + 1)
    assert torch.isneginf(s[:, 0]).all(), "padding id must never be recommended"
    assert torch.isfinite(s[:, 1:]).all()


@pytest.mark.parametrize("kind", ["ce", "sampled", "in-batch", "per-position", "mask-seen"])
def test_finite_loss_and_gradients(model, kind: str) -> None:
    import numpy as np

    from shopformer.models.losses import NegativeSampler

    model.train()
    sampler = NegativeSampler(np.arange(SPEC.n_items + 1), "popularity", seed=0)
    loss_cfg = {"in-batch": LossConfig(kind="sampled", negatives=4, in_batch=8),
                "per-position": LossConfig(kind="sampled", negatives=8, per_position=True),
                "mask-seen": LossConfig(mask_seen=True)}.get(kind) or LossConfig(kind=kind, negatives=8)
    out = model.loss(make_batch(), loss_cfg, sampler)
    assert torch.isfinite(out.total)
    out.total.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    assert grads, "no parameter received a gradient"
    assert all(torch.isfinite(g).all() for g in grads)
    assert model.item_emb.weight.grad is not None and model.item_emb.weight.grad.abs().sum() > 0
    if model.out_emb is not None:  # untied: the scoring table learns too, and is not the input table
        assert model.out_emb.weight.grad is not None and model.out_emb.weight.grad.abs().sum() > 0
        assert model.output_embeddings().data_ptr() != model.item_emb.weight.data_ptr()
    if kind == "mask-seen":  # the user's own items leave each softmax: fewer classes, lower loss
        model.eval()
        with torch.no_grad():
            masked = [(torch.manual_seed(0), model.loss(make_batch(), c).total)[1] for c in (loss_cfg, LossConfig())]
        assert masked[0] < masked[1]


def test_no_future_leakage(model) -> None:
    """Changing events after position t must not change what the model predicts from <= t."""
    if not model.causal:
        _check_masked_model_leakage(model)
        return
    model.eval()
    batch = make_batch(pad=(0, 0, 0, 0))
    t = 4
    changed = batch.items.clone()
    changed[:, t + 1 :] = torch.randint(1, SPEC.n_items + 1, changed[:, t + 1 :].shape)
    beh = batch.behaviours.clone()
    beh[:, t + 1 :] = 1 + (beh[:, t + 1 :] % SPEC.n_behaviours)
    other = Batch(changed, beh, batch.gaps, batch.categories)
    h1 = model.encode(batch)[:, : t + 1]
    h2 = model.encode(other)[:, : t + 1]
    assert torch.allclose(h1, h2, atol=1e-5)


def _check_masked_model_leakage(model) -> None:
    """Masked (non-causal) models see the whole window, so leakage is checked on what they are
    given. Contract: ``model.corrupt(batch, generator) -> (inputs, targets)`` masks the full
    training window ``items + [targets[:, -1]]`` (right-aligned, possibly cut on the left); a
    target is the original item at its own position and nothing about it stays in the inputs.
    """
    batch = make_batch()
    full = torch.cat([batch.items, batch.targets[:, -1:]], dim=1)
    inputs, targets = model.corrupt(batch, torch.Generator().manual_seed(0))
    n = targets.shape[1]
    full = full[:, -n:]
    m = targets != 0
    assert m.any(), "no position was masked"
    assert (m <= (full != 0)).all(), "a padding position became a target"
    assert torch.equal(targets[m], full[m]), "the target at a masked position must be the item there"
    assert (inputs.items[m] == model.mask_id).all(), "a masked item is still visible"
    for side in (inputs.behaviours, inputs.gaps, inputs.categories):
        assert (side[m] == 0).all(), "a masked event still shows its behaviour/gap/category"
    assert torch.equal(inputs.items[~m], full[~m]), "unmasked events must be the window's own"

    # Replacing exactly the masked events must leave the model's inputs and states unchanged.
    swapped = torch.where(m, 1 + full % SPEC.n_items, full)  # a different item at every target
    assert not torch.equal(swapped, full)
    full2 = torch.cat([batch.items[:, : batch.items.shape[1] + 1 - n], swapped], dim=1)
    real = batch.items != 0
    other = Batch(full2[:, :-1], batch.behaviours, batch.gaps, batch.categories,
                  full2[:, 1:] * real, batch.target_behaviours)
    inputs2, targets2 = model.corrupt(other, torch.Generator().manual_seed(0))
    assert torch.equal(targets2 != 0, m) and not torch.equal(targets2, targets)
    model.eval()
    assert torch.allclose(model.encode(inputs), model.encode(inputs2))

    # The training loss is the item loss on exactly these corrupted inputs (global torch RNG).
    torch.manual_seed(1)
    loss = model.loss(batch, LossConfig()).total
    torch.manual_seed(1)
    inputs, targets = model.corrupt(batch)
    assert torch.allclose(loss, model.item_loss(model.encode(inputs), targets, LossConfig()))

    # Inference: score_all reads only the history, wherever it sits in the window.
    hist = Batch(batch.items, batch.behaviours, batch.gaps, batch.categories)
    wider = Batch(*(torch.nn.functional.pad(t, (3, 0)) for t in (hist.items, hist.behaviours, hist.gaps,
                                                                 hist.categories)))
    assert torch.allclose(model.score_all(hist), model.score_all(wider), atol=1e-5)
    # ...and does read it: changing the most recent event changes the scores.
    last = hist.items.clone()
    last[:, -1] = 1 + last[:, -1] % SPEC.n_items
    changed = Batch(last, hist.behaviours, hist.gaps, hist.categories)
    assert not torch.allclose(model.score_all(hist), model.score_all(changed), atol=1e-5), "history ignored"


def test_left_padding_invariance(model) -> None:
    """More padding on the left must not change the prediction for the same history."""
    model.eval()
    batch = make_batch(pad=(3, 3, 3, 3))
    shorter = Batch(*(getattr(batch, f)[:, 2:] for f in ("items", "behaviours", "gaps", "categories")))
    s_long = model.score_all(batch)
    s_short = model.score_all(shorter)
    assert torch.allclose(s_long[:, 1:], s_short[:, 1:], atol=1e-4)


@pytest.mark.parametrize("positions", ["start", "end"])
def test_position_zero_is_the_first_or_the_newest_event(positions: str) -> None:
    """model.positions = "end" gives the newest event the same position vector whatever the history length
    (SASRec's left-padded windows); "start" gives it to the first event."""
    from shopformer.models.layers import InputEmbedding

    cfg = ModelConfig(dim=16, max_len=L, dropout=0.0, emb_dropout=0.0, positions=positions)
    emb = InputEmbedding(cfg, DataSpec(n_items=30, n_behaviours=1)).eval()
    batch = make_batch(pad=(0, 5))  # two histories: 8 events and 3 events
    x = emb(batch, torch.zeros(2, L, 16))  # no item signal: what is left is the position vector
    anchor = {"start": (0, 5), "end": (L - 1, L - 1)}[positions]  # the slot that must get position 0
    assert torch.allclose(x[0, anchor[0]], x[1, anchor[1]], atol=1e-6)
    other = {"start": (L - 1, L - 1), "end": (0, 5)}[positions]
    assert not torch.allclose(x[0, other[0]], x[1, other[1]], atol=1e-3)


@pytest.mark.parametrize("init_std", [0.02, None])
def test_embedding_tables_start_at_init_std(init_std: float | None) -> None:
    """model.init_std sets every embedding table's initial spread (None: 1 / sqrt(dim)); padding rows start at 0."""
    torch.manual_seed(0)
    cfg = ModelConfig(dim=64, max_len=50, use_category=True, init_std=init_std)
    net = build_model(cfg, DataSpec(n_items=2000, n_behaviours=3, n_categories=40, has_time=True))
    expected = init_std or 64**-0.5
    tables = [m for m in net.modules() if isinstance(m, torch.nn.Embedding)]
    assert len(tables) == 5  # items, positions, behaviours, time gaps, categories
    for table in tables:
        real = table.weight if table.padding_idx is None else table.weight[table.padding_idx + 1:]
        assert real.std().item() == pytest.approx(expected, rel=0.1)
        if table.padding_idx is not None:
            assert not table.weight[table.padding_idx].any()


def test_save_load_round_trip(model, tmp_path) -> None:
    from safetensors.torch import load_file, save_file

    model.eval()
    batch = make_batch()
    path = tmp_path / "m.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    fresh = build_model(model.cfg, SPEC)
    fresh.load_state_dict(load_file(str(path)))
    fresh.eval()
    assert torch.allclose(model.score_all(batch), fresh.score_all(batch))


# ---- task heads (models/heads.py): every causal model, kind "multi" ---------------------------------


@pytest.fixture(params=sorted(n for n, c in REGISTRY.items() if c.causal))
def headed_model(request: pytest.FixtureRequest):
    from shopformer.config import TaskConfig

    torch.manual_seed(0)
    model = build_model(model_cfg(request.param), SPEC, task=TaskConfig(kind="multi", intent_horizon=3),
                        target_behaviour=2)
    with torch.no_grad():  # move the zero-initialised adapter off zero, as training would
        for p in model.heads.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model


def test_heads_shapes_and_loss(headed_model) -> None:
    batch = make_batch()
    headed_model.train()
    out = headed_model.loss(batch, LossConfig())
    assert set(out.parts) == {"item", "target", "action", "intent"} and torch.isfinite(out.total)
    out.total.backward()
    headed_model.eval()
    for beh in (None, 0, 1, 3):
        s = headed_model.score_all(batch, beh)
        assert s.shape == (4, SPEC.n_items + 1) and torch.isneginf(s[:, 0]).all() and torch.isfinite(s[:, 1:]).all()
    assert headed_model.action_logits(batch).shape == (4, SPEC.n_behaviours + 1)
    assert headed_model.intent_logit(batch).shape == (4,)


def test_heads_no_future_leakage(headed_model) -> None:
    """Head outputs for a history must not change when events after it change."""
    headed_model.eval()
    batch = make_batch(pad=(0, 0, 0, 0))
    t = 4
    prefix = Batch(*(getattr(batch, f)[:, : t + 1] for f in ("items", "behaviours", "gaps", "categories")))
    changed = batch.items.clone()
    changed[:, t + 1 :] = torch.randint(1, SPEC.n_items + 1, changed[:, t + 1 :].shape)
    full = Batch(changed, batch.behaviours, batch.gaps, batch.categories)
    # per-position hidden states at <= t of the full window equal those of the prefix alone
    h_full = headed_model.encode(full)[:, : t + 1]
    assert torch.allclose(h_full, headed_model.encode(prefix), atol=1e-5)
    qpos = torch.arange(t + 1)
    b1, _ = headed_model.heads.pointer(h_full, qpos, headed_model.encode(full), full)
    b2, _ = headed_model.heads.pointer(h_full, qpos, headed_model.encode(prefix), prefix)
    assert torch.allclose(b1[..., : t + 1], b2, atol=1e-5)


def test_heads_left_padding_invariance(headed_model) -> None:
    headed_model.eval()
    batch = make_batch(pad=(3, 3, 3, 3))
    shorter = Batch(*(getattr(batch, f)[:, 2:] for f in ("items", "behaviours", "gaps", "categories")))
    for fn in (lambda b: headed_model.score_all(b)[:, 1:], lambda b: headed_model.action_logits(b)[:, 1:],
               headed_model.intent_logit):
        assert torch.allclose(fn(batch), fn(shorter), atol=1e-4)


def test_heads_save_load_round_trip(headed_model, tmp_path) -> None:
    from safetensors.torch import load_file, save_file

    from shopformer.config import TaskConfig

    headed_model.eval()
    batch = make_batch()
    path = tmp_path / "m.safetensors"
    save_file({k: v.contiguous() for k, v in headed_model.state_dict().items()}, str(path))
    fresh = build_model(headed_model.cfg, SPEC, task=TaskConfig(kind="multi", intent_horizon=3))
    fresh.load_state_dict(load_file(str(path)))
    fresh.eval()
    assert torch.allclose(headed_model.score_all(batch), fresh.score_all(batch))
    assert torch.allclose(headed_model.intent_logit(batch), fresh.intent_logit(batch))


def test_an_ensemble_scores_as_the_sum_of_its_members_and_trains_each_on_its_own_loss() -> None:
    """model.members = 2 is two one-member SASRecs side by side: the same weights in each half give
    the sum of their scores, and the loss is the mean of their losses (each member learns alone)."""
    torch.manual_seed(0)
    cfg = ModelConfig(dim=16, layers=1, heads=2, max_len=L, dropout=0.0, emb_dropout=0.0, members=2)
    ensemble = build_model(cfg, SPEC).eval()
    singles = [build_model(cfg.model_copy(update={"dim": 8, "members": 1}), SPEC).eval() for _ in range(2)]
    with torch.no_grad():
        for k, (single, encoder) in enumerate(zip(singles, [ensemble.encoder, *ensemble.others], strict=True)):
            single.item_emb.weight.copy_(ensemble.item_emb.weight[:, 8 * k: 8 * (k + 1)])
            single.encoder.load_state_dict(encoder.state_dict())
    batch = make_batch()
    assert torch.allclose(ensemble.score_all(batch)[:, 1:],
                          sum(s.score_all(batch)[:, 1:] for s in singles), atol=1e-5)
    loss = ensemble.loss(batch, LossConfig(kind="ce")).total
    assert torch.allclose(loss, sum(s.loss(batch, LossConfig(kind="ce")).total for s in singles) / 2, atol=1e-5)
    loss.backward()  # each member learns from its own loss alone: its gradient is half a single model's
    singles[1].loss(batch, LossConfig(kind="ce")).total.backward()
    for mine, alone in zip(ensemble.others[0].parameters(), singles[1].encoder.parameters(), strict=True):
        assert alone.grad is not None and mine.grad is not None
        assert torch.allclose(2 * mine.grad, alone.grad, atol=1e-5)
    with pytest.raises(ValueError, match="members"):
        build_model(ModelConfig(name="gru4rec", dim=16, members=2, heads=1), SPEC)


@pytest.mark.parametrize("members", [1, 2])
def test_cosine_scoring_ranks_by_direction_alone(members: int) -> None:
    """model.cosine: every output item vector is a unit vector in each member's columns (padding stays
    0), so growing an item's stored vector leaves its scores unchanged; without it a longer vector wins."""
    torch.manual_seed(0)
    cfg = ModelConfig(dim=16, layers=1, heads=2, max_len=L, dropout=0.0, emb_dropout=0.0, members=members,
                      cosine=True, tie_output=False)
    model = build_model(cfg, SPEC).eval()
    out = model.output_embeddings()
    norms = out[1:].unflatten(-1, (members, -1)).norm(dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    assert out[0].abs().sum() == 0
    batch = make_batch()
    before = model.score_all(batch)
    plain = build_model(cfg.model_copy(update={"cosine": False}), SPEC).eval()
    plain.load_state_dict(model.state_dict())
    plain_before = plain.score_all(batch)
    with torch.no_grad():
        for m in (model, plain):
            assert m.out_emb is not None
            m.out_emb.weight[5] *= 10.0
    assert torch.allclose(model.score_all(batch), before, atol=1e-5)
    assert not torch.allclose(plain.score_all(batch)[:, 5], plain_before[:, 5])
