"""How ``train.py`` and ``evaluate.py`` treat the Python process that runs them.

:func:`frozen_garbage_collection` keeps CPython's cyclic garbage collector off the objects that
live as long as the process: the modules, classes and functions a command imports (~400,000
objects with torch, Lightning, W&B, Hydra and scipy) and, at the end, everything left when the
process exits. Without it a full collection walks all of them: three such collections during
the 5,000-epoch paper run cost ~0.9 s, and the collections of the interpreter's shutdown ~1 s
(benchmarks/README.md). Objects that become garbage after the freeze are collected as usual.

The commands also turn the collector off (``gc.disable()``) before their imports, when run as
``__main__``: while the modules load, the full collections, each over all the objects loaded
so far, took ~0.8 s of the start. :func:`frozen_garbage_collection` turns it back on.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["frozen_garbage_collection"]


@contextmanager
def frozen_garbage_collection() -> Iterator[None]:
    """Run a command with what exists on entry frozen out of garbage collection (``gc.freeze``),
    the collector on (the command turns it off while it imports), and freeze again on the way
    out, for the interpreter's shutdown.

    For the ``if __name__ == "__main__":`` block of a command only: the process must end once
    the block is left (a frozen object is never collected, so freezing between the jobs of a
    long-lived process would keep the reference cycles of earlier jobs alive).
    """
    gc.freeze()
    gc.enable()
    try:
        yield
    finally:
        gc.freeze()  # the process ends now: its shutdown need not walk every object again
