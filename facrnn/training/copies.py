"""Bookkeeping of batched model copies during training (``model.replicas``, ``model.restarts``;
docs/scale.md, docs/robust.md).

:class:`CopyTracker`, held by :class:`~facrnn.training.module.FacRNNModule` as ``module.copies``,
records every copy's epoch means of the loss terms, keeps each copy's weights at its lowest
validation loss (its best checkpoint), picks the best start of every replica after the
restarts' warm phase and drops the others, and lets a diverged copy drop out. Its state
travels in the checkpoint under :data:`CHECKPOINT_KEY`; :mod:`facrnn.runs.export` writes the
copies' run directories from it.
"""

from __future__ import annotations

import logging
from typing import Any

import pytorch_lightning as pl
import torch

from facrnn.core.copies import keep_optimizer_state, select_starts
from facrnn.core.losses import LOSS_TERMS
from facrnn.errors import TrainingFaultError
from facrnn.training.nonfinite import last_checkpoint_message

log = logging.getLogger(__name__)

#: checkpoint entry of the copies' bookkeeping
CHECKPOINT_KEY = "facrnn_copies"
#: epochs of the restarts' warm phase when neither ``model.restart_epochs`` nor ``trainer.max_epochs`` says
DEFAULT_MAX_EPOCHS = 1000

#: one recorded epoch: ``(epoch, global step, means (terms, C))``
HistoryEntry = tuple[int, int, torch.Tensor]


