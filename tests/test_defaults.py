"""The default configuration's data-derived rule (pipelines/defaults.py, docs/defaults.md)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from shopformer.cli.app import app
from shopformer.config import Config, load_config
from shopformer.data.sequences import Sequences
from shopformer.pipelines.defaults import (
    DEFAULT_CONFIG,
    adapt_config,
    data_stats,
    derive,
    dropout_for,
    epochs_for,
    explicit_keys,
    max_len_for,
)


def seqs(histories: list[list[int]]) -> tuple[Sequences, np.ndarray]:
    """Sequences and leave-one-out training ends (the last two events of each user held out)."""
    seq = Sequences.from_lists(histories, [[1] * len(h) for h in histories],
                               [[1_600_000_000 + 60 * i for i in range(len(h))] for h in histories])
    return seq, seq.offsets[1:] - 2


def test_dropout_follows_published_sasrec_choices() -> None:
    assert dropout_for(4) == 0.5  # Amazon Beauty (median 4 training events per user)
    assert dropout_for(11) == 0.45  # Steam-like
    assert dropout_for(96) == 0.2  # MovieLens-1M
    assert dropout_for(16) == 0.4
    values = [dropout_for(s) for s in (1, 2, 8, 16, 32, 64, 128, 10_000)]
    assert values == sorted(values, reverse=True) and min(values) == 0.2 and max(values) == 0.5


def test_max_len_and_epochs_rules() -> None:
    assert max_len_for(19) == 40 and max_len_for(3) == 20 and max_len_for(500) == 200
    assert epochs_for(175) == (69, 12)  # Beauty at batch 128
    assert epochs_for(10_000) == (20, 5)  # a large log: the floor
    assert epochs_for(1) == (200, 20)  # a tiny one: the ceiling


def test_stats_read_training_events_only() -> None:
    # user 0: a repeat only in its held-out tail; user 1: one repeat in training (item 5 again)
    seq, train_end = seqs([[1, 2, 3, 1, 1], [5, 6, 5, 7, 8, 9]])
    s = data_stats(seq, train_end, n_items=10)
    assert s.train_events == 3 + 4 and s.users == 2
    assert s.repeat_share == pytest.approx(1 / (7 - 2))  # one repeat among the 5 next-events
    assert s.median_len == 3.5 and s.events_per_item == pytest.approx(0.7)
    assert s.sparsity == pytest.approx(0.7)


def test_adapt_sets_rule_values_and_keeps_explicit_keys() -> None:
    seq, train_end = seqs([[i % 9 + 1, (i + 3) % 9 + 1, (i + 5) % 9 + 1, 4, 6] for i in range(30)])
    cfg, stats, applied = adapt_config(Config(), seq, train_end, 9, keep={"model.dropout"})
    assert "model.dropout" not in applied and cfg.model.dropout == Config().model.dropout
    assert cfg.model.emb_dropout == applied["model.emb_dropout"] == dropout_for(stats.sparsity)
    assert cfg.model.max_len == 20 and cfg.train.epochs == 200 and cfg.loss.kind == "ce"
    assert cfg.eval.exclude_seen is True  # no repeats in these histories
    assert cfg.model.freq_mix == applied["model.freq_mix"] == 0.4  # BSARec's filter on a log without repeats
    assert cfg.text.neighbours == applied["text.neighbours"] == 1024  # each item's neighbours as attributes
    multi, _, applied = adapt_config(Config().override(task={"kind": "multi"}), seq, train_end, 9)
    assert multi.text.neighbours == 0, "side vectors are next-item only"
    assert multi.model.freq_mix == 0.0, "the filter was measured on next-item SASRec only"
    gru, _, _ = adapt_config(Config().override(model={"name": "gru4rec"}), seq, train_end, 9, keep={"model.name"})
    assert gru.model.freq_mix == 0.0
    mine, _, applied = adapt_config(Config().override(model={"freq_mix": 0.7}), seq, train_end, 9,
                                    keep={"model.freq_mix"})
    assert mine.model.freq_mix == 0.7 and "model.freq_mix" not in applied, "an explicit --set is kept"
    for side in ({"attributes": "attrs.json"}, {"titles": "titles.tsv"}):
        given, _, _ = adapt_config(Config().override(text=side), seq, train_end, 9)
        assert given.text.neighbours == 0, f"{side}: a catalogue is given, neighbours do not stand in for it"
    both, _, _ = adapt_config(Config().override(text={"attributes": "a.json", "neighbours": 64}), seq, train_end, 9,
                              keep={"text.neighbours", "text.attributes"})
    assert both.text.neighbours == 64, "an explicit text.neighbours is kept"
    assert cfg.train.blend is True and applied["train.blend"] is True  # served: the validation-chosen blend
    refit, _, applied = adapt_config(Config().override(train={"refit": True}), seq, train_end, 9, keep={"train.refit"})
    assert refit.train.refit and not refit.train.blend  # refit trains on the validation targets: no blend there


def test_repeats_keep_seen_items_and_huge_catalogues_sample() -> None:
    seq, train_end = seqs([[1, 2, 1, 2, 1, 3, 4] for _ in range(20)])
    stats = data_stats(seq, train_end, 4)
    assert stats.repeat_share > 0.5
    out = derive(stats, Config(), seq, train_end)
    assert out["eval"]["exclude_seen"] is False and out["loss"]["kind"] == "ce"
    assert out["model"]["freq_mix"] == 0.0, "repeats: no frequency filter"
    assert out["text"]["neighbours"] == 1024
    big = derive(replace(stats, items=2_000_000), Config(), seq, train_end)
    assert big["loss"] == {"kind": "sampled", "negatives": 1024, "sampler": "popularity", "logq_correction": True}
    assert big["text"]["neighbours"] == 0, "a huge catalogue: no items x 1,024 side rows"


def test_explicit_keys_reads_overrides_and_options() -> None:
    keys = explicit_keys(["model.dropout=0.1", "train.epochs=3"], {"train.threads": 2, "model.name": None})
    assert keys == {"model.dropout", "train.epochs", "train.threads"}


def test_default_toml_is_the_documented_fixed_part() -> None:
    cfg = load_config(DEFAULT_CONFIG)
    assert (cfg.model.name, cfg.model.dim, cfg.model.layers, cfg.train.batch_size) == ("sasrec", 64, 2, 128)
    assert cfg.train.schedule == "cosine" and not cfg.train.refit
    assert (cfg.model.norm, cfg.model.init_std) == ("ligr", 0.02)


TINY = ["--set", "model.dim=16", "--set", "model.layers=1", "--set", "train.epochs=1", "--set", "eval.bootstrap=0"]


def test_train_without_config_uses_default_and_rule(shop_log: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOPFORMER_THREADS", "1")
    r = CliRunner().invoke(app, ["train", str(shop_log), "-o", str(tmp_path / "run"), *TINY])
    assert r.exit_code == 0, r.output
    assert "data-derived defaults" in r.output and "threads: 1 (SHOPFORMER_THREADS)" in r.output
    saved = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    cfg = saved.get("config", saved)
    assert cfg["train"]["batch_size"] == 128 and cfg["train"]["learning_rate"] == 0.002  # configs/default.toml
    assert cfg["model"]["dim"] == 16 and cfg["train"]["epochs"] == 1  # explicit --set kept
    assert cfg["eval"]["exclude_seen"] is False  # the shop log repeats items: seen items stay rankable
    assert cfg["train"]["threads"] == 1
    assert cfg["train"]["blend"] is True  # the rule's validation-chosen blend (docs/defaults.md)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert "grid" in metrics["blend"]  # the blend grid was searched on validation and reported


def test_train_with_config_skips_the_rule(shop_log: Path, tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["train", str(shop_log), "-o", str(tmp_path / "run"), "--config",
                                 str(DEFAULT_CONFIG), "--threads", "1", *TINY])
    assert r.exit_code == 0, r.output
    assert "data-derived defaults" not in r.output and "threads: 1 (train.threads)" in r.output
    saved = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    cfg = saved.get("config", saved)
    assert cfg["model"]["dropout"] == 0.3 and cfg["eval"]["exclude_seen"] is True  # the file, as is
