"""The opt-in blend with the best baseline: comparable scales, saved state, chosen on validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import blend_row

from shopformer.data.batches import Batch
from shopformer.data.sequences import Sequences
from shopformer.evaluation.baselines import (
    CategoryPopularity,
    CoOccurrence,
    Markov,
    Popularity,
    RecentItems,
    WeightedRecentItems,
)
from shopformer.evaluation.blend import ALPHAS, Blend, choose_blend, standardise


def _seq() -> Sequences:
    return Sequences.from_lists([[1, 2, 3, 1], [2, 3, 4], [4, 1, 2]], [[1, 2, 1, 1], [1, 1, 2], [2, 1, 1]], None)


def _batch() -> Batch:
    items = torch.tensor([[0, 1, 2], [2, 3, 4]])
    beh = torch.tensor([[0, 1, 2], [1, 1, 2]])
    zeros = torch.zeros_like(items)
    return Batch(items, beh, zeros, torch.tensor([[0, 1, 2], [2, 2, 1]]))  # categories of items 1-4: 1, 2, 2, 1


def test_standardise_rows_and_keeps_minus_inf() -> None:
    s = torch.tensor([[float("-inf"), 1.0, 2.0, 3.0], [float("-inf"), 5.0, 5.0, 8.0]])
    z = standardise(s)
    assert torch.isneginf(z[:, 0]).all()
    assert torch.allclose(z[:, 1:].mean(1), torch.zeros(2), atol=1e-6)
    assert torch.allclose(z[:, 1:].std(1, unbiased=False), torch.ones(2), atol=1e-5)
    assert torch.equal(z[0, 1:].argsort(), s[0, 1:].argsort())  # order within a row unchanged


def test_standardise_equals_the_plain_formula_bit_for_bit() -> None:
    """The in-place version must give the very floats of the plain masked formula (the blends chosen on
    saved runs depend on them), whatever is non-finite: -inf, +inf, nan, whole rows, constant rows."""
    torch.manual_seed(0)
    s = torch.randn(6, 50) * 3 + 1
    s[:, 0] = float("-inf")
    s[1, 5:20] = float("-inf")
    s[2, 7], s[2, 9] = float("inf"), float("nan")
    s[3] = float("-inf")
    s[4, 1:] = 2.5
    s[5] = s[5].double().float()
    finite = torch.isfinite(s)
    x = torch.where(finite, s, torch.zeros_like(s))
    n = finite.sum(1, keepdim=True).clamp(min=1)
    mean = x.sum(1, keepdim=True) / n
    var = (torch.where(finite, x - mean, torch.zeros_like(x)) ** 2).sum(1, keepdim=True) / n
    plain = torch.where(finite, (x - mean) / var.sqrt().clamp(min=1e-12), torch.tensor(float("-inf")))
    z = standardise(s)
    assert torch.equal(z, plain)
    assert torch.isfinite(s[0, 1:]).all() and s[2, 7] == float("inf"), "the input is left as it was"
    assert torch.equal(standardise(s.double()), plain), "float64 scores are standardised in float32"


@pytest.mark.parametrize("name", ["popularity", "markov", "recent items", "weighted recent items", "co-occurrence",
                                  "category popularity"])
def test_a_saved_blend_scores_exactly_like_the_fitted_one(name: str) -> None:
    seq, end = _seq(), np.array([4, 7, 10])
    fitted = {"popularity": Popularity(np.array([0, 3, 2, 2, 1])), "markov": Markov(seq, end, 4),
              "recent items": RecentItems(np.array([False, True, True]), np.array([0, 3, 2, 2, 1])),
              "weighted recent items": WeightedRecentItems.fit(seq, end, 4, 2),
              "co-occurrence": CoOccurrence(seq, end, 4, last=2, decay=0.5),
              "category popularity": CategoryPopularity(np.array([0, 1, 2, 2, 1]), np.array([0, 3, 2, 2, 1]),
                                                        decay=0.7)}[name]
    blend = Blend.of(name, fitted, 0.4)
    again = Blend.from_state([name], blend.state())
    model = torch.randn(2, 5)
    model[:, 0] = float("-inf")
    assert torch.equal(blend.combine(model, _batch()), again.combine(model, _batch()))
    assert not torch.equal(blend.combine(model, _batch()), model), "the baseline takes part"
    assert again.alpha == 0.4 and again.counts == "training" and again.own_rows() == {}
    if name == "category popularity":  # a state that does not fit together is refused at load, not at serving
        bad = {**blend.state(), "baseline.0.n_categories": torch.tensor(2)}
        with pytest.raises(ValueError, match="does not fit together"):
            Blend.from_state([name], bad)
    through = Blend.from_state([name], blend.state(), counts="validation")  # what the run's manifest says
    assert through.counts == "validation" and list(through.own_rows()) == [f"{name} (through validation)"]
    with pytest.raises(ValueError, match="unknown blend counts"):
        Blend.from_state([name], blend.state(), counts="test")


def test_a_pair_saves_and_a_run_saved_with_one_baseline_before_pairs_still_loads() -> None:
    seq, end = _seq(), np.array([4, 7, 10])
    markov, cooc = Markov(seq, end, 4), CoOccurrence(seq, end, 4)
    pair = Blend({"markov": markov, "co-occurrence": cooc}, {"markov": 0.03, "co-occurrence": 0.05})
    model = torch.randn(2, 5)
    model[:, 0] = float("-inf")
    expected = 0.92 * standardise(model) + 0.03 * standardise(markov(_batch())) + 0.05 * standardise(cooc(_batch()))
    assert torch.allclose(pair.combine(model, _batch()), expected, atol=1e-6)
    again = Blend.from_state(["markov", "co-occurrence"], pair.state(), counts="validation")
    assert torch.equal(pair.combine(model, _batch()), again.combine(model, _batch()))
    assert again.weights == {"markov": 0.03, "co-occurrence": 0.05} and again.alpha == 0.08
    assert pair.row("sasrec") == "sasrec + markov + co-occurrence (blend, weights 0.03 / 0.05)"
    assert set(again.own_rows()) == {"markov (through validation)", "co-occurrence (through validation)"}
    # the stop 29-39 layout: one baseline, its weight under "alpha", its state under "baseline.<key>"
    legacy = {"alpha": torch.tensor(0.3, dtype=torch.float64),
              **{f"baseline.{k}": v for k, v in markov.state().items()}}
    old = Blend.from_state(["markov"], legacy)
    assert old.weights == {"markov": 0.3}
    assert torch.equal(old.combine(model, _batch()), Blend.of("markov", markov, 0.3).combine(model, _batch()))
    with pytest.raises(ValueError, match="unknown blend baseline"):
        Blend.from_state(["bestsellers"], legacy)


def _model(batch: Batch) -> torch.Tensor:
    out = torch.randn(len(batch), 5, generator=torch.Generator().manual_seed(0))
    out[:, 0] = float("-inf")
    return out


def _validate(measure) -> object:
    """choose_blend's validate: ``measure`` of each blend's scores on one batch (None: the model alone)."""
    def validate(blends: list) -> list[float]:
        return [measure((_model if b is None else b.scorer(_model))(_batch())) for b in blends]
    return validate


def test_the_blend_is_chosen_on_validation_and_the_model_alone_wins_ties() -> None:
    base = Popularity(np.array([0, 3, 2, 2, 1]))

    def prefers_baseline(z: torch.Tensor) -> float:  # validation score rises with the weight on popularity
        return float((z[:, 1] > z[:, 4]).float().mean() + (z[:, 1] > z[:, 3]).float().mean())

    blend, grid = choose_blend({"popularity": base, "bestsellers": base}, _validate(prefers_baseline))
    assert blend is not None and blend.baseline_name == "popularity" and blend.alpha > 0
    assert set(grid) == {"popularity"} and set(grid["popularity"]) == set(ALPHAS)  # only blendable baselines
    assert grid["popularity"][blend.alpha] == max(grid["popularity"].values())
    flat, _ = choose_blend({"popularity": base}, lambda blends: [1.0] * len(blends))  # nothing gained: the model
    assert flat is None
    with pytest.raises(ValueError, match="cannot be saved"):
        Blend.of("co-occurrence", lambda b: b.items.float(), 0.5).state()


def test_a_second_baseline_joins_only_when_it_beats_the_best_single_blend_on_validation() -> None:
    """Two heuristics that each know one item the model ranks low: only the pair ranks both on top."""
    def model(batch: Batch) -> torch.Tensor:  # item 3 first, then 1, then 2 (close), 4 far below
        return torch.tensor([[float("-inf"), 0.0, -0.01, 0.1, -5.0]]).expand(len(batch), 5)

    def knows(counts: list[int]) -> Popularity:
        return Popularity(np.array(counts))

    def top_two(z: torch.Tensor) -> float:  # reciprocal rank of items 1 and 2
        rank = (z.unsqueeze(2) > z.unsqueeze(1)).sum(1)  # (B, V) items above each
        return float((1 / (1 + rank[:, [1, 2]].float())).sum(1).mean())

    def validate(blends: list) -> list[float]:
        return [top_two((model if b is None else b.scorer(model))(_batch())) for b in blends]

    # each puts its item first, the other one last
    baselines = {"popularity": knows([0, 100, 0, 2, 1]), "markov": knows([0, 0, 100, 2, 1]),
                 "co-occurrence": knows([0, 0, 0, 1, 100])}
    blend, grid = choose_blend(baselines, validate)
    assert blend is not None and list(blend.weights) == ["popularity", "markov"]  # round one's winner first
    assert top_two(blend.scorer(model)(_batch())) == 1.5  # items 1 and 2 on top
    assert max(grid["popularity"].values()) < 1.5 and max(grid["markov"].values()) < 1.5  # no single does it
    assert {k for k in grid if " + " in k} == {"popularity + markov", "popularity + co-occurrence"}
    assert grid[blend.baseline_name][blend.weights_text] == 1.5
    # a pair that only ties the best single blend is not served: item 1 on top is all that counts here
    single, _ = choose_blend(baselines, lambda blends: [float(validate([b])[0] >= 1.0) for b in blends])
    assert single is not None and list(single.weights) == ["popularity"]


def test_train_blend_serves_the_validation_tuned_mixture_end_to_end(tmp_path) -> None:
    """On shoppers who only come back to what they just viewed, "weighted recent items" beats a
    one-epoch model: train.blend picks it on validation, the run saves it, and the recommender and
    `shopformer evaluate` serve exactly that blend."""
    import json

    from typer.testing import CliRunner

    from shopformer.cli import app
    from shopformer.config import Config
    from shopformer.data.ingest import IngestOptions
    from shopformer.data.prepare import prepare
    from shopformer.recommender import History, Recommender

    rng = np.random.default_rng(0)
    lines = ["user_id,item_id,behaviour,timestamp"]
    for u in range(150):
        items = rng.choice(np.arange(1, 200), size=4, replace=False)
        lines += [f"u{u},{items[j // 3 % 4]},view,{1_600_000_000 + 60 * j}" for j in range(10)]
    raw = tmp_path / "repeat.csv"
    raw.write_text("\n".join(lines) + "\n")
    prepare([raw], tmp_path / "ds", IngestOptions(now=2_000_000_000))
    with pytest.raises(ValueError, match="use one of the two"):
        Config().override(train={"blend": True, "refit": True})
    args = ["train", str(tmp_path / "ds"), "-o", str(tmp_path / "run"), "--quiet", "--set", "train.epochs=1",
            "--set", "model.dim=8", "--set", "model.layers=1", "--set", "eval.bootstrap=0",
            "--set", "eval.exclude_seen=false", "--set", "train.blend=true"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    chosen = metrics["blend"]["chosen"]
    assert chosen is not None and chosen["alpha"] > 0
    row = blend_row(chosen)
    assert row in metrics["test"]
    grid = metrics["blend"]["grid"][chosen["baseline"]]
    assert max(grid.values()) >= grid["0.0"]  # never below the model alone on validation
    rec = Recommender.load(tmp_path / "run" / "model")
    assert rec.run.blend is not None and rec.run.blend.baseline_name == chosen["baseline"]
    assert not rec.supports_index
    h = History(["1", "2", "3"], ["view"] * 3)
    assert rec.recommend_many([h], k=3)[0].items == rec.recommend_many([h], k=3)[0].items
    r = CliRunner().invoke(app, ["evaluate", str(tmp_path / "run")])
    assert r.exit_code == 0 and "(blend," in r.output, r.output
    # train.blend_counts = "validation", the default: each blended baseline's own row
    through = [f"{name} (through validation)" for name in chosen["weights"]]
    assert row in r.output and all(t in metrics["test"] and t in r.output for t in through)
    assert rec.run.blend.counts == "validation"
    notice = f"served answers blend sasrec with '{chosen['baseline']}' ({row.split('(blend, ')[1][:-1]}, "
    assert any(w.startswith(notice + "chosen on validation, its counts then refit through validation)")
               for w in metrics["warnings"])
    # a run saved before the counts were recorded (stop 29) served training counts: no such row, same blend row
    manifest_path = tmp_path / "run" / "model" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["blend"]["counts"]
    manifest_path.write_text(json.dumps(manifest))
    r = CliRunner().invoke(app, ["evaluate", str(tmp_path / "run")])
    assert r.exit_code == 0 and row in r.output and not any(t in r.output for t in through), r.output
    # a run saved before stop 40 blended one baseline: no "weights" in its manifest, its state under "alpha"
    # and "baseline.<key>"; it loads and serves the same answers
    from safetensors.torch import load_file, save_file

    from shopformer.atomic import sha256_file

    assert len(chosen["weights"]) == 1  # this log's blend has one baseline
    before = Recommender.load(tmp_path / "run" / "model").recommend_many([h], k=5)[0].items
    path = tmp_path / "run" / "model" / "blend.safetensors"
    state = load_file(str(path))
    save_file({"alpha": state["weight.0"], **{k.replace("baseline.0.", "baseline.", 1): v for k, v in state.items()
                                              if k.startswith("baseline.0.")}}, str(path))
    del manifest["blend"]["weights"]
    manifest["files"]["blend.safetensors"] = sha256_file(path)
    manifest_path.write_text(json.dumps(manifest))
    old = Recommender.load(tmp_path / "run" / "model")
    assert old.run.blend is not None and old.run.blend.weights == chosen["weights"]
    assert old.recommend_many([h], k=5)[0].items == before


def test_multi_behaviour_runs_blend_too_and_serve_the_saved_blend(tmp_path) -> None:
    """Shoppers who buy what they just viewed: after one epoch a heuristic beats the multi-task
    model on validation purchases, so ``train.blend`` picks a mixture, reports its rows beside the
    model for every behaviour asked, saves it, and a re-evaluation of the saved run scores it the same."""
    from shopformer.config import Config
    from shopformer.data.ingest import IngestOptions
    from shopformer.data.prepare import prepare
    from shopformer.pipelines.multi_behaviour import evaluate_run, head_warnings, run_multibehaviour
    from shopformer.recommender import History, Recommender

    rng = np.random.default_rng(0)
    lines = ["user_id,item_id,behaviour,timestamp"]
    for u in range(200):
        items, start = rng.choice(np.arange(1, 300), size=4, replace=False), 1_600_000_000 + 60 * rng.integers(0, 5000)
        lines += [f"u{u},{items[j // 3 % 4]},{'buy' if j % 3 == 2 else 'view'},{start + 60 * j}" for j in range(12)]
    (tmp_path / "log.csv").write_text("\n".join(lines) + "\n")
    prepare([tmp_path / "log.csv"], tmp_path / "ds", IngestOptions(now=2_000_000_000))
    cfg = Config().override(
        model={"dim": 8, "layers": 1, "heads": 1, "max_len": 12}, task={"kind": "multi", "intent_horizon": 3},
        train={"epochs": 1, "batch_size": 32, "threads": 1, "blend": True},
        split={"kind": "temporal", "valid_start": 0.6, "test_start": 0.8, "min_targets": 10},
        eval={"bootstrap": 0, "ks": [5, 10]})
    res = run_multibehaviour(tmp_path / "ds", cfg, tmp_path / "run", progress=False)
    chosen = res.metrics["blend"]["chosen"]
    assert chosen is not None and chosen["alpha"] > 0 and res.metrics["blend"]["behaviour"] == "buy"
    grid = res.metrics["blend"]["grid"][chosen["baseline"]]
    assert max(grid.values()) > grid["0.0"]  # strictly better than the model alone on validation
    row = blend_row(chosen)
    assert row in res.metrics["next_item"]["buy"] and row in res.metrics["next_item"]["any"]
    assert any("served answers blend" in w for w in res.metrics["warnings"])
    # on test, the served row is judged against every heuristic: a line for exactly those above it (had the
    # model been served alone, the heuristics that beat it on validation purchases beat it on test too)
    alone = head_warnings(res.metrics, cfg, "buy")
    for served, warnings in ((row, res.metrics["warnings"]), ("sasrec", alone)):
        for key, what in (("buy", "test next-'buy'-item"), ("any", "test next-item")):
            table = res.metrics["next_item"][key]
            above = {n for n, m in table.items() if not n.startswith("sasrec")
                     and m["ndcg@10"] > table[served]["ndcg@10"]}
            said = {w.split("'")[1] for w in warnings if f"beats {served} on {what} ndcg@10" in w}
            assert said == above, (served, key, said, above)
    assert any("beats sasrec on test next-'buy'-item" in w for w in alone)
    rec = Recommender.load(res.run_dir)
    assert rec.run.blend is not None and rec.run.blend.baseline_name == chosen["baseline"]
    assert rec.recommend_many([History(["1", "2"], ["view", "view"])], k=3, behaviour="buy")[0].items
    again, _ = evaluate_run(res.run_dir, max_item_examples=5000)
    assert again["next_item"]["buy"][row]["ndcg@10"] == pytest.approx(res.metrics["next_item"]["buy"][row]["ndcg@10"])


@pytest.mark.parametrize("counts", ["validation", "training"])
def test_the_served_blend_refits_its_counts_through_validation_and_never_the_model(counts: str) -> None:
    """train.blend_counts: the mixture is chosen on counts of training events (the model's data); the served
    baseline then counts training + validation events, the model's weights stay as selected."""
    from conftest import cyclic_dataset

    from shopformer.config import Config, apply_overrides
    from shopformer.data.batches import EventArrays
    from shopformer.data.corpus import DataSpec
    from shopformer.data.split import leave_one_out
    from shopformer.models import build_model
    from shopformer.pipelines.next_item import Trained, _baselines, tune_blend
    from shopformer.training.fit import FitResult

    ds = cyclic_dataset(n_users=60, n_items=30)  # every next item follows from the last: Markov wins
    seq = ds.seq
    cfg = apply_overrides(Config(), ["model.dim=16", "model.max_len=4", "eval.bootstrap=0", "eval.exclude_seen=false",
                                     "train.blend=true", f"train.blend_counts={counts}"])
    torch.manual_seed(0)
    model = build_model(cfg.model, DataSpec(n_items=30, n_behaviours=2, has_time=True))  # untrained: loses
    before = {k: v.clone() for k, v in model.state_dict().items()}
    split = leave_one_out(seq)
    arrays = EventArrays.from_sequences(seq, cfg.model.time_buckets)
    blend, report = tune_blend(Trained(model, FitResult(), np.zeros(31), {}), ds, split, cfg, arrays,
                               _baselines(ds, split.train_end))
    assert blend is not None and blend.baseline_name == "markov" and report["chosen"]["counts"] == f"{counts} events"
    end = split.refit_end if counts == "validation" else split.train_end
    assert not np.array_equal(split.refit_end, split.train_end)  # the validation events are new counts
    items = torch.tensor([[0, 3, 10], [1, 8, 15]])
    batch = Batch(items, torch.ones_like(items), torch.zeros_like(items), torch.zeros_like(items))
    assert torch.equal(blend.baselines["markov"](batch), Markov(seq, end, 30)(batch))  # the counts it serves
    assert not torch.equal(Markov(seq, split.refit_end, 30)(batch), Markov(seq, split.train_end, 30)(batch))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the model is not refit
    assert blend.counts == counts  # saved with the run: the test row to read the served blend against follows it
    assert list(blend.own_rows()) == (["markov (through validation)"] if counts == "validation" else [])


def test_one_pass_over_the_grid_ranks_every_blend_as_its_own_evaluation_does() -> None:
    """``blend_scores`` + ``evaluate_each`` (the model and each baseline scored once per batch) give each
    blend exactly the ranks ``evaluate`` gives it alone, seen items removed or kept, the model alone
    included; without top-K lists (the blend search) the same ranks and rank metrics, and no coverage."""
    from conftest import cyclic_dataset

    from shopformer.config import Config
    from shopformer.data.batches import EventArrays
    from shopformer.data.split import leave_one_out
    from shopformer.evaluation.baselines import shop_baselines
    from shopformer.evaluation.blend import CHUNK, blend_chunk, blend_scores
    from shopformer.evaluation.ranking import evaluate, evaluate_each

    ds = cyclic_dataset(n_users=60, n_items=30)
    split, cfg = leave_one_out(ds.seq), Config().eval.model_copy(update={"bootstrap": 0, "batch_size": 16})
    arrays = EventArrays.from_sequences(ds.seq, Config().model.time_buckets)
    fitted = shop_baselines(ds.seq, split.train_end, 30, ds.spec.n_behaviours)
    gen = torch.Generator().manual_seed(0)
    table = torch.randn(31, 31, generator=gen)

    def model(batch: Batch) -> torch.Tensor:  # a fixed random scorer of the last item
        out = table[batch.items[:, -1]].clone()
        out[:, 0] = float("-inf")
        return out

    blends = [None, Blend.of("markov", fitted["markov"], 0.3), Blend.of("co-occurrence", fitted["co-occurrence"], 1.0),
              Blend({"markov": fitted["markov"], "co-occurrence": fitted["co-occurrence"]},
                    {"markov": 0.05, "co-occurrence": 0.1})]
    for ecfg in (cfg, cfg.model_copy(update={"exclude_seen": not cfg.exclude_seen})):
        together = evaluate_each(blend_scores(model, blends), len(blends), ds.seq, arrays, split.test, 30, 8, ecfg)
        ranks_only = evaluate_each(blend_scores(model, blends), len(blends), ds.seq, arrays, split.test, 30, 8,
                                   ecfg, lists=False)
        for blend, res, lean in zip(blends, together, ranks_only, strict=True):
            alone = evaluate(model if blend is None else blend.scorer(model), ds.seq, arrays, split.test, 30, 8, ecfg)
            assert np.array_equal(res.ranks, alone.ranks) and np.array_equal(res.topk, alone.topk)
            assert res.metrics["ndcg@10"] == alone.metrics["ndcg@10"]
            assert np.array_equal(lean.ranks, res.ranks) and lean.topk.shape == (len(res.ranks), 0)
            assert lean.top1 is None and "coverage@10" in res.metrics
            assert lean.metrics == {k: v for k, v in res.metrics.items() if not k.startswith("coverage")}
    assert len({float(r.metrics["ndcg@10"]) for r in together}) > 1  # the blends do rank differently
    with pytest.raises(ValueError, match="more score blocks"):  # a scorer that yields more than it says
        evaluate_each(blend_scores(model, blends), 2, ds.seq, arrays, split.test, 30, 8, cfg)
    assert blend_chunk(22_363, 20) == CHUNK and blend_chunk(10**6, 20) == 6  # Beauty's validation; a million users
    assert blend_chunk(22_363, 20, lists=False) > 5_000 and blend_chunk(10**6, 20, lists=False) == 134  # ranks only
    with pytest.raises(ValueError, match="differ"):  # weights are paired with baselines by position
        Blend({"markov": fitted["markov"], "co-occurrence": fitted["co-occurrence"]},
              {"co-occurrence": 0.1, "markov": 0.05})


def test_a_coverage_monitor_still_chooses_the_blend_from_top_k_lists() -> None:
    """The blend search ranks without top-K lists for rank metrics; a coverage@K monitor needs them, and gets them."""
    from conftest import cyclic_dataset

    from shopformer.config import Config, apply_overrides
    from shopformer.data.batches import EventArrays
    from shopformer.data.corpus import DataSpec
    from shopformer.data.split import leave_one_out
    from shopformer.evaluation.metrics import needs_lists
    from shopformer.models import build_model
    from shopformer.pipelines.next_item import Trained, _baselines, tune_blend
    from shopformer.training.fit import FitResult

    assert needs_lists("coverage@10") and not needs_lists("ndcg@10") and not needs_lists("mrr")
    ds = cyclic_dataset(n_users=60, n_items=30)
    cfg = apply_overrides(Config(), ["model.dim=16", "model.max_len=4", "eval.bootstrap=0", "train.blend=true",
                                     "train.monitor=coverage@10"])
    torch.manual_seed(0)
    model = build_model(cfg.model, DataSpec(n_items=30, n_behaviours=2, has_time=True))
    split = leave_one_out(ds.seq)
    arrays = EventArrays.from_sequences(ds.seq, cfg.model.time_buckets)
    _, report = tune_blend(Trained(model, FitResult(), np.zeros(31), {}), ds, split, cfg, arrays,
                           _baselines(ds, split.train_end))
    scores = [v for cells in report["grid"].values() for v in cells.values()]
    assert all(0.0 < v <= 1.0 for v in scores) and len(set(scores)) > 1  # coverage of the catalogue, not ranks
