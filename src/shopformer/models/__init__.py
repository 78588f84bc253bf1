"""Explicit model registry: name -> class. Add a model by importing it here."""

from __future__ import annotations

from shopformer.config import ModelConfig, TaskConfig
from shopformer.data.corpus import DataSpec
from shopformer.models.base import SequenceModel
from shopformer.models.bert4rec import BERT4Rec
from shopformer.models.gru4rec import GRU4Rec
from shopformer.models.heads import MultiTaskHeads
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


def build_model(
    cfg: ModelConfig, spec: DataSpec, task: TaskConfig | None = None, target_behaviour: int | None = None
) -> SequenceModel:
    """Build a registered model; any ``task.kind`` but next-item attaches ``MultiTaskHeads``.

    ``target_behaviour`` (dense id) is the behaviour the target/intent heads are about; when a
    saved run is loaded it comes back with the weights (a buffer), so it may be left None there.
    """
    cls = model_class(cfg.name)
    check_task(cfg, task)
    if cfg.lora_rank and not cls.has_attention:
        raise ValueError(f"model.lora_rank={cfg.lora_rank}: LoRA adapts attention projections and {cfg.name!r} has "
                         f"no attention layers; use model.lora_rank=0 or one of: {attention_models()}")
    if cfg.members > 1 and not cls.supports_members:
        raise ValueError(f"model.members={cfg.members}: ensembles are built for "
                         f"{', '.join(sorted(n for n, c in REGISTRY.items() if c.supports_members))}, not {cfg.name!r}")
    model = cls(cfg, spec)
    if task is not None and task.kind != "next-item":
        model.heads = MultiTaskHeads(task, cfg, spec)
        if target_behaviour is not None:
            model.heads.set_target(target_behaviour)
    return model


def model_class(name: str) -> type[SequenceModel]:
    """The registered class of ``name``; an unknown name is an error listing the registered ones."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(sorted(REGISTRY))}") from None


def attention_models() -> str:
    """Comma-separated names of the registered models with attention layers (what LoRA can adapt)."""
    return ", ".join(sorted(n for n, c in REGISTRY.items() if c.has_attention))


def check_task(cfg: ModelConfig, task: TaskConfig | None) -> None:
    """Reject model/task combinations that would train on leaked answers (at configuration time)."""
    if task is None or task.kind == "next-item":
        return
    cls = REGISTRY[cfg.name]
    if not cls.causal:
        # A bidirectional encoder's state at position t has seen events t+1.., so per-position
        # next-action / intent / next-purchase heads trained on it would read their own labels.
        raise ValueError(
            f"task.kind={task.kind!r} needs a causal model; {cfg.name!r} is bidirectional (its per-position "
            f"states see the events they would predict). Use one of: "
            f"{', '.join(sorted(n for n, c in REGISTRY.items() if c.causal))}"
        )
