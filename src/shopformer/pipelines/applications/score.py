"""Batch scoring for CRM and e-mail tools: for every user (or a list), the top-k items, the
next-action probabilities, the purchase intent and optionally churn, streamed to Parquet.

Users go through the model in batches of similar history length (``snapshot.model_batches``):
one forward pass per batch, top-k and id decoding as array operations, one Parquet row group per
batch; no Python loop over users in the hot path. Scores are the run's served scores (its blend
with a baseline when it has one), ranked for the run's default behaviour unless told otherwise.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from shopformer.artifacts import Run
from shopformer.data.batches import EventArrays
from shopformer.data.corpus import Dataset
from shopformer.data.schema import PAD
from shopformer.data.sequences import Sequences
from shopformer.pipelines.applications.export import ParquetStream
from shopformer.pipelines.applications.snapshot import (
    Snapshot,
    check_compatible,
    head_outputs,
    model_batches,
    snapshot,
)


def select_users(ds: Dataset, users: str | Path) -> np.ndarray | None:
    """None for ``"all"``; else the user rows listed in a text file (one raw user id a line)."""
    if str(users) == "all":
        return None
    path = Path(users)
    if not path.exists():
        raise FileNotFoundError(f"--users: {path} is neither 'all' nor a file of user ids")
    index = ds.vocabs.users.index
    dense = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        raw = line.strip()
        if not raw:
            continue
        if raw not in index:
            raise ValueError(f"{path}:{n}: unknown user id {raw!r}")
        dense.append(index[raw])
    row_of = np.full(len(ds.vocabs.users) + 1, -1, np.int64)
    row_of[ds.seq.users] = np.arange(ds.seq.n_users)
    rows = row_of[np.asarray(dense, np.int64)]
    if (rows < 0).any():
        raise ValueError(f"{path}: {int((rows < 0).sum())} user(s) have no events in {ds.path}")
    return np.unique(rows)


def seen_mask(seq: Sequences, snap: Snapshot, sel: np.ndarray, n_cols: int) -> torch.Tensor:
    """(len(sel), n_cols) True where the user already had the item (anywhere in the history)."""
    starts, ends = seq.offsets[:-1][snap.rows[sel]], snap.ends[sel]
    lens = ends - starts
    row = np.repeat(np.arange(len(sel)), lens)
    flat = np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens) + np.repeat(starts, lens)
    mask = torch.zeros(len(sel), n_cols, dtype=torch.bool)
    mask[torch.from_numpy(row), torch.from_numpy(seq.items[flat].astype(np.int64))] = True
    return mask


@dataclass
class ScoreSummary:
    rows: int
    seconds: float
    users_per_second: float
    columns: list[str]


def score_users(run: Run, ds: Dataset, out: Path, k: int = 10, users: str | Path = "all",
                exclude_seen: bool = False, behaviour: str | None = None, batch_size: int = 256,
                churn: np.ndarray | None = None) -> ScoreSummary:
    """Write one row per user to ``out`` (.parquet): user_id, items, scores, p_next_<behaviour>...,
    intent, and ``churn`` (aligned with the users scored at the end of the data) when given."""
    check_compatible(run, ds)
    if k < 1:
        raise ValueError(f"-k must be >= 1 (got {k})")
    t0 = time.perf_counter()
    model = run.model.eval()
    beh = None if behaviour is None else ds.behaviour_id(behaviour)
    if beh is not None and model.heads is None:
        raise ValueError(f"--behaviour {behaviour!r}: run {run.version} has no behaviour-specific head")
    snap = snapshot(ds.seq, int(ds.seq.times.max()))
    chosen = select_users(ds, users)
    if chosen is not None:
        keep = np.isin(snap.rows, chosen)
        snap = Snapshot(snap.t, snap.rows[keep], snap.ends[keep])
        churn = None if churn is None else churn[keep]
    tokens = np.asarray(run.vocabs.items.tokens, dtype=object)
    user_tokens = np.asarray(ds.vocabs.users.tokens, dtype=object)
    names = list(ds.vocabs.behaviours.tokens[1:])
    k = min(k, ds.spec.n_items)
    arrays = EventArrays.from_sequences(ds.seq, run.config.model.time_buckets)
    fields = [("user_id", pa.string()), ("items", pa.list_(pa.string())), ("scores", pa.list_(pa.float32()))]
    heads = model.heads
    has_action = heads is not None and "action" in heads.parts
    has_intent = heads is not None and "intent" in heads.parts
    fields += [(f"p_next_{n}", pa.float32()) for n in names] if has_action else []
    fields += [("intent", pa.float32())] if has_intent else []
    fields += [("churn_probability", pa.float32())] if churn is not None else []
    schema = pa.schema(fields)
    with ParquetStream(out, schema) as stream, torch.inference_mode():
        for sel, batch in model_batches(ds.seq, arrays, snap, model.max_len, batch_size):
            hidden = model.encode(batch) if model.heads is not None else None  # once for scores and heads
            scores = model.score_all(batch, beh, hidden).float()
            if run.blend is not None:
                scores = run.blend.combine(scores, batch)
            if exclude_seen:
                scores = scores.masked_fill(seen_mask(ds.seq, snap, sel, scores.shape[1]), float("-inf"))
            scores[:, PAD] = float("-inf")
            top = scores.topk(k, dim=1)
            vals, ids = top.values.numpy(), top.indices.numpy()
            ok = np.isfinite(vals)  # an item left out (seen, or scored -inf) is never listed
            offsets = pa.array(np.concatenate([[0], np.cumsum(ok.sum(1))]).astype(np.int32))
            cols: dict[str, pa.Array] = {
                "user_id": pa.array(user_tokens[ds.seq.users[snap.rows[sel]]].tolist(), pa.string()),
                "items": pa.ListArray.from_arrays(offsets, pa.array(tokens[ids[ok]].tolist(), pa.string())),
                "scores": pa.ListArray.from_arrays(offsets, pa.array(vals[ok], pa.float32())),
            }
            action, intent = head_outputs(model, batch, hidden)
            if action is not None:
                cols.update({f"p_next_{n}": pa.array(action[:, i], pa.float32()) for i, n in enumerate(names)})
            if intent is not None:
                cols["intent"] = pa.array(intent, pa.float32())
            if churn is not None:
                cols["churn_probability"] = pa.array(churn[sel].astype(np.float32), pa.float32())
            stream.write(cols)
    seconds = time.perf_counter() - t0
    return ScoreSummary(stream.rows, seconds, stream.rows / max(seconds, 1e-9), [f[0] for f in fields])
