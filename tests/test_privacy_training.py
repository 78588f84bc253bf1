"""Differentially private training (train.dp, training/privacy.py): per-example clipping and noise are
what DP-SGD prescribes, the privacy spent is accounted (more noise, smaller epsilon), and a real
training run reports (epsilon, delta) in metrics.json.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from shopformer.config import Config, ConfigError, DPConfig, apply_overrides
from shopformer.models.base import LossOutput
from shopformer.pipelines.next_item import run_experiment
from shopformer.training.privacy import PrivateObjective, make_private


@dataclass
class Rows:
    x: torch.Tensor
    y: torch.Tensor


def squared_error(model: torch.nn.Linear) -> object:
    def objective(b: Rows) -> LossOutput:
        loss = ((model(b.x).squeeze(-1) - b.y) ** 2).mean()
        return LossOutput(loss, {})

    return objective


def test_gradient_is_the_mean_of_clipped_per_example_gradients() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    batch = Rows(torch.randn(6, 3) * 5, torch.randn(6))
    params = list(model.parameters())
    priv = PrivateObjective(squared_error(model), params, DPConfig(noise_multiplier=0.0, max_grad_norm=0.5),
                            n_examples=60, batch_size=6, seed=0)
    out = priv(batch)
    out.total.backward()
    expected = [torch.zeros_like(p) for p in params]
    for i in range(6):
        grads = torch.autograd.grad(squared_error(model)(Rows(batch.x[i:i + 1], batch.y[i:i + 1])).total, params)
        norm = math.sqrt(sum(float((g ** 2).sum()) for g in grads))
        assert norm > 0.5  # every example is clipped here
        for e, g in zip(expected, grads, strict=True):
            e += g * (0.5 / norm) / 6
    for p, e in zip(params, expected, strict=True):
        assert torch.allclose(p.grad, e, atol=1e-6)
    full = ((model(batch.x).squeeze(-1) - batch.y) ** 2).mean()
    assert float(out.total.detach()) == pytest.approx(float(full.detach()), rel=1e-5)  # the real loss value
    assert priv.epsilon() == math.inf  # no noise, no privacy


def test_noise_is_added_and_accounted() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    batch = Rows(torch.randn(8, 3), torch.randn(8))
    eps = []
    for sigma in (0.8, 2.0):
        priv = PrivateObjective(squared_error(model), list(model.parameters()),
                                DPConfig(noise_multiplier=sigma, max_grad_norm=1.0, delta=1e-5), 800, 8, seed=1)
        model.zero_grad()
        priv(batch).total.backward()
        noisy = torch.cat([p.grad.flatten() for p in model.parameters()])
        # the clipped mean has norm <= 1; noise of std sigma / 8 per coordinate moves it
        assert priv.steps == 1
        for _ in range(49):
            priv(batch)
        eps.append(priv.epsilon())
        assert noisy.abs().sum() > 0
    assert 0 < eps[1] < eps[0] < math.inf
    rep = priv.report()
    assert rep["steps"] == 50 and rep["sample_rate"] == 0.01 and rep["delta"] == 1e-5


def test_loader_without_window_count_is_counted_not_guessed() -> None:
    model = torch.nn.Linear(3, 1)
    loader = [Rows(torch.randn(4, 3), torch.randn(4)), Rows(torch.randn(3, 3), torch.randn(3))]
    priv = make_private(squared_error(model), model.parameters(), loader, DPConfig(), batch_size=4, seed=0)
    assert priv.n_examples == 7


def test_config_validates() -> None:
    with pytest.raises(ConfigError, match="train.dp.max_grad_norm"):
        apply_overrides(Config(), ['train.dp={"max_grad_norm": 0}'])
    with pytest.raises(ConfigError, match="train.dp.delta"):
        apply_overrides(Config(), ['train.dp={"delta": 1.5}'])


def test_training_run_reports_epsilon(shop_log: Path, tmp_path: Path) -> None:
    cfg = apply_overrides(Config(), ["model.dim=16", "model.layers=1", "model.max_len=10", "train.epochs=1",
                                     "train.batch_size=32", "eval.bootstrap=0", "train.sliding_window=false",
                                     'train.dp={"noise_multiplier": 1.1, "max_grad_norm": 1.0, "delta": 1e-5}'])
    res = run_experiment(shop_log, cfg, tmp_path / "run", progress=False)
    metrics = json.loads((res.run_dir / "metrics.json").read_text())
    privacy = metrics["fit"]["privacy"]
    assert 0 < privacy["epsilon"] < math.inf and privacy["delta"] == 1e-5 and privacy["steps"] >= 1
    assert privacy["unit"] == "training window"
    assert any("epsilon = " in w for w in metrics["warnings"])  # and in the report's words
