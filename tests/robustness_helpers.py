"""Test-only helpers of tests/test_robustness_training.py: callbacks that press Ctrl-C or mark an epoch, and
a script that saves checkpoints through :class:`facrnn.faults.AtomicCheckpointIO` until killed."""

from __future__ import annotations

import sys
import time

import pytorch_lightning as pl
import torch


class CtrlCAt(pl.Callback):
    """Raises ``KeyboardInterrupt`` (what Ctrl-C does) when training epoch ``epoch`` starts."""

    def __init__(self, epoch: int = 2) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            raise KeyboardInterrupt


class MarkEpoch(pl.Callback):
    """Creates the file ``path`` when training epoch ``epoch`` ends (tells a test that training runs)."""

    def __init__(self, path: str, epoch: int = 2) -> None:
        self.path, self.epoch = path, epoch

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            with open(self.path, "w") as handle:
                handle.write(str(trainer.current_epoch))


def checkpoint_of(generation: int, n_values: int) -> dict:
    """A checkpoint-like dict whose tensor is filled with ``generation``."""
    return {"generation": generation, "state_dict": {"weight": torch.full((n_values,), float(generation))}}


def save_until_killed(target: str, mode: str, n_values: int) -> None:
    """Save generation 0 completely, then keep saving through the plugin until killed.

    ``mode=slow``: the next save writes half of its bytes, prints ``WRITING`` and hangs (the
    parent kills it there). ``mode=loop``: save generation 1, 2, ... as fast as possible.
    """
    from facrnn import faults

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
