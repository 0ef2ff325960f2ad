"""Speed-ups of the training loop that change no number (benchmarks/README.md).

A FacRNN step takes ~2 ms, so Lightning's per-step bookkeeping is a large share of it. Each
helper here does, in one process, what Lightning would do, at a fraction of its cost; under
DDP (``world_size > 1``) the module uses Lightning's own paths:

- :class:`EpochMeans`: loss terms summed on the device and averaged once per epoch (one host
  synchronisation per epoch instead of one ``self.log`` per step);
- :class:`EpochPublisher`: the epoch means handed straight to the callbacks and loggers, at
  most one training row per ``trainer.log_every_n_steps`` optimizer steps;
- :func:`plain_backward_is_equivalent`: whether ``loss.backward()`` may replace
  ``manual_backward`` (no hooks, no loss scaling);
- :func:`direct_step_is_equivalent`: whether the optimizer may be stepped without
  Lightning's strategy and precision wrappers (:func:`facrnn.training.adam_step.fused_adam_step`);
- :func:`batch_on_device`: whether a batch of in-memory tensors needs no transfer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
import torch


def plain_backward_is_equivalent(module: pl.LightningModule, module_class: type[pl.LightningModule]) -> bool:
    """Whether ``loss.backward()`` does all that ``manual_backward`` would: one process,
    32-bit precision (no loss scaling) and no callback or hook on the backward pass.

    ``module_class`` is the class whose own hooks are known not to touch the backward pass (a
    subclass of it that overrides one does). Skipping Lightning's backward hooks saves ~0.2 ms
    of a ~2 ms step (benchmarks/README.md).
    """
    from pytorch_lightning.plugins.precision import Precision
    from pytorch_lightning.utilities.model_helpers import is_overridden

    trainer = module.trainer
    if trainer.world_size > 1 or type(trainer.precision_plugin) is not Precision:
        return False
    hooks = ("on_before_backward", "on_after_backward")
    if any(is_overridden(hook, module, module_class) for hook in (*hooks, "backward")):
        return False
    return not any(is_overridden(hook, callback, pl.Callback) for callback in trainer.callbacks for hook in hooks)


def direct_step_is_equivalent(module: pl.LightningModule, module_class: type[pl.LightningModule]) -> bool:
    """Whether stepping the raw optimizer does all that ``LightningOptimizer.step()`` would: one
    process, 32-bit precision and no ``on_before_optimizer_step`` hook (the only thing the
    strategy and precision plugin add to a manual-optimization step besides the step counters,
    which the caller keeps with ``_on_before_step``/``_on_after_step``)."""
    from pytorch_lightning.plugins.precision import Precision
    from pytorch_lightning.utilities.model_helpers import is_overridden

    trainer = module.trainer
    if trainer.world_size > 1 or type(trainer.precision_plugin) is not Precision:
        return False
    hook = "on_before_optimizer_step"
    if is_overridden(hook, module, module_class) or is_overridden("optimizer_step", module, module_class):
        return False
    return not any(is_overridden(hook, callback, pl.Callback) for callback in trainer.callbacks)


def batch_on_device(batch: Any, device: torch.device) -> bool:
    """Whether ``batch`` (a dict of tensors, or a list of them) already lies on ``device``."""
    batches = batch if isinstance(batch, list) else [batch]
    return all(
        isinstance(one, dict) and all(isinstance(v, torch.Tensor) and v.device == device for v in one.values())
        for one in batches
    )


class EpochMeans:
    """Running sums of stacked loss terms on the device; their mean taken once per epoch."""

    def __init__(self) -> None:
        self.sums: torch.Tensor | None = None
        self.count = 0

    def add(self, sums: torch.Tensor, count: int) -> None:
        """Add summed terms ``(terms,)`` or ``(terms, C)`` of ``count`` batches (or samples)."""
        self.sums = sums if self.sums is None else self.sums + sums
        self.count += count

    def pop(self) -> torch.Tensor | None:
        """The mean since the last call (None if nothing was added); starts a new sum."""
        if self.sums is None:
            return None
        means = self.sums / self.count
        self.sums, self.count = None, 0
        return means


class EpochPublisher:
    """Logs epoch means of the loss terms as ``split/TERM``.

    Parameters
    ----------
    term_names : sequence of str
        Names of the stacked loss terms.
    """

    def __init__(self, term_names: Sequence[str]) -> None:
        self.term_names = tuple(term_names)
        self.last_logged_step: int | None = None

    def training_row_due(self, module: pl.LightningModule) -> bool:
        """Whether this epoch's training means go to the loggers: once ``trainer.log_every_n_steps``
        optimizer steps have passed since the last row (epoch means, not single batches), and
        at the last epoch. A W&B row costs about as much as a few optimizer steps."""
        trainer = module.trainer
        every = int(getattr(trainer, "log_every_n_steps", 1) or 1)
        last_epoch = trainer.max_epochs is not None and module.current_epoch + 1 >= trainer.max_epochs
        if self.last_logged_step is None or module.global_step - self.last_logged_step >= every or last_epoch:
            self.last_logged_step = module.global_step
            return True
        return False

    def publish(self, module: pl.LightningModule, split: str, means: torch.Tensor) -> None:
        """Log one epoch's (or validation's) mean loss terms ``(terms,)`` as ``split/TERM``."""
        metrics = {f"{split}/{name}": means[i] for i, name in enumerate(self.term_names)}
        trainer = module.trainer
        if trainer.world_size > 1:
            module.log_dict(metrics, on_epoch=True, sync_dist=True)
            return
        # One process: hand the means straight to the callbacks and loggers, at the optimizer
        # step count (a training_step call covers several steps), at a fraction of
        # module.log_dict's cost.
        trainer.callback_metrics.update(metrics)
        if module.loggers and (split == "val" or self.training_row_due(module)):
            row = {name: float(value) for name, value in zip(metrics, means.tolist())}
            row["epoch"] = module.current_epoch
            for logger in module.loggers:
                logger.log_metrics(row, step=module.global_step)


__all__ = [
    "EpochMeans",
    "EpochPublisher",
    "batch_on_device",
    "direct_step_is_equivalent",
    "plain_backward_is_equivalent",
]
