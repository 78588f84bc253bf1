"""Left-padded windows and the typed ``Batch`` every model consumes.

Sequences are right-aligned (padding on the left, most recent event last), so "the next item
after this history" is always read from the last position.

Every training loop gets its batches from ``make_train_loader`` (windows of the training
prefixes from ``cfg.model`` / ``cfg.train``; optionally only windows with a target of one
behaviour, an augmentation hook, or exact intent labels), one ``TrainLoader`` class.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields, replace

import numpy as np
import torch

from shopformer.config import Config
from shopformer.data.schema import PAD
from shopformer.data.sequences import Sequences, gap_buckets
from shopformer.data.split import EvalExamples


@dataclass(frozen=True)
class Batch:
    """One mini-batch. All tensors are (B, L) int64 and 0 at padding."""

    items: torch.Tensor
    behaviours: torch.Tensor
    gaps: torch.Tensor  # time-gap bucket of each event (1 = first event / unknown)
    categories: torch.Tensor
    # Training targets: the next event at each position (0 = no target there).
    targets: torch.Tensor | None = None
    target_behaviours: torch.Tensor | None = None

    @property
    def padding_mask(self) -> torch.Tensor:
        """(B, L) True at real events."""
        return self.items != PAD

    def to(self, device: torch.device | str) -> Batch:
        return replace(
            self,
            **{f.name: getattr(self, f.name).to(device) for f in fields(self) if getattr(self, f.name) is not None},
        )

    def __len__(self) -> int:
        return self.items.shape[0]


def gather_windows(arr: np.ndarray, ends: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
    """(W, length) slices ``arr[max(start, end - length):end]``, left-padded with 0."""
    idx = ends[:, None] - length + np.arange(length)[None, :]  # (W, length)
    valid = idx >= starts[:, None]
    out = arr[np.clip(idx, 0, max(len(arr) - 1, 0))] if len(arr) else np.zeros(idx.shape, arr.dtype)
    return np.where(valid, out, 0)


@dataclass(frozen=True)
class EventArrays:
    """Flat per-event feature arrays shared by training and evaluation batches."""

    items: np.ndarray
    behaviours: np.ndarray
    gaps: np.ndarray
    categories: np.ndarray

    @classmethod
    def from_sequences(cls, seq: Sequences, n_time_buckets: int) -> EventArrays:
        return cls(
            items=seq.items.astype(np.int64),
            behaviours=seq.behaviours.astype(np.int64),
            gaps=gap_buckets(seq, n_time_buckets),
            categories=seq.categories.astype(np.int64),
        )

    def windows(self, ends: np.ndarray, starts: np.ndarray, length: int) -> dict[str, np.ndarray]:
        return {
            name: gather_windows(getattr(self, name), ends, starts, length)
            for name in ("items", "behaviours", "gaps", "categories")
        }


def training_windows(
    seq: Sequences, train_end: np.ndarray, max_len: int, sliding: bool = True, stride: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Window (end, start) flat indices covering each user's training prefix.

    A window holds ``max_len + 1`` events: inputs are the first ``max_len``, targets the last
    ``max_len``. With ``sliding`` long histories are cut into windows ending at ``train_end,
    train_end - stride, ...`` until the oldest target is covered; ``stride`` defaults to ``max_len``
    (consecutive windows, each target once). A smaller stride overlaps them, so more targets are
    trained with a long context, at the cost of counting some targets more than once. Without
    ``sliding`` only the most recent window is used.
    """
    stride = stride or max_len
    starts = seq.offsets[:-1]
    n = np.maximum(train_end - starts, 0)
    # n - 1 targets; the newest window covers max_len of them, each further window `stride` more
    k = np.where(n >= 2, 1 + np.maximum(np.ceil((n - 1 - max_len) / stride), 0).astype(np.int64), 0)
    if not sliding:
        k = np.minimum(k, 1)
    user = np.repeat(np.arange(seq.n_users), k)
    step = np.arange(k.sum()) - np.repeat(np.cumsum(k) - k, k)  # 0..k-1 within user
    ends = train_end[user] - step * stride
    return ends.astype(np.int64), starts[user].astype(np.int64)


def target_windows(
    seq: Sequences, ends: np.ndarray, starts: np.ndarray, max_len: int, behaviour: int
) -> tuple[np.ndarray, np.ndarray]:
    """Keep the training windows with at least one target event of ``behaviour``.

    A window is events ``[max(start, end - max_len - 1), end)``; its targets are all but the first.
    """
    lo = np.maximum(starts, ends - max_len - 1)
    csum = np.concatenate([[0], np.cumsum(seq.behaviours == behaviour)])
    keep = (csum[ends] - csum[np.minimum(lo + 1, ends)]) > 0
    return ends[keep], starts[keep]


