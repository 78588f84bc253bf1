"""HSTU-style causal model (Zhai et al., 2024, "Actions Speak Louder than Words").

One HSTU layer, with X the (pre-normed) input:

    U, V, Q, K = split(SiLU(f1(X)))                    # a single fused projection
    A          = SiLU(Q K^T / sqrt(d_h) + rab) / n     # pointwise, no softmax
    Y          = X + f2(LayerNorm(A V) * U)            # gated by U

Choices, as documented here and in the tests:

* ``n`` is the constant ``cfg.max_len``, not the padded window length, so extra left padding
  never rescales the attention (the reference code divides by the padded max length too).
  The ``1/sqrt(d_h)`` scale is ours, for a well-behaved start; the reference omits it.
* Relative position bias: learned per head on the log-bucketed distance ``i - j`` (exact for
  short distances, log-spaced beyond).
* Relative time bias: the Batch carries only a log2 gap bucket per event, not timestamps. We
  map each bucket back to a representative gap in seconds, accumulate those along the window
  into approximate times, and bucket ``log2(1 + t_i - t_j)`` between query i and key j. Only
  gaps of events in (j, i] enter, so the bias is causal and independent of left padding and of
  the (unknown) gap of the window's first event. The reference uses the *next* event's time
  for the query, which our Batch does not carry at inference; ``t_i`` is used instead.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from shopformer.config import ModelConfig
from shopformer.data.batches import Batch
from shopformer.data.corpus import DataSpec
from shopformer.data.schema import PAD
from shopformer.models.base import SequenceModel
from shopformer.models.layers import N_EXACT, InputEmbedding, approx_times, attention_mask, log_bucket


class RelativeBias(nn.Module):
    """(B, H, L, L) learned bias from bucketed relative position (and time) of query and key."""

    def __init__(self, cfg: ModelConfig, use_time: bool) -> None:
        super().__init__()
        self.n_pos = N_EXACT + math.ceil(math.log2(cfg.max_len)) + 1
        self.pos = nn.Embedding(self.n_pos, cfg.heads)
        self.use_time = use_time
        if use_time:
            self.n_time = cfg.time_buckets
            self.time = nn.Embedding(self.n_time, cfg.heads)
        for emb in self.modules():
            if isinstance(emb, nn.Embedding):
                nn.init.zeros_(emb.weight)  # start as plain (unbiased) attention

    def forward(self, batch: Batch) -> torch.Tensor:
        length = batch.items.shape[1]
        idx = torch.arange(length, device=batch.items.device)
        dist = (idx[:, None] - idx[None, :]).clamp(min=0)  # (L, L) i - j; j > i is masked anyway
        bias = self.pos(log_bucket(dist, N_EXACT, self.n_pos)).permute(2, 0, 1).unsqueeze(0)  # (1, H, L, L)
        if self.use_time:
            t = approx_times(batch.gaps)  # (B, L)
            dt = (t[:, :, None] - t[:, None, :]).clamp(min=0)  # (B, L, L) t_i - t_j
            tb = torch.log2(1.0 + dt).long().clamp(max=self.n_time - 1)
            bias = bias + self.time(tb).permute(0, 3, 1, 2)  # (B, H, L, L)
        return bias


class HSTULayer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.heads, self.n = cfg.heads, cfg.max_len
        self.ln_in = nn.LayerNorm(cfg.dim)
        self.uvqk = nn.Linear(cfg.dim, 4 * cfg.dim)  # f1: single fused projection
        self.ln_attn = nn.LayerNorm(cfg.dim)
        self.proj = nn.Linear(cfg.dim, cfg.dim)  # f2
        self.attn_drop = nn.Dropout(cfg.dropout)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, rab: torch.Tensor) -> torch.Tensor:
        """x: (B, L, D); mask: (B, 1, L, L) bool; rab: (B or 1, H, L, L)."""
        b, length, d = x.shape
        u, v, q, k = F.silu(self.uvqk(self.ln_in(x))).split(d, dim=-1)  # 4 x (B, L, D)
        # (B, L, D) -> (B, H, L, D/H)
        v, q, k = (t.view(b, length, self.heads, d // self.heads).transpose(1, 2) for t in (v, q, k))
        scores = q @ k.transpose(-2, -1) * (d // self.heads) ** -0.5 + rab  # (B, H, L, L)
        # Pointwise weights: they need not sum to 1, so the model can express "how much"
        # history matters (intensity), which softmax normalises away.
        weights = F.silu(scores) * mask / self.n
        y = (self.attn_drop(weights) @ v).transpose(1, 2).reshape(b, length, d)  # (B, L, D)
        return x + self.drop(self.proj(self.ln_attn(y) * u))


class HSTU(SequenceModel):
    name = "hstu"

    def __init__(self, cfg: ModelConfig, spec: DataSpec) -> None:
        super().__init__(cfg, spec)
        self.inputs = InputEmbedding(cfg, spec)
        self.rel_bias = RelativeBias(cfg, use_time=cfg.use_time_gap and spec.has_time)
        self.layers = nn.ModuleList(HSTULayer(cfg) for _ in range(cfg.layers))
        self.ln_f = nn.LayerNorm(cfg.dim)

    def encode(self, batch: Batch) -> torch.Tensor:
        x = self.inputs(batch, self.item_emb(batch.items))  # (B, L, D)
        mask = attention_mask(batch.items != PAD, causal=True)  # (B, 1, L, L)
        rab = self.rel_bias(batch)  # shared by all layers, as in the reference
        for layer in self.layers:
            x = layer(x, mask, rab)
        return self.ln_f(x)
