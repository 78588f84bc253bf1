"""LoRA adapters (Hu et al., 2021) for fine-tuning a pre-trained model's attention projections.

``LoRALinear`` *is* an ``nn.Linear`` (same ``weight``/``bias`` keys, so a pre-trained state
dict still loads) plus a low-rank update ``(alpha / rank) * B A``. B starts at zero, so right
after ``apply_lora`` the model computes exactly what it did before.

    n = apply_lora(model, rank=8, alpha=16)          # wraps e.g. every ``qkv`` / ``proj``
    mark_only_lora_trainable(model, also=("item_emb",))
    ... fine-tune ...
    merge_lora(model)                                # back to plain nn.Linear, same outputs
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

# Attention projections of the zoo: SASRec/BERT4Rec ``qkv`` + ``proj``, HSTU ``uvqk`` + ``proj``.
DEFAULT_TARGET = ("qkv", "uvqk", "proj")


class LoRALinear(nn.Linear):
    """Frozen ``nn.Linear`` + trainable low-rank update: y = W x + b + s * B (A x)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0) -> None:
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        super().__init__(
            base.in_features,
            base.out_features,
            bias=base.bias is not None,
            device=base.weight.device,
            dtype=base.weight.dtype,
        )
        # Share the pre-trained tensors (no copy) and freeze them.
        self.weight = base.weight
        self.bias = base.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self.rank, self.scaling = rank, alpha / rank
        dev, dt = base.weight.device, base.weight.dtype
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=dev, dtype=dt))  # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=dev, dtype=dt))  # (out, r): 0 => no-op
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear / the reference
        self.lora_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B)  # (..., out)
        return F.linear(x, self.weight, self.bias) + self.scaling * update

    def merged(self) -> nn.Linear:
        """A plain nn.Linear computing the same function (W + s * B A)."""
        out = nn.Linear(
            self.in_features,
            self.out_features,
            bias=self.bias is not None,
            device=self.weight.device,
            dtype=self.weight.dtype,
        )
        with torch.no_grad():
            out.weight.copy_(self.weight + self.scaling * self.lora_B @ self.lora_A)
            if self.bias is not None:
                out.bias.copy_(self.bias)
        out.requires_grad_(self.weight.requires_grad)  # the base stays as frozen as it was
        return out


def _replace(model: nn.Module, qualified: str, new: nn.Module) -> None:
    parent_name, _, child = qualified.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def apply_lora(
    model: nn.Module,
    rank: int,
    alpha: float,
    target: tuple[str, ...] = DEFAULT_TARGET,
    dropout: float = 0.0,
) -> int:
    """Wrap every nn.Linear whose own name (last part of its path) is in ``target``.

    Returns the number of wrapped layers. Raises ValueError for models without attention
    layers (``has_attention`` False, e.g. the RNNs) and when nothing matches.
    """
    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    if not getattr(model, "has_attention", True):
        raise ValueError(
            f"LoRA targets attention projections; {type(model).__name__} has no attention layers"
        )
    names = [
        name
        for name, m in model.named_modules()
        if type(m) is nn.Linear and name.rpartition(".")[2] in target  # skips LoRALinear already applied
    ]
    if not names:
        raise ValueError(f"no nn.Linear named one of {target} in {type(model).__name__}")
    for name in names:
        base = model.get_submodule(name)
        assert isinstance(base, nn.Linear)
        _replace(model, name, LoRALinear(base, rank, alpha, dropout))
    return len(names)


def mark_only_lora_trainable(model: nn.Module, also: tuple[str, ...] = ()) -> int:
    """Freeze everything but the LoRA factors (and parameters whose name contains any of
    ``also``, e.g. ``("item_emb", "ln_f")``). Returns the number of trainable parameters."""
    for name, p in model.named_parameters():
        is_lora = name.rpartition(".")[2] in ("lora_A", "lora_B")
        p.requires_grad_(is_lora or any(s in name for s in also))
    return count_parameters(model)[0]


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def merge_lora(model: nn.Module) -> int:
    """Fold every LoRALinear back into a plain nn.Linear (same outputs). Returns how many."""
    names = [name for name, m in model.named_modules() if isinstance(m, LoRALinear)]
    for name in names:
        lora = model.get_submodule(name)
        assert isinstance(lora, LoRALinear)
        _replace(model, name, lora.merged())
    return len(names)
