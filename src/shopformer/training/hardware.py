"""What the training step asks of the hardware: bf16 autocast where it is native, torch.compile.

``step_precision`` resolves ``train.precision``: "bf16" always autocasts the step to bfloat16,
"auto" only where bf16 is native — a CUDA device that supports it, or a CPU whose flags
(/proc/cpuinfo) include ``amx_bf16`` or ``avx512_bf16``; elsewhere bf16 is emulated and slower
than fp32 (bench/results/train_step.json). The full-catalogue loss always runs in fp32
(models/chunked_ce.py leaves autocast), so only the encoder changes precision.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch

BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The CPU feature flags of the first processor listed (empty when unknown)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def bf16_native(device: torch.device, flags: set[str] | None = None) -> bool:
    """Whether ``device`` computes bfloat16 matmuls natively."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        return any(f in (cpu_flags() if flags is None else flags) for f in BF16_CPU_FLAGS)
    return False


def step_precision(precision: str, device: torch.device, flags: set[str] | None = None) -> torch.dtype | None:
    """The autocast dtype of the training step for ``train.precision`` (None: plain fp32)."""
    if precision == "bf16" or (precision == "auto" and bf16_native(device, flags)):
        return torch.bfloat16
    return None


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """Autocast to ``dtype`` on ``device`` (nothing when dtype is None)."""
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


@contextlib.contextmanager
def compiled_encoder(model: torch.nn.Module, enabled: bool) -> Iterator[None]:
    """While inside, ``model.encode`` is its torch.compile'd version (dynamic shapes: batch widths
    vary); the plain method is back on exit, so nothing compiled is saved or deep-copied."""
    encode = getattr(model, "encode", None)
    if not enabled or encode is None:
        yield
        return
    setattr(model, "encode", torch.compile(encode, dynamic=True))  # noqa: B010 (an instance attribute, on purpose)
    try:
        yield
    finally:
        del model.encode
