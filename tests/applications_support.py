"""Tiny runs on the bundled Taobao slice, shared by the tests/test_applications_*.py files.

The runs are built, not trained (random weights, heads moved off zero): the application tests check
the protocols, the data flow and the outputs, which must hold for any weights; a quality claim is
the benchmark's job (bench/applications.py)."""

from __future__ import annotations

from pathlib import Path

from conftest import perturb_heads

from shopformer.artifacts import Run, load_run, save_run
from shopformer.config import Config
from shopformer.data.corpus import Dataset, load_dataset
from shopformer.data.ingest import IngestOptions
from shopformer.data.prepare import prepare
from shopformer.evaluation.baselines import item_counts
from shopformer.models import build_model

COLUMNS = ("user_id", "item_id", "category_id", "behaviour", "timestamp")
TINY = {"model": {"dim": 16, "layers": 1, "heads": 1, "max_len": 20},
        "split": {"kind": "temporal", "valid_start": 0.5, "test_start": 0.75}}


def prepare_demo(csv: Path, out: Path) -> Dataset:
    """The 300 users / 9 days of data/demo/taobao_head300.csv, prepared."""
    return load_dataset(prepare([csv], out, IngestOptions(columns=COLUMNS)).path)


def tiny_run(ds: Dataset, out: Path, kind: str = "multi", seed: int = 0) -> Run:
    """A saved run of ``kind`` ('multi': every head; 'next-item': the plain contract)."""
    import torch

    torch.manual_seed(seed)
    name, target = ds.target_behaviour(None)
    cfg = Config().override(**TINY, task={"kind": kind, "target_behaviour": name})
    model = build_model(cfg.model, ds.spec, task=cfg.task, target_behaviour=target)
    if model.heads is not None:
        perturb_heads(model)
    save_run(out, model, cfg, ds.vocabs, item_counts(ds.seq, ds.seq.offsets[1:], ds.spec.n_items),
             ds.item_category(), {}, ds.fingerprint, str(ds.path.resolve()))
    return load_run(out)


def write_activity_log(path: Path, n_users: int = 300, days: int = 9, seed: int = 0) -> None:
    """A shop log whose users each have their own activity rate and leave for good on a random day:
    who churns is readable from recency and frequency (a signal any churn model must find)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    t0, day = 1_600_000_000, 86400
    lines = []
    for u in range(n_users):
        rate = float(np.exp(rng.normal(1.0, 0.8)))  # events per day
        leave = float(rng.uniform(1, days * 1.6))  # in days; past `days`: never leaves
        t = float(rng.uniform(0, 1))
        while True:
            t += float(rng.exponential(1 / rate))
            if t >= min(leave, days):
                break
            item = int(rng.integers(1, 60))
            beh = "buy" if rng.random() < 0.1 else ("cart" if rng.random() < 0.15 else "pv")
            lines.append(f"u{u},i{item},c{item % 6},{beh},{int(t0 + t * day)}")
    path.write_text("\n".join(lines) + "\n")


def small_dataset(users: list[list[tuple[int, int, int]]], n_items: int, categories: list[int] | None = None,
                  behaviours: tuple[str, ...] = ("pv", "buy")) -> Dataset:
    """An in-memory Dataset from users given as (item, behaviour, time) lists (no files)."""
    from shopformer.data.sequences import Sequences
    from shopformer.data.vocab import PAD_TOKEN, Vocab, Vocabs

    cats = categories or [0] * (n_items + 1)
    seq = Sequences.from_lists([[e[0] for e in u] for u in users], [[e[1] for e in u] for u in users],
                               [[e[2] for e in u] for u in users], [[cats[e[0]] for e in u] for u in users])
    n_cat = max(cats)
    vocabs = Vocabs(Vocab((PAD_TOKEN, *[f"u{i}" for i in range(len(users))])),
                    Vocab((PAD_TOKEN, *[f"i{i}" for i in range(1, n_items + 1)])),
                    Vocab((PAD_TOKEN, *behaviours)), Vocab((PAD_TOKEN, *[f"c{i}" for i in range(1, n_cat + 1)])))
    return Dataset(Path("<memory>"), seq, vocabs, {}, "")
