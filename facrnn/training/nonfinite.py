"""What training does about a non-finite loss (``model.nonfinite_skip_limit``; docs/errors.md).

A plain run stops with a :class:`~facrnn.errors.TrainingFaultError` naming the first bad
step, the term at fault and the last good checkpoint, or, with ``model.nonfinite_skip_limit
= k > 0``, first skips up to ``k`` such batches. Batched copies instead drop a diverged copy
and train the others on (:class:`facrnn.training.copies.CopyTracker`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from facrnn.errors import TrainingFaultError

log = logging.getLogger(__name__)


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
        return TrainingFaultError(
            f"training stopped at step {step} (epoch {epoch}): the "
            f"{' and '.join(bad_terms) or 'loss'} term is not finite ({values}); {last_checkpoint_message(trainer)}; "
            "expected finite losses: lower model.lr, check the data for extreme values, or set "
            "model.nonfinite_skip_limit to skip such batches"
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


__all__ = ["NonfiniteLossPolicy", "last_checkpoint_message"]
