"""The chunked, gradient-fused full-catalogue cross-entropy (models/chunked_ce.py)."""

from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from shopformer.models import chunked_ce
from shopformer.models.losses import full_cross_entropy


def _case(m: int, v: int, d: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(m, d, generator=g).requires_grad_()
    e = torch.randn(v, d, generator=g).requires_grad_()
    excluded = torch.zeros(v, dtype=torch.bool)
    excluded[[3, v - 1]] = True  # cold items: outside the softmax
    t = torch.randint(1, v, (m,), generator=g)
    t[excluded[t]] = 1
    return h, e, t, excluded


def _seen(t: torch.Tensor, v: int, per_row: int = 4) -> torch.Tensor:
    """(M, per_row) items to leave out of each row's softmax: random kept classes, never the target,
    with some PAD (0) entries."""
    g = torch.Generator().manual_seed(1)
    seen = torch.randint(4, v - 1, (len(t), per_row), generator=g)
    seen[seen == t[:, None]] = 0
    seen[::3, -1] = 0
    return seen


@pytest.mark.parametrize("budget", [1 << 22, 700, 5])  # one block; row blocks; row blocks split by columns
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("masked", [False, True])
def test_equals_the_plain_cross_entropy_in_value_and_gradients(budget: int, smoothing: float, masked: bool) -> None:
    h, e, t, excluded = _case(m=37, v=50, d=8)
    seen = _seen(t, 50) if masked else None
    plain = full_cross_entropy(h, t, e, smoothing, excluded, budget=None, seen=seen)
    gh, ge = torch.autograd.grad(plain, [h, e])
    chunked = full_cross_entropy(h, t, e, smoothing, excluded, budget=budget, seen=seen)
    ch, ce = torch.autograd.grad(chunked, [h, e])
    assert chunked.item() == pytest.approx(plain.item(), rel=1e-5)
    torch.testing.assert_close(ch, gh, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(ce, ge, atol=1e-6, rtol=1e-4)
    assert ce[0].abs().sum() == 0 and ce[3].abs().sum() == 0  # padding and cold rows get no gradient


def test_seen_items_leave_their_row_s_softmax_only() -> None:
    """loss.mask_seen: each row's cross-entropy is the plain one over the catalogue minus that row's
    own seen items (and the excluded ones); a seen item gets no push from that row."""
    import torch.nn.functional as F

    h, e, t, excluded = _case(m=6, v=20, d=4)
    seen = _seen(t, 20)
    loss = full_cross_entropy(h, t, e, 0.0, excluded, budget=5, seen=seen)
    rows = []
    for i in range(len(t)):
        keep = ~excluded.clone()
        keep[0] = False
        keep[seen[i]] = False
        keep[t[i]] = True
        z = (h[i] @ e.T)[keep]
        rows.append(F.cross_entropy(z[None], (keep.long().cumsum(0) - 1)[t[i]][None]))
    assert loss.item() == pytest.approx(torch.stack(rows).mean().item(), rel=1e-5)
    assert loss.item() < full_cross_entropy(h, t, e, 0.0, excluded).item()  # fewer classes, lower loss
    grad_e, = torch.autograd.grad(full_cross_entropy(h[:1], t[:1], e, 0.0, excluded, seen=seen[:1]), [e])
    assert all(grad_e[j].abs().sum() == 0 for j in seen[0].tolist())


def test_seen_before_is_the_causal_history_without_the_target() -> None:
    from shopformer.models.losses import seen_before

    items = torch.tensor([[0, 5, 6, 5]])  # left padding, then 5, 6, 5
    targets = torch.tensor([[5, 6, 5, 7]])  # the next item at each position (5 repeats)
    seen = seen_before(items, targets)[0]
    assert seen.tolist() == [[0, 0, 0, 0],  # before the first event: nothing seen
                             [0, 5, 0, 0],  # predicting 6 from [5]
                             [0, 0, 6, 0],  # predicting 5 again: 5 stays a class, 6 leaves
                             [0, 5, 6, 5]]  # predicting 7 from [5, 6, 5]
    both_sides = seen_before(items, targets, causal=False)[0]  # a masked model: the whole window
    assert both_sides.tolist() == [[0, 0, 6, 0], [0, 5, 0, 5], [0, 0, 6, 0], [0, 5, 6, 5]]


def test_block_shape_splits_wide_catalogues_by_columns() -> None:
    assert chunked_ce.block_shape(m=1000, v=100, budget=30_000) == (300, 100)  # blocks of whole rows
    assert chunked_ce.block_shape(m=10, v=1_000_000, budget=1 << 22) == (10, (1 << 22) // 10)  # all rows, split
    rows, cols = chunked_ce.block_shape(m=5000, v=1_000_000, budget=1 << 22)
    assert rows == chunked_ce.MIN_BLOCK_ROWS and cols == (1 << 22) // rows and rows * cols <= 1 << 22


def test_never_allocates_the_full_logits_and_reuses_its_workspace() -> None:
    m, v = 512, 4000  # plain logits: 8 MB; the block budget below: 256 KB
    h, e, t, excluded = _case(m, v, d=16)
    full_cross_entropy(h, t, e, 0.0, excluded, budget=1 << 16).backward()  # warm: the workspace exists
    buf = chunked_ce.workspace(1, h)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        full_cross_entropy(h, t, e, 0.0, excluded, budget=1 << 16).backward()
    biggest = max(ev.cpu_memory_usage for ev in prof.events())
    assert biggest < m * v * 4 // 8, biggest
    assert chunked_ce.workspace(1, h).data_ptr() == buf.data_ptr()  # the same buffer, step after step
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        full_cross_entropy(h, t, e, 0.0, excluded, budget=None).backward()
    assert max(ev.cpu_memory_usage for ev in prof.events()) >= m * v * 4  # the plain path does


def test_stays_fp32_under_bf16_autocast_and_skips_gradients_when_none_are_needed() -> None:
    h, e, t, excluded = _case(m=20, v=30, d=8)
    ref = full_cross_entropy(h, t, e, 0.0, excluded, budget=None)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = full_cross_entropy(h, t, e, 0.0, excluded)
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(ref.item(), rel=1e-5)
    with torch.no_grad():
        assert full_cross_entropy(h, t, e, 0.0, excluded).item() == pytest.approx(ref.item(), rel=1e-5)
    with pytest.raises(ValueError, match=r"target items \[3\] are excluded"):
        full_cross_entropy(h, torch.full((20,), 3), e, 0.0, excluded)
