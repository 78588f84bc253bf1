"""RNN baselines: leading padding must not change the recurrent state."""

from __future__ import annotations

import pytest
import torch

from shopformer.config import ModelConfig
from shopformer.data.batches import Batch
from shopformer.data.corpus import DataSpec
from shopformer.models import build_model
from shopformer.models.gru4rec import RecurrentModel, run_left_padded

SPEC = DataSpec(n_items=20, n_behaviours=3, n_categories=4, has_time=True)


def events(n: int, seed: int = 0) -> Batch:
    """One row of ``n`` real events, no padding."""
    g = torch.Generator().manual_seed(seed)
    return Batch(
        items=torch.randint(1, SPEC.n_items + 1, (1, n), generator=g),
        behaviours=torch.randint(1, SPEC.n_behaviours + 1, (1, n), generator=g),
        gaps=torch.randint(1, 10, (1, n), generator=g),
        categories=torch.randint(1, SPEC.n_categories + 1, (1, n), generator=g),
    )


def left_pad(batch: Batch, length: int) -> Batch:
    pad = length - batch.items.shape[1]
    return Batch(
        *(
            torch.nn.functional.pad(t, (pad, 0))
            for t in (batch.items, batch.behaviours, batch.gaps, batch.categories)
        )
    )


def stack(rows: list[Batch]) -> Batch:
    return Batch(
        *(torch.cat([getattr(r, f) for r in rows]) for f in ("items", "behaviours", "gaps", "categories"))
    )


@pytest.fixture(params=["gru4rec", "lstm"])
def rnn_model(request: pytest.FixtureRequest) -> RecurrentModel:
    torch.manual_seed(0)
    cfg = ModelConfig(name=request.param, dim=16, layers=2, heads=2, max_len=10, use_category=True)
    return build_model(cfg, SPEC).eval()


def test_left_padding_does_not_change_final_state(rnn_model: RecurrentModel) -> None:
    rows = [events(n, seed=n) for n in (1, 4, 7, 10)]
    batch = stack([left_pad(r, 10) for r in rows])  # mixed padding in one batch
    final = rnn_model.encode(batch)[:, -1]  # (B, D)
    for i, row in enumerate(rows):
        alone = rnn_model.encode(row)[:, -1]  # the same events, no padding at all
        assert torch.allclose(final[i], alone[0], atol=1e-5)
        # ...and the whole trajectory matches, shifted right by the padding.
        n = row.items.shape[1]
        assert torch.allclose(rnn_model.encode(batch)[i, -n:], rnn_model.encode(row)[0], atol=1e-5)
    assert (rnn_model.encode(batch)[0, :-1] == 0).all(), "outputs at padding must be zero"


def test_run_left_padded_matches_the_rnn_on_unpadded_rows() -> None:
    torch.manual_seed(0)
    rnn = torch.nn.GRU(4, 5, batch_first=True)
    x = torch.randn(3, 6, 4)
    real = torch.tensor([[0, 0, 0, 1, 1, 1], [1] * 6, [0] * 6], dtype=torch.bool)
    x = x * real.unsqueeze(-1)
    out = run_left_padded(rnn, x, real)
    ref0, _ = rnn(x[0:1, 3:])
    ref1, _ = rnn(x[1:2])
    assert torch.allclose(out[0, 3:], ref0[0], atol=1e-6)
    assert torch.allclose(out[1], ref1[0], atol=1e-6)
    assert (out[0, :3] == 0).all() and (out[2] == 0).all()  # padding and an empty row
    # The naive run (padding fed through the RNN) does move the state: the test has teeth.
    naive, _ = rnn(x[0:1])
    assert not torch.allclose(naive[0, -1], ref0[0, -1], atol=1e-4)


def test_rnns_have_no_attention(rnn_model: RecurrentModel) -> None:
    assert rnn_model.has_attention is False
