"""Training-batch samplers beyond one batch per Lightning step.

- :class:`CopyIndexSampler`: one independently shuffled batch per model copy
  (``model.replicas`` / ``model.restarts``), stacked as ``(C, batch)`` indices;
- :class:`GroupedBatchSampler`: hands Lightning several batches per ``training_step``
  (``batches_per_call``; by default a whole epoch), which removes most of Lightning's
  per-step overhead for this small model (benchmarks/README.md).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


class CopyIndexSampler(Sampler):
    """Batches of indices for ``C`` model copies, each with its own shuffled order.

    Copy ``c``'s order in epoch ``e`` is ``randperm(n_samples)`` drawn from a generator
    seeded with ``seeds[c] + e``: reproducible, independent of the other copies and of the
    global RNG, and the same after a resume.

    Parameters
    ----------
    n_samples, batch_size : int
    seeds : sequence of int
        One seed per copy.
    per_epoch : int, optional
        Samples per copy and epoch: the first ``per_epoch`` of each copy's permutation (a
        fresh random subset every epoch). Default: all ``n_samples``.
    """

    def __init__(self, n_samples: int, batch_size: int, seeds: Sequence[int], per_epoch: int | None = None) -> None:
        if not seeds:
            raise ValueError("CopyIndexSampler: expected at least one copy seed")
        self.n_samples, self.batch_size = int(n_samples), int(batch_size)
        self.n_drawn = self.n_samples if per_epoch is None else max(min(int(per_epoch), self.n_samples), 1)
        self.all_seeds = [int(seed) for seed in seeds]
        self.seeds = list(self.all_seeds)
        self.epoch = 0

    def keep_copies(self, indices: Sequence[int]) -> None:
        """From the next epoch on, draw batches only for the copies ``indices`` (numbered as
        at construction), each still in its own order (``model.restarts`` after the selection)."""
        self.seeds = [self.all_seeds[index] for index in indices]

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of every epoch."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return -(-self.n_drawn // self.batch_size)

    def __iter__(self) -> Iterator[torch.Tensor]:
        orders = torch.stack(
            [
                torch.randperm(self.n_samples, generator=torch.Generator().manual_seed(seed + self.epoch))[: self.n_drawn]
                for seed in self.seeds
            ]
        )  # (C, n_drawn)
        yield from orders.split(self.batch_size, dim=1)  # (C, batch) each


class GroupedBatchSampler(Sampler):
    """Yields lists of up to ``batches_per_call`` consecutive batches of ``sampler``.

    Parameters
    ----------
    sampler : Sampler
        Yields one batch of indices at a time.
    batches_per_call : int
        Batches handed to one ``training_step``; ``0`` means all batches of an epoch.
    """

    def __init__(self, sampler: Sampler, batches_per_call: int = 0) -> None:
        if batches_per_call < 0:
            raise ValueError(f"batches_per_call={batches_per_call}: expected 0 (a whole epoch) or a positive integer")
        self.sampler = sampler
        self.batches_per_call = int(batches_per_call)

    def set_epoch(self, epoch: int) -> None:
        """Passed on to the wrapped sampler."""
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def _group_size(self) -> int:
        return self.batches_per_call or max(1, len(self.sampler))

    def __len__(self) -> int:
        return -(-len(self.sampler) // self._group_size())

    def __iter__(self) -> Iterator[list[torch.Tensor]]:
        group: list[torch.Tensor] = []
        size = self._group_size()
        for batch in self.sampler:
            group.append(batch)
            if len(group) == size:
                yield group
                group = []
        if group:
            yield group


__all__ = ["CopyIndexSampler", "GroupedBatchSampler"]
