"""Shared measurement helpers for the benchmarks (each benchmark prints one JSON line)."""

from __future__ import annotations

import json
import platform
import resource
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def skip_if_missing(path: Path, bench: str) -> None:
    if not path.exists():
        print(json.dumps({"bench": bench, "skipped": f"{path} not found (needs ../shared/data)"}))
        sys.exit(0)


def matmul_gflops(n: int = 1024, repeat: int = 10) -> float:
    """Measured fp32 matmul throughput of this machine with torch's current thread count."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    t = time.perf_counter()
    for _ in range(repeat):
        a @ b
    return 2 * n**3 * repeat / (time.perf_counter() - t) / 1e9


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> dict:
    return {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "torch": torch.__version__}
