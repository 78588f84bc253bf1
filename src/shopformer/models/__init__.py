"""Explicit model registry: name -> class. Add a model by importing it here."""

from __future__ import annotations

from shopformer.config import ModelConfig
from shopformer.models.base import DataSpec, SequenceModel
from shopformer.models.sasrec import SASRec

REGISTRY: dict[str, type[SequenceModel]] = {
    SASRec.name: SASRec,
}


def build_model(cfg: ModelConfig, spec: DataSpec) -> SequenceModel:
    try:
        cls = REGISTRY[cfg.name]
    except KeyError:
        raise ValueError(f"unknown model {cfg.name!r}; registered: {', '.join(sorted(REGISTRY))}") from None
    return cls(cfg, spec)
