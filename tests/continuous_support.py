"""Shared by the continuous-learning tests: a cyclic shop log whose catalogue grows, a trained base
run, a fresh registry per test and a small retrain call."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shopformer.config import Config, apply_overrides
from shopformer.data.ingest import IngestOptions
from shopformer.data.prepare import prepare
from shopformer.pipelines.continuous import Outcome, RetrainOptions, add_run, retrain
from shopformer.pipelines.gate import GateConfig
from shopformer.pipelines.next_item import run_experiment

T0 = 1_600_000_000
DAY = 86_400
COLUMNS = ("user_id", "item_id", "behaviour", "timestamp")
OPTS = IngestOptions(columns=COLUMNS, now=2_000_000_000)
FAST = ["model.dim=32", "model.max_len=10", "train.epochs=12", "train.patience=4", "train.batch_size=64",
        "eval.bootstrap=0"]


def write_cycle_log(path: Path, n_items: int, first_day: int, days: int, n_users: int, seed: int,
                    user_offset: int = 0) -> None:
    """Users walk a catalogue of ``n_items`` in a cycle (next = current + 1), 15% random steps."""
    rng = np.random.default_rng(seed)
    lines = []
    for u in range(n_users):
        t = T0 + (first_day + int(rng.integers(0, days))) * DAY + int(rng.integers(0, DAY // 2))
        item = int(rng.integers(1, n_items + 1))
        for i in range(int(rng.integers(6, 11))):
            if i and rng.random() < 0.15:
                item = int(rng.integers(1, n_items + 1))
            beh = "buy" if rng.random() < 0.1 else "view"
            lines.append(f"u{u + user_offset},i{item},{beh},{t + 3 * 3600 * i}")
            item = item % n_items + 1
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """a.csv: items i1..i40 over days 0-6; b.csv: days 7-10, the cycle grown to i50 (i40 -> i41 .. i50 -> i1)."""
    root = tmp_path_factory.mktemp("continuous")
    write_cycle_log(root / "a.csv", 40, 0, 7, 400, seed=0)
    write_cycle_log(root / "b.csv", 50, 7, 4, 400, seed=1, user_offset=200)
    return root


@pytest.fixture(scope="module")
def base_run(logs: Path) -> Path:
    prepare([logs / "a.csv"], logs / "ds0", OPTS)
    cfg = apply_overrides(Config(), FAST)
    return run_experiment(logs / "ds0", cfg, logs / "run0", progress=False).run_dir


@pytest.fixture()
def registry(base_run: Path, tmp_path: Path) -> Path:
    add_run(tmp_path / "reg", base_run)
    return tmp_path / "reg"


def small_retrain(reg: Path, logs: Path, **kw: object) -> Outcome:
    opts = {"events": (logs / "b.csv",), "ingest": OPTS, "window_days": 30.0,
            "overrides": ("train.epochs=2",), "gate": GateConfig(baselines=False, min_examples=10, margin=0.05), **kw}
    return retrain(reg, RetrainOptions(**opts))  # type: ignore[arg-type]
