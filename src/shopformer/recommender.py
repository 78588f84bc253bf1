"""Artifact -> top-k recommendations. No web imports: serving/ is a thin adapter over this.

>>> rec = Recommender.load("runs/demo/model")
>>> rec.recommend(["2268318", "2333346"], k=10).items
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple, Protocol

import numpy as np
import torch

from shopformer.artifacts import ArtifactError, Run, load_run  # noqa: F401 - ArtifactError: re-exported for serving/
from shopformer.data.batches import Batch, EventArrays
from shopformer.data.schema import PAD
from shopformer.data.sequences import Sequences
from shopformer.data.vocab import UnknownBehaviourError
from shopformer.models.base import SequenceModel


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

    def pairs(self) -> list[tuple[str, float]]:
        return list(zip(self.items, self.scores, strict=True))


# Ask a multi-behaviour model for the next item whatever the behaviour (not a behaviour name).
ANY_BEHAVIOUR = "*"


@dataclass(frozen=True)
class RecRequest:
    """One request of a micro-batch: each may want its own k / exclusion (serving)."""

    history: History
    k: int = 10
    exclude_seen: bool | None = None  # None: the run's eval.exclude_seen
    behaviour: str | None = None  # rank for this next-event type; see Recommender.target_behaviours


class Encoded(NamedTuple):
    """One history in dense ids, with what was left out of it."""

    items: list[int]
    behaviours: list[int]
    times: list[int] | None  # None: the history has no timestamps
    skipped: list[str]  # unknown item ids (their events are left out)
    skipped_behaviours: list[str]  # unknown behaviour names (their events are left out)


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
        self._default_behaviour = 1  # the most frequent type (vocabularies are frequency-sorted)

    @classmethod
    def load(cls, run_dir: str | Path) -> Recommender:
        return cls(load_run(run_dir))

    @property
    def version(self) -> str:
        return self.run.version

    # -- encoding ---------------------------------------------------------------------------
    def _encode(self, h: History) -> Encoded:
        """Dense ids of a history. Events of unknown items or of behaviours the model does not know
        (``Vocabs.behaviour_id``) are left out and reported; a missing behaviour (None) is the
        most frequent type."""
        iv = self.vocabs.items.index
        items, behs, times, skipped, skipped_behs = [], [], [], [], []
        for pos, raw in enumerate(h.items):
            idx = iv.get(str(raw), 0)
            if idx == PAD:
                skipped.append(str(raw))
                continue
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
            if h.timestamps is not None:
                times.append(int(h.timestamps[pos]))
        return Encoded(items, behs, (times if h.timestamps is not None else None), skipped, skipped_behs)

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
                scores[torch.tensor(known)] = self.model.score_all(batch, beh).float()
        return scores, seen, encoded

    def recommend_many(
        self,
        histories: list[History],
        k: int = 10,
        exclude_seen: bool | None = None,
        behaviour: str | None = None,
    ) -> list[Recommendations]:
        """Top-k for many histories; ``behaviour`` asks for e.g. likely purchases vs likely views."""
        if k < 1:
            raise ValueError("k must be >= 1")
        exclude = self.cfg.eval.exclude_seen if exclude_seen is None else exclude_seen
        scores, seen, encoded = self.score_histories(histories, behaviour)
        if exclude:
            rows = np.repeat(np.arange(len(seen)), [len(s) for s in seen])
            cols = np.fromiter((i for s in seen for i in s), dtype=np.int64, count=len(rows))
            scores[torch.from_numpy(rows), torch.from_numpy(cols)] = float("-inf")
        k = min(k, self.spec.n_items)
        top = scores.topk(k, dim=1)
        out = []
        for r in range(len(histories)):
            ids, vals = top.indices[r].tolist(), top.values[r].tolist()
            keep = [j for j, v in enumerate(vals) if v != float("-inf")]
            skipped, skipped_behs = encoded[r].skipped, encoded[r].skipped_behaviours
            if skipped:
                warnings.warn(f"skipped {len(skipped)} unknown item id(s): {skipped[:5]}", stacklevel=2)
            if skipped_behs:
                known = ", ".join(self.vocabs.behaviours.tokens[1:])
                warnings.warn(f"skipped {len(skipped_behs)} event(s) of unknown behaviour(s): "
                              f"{sorted(set(skipped_behs))[:5]} (known: {known})", stacklevel=2)
            out.append(Recommendations(
                items=self.vocabs.items.decode([ids[j] for j in keep]),
                scores=[float(vals[j]) for j in keep],
                fallback=not seen[r],
                skipped=skipped,
                skipped_behaviours=skipped_behs,
            ))
        return out

    def recommend(
        self,
        items: list[str],
        k: int = 10,
        behaviours: list[str] | None = None,
        timestamps: list[int] | None = None,
        exclude_seen: bool | None = None,
        behaviour: str | None = None,
    ) -> Recommendations:
        """Top-k next items for one history of raw item ids (oldest first).

        ``behaviour`` (a behaviour name of the data, e.g. the purchase type, or ``ANY_BEHAVIOUR``)
        ranks the items the next event *of that type* will be about; None is the model's default
        (its target behaviour for next-purchase / multi runs, any behaviour otherwise)."""
        return self.recommend_many([History(list(items), behaviours, timestamps)], k, exclude_seen, behaviour)[0]

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

        Task heads add a history-pointer bonus to the dot product, so they rule an index out."""
        return type(self.model).score_all is SequenceModel.score_all and self.model.heads is None

    def recommend_requests(self, requests: list[RecRequest], index: ItemIndex | None = None) -> list[Recommendations]:
        """Top-k for many requests with one forward pass; no warnings (callers report ``skipped``).

        Without ``index`` the whole catalogue is scored (exact); with one, the user vectors are
        searched in it, asking for ``k`` plus the number of seen items so exclusion still leaves k.
        """
        behaviours = []
        for r in requests:
            if r.k < 1:
                raise ValueError("k must be >= 1")
            behaviours.append(self.behaviour_id(r.behaviour))  # an unknown name is an error, never a fallback
        if index is not None and not self.supports_index:
            raise ValueError(f"model {self.cfg.model.name} overrides score_all; an item index would change its scores")
        encoded = [self._encode(r.history) for r in requests]
        out: list[Recommendations | None] = [None] * len(requests)
        # One forward pass: make_batch builds every row's features from that row alone (time gaps
        # included), and left padding changes nothing, so an answer never depends on its batch.
        known = [i for i, e in enumerate(encoded) if e.items]
        if known:
            batch = _trim_padding(self.make_batch([encoded[i][:3] for i in known]))
            reqs, seen = [requests[i] for i in known], [encoded[i].items for i in known]
            with self._lock, torch.inference_mode():
                if index is None:
                    beh = [behaviours[i] for i in known]
                    rows = self._exact_top(batch, reqs, seen, None if self.model.heads is None else torch.tensor(
                        [self.model.heads.default_behaviour if b is None else b for b in beh]))
                else:
                    rows = self._index_top(index, self.model.last_hidden(batch).float(), reqs, seen)
            for i, (ids, vals) in zip(known, rows, strict=True):
                out[i] = Recommendations(self.vocabs.items.decode(ids), vals, skipped=encoded[i].skipped,
                                         skipped_behaviours=encoded[i].skipped_behaviours)
        for i, r in enumerate(requests):
            if out[i] is None:
                pop = self.popular(r.k)
                out[i] = Recommendations(pop.items, pop.scores, fallback=True, skipped=encoded[i].skipped,
                                         skipped_behaviours=encoded[i].skipped_behaviours)
        return out  # type: ignore[return-value]

    def _exclude(self, r: RecRequest) -> bool:
        return self.cfg.eval.exclude_seen if r.exclude_seen is None else r.exclude_seen

    def _exact_top(
        self, batch: Batch, reqs: list[RecRequest], seen: list[list[int]], behaviours: torch.Tensor | None = None
    ) -> list[tuple[list[int], list[float]]]:
        scores = self.model.score_all(batch, behaviours).float()
        for row, (r, s) in enumerate(zip(reqs, seen, strict=True)):
            if self._exclude(r):
                scores[row, torch.tensor(s, dtype=torch.long)] = float("-inf")
        kmax = min(max(r.k for r in reqs), self.spec.n_items)
        top = scores.topk(kmax, dim=1)
        ids, vals = top.indices.tolist(), top.values.tolist()
        out = []
        for row, r in enumerate(reqs):
            keep = [j for j in range(min(r.k, kmax)) if vals[row][j] != float("-inf")]
            out.append(([ids[row][j] for j in keep], [vals[row][j] for j in keep]))
        return out

    def _index_top(
        self, index: ItemIndex, hidden: torch.Tensor, reqs: list[RecRequest], seen: list[list[int]]
    ) -> list[tuple[list[int], list[float]]]:
        excluded = [set(s) if self._exclude(r) else set() for r, s in zip(reqs, seen, strict=True)]
        want = min(max(r.k + len(e) for r, e in zip(reqs, excluded, strict=True)), self.spec.n_items)
        vals, ids = index.search(hidden, want)
        out = []
        for row, (r, ex) in enumerate(zip(reqs, excluded, strict=True)):
            pairs = [(i, v) for i, v in zip(ids[row].tolist(), vals[row].tolist(), strict=True)
                     if i > PAD and i not in ex]
            pairs = pairs[: r.k]
            out.append(([i for i, _ in pairs], [float(v) for _, v in pairs]))
        return out

    def popular(self, k: int = 10) -> Recommendations:
        top = self.popularity.topk(min(k, self.spec.n_items))
        return Recommendations(self.vocabs.items.decode(top.indices.tolist()), top.values.tolist(), fallback=True)

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
        items, behs, times, _, _ = self._encode(h)
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
