import numpy as np
import pytest
import torch
from conftest import cyclic_sequences

from shopformer.config import Config, apply_overrides
from shopformer.data.batches import (
    EventArrays,
    TaskBatch,
    TrainLoader,
    gather_windows,
    make_train_loader,
    target_windows,
    training_windows,
)
from shopformer.data.corpus import DataSpec
from shopformer.data.split import leave_one_out
from shopformer.evaluation.ranking import evaluate, model_scorer
from shopformer.models import build_model
from shopformer.models.base import LossOutput
from shopformer.training.fit import early_stopping, fit, lr_lambda


def test_early_stopping_rule() -> None:
    assert early_stopping([], 2) == (False, -1)
    assert early_stopping([0.1, 0.2, 0.15], 2) == (False, 1)
    assert early_stopping([0.1, 0.2, 0.15, 0.19], 2) == (True, 1)
    assert early_stopping([0.3, 0.3, 0.3], 2) == (True, 0)  # a tie is not an improvement
    # min_delta: a gain must exceed it to count (0.2 -> 0.205 is no new best with min_delta 0.01)
    assert early_stopping([0.1, 0.2, 0.205], 1, min_delta=0.01) == (True, 1)
    assert early_stopping([0.1, 0.2, 0.215], 1, min_delta=0.01) == (False, 2)
    assert early_stopping([0.1, 0.2, 0.205, 0.215], 1, min_delta=0.01) == (False, 3)  # vs the best, not the last
    # scores taken during the learning-rate warm-up do not count towards patience
    assert early_stopping([0.3, 0.1, 0.1, 0.1], 2, warm=3) == (False, 0)
    assert early_stopping([0.3, 0.1, 0.1, 0.1, 0.1], 2, warm=3) == (True, 0)
    assert early_stopping([0.1, 0.2, 0.1, 0.1], 2, warm=1) == (True, 1)  # a best after the warm-up counts as usual


def test_lr_schedule() -> None:
    assert lr_lambda(0, 10, 100, "constant") == pytest.approx(0.1)
    assert lr_lambda(50, 10, 100, "constant") == 1.0
    assert lr_lambda(100, 10, 100, "cosine") == pytest.approx(0.0, abs=1e-9)
    assert lr_lambda(55, 10, 100, "cosine") == pytest.approx(0.5, abs=1e-6)


def test_gather_windows_left_pads_within_user() -> None:
    arr = np.arange(1, 11)
    out = gather_windows(arr, ends=np.array([3, 10]), starts=np.array([0, 4]), length=4)
    assert out.tolist() == [[0, 1, 2, 3], [7, 8, 9, 10]]
    out = gather_windows(arr, ends=np.array([6]), starts=np.array([4]), length=4)
    assert out.tolist() == [[0, 0, 5, 6]]  # never reads the previous user's events


def test_training_windows_cover_long_histories() -> None:
    seq = cyclic_sequences(n_users=2)
    long_seq = type(seq).from_lists([list(range(1, 26))], [[1] * 25], None)
    ends, starts = training_windows(long_seq, np.array([25]), max_len=10, sliding=True)
    assert ends.tolist() == [25, 15, 5] and starts.tolist() == [0, 0, 0]
    ends, _ = training_windows(long_seq, np.array([25]), max_len=10, sliding=False)
    assert ends.tolist() == [25]
    assert training_windows(long_seq, np.array([25]), max_len=10, stride=10)[0].tolist() == [25, 15, 5]
    # overlapping windows: end every 5 events, and every target (events 1..24) is still in one
    ends, _ = training_windows(long_seq, np.array([25]), max_len=10, stride=5)
    assert ends.tolist() == [25, 20, 15, 10]
    covered = set().union(*(range(max(1, e - 10), e) for e in ends.tolist()))
    assert covered == set(range(1, 25))


def test_loader_targets_are_next_items_and_zero_at_padding() -> None:
    seq = cyclic_sequences(n_users=20)
    sp = leave_one_out(seq)
    arrays = EventArrays.from_sequences(seq, 16)
    ends, starts = training_windows(seq, sp.train_end, 8)
    for batch in TrainLoader(arrays, ends, starts, 8, 4, seed=0):
        real = batch.items != 0
        assert torch.equal(batch.targets != 0, real)
        # next = cur + 7 (mod 60) on this synthetic catalogue
        expected = (batch.items[real] + 7 - 1) % 60 + 1
        assert torch.equal(batch.targets[real], expected)


