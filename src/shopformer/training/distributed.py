"""Data-parallel training across processes (``torchrun --nproc-per-node N shopformer train ...``).

``fit`` calls ``setup()``: under torchrun (``WORLD_SIZE`` > 1 in the environment) it joins the
process group — gloo for CPU training, NCCL when ``SHOPFORMER_DIST_BACKEND=nccl`` or the
parameters live on a GPU — and returns (rank, world size); a plain run gets (0, 1) and nothing
changes. Then every rank starts from rank 0's weights (``broadcast_parameters``), reads its own
share of each global batch (``TrainLoader.shard``), and after each backward pass the gradients
are summed across ranks in one flat all-reduce and divided by the world size
(``average_gradients``), so every rank applies the same update and the weights stay identical.
Validation runs on rank 0 and its result is sent to the others (``on_main``), so all ranks take
the same early-stopping decision; only rank 0 writes logs and artifacts (``is_main``).
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable, Iterable
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


def world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """True on rank 0 (and in every single-process run): the one process that writes."""
    return world()[0] == 0


def launched_world() -> int:
    """How many processes torchrun started (``WORLD_SIZE``; 1 for a plain run), known before ``setup``."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError as err:
        raise ValueError(f"WORLD_SIZE={os.environ.get('WORLD_SIZE')!r} is not a number of processes") from err


def backend(on_gpu: bool) -> str:
    chosen = os.environ.get("SHOPFORMER_DIST_BACKEND") or ("nccl" if on_gpu else "gloo")
    if chosen not in ("gloo", "nccl"):
        raise ValueError(f"SHOPFORMER_DIST_BACKEND={chosen!r}: use 'gloo' (CPU) or 'nccl' (GPU)")
    return chosen


def setup(module: torch.nn.Module | None = None) -> tuple[int, int]:
    """Join the torchrun process group when launched by torchrun; returns (rank, world size)."""
    size = launched_world()
    if size > 1 and dist.is_available() and not dist.is_initialized():
        on_gpu = module is not None and any(p.is_cuda for p in module.parameters())
        chosen = backend(on_gpu)
        if chosen == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(chosen)
        # Gloo's worker threads must stop while the interpreter is still alive: a process that exits
        # with its group open can abort ("terminate called without an active exception",
        # pytorch/pytorch#190489), and torchrun then reports the whole run as failed. Ranks > 0 leave
        # run_experiment early (rank 0 alone tests and writes), so this matters on every run.
        atexit.register(teardown)
    return world()


def teardown() -> None:
    """Leave the process group, if one is open. Local to this process (no collective), so it is safe
    whatever the other ranks are doing."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_parameters(module: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank (in place)."""
    if world()[1] == 1:
        return
    with torch.no_grad():
        for t in module.state_dict().values():
            dist.broadcast(t, src=0)


def average_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """Mean of each gradient over the ranks, in one flat all-reduce (a missing gradient counts as 0,
    so every rank sends the same layout)."""
    _, size = world()
    if size == 1:
        return
    params = list(params)
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])  # type: ignore[union-attr]
    dist.all_reduce(flat)
    flat /= size
    offset = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[offset : offset + n].view_as(p))  # type: ignore[union-attr]
        offset += n


def on_main(fn: Callable[[], T]) -> Callable[[], T]:
    """``fn`` run on rank 0 only, its (picklable) result sent to every rank."""
    if world()[1] == 1:
        return fn

    def run() -> T:
        box: list = [fn() if is_main() else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    return run


def sum_over_ranks(value: float) -> float:
    """``value`` summed over the ranks (itself in a single process)."""
    if world()[1] == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item())
