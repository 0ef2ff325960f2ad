"""A script for tests/training/test_robustness_training.py that saves checkpoints through
:class:`facrnn.training.faults.AtomicCheckpointIO` until killed
(``python -m tests.helpers.checkpoint_writer TARGET slow|loop N``)."""

from __future__ import annotations

import sys
import time

import torch


def checkpoint_of(generation: int, n_values: int) -> dict:
    """A checkpoint-like dict whose tensor is filled with ``generation``."""
    return {"generation": generation, "state_dict": {"weight": torch.full((n_values,), float(generation))}}


def save_until_killed(target: str, mode: str, n_values: int) -> None:
    """Save generation 0 completely, then keep saving through the plugin until killed.

    ``mode=slow``: the next save writes half of its bytes, prints ``WRITING`` and hangs (the
    parent kills it there). ``mode=loop``: save generation 1, 2, ... as fast as possible.
    """
    from facrnn.training import faults

    plugin = faults.AtomicCheckpointIO()
    plugin.save_checkpoint(checkpoint_of(0, n_values), target)
    print("SAVED 0", flush=True)
    if mode == "slow":
        real_save = torch.save

        def half_then_hang(obj: object, handle: object) -> None:
            import io

            buffer = io.BytesIO()
            real_save(obj, buffer)
            data = buffer.getvalue()
            handle.write(data[: len(data) // 2])
            handle.flush()
            print("WRITING", flush=True)
            time.sleep(120)

        faults.torch.save = half_then_hang  # the module's torch is the torch module: patch the write itself
    generation = 1
    while True:
        plugin.save_checkpoint(checkpoint_of(generation, n_values), target)
        print(f"SAVED {generation}", flush=True)
        generation += 1


if __name__ == "__main__":
    save_until_killed(sys.argv[1], sys.argv[2], int(sys.argv[3]))
