"""Keep freed memory for the next tensor of the same size instead of handing it back to the kernel.

glibc serves an allocation above its mmap threshold (128 KB at first, growing to at most 32 MB) with
fresh pages from the kernel and unmaps them when the block is freed. Ranking a whole catalogue makes
several (rows, items) float tensors per batch and per system, 77 MB each at 75k items and 256 rows, so
every one of them is paid for again in page faults on first touch (the kernel time of issue 17). With the
mmap threshold at 1 GiB (``mallopt``) those blocks come from the heap and are reused: on one thread at 75k
items a blend's mix, copy and rank take 2-4x less time (``bench/blend_speed.py --keep-freed-memory``).

How much freed memory the heap keeps is the trim threshold, and how much it keeps after a trim the top
pad: both at 256 MiB, a batch's blocks are reused and the rest goes back to the kernel. A 2 GiB trim
threshold without a pad (stop 42's first form) was 7% faster on the blend search's work and held more
memory (peak RSS 1,442 against 1,055 MB; glibc's own policy: twice the time, 1,350 MB; ``bench/allocator.py``).
Freed blocks between live ones stay resident whatever the trim settings: on the Taobao stream slice
``shopformer train`` peaked at 4.3 GB against 2.4 GB under glibc's policy, with 12x less kernel time.

The CLI calls ``keep_freed_memory`` once per command. ``SHOPFORMER_MALLOC=default`` leaves the C
library's own policy; where the C library is not glibc (macOS, musl) nothing changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

ENV = "SHOPFORMER_MALLOC"
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # glibc's malloc.h
INT_MAX = (1 << 31) - 1  # mallopt takes a C int: a larger value wraps to a negative one, read as "never trim"
MMAP_THRESHOLD = 1 << 30
TRIM_THRESHOLD = 256 << 20
TOP_PAD = 256 << 20


def keep_freed_memory(env: str | None = None, trim: int = TRIM_THRESHOLD, pad: int = TOP_PAD) -> bool:
    """Raise glibc's mmap threshold, then set the trim threshold and the top pad (``pad`` 0: glibc's own);
    True when all were set (False: the mmap threshold was refused, and nothing else was set)."""
    if (os.environ.get(ENV) if env is None else env) == "default":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # no C library by that name, or one without mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # an older glibc refuses an mmap threshold above 32 MB: large blocks are then mapped as before, and the
    # other settings are left alone too
    if not mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD):
        return False
    return bool(mallopt(M_TRIM_THRESHOLD, trim)) and (pad == 0 or bool(mallopt(M_TOP_PAD, pad)))
