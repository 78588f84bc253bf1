"""BERT4Rec: training window, masking and the appended-[MASK] inference."""

from __future__ import annotations

import torch

from shopformer.config import LossConfig, ModelConfig
from shopformer.data.batches import Batch
from shopformer.data.corpus import DataSpec
from shopformer.models import build_model
from shopformer.models.bert4rec import BERT4Rec

SPEC = DataSpec(n_items=40, n_behaviours=3, n_categories=4, has_time=True)
L = 6


def model(mask_prob: float = 0.2) -> BERT4Rec:
    torch.manual_seed(0)
    cfg = ModelConfig(name="bert4rec", dim=16, layers=1, heads=2, max_len=L, mask_prob=mask_prob)
    return build_model(cfg, SPEC)


def train_batch(rows: int = 3, pad: tuple[int, ...] = (0, 2, 5), seed: int = 0) -> Batch:
    """Causal training batch built like TrainLoader: L inputs, next-item targets."""
    g = torch.Generator().manual_seed(seed)
    full = torch.randint(1, SPEC.n_items + 1, (rows, L + 1), generator=g)  # L + 1 events
    beh = torch.randint(1, SPEC.n_behaviours + 1, (rows, L + 1), generator=g)
    for r, p in enumerate(pad):
        full[r, :p], beh[r, :p] = 0, 0
    real_in = full[:, :-1] != 0
    gaps = torch.randint(1, 9, (rows, L), generator=g) * real_in
    cats = torch.randint(1, SPEC.n_categories + 1, (rows, L), generator=g) * real_in
    return Batch(full[:, :-1], beh[:, :-1], gaps, cats, full[:, 1:] * real_in, beh[:, 1:] * real_in)


def test_training_window_appends_the_final_target_and_keeps_max_len() -> None:
    m, b = model(), train_batch()
    w = m.training_window(b)
    assert w.items.shape == (3, L)  # L + 1 events cut to max_len
    assert torch.equal(w.items[:, -1], b.targets[:, -1])
    assert torch.equal(w.items[:, :-1], b.items[:, 1:])  # the oldest input is dropped
    assert torch.equal(w.behaviours[:, -1], b.target_behaviours[:, -1])
    assert (w.gaps[:, -1] == 0).all() and (w.categories[:, -1] == 0).all()  # unknown: padding
    # A row with left padding loses nothing: its first event is still in the window.
    assert (w.items[1] != 0).sum() == (b.items[1] != 0).sum() + 1


def test_corrupt_masks_only_real_events_and_every_row() -> None:
    m = model(mask_prob=0.01)  # random masks are rare: the forced last mask must kick in
    inputs, targets = m.corrupt(train_batch(rows=3), torch.Generator().manual_seed(0))
    assert (targets != 0).any(-1).all(), "every row contributes at least one target"
    real = m.training_window(train_batch(rows=3)).items != 0
    assert ((targets != 0) <= real).all()
    again, targets2 = m.corrupt(train_batch(rows=3), torch.Generator().manual_seed(0))
    assert torch.equal(targets, targets2) and torch.equal(inputs.items, again.items)


def test_mask_rate_and_last_event_share() -> None:
    m = model(mask_prob=0.2)
    big = train_batch(rows=2000, pad=(0,) * 2000, seed=1)
    _, targets = m.corrupt(big, torch.Generator().manual_seed(0))
    masked = targets != 0
    assert abs(masked[:, :-1].float().mean().item() - 0.2) < 0.02
    # last: masked at random (0.2) or forced (0.5), or because the row had no other mask
    p_last = 1 - (1 - 0.2) * (1 - m.last_mask_frac) * (1 - 0.8 ** (L - 1))
    assert abs(masked[:, -1].float().mean().item() - p_last) < 0.04


def test_loss_is_finite_and_uses_masked_positions_only() -> None:
    m = model()
    out = m.loss(train_batch(), LossConfig())
    assert torch.isfinite(out.total)
    out.total.backward()
    assert m.item_emb.weight.grad[m.mask_id].abs().sum() > 0, "[MASK] embedding is trained"


def test_inference_appends_a_mask_and_drops_the_oldest_event_when_full() -> None:
    m = model().eval()
    b = train_batch()
    hist = Batch(b.items, b.behaviours, b.gaps, b.categories)
    ext = m.with_mask_appended(hist)
    assert ext.items.shape == (3, L)
    assert (ext.items[:, -1] == m.mask_id).all()
    assert (ext.behaviours[:, -1] == 0).all() and (ext.gaps[:, -1] == 0).all()
    assert torch.equal(ext.items[:, :-1], hist.items[:, 1:])
    # Row 0 is full, so its oldest event cannot matter; row 1 (padded) keeps all its events.
    older = hist.items.clone()
    older[0, 0] = 1 + older[0, 0] % SPEC.n_items
    s = m.score_all(hist)
    s2 = m.score_all(Batch(older, hist.behaviours, hist.gaps, hist.categories))
    assert torch.allclose(s, s2)
    assert torch.allclose(m.last_hidden(hist), m.encode(ext)[:, -1])


def test_corrupt_with_eligible_events_masks_only_those_and_an_eligible_last_one_always() -> None:
    """The fine-tuning cloze (training/finetune.py target_objective) is ``corrupt`` with ``eligible``."""
    m = model(mask_prob=0.3)
    big = train_batch(rows=2000, pad=(0, 3) * 1000, seed=2)
    full = m.training_window(big)
    real = full.items != 0
    beh = torch.cat([big.behaviours, big.target_behaviours[:, -1:]], dim=1)  # (B, L + 1): wider than L'
    eligible = beh == 2
    inputs, targets = m.corrupt(big, torch.Generator().manual_seed(0), eligible=eligible)
    masked = targets != 0
    cut = eligible[:, -masked.shape[1] :] & real
    assert (masked <= cut).all(), "only eligible events are masked"
    assert torch.equal(masked[:, -1], cut[:, -1]), "the last event is masked exactly when eligible"
    rate = masked[:, :-1][cut[:, :-1]].float().mean().item()
    assert abs(rate - 0.3) < 0.03
    assert (inputs.items[masked] == m.mask_id).all() and (inputs.behaviours[masked] == 0).all()
    assert not masked[~cut[:, -1]].any(-1).all(), "no forced mask: a row may have no target"
    again, targets2 = m.corrupt(big, torch.Generator().manual_seed(0), eligible=eligible)
    assert torch.equal(targets, targets2) and torch.equal(inputs.items, again.items)
    # every event eligible: the same random draws mask the same events, but the last one always
    _, every = m.corrupt(big, torch.Generator().manual_seed(0), eligible=torch.ones_like(eligible))
    _, plain = m.corrupt(big, torch.Generator().manual_seed(0))
    assert torch.equal((every != 0)[:, :-1], (plain != 0)[:, :-1]) and (every[:, -1] != 0).all()
