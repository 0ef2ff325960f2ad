"""What training does about a non-finite loss (``model.nonfinite_skip_limit``; docs/errors.md).

A plain run stops with a :class:`~facrnn.errors.TrainingFaultError` naming the first bad
step, the term at fault and the last good checkpoint (and, when ``model.lr`` is at least
:data:`LARGE_LR`, that the loss diverged, likely from that learning rate), or, with
``model.nonfinite_skip_limit = k > 0``, first skips up to ``k`` such batches. Batched copies instead drop a diverged copy
and train the others on (:class:`facrnn.training.copies.CopyTracker`).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from typing import Any

import torch

from facrnn.errors import TrainingFaultError

log = logging.getLogger(__name__)

#: a learning rate from which a non-finite loss is reported as a divergence it likely caused
#: (Adam/AdamW: ~30x the default 3e-3)
LARGE_LR = 0.1


def learning_rate(trainer: Any | None) -> tuple[float | None, float | None]:
    """``model.lr`` of the module ``trainer`` fits (else its optimizer's) and the module's default, if known."""
    module = getattr(trainer, "lightning_module", None) if trainer is not None else None
    lr = getattr(module, "hparams", {}).get("lr") if module is not None else None
    if lr is None and trainer is not None and getattr(trainer, "optimizers", None):
        lr = trainer.optimizers[0].param_groups[0].get("lr")
    default = None
    if module is not None:
        parameter = inspect.signature(type(module).__init__).parameters.get("lr")
        default = parameter.default if parameter is not None and parameter.default is not inspect.Parameter.empty else None
    return (float(lr) if lr is not None else None), default


def divergence_message(trainer: Any | None) -> str:
    """The likely cause of a non-finite loss when ``model.lr >= LARGE_LR``: ``", likely because the
    learning rate model.lr=1e+10 is too large (expected model.lr < 0.1; the default is 0.003)"``;
    empty otherwise."""
    lr, default = learning_rate(trainer)
    if lr is None or not lr >= LARGE_LR:
        return ""
    known = f"; the default is {default:g}" if default is not None else ""
    return f", likely because the learning rate model.lr={lr:g} is too large (expected model.lr < {LARGE_LR:g}{known})"


def last_checkpoint_message(trainer: Any | None) -> str:
    """Where training can continue from: the checkpoint callback's last (or best) saved file."""
    callback = trainer.checkpoint_callback if trainer is not None else None
    path = getattr(callback, "last_model_path", "") or getattr(callback, "best_model_path", "")
    if path:
        return f"the last good checkpoint is {path} (continue with ckpt_path={path})"
    return "no checkpoint was saved before it"


class NonfiniteLossPolicy:
    """Stops a plain run on a non-finite loss, or skips up to ``skip_limit`` such batches.

    Parameters
    ----------
    term_names : sequence of str
        Names of the loss terms, in the order of the stacked terms (``loss`` first).
    skip_limit : int
        ``model.nonfinite_skip_limit``: 0 stops at the first non-finite loss.
    """

    def __init__(self, term_names: Sequence[str], skip_limit: int = 0) -> None:
        self.term_names = tuple(term_names)
        self.skip_limit = int(skip_limit)
        self.skipped_batches = 0

    def error(self, call_terms: torch.Tensor, last_step: int, epoch: int, trainer: Any | None) -> TrainingFaultError:
        """The message of a non-finite loss: first bad step and term, last good checkpoint.

        ``call_terms`` ``(steps, terms)`` are the loss terms of consecutive optimizer steps,
        the last of which is step number ``last_step``.
        """
        finite = torch.isfinite(call_terms)
        first = int((~finite.all(-1)).nonzero()[0, 0])
        bad_terms = [name for index, name in enumerate(self.term_names) if not finite[first, index] and name != "loss"]
        step = last_step - call_terms.shape[0] + first + 1
        values = ", ".join(f"{name}={float(call_terms[first, index]):.4g}" for index, name in enumerate(self.term_names))
        cause = divergence_message(trainer)
        terms = "loss term is" if not bad_terms else f"{bad_terms[0]} term is"
        if len(bad_terms) > 1:
            terms = f"{', '.join(bad_terms[:-1])} and {bad_terms[-1]} terms are"
        return TrainingFaultError(
            f"training stopped at step {step} (epoch {epoch}): {'the loss diverged: ' if cause else ''}the "
            f"{terms} not finite ({values}){cause}; "
            f"{last_checkpoint_message(trainer)}; expected finite losses: lower model.lr, check the data for extreme "
            "values, or set model.nonfinite_skip_limit to skip such batches"
        )

    def skip_batch(self, batch_terms: torch.Tensor, step: int, epoch: int, trainer: Any | None) -> None:
        """Count one skipped batch (its loss terms ``(terms,)``, the step it would have been);
        raise once more than ``skip_limit`` batches were skipped."""
        self.skipped_batches += 1
        if self.skipped_batches > self.skip_limit:
            error = self.error(batch_terms.unsqueeze(0), last_step=step, epoch=epoch, trainer=trainer)
            raise TrainingFaultError(f"{error} (model.nonfinite_skip_limit={self.skip_limit} batches already skipped)")
        log.warning(
            "step %d: non-finite loss, batch skipped (%d of model.nonfinite_skip_limit=%d)",
            step,
            self.skipped_batches,
            self.skip_limit,
        )


__all__ = ["LARGE_LR", "NonfiniteLossPolicy", "divergence_message", "last_checkpoint_message", "learning_rate"]
