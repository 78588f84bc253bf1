"""Grow a trained model to larger vocabularies (continuous learning), for any registered model.

``grow_model`` builds the same architecture for the grown ``DataSpec`` and copies every trained
tensor to the same dense ids: old items, behaviours and categories keep their rows, the [MASK]
row of masked models moves to the new end, and new rows start from ``new_item_vectors``
(items) or fresh / zero values (behaviours, categories). Without task heads an old history gets
exactly the old scores on the old items before any retraining. With heads, growing the *items*
keeps the raw item logits too; growing the *behaviours* widens the heads' summary features (new
columns start at zero weight, but the LayerNorm in front of each head now averages over more
features, so head outputs move slightly until the retrain).

New item vectors, in order of preference (``new_item_vectors``; the count of each is recorded):

* ``text`` — the item has a title or attributes: mean vector of the ``k`` old items with the most
  similar side vectors
  (the same rule as ``models.text.fill_cold_from_neighbours``);
* ``cooccurrence`` — the item appears in the new events: mean vector of the old items within
  ``window`` events of it in the same users' sequences (weighted by how often);
* ``mean`` — otherwise the mean old item vector.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from shopformer.config import TaskConfig
from shopformer.data.corpus import DataSpec
from shopformer.data.sequences import Sequences
from shopformer.models import build_model
from shopformer.models.base import SequenceModel
from shopformer.models.text import ItemText, TextFusion

INIT_METHODS = ("text", "cooccurrence", "mean")
_ITEM_TABLE = "item_emb.weight"
_OUT_TABLE = "out_emb.weight"  # model.tie_output = false: the output vectors' own table, same rows
_SUMMARY_HEADS = ("heads.gate.", "heads.action.", "heads.intent.")


@dataclass(frozen=True)
class NewItems:
    vectors: torch.Tensor  # (n_new, D) start vectors of items n_old + 1 .. n_new
    methods: tuple[str, ...]  # per new item: one of INIT_METHODS

    def counts(self) -> dict[str, int]:
        return {m: self.methods.count(m) for m in INIT_METHODS}


def new_item_vectors(
    model: SequenceModel, n_items: int, seq: Sequences | None = None, text: ItemText | None = None,
    k: int = 10, window: int = 3,
) -> NewItems:
    """Start vectors for the items ``model.spec.n_items + 1 .. n_items`` (see the module docstring).

    ``seq``: events encoded with the grown vocabulary (co-occurrence); ``text``: titles aligned
    to the grown vocabulary (rows = dense ids, at least ``n_items + 1`` of them)."""
    n_old = model.spec.n_items
    n_new = n_items - n_old
    if n_new < 0:
        raise ValueError(f"the grown vocabulary has {n_items} items, fewer than the model's {n_old}")
    with torch.no_grad():
        # the scoring table's own rows (ids 1..n_old), not output_embeddings(): with model.cosine those are unit
        # vectors, and a tied table would then give new items inputs of another scale than the old ones
        old = model.scoring_table().weight[1 : n_old + 1].detach().float().clone()  # (n_old, D)
    dim = old.shape[1]
    vectors = torch.zeros(n_new, dim)
    methods = ["mean"] * n_new
    done = np.zeros(n_new, bool)
    if n_new == 0:
        return NewItems(vectors, ())
    mean = old.mean(0) if n_old else torch.zeros(dim)
    if text is not None and n_old:
        has = np.asarray(text.has_text, bool)
        if len(has) < n_items + 1:
            raise ValueError(f"item text has {len(has)} rows, the grown vocabulary needs {n_items + 1}")
        warm = np.flatnonzero(has[1 : n_old + 1]) + 1
        cold = np.flatnonzero(has[n_old + 1 : n_items + 1]) + n_old + 1
        if len(warm) and len(cold):
            tv = torch.from_numpy(text.dense())
            sims = tv[torch.from_numpy(cold)] @ tv[torch.from_numpy(warm)].T  # (C, W) cosine (unit rows)
            top = sims.topk(min(k, len(warm)), dim=1).indices
            vectors[torch.from_numpy(cold - n_old - 1)] = old[torch.from_numpy(warm - 1)][top].mean(1)
            done[cold - n_old - 1] = True
            for i in cold - n_old - 1:
                methods[i] = "text"
    if seq is not None and n_old:
        sums, weight = _cooccurrence(seq, n_old, n_items, old, window)
        use = (weight > 0).numpy() & ~done
        idx = torch.from_numpy(np.flatnonzero(use))
        vectors[idx] = sums[idx] / weight[idx, None]
        done |= use
        for i in np.flatnonzero(use):
            methods[i] = "cooccurrence"
    vectors[torch.from_numpy(~done)] = mean
    return NewItems(vectors, tuple(methods))


def _cooccurrence(seq: Sequences, n_old: int, n_items: int, old: torch.Tensor, window: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(n_new, D) sums of the old vectors near each new item in the same user's sequence, (n_new,) counts."""
    items = seq.items.astype(np.int64)
    rows = seq.user_row_of_event()
    n_new = n_items - n_old
    sums, weight = torch.zeros(n_new, old.shape[1]), torch.zeros(n_new)
    is_new = items > n_old
    for off in range(-window, window + 1):
        if off == 0 or len(items) <= abs(off):
            continue
        a = np.arange(max(0, -off), len(items) - max(0, off))  # event a, partner a + off
        b = a + off
        keep = is_new[a] & (rows[a] == rows[b]) & (items[b] >= 1) & (items[b] <= n_old)
        a, b = a[keep], b[keep]
        target = torch.from_numpy(items[a] - n_old - 1)
        sums.index_add_(0, target, old[torch.from_numpy(items[b] - 1)])
        weight.index_add_(0, target, torch.ones(len(a)))
    return sums, weight


