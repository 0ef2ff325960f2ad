"""Latent groups: parsing ``group_sizes`` and index helpers shared by losses and metrics."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def resolve_group_sizes(
    latent_dim: int | None = None,
    n_groups: int | None = None,
    group_sizes: Sequence[int] | None = None,
    group_rank: int | None = None,
) -> list[int]:
    """Return the list of group sizes ``[H_1, ..., H_G]``.

    ``group_sizes`` (unequal sizes allowed) wins when given, and must then sum to
    ``latent_dim`` if that is given too. Otherwise ``n_groups`` equal groups of
    ``group_rank`` dimensions when ``group_rank`` is given, or ``latent_dim`` split into
    ``n_groups`` equal groups (``K = n_groups x group_rank`` either way).

    Raises
    ------
    ValueError
        Naming the config key at fault and what was expected.
    """
    if group_sizes is not None:
        sizes = [int(size) for size in group_sizes]
        if len(sizes) == 0 or any(size < 1 for size in sizes):
            raise ValueError(f"model.group_sizes={list(group_sizes)}: expected a non-empty list of positive integers")
        if latent_dim is not None and sum(sizes) != int(latent_dim):
            raise ValueError(
                f"model.group_sizes={sizes} sums to {sum(sizes)} but model.latent_dim={latent_dim}: "
                "expected the group sizes to sum to the latent dimension K"
            )
        return sizes
    if group_rank is not None and n_groups is not None:
        if int(group_rank) < 1 or int(n_groups) < 1:
            raise ValueError(f"model.n_groups={n_groups}, model.group_rank={group_rank}: expected positive integers")
        sizes = [int(group_rank)] * int(n_groups)
        if latent_dim is not None and sum(sizes) != int(latent_dim):
            raise ValueError(
                f"model.n_groups={n_groups} x model.group_rank={group_rank} = {sum(sizes)} but "
                f"model.latent_dim={latent_dim}: expected them to agree (or set model.latent_dim=null)"
            )
        return sizes
    if latent_dim is None or n_groups is None:
        raise ValueError(
            "model.group_sizes is null: expected model.latent_dim and model.n_groups (or an explicit model.group_sizes=[3,3])"
        )
    latent_dim, n_groups = int(latent_dim), int(n_groups)
    if latent_dim < 1 or n_groups < 1:
        raise ValueError(f"model.latent_dim={latent_dim}, model.n_groups={n_groups}: expected positive integers")
    if latent_dim % n_groups != 0:
        raise ValueError(
            f"model.n_groups={n_groups} does not divide model.latent_dim={latent_dim}: expected equal "
            "groups, or give unequal sizes as model.group_sizes=[...]"
        )
    return [latent_dim // n_groups] * n_groups


def group_slices(group_sizes: Sequence[int]) -> list[slice]:
    """Consecutive slices of the latent axis, one per group."""
    slices, start = [], 0
    for size in group_sizes:
        slices.append(slice(start, start + int(size)))
        start += int(size)
    return slices


def padded_group_index(group_sizes: Sequence[int]) -> torch.Tensor:
    """Index ``(G, H_max)`` into ``K + 1`` latent columns; padding points at column ``K``.

    Gathering ``cat([z, zeros], -1)[..., index]`` gives a zero-padded per-group view
    of the latents, so per-group squared distances become one batched matmul.
    """
    total = int(sum(group_sizes))
    width = int(max(group_sizes))
    index = torch.full((len(group_sizes), width), total, dtype=torch.long)
    for g, part in enumerate(group_slices(group_sizes)):
        index[g, : part.stop - part.start] = torch.arange(part.start, part.stop)
    return index


def block_mask(group_sizes: Sequence[int]) -> torch.Tensor:
    """``(K, K)`` float mask, 1 inside the diagonal blocks of the groups, 0 elsewhere."""
    total = int(sum(group_sizes))
    mask = torch.zeros(total, total)
    for part in group_slices(group_sizes):
        mask[part, part] = 1.0
    return mask
