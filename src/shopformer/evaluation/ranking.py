"""Full-ranking evaluation over the whole catalogue (never sampled negatives).

One path serves models and baselines: anything that maps a ``Batch`` of histories to
(B, n_items + 1) scores. Optionally the items already in the user's full history are
removed before ranking (the recommended protocol for Amazon Beauty; stated in every report).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from shopformer.config import EvalConfig
from shopformer.data.batches import Batch, EventArrays, history_batches, seen_pairs
from shopformer.data.sequences import Sequences
from shopformer.data.split import EvalExamples
from shopformer.evaluation.baselines import repeat_targets
from shopformer.evaluation.metrics import split_repeat_explore, summarise, target_ranks

ScoreFn = Callable[[Batch], torch.Tensor]
ManyScoreFn = Callable[[Batch], Iterator[torch.Tensor]]  # several systems' scores for one batch, in turn
SCORE_BLOCK = 1 << 25  # most scores held at once by ``evaluate`` (floats; 128 MB)


@dataclass
class EvalResult:
    metrics: dict
    ranks: np.ndarray  # (E,) 0-based rank of each target
    topk: np.ndarray  # (E, max K) recommended item ids
    is_repeat: np.ndarray  # (E,) True where the target item is already in the user's history
    top1: np.ndarray | None = None  # (E,) the score of each example's first-ranked item (score drift)


class RankingModel(Protocol):
    """What full-ranking evaluation needs of a model (a SequenceModel, or a fine-tuning wrapper)."""

    @property
    def max_len(self) -> int: ...

    def eval(self) -> object: ...

    def score_all(self, batch: Batch) -> torch.Tensor: ...


def model_scorer(model: RankingModel) -> ScoreFn:
    """Wrap a SequenceModel for evaluation (eval mode, no autograd).

    The scorer carries the model's window (``score.max_len``): ``evaluate`` never feeds it more."""

    def score(batch: Batch) -> torch.Tensor:
        model.eval()
        with torch.inference_mode():
            return model.score_all(batch).float()

    score.max_len = model.max_len  # type: ignore[attr-defined]
    return score


def keep_window(wrapper: Callable[[Batch], object], inner: Callable[[Batch], object]) -> None:
    """Give ``wrapper`` the history window of the scorer it wraps, if that one carries a window."""
    if hasattr(inner, "max_len"):
        wrapper.max_len = inner.max_len  # type: ignore[attr-defined]


def scorer_window(score_fn: Callable[[Batch], object], max_len: int) -> int:
    """The history window to feed ``score_fn``: ``max_len``, but never more than the window of the
    model behind it (a scorer made from a model carries ``max_len``); baselines take ``max_len``."""
    own = getattr(score_fn, "max_len", None)
    return max_len if own is None else min(max_len, int(own))


def evaluate(
    score_fn: ScoreFn,
    seq: Sequences,
    arrays: EventArrays,
    examples: EvalExamples,
    n_items: int,
    max_len: int,
    cfg: EvalConfig,
    bootstrap: bool = True,
) -> EvalResult:
    """Full-ranking metrics of ``score_fn`` on ``examples``, each from its last ``max_len`` events
    (capped to the model's own window when ``score_fn`` carries one, see ``scorer_window``)."""
    def one(batch: Batch) -> Iterator[torch.Tensor]:
        yield score_fn(batch)

    keep_window(one, score_fn)
    return evaluate_each(one, 1, seq, arrays, examples, n_items, max_len, cfg, bootstrap)[0]


def evaluate_each(score_many: ManyScoreFn, n_systems: int, seq: Sequences, arrays: EventArrays, examples: EvalExamples,
                  n_items: int, max_len: int, cfg: EvalConfig, bootstrap: bool = True,
                  lists: bool = True) -> list[EvalResult]:
    """``evaluate`` for ``n_systems`` scorers that share work: ``score_many`` yields each system's
    (B, V) scores for a batch in turn (e.g. a grid of blends standardising the model's and each
    baseline's scores once per batch), and each is ranked before the next is asked for.
    ``lists=False``: no top-K lists (``topk`` is (E, 0), no ``top1``, no coverage@K), for a caller that
    reads rank metrics only: a blend search ranks dozens of systems, and at 75k items finding each
    one's top K costs as much as ranking its targets."""
    max_len = scorer_window(score_many, max_len)
    examples = examples.head(cfg.max_users)
    kmax = max(cfg.ks)
    ranks = np.empty((n_systems, len(examples)), dtype=np.int64)
    topk = np.zeros((n_systems, len(examples), kmax if lists else 0), dtype=np.int64)
    top1 = np.zeros((n_systems, len(examples) if lists else 0), dtype=np.float64)
    targets_all = torch.from_numpy(seq.items[examples.pos].astype(np.int64))
    # rows per batch capped so a (rows, n_items + 1) score block stays within SCORE_BLOCK floats: at 1M
    # items 32 users at a time (128 MB) instead of eval.batch_size (2 GB, twice with the clone)
    per_block = max(1, min(cfg.batch_size, SCORE_BLOCK // (n_items + 1)))
    for idx, batch in history_batches(seq, arrays, examples, max_len, per_block, by_length=True):
        seen = seen_pairs(seq, examples, idx) if cfg.exclude_seen else None
        targets = targets_all[idx]
        n = 0
        for s, yielded in enumerate(score_many(batch)):
            if s >= n_systems:
                raise ValueError(f"the scorer yielded more score blocks than its {n_systems} systems")
            scores = yielded  # (B, V); masked in a copy: a scorer may yield one tensor for several systems
            if seen is not None:
                scores = scores.clone()
                scores[torch.from_numpy(seen[0]), torch.from_numpy(seen[1])] = float("-inf")
            ranks[s, idx] = target_ranks(scores, targets).numpy()
            if lists:
                k_top = min(kmax, scores.shape[1])  # a catalogue smaller than the largest K: the rest stays 0
                best = scores.topk(k_top, dim=1)
                topk[s, idx, :k_top] = best.indices.numpy()
                top1[s, idx] = best.values[:, 0].double().numpy()
            n += 1
        if n != n_systems:
            raise ValueError(f"the scorer yielded {n} score blocks for {n_systems} systems")
    n_boot = cfg.bootstrap if bootstrap else 0
    # Repeat targets (the item is already in the user's full history) and explore targets (new to
    # the user) measured apart: shop logs are full of repeats, which heuristics get right for free.
    is_repeat = repeat_targets(seq, examples)
    out: list[EvalResult] = []
    for s in range(n_systems):
        metrics = summarise(ranks[s], topk[s] if lists else None, n_items, cfg.ks, n_boot)
        metrics["exclude_seen"] = cfg.exclude_seen
        parts = split_repeat_explore(ranks[s], is_repeat, cfg.ks, n_boot)
        metrics["repeat"], metrics["explore"] = parts["repeat"], parts["explore"]
        out.append(EvalResult(metrics, ranks[s], topk[s], is_repeat, top1[s] if lists else None))
    return out
