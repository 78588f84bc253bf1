"""The history window comes from the model that owns the position table, never from a config."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import cyclic_dataset, cyclic_sequences

from shopformer.config import Config, apply_overrides
from shopformer.data.batches import EventArrays
from shopformer.data.corpus import DataSpec
from shopformer.data.split import leave_one_out
from shopformer.evaluation.baselines import Markov
from shopformer.evaluation.behaviour import behaviour_scorer
from shopformer.evaluation.ranking import evaluate, model_scorer
from shopformer.models import build_model


@pytest.mark.parametrize("name", ["sasrec", "gru4rec", "hstu", "bert4rec"])
def test_models_know_their_window(name: str) -> None:
    cfg = apply_overrides(Config(), [f"model.name={name}", "model.dim=16", "model.max_len=7", "model.heads=1"])
    model = build_model(cfg.model, DataSpec(n_items=20, n_behaviours=2, has_time=True))
    assert model.max_len == 7


def test_evaluate_never_feeds_a_model_more_than_its_window() -> None:
    seq = cyclic_sequences(n_users=60, n_items=30)
    cfg = apply_overrides(Config(), ["model.dim=16", "model.max_len=4", "eval.bootstrap=0", "eval.exclude_seen=false"])
    torch.manual_seed(0)
    model = build_model(cfg.model, DataSpec(n_items=30, n_behaviours=2, has_time=True))
    arrays = EventArrays.from_sequences(seq, cfg.model.time_buckets)
    test = leave_one_out(seq).test
    assert model_scorer(model).max_len == 4 and behaviour_scorer(model, 0).max_len == 4
    own = evaluate(model_scorer(model), seq, arrays, test, 30, model.max_len, cfg.eval)
    longer = evaluate(model_scorer(model), seq, arrays, test, 30, 50, cfg.eval)  # e.g. model.max_len=50 in a config
    assert np.array_equal(own.ranks, longer.ranks) and own.metrics == longer.metrics
    shorter = evaluate(model_scorer(model), seq, arrays, test, 30, 2, cfg.eval)  # a shorter window is honoured
    assert not np.array_equal(own.ranks, shorter.ranks)
    # baselines carry no window of their own: they read what they are given
    markov = Markov(seq, test.pos, 30)
    assert evaluate(markov, seq, arrays, test, 30, 50, cfg.eval).metrics["n"] == own.metrics["n"]


def test_evaluate_systems_uses_the_models_window() -> None:
    from shopformer.pipelines.next_item import evaluate_systems

    ds = cyclic_dataset(n_users=60, n_items=30)
    seq = ds.seq
    cfg = apply_overrides(Config(), ["model.dim=16", "model.max_len=4", "eval.bootstrap=0", "eval.exclude_seen=false"])
    torch.manual_seed(0)
    model = build_model(cfg.model, DataSpec(n_items=30, n_behaviours=2, has_time=True))
    split = leave_one_out(seq)
    own = evaluate_systems(model, ds, split, cfg)
    wide = evaluate_systems(model, ds, split, cfg.override(model={"max_len": 50}))
    assert own == wide
