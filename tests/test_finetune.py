"""Pre-training -> fine-tuning: option checks, purchase targets, the three modes, saving."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shopformer.artifacts import load_run, save_run
from shopformer.config import Config
from shopformer.data.batches import Batch, EventArrays, history_batches, target_windows, training_windows
from shopformer.data.corpus import DataSpec
from shopformer.data.sequences import Sequences
from shopformer.data.split import leave_one_out
from shopformer.data.vocab import Vocab, Vocabs
from shopformer.models import build_model
from shopformer.models.lora import LoRALinear
from shopformer.training.finetune import check_finetune, finetune, pretrain, target_objective

N_ITEMS, PV, BUY = 20, 1, 2


def cycle_sequences(n_users: int = 60, length: int = 24) -> Sequences:
    """Item i is always followed by i + 1 (mod N); every third event is a purchase."""
    rng = np.random.default_rng(0)
    items = [list(1 + (rng.integers(0, N_ITEMS) + np.arange(length)) % N_ITEMS) for _ in range(n_users)]
    beh = [[BUY if (t % 3 == 2) else PV for t in range(length)] for _ in range(n_users)]
    return Sequences.from_lists(items, beh, [list(range(0, 60 * length, 60))] * n_users)


def config(**train) -> Config:
    return Config().override(
        model={"dim": 16, "heads": 2, "layers": 1, "max_len": 8, "dropout": 0.0, "emb_dropout": 0.0},
        train={"epochs": 2, "batch_size": 32, "learning_rate": 5e-3, "patience": 5, **train},
        eval={"bootstrap": 0, "exclude_seen": False},
    )


SPEC = DataSpec(n_items=N_ITEMS, n_behaviours=2, has_time=True)


def test_lora_on_a_model_without_attention_is_rejected_before_training() -> None:
    cfg = config().override(model={"name": "gru4rec"})
    with pytest.raises(ValueError, match="no attention layers.*sasrec"):
        check_finetune(cfg, "lora")
    check_finetune(cfg, "frozen")  # fine
    with pytest.raises(ValueError, match="lora_rank=4.*no attention layers.*sasrec"):
        build_model(cfg.override(model={"lora_rank": 4}).model, SPEC)
    with pytest.raises(ValueError, match="unknown fine-tuning mode"):
        check_finetune(cfg, "partial")
    seq = cycle_sequences(8)
    split = leave_one_out(seq, BUY)
    model = build_model(cfg.model, SPEC)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="no attention"):
        finetune(model, cfg, seq, split.train_end, split.valid, BUY, "lora")
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items()), "nothing may train"


def test_pretrain_objective_must_match_the_model() -> None:
    seq = cycle_sequences(8)
    split = leave_one_out(seq, BUY)
    cfg = config()
    with pytest.raises(ValueError, match="causal"):
        pretrain(build_model(cfg.model, SPEC), cfg, seq, split.train_end, split.valid, objective="masked")
    bert = config().override(model={"name": "bert4rec"})
    with pytest.raises(ValueError, match="bidirectional"):
        pretrain(build_model(bert.model, SPEC), bert, seq, split.train_end, split.valid, objective="next-item")


def test_target_windows_keep_windows_with_a_purchase_target() -> None:
    # user 0: pv pv pv pv buy ; user 1: pv pv pv ; user 2: buy pv pv (the first event is never a target)
    seq = Sequences.from_lists([[1, 2, 3, 4, 5], [6, 7, 8], [9, 10, 11]],
                               [[PV, PV, PV, PV, BUY], [PV, PV, PV], [BUY, PV, PV]], None)
    ends, starts = training_windows(seq, seq.offsets[1:], max_len=2, sliding=True)
    kept_ends, _ = target_windows(seq, ends, starts, 2, BUY)
    # user 0's windows end at 5 (targets 4, 5 -> index 4 is a buy) and 3 (targets 2..) : only the first
    assert kept_ends.tolist() == [5]


def test_target_objective_trains_only_purchase_positions() -> None:
    cfg = config()
    torch.manual_seed(0)
    model = build_model(cfg.model, SPEC).eval()
    items = torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7]])
    targets = torch.tensor([[0, 2, 3, 4], [5, 6, 7, 8]])
    tb = torch.tensor([[0, PV, BUY, PV], [PV, PV, PV, PV]])
    beh = (items != 0).long()
    batch = Batch(items, beh, beh, torch.zeros_like(items), targets, tb)
    out = target_objective(model, cfg, BUY)(batch)
    expected = model.item_loss(model.encode(batch), torch.tensor([[0, 0, 3, 0], [0, 0, 0, 0]]), cfg.loss)
    assert torch.allclose(out.total, expected)
    none = Batch(items, beh, beh, torch.zeros_like(items), targets, torch.full_like(tb, PV))
    zero = target_objective(model, cfg, BUY)(none).total
    assert zero.item() == 0.0 and zero.requires_grad


@pytest.mark.parametrize("name", ["sasrec", "bert4rec"])
def test_target_objective_leaves_the_user_s_items_out_with_mask_seen(name: str) -> None:
    """loss.mask_seen reaches the fine-tuning objective too: the same masks, a lower loss (fewer classes)."""
    cfg = config().override(model={"name": name})
    torch.manual_seed(0)
    model = build_model(cfg.model, SPEC).eval()
    items = torch.tensor([[1, 2, 3, 1], [4, 5, 6, 7]])
    batch = Batch(items, torch.ones_like(items), torch.ones_like(items), torch.zeros_like(items),
                  torch.tensor([[2, 3, 1, 9], [5, 6, 7, 8]]), torch.full_like(items, BUY))
    losses = []
    for mask_seen in (True, False):
        torch.manual_seed(1)  # BERT4Rec draws its masks: the same ones both times
        run_cfg = cfg.override(loss={"mask_seen": mask_seen}, eval={"exclude_seen": True})
        losses.append(target_objective(model, run_cfg, BUY)(batch).total)
    assert torch.isfinite(losses[0]) and losses[0] < losses[1]


def test_bidirectional_target_objective_masks_purchases_only() -> None:
    cfg = config().override(model={"name": "bert4rec"})
    model = build_model(cfg.model, SPEC)
    seen = {}
    real_encode = model.encode

    def spy(batch: Batch) -> torch.Tensor:
        seen["inputs"] = batch
        return real_encode(batch)

    model.encode = spy  # type: ignore[method-assign]
    real_corrupt = model.corrupt

    def corrupt_spy(*args, **kwargs):
        seen["corrupt"] = kwargs
        return real_corrupt(*args, **kwargs)

    model.corrupt = corrupt_spy  # type: ignore[method-assign]
    items = torch.tensor([[1, 2, 3, 4]])
    batch = Batch(items, torch.tensor([[PV, BUY, PV, BUY]]), torch.ones_like(items), torch.zeros_like(items),
                  torch.tensor([[2, 3, 4, 5]]), torch.tensor([[BUY, PV, BUY, BUY]]))
    target_objective(model, cfg, BUY)(batch)
    assert seen["corrupt"]["eligible"] is not None, "the model's own masking, restricted to purchases"
    masked = seen["inputs"].items == model.mask_id
    full_beh = torch.tensor([[PV, BUY, PV, BUY, BUY]])[:, -masked.shape[1] :]
    assert masked[0, -1], "the final purchase is always masked"
    assert (full_beh[masked] == BUY).all(), "only purchase events become cloze targets"


@pytest.fixture(scope="module")
def pretrained():
    seq = cycle_sequences()
    split = leave_one_out(seq, BUY)
    cfg = config(epochs=15)
    torch.manual_seed(0)
    model = build_model(cfg.model, SPEC)
    res = pretrain(model, cfg, seq, split.train_end, split.valid)
    return seq, split, cfg, model, res


def test_pretraining_on_all_events_learns_the_purchase_target(pretrained) -> None:
    seq, split, cfg, model, res = pretrained
    assert res.best_score > 0.8, "the cycle is learnable from all events"
    fresh = build_model(cfg.model, SPEC)
    from shopformer.training.finetune import _metrics

    arrays = EventArrays.from_sequences(seq, cfg.model.time_buckets)
    assert _metrics(fresh, cfg, seq, arrays, split.valid)["ndcg@10"] < 0.5


@pytest.mark.parametrize("mode", ["full", "frozen", "lora"])
def test_finetune_modes(pretrained, mode: str, tmp_path) -> None:
    seq, split, cfg, pre, _ = pretrained
    model = build_model(cfg.model, SPEC)
    model.load_state_dict(pre.state_dict())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = finetune(model, cfg.override(train={"epochs": 2}), seq, split.train_end, split.valid, BUY, mode)
    total = sum(p.numel() for p in model.parameters())
    d = cfg.model.dim
    if mode == "full":
        assert res.trainable_params == res.total_params == total
    elif mode == "frozen":
        assert res.trainable_params == d * d + d
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "the frozen model moved"
    else:
        # one layer: qkv (16 -> 48) and proj (16 -> 16), rank 8: A (8, in) + B (out, 8)
        assert res.trainable_params == (8 * 16 + 48 * 8) + (8 * 16 + 16 * 8) and res.lora_layers == 2
        assert not any(isinstance(m, LoRALinear) for m in model.modules()), "LoRA must be merged"
    assert res.valid_before["ndcg@10"] > 0.5 and "ndcg@10" in res.valid_after
    if mode != "frozen":  # merged LoRA and full models save and load as plain models
        vocabs = Vocabs(*(Vocab(("<pad>", *map(str, range(1, n + 1)))) for n in (60, N_ITEMS, 2, 0)))
        save_run(tmp_path / "run", res.model, cfg, vocabs, np.zeros(N_ITEMS + 1), np.zeros(N_ITEMS + 1))
        loaded = load_run(tmp_path / "run").model
        arrays = EventArrays.from_sequences(seq, cfg.model.time_buckets)
        _, batch = next(history_batches(seq, arrays, split.valid, cfg.model.max_len, 16))
        res.model.eval()
        assert torch.allclose(res.model.score_all(batch), loaded.score_all(batch), atol=1e-5)
