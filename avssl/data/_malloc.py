"""Keep freed memory for reuse in data-loading processes (glibc only).

A worker makes one float video per clip (2.4 MB at 4 x 4 frames of 112 px, 9.6 MB at 224 px). With glibc's
default, dynamic thresholds such a buffer is often a fresh ``mmap`` or lands above the trim threshold, so every
clip's first touch of it costs a page fault per 4 KiB page: at 224 px about 4,700 faults per clip, which took more
CPU than decoding its JPEGs (``benchmarks/bench_shard_reader.py --malloc default|retain``, docs/benchmarks.md).
Serving allocations below 32 MiB from the heap and keeping up to 1 GiB of freed memory lets the next clip reuse
the pages of the last one. Applied in DataLoader worker processes only (``data.worker_retain_memory``): they hold
nothing but the data path; a training process is left with its allocator as it is.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from typing import Any

__all__ = ["retain_freed_memory", "retain_in_worker"]

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers (malloc.h)


def retain_freed_memory(mmap_threshold: int = 32 << 20, trim_threshold: int = 1 << 30) -> bool:
    """Set this process's glibc ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD``. True when applied, False where the
    C library is not glibc (macOS, Windows, musl): the allocator is then left as it is."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc: Any = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold))) and bool(mallopt(_M_TRIM_THRESHOLD,
                                                                                   int(trim_threshold)))


def retain_in_worker(worker_id: int) -> None:
    """``worker_init_fn`` for a DataLoader: ``retain_freed_memory()`` in the worker process."""
    del worker_id
    retain_freed_memory()