def grow_model(model: SequenceModel, spec: DataSpec, task: TaskConfig | None = None,
               new_items: NewItems | None = None) -> SequenceModel:
    """A new model of the same architecture for the grown ``spec``, holding ``model``'s weights at
    the same dense ids (see the module docstring); ``model`` itself is left unchanged."""
    old = model.spec
    if isinstance(model.item_emb, TextFusion):
        raise ValueError("fold the item text into the table first (models.text.fold_text)")
    if spec.has_time != old.has_time:
        raise ValueError("the grown data must agree with the model on having timestamps")
    for name in ("n_items", "n_behaviours", "n_categories"):
        if getattr(spec, name) < getattr(old, name):
            raise ValueError(f"vocabularies only grow: {name} {getattr(old, name)} -> {getattr(spec, name)}")
    if (task is None or task.kind == "next-item") != (model.heads is None):
        raise ValueError("task does not match the model: pass the run's task config")
    grown = build_model(model.cfg, spec, task=task)
    d_items = spec.n_items - old.n_items
    if new_items is not None and new_items.vectors.shape[0] != d_items:
        raise ValueError(f"{new_items.vectors.shape[0]} new item vectors for {d_items} new items")
    old_state = model.state_dict()
    state = {}
    for key, fresh in grown.state_dict().items():
        if key not in old_state:
            state[key] = torch.zeros_like(fresh)  # a module the old spec did not need: starts silent
            continue
        state[key] = _grow_tensor(key, old_state[key], fresh, old, spec, model.cfg.dim)
    if d_items:
        # new_items holds scoring-table vectors (new_item_vectors reads that table's rows): they go to the
        # scoring table; an untied input table gives its new rows the mean old row
        scoring = _OUT_TABLE if _OUT_TABLE in state else _ITEM_TABLE
        for key in (k for k in (_ITEM_TABLE, _OUT_TABLE) if k in state):
            table = state[key]
            table[old.n_items + 1 : spec.n_items + 1] = (
                new_items.vectors.to(table.dtype) if new_items is not None and key == scoring
                else table[1 : old.n_items + 1].mean(0)
            )
    grown.load_state_dict(state)
    grown.train(model.training)
    return grown


def _grow_tensor(key: str, old: torch.Tensor, fresh: torch.Tensor, a: DataSpec, b: DataSpec, dim: int
                 ) -> torch.Tensor:
    if old.shape == fresh.shape:
        return old.detach().clone()
    if old.dim() != fresh.dim():
        raise ValueError(f"cannot grow {key}: {tuple(old.shape)} -> {tuple(fresh.shape)}")
    out = fresh.detach().clone()
    index: list[torch.Tensor] = []
    summary = key.startswith(_SUMMARY_HEADS)
    for d, (so, sn) in enumerate(zip(old.shape, fresh.shape, strict=True)):
        if so == sn:
            index.append(torch.arange(so))
        elif key in (_ITEM_TABLE, _OUT_TABLE) and d == 0:  # rows 0..n_old stay, [MASK] moves to the new end
            index.append(torch.cat([torch.arange(a.n_items + 1), torch.tensor([b.n_items + 1])]))
        elif "cat_emb" in key:
            index.append(torch.arange(so))
        elif summary and sn - so == 2 * (b.n_behaviours - a.n_behaviours):
            index.append(_summary_index(so, a.n_behaviours, b.n_behaviours, dim, gate=key.startswith("heads.gate.")))
            if d == fresh.dim() - 1 and fresh.dim() == 2:  # a Linear reading the summary: new inputs start silent
                out.zero_()
        elif sn - so == b.n_behaviours - a.n_behaviours:
            index.append(torch.arange(so))
        else:
            raise ValueError(f"cannot grow {key}: {tuple(old.shape)} -> {tuple(fresh.shape)}")
    out[torch.meshgrid(*index, indexing="ij")] = old.detach().to(out.dtype)
    return out


def _summary_index(width: int, nb_old: int, nb_new: int, dim: int, gate: bool) -> torch.Tensor:
    """New positions of the old columns of the heads' summary features ``[hidden, mean, recent
    shares (nb), overall shares (nb), log count]`` (after the query vector for the gate)."""
    start = (dim if gate else 0) + 2 * dim  # first behaviour-share column
    i = torch.arange(width)
    shift = torch.where(i >= start + nb_old, nb_new - nb_old, 0) + torch.where(i >= start + 2 * nb_old,
                                                                              nb_new - nb_old, 0)
    return i + shift

