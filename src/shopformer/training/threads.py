"""How many CPU threads training uses: the cores actually free when it starts, unless told.

The rule (``choose_threads``), first match wins:

1. an explicit ``train.threads`` (a config file, ``--set train.threads=N`` or ``shopformer train --threads N``);
2. the ``SHOPFORMER_THREADS`` environment variable (an integer >= 1);
3. otherwise the cores this process may run on (``os.sched_getaffinity``, which honours ``taskset`` and
   container CPU sets) minus the 1-minute load average, rounded, at least 1 and at most those cores.

On a shared machine a thread count above the free cores makes every thread wait for the others at each
matrix product (measured: 2 threads on a busy 2-core machine ran ~5x slower than 1), so the default asks
the load; on an idle machine it takes every core. The choice is printed once at the start of training.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

ENV = "SHOPFORMER_THREADS"


class ThreadsError(ValueError):
    """A ``SHOPFORMER_THREADS`` value that is not an integer >= 1."""


@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    source: str  # "config", "env" or "auto"
    cores: int  # cores this process may run on
    load1: float | None  # 1-minute load average read (auto only)

    def describe(self) -> str:
        if self.source == "config":
            return f"threads: {self.threads} (train.threads)"
        if self.source == "env":
            return f"threads: {self.threads} ({ENV})"
        return (f"threads: {self.threads} (auto: {self.cores} cores available, 1-min load {self.load1:.1f}; "
                f"set {ENV} or --threads to choose)")


def available_cores() -> int:
    """Cores this process may run on (CPU affinity), else ``os.cpu_count()``."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on every platform
        return max(1, os.cpu_count() or 1)


def free_cores(cores: int, load1: float) -> int:
    """``cores`` minus the running load, rounded half up, clamped to [1, cores]."""
    return max(1, min(cores, math.floor(cores - load1 + 0.5)))


def choose_threads(configured: int | None, env: str | None = None, cores: int | None = None,
                   load1: float | None = None) -> ThreadChoice:
    """The thread count by the module's rule; ``env``/``cores``/``load1`` default to this machine's."""
    n_cores = available_cores() if cores is None else cores
    if configured is not None:
        return ThreadChoice(configured, "config", n_cores, None)
    raw = os.environ.get(ENV) if env is None else env
    if raw is not None and raw.strip():
        try:
            value = int(raw.strip())
        except ValueError:
            value = 0
        if value < 1:
            raise ThreadsError(f"{ENV}={raw!r}: must be an integer >= 1")
        return ThreadChoice(value, "env", n_cores, None)
    if load1 is None:
        try:
            load1 = os.getloadavg()[0]
        except (AttributeError, OSError):
            load1 = 0.0
    return ThreadChoice(free_cores(n_cores, load1), "auto", n_cores, load1)
