"""Shared fixtures: a small synthetic catalogue with a learnable pattern and a trained run."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from serving_support import RedisServer

from shopformer.data.batches import Batch
from shopformer.data.corpus import Dataset
from shopformer.data.sequences import Sequences
from shopformer.data.vocab import Vocab, Vocabs

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


@pytest.fixture(autouse=True, scope="session")
def _few_threads() -> None:
    torch.set_num_threads(1)  # tests are many and small: no oversubscription on 2 cores


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server for one test module (the serving tests' Redis store)."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server binary not found (apt-get install redis-server; scripts/ensure_redis.sh)")
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


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


def cyclic_dataset(n_users: int = 60, n_items: int = 30) -> Dataset:
    """:func:`cyclic_sequences` as an in-memory Dataset (two behaviours, no categories, no files)."""
    pad = ("<pad>",)
    vocabs = Vocabs(Vocab(pad + tuple(f"u{i}" for i in range(n_users))),
                    Vocab(pad + tuple(f"i{i}" for i in range(n_items))), Vocab(pad + ("a", "b")), Vocab(pad))
    return Dataset(path=Path("."), seq=cyclic_sequences(n_users=n_users, n_items=n_items), vocabs=vocabs,
                   stats={"has_time": True}, fingerprint="")


@pytest.fixture(scope="session")
def demo_taobao() -> Path:
    return ROOT / "data" / "demo" / "taobao_head300.csv"


def write_shop_log(path: Path, n_users: int = 40, seed: int = 0) -> None:
    """A small shop log: users look at items, keep some and usually take a kept item soon after."""
    rng = np.random.default_rng(seed)
    lines, day = [], 86400
    for u in range(n_users):
        t = 1_600_000_000 + int(rng.integers(0, day))
        pool = rng.integers(1, 60, 8)
        kept: list[int] = []
        for _ in range(int(rng.integers(25, 45))):
            t += int(rng.integers(60, day // 4))
            if kept and rng.random() < 0.35:
                item, beh = kept.pop(0), "take"
            elif rng.random() < 0.2:
                item, beh = int(rng.choice(pool)), "keep"
                kept.append(item)
            else:
                item, beh = int(rng.choice(pool)), "look"
            lines.append(f"u{u},i{item},{beh},{t}")
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="session")
def shop_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The prepared dataset of ``write_shop_log`` (behaviours look / keep / take, real timestamps)."""
    from shopformer.data.ingest import IngestOptions
    from shopformer.data.prepare import prepare

    root = tmp_path_factory.mktemp("shop_log")
    write_shop_log(root / "log.csv")
    opts = IngestOptions(columns=("user_id", "item_id", "behaviour", "timestamp"), now=2_000_000_000)
    return prepare([root / "log.csv"], root / "ds", opts).path


def flat_numbers(d: dict, prefix: str = "") -> dict[str, float]:
    """Nested metric dicts flattened to ``{"repeat.ndcg@10": ...}`` (pytest.approx compares flat ones)."""
    out: dict[str, float] = {}
    for k, v in d.items():
        out.update(flat_numbers(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def random_task_batch(n_items: int, n_behaviours: int, seed: int = 0, b: int = 3, length: int = 8,
                      pad: int = 2) -> Batch:
    """A random training Batch (targets = the next event) with one left-padded row."""
    g = torch.Generator().manual_seed(seed)
    items = torch.randint(1, n_items + 1, (b, length + 1), generator=g)
    beh = torch.randint(1, n_behaviours + 1, (b, length + 1), generator=g)
    gaps = torch.randint(1, 12, (b, length + 1), generator=g)
    for t in (items, beh, gaps):
        t[0, :pad] = 0
    real = items[:, :-1] != 0
    return Batch(items[:, :-1], beh[:, :-1], gaps[:, :-1], torch.zeros_like(items[:, :-1]),
                 items[:, 1:] * real, beh[:, 1:] * real)


def perturb_heads(model: torch.nn.Module, scale: float = 0.3) -> None:
    """Move the zero-initialised head parameters away from zero, as training would."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.heads.parameters():  # type: ignore[union-attr]
            p.add_(scale * torch.randn(p.shape, generator=g))


def blend_row(chosen: dict, model: str = "sasrec") -> str:
    """The test-table row of the blend a run's metrics say it chose (``metrics["blend"]["chosen"]``)."""
    weights = " / ".join(f"{w:g}" for w in chosen["weights"].values())
    return f"{model} + {chosen['baseline']} (blend, {'alpha' if len(chosen['weights']) == 1 else 'weights'} {weights})"
