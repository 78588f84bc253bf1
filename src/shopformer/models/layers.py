"""Encoder pieces shared by several models: input embeddings, attention masks, the Transformer
stack (SASRec, BERT4Rec) and log-bucketed time (HSTU, the multi-task heads).

A model file imports from here, never from another model's file.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from shopformer.config import ModelConfig
from shopformer.data.batches import Batch
from shopformer.data.corpus import DataSpec
from shopformer.data.schema import PAD


class InputEmbedding(nn.Module):
    """Item + position (+ behaviour, time-gap, category) embeddings of each event.

    Positions count from the first real event of the window, so extra left padding never
    changes a representation, and nothing about later events leaks into earlier positions.
    ``model.positions = "end"`` counts back from the newest event instead (SASRec's left-padded
    windows): then a training position also knows how many events follow it in the window,
    never which. Measured below "start" on Beauty (docs/measurements.md, stop 27).
    """

    def __init__(self, cfg: ModelConfig, spec: DataSpec) -> None:
        super().__init__()
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.dim)
        self.use_behaviour = cfg.use_behaviour and spec.n_behaviours > 1
        self.use_gap = cfg.use_time_gap and spec.has_time
        self.use_category = cfg.use_category and spec.n_categories > 0
        if self.use_behaviour:
            self.beh_emb = nn.Embedding(spec.n_behaviours + 1, cfg.dim, padding_idx=PAD)
        if self.use_gap:
            self.gap_emb = nn.Embedding(cfg.time_buckets, cfg.dim, padding_idx=PAD)
        if self.use_category:
            self.cat_emb = nn.Embedding(spec.n_categories + 1, cfg.dim, padding_idx=PAD)
        self.norm = nn.LayerNorm(cfg.dim)
        self.dropout = nn.Dropout(cfg.emb_dropout)
        self.max_len = cfg.max_len
        self.from_end = cfg.positions == "end"
        # Same scale as the item table (cfg.embedding_std): with N(0, 1) defaults the side embeddings
        # would be ~8x larger than the item vectors and drown the item signal after the LayerNorm.
        for m in self.modules():
            if isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=cfg.embedding_std)
                if m.padding_idx is not None:
                    with torch.no_grad():
                        m.weight[m.padding_idx].zero_()

    def forward(self, batch: Batch, item_vectors: torch.Tensor) -> torch.Tensor:
        """item_vectors: (B, L, D) looked up by the model from its (tied) item table."""
        real = batch.items != PAD  # (B, L)
        count = real.long().flip(-1).cumsum(-1).flip(-1) if self.from_end else real.long().cumsum(-1)
        pos = (count - 1).clamp(0, self.max_len - 1)  # 0 at the newest (or first) real event
        x = item_vectors + self.pos_emb(pos)  # (B, L, D)
        if self.use_behaviour:
            x = x + self.beh_emb(batch.behaviours)
        if self.use_gap:
            x = x + self.gap_emb(batch.gaps.clamp(max=self.gap_emb.num_embeddings - 1))
        if self.use_category:
            x = x + self.cat_emb(batch.categories)
        x = self.dropout(self.norm(x))
        return x * real.unsqueeze(-1)  # padding stays exactly zero


def attention_mask(real: torch.Tensor, causal: bool) -> torch.Tensor:
    """(B, 1, L, L) boolean mask, True where query i may attend to key j.

    Keys at padding are hidden; every query may see itself, so padded rows never turn
    into an all-masked softmax (NaN).
    """
    _, length = real.shape
    allowed = real.unsqueeze(1).expand(-1, length, -1)  # (B, L, L) keys that are real
    if causal:
        allowed = allowed & torch.ones(length, length, dtype=torch.bool, device=real.device).tril()
    allowed = allowed | torch.eye(length, dtype=torch.bool, device=real.device)
    return allowed.unsqueeze(1)


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


class LowPassFilter(nn.Module):
    """BSARec's frequency branch (Shin et al., 2024), made causal for training at every position.

    BSARec low-passes the whole left-padded window with an FFT (keeping the ``freq_keep`` lowest
    bins) and reads the result at the last position: a fixed weighted sum of the events k steps
    back, h[k]. Applied at every position of a causal window that FFT would mix later events into
    earlier ones, so here position t sums h[k] * x[t - k] over the events up to t only, which is
    exactly BSARec's value for the history that ends at t (zero padding before it, as in BSARec).
    The output is low + beta^2 * (x - low): the smooth part plus a learned per-dimension share of
    the rest (BSARec's sqrt_beta, drawn from N(0, 1) as there).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        n = cfg.max_len
        spectrum = torch.fft.rfft(torch.eye(n, dtype=torch.float64), dim=0, norm="ortho")
        spectrum[cfg.freq_keep:] = 0
        low = torch.fft.irfft(spectrum, n=n, dim=0, norm="ortho")  # (n, n): column j = low-pass of e_j
        back = low[n - 1].flip(0)  # back[k]: weight at the last position of the event k steps before it
        steps = torch.arange(n)[:, None] - torch.arange(n)[None, :]  # (n, n): t - j
        kernel = torch.where(steps >= 0, back[steps.clamp(min=0)], 0.0).float()  # lower-triangular Toeplitz
        self.kernel: torch.Tensor
        self.register_buffer("kernel", kernel, persistent=False)  # rebuilt from the config, never saved
        self.sqrt_beta = nn.Parameter(torch.randn(cfg.dim))

    def forward(self, x: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """x (B, L, D), real (B, L) bool -> (B, L, D); padding is zeroed so it adds nothing."""
        length = x.shape[1]
        x = x * real.unsqueeze(-1)
        low = self.kernel[:length, :length] @ x  # (L, L) @ (B, L, D): Toeplitz, so any window tail fits
        return low + self.sqrt_beta.square() * (x - low)


class SwiGLU(nn.Module):
    """silu(x W_a) * (x W_b), dropout, then W_out; no biases (the LiGR feed-forward)."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.inp = nn.Linear(dim, 2 * hidden, bias=False)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.inp(x).chunk(2, dim=-1)
        return self.out(self.drop(F.silu(a) * b))


class Block(nn.Module):
    """One Transformer block; ``cfg.norm`` picks the layout (see ``ModelConfig.norm``)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.dim)
        self.attn = SelfAttention(cfg)
        self.freq_mix = cfg.freq_mix
        self.freq = LowPassFilter(cfg) if cfg.freq_mix > 0 else None
        self.ln2 = nn.LayerNorm(cfg.dim)
        self.layout = cfg.norm
        if cfg.norm == "ligr":
            self.ffn: nn.Module = SwiGLU(cfg.dim, cfg.ffn_mult * cfg.dim, cfg.dropout)
            # gates read the un-normalised residual stream: how much of each sub-layer to let in
            self.gate1 = nn.Linear(cfg.dim, cfg.dim)
            self.gate2 = nn.Linear(cfg.dim, cfg.dim)
        else:
            self.ffn = nn.Sequential(
                nn.Linear(cfg.dim, cfg.ffn_mult * cfg.dim),
                nn.GELU(),
                nn.Dropout(cfg.dropout),
                nn.Linear(cfg.ffn_mult * cfg.dim, cfg.dim),
            )
        self.drop = nn.Dropout(cfg.dropout)

    def mix(self, x: torch.Tensor, mask: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """The token mixer: attention, or BSARec's blend of attention and the low-pass filter."""
        y = self.attn(x, mask)
        if self.freq is None:
            return y
        return (1.0 - self.freq_mix) * y + self.freq_mix * self.freq(x, real)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        if self.layout == "post":  # LN(x + f(x)): every block re-normalises the sum it passes on
            x = self.ln1(x + self.drop(self.mix(x, mask, real)))
            return self.ln2(x + self.drop(self.ffn(x)))
        if self.layout == "ligr":  # x + sigmoid(W x) * f(LN(x))
            x = x + torch.sigmoid(self.gate1(x)) * self.drop(self.mix(self.ln1(x), mask, real))
            return x + torch.sigmoid(self.gate2(x)) * self.drop(self.ffn(self.ln2(x)))
        x = x + self.drop(self.mix(self.ln1(x), mask, real))
        return x + self.drop(self.ffn(self.ln2(x)))


class TransformerEncoder(nn.Module):
    """Input embeddings + a stack of blocks (+ a final LayerNorm unless post-LN); causal or bidirectional."""

    def __init__(self, cfg: ModelConfig, spec: DataSpec, causal: bool) -> None:
        super().__init__()
        self.inputs = InputEmbedding(cfg, spec)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        # post-LN blocks already end normalised
        self.ln_f: nn.Module = nn.LayerNorm(cfg.dim) if cfg.norm != "post" else nn.Identity()
        self.causal = causal

    def forward(self, batch: Batch, item_vectors: torch.Tensor) -> torch.Tensor:
        x = self.inputs(batch, item_vectors)  # (B, L, D)
        real = batch.items != PAD  # (B, L)
        mask = attention_mask(real, self.causal)  # (B, 1, L, L)
        for block in self.blocks:
            x = block(x, mask, real)
        return self.ln_f(x)


N_EXACT = 8  # relative distances below this get their own bucket


def log_bucket(x: torch.Tensor, n_exact: int, n_buckets: int) -> torch.Tensor:
    """Non-negative integer tensor -> bucket ids: x below n_exact, then log2-spaced, capped."""
    far = n_exact + torch.log2((x - n_exact + 1).clamp(min=1).float()).long()
    return torch.where(x < n_exact, x, far).clamp(max=n_buckets - 1)


def approx_times(gaps: torch.Tensor) -> torch.Tensor:
    """(B, L) gap buckets -> (B, L) approximate seconds since the window start.

    Bucket b >= 2 holds gaps g with floor(log2(1 + g)) = b - 2; we take the geometric middle
    of that range, 2**(b - 1.5) - 1. Padding (0) and "no previous event" (1) count as 0.
    """
    seconds = torch.where(
        gaps >= 2, torch.exp2(gaps.float() - 1.5) - 1.0, torch.zeros_like(gaps, dtype=torch.float)
    )
    return seconds.cumsum(-1)  # float32 is plenty: differences are bucketed on a log2 scale
