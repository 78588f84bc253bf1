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
