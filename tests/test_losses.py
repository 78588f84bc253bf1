import math

import numpy as np
import pytest
import torch

from shopformer.models.losses import NegativeSampler, full_cross_entropy, sampled_softmax


def test_full_ce_matches_hand_computation_and_ignores_padding_class() -> None:
    emb = torch.tensor([[100.0, 100.0], [1.0, 0.0], [0.0, 1.0]])  # row 0 = padding (huge on purpose)
    h = torch.tensor([[2.0, 0.0]])
    loss = full_cross_entropy(h, torch.tensor([1]), emb)
    expected = -math.log(math.exp(2) / (math.exp(2) + math.exp(0)))
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_excluded_items_leave_the_softmax_and_cannot_be_targets() -> None:
    emb = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [3.0, 3.0]])  # item 3: cold, scores high
    h = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([1, 2])
    excluded = torch.tensor([False, False, False, True])
    loss = full_cross_entropy(h, t, emb, excluded=excluded)
    # softmax over items 1 and 2 only: row 0 scores (2, 0), row 1 scores (0, 1)
    row0 = -math.log(math.exp(2) / (math.exp(2) + 1))
    row1 = -math.log(math.exp(1) / (1 + math.exp(1)))
    assert loss.item() == pytest.approx((row0 + row1) / 2, rel=1e-5)
    # with smoothing, the excluded column gets no mass either: 0.9 on the target, 0.1 on item 2
    smooth = full_cross_entropy(h[:1], t[:1], emb, label_smoothing=0.2, excluded=excluded)
    expected = -(0.9 * math.log(math.exp(2) / (math.exp(2) + 1)) + 0.1 * math.log(1 / (math.exp(2) + 1)))
    assert smooth.item() == pytest.approx(expected, rel=1e-5)
    sampled = sampled_softmax(h[:1], t[:1], emb, torch.tensor([2, 3]), excluded=excluded)
    assert sampled.item() == pytest.approx(row0, rel=1e-5)
    with pytest.raises(ValueError, match=r"target items \[3\] are excluded"):
        full_cross_entropy(h, torch.tensor([1, 3]), emb, excluded=excluded)


def test_sampled_softmax_masks_accidental_hits_and_applies_logq() -> None:
    emb = torch.eye(4)
    h = torch.tensor([[1.0, 2.0, 0.0, 0.0]])
    neg = torch.tensor([1, 2])  # 1 is the target itself -> masked
    loss = sampled_softmax(h, torch.tensor([1]), emb, neg)
    # scores: target (item 1) = 2, item 2 = 0; the duplicate of the target is masked out
    expected = -math.log(math.exp(2.0) / (math.exp(2.0) + math.exp(0.0)))
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    log_q = torch.log(torch.tensor([1e-9, 0.5, 0.25, 0.25]))
    corrected = sampled_softmax(h, torch.tensor([1]), emb, neg, log_q)
    e_pos, e_neg = 2.0 - math.log(0.5), 0.0 - math.log(0.25)
    assert corrected.item() == pytest.approx(-math.log(math.exp(e_pos) / (math.exp(e_pos) + math.exp(e_neg))), rel=1e-5)


def test_sampled_softmax_with_all_items_as_negatives_equals_full_ce() -> None:
    torch.manual_seed(0)
    emb = torch.randn(6, 3)
    h = torch.randn(4, 3)
    t = torch.tensor([1, 2, 3, 5])
    full = full_cross_entropy(h, t, emb)
    sampled = sampled_softmax(h, t, emb, torch.arange(1, 6))
    # sampled masks the target among negatives but adds it back as the positive: identical
    assert sampled.item() == pytest.approx(full.item(), rel=1e-5)


def test_popularity_sampler_never_draws_padding_and_follows_counts() -> None:
    s = NegativeSampler(np.array([1000, 1, 0, 99]), "popularity", seed=0)
    draws = s.sample(20_000)
    assert (draws != 0).all()
    share = (draws == 3).float().mean().item()
    assert 0.97 < share < 1.0


def test_unknown_sampler_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown sampler"):
        NegativeSampler(np.ones(3), "zipf")
