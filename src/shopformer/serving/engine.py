"""One loaded model, ready to answer: recommender + item indexes + its own micro-batcher.

Forward passes run on the event loop itself by default (``executor`` None). For these small
models most of a forward pass is Python dispatch that holds the GIL, so a separate inference
thread buys no parallelism, while every GIL hand-off between it and a busy event loop can cost
up to the interpreter's switch interval (5 ms) and that lands in the tail latency. An executor
(``SHOPFORMER_INFERENCE_THREAD=1``) pays off only when long GIL-free kernels dominate (big FAISS
batches on a multi-core box).

Reload builds a complete new Engine (checksums verified, indexes built, one warm-up forward
pass) before the service swaps a single reference to it. Requests that already hold the old
engine finish on it: its batcher drains what was queued before it stops.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path

from shopformer.recommender import History, Recommendations, Recommender, RecRequest
from shopformer.serving.ann import ExactIndex, FaissIndex, build_index
from shopformer.serving.batching import MicroBatcher
from shopformer.serving.settings import ServeSettings

log = logging.getLogger(__name__)


class Engine:
    def __init__(self, rec: Recommender, settings: ServeSettings, executor: Executor | None,
                 on_batch: Callable[[int], None] | None = None) -> None:
        self.rec = rec
        self.version = rec.version
        self.run_dir = rec.run.path
        self.executor = executor
        n_items = rec.spec.n_items
        emb = rec.model.output_embeddings().detach().float()
        large = n_items >= settings.faiss_threshold and rec.supports_index
        # Exact scoring goes through the model's own score_all (index None); large catalogues
        # search an IVF index with the user vector instead of scoring every item.
        self.rec_index: ExactIndex | FaissIndex | None = (
            build_index(emb, settings.faiss_threshold, nprobe=settings.faiss_nprobe, threads=settings.threads)
            if large else None
        )
        self.sim_index: ExactIndex | FaissIndex = build_index(
            emb, settings.faiss_threshold, cosine=True, nprobe=settings.faiss_nprobe, threads=settings.threads
        )
        self._popular = rec.popular(min(settings.max_k, n_items))
        self.batcher: MicroBatcher[RecRequest, Recommendations] = MicroBatcher(
            self._run_batch, executor, max_batch=settings.max_batch_size,
            window_s=settings.batch_window_us / 1e6, on_batch=on_batch,
        )
        self.load_seconds = 0.0

    @classmethod
    def load(cls, run_dir: str | Path, settings: ServeSettings, executor: Executor | None,
             on_batch: Callable[[int], None] | None = None) -> Engine:
        """Load, verify, index and warm up (raises ArtifactError for a bad run directory)."""
        t0 = time.perf_counter()
        rec = Recommender.load(run_dir, backend=settings.backend, threads=settings.threads)
        engine = cls(rec, settings, executor, on_batch)
        engine.warm_up()
        engine.load_seconds = time.perf_counter() - t0
        log.info("loaded %s from %s in %.2fs (items=%d, index=%s, backend=%s)", engine.version, run_dir,
                 engine.load_seconds, engine.rec.spec.n_items, engine.index_kind, rec.backend)
        return engine

    @property
    def max_len(self) -> int:
        return self.rec.max_len

    @property
    def index_kind(self) -> str:
        return self.rec_index.kind if self.rec_index is not None else "exact"

    def behaviours_to_rank(self) -> list[str]:
        """Behaviour names a ranking query may name besides '*': the vocabulary's, when the model has
        behaviour-specific heads (``Recommender.behaviour_id``), else none."""
        return list(self.rec.vocabs.behaviours.tokens[1:]) if self.rec.head_parts else []

    def knows_item(self, item_id: str) -> bool:
        return item_id in self.rec.vocabs.items.index

    def knows_behaviour(self, name: str) -> bool:
        return self.rec.knows_behaviour(name)

    def warm_up(self) -> None:
        """One forward pass now, so the first real request does not pay for lazy initialisation."""
        top = self._popular.items[:2] or []
        self._run_batch([RecRequest(History(top), k=1)])

    def _run_batch(self, requests: list[RecRequest]) -> list[Recommendations | BaseException]:
        return list(self.rec.recommend_requests(requests, self.rec_index))

    async def recommend(self, request: RecRequest) -> Recommendations:
        return await self.batcher.submit(request)

    def popular(self, k: int) -> Recommendations:
        """Cached popularity top-k (unknown users): no forward pass, no catalogue-wide sort."""
        if k > len(self._popular.items):
            return self.rec.popular(k)
        return Recommendations(self._popular.items[:k], self._popular.scores[:k], fallback=True)

    def similar(self, item_id: str, k: int) -> Recommendations:
        """Nearest items by cosine of the output embeddings (KeyError for an unknown item)."""
        idx = self.rec.vocabs.items.index.get(item_id, 0)
        if idx == 0:
            raise KeyError(item_id)
        vals, ids = self.sim_index.search(self.sim_index.vector(idx).unsqueeze(0), k + 1)
        pairs = [(i, float(v)) for i, v in zip(ids[0].tolist(), vals[0].tolist(), strict=True) if i > 0 and i != idx]
        pairs = pairs[:k]
        return Recommendations(self.rec.vocabs.items.decode([i for i, _ in pairs]), [v for _, v in pairs])

    @property
    def ann_recall(self) -> float | None:
        idx = self.rec_index or self.sim_index
        return idx.recall_at_10

    async def close(self) -> None:
        await self.batcher.close()
