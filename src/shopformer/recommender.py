"""Artifact -> top-k recommendations. No web imports: serving/ is a thin adapter over this.

>>> rec = Recommender.load("runs/demo/model")
>>> rec.recommend(["2268318", "2333346"], k=10).items

Every answer marks each item as a *repeat* (already in the user's history: all of it as given or
stored, not just the model's window) or a *discovery*; a caller can ask for discovery only
(``exclude_seen``) or for a minimum share of discoveries (``min_new_share``). Items whose score is
not finite are never returned, and exactly tied scores are ordered by training popularity, never by
item id (a model that scores the catalogue flat still gives a meaningful tail).
"""

from __future__ import annotations

import math
import threading
import warnings
from dataclasses import dataclass, field, replace
from itertools import chain
from pathlib import Path
from typing import NamedTuple, Protocol

import numpy as np
import torch

from shopformer.artifacts import ArtifactError, Run, load_run  # noqa: F401 - ArtifactError: re-exported for serving/
from shopformer.data.batches import Batch, EventArrays
from shopformer.data.schema import PAD
from shopformer.data.sequences import Sequences
from shopformer.data.vocab import UnknownBehaviourError
from shopformer.evaluation.explain import describe_events, occlusion
from shopformer.models.base import SequenceModel
from shopformer.onnx_encoder import OnnxEncoder


@dataclass(frozen=True)
class History:
    """One user's events, oldest first, in raw ids. Behaviours/timestamps are optional.

    An event without a behaviour (``None``) reads as the most frequent type; an event whose
    behaviour the model does not know is skipped and reported, never remapped to another type."""

    items: list[str]
    behaviours: list[str] | None = None
    timestamps: list[int] | None = None


@dataclass
class Recommendations:
    items: list[str]
    scores: list[float]
    fallback: bool = False  # True when the history had no known item (popularity answer)
    skipped: list[str] = field(default_factory=list)  # unknown item ids ignored in the history
    # behaviour names the model does not know: their events were ignored (like unknown items)
    skipped_behaviours: list[str] = field(default_factory=list)
    # per item: True = a repeat (the item is in the user's history, all of it as given or stored, events
    # of unknown behaviours included), False = a discovery. Left empty: no history, all discoveries.
    repeat: list[bool] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.repeat:
            self.repeat = [False] * len(self.items)
        elif len(self.repeat) != len(self.items):
            raise ValueError(f"{len(self.repeat)} repeat flags for {len(self.items)} items")

    def pairs(self) -> list[tuple[str, float]]:
        return list(zip(self.items, self.scores, strict=True))

    @property
    def n_new(self) -> int:
        """How many of the items are discoveries (not in the user's history)."""
        return self.repeat.count(False)


# Ask a multi-behaviour model for the next item whatever the behaviour (not a behaviour name).
ANY_BEHAVIOUR = "*"


@dataclass(frozen=True)
class RecRequest:
    """One request of a micro-batch: each may want its own k / exclusion (serving)."""

    history: History
    k: int = 10
    exclude_seen: bool | None = None  # None: the run's eval.exclude_seen (unless min_new_share is given)
    behaviour: str | None = None  # rank for this next-event type; see Recommender.target_behaviours
    min_new_share: float | None = None  # at least ceil(share * k) discoveries; see Recommender.max_repeats


class Encoded(NamedTuple):
    """One history in dense ids, with what was left out of it."""

    items: list[int]
    behaviours: list[int]
    times: list[int] | None  # None: the history has no timestamps
    skipped: list[str]  # unknown item ids (their events are left out)
    skipped_behaviours: list[str]  # unknown behaviour names (their events are left out)
    seen: list[int]  # every known item of the history (unknown-behaviour events too): what is a repeat
    positions: list[int]  # index in the history as given of each kept event (Recommender.explain)


@dataclass(frozen=True)
class Reason:
    """One history event that drove a recommended item (``Recommender.explain``)."""

    item: str  # raw id of the history event's item
    behaviour: str | None  # that event's behaviour name (None when the history gave none)
    position: int  # index in the history as given (0 = oldest)
    weight: float  # how much the recommended item's score drops when this event is removed (occlusion)


