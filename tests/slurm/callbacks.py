"""Test-only Lightning callbacks for the SLURM tests (``+callbacks.NAME._target_=tests.slurm.callbacks.CLASS``)."""

from __future__ import annotations

import time
from pathlib import Path

import pytorch_lightning as pl
import torch


class SleepPerEpoch(pl.Callback):
    """Sleeps ``seconds`` after every training epoch: a run whose length is set by its epoch count."""

    def __init__(self, seconds: float = 0.5) -> None:
        self.seconds = seconds

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        time.sleep(self.seconds)


class DistributedPCProbe(pl.Callback):
    """Under DDP, evaluates the fixed problem of tests/runs/test_scale.py's DDP test on this rank's half.

    When training starts (the process group is Lightning's, set up from SLURM's ranks), every
    rank computes the loss of its half of ``_gathered_gradient_problem()``'s batch, the PC term
    over the all-gathered batch, backpropagates and averages the gradients across ranks as DDP
    does; rank 0 writes the PC value and the gradients to ``path``.
    """

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from tests.runs.test_scale import _gathered_gradient_problem

        world_size, rank = trainer.world_size, trainer.global_rank
        with torch.random.fork_rng():  # the problem seeds torch; the run's own stream stays untouched
            module, batch, noise = _gathered_gradient_problem()
        share = batch["x"].shape[0] // world_size
        rows = slice(rank * share, (rank + 1) * share)
        module.model.sample = lambda means: means + module.width * noise[rows]
        terms = module.loss_terms({key: value[rows] for key, value in batch.items()})
        terms["loss"].backward()
        for parameter in module.parameters():
            torch.distributed.all_reduce(parameter.grad)
            parameter.grad /= world_size
        if rank == 0:
            gradients = {name: parameter.grad for name, parameter in module.named_parameters()}
            self.path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(
                {"world_size": world_size, "partial_corr": terms["partial_corr"].detach(), "gradients": gradients}, self.path
            )