@pytest.mark.parametrize("name", ["sasrec", "gru4rec"])
def test_fit_learns_a_deterministic_pattern_and_restores_best(name: str, tmp_path) -> None:
    seq = cyclic_sequences()
    sp = leave_one_out(seq)
    cfg = apply_overrides(Config(), [f"model.name={name}", "model.dim=32", "model.dropout=0.1",
                                     "model.emb_dropout=0.1", "train.epochs=12", "train.batch_size=32",
                                     "train.learning_rate=0.005", "eval.exclude_seen=false", "train.patience=20"])
    model = build_model(cfg.model, DataSpec(60, 2, has_time=True))
    res = fit(model, cfg, seq, sp.train_end, sp.valid, progress=False, log_dir=tmp_path)
    arrays = EventArrays.from_sequences(seq, cfg.model.time_buckets)
    m = evaluate(model_scorer(model), seq, arrays, sp.test, 60, cfg.model.max_len, cfg.eval, bootstrap=False)
    assert m.metrics["hr@5"] > 0.8, m.metrics  # random ranking would give 5/60
    scores = [r["valid_ndcg@10"] for r in res.history]
    assert res.best_score == max(scores)
    again = evaluate(model_scorer(model), seq, arrays, sp.valid, 60, cfg.model.max_len, cfg.eval, bootstrap=False)
    assert res.best_metrics == again.metrics, "best_metrics belong to the restored weights"
    assert (tmp_path / "train_log.csv").exists() and (tmp_path / "training_curve.png").stat().st_size > 1000


def test_time_budget_stops_training() -> None:
    seq = cyclic_sequences(n_users=50)
    sp = leave_one_out(seq)
    cfg = apply_overrides(Config(), ["model.dim=16", "train.epochs=1000", "train.max_minutes=0.00001"])
    res = fit(build_model(cfg.model, DataSpec(60, 2, has_time=True)), cfg, seq, sp.train_end, sp.valid,
              progress=False)
    assert res.stopped_by == "time_budget" and res.epochs == 1  # 0.6 ms budget: one epoch


def test_progress_is_one_line_per_epoch_on_stderr_when_not_on_a_terminal(capfd) -> None:
    """Redirected output (nohup, CI, a log file) still shows progress as training goes."""
    seq = cyclic_sequences(n_users=50)
    sp = leave_one_out(seq)
    cfg = apply_overrides(Config(), ["model.dim=16", "train.epochs=2"])
    fit(build_model(cfg.model, DataSpec(60, 2, has_time=True)), cfg, seq, sp.train_end, sp.valid, progress=True)
    lines = [x for x in capfd.readouterr().err.splitlines() if x.startswith("epoch ")]
    assert [x.split()[1] for x in lines] == ["1/2", "2/2"] and all("ndcg@10" in x for x in lines)
    fit(build_model(cfg.model, DataSpec(60, 2, has_time=True)), cfg, seq, sp.train_end, sp.valid, progress=False)
    assert "epoch " not in capfd.readouterr().err


def test_fit_without_validation_stops_after_the_given_epochs_and_keeps_the_last_weights() -> None:
    seq = cyclic_sequences(n_users=50)
    sp = leave_one_out(seq)
    cfg = apply_overrides(Config(), ["model.dim=16", "train.epochs=10"])
    model = build_model(cfg.model, DataSpec(60, 2, has_time=True))
    res = fit(model, cfg, seq, sp.refit_end, None, progress=False, stop_after=3)
    assert res.epochs == 3 and res.best_epoch == 3 and res.stopped_by == "stop_after"
    assert not any(k.startswith("valid_") for row in res.history for k in row)
    assert res.history[-1]["lr"] == pytest.approx(cfg.train.learning_rate)  # constant schedule, 10-epoch span


def test_make_train_loader_is_the_wiring_of_the_config() -> None:
    seq = type(cyclic_sequences(n_users=2)).from_lists(
        [list(range(1, 13)), [3, 4, 5], [7, 8, 9, 10, 11]], [[1, 1, 2] * 4, [1, 1, 1], [1, 2, 1, 1, 1]], None)
    cfg = apply_overrides(Config(), ["model.max_len=4", "train.batch_size=2", "train.seed=3"])
    train_end = seq.offsets[1:] - 1
    arrays = EventArrays.from_sequences(seq, cfg.model.time_buckets)
    loader = make_train_loader(cfg, seq, train_end, arrays)
    ends, starts = training_windows(seq, train_end, 4, cfg.train.sliding_window)
    manual = TrainLoader(arrays, ends, starts, 4, 2, 3)
    assert (loader.max_len, loader.batch_size) == (4, 2)
    assert np.array_equal(loader.ends, ends) and np.array_equal(loader.starts, starts)
    for a, b in zip(loader, manual, strict=True):  # same windows, same shuffling
        assert torch.equal(a.items, b.items) and torch.equal(a.targets, b.targets)
    # only windows with a target of behaviour 2 (user 1 has none)
    only = make_train_loader(cfg, seq, train_end, arrays, target_behaviour=2)
    kept, _ = target_windows(seq, ends, starts, 4, 2)
    assert np.array_equal(only.ends, kept) and 0 < len(kept) < len(ends)
    assert all((b.target_behaviours == 2).any(-1).all() for b in only)
    # intent labels make TaskBatches; they follow the stored order, so no augmentation with them
    labels = np.arange(len(seq.items)) % 2
    labelled = next(iter(make_train_loader(cfg, seq, train_end, arrays, labels=labels)))
    assert isinstance(labelled, TaskBatch) and (labelled.intent_labels[labelled.items == 0] == -1).all()
    with pytest.raises(ValueError, match="augmentation"):
        make_train_loader(cfg, seq, train_end, arrays, augment=lambda w, rng: w, labels=labels)


