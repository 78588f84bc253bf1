"""HSTU: bucketing, approximate times and the relative (position + time) attention bias."""

from __future__ import annotations

import torch

from shopformer.config import ModelConfig
from shopformer.data.batches import Batch
from shopformer.data.corpus import DataSpec
from shopformer.models import build_model
from shopformer.models.hstu import HSTU
from shopformer.models.layers import approx_times, log_bucket

SPEC = DataSpec(n_items=20, n_behaviours=2, has_time=True)
CFG = ModelConfig(name="hstu", dim=16, layers=2, heads=2, max_len=8)


def batch(gaps: list[list[int]]) -> Batch:
    g = torch.tensor(gaps)
    real = g != 0
    items = (torch.arange(g.numel()).view(g.shape) % SPEC.n_items + 1) * real
    return Batch(items, real.long(), g, torch.zeros_like(g))


def test_log_bucket_is_exact_then_logarithmic_and_capped() -> None:
    x = torch.arange(0, 300)
    b = log_bucket(x, n_exact=8, n_buckets=12)
    assert torch.equal(b[:8], x[:8])
    assert (b.diff() >= 0).all() and b.max() == 11
    assert b[8] == 8 and b[9] == 9 and b[10] == 9 and b[11] == 10


def test_approx_times_invert_the_gap_buckets() -> None:
    t = approx_times(torch.tensor([[0, 0, 1, 2, 12]]))
    assert t[0, :3].tolist() == [0.0, 0.0, 0.0]  # padding and "first event" add no time
    g = torch.diff(t[0, 2:])
    # bucket b holds gaps with floor(log2(1 + gap)) == b - 2
    assert torch.equal(torch.floor(torch.log2(1 + g)), torch.tensor([0.0, 10.0]))


def test_time_bias_depends_only_on_gaps_between_query_and_key() -> None:
    torch.manual_seed(0)
    model = build_model(CFG, SPEC)
    assert isinstance(model, HSTU)
    torch.nn.init.normal_(model.rel_bias.time.weight)
    b1 = model.rel_bias(batch([[0, 0, 3, 5, 2, 9], [7, 4, 3, 5, 2, 9]]))
    # Left padding vs. an earlier event: the bias among the common events is the same,
    # and the first event's own gap (time to something outside the window) is irrelevant.
    assert torch.allclose(b1[0, :, 2:, 2:], b1[1, :, 2:, 2:])
    b2 = model.rel_bias(batch([[0, 0, 3, 5, 12, 9]]))
    assert not torch.allclose(b1[0, :, 4:, :4], b2[0, :, 4:, :4]), "a longer gap must change the bias"
    assert torch.allclose(b1[0, :, :4, :4], b2[0, :, :4, :4]), "a later gap must not change earlier rows"


def test_no_time_bias_without_timestamps() -> None:
    model = build_model(CFG, DataSpec(n_items=20, n_behaviours=2, has_time=False)).eval()
    assert not model.rel_bias.use_time
    h1 = model.encode(batch([[0, 2, 3, 4]]))
    h2 = model.encode(batch([[0, 9, 9, 9]]))
    assert torch.allclose(h1, h2)
