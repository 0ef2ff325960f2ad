"""Permutation analysis for ungrouped models (DESIGN §3).

A model without groups (lrRNN, or a post-hoc ICA/SVD rotation of one) has no preferred way
of splitting its K latent dimensions into groups. The permutation analysis scores group
latent R² for **every** split of the K dimensions into groups of the true sizes, so one
sees whether some grouping recovers the true groups and how much the choice matters.

Groups of equal size are unordered (the Hungarian matching of
:func:`facrnn.evaluation.metrics.group_latent_r2` makes their order irrelevant), so each set
partition is counted once: ``K! / (prod_g H_g! * prod_s m_s!)`` partitions, with ``m_s``
the number of groups of size ``s`` (10 for 2 x 3, 15 for ``[2, 4]``).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np

from facrnn.evaluation.metrics import group_latent_r2

__all__ = ["PermutationAnalysis", "count_partitions", "group_partitions", "permutation_analysis"]


def count_partitions(group_sizes: Sequence[int]) -> int:
    """Number of set partitions of ``sum(group_sizes)`` items into groups of these sizes.

    ``K! / (prod_g H_g! * prod_s m_s!)`` with ``m_s`` the number of groups of size ``s``.
    """
    sizes = [int(size) for size in group_sizes]
    denominator = math.prod(math.factorial(size) for size in sizes)
    denominator *= math.prod(math.factorial(count) for count in Counter(sizes).values())
    return math.factorial(sum(sizes)) // denominator


def group_partitions(group_sizes: Sequence[int]) -> Iterator[tuple[tuple[int, ...], ...]]:
    """Every split of dimensions ``0..K-1`` into groups of the given sizes, each once.

    Parameters
    ----------
    group_sizes : sequence of int
        ``[H_1, ..., H_G]`` (any order; equal sizes allowed), ``K = sum H_g``.

    Yields
    ------
    tuple of tuples of int
        The groups' dimension indices (sorted within a group); groups ordered by their
        smallest dimension. The first one yielded is the consecutive split when the sizes
        are given in ascending order.

    Notes
    -----
    Canonical construction: the group holding the smallest unassigned dimension picks its
    size among the remaining sizes (each distinct size once) and its other members among
    the remaining dimensions, so no partition is produced twice.
    """
    sizes = [int(size) for size in group_sizes]
    if len(sizes) == 0 or any(size < 1 for size in sizes):
        raise ValueError(f"group_sizes={list(group_sizes)}: expected a non-empty list of positive integers")

    def extend(remaining: tuple[int, ...], sizes_left: Counter) -> Iterator[tuple[tuple[int, ...], ...]]:
        if not remaining:
            yield ()
            return
        first, rest = remaining[0], remaining[1:]
        for size in sorted(size for size, count in sizes_left.items() if count > 0):
            sizes_left[size] -= 1
            for others in combinations(rest, size - 1):
                group = (first, *others)
                left = tuple(index for index in rest if index not in others)
                for tail in extend(left, sizes_left):
                    yield (group, *tail)
            sizes_left[size] += 1

    yield from extend(tuple(range(sum(sizes))), Counter(sizes))


@dataclass
class PermutationAnalysis:
    """Group latent R² of every split of a model's latents into groups of the true sizes.

    Attributes
    ----------
    partitions : list of tuples of tuples of int
        The splits, as from :func:`group_partitions`.
    scores : (P,) array
        Group latent R² of each split.
    """

    partitions: list[tuple[tuple[int, ...], ...]]
    scores: np.ndarray

    def summary(self, prefix: str = "perm_group_latent_r2") -> dict[str, float]:
        """``{prefix}_max``, ``_median``, ``_min`` and ``_mean`` of the scores, plus ``n_partitions``."""
        return {
            f"{prefix}_max": float(np.max(self.scores)),
            f"{prefix}_median": float(np.median(self.scores)),
            f"{prefix}_min": float(np.min(self.scores)),
            f"{prefix}_mean": float(np.mean(self.scores)),
            "n_partitions": float(len(self.scores)),
        }

    def to_dict(self) -> dict[str, list]:
        """JSON-ready ``{"partitions": [[[dims], ...], ...], "scores": [...]}``."""
        return {
            "partitions": [[list(group) for group in partition] for partition in self.partitions],
            "scores": [float(score) for score in self.scores],
        }


def permutation_analysis(
    true_latents: np.ndarray, est_latents: np.ndarray, true_group_sizes: Sequence[int]
) -> PermutationAnalysis:
    """Group latent R² over every split of the learned dimensions into groups of the true sizes.

    Parameters
    ----------
    true_latents : (n, K) array
        Ground-truth latents, grouped consecutively by ``true_group_sizes``.
    est_latents : (n, K) array
        Learned latents (posterior means) of the same samples; same ``K``.
    true_group_sizes : sequence of int
        ``[H_1, ..., H_G]``, summing to ``K``.

    Returns
    -------
    PermutationAnalysis
    """
    true_latents = np.asarray(true_latents, dtype=np.float64)
    est_latents = np.asarray(est_latents, dtype=np.float64)
    if true_latents.ndim != 2 or est_latents.ndim != 2 or true_latents.shape[1] != est_latents.shape[1]:
        raise ValueError(
            f"true_latents has shape {true_latents.shape} and est_latents {est_latents.shape}: "
            "expected two (n, K) arrays with the same K"
        )
    partitions = list(group_partitions(true_group_sizes))
    scores = np.empty(len(partitions))
    for p, partition in enumerate(partitions):
        order = [index for group in partition for index in group]
        sizes = [len(group) for group in partition]
        scores[p] = group_latent_r2(true_latents, est_latents[:, order], true_group_sizes, sizes).score
    return PermutationAnalysis(partitions=partitions, scores=scores)
