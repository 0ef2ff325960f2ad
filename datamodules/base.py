"""Shared LightningDataModule: turns a :class:`Recording` into flat per-bin samples,
splits them and serves whole minibatches with one indexing operation each."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from datamodules.recording import Recording, drop_constant_channels
from datamodules.sampling import CopyIndexSampler, GroupedBatchSampler
from datamodules.settings import DataModuleSettings, check_history_fits
from datamodules.validation import warn_if_axes_swapped
from datamodules.windows import WindowDataset
from facrnn.core.model import MODEL_INPUT_KEYS, encoder_input, past_buffer
from facrnn.errors import DataError

log = logging.getLogger(__name__)


def block_split(n_bins: int, n_blocks: int, val_fraction: float, test_fraction: float, gap: int = 0) -> dict[str, np.ndarray]:
    """Contiguous train | val | test segments in each of ``n_blocks`` equal blocks of time.

    For slow signals, interleaved bins (``even_odd``) leak between splits; here each block
    of ``n_bins / n_blocks`` bins gives its first part to train, then ``val_fraction`` of it
    to val and ``test_fraction`` to test. ``gap`` bins after every change of split (including
    test -> the next block's train) belong to no split.

    Returns
    -------
    dict of split name -> (n_bins,) bool mask.
    """
    if n_blocks < 1 or gap < 0:
        raise ValueError(f"datamodule.n_blocks={n_blocks}, datamodule.split_gap={gap}: expected n_blocks >= 1, gap >= 0")
    labels = np.full(n_bins, -1)
    edges = np.linspace(0, n_bins, n_blocks + 1).round().astype(int)
    for start, stop in zip(edges[:-1], edges[1:]):
        length = stop - start
        n_test, n_val = int(round(test_fraction * length)), int(round(val_fraction * length))
        labels[start:stop] = 0
        labels[stop - n_test - n_val : stop - n_test] = 1
        labels[stop - n_test : stop] = 2
    if gap:
        changes = np.flatnonzero(np.diff(labels) != 0) + 1
        keep = labels.copy()
        for change in changes:
            keep[change : change + gap] = -1
        labels = keep
    masks = {name: labels == code for code, name in enumerate(("train", "val", "test"))}
    if any(not mask.any() for mask in masks.values()):
        raise DataError(
            f"datamodule.split=blocks with {n_bins} bins, n_blocks={n_blocks}, val_fraction={val_fraction}, "
            f"test_fraction={test_fraction}, split_gap={gap}: expected at least one bin in each split"
        )
    return masks


def even_odd_split(shape: tuple[int, int], val_fraction: float) -> dict[str, np.ndarray]:
    """Train on even time bins, test on odd ones; validation bins are carved from the even ones.

    ``round(val_fraction x even bins)`` of each trial's even bins (at least one), evenly spaced
    in time, become validation bins, so the checkpoint and early stopping are chosen on bins
    the test never sees (test = every odd bin, the paper's test set).

    Parameters
    ----------
    shape : (trials, bins)
    val_fraction : float

    Returns
    -------
    dict of split name -> (trials, bins) bool mask.
    """
    n_trials, n_bins = shape
    even_bins = np.arange(0, n_bins, 2)
    if len(even_bins) < 2:
        raise DataError(f"datamodule.split=even_odd with {n_bins} bins per trial: expected at least 3 bins")
    n_val = min(len(even_bins) - 1, max(1, int(round(val_fraction * len(even_bins)))))
    val_bins = even_bins[np.linspace(0, len(even_bins) - 1, n_val).round().astype(int)]
    train, val, test = (np.zeros(shape, dtype=bool) for _ in range(3))
    train[:, even_bins] = True
    train[:, val_bins] = False
    val[:, val_bins] = True
    test[:, 1::2] = True
    return {"train": train, "val": val, "test": test}


def trial_split(
    n_trials: int,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    strata: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Whole trials to ``train``/``val``/``test``, seeded; stratified by ``strata`` when given.

    ``round(test_fraction x size)`` trials of each stratum (at least one in all) go to test
    and ``round(val_fraction x size)`` to val, the rest to train. Stratification:
    the trials of each stratum (all trials when ``strata`` is None) are permuted and spread
    evenly over one sequence (the i-th of a stratum of n sits at (i + 1/2) / n), which is
    cut into test | val | train, so every label keeps its share in every split as closely
    as the counts allow, also when a stratum has fewer trials than 1 / fraction.

    Parameters
    ----------
    n_trials : int
    val_fraction, test_fraction : float
    seed : int
    strata : (trials,) array, optional
        A label per trial (e.g. reach direction).

    Returns
    -------
    dict of split name -> sorted trial indices.
    """
    if strata is None:
        strata = np.zeros(n_trials, dtype=np.int64)
    strata = np.asarray(strata)
    if strata.shape != (n_trials,):
        raise DataError(f"trial strata have shape {strata.shape}; expected one label per trial ({n_trials},)")
    labels, sizes = np.unique(strata, return_counts=True)
    n_test = max(1, sum(int(round(test_fraction * size)) for size in sizes))
    n_val = max(1, sum(int(round(val_fraction * size)) for size in sizes))
    if n_test + n_val >= n_trials:
        raise DataError(
            f"datamodule.split=trials with {n_trials} trials, val_fraction={val_fraction}, "
            f"test_fraction={test_fraction}: expected at least one trial in each split"
        )
    rng = np.random.default_rng(seed)
    trials, positions = [], []
    for label in labels:
        order = rng.permutation(np.flatnonzero(strata == label))
        trials.append(order)
        positions.append((np.arange(len(order)) + 0.5) / len(order))
    trials_all, position = np.concatenate(trials), np.concatenate(positions)
    tie_break = rng.permutation(len(trials_all))
    sequence = trials_all[np.lexsort((tie_break, position))]
    return {
        "test": np.sort(sequence[:n_test]),
        "val": np.sort(sequence[n_test : n_test + n_val]),
        "train": np.sort(sequence[n_test + n_val :]),
    }


class BinDataset(Dataset):
    """Per-bin samples of one split; ``dataset[indices]`` returns a whole batch dict."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.tensors = tensors

    def __len__(self) -> int:
        return int(self.tensors["x"].shape[0])

    def __getitem__(
        self, indices: torch.Tensor | list[torch.Tensor]
    ) -> dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]:
        # a list of index tensors (GroupedBatchSampler) gives a list of batches; (C, batch)
        # indices (CopyIndexSampler) give (C, batch, ...) tensors
        if isinstance(indices, list):
            if indices and all(isinstance(batch, torch.Tensor) and batch.ndim == 1 for batch in indices):
                # one gather per key for all the batches (views of it; the same values as one each)
                sizes = [len(batch) for batch in indices]
                flat = torch.cat(indices)
                parts = {key: torch.index_select(value, 0, flat).split(sizes) for key, value in self.tensors.items()}
                return [{key: part[number] for key, part in parts.items()} for number in range(len(sizes))]
            return [self[batch] for batch in indices]
        if isinstance(indices, torch.Tensor) and indices.ndim == 1:  # the same copy as value[indices], faster
            return {key: torch.index_select(value, 0, indices) for key, value in self.tensors.items()}
        return {key: value[indices] for key, value in self.tensors.items()}


class InMemoryLoader:
    """The batches ``dataset[indices]`` for each ``indices`` that ``sampler`` yields: what
    ``DataLoader(dataset, sampler=sampler, batch_size=None, num_workers=0,
    collate_fn=batches_as_they_are)`` yields, without its per-epoch iterator, profiler span and
    fetcher (~0.1 ms of every epoch, ~0.5 s of a 5,000-epoch run; benchmarks/README.md).

    The training loader of in-memory datasets. Lightning reads ``len`` (batches per epoch) and
    calls ``sampler.set_epoch``; each epoch draws, as a ``DataLoader`` does for its workers'
    base seed, one number from torch's global generator, so that the noise drawn during
    training is the same as with a ``DataLoader``.
    """

    def __init__(self, dataset: Dataset, sampler: Sampler) -> None:
        self.dataset, self.sampler = dataset, sampler

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[Any]:
        torch.empty((), dtype=torch.int64).random_()  # DataLoader's per-iterator draw of its base seed
        dataset = self.dataset
        for indices in self.sampler:
            yield dataset[indices]


def batches_as_they_are(batch: Any) -> Any:
    """The ``collate_fn`` of the loaders: datasets that index whole batches return them ready."""
    return batch


def distributed_rank_and_size() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialised ``torch.distributed`` group, else ``(0, 1)``."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class BatchIndexSampler(Sampler):
    """Yields index tensors of whole batches (shuffled with torch's global RNG when asked).

    Under distributed training (``world_size > 1``) ``batch_size`` is the *global* batch:
    every rank draws the same permutation (seeded with ``seed + epoch``, like
    :class:`torch.utils.data.DistributedSampler` with :meth:`set_epoch`) and takes its
    ``1 / world_size`` share of each global batch, so the ranks together see exactly the
    batches one device would. A last batch that does not divide evenly loses its remainder
    (fewer than ``world_size`` samples) so that every rank's share has the same size.

    Parameters
    ----------
    n_samples, batch_size : int
    shuffle : bool
    seed : int, optional
        Seed of the shared permutation under distributed training; defaults to
        ``torch.initial_seed()`` (the run's ``seed`` after ``seed_everything``).
    rank, world_size : int, optional
        Default: read from ``torch.distributed`` when each epoch starts.
    per_epoch : int, optional
        Samples drawn per epoch: the first ``per_epoch`` of each epoch's permutation (a fresh
        random subset every epoch; ``shuffle`` only). Default: all ``n_samples``.
    """

    def __init__(
        self,
        n_samples: int,
        batch_size: int,
        shuffle: bool,
        seed: int | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        per_epoch: int | None = None,
    ) -> None:
        self.n_samples, self.batch_size, self.shuffle = n_samples, batch_size, shuffle
        self.seed = int(torch.initial_seed() if seed is None else seed) % 2**62
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        if per_epoch is not None and not shuffle:
            raise ValueError("BatchIndexSampler: per_epoch subsets need shuffle=True")
        self.n_drawn = n_samples if per_epoch is None else max(min(int(per_epoch), n_samples), 1)

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of every epoch (reshuffles the shared permutation)."""
        self.epoch = int(epoch)

    def _rank_and_size(self) -> tuple[int, int]:
        rank, world_size = distributed_rank_and_size()
        return (rank if self.rank is None else self.rank), (world_size if self.world_size is None else self.world_size)

    def __len__(self) -> int:
        return -(-self.n_drawn // self.batch_size)

    def __iter__(self) -> Iterator[torch.Tensor]:
        rank, world_size = self._rank_and_size()
        if world_size == 1:
            order = torch.randperm(self.n_samples)[: self.n_drawn] if self.shuffle else torch.arange(self.n_samples)
            yield from order.split(self.batch_size)
            return
        if self.batch_size % world_size:
            raise ValueError(
                f"datamodule.batch_size={self.batch_size}: under distributed training it is the global "
                f"batch; expected a multiple of the {world_size} processes"
            )
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n_samples, generator=generator)[: self.n_drawn]
        else:
            order = torch.arange(self.n_samples)
        for batch in order.split(self.batch_size):
            share = len(batch) // world_size
            if share:
                yield batch[rank * share : (rank + 1) * share]


class RecordingDataModule(pl.LightningDataModule):
    """Base datamodule: subclasses implement :meth:`load_recording`.

    Parameters
    ----------
    batch_size : int
        Training minibatch size (also used for validation batches).
    split : {"even_odd", "trials", "all", "blocks"}
        ``even_odd``: train on even time bins, test on odd ones (single recordings, the
        paper's protocol); ``val_fraction`` of the even bins, evenly spaced, validate
        (:func:`even_odd_split`). ``trials``: whole trials to train/val/test by
        ``val_fraction``/``test_fraction`` (seeded by ``split_seed``; stratified by
        :meth:`trial_strata` where a subclass gives labels). ``all``: every bin in every split.
        ``blocks``: contiguous segments of time (:func:`block_split`, ``n_blocks`` blocks,
        ``split_gap`` bins dropped between segments), for continuous recordings.
    history : int
        Encoder history lags ``L`` (``model.history``).
    nan_policy : {"error", "drop", "interpolate"}
        NaN/Inf in file data: ``error`` (default) stops with the count and the first
        position; ``drop`` removes the affected bins of one long recording (the trials of
        trial data); ``interpolate`` fills them linearly along time per channel. Both
        repairs log how many values they touched (:func:`datamodules.validation.apply_nan_policy`).

    Zero-variance channels are dropped in :meth:`setup` with a logged count (a
    :class:`~facrnn.errors.DataError` if every channel is constant) unless a subclass sets
    ``drop_constant_channels`` to False.
    """

    drop_constant_channels: bool = True

    def __init__(
        self,
        batch_size: int = 128,
        split: str = "even_odd",
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        split_seed: int = 0,
        history: int = 1,
        n_blocks: int = 1,
        split_gap: int = 0,
        nan_policy: str = "error",
    ) -> None:
        super().__init__()
        # the rules of every datamodule config (datamodules/settings.py), also for datamodules built in Python
        DataModuleSettings(
            batch_size=batch_size,
            split=split,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            split_seed=split_seed,
            history=history,
            n_blocks=n_blocks,
            split_gap=split_gap,
            nan_policy=nan_policy,
        )
        self.nan_policy = nan_policy
        self.batch_size = int(batch_size)
        self.split = split
        self.val_fraction, self.test_fraction, self.split_seed = val_fraction, test_fraction, split_seed
        self.history = int(history)
        self.n_blocks, self.split_gap = int(n_blocks), int(split_gap)
        self.recording: Recording | None = None
        self.splits: dict[str, BinDataset] = {}
        # seed of the permutation all ranks share under distributed training (the run's seed)
        self.shuffle_seed = torch.initial_seed()
        self.batches_per_call = 1  # one batch per training_step unless configure_training says otherwise
        self.copy_seeds: list[int] | None = None
        self.copy_sampler: CopyIndexSampler | None = None  # the model drops copies from it (model.restarts)
        self.window = 1  # bins per training sample; > 1: rollout windows (model.rollout_window)
        self.window_fraction = 1.0  # of the rollout windows drawn per epoch (model.rollout_window_fraction)
        self._timeline: dict[str, torch.Tensor] = {}  # per-bin tensors in time order, (trials, T, ...)
        self._train_mask: torch.Tensor | None = None
        self._missing_past = "first"

    def load_recording(self) -> Recording:  # pragma: no cover - abstract
        raise NotImplementedError

    # ------------------------------------------------------------------ setup
    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        recording = self.load_recording()
        if recording.single_sequence:
            warn_if_axes_swapped(recording.x.shape, "x", recording.source)
        if self.drop_constant_channels:
            recording = drop_constant_channels(recording)
        n_bins = recording.x.shape[1]
        # trials need a past for every lag; one long recording pads its start with zeros, but a
        # lag beyond the whole recording reads nothing (and model.history=1e8 would never finish)
        check_history_fits(self.history, n_bins, recording.source)
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
        masks = self._split_masks(n_trials, n_bins, self.trial_strata(recording))
        for name, mask in masks.items():
            flat_mask = torch.from_numpy(mask.reshape(-1))
            self.splits[name] = BinDataset(
                {
                    key: value.reshape(n_trials * n_bins, *value.shape[2:])[flat_mask].contiguous()
                    for key, value in per_bin.items()
                }
            )
        self.recording = recording
        self._timeline = {key: value for key, value in per_bin.items() if key in MODEL_INPUT_KEYS}
        self._train_mask = torch.from_numpy(masks["train"])
        self._missing_past = missing_past
        n_train = len(self.splits["train"])
        if n_train < self.batch_size:
            self.splits, self.recording = {}, None
            raise DataError(
                f"datamodule.batch_size={self.batch_size}: the training split of {recording.source} has only "
                f"{n_train} samples (n_train={n_train}); expected datamodule.batch_size <= {n_train}, "
                "at least one full batch per epoch"
            )
        log.info(
            "%s: %d trials x %d bins x %d channels; train/val/test samples %d/%d/%d",
            recording.source,
            n_trials,
            n_bins,
            recording.n_channels,
            n_train,
            len(self.splits["val"]),
            len(self.splits["test"]),
        )

    def trial_strata(self, recording: Recording) -> np.ndarray | None:
        """Labels ``(trials,)`` that ``split=trials`` stratifies by (e.g. reach direction); none here."""
        return None

    def training_mask(self, n_trials: int, n_bins: int, strata: np.ndarray | None = None) -> np.ndarray:
        """``(trials, bins)`` bool mask of the training bins of this datamodule's split.

        Loaders take their preprocessing statistics (scaling, z-scoring) from these bins only,
        so that held-out bins never shape the data the model is trained on.
        """
        return self._split_masks(n_trials, n_bins, strata)["train"]

    def _split_masks(self, n_trials: int, n_bins: int, strata: np.ndarray | None = None) -> dict[str, np.ndarray]:
        shape = (n_trials, n_bins)
        if self.split == "all":
            everything = np.ones(shape, dtype=bool)
            return {"train": everything, "val": everything, "test": everything}
        if self.split == "even_odd":
            return even_odd_split(shape, self.val_fraction)
        if self.split == "blocks":
            masks = block_split(n_bins, self.n_blocks, self.val_fraction, self.test_fraction, self.split_gap)
            return {name: np.broadcast_to(mask, shape).copy() for name, mask in masks.items()}
        groups = trial_split(n_trials, self.val_fraction, self.test_fraction, self.split_seed, strata)
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
    def training_windows(self) -> WindowDataset:
        """The rollout windows of :attr:`window` bins (:class:`~datamodules.windows.WindowDataset`)."""
        recording = self._require_setup()
        timeline = dict(self._timeline)
        if self.history > 1:
            timeline["past"] = past_buffer(timeline["x"], self.history, self._missing_past)
        assert self._train_mask is not None
        return WindowDataset(timeline, self._train_mask, self.window, recording.source)

    def _loader(self, split: str, shuffle: bool) -> DataLoader | InMemoryLoader:
        # training batches carry only what the loss reads (not latents, trial, time: fewer
        # index operations per step); validation and test batches keep everything
        dataset: Dataset = self.splits[split]
        if split == "train" and self.window > 1:
            dataset = self.training_windows()
        elif split == "train":
            dataset = BinDataset({key: value for key, value in dataset.tensors.items() if key in MODEL_INPUT_KEYS})
        if len(dataset) == 0:
            raise DataError(
                f"datamodule.split={self.split}: the {split} split of {self._require_setup().source} is empty; "
                "expected at least one sample"
            )
        per_epoch = None  # every training sample once per epoch
        if split == "train" and self.window > 1 and self.window_fraction < 1:
            per_epoch = max(round(len(dataset) * self.window_fraction), 1)  # a fresh random subset of the windows
        sampler: Sampler = BatchIndexSampler(
            len(dataset), self.batch_size, shuffle, seed=self.shuffle_seed, per_epoch=per_epoch
        )
        if split == "train":
            if self.copy_seeds:
                sampler = self.copy_sampler = CopyIndexSampler(
                    len(dataset), self.batch_size, self.copy_seeds, per_epoch=per_epoch
                )
            if self.batches_per_call != 1:
                sampler = GroupedBatchSampler(sampler, self.batches_per_call)
            return InMemoryLoader(dataset, sampler)  # read every epoch: no DataLoader machinery
        # the datasets already return tensors: no default_convert walk over every batch
        return DataLoader(dataset, sampler=sampler, batch_size=None, num_workers=0, collate_fn=batches_as_they_are)

    def configure_training(
        self,
        batches_per_call: int = 0,
        copy_seeds: list[int] | None = None,
        window: int = 1,
        window_fraction: float = 1.0,
    ) -> None:
        """How :meth:`train_dataloader` hands batches to the model (set by the pipeline).

        Parameters
        ----------
        batches_per_call : int
            Batches per ``training_step`` (``0``: a whole epoch; ``batches_per_call`` in
            ``conf/train.yaml``).
        copy_seeds : list of int, optional
            One shuffling seed per model copy (``model.replicas`` x ``model.restarts``);
            batches are then ``(C, batch)`` index tensors (:class:`CopyIndexSampler`).
        window : int
            Bins per training sample (``model.rollout_window``): 1 = single bins; ``W > 1`` =
            windows of ``W`` consecutive bins starting at training bins
            (:class:`~datamodules.windows.WindowDataset`), ``batch_size`` windows per batch.
        window_fraction : float
            Share of the windows drawn per epoch (``model.rollout_window_fraction``): 1 = a
            window starting at every training bin; ``f < 1`` = a fresh random ``f`` of them
            each epoch (``1 / W`` decodes each training bin about once per epoch).
        """
        self.window = int(window)
        self.window_fraction = float(window_fraction)
        self.batches_per_call = int(batches_per_call)
        self.copy_seeds = list(copy_seeds) if copy_seeds else None

    def train_dataloader(self) -> InMemoryLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
