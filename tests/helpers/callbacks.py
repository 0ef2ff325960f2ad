"""Test-only Lightning callbacks, added to a run with ``+callbacks.NAME._target_=tests.helpers.callbacks.CLASS``."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig


class KillProcess(pl.Callback):
    """SIGKILLs this process at batch ``batch`` of epoch ``epoch`` (a pre-emption with no warning).

    With ``job_num`` set, only in that job of a multirun.
    """

    def __init__(self, epoch: int = 0, batch: int = 0, job_num: int | None = None) -> None:
        self.epoch, self.batch, self.job_num = epoch, batch, job_num

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: object, batch_idx: int) -> None:
        if self.job_num is not None and HydraConfig.get().job.num != self.job_num:
            return
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            os.kill(os.getpid(), signal.SIGKILL)


class SaveParametersPerRank(pl.Callback):
    """Writes every rank's flattened parameters and the samples (rows of ``x``) it trained on."""

    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)
        self.samples: list[torch.Tensor] = []

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: dict | list[dict], batch_idx: int
    ) -> None:
        for one_batch in batch if isinstance(batch, list) else [batch]:  # batches_per_call groups them
            self.samples.append(one_batch["x"].detach().clone())  # training batches carry what the loss reads

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        parameters = torch.cat([parameter.detach().flatten() for parameter in pl_module.parameters()])
        torch.save(
            {"parameters": parameters, "world_size": trainer.world_size, "samples": self.samples},
            self.directory / f"rank{trainer.global_rank}.pt",
        )


class RaiseInJob(pl.Callback):
    """Raises when training starts in job ``job_num`` of a multirun (a job that crashes)."""

    def __init__(self, job_num: int = 0) -> None:
        self.job_num = job_num

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if HydraConfig.get().job.num == self.job_num:
            raise RuntimeError(f"deliberate failure of job {self.job_num}")


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


class WorseningValidation(pl.Callback):
    """Makes ``val/loss`` grow with every validation (it never improves after the first); runs
    before the checkpoint callbacks, which Lightning calls last."""

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        trainer.callback_metrics["val/loss"] = torch.tensor(float(trainer.current_epoch))


class SignalAt(pl.Callback):
    """Sends this process ``signals`` (names, in order) after batch ``batch`` of epoch ``epoch``:
    ``["SIGUSR2", "SIGTERM"]`` is what ``scancel --signal=USR2 --full`` delivers to a SLURM task."""

    def __init__(self, signals: list[str], epoch: int = 2, batch: int = 0) -> None:
        self.signals, self.epoch, self.batch = list(signals), epoch, batch

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: object, batch: object, batch_idx: int
    ) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            for name in self.signals:
                os.kill(os.getpid(), getattr(signal, name))
