"""LSTM recurrent baseline: GRU4Rec's plumbing (padding-invariant packing) with an nn.LSTM."""

from __future__ import annotations

import torch.nn as nn

from shopformer.models.gru4rec import RecurrentModel


class LSTMRec(RecurrentModel):
    name = "lstm"
    rnn_type = nn.LSTM
