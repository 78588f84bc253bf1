"""Full-ranking evaluation over the whole catalogue (never sampled negatives).

One path serves models and baselines: anything that maps a ``Batch`` of histories to
(B, n_items + 1) scores. Optionally the items already in the user's full history are
removed before ranking (the recommended protocol for Amazon Beauty; stated in every report).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from shopformer.config import EvalConfig
from shopformer.data.batches import Batch, EventArrays, history_batches, seen_pairs
from shopformer.data.sequences import Sequences
from shopformer.data.split import EvalExamples
from shopformer.evaluation.metrics import summarise, target_ranks

ScoreFn = Callable[[Batch], torch.Tensor]


@dataclass
class EvalResult:
    metrics: dict
    ranks: np.ndarray  # (E,) 0-based rank of each target
    topk: np.ndarray  # (E, max K) recommended item ids


def model_scorer(model: torch.nn.Module) -> ScoreFn:
    """Wrap a SequenceModel for evaluation (eval mode, no autograd)."""

    def score(batch: Batch) -> torch.Tensor:
        model.eval()
        with torch.inference_mode():
            return model.score_all(batch).float()

    return score


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
    examples = examples.head(cfg.max_users)
    kmax = max(cfg.ks)
    ranks = np.empty(len(examples), dtype=np.int64)
    topk = np.zeros((len(examples), kmax), dtype=np.int64)
    targets_all = torch.from_numpy(seq.items[examples.pos].astype(np.int64))
    for idx, batch in history_batches(seq, arrays, examples, max_len, cfg.batch_size):
        scores = score_fn(batch).clone()  # (B, V)
        if cfg.exclude_seen:
            rows, items = seen_pairs(seq, examples, idx)
            scores[torch.from_numpy(rows), torch.from_numpy(items)] = float("-inf")
        targets = targets_all[idx]
        ranks[idx] = target_ranks(scores, targets).numpy()
        topk[idx] = scores.topk(kmax, dim=1).indices.numpy()
    metrics = summarise(ranks, topk, n_items, cfg.ks, cfg.bootstrap if bootstrap else 0)
    metrics["exclude_seen"] = cfg.exclude_seen
    return EvalResult(metrics, ranks, topk)
