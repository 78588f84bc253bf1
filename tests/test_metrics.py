import math

import numpy as np
import pytest
import torch

from shopformer.evaluation.metrics import bootstrap_ci, coverage, per_example, summarise, target_ranks


def test_target_ranks_hand_computed() -> None:
    scores = torch.tensor([[float("-inf"), 0.9, 0.5, 0.7, 0.1],
                           [float("-inf"), 0.2, 0.2, 0.9, 0.2],
                           [float("-inf"), 0.3, float("-inf"), 0.1, 0.0]])
    targets = torch.tensor([3, 2, 2])
    # row 0: only 0.9 beats 0.7 -> rank 1; row 1: 0.9 higher, two ties -> pessimistic rank 3;
    # row 2: target removed (-inf) -> never a hit
    assert target_ranks(scores, targets).tolist() == [1, 3, 5]


def test_per_example_hand_computed() -> None:
    ranks = np.array([0, 1, 4, 10])
    m = per_example(ranks, (1, 5))
    assert m["hr@1"].tolist() == [1, 0, 0, 0]
    assert m["hr@5"].tolist() == [1, 1, 1, 0]
    assert m["ndcg@5"].tolist() == pytest.approx([1.0, 1 / math.log2(3), 1 / math.log2(6), 0.0])
    assert m["mrr"].tolist() == pytest.approx([1.0, 0.5, 0.2, 1 / 11])
    assert m["precision@5"].tolist() == pytest.approx([0.2, 0.2, 0.2, 0.0])
    assert m["recall@5"].tolist() == m["hr@5"].tolist()


def test_coverage_counts_distinct_real_items() -> None:
    topk = np.array([[1, 2], [2, 3], [0, 3]])
    assert coverage(topk, n_items=10) == pytest.approx(0.3)


def test_bootstrap_ci_contains_mean_and_narrows_with_n() -> None:
    rng = np.random.default_rng(0)
    small = rng.binomial(1, 0.3, 100).astype(float)
    large = rng.binomial(1, 0.3, 10_000).astype(float)
    lo_s, hi_s = bootstrap_ci(small, 500)
    lo_l, hi_l = bootstrap_ci(large, 500)
    assert lo_s <= small.mean() <= hi_s and lo_l <= large.mean() <= hi_l
    assert hi_l - lo_l < (hi_s - lo_s) / 3


def test_summarise_means() -> None:
    out = summarise(np.array([0, 2]), np.array([[1, 2], [3, 4]]), n_items=4, ks=(1, 3), n_boot=0)
    assert out["hr@1"] == 0.5 and out["hr@3"] == 1.0
    assert out["ndcg@3"] == pytest.approx((1 + 0.5) / 2)
    assert out["coverage@1"] == pytest.approx(0.5)
    assert out["n"] == 2


def test_one_registry_of_metric_names_feeds_summaries_cis_and_tables(monkeypatch) -> None:
    """A metric added to RANKING_METRICS appears in summarise (with its CI) and in the report table,
    with no other list to update."""
    from shopformer.evaluation import metrics as M
    from shopformer.evaluation.report import markdown_table

    extra = M.RankingMetric("hit_top1", lambda r, k: (r < 1).astype(np.float64), at_k=False)
    monkeypatch.setattr(M, "RANKING_METRICS", (*M.RANKING_METRICS, extra))
    ranks = np.array([0, 3, 20])
    out = M.summarise(ranks, np.zeros((3, 10), np.int64), 50, (10,), n_boot=20)
    assert out["hit_top1"] == pytest.approx(1 / 3) and "hit_top1" in out["ci95"]
    assert M.metric_keys((5, 10), table=True) == ["hr@5", "hr@10", "ndcg@5", "ndcg@10", "mrr", "hit_top1"]
    assert "HIT_TOP1" in markdown_table({"m": out}, (10,)).splitlines()[0]
    assert "recall@10" not in M.metric_keys((10,), table=True) and "recall@10" in out


def test_a_catalogue_smaller_than_the_largest_k_is_ranked_not_refused() -> None:
    """Five items, K up to 20: every K >= 5 is a hit and coverage counts the five real items."""
    from shopformer.config import EvalConfig
    from shopformer.data.batches import EventArrays
    from shopformer.data.sequences import Sequences
    from shopformer.data.split import EvalExamples
    from shopformer.evaluation.ranking import evaluate

    seq = Sequences.from_lists([[1, 2, 3, 4, 5]] * 3, [[1] * 5] * 3, [[0, 1, 2, 3, 4]] * 3)
    ex = EvalExamples(np.arange(3), np.array([4, 9, 14]))
    res = evaluate(lambda b: torch.randn(len(b.items), 6), seq, EventArrays.from_sequences(seq, 8), ex, 5, 4,
                   EvalConfig(ks=(5, 10, 20), exclude_seen=False, bootstrap=0))
    assert res.metrics["hr@10"] == res.metrics["hr@20"] == 1.0 and res.metrics["coverage@20"] <= 1.0
