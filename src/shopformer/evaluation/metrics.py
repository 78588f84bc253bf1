"""Full-ranking metrics. Pure functions, unit-tested against hand-computed values.

Every example has one held-out target item. ``rank`` is 0-based: the number of other items
scored strictly higher, plus the number tied with it (ties count against the model, so a
constant scorer earns nothing from tie order).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch


def target_ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B, V) scores, (B,) target ids -> (B,) 0-based pessimistic rank of each target."""
    t = scores.gather(1, targets.unsqueeze(1))  # (B, 1)
    # items scored higher + other items with exactly the target's score, in one pass over the row
    rank = (scores >= t).sum(1) - 1
    # a target scored -inf (e.g. removed as already seen) is never a hit
    return torch.where(torch.isneginf(t.squeeze(1)), torch.full_like(rank, scores.shape[1]), rank)


@dataclass(frozen=True)
class RankingMetric:
    """One full-ranking metric, defined by its per-example value given the 0-based target rank.

    The registry below is the only list of metric names: evaluation, report tables, CIs, the
    multi-behaviour tables and the benchmarks all read it. Adding a metric is one entry here.
    """

    name: str  # key prefix: "ndcg" -> "ndcg@10"; a metric without K is reported under its name
    value: Callable[[np.ndarray, int], np.ndarray]  # (ranks, K) -> per-example values
    at_k: bool = True
    ci: bool = True  # bootstrap 95% CI reported
    table: bool = True  # a column of the report tables


RANKING_METRICS: tuple[RankingMetric, ...] = (
    RankingMetric("hr", lambda r, k: (r < k).astype(np.float64)),
    RankingMetric("ndcg", lambda r, k: np.where(r < k, 1.0 / np.log2(r + 2.0), 0.0)),
    RankingMetric("mrr", lambda r, k: 1.0 / (r + 1.0), at_k=False),
    # One relevant item per example: recall@K equals HR@K and precision@K is HR@K / K.
    RankingMetric("recall", lambda r, k: (r < k).astype(np.float64), ci=False, table=False),
    RankingMetric("precision", lambda r, k: (r < k) / k, ci=False, table=False),
)
COVERAGE = "coverage"  # share of the catalogue in any top-K list (a property of all lists, not per example)


def needs_lists(metric: str) -> bool:
    """Whether ``metric`` is read from the top-K lists (coverage@K) rather than from the targets' ranks."""
    return metric.startswith(COVERAGE)


def metric_keys(ks: tuple[int, ...], *, table: bool = False, ci: bool = False) -> list[str]:
    """Metric names in report order (each @K metric over ``ks``, then those without K);
    ``table`` / ``ci`` keep only the metrics shown in tables / reported with a CI."""
    chosen = [m for m in RANKING_METRICS if (m.table or not table) and (m.ci or not ci)]
    return [f"{m.name}@{k}" for m in chosen if m.at_k for k in ks] + [m.name for m in chosen if not m.at_k]


def per_example(ranks: np.ndarray, ks: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Per-example metric values (their means are the reported metrics)."""
    ranks = np.asarray(ranks, dtype=np.float64)
    out: dict[str, np.ndarray] = {}
    for m in RANKING_METRICS:
        for k in ks if m.at_k else (0,):
            out[f"{m.name}@{k}" if m.at_k else m.name] = m.value(ranks, k)
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
    ranks: np.ndarray, topk: np.ndarray | None, n_items: int, ks: tuple[int, ...], n_boot: int = 0, seed: int = 0
) -> dict[str, float | dict[str, list[float]]]:
    """Mean metrics, coverage@K (not without ``topk``) and (optionally) bootstrap 95% CIs."""
    values = per_example(ranks, ks)
    out: dict = {name: float(v.mean()) if len(v) else 0.0 for name, v in values.items()}
    if topk is not None:
        for k in ks:
            out[f"{COVERAGE}@{k}"] = coverage(topk[:, :k], n_items)
    out["n"] = int(len(ranks))
    if n_boot:
        out["ci95"] = {name: list(bootstrap_ci(values[name], n_boot, seed)) for name in metric_keys(ks, ci=True)}
    return out


def repeat_mask(history_rows: np.ndarray, history_items: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """(E,) True where example e's target item is among its history items (a *repeat* target;
    otherwise an *explore* target, as in Li et al. 2023, "A Next Basket Recommendation Reality Check").

    ``history_rows`` / ``history_items`` are flat (H,) arrays: history event h of example
    ``history_rows[h]`` is on item ``history_items[h]``. Vectorised: one membership test on keys."""
    targets = np.asarray(targets, dtype=np.int64)
    rows = np.asarray(history_rows, dtype=np.int64)
    items = np.asarray(history_items, dtype=np.int64)
    if len(targets) == 0:
        return np.zeros(0, dtype=bool)
    width = int(max(targets.max(initial=0), items.max(initial=0))) + 1
    hist_keys = rows * width + items
    target_keys = np.arange(len(targets), dtype=np.int64) * width + targets
    return np.isin(target_keys, hist_keys)


def split_repeat_explore(
    ranks: np.ndarray, is_repeat: np.ndarray, ks: tuple[int, ...], n_boot: int = 0, seed: int = 0
) -> dict[str, dict]:
    """Every registry metric overall and separately on repeat and explore targets.

    Returns ``{"overall": ..., "repeat": ..., "explore": ...}``; each part holds the mean of each
    ``per_example`` metric, ``"n"`` (its examples), ``"share"`` (n / all examples; repeat + explore
    = 1) and, when ``n_boot`` > 0, ``"ci95"`` for the metrics reported with a CI (as ``summarise``).
    A part without examples reports means of 0.0 (as ``summarise``) and its n of 0 says so."""
    ranks = np.asarray(ranks)
    rep = np.asarray(is_repeat, dtype=bool)
    if rep.shape != ranks.shape:
        raise ValueError(f"is_repeat has shape {rep.shape}, ranks {ranks.shape}")
    values = per_example(ranks, ks)
    total = len(ranks)
    out: dict[str, dict] = {}
    for part, mask in (("overall", np.ones(total, dtype=bool)), ("repeat", rep), ("explore", ~rep)):
        n = int(mask.sum())
        d: dict = {name: float(v[mask].mean()) if n else 0.0 for name, v in values.items()}
        d["n"] = n
        d["share"] = n / total if total else 0.0
        if n_boot:
            d["ci95"] = {
                name: list(bootstrap_ci(values[name][mask], n_boot, seed)) for name in metric_keys(ks, ci=True)
            }
        out[part] = d
    return out
