"""Training samples for multi-step training (``model.rollout_window > 1``): windows of
consecutive bins of a trial, each starting at a training bin (docs/generative.md).

A window of ``W`` bins covers bins ``t, ..., t + W - 1`` of one trial in recording order,
whatever split they belong to, because the latent map steps one bin at a time. Only the
training bins among them (``target_mask``) are ever compared with the data or forced to
their encoding, so held-out bins (the odd bins of ``split=even_odd``, the val and test
segments of ``split=blocks``) never enter the loss: the model runs *through* them on its own
predictions. Encoder inputs read ``x_{t-1..t-L}`` exactly as one-step training does.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from facrnn.core.model import MODEL_INPUT_KEYS
from facrnn.errors import DataError


class WindowDataset(Dataset):
    """Windows of ``window`` consecutive bins starting at every training bin that has them.

    Parameters
    ----------
    timeline : dict of str -> (trials, T, ...) tensor
        Per-bin recording tensors in time order: ``x``, ``encoder_input``, optionally
        ``external_input``; with ``past`` ``(trials, T, L, N)`` (the squashed lag buffer,
        :func:`facrnn.core.model.past_buffer`) for ``L > 1``.
    train_mask : (trials, T) bool tensor
        Training bins.
    window : int
        ``W >= 1``.
    source : str
        Named in errors.

    ``dataset[indices]`` with ``(batch,)`` or ``(C, batch)`` start indices (or a list of
    them, :class:`~datamodules.sampling.GroupedBatchSampler`) gives a batch dict of
    ``(..., batch, W, ...)`` tensors plus ``target_mask`` ``(..., batch, W)``.
    """

    def __init__(self, timeline: dict[str, torch.Tensor], train_mask: torch.Tensor, window: int, source: str) -> None:
        n_trials, n_bins = train_mask.shape
        if window < 1 or window > n_bins:
            raise DataError(
                f"model.rollout_window={window}: {source} has {n_bins} bins per trial; expected 1 <= "
                f"rollout_window <= {n_bins}"
            )
        self.window = int(window)
        self.timeline = {key: value for key, value in timeline.items() if key in (*MODEL_INPUT_KEYS, "past")}
        self.train_mask = train_mask
        starts_ok = train_mask.clone()
        starts_ok[:, n_bins - window + 1 :] = False
        trials, times = torch.nonzero(starts_ok, as_tuple=True)
        if len(trials) == 0:
            raise DataError(
                f"model.rollout_window={window}: no training bin of {source} starts a window of {window} bins "
                f"inside its trial ({n_bins} bins); expected a shorter rollout_window"
            )
        self.start_trial, self.start_time = trials, times
        self.offsets = torch.arange(window)

    def __len__(self) -> int:
        return int(self.start_trial.shape[0])

    def __getitem__(
        self, indices: torch.Tensor | list[torch.Tensor]
    ) -> dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]:
        if isinstance(indices, list):
            return [self[batch] for batch in indices]
        trial = self.start_trial[indices].unsqueeze(-1)  # (..., batch, 1)
        time = self.start_time[indices].unsqueeze(-1) + self.offsets  # (..., batch, W)
        batch = {key: value[trial, time] for key, value in self.timeline.items()}
        batch["target_mask"] = self.train_mask[trial, time]
        return batch


__all__ = ["WindowDataset"]