def test_fit_trains_any_module_on_any_loader_and_keeps_the_start_when_nothing_beats_it() -> None:
    """The generic path (used by training.heads.refit_heads): a loader of tensors, an objective, a
    ``validate`` callable (higher is better), the starting weights as a candidate."""
    torch.manual_seed(0)
    x = torch.randn(256, 4)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0])
    cfg = Config().override(train={"epochs": 30, "patience": 3, "learning_rate": 0.05, "monitor": "mse"})
    batches = [(x[i : i + 64], y[i : i + 64]) for i in range(0, 256, 64)]

    def run(module: torch.nn.Module, target: torch.Tensor, min_delta: float = 0.0):
        def objective(batch):
            loss = torch.nn.functional.mse_loss(module(batch[0]).squeeze(-1), batch[1])
            return LossOutput(loss, {"mse": float(loss.detach())})

        def validate():
            with torch.no_grad():
                mse = float(torch.nn.functional.mse_loss(module(x).squeeze(-1), target))
            return -mse, {"mse": mse}

        return fit(module, cfg, loader=batches, objective=objective, validate=validate, progress=False,
                   score_start=True, min_delta=min_delta)

    lin = torch.nn.Linear(4, 1)
    res = run(lin, y)
    assert res.start_score is not None and res.best_score > res.start_score and res.best_epoch > 0
    assert res.best_metrics["mse"] == pytest.approx(-res.best_score)
    assert res.history[res.best_epoch - 1]["valid_mse"] == res.best_metrics["mse"]
    with torch.no_grad():
        assert float(torch.nn.functional.mse_loss(lin(x).squeeze(-1), y)) == pytest.approx(-res.best_score)
    # validated on a target no training step can approach: the starting weights are restored
    stuck = torch.nn.Linear(4, 1)
    start = {k: v.clone() for k, v in stuck.state_dict().items()}
    res = run(stuck, y + 1e6, min_delta=1e9)
    assert res.best_epoch == 0 and res.stopped_by == "early_stopping" and res.epochs == cfg.train.patience
    assert all(torch.equal(start[k], v) for k, v in stuck.state_dict().items())
    # a warm-up of 10 steps spans 2.5 epochs of 4 batches: the evaluations inside it (the start and
    # epochs 1-2) do not count, so patience 3 stops at epoch 5, not 3
    cfg = cfg.override(train={"warmup_steps": 10})
    res = run(torch.nn.Linear(4, 1), y + 1e6, min_delta=1e9)
    assert res.stopped_by == "early_stopping" and res.epochs == 2 + cfg.train.patience


def test_evaluation_holds_a_bounded_score_block_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """A large catalogue is ranked a few users at a time (``SCORE_BLOCK`` floats), same metrics."""
    import shopformer.evaluation.ranking as ranking

    seq = cyclic_sequences(n_users=40)
    sp = leave_one_out(seq)
    cfg = apply_overrides(Config(), ["model.dim=16"])
    model = build_model(cfg.model, DataSpec(60, 2, has_time=True))
    arrays = EventArrays.from_sequences(seq, cfg.model.time_buckets)
    whole = evaluate(model_scorer(model), seq, arrays, sp.test, 60, 8, cfg.eval, bootstrap=False)
    seen: list[int] = []
    scorer = model_scorer(model)

    def spy(batch):
        seen.append(len(batch))
        return scorer(batch)

    monkeypatch.setattr(ranking, "SCORE_BLOCK", 61 * 3)  # three users' scores over 60 items + padding
    part = evaluate(spy, seq, arrays, sp.test, 60, 8, cfg.eval, bootstrap=False)
    assert max(seen) == 3 and sum(seen) == len(sp.test)
    assert part.metrics == whole.metrics and np.array_equal(part.topk, whole.topk)


