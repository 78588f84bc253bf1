"""BSARec's low-pass mixer, made causal (models/layers.py: LowPassFilter)."""

from __future__ import annotations

import pytest
import torch

from shopformer.config import ModelConfig
from shopformer.models.layers import LowPassFilter

L, D = 12, 6


def _filter(keep: int) -> LowPassFilter:
    torch.manual_seed(0)
    return LowPassFilter(ModelConfig(dim=D, heads=1, max_len=L, freq_mix=0.7, freq_keep=keep))


def _bsarec(x: torch.Tensor, keep: int, beta2: torch.Tensor) -> torch.Tensor:
    """BSARec's own branch on a left-padded window: FFT over the whole window, keep the lowest bins."""
    spectrum = torch.fft.rfft(x, dim=1, norm="ortho")
    spectrum[:, keep:] = 0
    low = torch.fft.irfft(spectrum, n=x.shape[1], dim=1, norm="ortho")
    return low + beta2 * (x - low)


@pytest.mark.parametrize("keep", [1, 3, 5])
def test_each_position_is_bsarec_on_the_history_that_ends_there(keep: int) -> None:
    f = _filter(keep)
    x = torch.randn(1, L, D)
    real = torch.ones(1, L, dtype=torch.bool)
    real[0, :4] = False  # 4 padding slots, then 8 events
    x = x * real.unsqueeze(-1)
    out = f(x, real)
    beta2 = f.sqrt_beta.detach().square()
    for t in range(4, L):
        # the history that ends at t, right-aligned in a zero-padded window of L, as BSARec sees it
        window = torch.zeros(1, L, D)
        window[0, L - (t + 1 - 4):] = x[0, 4 : t + 1]
        expected = _bsarec(window, keep, beta2)[0, -1]
        torch.testing.assert_close(out[0, t], expected, atol=1e-5, rtol=1e-4)


def test_padding_and_later_events_do_not_reach_earlier_positions() -> None:
    f = _filter(3)
    x = torch.randn(2, L, D)
    real = torch.ones(2, L, dtype=torch.bool)
    real[:, :3] = False
    changed = x.clone()
    changed[:, :3] = 100.0  # garbage at padding
    changed[:, 9:] = -7.0  # later events
    a, b = f(x, real), f(changed, real)
    torch.testing.assert_close(a[:, 3:9], b[:, 3:9])
    assert not torch.allclose(a[:, 9:], b[:, 9:])


def test_keeping_every_bin_is_the_identity() -> None:
    f = _filter(L // 2 + 1)
    x = torch.randn(3, L, D)
    real = torch.ones(3, L, dtype=torch.bool)
    torch.testing.assert_close(f(x, real), x, atol=1e-5, rtol=1e-4)


def test_the_kernel_is_rebuilt_from_the_config_not_saved() -> None:
    f = _filter(3)
    assert set(f.state_dict()) == {"sqrt_beta"}