def recent_windows(seq: Sequences, ends: np.ndarray, starts: np.ndarray, since: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep the training windows whose newest target (event ``end - 1``) is at or after Unix time
    ``since``: the users active since then, each with their recent window (older events of that
    window stay in it as context and as replayed targets); users with nothing new cost nothing."""
    if not seq.has_time or len(ends) == 0:
        return ends, starts
    keep = seq.times[ends - 1] >= since
    return ends[keep], starts[keep]


# An augmentation maps the numpy windows of one batch (each (B, W), left-padded) to new ones.
Augment = Callable[[dict[str, np.ndarray], np.random.Generator], dict[str, np.ndarray]]


@dataclass(frozen=True)
class TaskBatch(Batch):
    """A training Batch plus (B, L) intent labels read from the whole training prefix (-1 unknown)."""

    intent_labels: torch.Tensor | None = None


class TrainLoader:
    """Shuffled mini-batches of training windows; one pass = one epoch.

    ``augment`` (optional) rewrites each batch's windows on the fly, before inputs and
    next-item targets are derived from them, so targets always follow the augmented order.

    ``labels`` (optional, one per flat event, e.g. ``split.intent_labels_after``) makes the
    loader yield ``TaskBatch``es whose ``intent_labels`` are read from the whole training
    prefix, so a window's last positions are labelled from the events after the window whenever
    those are training data (-1: unknown or padding). Labels follow the stored event order, so
    they cannot be combined with ``augment``.

    ``shard(rank, world)`` (multi-process training) gives each of ``world`` processes its share of
    every global batch: all ranks shuffle alike, so together they see exactly the batches of one
    process, in the same number of steps (the learning-rate schedule is unchanged).
    """

    def __init__(
        self,
        arrays: EventArrays,
        ends: np.ndarray,
        starts: np.ndarray,
        max_len: int,
        batch_size: int,
        seed: int,
        augment: Augment | None = None,
        labels: np.ndarray | None = None,
    ) -> None:
        if augment is not None and labels is not None:
            raise ValueError("intent labels follow the stored event order: they cannot be combined with augmentation")
        self.arrays, self.ends, self.starts = arrays, ends, starts
        self.max_len, self.batch_size = max_len, batch_size
        self.rng = np.random.default_rng(seed)
        self._seed = seed
        self.augment = augment
        # shifted by 2 so that window padding (0) reads as unknown (-1) once shifted back
        self.labels = None if labels is None else labels.astype(np.int64) + 2
        self.rank, self.world = 0, 1
        self.augment_rng = self.rng  # one process: one stream, as always

    def shard(self, rank: int, world: int) -> TrainLoader:
        """This loader for process ``rank`` of ``world``: same shuffling on every rank (a shared
        seed), rows ``rank::world`` of each global batch (a batch smaller than ``world`` repeats rows,
        so every rank takes the same number of steps), augmentation drawn per rank."""
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} outside a world of {world} processes")
        out = copy.copy(self)
        out.rank, out.world = rank, world
        out.rng = np.random.default_rng(self._seed)  # a fresh shared stream (the seed), same on every rank
        out.augment_rng = np.random.default_rng([self._seed, rank]) if world > 1 else out.rng
        return out

    def __len__(self) -> int:
        return (len(self.ends) + self.batch_size - 1) // self.batch_size

    @property
    def n_targets(self) -> int:
        return int(np.minimum(self.ends - self.starts - 1, self.max_len).clip(min=0).sum())

    def __iter__(self) -> Iterator[Batch]:
        # Length bucketing: shuffle, sort each chunk of ~50 batches by window length, cut it
        # into batches and shuffle the batches. Each batch is then trimmed to its longest
        # window, so short sequences (most of Beauty) do not pay for 50 positions of padding.
        for sel, width in self.batch_indices():
            if self.world > 1:
                sel = np.resize(sel, max(len(sel), self.world))[self.rank :: self.world]
            w = self.arrays.windows(self.ends[sel], self.starts[sel], width)
            if self.augment is not None:
                w = self.augment(w, self.augment_rng)
            batch = windows_to_batch(w)
            if self.labels is None:
                yield batch
                continue
            lab = gather_windows(self.labels, self.ends[sel], self.starts[sel], width)[:, :-1] - 2
            real = batch.padding_mask.numpy()
            yield TaskBatch(**vars(batch), intent_labels=torch.from_numpy(np.where(real, lab, -1)).float())

    def batch_indices(self) -> Iterator[tuple[np.ndarray, int]]:
        """One epoch of (window indices, trimmed width) in length-bucketed, shuffled order."""
        lengths = np.minimum(self.ends - self.starts, self.max_len + 1)
        order = self.rng.permutation(len(self.ends))
        chunk = self.batch_size * 50
        batches = []
        for c in range(0, len(order), chunk):
            part = order[c : c + chunk]
            part = part[np.argsort(lengths[part], kind="stable")]
            batches += [part[i : i + self.batch_size] for i in range(0, len(part), self.batch_size)]
        for b in self.rng.permutation(len(batches)):
            yield batches[b], int(lengths[batches[b]].max())


def make_train_loader(
    cfg: Config,
    seq: Sequences,
    train_end: np.ndarray,
    arrays: EventArrays | None = None,
    augment: Augment | None = None,
    labels: np.ndarray | None = None,
    target_behaviour: int | None = None,
    since: int | None = None,
) -> TrainLoader:
    """The training loader of ``cfg``: windows of each user's events before ``train_end``
    (``cfg.model.max_len``, ``cfg.train.sliding_window``), ``cfg.train.batch_size``, shuffled
    by ``cfg.train.seed``.

    ``target_behaviour`` keeps only the windows with a target of that behaviour (fine-tuning);
    ``since`` only the windows whose newest target is at or after that Unix time (a warm start
    trains on recent events: ``recent_windows``); ``augment`` and ``labels`` are passed to ``TrainLoader``.
    """
    max_len = cfg.model.max_len
    ends, starts = training_windows(seq, train_end, max_len, cfg.train.sliding_window)
    if target_behaviour is not None:
        ends, starts = target_windows(seq, ends, starts, max_len, target_behaviour)
    if since is not None:
        ends, starts = recent_windows(seq, ends, starts, since)
    arrays = arrays or EventArrays.from_sequences(seq, cfg.model.time_buckets)
    return TrainLoader(arrays, ends, starts, max_len, cfg.train.batch_size, cfg.train.seed, augment=augment,
                       labels=labels)


def windows_to_batch(w: dict[str, np.ndarray]) -> Batch:
    """(B, W) windows -> Batch of inputs (first W-1 events) and next-event targets."""
    t = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in w.items()}
    real_input = t["items"][:, :-1] != PAD
    return Batch(
        items=t["items"][:, :-1],
        behaviours=t["behaviours"][:, :-1],
        gaps=t["gaps"][:, :-1],
        categories=t["categories"][:, :-1],
        targets=t["items"][:, 1:] * real_input,
        target_behaviours=t["behaviours"][:, 1:] * real_input,
    )


def history_batches(
    seq: Sequences, arrays: EventArrays, examples: EvalExamples, max_len: int, batch_size: int,
    by_length: bool = False,
) -> Iterator[tuple[np.ndarray, Batch]]:
    """Yield (example indices, Batch of the last ``max_len`` events before each target).

    ``by_length``: examples in order of history length, each batch only as wide as its longest
    history (short histories do not pay for ``max_len`` columns of padding; models are invariant
    to left padding, tests/test_model_contract.py)."""
    starts = seq.offsets[:-1][examples.rows]
    if not by_length:
        for i in range(0, len(examples), batch_size):
            sl = slice(i, i + batch_size)
            w = arrays.windows(examples.pos[sl], starts[sl], max_len)
            t = {k: torch.from_numpy(v) for k, v in w.items()}
            yield np.arange(i, min(i + batch_size, len(examples))), Batch(**t)
        return
    lengths = np.minimum(examples.pos - starts, max_len)
    order = np.argsort(lengths, kind="stable")
    for i in range(0, len(order), batch_size):
        idx = order[i : i + batch_size]
        width = max(int(lengths[idx].max()), 1)
        w = arrays.windows(examples.pos[idx], starts[idx], width)
        yield idx, Batch(**{k: torch.from_numpy(v) for k, v in w.items()})


def seen_pairs(seq: Sequences, examples: EvalExamples, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(batch row, item) pairs of every item in the full histories of ``examples[idx]``."""
    starts = seq.offsets[:-1][examples.rows[idx]]
    ends = examples.pos[idx]
    lens = ends - starts
    row = np.repeat(np.arange(len(idx)), lens)
    flat = np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens) + np.repeat(starts, lens)
    return row, seq.items[flat].astype(np.int64)
