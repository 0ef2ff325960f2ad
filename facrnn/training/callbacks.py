"""Lightning callbacks: a compact progress bar over epochs (runs are thousands of short epochs)."""

from __future__ import annotations

import sys

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ProgressBar
from tqdm.auto import tqdm


class EpochProgressBar(ProgressBar):
    """One progress bar over epochs showing the latest epoch's training loss.

    Lightning's default bar redraws every step and resets every epoch, which floods logs
    for runs of thousands of 8-step epochs. This bar advances once per epoch and, when
    output is not a terminal (cluster logs, CI), prints at most every 30 seconds.
    """

    def __init__(self) -> None:
        super().__init__()
        self._enabled = True
        self._bar: tqdm | None = None

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not (self._enabled and trainer.is_global_zero):
            return
        total = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
        interactive = sys.stderr.isatty()
        self._bar = tqdm(
            total=total,
            initial=trainer.current_epoch,
            desc="training",
            unit="epoch",
            dynamic_ncols=True,
            mininterval=0.5 if interactive else 30.0,
            file=sys.stderr,
        )

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._bar is None:
            return
        self._bar.update(1)
        loss = trainer.callback_metrics.get("train/loss")
        if loss is not None and self._bar.n % 10 == 0:
            self._bar.set_postfix(loss=f"{float(loss):.3f}", refresh=False)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
