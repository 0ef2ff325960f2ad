"""Shared LightningDataModule: turns a :class:`Recording` into flat per-bin samples,
splits them and serves whole minibatches with one indexing operation each."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from datamodules.recording import Recording
from facrnn.model import encoder_input

log = logging.getLogger(__name__)

SPLITS = ("even_odd", "trials", "all")


class BinDataset(Dataset):
    """Per-bin samples of one split; ``dataset[indices]`` returns a whole batch dict."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.tensors = tensors

    def __len__(self) -> int:
        return int(self.tensors["x"].shape[0])

    def __getitem__(self, indices: torch.Tensor) -> dict[str, torch.Tensor]:
        return {key: value[indices] for key, value in self.tensors.items()}


class BatchIndexSampler(Sampler):
    """Yields index tensors of whole batches (shuffled with torch's global RNG when asked)."""

    def __init__(self, n_samples: int, batch_size: int, shuffle: bool) -> None:
        self.n_samples, self.batch_size, self.shuffle = n_samples, batch_size, shuffle

    def __len__(self) -> int:
        return -(-self.n_samples // self.batch_size)

    def __iter__(self) -> Iterator[torch.Tensor]:
        order = torch.randperm(self.n_samples) if self.shuffle else torch.arange(self.n_samples)
        yield from order.split(self.batch_size)


class RecordingDataModule(pl.LightningDataModule):
    """Base datamodule: subclasses implement :meth:`load_recording`.

    Parameters
    ----------
    batch_size : int
        Training minibatch size (also used for validation batches).
    split : {"even_odd", "trials", "all"}
        ``even_odd``: train on even time bins, validate and test on odd ones (single
        recordings, the paper's protocol). ``trials``: whole trials to train/val/test by
        ``val_fraction``/``test_fraction`` (seeded by ``split_seed``). ``all``: every bin in
        every split.
    history : int
        Encoder history lags ``L`` (``model.history``).
    """

    def __init__(
        self,
        batch_size: int = 128,
        split: str = "even_odd",
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        split_seed: int = 0,
        history: int = 1,
    ) -> None:
        super().__init__()
        if split not in SPLITS:
            raise ValueError(f"datamodule.split={split!r}: expected one of {SPLITS}")
        if batch_size < 1:
            raise ValueError(f"datamodule.batch_size={batch_size}: expected a positive integer")
        self.batch_size = int(batch_size)
        self.split = split
        self.val_fraction, self.test_fraction, self.split_seed = val_fraction, test_fraction, split_seed
        self.history = int(history)
        self.recording: Recording | None = None
        self.splits: dict[str, BinDataset] = {}

    def load_recording(self) -> Recording:  # pragma: no cover - abstract
        raise NotImplementedError

    # ------------------------------------------------------------------ setup
    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        recording = self.load_recording()
        n_bins = recording.x.shape[1]
        if self.history >= n_bins and not recording.single_sequence:
            raise ValueError(
                f"model.history={self.history}: expected fewer lags than the {n_bins} bins of a trial"
            )
        x = torch.from_numpy(recording.x)
        missing_past = "zero" if recording.single_sequence else "first"
        per_bin = {"x": x, "encoder_input": encoder_input(x, self.history, missing_past)}
        if recording.external_input is not None:
            per_bin["external_input"] = torch.from_numpy(recording.external_input)
        if recording.latents is not None:
            per_bin["latents"] = torch.from_numpy(recording.latents)
        if recording.behaviour is not None:
            per_bin["behaviour"] = torch.from_numpy(recording.behaviour)
        n_trials = x.shape[0]
        per_bin["trial"] = torch.arange(n_trials).view(-1, 1).expand(n_trials, n_bins)
        per_bin["time"] = torch.arange(n_bins).view(1, -1).expand(n_trials, n_bins)
        masks = self._split_masks(n_trials, n_bins)
        for name, mask in masks.items():
            flat_mask = torch.from_numpy(mask.reshape(-1))
            self.splits[name] = BinDataset(
                {key: value.reshape(n_trials * n_bins, *value.shape[2:])[flat_mask].contiguous() for key, value in per_bin.items()}
            )
        self.recording = recording
        n_train = len(self.splits["train"])
        if n_train < self.batch_size:
            raise ValueError(
                f"datamodule.batch_size={self.batch_size}: the training split of {recording.source} has only "
                f"{n_train} samples; expected at least one full batch"
            )
        log.info(
            "%s: %d trials x %d bins x %d channels; train/val/test samples %d/%d/%d",
            recording.source, n_trials, n_bins, recording.n_channels,
            n_train, len(self.splits["val"]), len(self.splits["test"]),
        )

    def _split_masks(self, n_trials: int, n_bins: int) -> dict[str, np.ndarray]:
        shape = (n_trials, n_bins)
        if self.split == "all":
            everything = np.ones(shape, dtype=bool)
            return {"train": everything, "val": everything, "test": everything}
        if self.split == "even_odd":
            even = np.zeros(shape, dtype=bool)
            even[:, 0::2] = True
            return {"train": even, "val": ~even, "test": ~even}
        order = np.random.default_rng(self.split_seed).permutation(n_trials)
        n_test = int(round(self.test_fraction * n_trials))
        n_val = int(round(self.val_fraction * n_trials))
        if n_trials - n_test - n_val < 1 or n_val < 1 or n_test < 1:
            raise ValueError(
                f"datamodule.split=trials with {n_trials} trials, val_fraction={self.val_fraction}, "
                f"test_fraction={self.test_fraction}: expected at least one trial in each split"
            )
        groups = {"test": order[:n_test], "val": order[n_test : n_test + n_val], "train": order[n_test + n_val :]}
        masks = {}
        for name, trials in groups.items():
            mask = np.zeros(shape, dtype=bool)
            mask[trials] = True
            masks[name] = mask
        return masks

    # -------------------------------------------------------------- accessors
    @property
    def n_channels(self) -> int:
        return self._require_setup().n_channels

    @property
    def n_train(self) -> int:
        self._require_setup()
        return len(self.splits["train"])

    def _require_setup(self) -> Recording:
        if self.recording is None:
            raise RuntimeError("call datamodule.setup() first")
        return self.recording

    def split_tensors(self, split: str) -> dict[str, torch.Tensor]:
        """All samples of a split as one batch dict (``x``: ``(n, N)``, ...)."""
        self._require_setup()
        return self.splits[split].tensors

    # ------------------------------------------------------------ dataloaders
    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        dataset = self.splits[split]
        sampler = BatchIndexSampler(len(dataset), self.batch_size, shuffle)
        return DataLoader(dataset, sampler=sampler, batch_size=None, num_workers=0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
