"""Lightning callbacks: a compact progress bar over epochs (runs are thousands of short epochs)
and a ``ModelCheckpoint`` whose ``last.ckpt`` is the latest state at every validation."""

from __future__ import annotations

import sys

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint, ProgressBar
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
        self._close()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._close()  # ends the bar's line: an `error:` message then starts a line of its own

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def is_final_epoch(trainer: pl.Trainer) -> bool:
    """Whether the epoch now ending is the last one ``fit`` trains (``max_epochs`` reached or a stop requested)."""
    max_epochs = trainer.max_epochs
    if trainer.should_stop:
        return True
    return max_epochs is not None and max_epochs >= 0 and trainer.current_epoch + 1 >= max_epochs


class BestAndLastCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that writes ``last.ckpt`` at every validation, not only at those that
    improved the monitored metric.

    Lightning 2.6 saves the last checkpoint only in a step that also saved a top-k
    checkpoint, so with ``save_top_k=1`` and ``save_last=true`` ``last.ckpt`` stayed at the
    epoch of ``best.ckpt``: ``checkpoint=last`` scored the best model, and a resume went back
    to the best epoch and trained the epochs since again. Here ``last.ckpt`` always holds the
    state of the latest validation (``ckpt_path=last`` continues from it), and at the end of
    training the final state, also when the last epoch had no validation (``max_epochs`` not
    a multiple of ``check_val_every_n_epoch``), so ``checkpoint=last`` is the trained model.
    """

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):  # validation every epoch: Lightning saves here
            self._refresh_last(trainer)
        elif is_final_epoch(trainer):
            self._refresh_last(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._refresh_last(trainer)

    def _refresh_last(self, trainer: pl.Trainer) -> None:
        """Write ``last.ckpt`` unless this step already saved a checkpoint (or saving is off)."""
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
