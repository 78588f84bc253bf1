"""Shared fixtures: a small synthetic catalogue with a learnable pattern and a trained run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from shopformer.data.sequences import Sequences

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


@pytest.fixture(autouse=True, scope="session")
def _few_threads() -> None:
    torch.set_num_threads(1)  # tests are many and small: no oversubscription on 2 cores


def cyclic_sequences(n_users: int = 300, n_items: int = 60, step: int = 7, seed: int = 0) -> Sequences:
    """Each user walks the catalogue with a fixed stride: next = (cur + step) mod n_items."""
    rng = np.random.default_rng(seed)
    items, behs, times = [], [], []
    for _ in range(n_users):
        start, length = int(rng.integers(1, n_items + 1)), int(rng.integers(5, 12))
        items.append([(start + i * step - 1) % n_items + 1 for i in range(length)])
        behs.append([1 + (i % 2) for i in range(length)])
        times.append([1_600_000_000 + 60 * i for i in range(length)])
    return Sequences.from_lists(items, behs, times)


@pytest.fixture(scope="session")
def demo_taobao() -> Path:
    return ROOT / "data" / "demo" / "taobao_head300.csv"
