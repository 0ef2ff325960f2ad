"""Process-level settings that make training fast on CPUs: torch threads and the C allocator.

- Threads: a plain run's tensors are tiny, so one intra-op thread is fastest; batched model
  copies (``model.replicas``/``model.restarts``) have tensors ten times larger that do gain
  from every core (benchmarks/README.md). ``threads: null`` picks between the two.
- Allocator: every training step allocates a few buffers of about a megabyte (the
  ``(copies, groups, batch, batch)`` kernels of the partial correlation term). glibc serves
  such sizes with ``mmap`` and returns them on ``free``, so each step pays page faults for
  fresh zeroed pages, about as much time as the arithmetic. Raising glibc's mmap and trim
  thresholds keeps the freed buffers in the heap for reuse; peak memory is unchanged.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # glibc mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 64 * 1024 * 1024
TRIM_THRESHOLD_BYTES = 256 * 1024 * 1024
_allocator_tuned = False


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def training_threads(configured: int | None, n_copies: int) -> int:
    """Intra-op threads: ``configured``, or (None) 1 for one model and all cores for batched copies."""
    if configured is not None:
        return int(configured)
    return 1 if n_copies == 1 else available_cores()


def keep_freed_buffers() -> bool:
    """Raise glibc's mmap and trim thresholds (see the module docstring); once per process.

    Returns whether the allocator was tuned (False where the C library is not glibc).
    """
    global _allocator_tuned
    if _allocator_tuned:
        return True
    path = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(path or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        log.debug("no glibc mallopt: allocator left as it is")
        return False
    _allocator_tuned = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )
    return _allocator_tuned


__all__ = ["available_cores", "keep_freed_buffers", "training_threads"]
