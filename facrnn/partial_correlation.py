"""Partial correlation (PC) of grouped latents: the minibatch training estimator and the
chunked evaluation estimator (DESIGN §1).

``PC(z) = KL(q(z) || prod_g q(z_g))`` where ``q`` is the aggregated posterior, a Gaussian
kernel density with isotropic width ``h``. One group gives exactly 0; one group per
dimension gives the total correlation (TC).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from facrnn.grouping import padded_group_index


def group_log_densities(
    points: torch.Tensor,
    centres: torch.Tensor,
    width: float,
    group_sizes: Sequence[int],
    group_index: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-group isotropic Gaussian log-densities between points and kernel centres.

    Parameters
    ----------
    points : (n, K) tensor
        Evaluation points ``z_i``.
    centres : (m, K) tensor
        Kernel centres ``mu_j``.
    width : float
        Kernel standard deviation ``h``.
    group_sizes : sequence of int
        ``[H_1, ..., H_G]``, summing to ``K``.
    group_index : (G, H_max) long tensor, optional
        Precomputed :func:`facrnn.grouping.padded_group_index` (saves work in a hot loop).

    Returns
    -------
    (G, n, m) tensor
        ``log N(z_{g,i}; mu_{g,j}, h^2 I_{H_g})``. Their sum over ``G`` is the joint
        log-density. Memory is O(n m G), never O(n m K).
    """
    if group_index is None:
        group_index = padded_group_index(group_sizes)
    group_index = group_index.to(points.device)
    sizes = torch.as_tensor(list(group_sizes), dtype=points.dtype, device=points.device)

    def grouped(values: torch.Tensor) -> torch.Tensor:  # (n, K) -> (G, n, H_max), zero padded
        padded = torch.cat([values, values.new_zeros(values.shape[0], 1)], dim=1)
        return padded[:, group_index].transpose(0, 1)

    points_g, centres_g = grouped(points), grouped(centres)
    squared_distance = (
        points_g.pow(2).sum(-1).unsqueeze(-1)
        + centres_g.pow(2).sum(-1).unsqueeze(-2)
        - 2.0 * torch.bmm(points_g, centres_g.transpose(1, 2))
    ).clamp_min(0.0)
    log_norm = 0.5 * sizes * math.log(2.0 * math.pi * width**2)
    return -0.5 * squared_distance / width**2 - log_norm.view(-1, 1, 1)


def partial_correlation_minibatch(
    samples: torch.Tensor,
    means: torch.Tensor,
    width: float,
    group_sizes: Sequence[int],
    n_total: int,
    group_index: torch.Tensor | None = None,
) -> torch.Tensor:
    """Importance-weighted minibatch estimate of PC used in the training loss.

    Parameters
    ----------
    samples : (n, K) tensor
        Posterior samples ``z_i = mu_i + h eps_i`` of the batch.
    means : (n, K) tensor
        Posterior means ``mu_j`` of the same batch (the kernel centres).
    width : float
        Posterior width ``h``.
    group_sizes : sequence of int
        Latent group sizes.
    n_total : int
        ``M``, the number of training samples the batch is drawn from.

    Returns
    -------
    scalar tensor
        ``mean_i [log q(z_i) - sum_g log q(z_{g,i})]`` with weights ``w_ii = 1`` and
        ``w_ij = (M - 1) / (n - 1)`` for ``j != i``. Differentiable.
    """
    n = samples.shape[0]
    if len(group_sizes) == 1 or n < 2:
        return samples.new_zeros(())
    log_density = group_log_densities(samples, means, width, group_sizes, group_index)
    log_weight = torch.full((n, n), math.log((n_total - 1) / (n - 1)), dtype=samples.dtype, device=samples.device)
    log_weight.fill_diagonal_(0.0)
    log_marginal = torch.logsumexp(log_density + log_weight, dim=-1)  # (G, n)
    log_joint = torch.logsumexp(log_density.sum(0) + log_weight, dim=-1)  # (n,)
    # The -log M normalisations contribute (G - 1) log M to the difference.
    offset = (len(group_sizes) - 1) * math.log(n_total)
    return (log_joint - log_marginal.sum(0)).mean() + offset


def partial_correlation_eval(
    means: torch.Tensor,
    width: float,
    group_sizes: Sequence[int],
    n_mc: int = 10,
    seed: int = 0,
    chunk_size: int | None = None,
    max_chunk_bytes: int = 8 * 2**20,
) -> float:
    """Evaluation estimate of PC with every point as a kernel centre, streamed in chunks.

    Draws ``n_mc`` posterior samples per point from a generator seeded with ``seed`` and
    averages ``log q(z) - sum_g log q(z_g)`` with ``log q(z) = logsumexp_j log N(z; mu_j, h^2 I) - log n``.
    Memory is O(chunk_size x n x G): the (n_mc n) x n x K tensor is never built.

    Parameters
    ----------
    means : (n, K) tensor
        Posterior means of the evaluation points.
    width : float
        Posterior width ``h``.
    group_sizes : sequence of int
        Grouping to measure; ``[1] * K`` gives the total correlation.
    n_mc : int
        Posterior samples per point.
    seed : int
        Seed of the sampling generator (the estimate is deterministic given it).
    chunk_size : int, optional
        Sample rows per chunk; by default chosen so one chunk stays under ``max_chunk_bytes``.

    Returns
    -------
    float
    """
    if len(group_sizes) == 1:
        return 0.0
    means = means.detach()
    n, latent_dim = means.shape
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    noise = torch.randn((n_mc, n, latent_dim), generator=generator, dtype=means.dtype).to(means.device)
    samples = (means.unsqueeze(0) + width * noise).reshape(n_mc * n, latent_dim)
    if chunk_size is None:
        bytes_per_row = n * (len(group_sizes) + 2) * means.element_size() * 2
        chunk_size = max(1, max_chunk_bytes // bytes_per_row)
    group_index = padded_group_index(group_sizes)
    total = torch.zeros((), dtype=torch.float64, device=means.device)
    with torch.no_grad():
        for start in range(0, samples.shape[0], chunk_size):
            log_density = group_log_densities(samples[start : start + chunk_size], means, width, group_sizes, group_index)
            log_marginal = torch.logsumexp(log_density, dim=-1).sum(0)
            log_joint = torch.logsumexp(log_density.sum(0), dim=-1)
            total += (log_joint - log_marginal).sum().double()
    offset = (len(group_sizes) - 1) * math.log(n)
    return float(total / samples.shape[0]) + offset