def describe_reasons(reasons: list[Reason]) -> str:
    """'because you viewed X and carted Y' ('' when there is no reason: a popularity answer)."""
    return describe_events([(r.item, r.behaviour) for r in reasons])


class ItemIndex(Protocol):
    """Top-k inner-product search over the model's output item embeddings (dense ids)."""

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, D) float queries -> (scores, ids), each (B, k); id -1 pads a short row."""
        ...


def _trim_padding(batch: Batch) -> Batch:
    """Drop the all-padding left columns: left padding never changes a representation, and a
    batch of short histories then costs a forward pass over their length, not ``max_len``."""
    real = (batch.items != PAD).any(dim=0)
    first = int(real.nonzero()[0]) if bool(real.any()) else batch.items.shape[1] - 1
    if first == 0:
        return batch
    return Batch(batch.items[:, first:], batch.behaviours[:, first:], batch.gaps[:, first:],
                 batch.categories[:, first:])


class Recommender:
    """Thread-safe inference over one run directory."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.model = run.model.eval()
        self.spec, self.cfg, self.vocabs = run.spec, run.config, run.vocabs
        self.max_len = self.model.max_len  # the window of the model's position table, not a config value
        self._lock = threading.Lock()  # torch modules are not re-entrant across threads
        pop = torch.as_tensor(run.item_counts, dtype=torch.float32).clone()
        pop[PAD] = float("-inf")
        self.popularity = pop
        # Strict popularity order (count desc, then dense id): the tie-breaker of exactly tied scores.
        counts = np.asarray(run.item_counts, dtype=np.float64)
        order = np.lexsort((np.arange(len(counts)), -counts))
        key = np.empty(len(counts), dtype=np.int64)
        key[order] = np.arange(len(counts), 0, -1)  # larger = more popular
        key[PAD] = 0
        self._pop_key = torch.from_numpy(key)
        # the same as floats for the tie path (a float32 select and topk are faster; exact below 2**24 items)
        self._pop_key_f = self._pop_key.to(torch.float32 if len(key) < 2**24 else torch.float64)
        self._default_behaviour = 1  # the most frequent type (vocabularies are frequency-sorted)
        self.backend = "torch"  # what computes user vectors: "torch" or "onnx" (use_backend)
        self._onnx: OnnxEncoder | None = None
        self._item_vectors: torch.Tensor | None = None

    @classmethod
    def load(cls, run_dir: str | Path, backend: str = "torch", threads: int = 1) -> Recommender:
        rec = cls(load_run(run_dir))
        rec.use_backend(backend, threads)
        return rec

    # -- user vectors: PyTorch, or the run's exported ONNX encoder (onnx_encoder.py) ------------------
    def use_backend(self, backend: str, threads: int = 1) -> None:
        """Compute user vectors with "torch" (the model) or "onnx" (``encoder.onnx`` beside the run,
        exported from these weights: OnnxBackendError, an ArtifactError, otherwise). The ONNX graph is
        the encoder only, so it serves models whose scores are user vector x item vectors
        (``supports_index``); task heads and blends need the PyTorch model (ArtifactError)."""
        if backend == "torch":
            self._onnx = self._item_vectors = None
        elif backend == "onnx":
            if not self.supports_index:
                raise ArtifactError(f"backend 'onnx' serves models scored by user vector x item vectors; "
                                    f"{self.version} has task heads, a blend or its own score_all: use backend 'torch'")
            self._onnx = OnnxEncoder.load(self.run, threads)
            self._item_vectors = self.model.output_embeddings().detach().float()
        else:
            raise ValueError(f"unknown backend {backend!r} (torch or onnx)")
        self.backend = backend

    def user_vectors(self, batch: Batch) -> torch.Tensor:
        """(B, D) float32 state after each history (``last_hidden``), by the chosen backend."""
        return self.model.last_hidden(batch).float() if self._onnx is None else self._onnx(batch)

    @property
    def version(self) -> str:
        return self.run.version

    # -- encoding ---------------------------------------------------------------------------
    def _encode(self, h: History) -> Encoded:
        """Dense ids of a history. Events of unknown items or of behaviours the model does not know
        (``Vocabs.behaviour_id``) are left out and reported; a missing behaviour (None) is the
        most frequent type."""
        iv = self.vocabs.items.index
        items, behs, times, skipped, skipped_behs, seen, positions = [], [], [], [], [], [], []
        for pos, raw in enumerate(h.items):
            idx = iv.get(str(raw), 0)
            if idx == PAD:
                skipped.append(str(raw))
                continue
            seen.append(idx)
            b = h.behaviours[pos] if h.behaviours is not None else None
            if b is None:
                bid = self._default_behaviour
            else:
                try:
                    bid = self.vocabs.behaviour_id(str(b))
                except UnknownBehaviourError:
                    skipped_behs.append(str(b))
                    continue
            items.append(idx)
            behs.append(bid)
            positions.append(pos)
            if h.timestamps is not None:
                times.append(int(h.timestamps[pos]))
        return Encoded(items, behs, (times if h.timestamps is not None else None), skipped, skipped_behs, seen,
                       positions)

    def make_batch(self, encoded: list[tuple[list[int], list[int], list[int] | None]]) -> Batch:
        """Left-padded Batch of the last ``max_len`` events of each encoded history.

        Time-gap features are per row: a history with timestamps gets its real gaps, one without
        gets the "unknown gap" bucket (as a data set without timestamps), so a row's features, and
        hence its scores, never depend on which other histories share its batch."""
        timed = np.array([self.spec.has_time and e[2] is not None for e in encoded], dtype=bool)
        items = [e[0] for e in encoded]
        cats = [self.run.item_category[np.asarray(x, dtype=np.int64)].tolist() for x in items]
        times = [list(e[2]) if t else [0] * len(e[0]) for e, t in zip(encoded, timed, strict=True)]  # type: ignore[arg-type]
        seq = Sequences.from_lists(items, [e[1] for e in encoded], times if timed.any() else None, cats)
        arrays = EventArrays.from_sequences(seq, self.cfg.model.time_buckets)
        if timed.any() and not timed.all():
            untimed = np.repeat(~timed, seq.lengths)
            arrays = replace(arrays, gaps=np.where(untimed, 1, arrays.gaps))  # 1 = unknown gap
        w = arrays.windows(seq.offsets[1:], seq.offsets[:-1], self.max_len)
        return Batch(**{k: torch.from_numpy(v) for k, v in w.items()})

    # -- scoring ----------------------------------------------------------------------------
    def score_histories(
        self, histories: list[History], behaviour: str | None = None
    ) -> tuple[torch.Tensor, list[list[int]], list[Encoded]]:
        """(B, n_items + 1) scores for many histories in one forward pass, the dense items of each
        history and its encoding (with the unknown items / behaviours it skipped).

        ``behaviour`` ranks for the next event of that type (see ``behaviour_id``)."""
        beh = self.behaviour_id(behaviour)
        encoded = [self._encode(h) for h in histories]
        seen = [e.items for e in encoded]
        known = [i for i, e in enumerate(encoded) if e.items]
        scores = self.popularity.unsqueeze(0).repeat(len(histories), 1)
        if known:
            batch = self.make_batch([encoded[i][:3] for i in known])
            with self._lock, torch.inference_mode():
                scores[torch.tensor(known)] = self._score(batch, beh)
        return scores, seen, encoded

    def _score(self, batch: Batch, behaviour: int | torch.Tensor | None) -> torch.Tensor:
        """(B, n_items + 1) the model's scores, or the run's validation-tuned blend with a baseline."""
        if self._onnx is not None and self._item_vectors is not None and (
                behaviour is None or not bool(torch.as_tensor(behaviour).ne(PAD).any())):
            scores = self._onnx(batch) @ self._item_vectors.T  # = score_all of a supports_index model
            scores[:, PAD] = float("-inf")
            return scores
        scores = self.model.score_all(batch, behaviour).float()
        return scores if self.run.blend is None else self.run.blend.combine(scores, batch)

    def recommend_many(
        self,
        histories: list[History],
        k: int = 10,
        exclude_seen: bool | None = None,
        behaviour: str | None = None,
        min_new_share: float | None = None,
    ) -> list[Recommendations]:
        """Top-k for many histories; ``behaviour`` asks for e.g. likely purchases vs likely views.

        ``exclude_seen`` / ``min_new_share``: how many of the k items may be repeats (``max_repeats``)."""
        if k < 1:
            raise ValueError("k must be >= 1")
        k = min(k, self.spec.n_items)
        max_rep = self.max_repeats(k, exclude_seen, min_new_share)
        scores, _, encoded = self.score_histories(histories, behaviour)
        ranked = self._rank(scores, [e.seen for e in encoded], [k] * len(histories), [max_rep] * len(histories))
        out = []
        for e, (ids, vals, rep) in zip(encoded, ranked, strict=True):
            if e.skipped:
                warnings.warn(f"skipped {len(e.skipped)} unknown item id(s): {e.skipped[:5]}", stacklevel=2)
            if e.skipped_behaviours:
                known = ", ".join(self.vocabs.behaviours.tokens[1:])
                warnings.warn(f"skipped {len(e.skipped_behaviours)} event(s) of unknown behaviour(s): "
                              f"{sorted(set(e.skipped_behaviours))[:5]} (known: {known})", stacklevel=2)
            out.append(Recommendations(self.vocabs.items.decode(ids), vals, fallback=not e.items, skipped=e.skipped,
                                       skipped_behaviours=e.skipped_behaviours, repeat=rep))
        return out

    def recommend(
        self,
        items: list[str],
        k: int = 10,
        behaviours: list[str] | None = None,
        timestamps: list[int] | None = None,
        exclude_seen: bool | None = None,
        behaviour: str | None = None,
        min_new_share: float | None = None,
    ) -> Recommendations:
        """Top-k next items for one history of raw item ids (oldest first).

        ``behaviour`` (a behaviour name of the data, e.g. the purchase type, or ``ANY_BEHAVIOUR``)
        ranks the items the next event *of that type* will be about; None is the model's default
        (its target behaviour for next-purchase / multi runs, any behaviour otherwise).
        ``min_new_share``: at least ceil(share * k) of the items are discoveries (see ``max_repeats``)."""
        return self.recommend_many([History(list(items), behaviours, timestamps)], k, exclude_seen, behaviour,
                                   min_new_share)[0]

    # -- repeats and discoveries; ties --------------------------------------------------------------
    def max_repeats(self, k: int, exclude_seen: bool | None = None, min_new_share: float | None = None) -> int:
        """How many of ``k`` items may be repeats: ``k - ceil(share * k)``.

        The share is ``min_new_share`` (0..1), or 1.0 (discovery only) when ``exclude_seen`` is true,
        whichever is stricter. ``exclude_seen`` None is the run's ``eval.exclude_seen``, unless a
        ``min_new_share`` is given: then the caller has said which mix they want. A row with fewer
        discoveries than asked for gets a shorter list, never more repeats than this."""
        if min_new_share is not None and not 0.0 <= min_new_share <= 1.0:  # NaN fails too
            raise ValueError(f"min_new_share must be between 0 and 1 (got {min_new_share})")
        exclude = (self.cfg.eval.exclude_seen and min_new_share is None) if exclude_seen is None else exclude_seen
        share = 1.0 if exclude else (min_new_share or 0.0)
        return k - math.ceil(share * k - 1e-9)  # 1e-9: 0.3 * 10 is 3.0000000000000004, and needs 3

    def _topk(self, scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``scores.topk(k)`` whose choice among the items tied with the k-th score is the most popular
        ones, not an arbitrary (id-order) subset; ``_pick`` then orders equal scores by popularity.
        ``scores`` (B, n) has no NaN / +inf. A row is redone only when its (k+1)-th score equals its
        k-th (a tie across the cut), so the common case costs one topk of k + 1."""
        top = scores.topk(min(k + 1, scores.shape[1]), dim=1)
        vals, ids = top.values[:, :k], top.indices[:, :k]
        if top.values.shape[1] == k:  # k is the whole row: nothing is left out
            return vals, ids
        t = vals[:, -1:]
        ambiguous = (top.values[:, k] == t[:, 0]) & torch.isfinite(t[:, 0])
        if bool(ambiguous.any()):
            rows = ambiguous.nonzero()[:, 0]
            tr = t[rows]
            part = scores if len(rows) == len(scores) else scores[rows]
            key = torch.where(part == tr, self._pop_key_f, -1.0)  # tied items by popularity, others last
            tied = key.topk(k, dim=1).indices
            above = (vals[rows] > tr).sum(1, keepdim=True)  # these are in every exact top-k
            j = torch.arange(k).unsqueeze(0)
            ids[rows] = torch.where(j < above, ids[rows], tied.gather(1, (j - above).clamp(min=0)))
        return vals, ids

    def _pick(
        self, vals: torch.Tensor, ids: torch.Tensor, rep: torch.Tensor, ks: list[int], max_reps: list[int]
    ) -> list[tuple[list[int], list[float], list[bool]]]:
        """Per row of candidates (B, C): order by score, ties by popularity; drop non-finite scores;
        keep every discovery and the first ``max_reps[r]`` repeats, up to ``ks[r]`` items. So the best
        discoveries fill in for the repeats left out, each group keeps the model's order, and the list
        keeps the overall ranking otherwise."""
        order = self._pop_key[ids].argsort(dim=1, descending=True, stable=True)
        vals, ids, rep = vals.gather(1, order), ids.gather(1, order), rep.gather(1, order)
        order = vals.argsort(dim=1, descending=True, stable=True)  # stable: ties stay in popularity order
        vals, ids, rep = vals.gather(1, order), ids.gather(1, order), rep.gather(1, order)
        valid = torch.isfinite(vals) & (ids > PAD)
        rep = rep & valid
        accept = valid & (~rep | (rep.cumsum(1) <= torch.tensor(max_reps).unsqueeze(1)))
        keep = accept & (accept.cumsum(1) <= torch.tensor(ks).unsqueeze(1))
        counts = keep.sum(1).tolist()
        flat_ids, flat_vals, flat_rep = ids[keep].tolist(), vals[keep].tolist(), rep[keep].tolist()
        out, start = [], 0
        for n in counts:
            out.append((flat_ids[start:start + n], flat_vals[start:start + n], flat_rep[start:start + n]))
            start += n
        return out

    @staticmethod
    def _seen_matrix(seen: list[list[int]]) -> torch.Tensor:
        """(B, L) each row's distinct seen items, ascending, padded with PAD (sorted first)."""
        lens = np.array([len(s) for s in seen], dtype=np.int64)
        width = max(int(lens.max(initial=0)), 1)
        mat = np.zeros((len(seen), width), dtype=np.int64)
        if lens.sum():
            rows = np.repeat(np.arange(len(seen)), lens)
            cols = np.arange(int(lens.sum())) - np.repeat(np.cumsum(lens) - lens, lens)
            mat[rows, cols] = np.fromiter(chain.from_iterable(seen), dtype=np.int64, count=int(lens.sum()))
        m = torch.from_numpy(mat).sort(dim=1).values
        dup = torch.zeros_like(m, dtype=torch.bool)
        dup[:, 1:] = m[:, 1:] == m[:, :-1]
        return m.masked_fill(dup, PAD).sort(dim=1).values

    def _rank(
        self, scores: torch.Tensor, seen: list[list[int]], ks: list[int], max_reps: list[int]
    ) -> list[tuple[list[int], list[float], list[bool]]]:
        """Exact top-k of each row of ``scores`` (B, n_items + 1; changed in place) with repeat flags:
        (dense ids, scores, repeat) per row. Candidates: every seen item of the row and the top
        ``max(ks)`` of the others (tie-broken by popularity), then ``_pick``."""
        if not ks:
            return []
        with torch.inference_mode():  # scores may be an inference tensor (model output): edited in place
            neg = float("-inf")
            torch.nan_to_num_(scores, nan=neg, posinf=neg, neginf=neg)  # never presented as if ranked
            mat = self._seen_matrix(seen)
            rep_vals = scores.gather(1, mat).masked_fill(mat == PAD, neg)
            scores.scatter_(1, mat, neg)  # the seen items compete as repeats only (PAD is -inf anyway)
            new_vals, new_ids = self._topk(scores, min(max(ks), self.spec.n_items))
            rep = torch.cat([torch.ones_like(mat, dtype=torch.bool), torch.zeros_like(new_ids, dtype=torch.bool)], 1)
            return self._pick(torch.cat([rep_vals, new_vals], 1), torch.cat([mat, new_ids], 1), rep, ks, max_reps)

    def _index_rank(
        self, index: ItemIndex, hidden: torch.Tensor, seen: list[list[int]], ks: list[int], max_reps: list[int]
    ) -> list[tuple[list[int], list[float], list[bool]]]:
        """As ``_rank``, over the index's candidates: ``k`` plus the row's distinct seen items, so any
        mix of repeats and discoveries still finds k. Ties are broken among the candidates only."""
        mat = self._seen_matrix(seen)
        n_seen = (mat != PAD).sum(1).tolist()
        want = min(max(k + n for k, n in zip(ks, n_seen, strict=True)), self.spec.n_items)
        with torch.inference_mode():
            vals, ids = index.search(hidden, want)
            ids = ids.long().clamp(min=PAD)  # -1 pads a short row
            vals = vals.float().masked_fill(~torch.isfinite(vals) | (ids == PAD), float("-inf"))
            pos = torch.searchsorted(mat, ids).clamp(max=mat.shape[1] - 1)
            rep = (mat.gather(1, pos) == ids) & (ids != PAD)
            return self._pick(vals, ids, rep, ks, max_reps)

    # -- serving: per-request k / exclusion in one forward pass, optional item index ---------------
    @property
    def target_behaviours(self) -> tuple[str, ...]:
        """Next-event types this model can rank for (plus ``ANY_BEHAVIOUR``); empty: next-item only."""
        if self.model.heads is None:
            return ()
        return (ANY_BEHAVIOUR, *self.vocabs.behaviours.tokens[1:])

    @property
    def supports_index(self) -> bool:
        """True when scores are ``last_hidden @ output_embeddings().T`` (so an ItemIndex is exact).

        Task heads mix a history pointer with the catalogue (a repeat / explore gate) and a blend
        adds a baseline's scores, so either rules an index out."""
        return (type(self.model).score_all is SequenceModel.score_all and self.model.heads is None
                and self.run.blend is None)

    def recommend_requests(self, requests: list[RecRequest], index: ItemIndex | None = None) -> list[Recommendations]:
        """Top-k for many requests with one forward pass; no warnings (callers report ``skipped``).

        Without ``index`` the whole catalogue is scored (exact); with one, the user vectors are
        searched in it, asking for ``k`` plus the number of seen items so any mix of repeats and
        discoveries still leaves k. Histories without a known item rank by popularity (fallback),
        with the same repeat / discovery rules.
        """
        behaviours, ks, max_reps = [], [], []
        for r in requests:
            if r.k < 1:
                raise ValueError("k must be >= 1")
            behaviours.append(self.behaviour_id(r.behaviour))  # an unknown name is an error, never a fallback
            ks.append(min(r.k, self.spec.n_items))
            max_reps.append(self.max_repeats(ks[-1], r.exclude_seen, r.min_new_share))
        if index is not None and not self.supports_index:
            raise ValueError(f"model {self.cfg.model.name} overrides score_all; an item index would change its scores")
        encoded = [self._encode(r.history) for r in requests]
        seen = [e.seen for e in encoded]
        # One forward pass: make_batch builds every row's features from that row alone (time gaps
        # included), and left padding changes nothing, so an answer never depends on its batch.
        known = [i for i, e in enumerate(encoded) if e.items]
        fallback = [i for i, e in enumerate(encoded) if not e.items]
        ranked: list[tuple[list[int], list[float], list[bool]]] = [([], [], [])] * len(requests)
        model_scores = hidden = None
        if known:
            batch = _trim_padding(self.make_batch([encoded[i][:3] for i in known]))
            with self._lock, torch.inference_mode():
                if index is None:
                    beh = [behaviours[i] for i in known]
                    model_scores = self._score(batch, None if self.model.heads is None else torch.tensor(
                        [self.model.heads.default_behaviour if b is None else b for b in beh]))
                else:
                    hidden = self.user_vectors(batch)
        if index is None:
            if not fallback and model_scores is not None:
                scores = model_scores
            else:
                scores = self.popularity.unsqueeze(0).repeat(len(requests), 1)
                if model_scores is not None:
                    scores[torch.tensor(known)] = model_scores
            ranked = self._rank(scores, seen, ks, max_reps)
        else:
            if hidden is not None:
                rows = self._index_rank(index, hidden, [seen[i] for i in known], [ks[i] for i in known],
                                        [max_reps[i] for i in known])
                for i, row in zip(known, rows, strict=True):
                    ranked[i] = row
            if fallback:
                rows = self._rank(self.popularity.unsqueeze(0).repeat(len(fallback), 1), [seen[i] for i in fallback],
                                  [ks[i] for i in fallback], [max_reps[i] for i in fallback])
                for i, row in zip(fallback, rows, strict=True):
                    ranked[i] = row
        return [Recommendations(self.vocabs.items.decode(ids), vals, fallback=not e.items, skipped=e.skipped,
                                skipped_behaviours=e.skipped_behaviours, repeat=rep)
                for e, (ids, vals, rep) in zip(encoded, ranked, strict=True)]

    def popular(self, k: int = 10) -> Recommendations:
        k = min(k, self.spec.n_items)
        ((ids, vals, _),) = self._rank(self.popularity.unsqueeze(0).clone(), [[]], [k], [k])
        return Recommendations(self.vocabs.items.decode(ids), vals, fallback=True)

    def similar_items(self, item: str, k: int = 10) -> Recommendations:
        """Nearest items by cosine similarity of the model's output item embeddings."""
        idx = self.vocabs.items.index.get(str(item), 0)
        if idx == PAD:
            raise KeyError(f"unknown item id {item!r}")
        with torch.inference_mode():
            emb = torch.nn.functional.normalize(self.model.output_embeddings().float(), dim=-1)
            sims = emb @ emb[idx]
            sims[PAD] = float("-inf")
            sims[idx] = float("-inf")
        top = sims.topk(min(k, self.spec.n_items - 1))
        return Recommendations(self.vocabs.items.decode(top.indices.tolist()), top.values.tolist())

    # -- explanations (evaluation/explain.py) ------------------------------------------------------
    def explain(self, history: History | list[str], items: list[str], n: int = 3, behaviour: str | None = None,
                recent: int | None = None) -> list[list[Reason]]:
        """For each recommended item (raw id), the n history events that drove it most, strongest first.

        Occlusion: an event's weight is the drop of the item's score (the model's own, before any
        blend) when the event is removed from the history; only positive weights are reasons, so a
        list may be shorter than ``n`` (empty: nothing in the history raised the item, e.g. a
        popularity answer). All leave-one-out copies and all items share one forward pass. Only
        events in the model's window (the last ``max_len`` known events) are weighed, or the last
        ``recent`` of them. ``behaviour``: the next-event type the items were ranked for."""
        if n < 1:
            raise ValueError("n must be >= 1")
        h = history if isinstance(history, History) else History(list(history))
        beh = self.behaviour_id(behaviour)
        ids = [self.vocabs.items.index.get(str(it), PAD) for it in items]
        unknown = [str(it) for it, i in zip(items, ids, strict=True) if i == PAD]
        if unknown:
            raise ValueError(f"unknown item id(s) to explain: {unknown[:5]}")
        e = self._encode(h)
        if not e.items or not ids:
            return [[] for _ in items]
        cats = self.run.item_category[np.asarray(e.items, dtype=np.int64)].tolist()
        timed = self.spec.has_time and e.times is not None
        seq = Sequences.from_lists([e.items], [e.behaviours], [e.times] if timed else None, [cats])  # type: ignore[list-item]
        with self._lock:
            attr = occlusion(self.model, seq, np.asarray([ids]), self.cfg.model.time_buckets, beh, recent=recent)
        given = h.behaviours
        out = []
        for j in range(len(ids)):
            out.append([Reason(str(h.items[p]), None if given is None or given[p] is None else str(given[p]), p, w)
                        for p, w in ((e.positions[ev], w) for ev, w in attr.top(0, j, n))])
        return out

    # -- multi-behaviour heads (models/heads.py) --------------------------------------------------
    def behaviour_id(self, name: str | None) -> int | None:
        """Dense id of a behaviour name to rank for; None = the model's default, ANY_BEHAVIOUR = 0.

        Names resolve through ``Vocabs.behaviour_id``: an unknown name raises
        ``UnknownBehaviourError`` (a ValueError listing the known names); a known one raises
        ValueError for a model without behaviour-specific heads."""
        if name is None:
            return None
        if name == ANY_BEHAVIOUR:
            return PAD
        try:
            bid = self.vocabs.behaviour_id(name)
        except UnknownBehaviourError as err:
            raise UnknownBehaviourError(f"{err} (or {ANY_BEHAVIOUR!r} for any)") from None
        if self.model.heads is None:
            raise ValueError(f"behaviour {name!r}: model {self.version} has no behaviour-specific head "
                             "(trained with task.kind='next-item')")
        return bid

    def knows_behaviour(self, name: str) -> bool:
        """True when ``name`` is a behaviour of this model's vocabulary (``Vocabs.behaviour_id``)."""
        try:
            self.vocabs.behaviour_id(name)
        except UnknownBehaviourError:
            return False
        return True

    @property
    def head_parts(self) -> tuple[str, ...]:
        """The task heads of this run ('item', 'target', 'action', 'intent'); () for a next-item run."""
        return () if self.model.heads is None else tuple(self.model.heads.parts)

    @property
    def target_behaviour(self) -> str | None:
        """The behaviour the intent / next-purchase heads are about (None without heads)."""
        if self.model.heads is None:
            return None
        return self.vocabs.behaviours.tokens[int(self.model.heads.target)]

    def _head_batch(self, history: History | list[str]) -> Batch:
        h = history if isinstance(history, History) else History(list(history))
        items, behs, times = self._encode(h)[:3]
        if not items:
            raise ValueError("the history has no known item; behaviour heads need at least one event")
        return self.make_batch([(items, behs, times)])

    def predict_next_action(self, history: History | list[str]) -> dict[str, float]:
        """Probability of each behaviour type for the user's next event (sums to 1)."""
        batch = self._head_batch(history)
        with self._lock, torch.inference_mode():
            probs = torch.softmax(self.model.action_logits(batch).float(), -1)[0]
        return {name: float(probs[i]) for i, name in enumerate(self.vocabs.behaviours.tokens) if i != PAD}

    def purchase_intent(self, history: History | list[str]) -> float:
        """Calibrated probability that the target behaviour occurs within the next N events.

        Calibration (Platt scaling fitted on the validation window) is stored in the run's weights."""
        batch = self._head_batch(history)
        with self._lock, torch.inference_mode():
            heads = self.model.heads
            if heads is None:
                raise ValueError("this model has no task heads (trained with task.kind='next-item')")
            return float(heads.calibrated(self.model.intent_logit(batch))[0])


def describe_actions(probs: dict[str, float], digits: int = 3) -> str:
    """'buy 0.412, pv 0.301, ...': next-action probabilities, most likely first."""
    return ", ".join(f"{b} {p:.{digits}f}" for b, p in sorted(probs.items(), key=lambda kv: -kv[1]))
