"""LoRA: a no-op at start, only adapters train, merging keeps the function."""

from __future__ import annotations

import pytest
import torch

from shopformer.config import LossConfig, ModelConfig
from shopformer.data.batches import Batch
from shopformer.data.corpus import DataSpec
from shopformer.models import build_model
from shopformer.models.lora import (
    LoRALinear,
    apply_lora,
    count_parameters,
    mark_only_lora_trainable,
    merge_lora,
)

SPEC = DataSpec(n_items=20, n_behaviours=2, has_time=True)


def make(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(name=name, dim=16, layers=2, heads=2, max_len=6), SPEC)


def batch() -> Batch:
    g = torch.Generator().manual_seed(0)
    items = torch.randint(1, 21, (3, 6), generator=g)
    items[1, :2] = 0
    real = items != 0
    targets = torch.roll(items, -1, 1) * real
    targets[:, -1] = 5
    return Batch(items, real.long(), real.long() * 2, torch.zeros_like(items), targets, real.long())


@pytest.mark.parametrize("name", ["sasrec", "bert4rec", "hstu"])
def test_apply_train_merge(name: str) -> None:
    model = make(name).eval()
    b = batch()
    before = model.score_all(b)
    n_wrapped = apply_lora(model, rank=4, alpha=8)
    assert n_wrapped == 4  # qkv/uvqk + proj in each of 2 layers
    assert torch.allclose(model.score_all(b), before), "B = 0: the output must not change"

    trainable = mark_only_lora_trainable(model)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and all(n.endswith(("lora_A", "lora_B")) for n in names)
    # per layer: qkv 16->48 (or uvqk 16->64) and proj 16->16, each A (4, in) + B (out, 4)
    per_layer = {"hstu": (4 * 16 + 64 * 4) + (4 * 16 + 16 * 4)}.get(
        name, (4 * 16 + 48 * 4) + (4 * 16 + 16 * 4)
    )
    assert trainable == count_parameters(model)[0] == 2 * per_layer
    t_also, total = count_parameters(model)[0], count_parameters(model)[1]
    assert mark_only_lora_trainable(model, also=("item_emb",)) == t_also + 22 * 16 and total > t_also

    # One optimiser step moves only the adapters; the frozen base stays put.
    mark_only_lora_trainable(model)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model.train()
    model.loss(b, LossConfig()).total.backward()
    opt.step()
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    model.eval()
    tuned = model.score_all(b)
    assert not torch.allclose(tuned, before), "the adapters changed nothing"

    assert merge_lora(model) == n_wrapped
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert torch.allclose(model.score_all(b), tuned, atol=1e-5), "merging must keep the function"
    assert set(model.state_dict()) == set(make(name).state_dict()), "merged model loads like the original"


def test_trainable_count_is_exact() -> None:
    model = make("sasrec")
    apply_lora(model, rank=4, alpha=4, target=("qkv",))
    # qkv: 16 -> 48, A (4, 16) + B (48, 4), in 2 layers
    assert mark_only_lora_trainable(model) == 2 * (4 * 16 + 48 * 4)


def test_pretrained_state_dict_loads_after_apply() -> None:
    src, dst = make("sasrec"), make("sasrec")
    apply_lora(dst, rank=2, alpha=2)
    missing, unexpected = dst.load_state_dict(src.state_dict(), strict=False)
    assert not unexpected and all("lora_" in k for k in missing)


@pytest.mark.parametrize("name", ["gru4rec", "lstm"])
def test_refuses_models_without_attention(name: str) -> None:
    with pytest.raises(ValueError, match="no attention"):
        apply_lora(make(name), rank=2, alpha=2)


def test_refuses_when_nothing_matches() -> None:
    with pytest.raises(ValueError, match="no nn.Linear named"):
        apply_lora(make("sasrec"), rank=2, alpha=2, target=("query",))
    with pytest.raises(ValueError, match="rank"):
        apply_lora(make("sasrec"), rank=0, alpha=2)