class CopyTracker:
    """Per-copy history, best weights and the restarts' selection of a module's batched copies.

    Parameters
    ----------
    module : facrnn.training.module.FacRNNModule
        The module whose ``model`` holds the copies; the tracker reads its settings
        (``hparams``), epoch and step counters and trainer (optimizers, datamodule sampler,
        checkpoint callback).

    Attributes
    ----------
    history : dict
        ``{"train": [...], "val": [...]}``: per-epoch ``(epoch, step, means (terms, C))``.
    best_parameters : dict of (C, ...) tensors or None
        Every copy's weights at its lowest validation loss so far.
    best_val, best_epoch : (C,) tensors or None
        That loss and its epoch (-1: not validated yet).
    restart_record : dict or None
        The restarts' selection once made (``restarts.json``).
    """

    def __init__(self, module: pl.LightningModule) -> None:
        self._module = module
        self.history: dict[str, list[HistoryEntry]] = {"train": [], "val": []}
        self.best_parameters: dict[str, torch.Tensor] | None = None
        self.best_val: torch.Tensor | None = None
        self.best_epoch: torch.Tensor | None = None
        self.restart_record: dict[str, Any] | None = None
        self.failed: set[int] = set()

    @property
    def _trainer(self) -> Any | None:
        return self._module._trainer  # None outside fit (module.trainer would raise)

    @property
    def kept_copies(self) -> list[int] | None:
        """Initial copy index of each start still trained (after the restarts' selection), else None."""
        record = self.restart_record
        if record is None:
            return None
        return [replica * int(record["restarts"]) + start for replica, start in enumerate(record["kept_start"])]

    # ------------------------------------------------------------ epoch ends
    def end_train_epoch(self, means: torch.Tensor) -> torch.Tensor:
        """Record one training epoch's means ``(terms, C)``; drop diverged copies, select the
        restarts when the warm phase ends. Returns the mean over finite copies ``(terms,)``."""
        module = self._module
        self.history["train"].append((module.current_epoch, module.global_step, means.detach().cpu()))
        self._check_finite(means)
        self._maybe_select_restarts()
        return finite_copy_mean(means)

    def end_validation(self, means: torch.Tensor) -> torch.Tensor:
        """Record one validation's means ``(terms, C)`` and each copy's best weights. Returns the
        mean over finite copies ``(terms,)``."""
        module = self._module
        self.history["val"].append((module.current_epoch, module.global_step, means.detach().cpu()))
        self._update_best(means[0])
        return finite_copy_mean(means)

    def _check_finite(self, means: torch.Tensor) -> None:
        """Stop when every copy's loss is non-finite; one diverged copy only drops out."""
        finite = torch.isfinite(means).all(0)
        module = self._module
        if not bool(finite.any()):
            raise TrainingFaultError(
                f"training stopped in epoch {module.current_epoch}: the loss of every one of the {module.n_copies} "
                f"model copies is not finite; {last_checkpoint_message(self._trainer)}; expected finite losses: "
                "lower model.lr"
            )
        newly_failed = [int(index) for index in (~finite).nonzero().flatten() if int(index) not in self.failed]
        if newly_failed:
            self.failed.update(newly_failed)
            log.warning(
                "epoch %d: model copies %s have a non-finite loss; they are dropped at export",
                module.current_epoch,
                newly_failed,
            )

    @torch.no_grad()
    def _update_best(self, val_loss: torch.Tensor) -> None:
        """Keep each copy's weights at its lowest validation loss ``(C,)`` so far (its best checkpoint)."""
        module = self._module
        parameters = {name: value.detach() for name, value in module.model.named_parameters()}
        if self.best_parameters is None:
            self.best_parameters = {name: value.clone() for name, value in parameters.items()}
            self.best_val = torch.full_like(val_loss.cpu(), float("inf"))
            self.best_epoch = torch.full((module.n_copies,), -1, dtype=torch.long)
        loss = val_loss.detach().cpu()
        improved = torch.isfinite(loss) & (loss < self.best_val)
        if not bool(improved.any()):
            return
        for name, value in parameters.items():
            mask = improved.to(value.device).view(-1, *[1] * (value.ndim - 1))
            self.best_parameters[name] = torch.where(mask, value, self.best_parameters[name])
        self.best_val = torch.where(improved, loss, self.best_val)
        self.best_epoch = torch.where(improved, torch.full_like(self.best_epoch, module.current_epoch), self.best_epoch)

    # ------------------------------------------------------------ restarts
    def restart_epochs(self) -> int:
        """Length of the restarts' warm phase in epochs (default a fifth of ``trainer.max_epochs``)."""
        configured = self._module.hparams.get("restart_epochs")
        if configured:
            return int(configured)
        trainer = self._trainer
        max_epochs = trainer.max_epochs if trainer is not None and trainer.max_epochs else DEFAULT_MAX_EPOCHS
        return max(1, round(0.2 * max_epochs))

    def training_objective(self, means: torch.Tensor) -> torch.Tensor:
        """``nll + kl + beta pc + alpha overlap`` with the full ``beta`` from epoch means of the
        loss terms: ``(..., terms, C) -> (..., C)``."""
        hparams = self._module.hparams
        terms = {name: means[..., index, :] for index, name in enumerate(LOSS_TERMS)}
        return terms["nll"] + terms["kl"] + hparams.beta * terms["partial_corr"] + hparams.alpha * terms["overlap"]

    def _maybe_select_restarts(self) -> None:
        if int(self._module.hparams.get("restarts", 1)) == 1 or self.restart_record is not None:
            return
        if self._module.current_epoch + 1 >= self.restart_epochs():
            self.select_restarts()

    def select_restarts(self) -> None:
        """Keep the start of every replica with the lowest training objective (never
        validation or test data), averaged over the last tenth of the warm phase."""
        module = self._module
        restarts = int(module.hparams.get("restarts", 1))
        trajectories = self.training_objective(torch.stack([means for _, _, means in self.history["train"]]))  # (E, C)
        window = max(1, min(self.restart_epochs(), trajectories.shape[0]) // 10)
        objectives = trajectories[-window:].mean(0)
        replicas = int(module.hparams.get("replicas", 1))
        kept = select_starts(objectives.view(replicas, restarts))
        self.restart_record = {
            "restarts": restarts,
            "replicas": replicas,
            "selection_epoch": int(module.current_epoch),
            "window_epochs": int(window),
            "objectives": [[float(value) for value in row] for row in objectives.view(replicas, restarts).tolist()],
            "kept_start": [index - replica * restarts for replica, index in enumerate(kept)],
            "epochs": [epoch for epoch, _, _ in self.history["train"]],
            "objective_trajectories": trajectories.T.tolist(),  # (C, E)
        }
        log.info(
            "restarts: epoch %d, kept start(s) %s by training objective %s",
            module.current_epoch,
            self.restart_record["kept_start"],
            self.restart_record["objectives"],
        )
        self._keep_copies(kept)

    def _keep_copies(self, kept: list[int]) -> None:
        """Drop every copy but ``kept`` from the weights, optimizer and bookkeeping."""
        module = self._module
        n_before = module.n_copies
        self.restrict_sampler()
        if self._trainer is not None:
            for optimizer in self._trainer.optimizers:
                keep_optimizer_state(optimizer, kept, n_before)
        module.model.keep(kept)
        index = torch.as_tensor(kept)
        for split in ("train", "val"):
            self.history[split] = [(epoch, step, means[:, index]) for epoch, step, means in self.history[split]]
        if self.best_parameters is not None:
            self.best_parameters = {name: value[index.to(value.device)] for name, value in self.best_parameters.items()}
            self.best_val, self.best_epoch = self.best_val[index], self.best_epoch[index]

    def restrict_sampler(self) -> None:
        """Let the datamodule's sampler draw batches for the kept starts only (no gathering
        of batches that would be thrown away; each kept start keeps its own order)."""
        if self.kept_copies is None or self._trainer is None:
            return
        sampler = getattr(getattr(self._trainer, "datamodule", None), "copy_sampler", None)
        if sampler is not None:
            sampler.keep_copies(self.kept_copies)

    # ------------------------------------------------------------ checkpoints
    def state(self) -> dict[str, Any]:
        """The checkpoint record (:data:`CHECKPOINT_KEY`)."""
        return {
            "n_copies": self._module.n_copies,
            "history": {split: stack_history(entries) for split, entries in self.history.items()},
            "best_parameters": self.best_parameters,
            "best_val": self.best_val,
            "best_epoch": self.best_epoch,
            "restart_record": self.restart_record,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state`; drops the starts the restarts' selection dropped before the weights load."""
        self.restart_record = state["restart_record"]
        if self.restart_record is not None and self._module.n_copies != state["n_copies"]:
            # saved after the restarts' selection: drop the same starts before the weights load
            self._module.model.keep(self.kept_copies)
        self.history = {split: unstack_history(stacked) for split, stacked in state["history"].items()}
        self.best_parameters, self.best_val, self.best_epoch = state["best_parameters"], state["best_val"], state["best_epoch"]


def stack_history(entries: list[HistoryEntry]) -> dict[str, torch.Tensor]:
    """Per-epoch ``(epoch, step, means (terms, C))`` entries as three tensors: one checkpoint
    record instead of thousands (saving a list of 5,000 small tensors takes ~0.2 s)."""
    if not entries:
        return {"epochs": torch.zeros(0, dtype=torch.long), "steps": torch.zeros(0, dtype=torch.long), "means": torch.zeros(0)}
    return {
        "epochs": torch.tensor([epoch for epoch, _, _ in entries]),
        "steps": torch.tensor([step for _, step, _ in entries]),
        "means": torch.stack([means for _, _, means in entries]),
    }


def unstack_history(stacked: dict[str, torch.Tensor]) -> list[HistoryEntry]:
    """Inverse of :func:`stack_history`."""
    return [
        (int(epoch), int(step), means)
        for epoch, step, means in zip(stacked["epochs"].tolist(), stacked["steps"].tolist(), stacked["means"])
    ]


def finite_copy_mean(means: torch.Tensor) -> torch.Tensor:
    """Mean over the copies (last dimension) with a finite value of every term; ``(terms, C) -> (terms,)``."""
    finite = torch.isfinite(means).all(0)
    return means[:, finite].mean(-1) if bool(finite.any()) else means.mean(-1)


__all__ = ["CHECKPOINT_KEY", "CopyTracker", "finite_copy_mean", "stack_history", "unstack_history"]
