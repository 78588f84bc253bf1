"""Full-ranking metrics. Pure functions, unit-tested against hand-computed values.

Every example has one held-out target item. ``rank`` is 0-based: the number of other items
scored strictly higher, plus the number tied with it (ties count against the model, so a
constant scorer earns nothing from tie order).
"""

from __future__ import annotations

import numpy as np
import torch


def target_ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B, V) scores, (B,) target ids -> (B,) 0-based pessimistic rank of each target."""
    t = scores.gather(1, targets.unsqueeze(1))  # (B, 1)
    higher = (scores > t).sum(1)
    ties = (scores == t).sum(1) - 1  # other items with exactly the target's score
    rank = higher + ties
    # a target scored -inf (e.g. removed as already seen) is never a hit
    return torch.where(torch.isneginf(t.squeeze(1)), torch.full_like(rank, scores.shape[1]), rank)


def per_example(ranks: np.ndarray, ks: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Per-example metric values (their means are the reported metrics)."""
    ranks = np.asarray(ranks, dtype=np.float64)
    out: dict[str, np.ndarray] = {"mrr": 1.0 / (ranks + 1.0)}
    for k in ks:
        hit = (ranks < k).astype(np.float64)
        out[f"hr@{k}"] = hit
        out[f"recall@{k}"] = hit  # one relevant item: recall@K == hit rate
        out[f"precision@{k}"] = hit / k
        out[f"ndcg@{k}"] = np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)
    return out


def coverage(topk: np.ndarray, n_items: int) -> float:
    """Share of the catalogue (ids 1..n_items) appearing in at least one top-K list."""
    items = np.unique(topk[topk > 0])
    return float(len(items)) / max(n_items, 1)


def bootstrap_ci(
    values: np.ndarray, n_boot: int, seed: int = 0, alpha: float = 0.05, chunk: int = 100
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean, resampling examples (users) with replacement."""
    values = np.asarray(values, dtype=np.float64)
    if n_boot == 0 or len(values) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = []
    for start in range(0, n_boot, chunk):
        m = min(chunk, n_boot - start)
        idx = rng.integers(0, len(values), size=(m, len(values)))
        means.append(values[idx].mean(axis=1))
    lo, hi = np.quantile(np.concatenate(means), [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def summarise(
    ranks: np.ndarray, topk: np.ndarray, n_items: int, ks: tuple[int, ...], n_boot: int = 0, seed: int = 0
) -> dict[str, float | dict[str, list[float]]]:
    """Mean metrics, coverage@K and (optionally) bootstrap 95% CIs."""
    values = per_example(ranks, ks)
    out: dict = {name: float(v.mean()) if len(v) else 0.0 for name, v in values.items()}
    for k in ks:
        out[f"coverage@{k}"] = coverage(topk[:, :k], n_items)
    out["n"] = int(len(ranks))
    if n_boot:
        out["ci95"] = {
            name: list(bootstrap_ci(v, n_boot, seed))
            for name, v in values.items()
            if name.startswith(("hr@", "ndcg@", "mrr"))
        }
    return out
