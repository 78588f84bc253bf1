"""GRU4Rec-style recurrent baseline (Hidasi et al., 2016) and the shared RNN plumbing.

Same behaviour-aware inputs and tied output embeddings as the Transformers, so a comparison
isolates the sequence mixer. Windows are left-padded, and an RNN is *not* padding-invariant
by itself: a zero input still moves the state through the biases. ``run_left_padded`` therefore
left-aligns each row and packs it, so the recurrence starts at the first real event.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn as nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from shopformer.config import ModelConfig
from shopformer.data.batches import Batch
from shopformer.data.corpus import DataSpec
from shopformer.data.schema import PAD
from shopformer.models.base import SequenceModel
from shopformer.models.layers import InputEmbedding


def run_left_padded(rnn: nn.RNNBase, x: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Run a batch_first RNN over left-padded rows as if the padding were not there.

    x: (B, L, D) inputs, real: (B, L) True at events (a suffix of each row).
    Returns (B, L, H) outputs, right-aligned like the inputs and exactly 0 at padding.
    """
    b, length, _ = x.shape
    lengths = real.sum(-1)  # (B,)
    shift = (length - lengths)[:, None]  # (B, 1) padding per row
    cols = torch.arange(length, device=x.device)[None, :]  # (1, L)
    # Rotate every row left by its padding: events now start at column 0 (right padding).
    to_left = ((cols + shift) % length).unsqueeze(-1)  # (B, L, 1)
    x_left = x.gather(1, to_left.expand(-1, -1, x.shape[-1]))
    # Packing stops the recurrence at each row's length; empty rows run one (zero) step and
    # are zeroed below. Lengths must live on the CPU.
    packed = pack_padded_sequence(x_left, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
    out, _ = rnn(packed)
    out, _ = pad_packed_sequence(out, batch_first=True, total_length=length)  # (B, L, H)
    # Rotate back to right alignment.
    to_right = ((cols - shift) % length).unsqueeze(-1)  # (B, L, 1)
    out = out.gather(1, to_right.expand(-1, -1, out.shape[-1]))
    return out * real.unsqueeze(-1)


class RecurrentModel(SequenceModel):
    """InputEmbedding -> multi-layer RNN -> LayerNorm; subclasses pick ``rnn_type``.

    The position term of InputEmbedding is redundant for an RNN but harmless; keeping the
    same inputs as the Transformers keeps the comparison fair.
    """

    has_attention = False  # LoRA (which targets attention projections) refuses these models
    rnn_type: ClassVar[type[nn.GRU] | type[nn.LSTM]]

    def __init__(self, cfg: ModelConfig, spec: DataSpec) -> None:
        super().__init__(cfg, spec)
        self.inputs = InputEmbedding(cfg, spec)
        self.rnn = self.rnn_type(
            cfg.dim,
            cfg.dim,
            num_layers=cfg.layers,
            batch_first=True,
            dropout=cfg.dropout if cfg.layers > 1 else 0.0,  # between layers only
        )
        self.drop = nn.Dropout(cfg.dropout)
        self.ln_f = nn.LayerNorm(cfg.dim)  # same output scale as the Transformers' final LN

    def encode(self, batch: Batch) -> torch.Tensor:
        real = batch.items != PAD  # (B, L)
        x = self.inputs(batch, self.item_emb(batch.items))  # (B, L, D), 0 at padding
        h = run_left_padded(self.rnn, x, real)  # (B, L, D)
        return self.ln_f(self.drop(h)) * real.unsqueeze(-1)


class GRU4Rec(RecurrentModel):
    name = "gru4rec"
    rnn_type = nn.GRU
