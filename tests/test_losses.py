import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F

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
    e_pos, e_neg = 2.0, 0.0 - math.log(0.25)  # only the negatives are corrected
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
    # label smoothing too: spread over the same classes (the masked duplicate of the target gets
    # no mass, so the loss stays finite), not silently dropped as it was before
    smooth_full = full_cross_entropy(h, t, emb, label_smoothing=0.2)
    smooth_sampled = sampled_softmax(h, t, emb, torch.arange(1, 6), label_smoothing=0.2)
    assert smooth_sampled.item() == pytest.approx(smooth_full.item(), rel=1e-5)
    assert smooth_sampled.item() != pytest.approx(sampled.item(), rel=1e-3)
    per_row = sampled_softmax(h, t, emb, torch.arange(1, 6).expand(4, -1), label_smoothing=0.2)
    assert per_row.item() == pytest.approx(smooth_full.item(), rel=1e-5)


def test_popularity_sampler_never_draws_padding_and_follows_counts() -> None:
    s = NegativeSampler(np.array([1000, 1, 0, 99]), "popularity", seed=0)
    draws = s.sample(20_000)
    assert (draws != 0).all()
    share = (draws == 3).float().mean().item()
    assert 0.97 < share < 1.0


def test_unknown_sampler_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown sampler"):
        NegativeSampler(np.ones(3), "zipf")


def test_in_batch_negatives_are_the_batch_targets_with_mixed_logq() -> None:
    counts = np.array([0.0, 6.0, 2.0, 0.0])  # item frequency: 0.75, 0.25, 0
    s = NegativeSampler(counts, "uniform", seed=0)
    targets = torch.tensor([2, 1, 1, 2, 1])
    neg, log_q = s.draw(targets, 0, in_batch=10)  # k = min(10, 5): every target, shuffled
    assert sorted(neg.tolist()) == sorted(targets.tolist())
    neg, log_q = s.draw(targets, 4, in_batch=2)  # 4 uniform draws over items 1..3 + 2 in-batch
    assert len(neg) == 6 and set(neg[4:].tolist()) <= {1, 2} and (neg != 0).all()
    # expected count of each item in the mixed draw: 4 / 3 + 2 * frequency
    expected = [4 / 3 + 2 * 0.75, 4 / 3 + 2 * 0.25, 4 / 3]
    assert torch.allclose(log_q[1:], torch.log(torch.tensor(expected)), atol=1e-6)


def test_in_batch_accidental_hits_masked_and_gradient_reaches_negatives() -> None:
    emb = torch.eye(4).requires_grad_(True)
    h = torch.tensor([[1.0, 2.0, 0.0, 0.5], [1.0, 0.0, 1.0, 0.0]], requires_grad=True)
    t = torch.tensor([1, 2])
    neg = torch.tensor([2, 1, 3])  # in-batch: each row's target appears as the other's negative
    log_q = torch.log(torch.tensor([1.0, 0.5, 2.0, 1.0]))
    loss = sampled_softmax(h, t, emb, neg, log_q)
    # row 0 (target 1, score 2): negatives 2 (score 0, -log 2) and 3 (score 0.5, -log 1); its own 1 masked
    r0 = -math.log(math.exp(2) / (math.exp(2) + math.exp(0 - math.log(2.0)) + math.exp(0.5)))
    # row 1 (target 2, score 1): negatives 1 (score 0, +log 2) and 3 (score 0); its own 2 masked
    r1 = -math.log(math.exp(1) / (math.exp(1) + math.exp(0 - math.log(0.5)) + math.exp(0)))
    assert loss.item() == pytest.approx((r0 + r1) / 2, rel=1e-5)
    loss.backward()
    assert h.grad is not None and emb.grad is not None
    assert (h.grad.abs().sum(-1) > 0).all()
    assert (emb.grad[1:].abs().sum(-1) > 0).all() and emb.grad[0].abs().sum() == 0  # padding untouched


def test_in_batch_whole_catalogue_equals_full_ce() -> None:
    torch.manual_seed(0)
    emb, h = torch.randn(6, 3), torch.randn(5, 3)
    t = torch.arange(1, 6)  # the batch's targets cover the catalogue once: equal frequencies
    s = NegativeSampler(np.array([0, 3, 3, 3, 3, 3]), "uniform", seed=0)
    neg, log_q = s.draw(t, 0, in_batch=5)
    full = full_cross_entropy(h, t, emb)
    assert sampled_softmax(h, t, emb, neg, log_q).item() == pytest.approx(full.item(), rel=1e-5)


