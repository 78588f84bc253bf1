"""BERT4Rec-style bidirectional masked model (Sun et al., 2019).

Training (``loss``): some events of the window are replaced by [MASK] and predicted from both
sides; the target at a masked position is the item that was there (not the next one).
Inference (``last_hidden``/``score_all``): a [MASK] is appended after the history and the
catalogue is scored at that position.

The training window. The loader's ``Batch`` is a *causal* window: ``items`` are the first L
events, ``targets[:, t]`` is the event after ``items[:, t]``. The full window of L + 1 events
is therefore ``items`` followed by ``targets[:, -1]`` (the rest of ``targets`` repeats
``items``), with ``target_behaviours[:, -1]`` as its behaviour. The batch carries no time gap
or category for that final event, so they are padding (0) there, exactly like the appended
[MASK] at inference. Only the last ``max_len`` events are kept (positional table size): when
the batch already holds ``max_len`` inputs, a full row loses its oldest input — that event is
still the final target of the previous sliding window. Using the final target matters:
otherwise the most recent training event of a user would never be masked and learned.

Caution for multi-task heads: ``encode`` is bidirectional, so per-position next-event heads on
``encode(batch)`` of an unmasked causal batch would see their own targets. Use ``corrupt`` (masked
positions) or ``last_hidden`` (appended [MASK]) for anything predictive.

A masked event hides its behaviour, time gap and category too (set to padding): at inference
nothing about the next event is known, and a category would give most of the answer away.

``corrupt`` is the one place that masks: ``loss`` uses it over all events, and fine-tuning on a
target behaviour (training/finetune.py) uses it with ``eligible`` (the target-type events only).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from shopformer.config import LossConfig, ModelConfig
from shopformer.data.batches import Batch
from shopformer.data.corpus import DataSpec
from shopformer.data.schema import PAD
from shopformer.models.base import LossOutput, SequenceModel
from shopformer.models.layers import TransformerEncoder
from shopformer.models.losses import NegativeSampler


def _append(t: torch.Tensor, col: torch.Tensor, max_len: int) -> torch.Tensor:
    """(B, L) + (B, 1) -> (B, min(L + 1, max_len)): append, keep the most recent columns."""
    return torch.cat([t, col], dim=1)[:, -max_len:]


class BERT4Rec(SequenceModel):
    name = "bert4rec"
    causal = False
    # Share of training rows whose last event is always masked, on top of random masking
    # (trains the exact inference task: predict the event after the history).
    last_mask_frac: ClassVar[float] = 0.5

    def __init__(self, cfg: ModelConfig, spec: DataSpec) -> None:
        super().__init__(cfg, spec)
        self.encoder = TransformerEncoder(cfg, spec, causal=False)

    def encode(self, batch: Batch) -> torch.Tensor:
        """(B, L) -> (B, L, D); bidirectional: position t sees the whole window."""
        return self.encoder(batch, self.item_emb(batch.items))

    # ---- training -------------------------------------------------------------------------

    def training_window(self, batch: Batch) -> Batch:
        """The full event window of a causal training batch, (B, min(L + 1, max_len))."""
        if batch.targets is None:
            raise ValueError("a training batch needs targets")
        zero = torch.zeros_like(batch.items[:, :1])  # (B, 1)
        last_beh = zero if batch.target_behaviours is None else batch.target_behaviours[:, -1:]
        n = self.cfg.max_len
        return Batch(
            items=_append(batch.items, batch.targets[:, -1:], n),
            behaviours=_append(batch.behaviours, last_beh, n),
            gaps=_append(batch.gaps, zero, n),  # unknown for the final target
            categories=_append(batch.categories, zero, n),  # unknown for the final target
        )

    def corrupt(
        self, batch: Batch, generator: torch.Generator | None = None, eligible: torch.Tensor | None = None
    ) -> tuple[Batch, torch.Tensor]:
        """Mask a training batch: (masked input window, (B, L') targets, 0 where not masked).

        Each real event is masked with probability ``cfg.mask_prob``; the last one also for a
        share of rows (``last_mask_frac``) and for every row that drew no mask at all.
        ``eligible`` ((B, >= L') bool, right-aligned with the full window; optional) restricts
        masking to those events, and then the last event is masked whenever it is eligible (the
        inference task, e.g. "the next purchase"); a row may end with no mask at all.
        Randomness comes from ``generator`` (drawn on its device) or the global torch RNG.
        """
        full = self.training_window(batch)
        real = full.items != PAD  # (B, L')
        dev = generator.device if generator is not None else real.device
        candidates = real if eligible is None else real & eligible[:, -real.shape[1] :]
        r = torch.rand(real.shape, generator=generator, device=dev).to(real.device)  # (B, L')
        masked = candidates & (r < self.cfg.mask_prob)
        if eligible is None:
            r_last = torch.rand(real.shape[0], generator=generator, device=dev).to(real.device)  # (B,)
            # Mask the last event for a share of rows, and for any row that drew no mask at all
            # (it would contribute nothing, and a batch without masks would give a NaN loss).
            force_last = (r_last < self.last_mask_frac) | ~masked.any(-1)
            masked[:, -1] |= force_last & real[:, -1]
        else:
            masked[:, -1] |= candidates[:, -1]
        keep = ~masked
        inputs = Batch(
            items=full.items.masked_fill(masked, self.mask_id),
            behaviours=full.behaviours * keep,
            gaps=full.gaps * keep,
            categories=full.categories * keep,
        )
        return inputs, full.items * masked  # target = the original item at its own position

    def loss(self, batch: Batch, loss_cfg: LossConfig, sampler: NegativeSampler | None = None) -> LossOutput:
        inputs, targets = self.corrupt(batch)
        loss = self.item_loss(self.encode(inputs), targets, loss_cfg, sampler,  # masked positions only
                              window=full_window(inputs, targets))
        return LossOutput(loss, {"item": float(loss.detach())})

    # ---- inference ------------------------------------------------------------------------

    def with_mask_appended(self, batch: Batch) -> Batch:
        """History + a trailing [MASK] (side features 0); drops the oldest event if full."""
        zero = torch.zeros_like(batch.items[:, :1])  # (B, 1)
        n = self.cfg.max_len
        return Batch(
            items=_append(batch.items, torch.full_like(zero, self.mask_id), n),
            behaviours=_append(batch.behaviours, zero, n),
            gaps=_append(batch.gaps, zero, n),
            categories=_append(batch.categories, zero, n),
        )

    def last_hidden(self, batch: Batch) -> torch.Tensor:
        """(B, D) state at the [MASK] appended after the history."""
        return self.encode(self.with_mask_appended(batch))[:, -1]


def full_window(inputs: Batch, targets: torch.Tensor) -> torch.Tensor:
    """(B, L') the events of a corrupted window: the masked ones' targets, the others' inputs."""
    return torch.where(targets != PAD, targets, inputs.items)
