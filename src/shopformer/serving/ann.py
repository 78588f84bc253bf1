"""Item indexes: exact top-k by matrix product, or FAISS IVF for very large catalogues.

Up to a few hundred thousand items an exact ``queries @ items.T`` plus ``topk`` takes a few
milliseconds on one core and is always right, so it is the default. Beyond ``faiss_threshold``
items an inverted-file index (FAISS ``IndexIVFFlat``) scans only ``nprobe`` of ~sqrt(N) lists.
FAISS is an optional dependency (``pip install shopformer[faiss]``), imported only when such an
index is built. The IVF recall against the exact answer is measured on a sample when the index
is built and reported (``recall_at_10``), so an approximate index is never silently wrong.

Dense id 0 (padding) is never returned: exact indexes mask it, FAISS indexes never contain it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch

log = logging.getLogger(__name__)


class ExactIndex:
    """Brute-force inner product over all items (cosine when built with ``cosine=True``)."""

    kind = "exact"

    def __init__(self, vectors: torch.Tensor, cosine: bool = False) -> None:
        v = vectors.detach().float()
        self.vectors = torch.nn.functional.normalize(v, dim=-1) if cosine else v.contiguous()
        self.cosine = cosine
        self.recall_at_10: float | None = 1.0

    def __len__(self) -> int:
        return self.vectors.shape[0] - 1

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        q = queries.float()
        if self.cosine:
            q = torch.nn.functional.normalize(q, dim=-1)
        with torch.inference_mode():
            scores = q @ self.vectors.T
            scores[:, 0] = float("-inf")
            top = scores.topk(min(k, len(self)), dim=1)
        ids = torch.where(torch.isneginf(top.values), -1, top.indices)
        return top.values, ids

    def vector(self, item: int) -> torch.Tensor:
        return self.vectors[item]


@dataclass(frozen=True)
class IVFParams:
    nlist: int
    nprobe: int


def ivf_params(n_items: int, nprobe: int) -> IVFParams:
    """~sqrt(N) lists (FAISS guidance is 4..16 sqrt(N); fewer lists train faster on small boxes)."""
    nlist = max(1, int(math.sqrt(n_items)))
    return IVFParams(nlist=nlist, nprobe=min(nprobe, nlist))


class FaissIndex:
    """FAISS ``IndexIVFFlat`` (inner product) over items 1..N, vectors kept for exact lookups."""

    kind = "faiss-ivf"

    def __init__(self, vectors: torch.Tensor, cosine: bool = False, nprobe: int = 32, threads: int | None = None,
                 seed: int = 0) -> None:
        import faiss  # optional dependency: imported only when a large catalogue needs it

        if threads is not None:
            faiss.omp_set_num_threads(threads)
        v = vectors.detach().float()
        if cosine:
            v = torch.nn.functional.normalize(v, dim=-1)
        self.cosine = cosine
        self.vectors = np.ascontiguousarray(v[1:].numpy(), dtype=np.float32)  # row i = dense id i + 1
        n, dim = self.vectors.shape
        self.params = ivf_params(n, nprobe)
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, self.params.nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        index.cp.niter = 10
        rng = np.random.default_rng(seed)
        sample = self.vectors[rng.choice(n, size=min(n, 64 * self.params.nlist), replace=False)]
        index.train(sample)
        index.add(self.vectors)
        index.nprobe = self.params.nprobe
        self._quantizer = quantizer  # keep the Python wrapper alive as long as the index
        self.index = index
        self.recall_at_10 = self.measure_recall(rng)
        log.info("FAISS IVF over %d items: nlist=%d nprobe=%d recall@10=%.3f",
                 n, self.params.nlist, self.params.nprobe, self.recall_at_10)

    def __len__(self) -> int:
        return self.vectors.shape[0]

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        q = queries.detach().float()
        if self.cosine:
            q = torch.nn.functional.normalize(q, dim=-1)
        scores, ids = self.index.search(np.ascontiguousarray(q.numpy(), dtype=np.float32), min(k, len(self)))
        ids = np.where(ids >= 0, ids + 1, -1)  # FAISS row -> dense id
        return torch.from_numpy(scores), torch.from_numpy(ids)

    def vector(self, item: int) -> torch.Tensor:
        return torch.from_numpy(self.vectors[item - 1])

    def measure_recall(self, rng: np.random.Generator, n_queries: int = 64, k: int = 10) -> float:
        """Recall@k of the IVF answer against brute force, for item-like queries."""
        picks = rng.choice(len(self), size=min(n_queries, len(self)), replace=False)
        q = self.vectors[picks] + rng.normal(0, 0.05, size=(len(picks), self.vectors.shape[1])).astype(np.float32)
        exact = np.argpartition(-(q @ self.vectors.T), k, axis=1)[:, :k]
        _, approx = self.index.search(q, k)
        hits = sum(len(set(a.tolist()) & set(e.tolist())) for a, e in zip(approx, exact, strict=True))
        return hits / (k * len(picks))


ItemIndexImpl = ExactIndex | FaissIndex


def build_index(vectors: torch.Tensor, faiss_threshold: int, cosine: bool = False, nprobe: int = 32,
                threads: int | None = None) -> ItemIndexImpl:
    """Exact below ``faiss_threshold`` items, FAISS IVF from there on."""
    n_items = vectors.shape[0] - 1
    if n_items >= faiss_threshold:
        return FaissIndex(vectors, cosine=cosine, nprobe=nprobe, threads=threads)
    return ExactIndex(vectors, cosine=cosine)
