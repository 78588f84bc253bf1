"""training/allocator.py: the CLI's malloc policy (freed large blocks reused, not unmapped)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from shopformer.training.allocator import keep_freed_memory


def test_the_environment_can_leave_the_c_librarys_policy() -> None:
    assert keep_freed_memory("default") is False


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_glibc_takes_both_thresholds() -> None:
    # in a child process: the thresholds are process-wide and would outlive this test
    code = "from shopformer.training.allocator import keep_freed_memory as k; print(k(''))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True"


def test_both_thresholds_fit_the_c_int_mallopt_takes() -> None:
    """A value above INT_MAX wraps to a negative int, which glibc reads as "never trim" (stop 42's first form)."""
    from shopformer.training.allocator import INT_MAX, MMAP_THRESHOLD, TOP_PAD, TRIM_THRESHOLD

    assert all(0 < v <= INT_MAX for v in (MMAP_THRESHOLD, TRIM_THRESHOLD, TOP_PAD))


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_freed_memory_beyond_the_trim_threshold_goes_back_to_the_kernel() -> None:
    """Blocks under the mmap threshold stay for reuse, but not without bound: 2.4 GB freed at the top of the
    heap is more than the trim threshold, so the heap is trimmed (to its top pad) and the process's RSS falls."""
    code = """
import numpy as np
from shopformer.training.allocator import keep_freed_memory
assert keep_freed_memory('')
def rss_mb():
    return int(next(l for l in open('/proc/self/status') if l.startswith('VmRSS')).split()[1]) // 1024
blocks = [np.ones(100_000_000) for _ in range(3)]  # 3 x 800 MB, each under the 1 GiB mmap threshold: heap
held = rss_mb()
del blocks
print(held, rss_mb())
"""
    held, after = map(int, subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                          check=True).stdout.split())
    assert held > 2_000 and after < 1_000, (held, after)  # MiB