@pytest.mark.parametrize(("n", "k"), [(64, 0), (16, 64), (0, 64)])
def test_logq_corrected_gradient_approaches_full_ce(n: int, k: int) -> None:
    """Averaged over draws, the corrected sampled softmax's gradient is close to full CE's; without
    the correction, or with the target corrected too (TF's form), it is clearly biased."""
    torch.manual_seed(0)
    n_items = 40
    counts = np.r_[0.0, 1000.0 / np.arange(1, n_items)]  # Zipf item frequency
    emb = torch.randn(n_items, 8)
    t = torch.tensor([n_items - 1, 1, 5, 20])
    h0 = 0.8 * emb[t]  # the targets are likely: their place in the normaliser matters

    def grad(loss: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        (g,) = torch.autograd.grad(loss, h)
        return g

    def corrected_both(h: torch.Tensor, neg: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
        pos = (h * emb[t]).sum(-1, keepdim=True) - log_q[t].unsqueeze(-1)
        logits = (h @ emb[neg].T - log_q[neg]).masked_fill(neg[None] == t[:, None], float("-inf"))
        return F.cross_entropy(torch.cat([pos, logits], 1), torch.zeros(len(t), dtype=torch.long))

    h = h0.clone().requires_grad_(True)
    full = grad(full_cross_entropy(h, t, emb), h)
    s = NegativeSampler(counts, "uniform", seed=1)
    draws = [s.draw(torch.multinomial(s.freq, 256, replacement=True, generator=s.generator), n, k)
             for _ in range(200)]

    def error(loss_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]) -> float:
        g = torch.stack([grad(loss_fn(h, neg, log_q), h) for neg, log_q in draws]).mean(0)
        return float((g - full).norm() / full.norm())

    ours = error(lambda h, neg, log_q: sampled_softmax(h, t, emb, neg, log_q))
    plain = error(lambda h, neg, log_q: sampled_softmax(h, t, emb, neg))
    both = error(corrected_both)
    assert ours < 0.06
    assert plain > 3 * ours and both > 3 * ours


def test_sampled_loss_config_needs_negatives_and_in_batch_needs_counts() -> None:
    from shopformer.config import Config, LossConfig
    from shopformer.training.objectives import make_sampler

    with pytest.raises(ValueError, match="needs loss.negatives > 0 or loss.in_batch > 0"):
        LossConfig(kind="sampled", negatives=0)
    cfg = Config().override(loss={"kind": "sampled", "negatives": 0, "in_batch": 64})
    with pytest.raises(ValueError, match="needs the training item counts"):
        make_sampler(cfg, 5, None)
    assert make_sampler(cfg, 5, np.ones(6)) is not None


def test_per_row_negatives_equal_shared_ones_when_every_row_draws_the_same() -> None:
    """(M, N) negatives give each row its own softmax: with identical rows it is the shared loss,
    accidental hits are masked per row, and the sampler draws n ids for every target."""
    torch.manual_seed(0)
    emb = torch.randn(8, 4)
    h = torch.randn(3, 4)
    t = torch.tensor([1, 2, 3])
    shared = torch.tensor([2, 5, 7])  # item 2 is row 1's own target: masked in that row only
    log_q = torch.log(torch.full((8,), 0.125))
    per_row = shared.expand(3, -1)
    assert sampled_softmax(h, t, emb, per_row, log_q).item() == pytest.approx(
        sampled_softmax(h, t, emb, shared, log_q).item(), rel=1e-6)
    # different negatives per row: row i's loss uses only its own row of ids
    rows = torch.tensor([[4, 5], [6, 7], [1, 2]])
    each = [sampled_softmax(h[i : i + 1], t[i : i + 1], emb, rows[i]).item() for i in range(3)]
    assert sampled_softmax(h, t, emb, rows).item() == pytest.approx(sum(each) / 3, rel=1e-6)
    s = NegativeSampler(np.ones(8), "uniform", seed=0)
    neg, lq = s.draw_per_row(t, 5)
    assert neg.shape == (3, 5) and (neg != 0).all() and torch.allclose(lq, s.log_expected(5, 0))


def test_per_position_negatives_take_no_in_batch_ones_and_train_next_item_only() -> None:
    from shopformer.config import Config, LossConfig

    with pytest.raises(ValueError, match="set loss.in_batch = 0"):
        LossConfig(kind="sampled", per_position=True, in_batch=16)
    with pytest.raises(ValueError, match="loss.per_position is supported for task.kind='next-item' only"):
        Config().override(loss={"kind": "sampled", "per_position": True}, task={"kind": "multi"})
