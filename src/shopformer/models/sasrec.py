"""SASRec-style causal Transformer (Kang & McAuley, 2018) with behaviour-aware inputs.

Pre-LayerNorm (or LiGR) blocks, PyTorch ``scaled_dot_product_attention`` (fused kernels where the
backend has them), output item embeddings tied to the input ones.

``model.members = K`` makes it an ensemble of K such encoders, each reading and scoring with its own
``dim / K`` columns of the item table; the state is the members' states side by side, so a score is
the sum of the members' scores and the rest of the system sees one model of width ``dim``.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from shopformer.config import ModelConfig
from shopformer.data.batches import Batch
from shopformer.data.corpus import DataSpec
from shopformer.models.base import SequenceModel
from shopformer.models.layers import TransformerEncoder


class SASRec(SequenceModel):
    name = "sasrec"
    supports_members = True

    def __init__(self, cfg: ModelConfig, spec: DataSpec) -> None:
        super().__init__(cfg, spec)
        member = cfg.model_copy(update={"dim": cfg.member_dim, "members": 1})
        self.encoder = TransformerEncoder(member, spec, causal=True)
        # members 2..K (kept apart from ``encoder`` so a one-member model's weights keep their names)
        self.others = nn.ModuleList(TransformerEncoder(member, spec, causal=True) for _ in range(cfg.members - 1))

    def encode(self, batch: Batch) -> torch.Tensor:
        x = self.item_emb(batch.items)  # (B, L, D)
        if not self.others:
            return self.encoder(batch, x)
        columns = x.chunk(len(self.others) + 1, dim=-1)  # (B, L, D / K) each
        return torch.cat([enc(batch, part) for enc, part in zip([self.encoder, *self.others], columns,
                                                                 strict=True)], dim=-1)
