"""SASRec-style causal Transformer (Kang & McAuley, 2018) with behaviour-aware inputs.

Pre-LayerNorm blocks, PyTorch ``scaled_dot_product_attention`` (fused kernels where the
backend has them), output item embeddings tied to the input ones.
"""

from __future__ import annotations

import torch

from shopformer.config import ModelConfig
from shopformer.data.batches import Batch
from shopformer.data.corpus import DataSpec
from shopformer.models.base import SequenceModel
from shopformer.models.layers import TransformerEncoder


class SASRec(SequenceModel):
    name = "sasrec"

    def __init__(self, cfg: ModelConfig, spec: DataSpec) -> None:
        super().__init__(cfg, spec)
        self.encoder = TransformerEncoder(cfg, spec, causal=True)

    def encode(self, batch: Batch) -> torch.Tensor:
        return self.encoder(batch, self.item_emb(batch.items))