def test_step_precision_and_compile_options_reach_the_training_step() -> None:
    from shopformer.training.hardware import step_precision

    cpu = torch.device("cpu")
    assert step_precision("fp32", cpu, {"amx_bf16"}) is None
    assert step_precision("auto", cpu, {"avx2"}) is None  # emulated bf16 is slower: auto stays fp32
    assert step_precision("auto", cpu, {"avx512_bf16"}) == torch.bfloat16
    assert step_precision("bf16", cpu, set()) == torch.bfloat16
    seq = cyclic_sequences(n_users=30)
    sp = leave_one_out(seq)
    cfg = apply_overrides(Config(), ["model.dim=16", "train.epochs=1", "train.precision=bf16", "train.compile=true"])
    model = build_model(cfg.model, DataSpec(60, 2, has_time=True))
    loader = make_train_loader(cfg, seq, sp.train_end)
    seen: list[tuple[bool, bool]] = []

    def objective(batch):
        seen.append((torch.is_autocast_enabled("cpu"), "encode" in vars(model)))  # compiled while training
        return LossOutput((model.item_emb.weight[1:3] ** 2).sum(), {})

    fit(model, cfg, loader=loader, objective=objective, progress=False)
    assert seen and all(s == (True, True) for s in seen)
    assert "encode" not in vars(model)  # the plain method is back: nothing compiled is saved
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model.loss(next(iter(loader)), cfg.loss)
    assert loss.total.dtype == torch.float32  # the full-catalogue loss stays fp32 under autocast


def test_evaluation_batches_by_history_length_only_as_wide_as_needed() -> None:
    from shopformer.data.batches import history_batches

    seq = cyclic_sequences(n_users=40)
    sp = leave_one_out(seq)
    arrays = EventArrays.from_sequences(seq, 16)
    plain = list(history_batches(seq, arrays, sp.test, 20, 8))
    short = list(history_batches(seq, arrays, sp.test, 20, 8, by_length=True))
    assert all(b.items.shape[1] == 20 for _, b in plain)
    assert all(b.items.shape[1] < 20 and (b.items[:, 0] != 0).any() for _, b in short)  # no all-padding column
    assert sorted(np.concatenate([i for i, _ in short]).tolist()) == list(range(len(sp.test)))
    by_row = {int(i): b.items[k] for idx, b in short for k, i in enumerate(idx)}
    for idx, b in plain:  # the same histories, without the leading padding
        for k, i in enumerate(idx):
            trimmed = by_row[int(i)]
            assert torch.equal(b.items[k, -len(trimmed) :], trimmed) and not b.items[k, : -len(trimmed)].any()


def test_ema_trains_the_same_path_and_returns_and_validates_the_moving_average() -> None:
    """train.ema: the optimiser's path is unchanged; what is validated, kept and returned is the
    exponential moving average of that path (with its warm start), not the last step's weights."""
    torch.manual_seed(0)
    x = torch.randn(128, 4)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0])
    batches = [(x[i : i + 32], y[i : i + 32]) for i in range(0, 128, 32)]
    start = torch.nn.Linear(4, 1).state_dict()

    def run(ema: float, validated: bool) -> tuple[torch.nn.Module, list[torch.Tensor], object]:
        module = torch.nn.Linear(4, 1)
        module.load_state_dict(start)
        seen: list[torch.Tensor] = []  # the weights each step starts from

        def objective(batch):
            seen.append(torch.cat([module.weight.detach().flatten(), module.bias.detach()]).clone())
            loss = torch.nn.functional.mse_loss(module(batch[0]).squeeze(-1), batch[1])
            return LossOutput(loss, {"mse": float(loss.detach())})

        def validate():
            with torch.no_grad():
                mse = float(torch.nn.functional.mse_loss(module(x).squeeze(-1), y))
            return -mse, {"mse": mse}

        cfg = Config().override(train={"epochs": 5, "learning_rate": 0.05, "monitor": "mse", "ema": ema,
                                       "patience": 50})
        res = fit(module, cfg, loader=batches, objective=objective, validate=validate if validated else None,
                  progress=False)
        return module, seen, res

    plain, path, _ = run(0.0, validated=False)
    path.append(torch.cat([plain.weight.detach().flatten(), plain.bias.detach()]))  # w_0 .. w_T
    averaged, seen, _ = run(0.9, validated=False)
    assert all(torch.equal(a, b) for a, b in zip(seen, path[:-1], strict=True)), "the optimiser path changed"
    expected = path[0].clone()
    for t, w in enumerate(path[1:], start=1):
        expected += (1 - min(0.9, (1 + t) / (10 + t))) * (w - expected)
    got = torch.cat([averaged.weight.detach().flatten(), averaged.bias.detach()])
    assert torch.allclose(got, expected, atol=1e-6) and not torch.allclose(got, path[-1], atol=1e-3)
    # with validation: the best epoch is chosen on, and restored as, the averaged weights
    module, _, res = run(0.9, validated=True)
    with torch.no_grad():
        mse = float(torch.nn.functional.mse_loss(module(x).squeeze(-1), y))
    assert mse == pytest.approx(res.best_metrics["mse"]) and res.history[res.best_epoch - 1]["valid_mse"] == mse
