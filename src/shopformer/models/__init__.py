"""Explicit model registry: name -> class. Add a model by importing it here."""

from __future__ import annotations

from shopformer.config import ModelConfig
from shopformer.models.base import DataSpec, SequenceModel
from shopformer.models.bert4rec import BERT4Rec
from shopformer.models.gru4rec import GRU4Rec
from shopformer.models.hstu import HSTU
from shopformer.models.lstm import LSTMRec
from shopformer.models.sasrec import SASRec

REGISTRY: dict[str, type[SequenceModel]] = {
    SASRec.name: SASRec,
    BERT4Rec.name: BERT4Rec,
    GRU4Rec.name: GRU4Rec,
    LSTMRec.name: LSTMRec,
    HSTU.name: HSTU,
}


def build_model(cfg: ModelConfig, spec: DataSpec) -> SequenceModel:
    try:
        cls = REGISTRY[cfg.name]
    except KeyError:
        raise ValueError(f"unknown model {cfg.name!r}; registered: {', '.join(sorted(REGISTRY))}") from None
    return cls(cfg, spec)
