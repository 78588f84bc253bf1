"""SASRec-style causal Transformer (Kang & McAuley, 2018) with behaviour-aware inputs.

Pre-LayerNorm blocks, PyTorch ``scaled_dot_product_attention`` (fused kernels where the
backend has them), output item embeddings tied to the input ones.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from shopformer.config import ModelConfig
from shopformer.data.dataset import Batch
from shopformer.models.base import DataSpec, InputEmbedding, SequenceModel, attention_mask


class SelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.proj = nn.Linear(cfg.dim, cfg.dim)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, length, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)
        # (B, L, D) -> (B, H, L, D/H)
        q, k, v = (t.view(b, length, self.heads, d // self.heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
        )
        return self.proj(y.transpose(1, 2).reshape(b, length, d))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.dim)
        self.attn = SelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.dim)
        self.ffn = nn.Sequential(
            nn.Linear(cfg.dim, cfg.ffn_mult * cfg.dim),
            nn.GELU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.ffn_mult * cfg.dim, cfg.dim),
        )
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln1(x), mask))
        return x + self.drop(self.ffn(self.ln2(x)))


class TransformerEncoder(nn.Module):
    """Input embeddings + a stack of blocks + final LayerNorm; causal or bidirectional."""

    def __init__(self, cfg: ModelConfig, spec: DataSpec, causal: bool) -> None:
        super().__init__()
        self.inputs = InputEmbedding(cfg, spec)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.ln_f = nn.LayerNorm(cfg.dim)
        self.causal = causal

    def forward(self, batch: Batch, item_vectors: torch.Tensor) -> torch.Tensor:
        x = self.inputs(batch, item_vectors)  # (B, L, D)
        mask = attention_mask(batch.items != 0, self.causal)  # (B, 1, L, L)
        for block in self.blocks:
            x = block(x, mask)
        return self.ln_f(x)


class SASRec(SequenceModel):
    name = "sasrec"

    def __init__(self, cfg: ModelConfig, spec: DataSpec) -> None:
        super().__init__(cfg, spec)
        self.encoder = TransformerEncoder(cfg, spec, causal=True)

    def encode(self, batch: Batch) -> torch.Tensor:
        return self.encoder(batch, self.item_emb(batch.items))
