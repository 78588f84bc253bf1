"""``shopformer export RUN --format onnx``: the run's encoder as ONNX, checked on real histories.

The parity histories are users of the data set the run was trained on (or one with the same
vocabulary), sampled with a seed and windowed by ``Recommender.make_batch``, the very path the
service takes. They are checked in batches of 1, 7 and 64 histories, both as full ``max_len``
windows and trimmed to their longest row (as the service trims them), plus random prefixes of them
(histories mid-session) and one short history alone, so both dynamic axes are exercised. The
export itself is ``onnx_encoder.export_encoder``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from shopformer.data.batches import Batch
from shopformer.data.corpus import load_dataset
from shopformer.data.schema import PAD
from shopformer.data.sequences import Sequences
from shopformer.onnx_encoder import TOLERANCE, export_encoder
from shopformer.recommender import Recommender

BATCH_SIZES = (1, 7, 64)


def _trimmed(batch: Batch) -> Batch:
    """The batch cut to its longest real row (left padding never changes a user vector)."""
    width = max(int((batch.items != PAD).sum(1).max()), 1)
    return Batch(batch.items[:, -width:], batch.behaviours[:, -width:], batch.gaps[:, -width:],
                 batch.categories[:, -width:])


def history_batches(rec: Recommender, seq: Sequences, n_histories: int = 512, seed: int = 0) -> list[Batch]:
    """Batches of real histories (a seeded sample of users), full-width and trimmed."""
    rng = np.random.default_rng(seed)
    users = rng.permutation(seq.n_users)[:n_histories]
    encoded = []
    for u in users.tolist():
        lo, hi = int(seq.offsets[u]), int(seq.offsets[u + 1])
        times = seq.times[lo:hi].tolist() if seq.has_time else None
        encoded.append((seq.items[lo:hi].tolist(), seq.behaviours[lo:hi].tolist(), times))
    batches: list[Batch] = []
    start, sizes = 0, list(BATCH_SIZES)
    while start < len(encoded):
        size = sizes.pop(0) if sizes else BATCH_SIZES[-1]
        full = rec.make_batch(encoded[start:start + size])
        batches += [full, _trimmed(full)]
        start += size
    # histories as they look mid-session (random prefixes), and one short one alone: lengths below max_len
    cuts = [int(rng.integers(1, len(e[0]) + 1)) for e in encoded[:BATCH_SIZES[-1]]]
    prefixes = [(e[0][:n], e[1][:n], None if e[2] is None else e[2][:n]) for e, n in zip(encoded, cuts, strict=False)]
    items, behaviours, times = encoded[0]
    short = max(1, min(len(items), rec.max_len // 2))
    alone = (items[:short], behaviours[:short], None if times is None else times[:short])
    batches += [_trimmed(rec.make_batch(prefixes)), _trimmed(rec.make_batch([alone]))]
    return batches


def export_onnx(run_dir: str | Path, dataset: str | Path | None = None, n_histories: int = 512, seed: int = 0,
                tolerance: float = TOLERANCE) -> dict[str, Any]:
    """Export ``run_dir``'s encoder beside its weights; returns the record of ``encoder.onnx.json``."""
    if n_histories < 1:
        raise ValueError(f"--histories must be >= 1 (got {n_histories})")
    rec = Recommender.load(run_dir)
    path = dataset or rec.run.manifest.get("dataset_dir")
    if not path:
        raise ValueError(f"{run_dir}: the run does not record its data set; pass --dataset")
    ds = load_dataset(path)
    for name in ("items", "behaviours"):
        if getattr(ds.vocabs, name).tokens != getattr(rec.vocabs, name).tokens:
            raise ValueError(f"{ds.path}: its {name} vocabulary differs from run {run_dir}'s; use the data set the "
                             "run was trained on")
    batches = history_batches(rec, ds.seq, n_histories, seed)
    return export_encoder(rec.run, batches, tolerance, histories=min(n_histories, ds.seq.n_users))
