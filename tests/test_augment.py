"""Augmentation operators, the loader hook, and the contrastive loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shopformer.config import AugmentConfig, Config, ModelConfig
from shopformer.data.augment import Augmenter, cl4srec_view, crop, lengths, mask, prefix, reorder, substitute
from shopformer.data.batches import EventArrays, windows_to_batch
from shopformer.data.corpus import DataSpec
from shopformer.data.sequences import Sequences
from shopformer.models import build_model
from shopformer.training.objectives import (
    augmented_training,
    check_augment,
    drop_masked_targets,
    info_nce,
    training_objective,
)

N_ITEMS = 50


def windows(seed: int = 0, b: int = 64, w: int = 12) -> dict[str, np.ndarray]:
    """Left-padded windows of distinct items; side features encode the item so pairs can be checked."""
    rng = np.random.default_rng(seed)
    n = rng.integers(0, w + 1, size=b)
    items = np.zeros((b, w), np.int64)
    for r in range(b):
        items[r, w - n[r] :] = rng.choice(np.arange(1, N_ITEMS + 1), size=n[r], replace=False)
    real = items != 0
    return {"items": items, "behaviours": real * (1 + items % 3), "gaps": real * (items + 100),
            "categories": real * (items % 7 + 1)}


def real_rows(w: dict[str, np.ndarray]) -> list[list[int]]:
    return [list(r[r != 0]) for r in w["items"]]


def assert_left_padded(w: dict[str, np.ndarray]) -> None:
    real = w["items"] != 0
    # real events are a suffix of every row: once a row turns real it stays real
    assert (np.diff(real.astype(int), axis=1) >= 0).all()
    for k in ("behaviours", "gaps", "categories"):
        assert (w[k][~real] == 0).all(), f"{k} not padded where items are"


def assert_sides_follow_items(w: dict[str, np.ndarray]) -> None:
    real = w["items"] != 0
    assert (w["gaps"][real] == w["items"][real] + 100).all(), "side features must move with their event"


@pytest.mark.parametrize(
    "op",
    [
        lambda w, r: crop(w, r, 0.0, 0.3),
        lambda w, r: prefix(w, r, 0.0),
        lambda w, r: reorder(w, r, 0.0, 0.5),
        lambda w, r: substitute(w, r, 0.0, 0.5, N_ITEMS),
        lambda w, r: mask(w, r, 0.0, 0.5, N_ITEMS + 1),
    ],
)
def test_probability_zero_is_identity(op) -> None:
    w = windows()
    out = op(w, np.random.default_rng(1))
    for k in w:
        assert np.array_equal(out[k], w[k])


def test_crop_keeps_a_contiguous_stretch() -> None:
    w = windows()
    out = crop(w, np.random.default_rng(1), 1.0, 0.3)
    assert_left_padded(out)
    assert_sides_follow_items(out)
    changed = 0
    for before, after in zip(real_rows(w), real_rows(out), strict=True):
        n = len(before)
        if n <= 2:
            assert after == before
            continue
        assert len(after) == max(2, int(np.ceil(n * 0.7)))
        starts = [i for i in range(n) if before[i : i + len(after)] == after]
        assert starts, "a crop must be a contiguous sub-sequence"
        changed += after != before
    assert changed > 0


def test_prefix_keeps_a_prefix_of_at_least_two() -> None:
    w = windows()
    out = prefix(w, np.random.default_rng(2), 1.0)
    assert_left_padded(out)
    assert_sides_follow_items(out)
    lens = []
    for before, after in zip(real_rows(w), real_rows(out), strict=True):
        assert after == before[: len(after)]
        assert len(after) >= min(2, len(before))
        lens.append(len(after) < len(before))
    assert any(lens)


def test_reorder_shuffles_one_stretch_only() -> None:
    w = windows(w=20)
    out = reorder(w, np.random.default_rng(3), 1.0, 0.5)
    assert_left_padded(out)
    assert_sides_follow_items(out)
    shuffled = 0
    for before, after in zip(real_rows(w), real_rows(out), strict=True):
        assert sorted(before) == sorted(after), "reorder must be a permutation"
        diff = [i for i in range(len(before)) if before[i] != after[i]]
        if diff:
            shuffled += 1
            assert diff[-1] - diff[0] + 1 <= max(2, int(len(before) * 0.5)), "only one stretch moves"
    assert shuffled > 0


def test_substitute_and_mask_touch_items_only() -> None:
    w = windows()
    cats = np.arange(N_ITEMS + 1) % 5 + 1
    sub = substitute(w, np.random.default_rng(4), 1.0, 0.5, N_ITEMS, cats)
    real = w["items"] != 0
    assert np.array_equal(sub["items"] != 0, real), "padding must stay padding"
    assert ((sub["items"][real] >= 1) & (sub["items"][real] <= N_ITEMS)).all()
    moved = sub["items"] != w["items"]
    assert moved.any() and np.array_equal(sub["behaviours"], w["behaviours"])
    assert (sub["categories"][moved] == cats[sub["items"][moved]]).all(), "a new item brings its category"

    m = mask(w, np.random.default_rng(5), 1.0, 0.3, N_ITEMS + 1)
    hidden = m["items"] == N_ITEMS + 1
    assert hidden.any() and not hidden[~real].any()
    assert 0.15 < hidden.sum() / real.sum() < 0.45
    assert np.array_equal(m["items"][~hidden], w["items"][~hidden])


def test_augmenter_is_seeded_and_applies_configured_ops() -> None:
    cfg = AugmentConfig(crop=0.5, reorder=0.5, substitute=0.5, mask=0.5, prefix=0.5, ratio=0.3)
    aug = Augmenter(cfg, N_ITEMS)
    w = windows()
    a = aug(w, np.random.default_rng(7))
    b = aug(w, np.random.default_rng(7))
    assert all(np.array_equal(a[k], b[k]) for k in w)
    assert not np.array_equal(a["items"], w["items"])
    assert_left_padded(a)
    assert not Augmenter(AugmentConfig(), N_ITEMS).active


def test_cl4srec_view_is_left_padded_with_a_real_last_event() -> None:
    w = windows()
    v = cl4srec_view(w, np.random.default_rng(0), 0.3, N_ITEMS + 1)
    assert_left_padded(v)
    has = lengths(w) > 0
    assert (v["items"][has, -1] != 0).all()


def test_masked_targets_are_dropped() -> None:
    w = mask(windows(), np.random.default_rng(0), 1.0, 0.4, N_ITEMS + 1)
    batch = drop_masked_targets(windows_to_batch(w), N_ITEMS + 1)
    assert batch.targets is not None
    assert (batch.targets <= N_ITEMS).all()
    assert (batch.targets != 0).any()


def test_info_nce() -> None:
    torch.manual_seed(0)
    z = torch.randn(8, 16)
    aligned = info_nce(z * 3, z * 3, 1.0)
    random = info_nce(z * 3, torch.randn(8, 16) * 3, 1.0)
    assert aligned < random
    # hand computation for two samples
    z1, z2 = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # row 0: logits vs [z1_1, z2_0, z2_1] = [0, 1, 0], positive = z2_0
    expected = -torch.log(torch.exp(torch.tensor(1.0)) / (2 + torch.exp(torch.tensor(1.0))))
    assert torch.allclose(info_nce(z1, z2, 1.0), expected)


def toy_sequences(n_users: int = 40, length: int = 12) -> Sequences:
    rng = np.random.default_rng(0)
    items = [list(1 + (rng.integers(0, N_ITEMS) + np.arange(length)) % N_ITEMS) for _ in range(n_users)]
    return Sequences.from_lists(items, [[1] * length] * n_users, None)


@pytest.mark.parametrize("contrastive", [0.0, 0.5])
def test_training_step_with_augmentation(contrastive: float) -> None:
    seq = toy_sequences()
    cfg = Config().override(
        model={"dim": 16, "heads": 2, "layers": 1, "max_len": 8},
        augment={"crop": 0.5, "mask": 0.5, "reorder": 0.5, "substitute": 0.3, "contrastive_weight": contrastive},
        train={"batch_size": 16},
    )
    model = build_model(cfg.model, DataSpec(n_items=N_ITEMS, n_behaviours=1))
    arrays = EventArrays.from_sequences(seq, cfg.model.time_buckets)
    loader, objective = augmented_training(model, cfg, seq, seq.offsets[1:], arrays)
    assert loader.augment is not None
    for batch in loader:
        model.zero_grad(set_to_none=True)
        out = objective(batch)
        assert torch.isfinite(out.total)
        assert ("contrastive" in out.parts) == (contrastive > 0)
        out.total.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        grad = model.item_emb.weight.grad
        assert grad is not None and grad.abs().sum() > 0, "the item table learns from every batch"
        assert grad[1:].abs().sum(-1).count_nonzero() > 1  # more than one item row moves


def test_mask_rejected_for_bidirectional_models() -> None:
    cfg = Config().override(model={"name": "bert4rec"}, augment={"mask": 0.2})
    model = build_model(ModelConfig(name="bert4rec", dim=16, heads=2), DataSpec(n_items=N_ITEMS, n_behaviours=1))
    with pytest.raises(ValueError, match="augment.mask"):
        check_augment(cfg, model)
    with pytest.raises(ValueError, match="augment.mask"):
        training_objective(model, cfg)
