"""The model contract every sequence model implements, and shared input embeddings.

A model maps a left-padded ``Batch`` to hidden states (``encode``), and scores the whole
catalogue from them through its (tied) output item embeddings. ``loss`` and ``score_all``
are shared here, so a new architecture only writes ``encode`` (and, for a masked model,
its own ``loss``/``score_all``). Models never touch numpy or pick devices themselves.

Multi-task: ``build_model(..., task=cfg.task)`` attaches ``MultiTaskHeads`` (models/heads.py) as
``model.heads`` for any task kind but next-item. Then ``loss`` is the weighted multi-task loss,
``score_all(batch, behaviour)`` ranks for a behaviour type (0 = any) by log-probability (a learned
repeat / explore mixture), ``repeat_probability`` reads its gate, and ``action_logits`` /
``intent_logit`` read the other heads. Without heads every method behaves exactly as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from shopformer.config import LossConfig, ModelConfig
from shopformer.data.batches import Batch
from shopformer.data.corpus import DataSpec
from shopformer.data.schema import PAD
from shopformer.models.losses import NegativeSampler, full_cross_entropy, sampled_softmax, seen_before

if TYPE_CHECKING:  # heads import this module; the annotation alone needs them
    from shopformer.models.heads import MultiTaskHeads


@dataclass
class LossOutput:
    total: torch.Tensor
    parts: dict[str, float]


class SequenceModel(nn.Module):
    """Base class: subclasses set ``name`` and implement ``encode``."""

    name: ClassVar[str]
    causal: ClassVar[bool] = True  # False for bidirectional (masked) models
    supports_members: ClassVar[bool] = False  # model.members > 1 (an ensemble of encoders)
    has_attention: ClassVar[bool] = True

    def __init__(self, cfg: ModelConfig, spec: DataSpec) -> None:
        super().__init__()
        self.cfg, self.spec = cfg, spec
        # +2: padding row 0 and a [MASK] row at n_items + 1 (used by masked models).
        self.item_emb = nn.Embedding(spec.n_items + 2, cfg.dim, padding_idx=PAD)
        # model.tie_output = false: the items' output vectors get a table of their own (same shape)
        self.out_emb = None if cfg.tie_output else nn.Embedding(spec.n_items + 2, cfg.dim, padding_idx=PAD)
        for table in (self.item_emb, self.out_emb):
            if table is not None:
                nn.init.normal_(table.weight, std=cfg.embedding_std)
                with torch.no_grad():
                    table.weight[PAD].zero_()
        self.heads: MultiTaskHeads | None = None  # MultiTaskHeads, attached by build_model(task=...)
        self._max_len = int(cfg.max_len)  # the window the position tables were built for

    @property
    def max_len(self) -> int:
        """Longest window this model reads (its position table size, fixed at build time).

        Evaluation and inference cut histories to this, never to a config value: a longer window
        would silently clamp positions."""
        return self._max_len

    @property
    def mask_id(self) -> int:
        return self.spec.n_items + 1

    def encode(self, batch: Batch) -> torch.Tensor:
        """(B, L) batch -> (B, L, D) hidden states; position t summarises events <= t."""
        raise NotImplementedError

    def scoring_table(self) -> nn.Embedding:
        """The table whose rows score items: the input table when tied, else the output table."""
        return self.item_emb if self.out_emb is None else self.out_emb

    def output_embeddings(self) -> torch.Tensor:
        """(n_items + 1, D) item vectors used for scoring (row 0 = padding, no [MASK])."""
        emb = self.scoring_table().weight[: self.spec.n_items + 1]
        if not self.cfg.cosine:
            return emb
        # unit vectors per member (the padding row stays 0): a score is the state's norm x a cosine
        return F.normalize(emb.unflatten(-1, (self.cfg.members, -1)), dim=-1).flatten(-2)

    def last_hidden(self, batch: Batch) -> torch.Tensor:
        """(B, D) state that predicts the event after the last one."""
        return self.encode(batch)[:, -1]

    def score_all(self, batch: Batch, behaviour: int | torch.Tensor | None = None,
                  hidden: torch.Tensor | None = None) -> torch.Tensor:
        """(B, n_items + 1) score of every item as the next event; column 0 is -inf.

        ``behaviour`` (a dense behaviour id, or one per row; 0 = any behaviour) asks "which item
        will the next event of this type be about"; None is the heads' default (the target
        behaviour for next-purchase / multi models, otherwise any). Needs heads unless None/0.
        ``hidden``: a model with heads reads ``self.encode(batch)`` from it when the caller has it
        already (batch scoring reads the heads' other outputs from the same states).
        """
        if self.heads is None:
            if behaviour is not None and bool(torch.as_tensor(behaviour).ne(PAD).any()):
                raise ValueError("this model has no behaviour-conditioned head (trained with task.kind='next-item')")
            scores = self.last_hidden(batch) @ self.output_embeddings().T
        else:
            scores = self.heads.score(self.encode(batch) if hidden is None else hidden, batch,
                                      self.output_embeddings(), behaviour)
        scores[:, PAD] = float("-inf")
        return scores

    def action_logits(self, batch: Batch) -> torch.Tensor:
        """(B, n_behaviours + 1) logits of the next event's behaviour type; column 0 is -inf."""
        return self._require_heads().action_logits(self.head_features(batch))

    def intent_logit(self, batch: Batch) -> torch.Tensor:
        """(B,) uncalibrated logit that the target behaviour occurs within the next N events
        (``heads.calibrated`` turns it into the Platt-scaled probability)."""
        return self._require_heads().intent_logit(self.head_features(batch))

    def repeat_probability(self, batch: Batch, behaviour: int | torch.Tensor | None = None) -> torch.Tensor:
        """(B,) the heads' repeat gate g: the probability that the next event (of ``behaviour``, a
        dense id or one per row, 0 = any; None = the heads' default) is about an item already in
        the window, rather than a new one (models/heads.py)."""
        return self._require_heads().repeat_probability(self.encode(batch), batch, behaviour)

    def head_features(self, batch: Batch, hidden: torch.Tensor | None = None) -> torch.Tensor:
        """(B, F) what the classifier heads read about the event after the window (``hidden``: the
        batch's ``encode`` when the caller has it)."""
        heads = self._require_heads()
        return heads.summary(self.encode(batch) if hidden is None else hidden, batch)[:, -1]

    def _require_heads(self) -> MultiTaskHeads:
        if self.heads is None:
            raise ValueError("this model has no task heads (trained with task.kind='next-item')")
        return self.heads

    def item_loss(
        self,
        hidden: torch.Tensor,
        targets: torch.Tensor,
        loss_cfg: LossConfig,
        sampler: NegativeSampler | None = None,
        window: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Next-item loss at real targets only: hidden (B, L, D), targets (B, L), 0 = none. ``window``
        (B, L): the events the predictions are made from, aligned with ``targets`` (a causal model's
        input items; a masked model's full window), whose items leave the softmax with ``loss.mask_seen``."""
        real = targets != PAD
        h, t = hidden[real], targets[real]  # (M, D), (M,) — padding never reaches the logits
        emb, cold = self.output_embeddings(), self.cold_items()
        neg_q = self._negatives(t, loss_cfg, sampler) if loss_cfg.kind == "sampled" else None
        seen = None
        if loss_cfg.mask_seen:
            if window is None:
                raise ValueError("loss.mask_seen needs the window the predictions are made from")
            seen = seen_before(window, targets, causal=self.causal)[real]  # (M, L)
        # one loss per ensemble member (model.members; one member = the whole width): each scores with
        # its own columns and learns from its own loss, the mean so the figure reads like one model's;
        # the same negatives serve every member
        members = self.cfg.members
        parts = [self._item_loss(hk, t, ek, cold, loss_cfg, neg_q, seen)
                 for hk, ek in zip(h.chunk(members, -1), emb.chunk(members, -1), strict=True)]
        return torch.stack(parts).mean()

    @staticmethod
    def _negatives(t: torch.Tensor, loss_cfg: LossConfig,
                   sampler: NegativeSampler | None) -> tuple[torch.Tensor, torch.Tensor]:
        if sampler is None:
            raise ValueError("loss.kind='sampled' needs a NegativeSampler")
        if loss_cfg.per_position:
            return sampler.draw_per_row(t, loss_cfg.negatives)
        return sampler.draw(t, loss_cfg.negatives, loss_cfg.in_batch)

    @staticmethod
    def _item_loss(h: torch.Tensor, t: torch.Tensor, emb: torch.Tensor, cold: torch.Tensor | None,
                   loss_cfg: LossConfig, neg_q: tuple[torch.Tensor, torch.Tensor] | None,
                   seen: torch.Tensor | None) -> torch.Tensor:
        if neg_q is not None:
            neg, log_q = neg_q
            return sampled_softmax(h, t, emb, neg, log_q if loss_cfg.logq_correction else None, cold,
                                   loss_cfg.label_smoothing)
        return full_cross_entropy(h, t, emb, loss_cfg.label_smoothing, cold, seen=seen)

    def cold_items(self) -> torch.Tensor | None:
        """(n_items + 1,) bool: items without any training event, left out of the training
        softmax; None: every item takes part. Item-text fusion (models/text.py) sets it: a cold
        item's vector is its title's projection alone, and as a permanent negative the shared
        projection would learn to push exactly those titles down (cold-start NDCG 0)."""
        return getattr(self.item_emb, "cold", None)

    def loss(self, batch: Batch, loss_cfg: LossConfig, sampler: NegativeSampler | None = None) -> LossOutput:
        if batch.targets is None:
            raise ValueError("a training batch needs targets")
        if self.heads is not None:  # weighted multi-task loss (models/heads.py)
            return self.heads.loss(self.encode(batch), batch, self.output_embeddings(), loss_cfg, sampler)
        loss = self.item_loss(self.encode(batch), batch.targets, loss_cfg, sampler, batch.items)
        return LossOutput(loss, {"item": float(loss.detach())})


