"""Partial correlation (PC) of grouped latents: the minibatch training estimator and the
chunked evaluation estimator (DESIGN §1).

``PC(z) = KL(q(z) || prod_g q(z_g))`` where ``q`` is the aggregated posterior, a Gaussian
kernel density with isotropic width ``h``. One group gives exactly 0; one group per
dimension gives the total correlation (TC).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

import torch

from facrnn.core.grouping import padded_group_index


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
        Precomputed :func:`facrnn.core.grouping.padded_group_index` (saves work in a hot loop).

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
    # |p|^2 + |c|^2 - 2 p.c in two passes over the (G, n, m) output (baddbmm fuses the product).
    norms = points_g.pow(2).sum(-1).unsqueeze(-1) + centres_g.pow(2).sum(-1).unsqueeze(-2)
    squared_distance = torch.baddbmm(norms, points_g, centres_g.transpose(1, 2), alpha=-2.0).clamp_min_(0.0)
    log_norm = 0.5 * sizes * math.log(2.0 * math.pi * width**2)
    return torch.add(log_norm.view(-1, 1, 1).neg(), squared_distance, alpha=-0.5 / width**2)


def group_mask(
    group_sizes: Sequence[int], dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """One-hot membership of latent dimensions in groups, ``(G, K)``; cached per sizes, dtype, device."""
    return _cached_group_mask(tuple(int(size) for size in group_sizes), dtype, torch.device(device))


@lru_cache(maxsize=64)
def _cached_group_mask(group_sizes: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    mask = torch.zeros(len(group_sizes), sum(group_sizes), dtype=dtype)
    start = 0
    for group, size in enumerate(group_sizes):
        mask[group, start : start + size] = 1.0
        start += size
    return mask.to(device)


class MinibatchPCSaved(NamedTuple):
    """What :func:`minibatch_pc_forward` keeps for :func:`minibatch_pc_backward`."""

    samples: torch.Tensor  # (C, n, K)
    means: torch.Tensor  # (C, n, K)
    mask: torch.Tensor  # (G, K)
    kernel: torch.Tensor  # (C, G, n, n)
    joint: torch.Tensor  # (C, n, n)
    marginal_mass: torch.Tensor  # (C, G, n)
    joint_mass: torch.Tensor  # (C, n)
    inv_h2: float
    weight: float


def minibatch_pc_forward(
    samples: torch.Tensor, means: torch.Tensor, width: float, mask: torch.Tensor, n_total: int
) -> tuple[torch.Tensor, MinibatchPCSaved]:
    """Value of the minibatch PC estimator for ``C`` copies at once, and what its backward needs.

    With ``S_g[i, j] = (z_gi . mu_gj - |mu_gj|^2 / 2) / h^2`` (the terms in ``|z_gi|^2`` and the
    normalising constants cancel between joint and marginals) and the shift ``S_g[i, i]``
    (the sample's own kernel), ``E_g = exp(S_g - S_g[i, i])`` has an exact unit diagonal and
    is bounded by ``exp(|eps_gi|^2 / 2)``; the joint kernel is the product ``prod_g E_g``.
    The weighted row mass is ``1 + w (rowsum - 1)`` with ``w = (M - 1) / (n - 1)``, so
    ``PC = mean_i [log L_i - sum_g log L_gi] + (G - 1) log M``.

    Parameters
    ----------
    samples, means : (C, n, K) tensor
        Posterior samples and means of the batches of ``C`` copies.
    width : float
        Posterior width ``h``.
    mask : (G, K) tensor
        :func:`group_mask` of the groups.
    n_total : int
        ``M``, training samples.

    Returns
    -------
    value : (C,) tensor
    saved : MinibatchPCSaved
        Input of :func:`minibatch_pc_backward`.
    """
    n_groups, latent_dim = mask.shape
    n_copies, n = samples.shape[0], samples.shape[1]
    inv_h2 = 1.0 / width**2
    # (C, G, n, K): group g's columns only; the copies and groups share one batched matmul
    scaled = samples.unsqueeze(1) * (mask * inv_h2).unsqueeze(1)
    centre_term = (means * means) @ (mask.T * (-0.5 * inv_h2))  # (C, n, G)
    centres = means.transpose(1, 2).unsqueeze(1).expand(n_copies, n_groups, latent_dim, n)
    score = torch.baddbmm(
        centre_term.transpose(1, 2).reshape(n_copies * n_groups, 1, n),
        scaled.reshape(n_copies * n_groups, n, latent_dim),
        centres.reshape(n_copies * n_groups, latent_dim, n),
    ).view(n_copies, n_groups, n, n)
    own = score.diagonal(dim1=-2, dim2=-1).clone()  # (C, G, n)
    kernel = score.sub_(own.unsqueeze(-1)).exp_()  # (C, G, n, n), diagonal exactly 1
    joint = kernel[:, 0] * kernel[:, 1] if n_groups == 2 else kernel.prod(1)  # (C, n, n)
    weight = (n_total - 1) / (n - 1)
    marginal_mass = kernel.sum(-1).sub_(1.0).mul_(weight).add_(1.0)  # (C, G, n)
    joint_mass = joint.sum(-1).sub_(1.0).mul_(weight).add_(1.0)  # (C, n)
    value = (joint_mass.log() - marginal_mass.log().sum(1)).mean(-1) + (n_groups - 1) * math.log(n_total)
    return value, MinibatchPCSaved(samples, means, mask, kernel, joint, marginal_mass, joint_mass, inv_h2, weight)


def minibatch_pc_backward(
    saved: MinibatchPCSaved, grad_output: torch.Tensor, samples_grad: bool = True, means_grad: bool = True
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Gradients of ``sum_c grad_output[c] PC_c`` with respect to the samples and the means.

    The gradient with respect to ``S_g[i, j]`` (:func:`minibatch_pc_forward`) is
    ``w_ij (J_ij / L_i - E_gij / L_gi) / n``, whose rows sum to zero.

    Parameters
    ----------
    saved : MinibatchPCSaved
        From :func:`minibatch_pc_forward`.
    grad_output : (C,) tensor
        Weight of each copy's value.
    samples_grad, means_grad : bool
        Which of the two gradients to compute (the other is None).

    Returns
    -------
    grad_samples, grad_means : (C, n, K) tensor or None
        Transposed views (not contiguous).
    """
    samples, means, mask, kernel, joint, marginal_mass, joint_mass, inv_h2, weight = saved
    n_groups, latent_dim = mask.shape
    n_copies, n = samples.shape[0], samples.shape[1]
    scale = (grad_output / n).view(n_copies, 1)  # (C, 1)
    joint_coef = (scale * weight) / joint_mass  # (C, n)
    marginal_coef = (scale.unsqueeze(1) * weight) / marginal_mass  # (C, G, n)
    grad_score = torch.addcmul(
        (joint * joint_coef.unsqueeze(-1)).unsqueeze(1), kernel, marginal_coef.unsqueeze(-1), value=-1.0
    )  # (C, G, n, n)
    # The diagonal weight is 1, not w.
    grad_score.diagonal(dim1=-2, dim2=-1).add_(
        (scale.unsqueeze(1) * (1.0 - weight)) * (1.0 / joint_mass.unsqueeze(1) - 1.0 / marginal_mass)
    )
    group_rows = (mask * inv_h2).unsqueeze(-1)  # (G, K, 1)
    flat_grad = grad_score.view(n_copies * n_groups, n, n)

    def per_group_t(values: torch.Tensor) -> torch.Tensor:  # (C, n, K) -> (C * G, K, n)
        values_t = values.transpose(1, 2).unsqueeze(1)
        return values_t.expand(n_copies, n_groups, latent_dim, n).reshape(n_copies * n_groups, latent_dim, n)

    # The products are taken transposed, (K, n) @ (n, n): with the thin matrix on the left
    # the batched gemm is 2-4x faster on CPU than (n, n) @ (n, K) (benchmarks/README.md).
    grad_samples = grad_means = None
    if samples_grad:
        rows = torch.bmm(per_group_t(means), flat_grad.transpose(1, 2)).view(n_copies, n_groups, latent_dim, n)
        grad_samples = (rows * group_rows).sum(1).transpose(1, 2)
    if means_grad:
        cross = torch.bmm(per_group_t(samples), flat_grad).view(n_copies, n_groups, latent_dim, n)
        column_sums = grad_score.sum(-2).unsqueeze(-2)  # (C, G, 1, n)
        centres_t = means.transpose(1, 2).unsqueeze(1)  # (C, 1, K, n)
        grad_means = ((cross - column_sums * centres_t) * group_rows).sum(1).transpose(1, 2)
    return grad_samples, grad_means


class _MinibatchPartialCorrelation(torch.autograd.Function):
    """:func:`minibatch_pc_forward` with :func:`minibatch_pc_backward` as its backward, for
    ``C`` independent copies at once (``samples``, ``means``: ``(C, n, K)``; value ``(C,)``).
    About a third of the operations of plain autograd through :func:`group_log_densities`.
    """

    @staticmethod
    def forward(ctx, samples, means, width, mask, n_total):  # type: ignore[override]
        value, saved = minibatch_pc_forward(samples, means, width, mask, n_total)
        ctx.save_for_backward(*saved[:7])
        ctx.inv_h2, ctx.weight = saved.inv_h2, saved.weight
        return value

    @staticmethod
    def backward(ctx, grad_output):  # type: ignore[override]
        saved = MinibatchPCSaved(*ctx.saved_tensors, ctx.inv_h2, ctx.weight)
        grad_samples, grad_means = minibatch_pc_backward(saved, grad_output, *ctx.needs_input_grad[:2])
        return grad_samples, grad_means, None, None, None


def partial_correlation_minibatch(
    samples: torch.Tensor,
    means: torch.Tensor,
    width: float,
    group_sizes: Sequence[int],
    n_total: int,
    group_index: torch.Tensor | None = None,
) -> torch.Tensor:
    """Importance-weighted minibatch estimate of PC used in the training loss.

    Computed by a fused autograd function (same value and gradient as
    :func:`partial_correlation_minibatch_autograd`, about 3x faster for a batch of 128).
    ``samples[i]`` must be a posterior sample around ``means[i]`` (the kernels are shifted
    by each sample's own kernel, which keeps ``exp`` bounded by ``exp(|eps_i|^2 / 2)``).

    Parameters
    ----------
    samples : (n, K) or (C, n, K) tensor
        Posterior samples ``z_i = mu_i + h eps_i`` of the batch; with a leading dimension,
        the batches of ``C`` independent model copies (``model.replicas``), estimated at once.
    means : tensor of the same shape
        Posterior means ``mu_j`` of the same batch (the kernel centres).
    width : float
        Posterior width ``h``.
    group_sizes : sequence of int
        Latent group sizes.
    n_total : int
        ``M``, the number of training samples the batch is drawn from.

    Returns
    -------
    scalar tensor, or (C,) for batched copies
        ``mean_i [log q(z_i) - sum_g log q(z_{g,i})]`` with weights ``w_ii = 1`` and
        ``w_ij = (M - 1) / (n - 1)`` for ``j != i``. Differentiable.
    """
    n = samples.shape[-2]
    if len(group_sizes) == 1 or n < 2:
        return samples.new_zeros(samples.shape[:-2])
    mask = group_mask(group_sizes, samples.dtype, samples.device)
    if samples.ndim == 2:
        return _MinibatchPartialCorrelation.apply(samples.unsqueeze(0), means.unsqueeze(0), float(width), mask, int(n_total))[
            0
        ]
    return _MinibatchPartialCorrelation.apply(samples, means, float(width), mask, int(n_total))


def partial_correlation_minibatch_autograd(
    samples: torch.Tensor,
    means: torch.Tensor,
    width: float,
    group_sizes: Sequence[int],
    n_total: int,
    group_index: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`partial_correlation_minibatch` written with plain autograd through
    :func:`group_log_densities` and ``logsumexp``: the readable reference (tests, benchmarks).
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


# ---------------------------------------------------------------------------------------
# Evaluation estimators: exact (all n_mc n samples, all n kernel centres) and subsampled
# (a seeded subsample of query samples, every point a centre or a seeded subset of them).
# docs/evaluation.md describes both.


#: largest default chunk of the exact estimator (it was 512 MB: chunks of that size are mapped
#: afresh from the OS on every allocation, and page faults cost more than the arithmetic)
MAX_EXACT_CHUNK_BYTES = 64 * 2**20
#: default memory budget of one tile of the subsampled estimators (kernel values of a block
#: of queries against a block of centres); small tiles stay in cache and are reused in place
DEFAULT_TILE_BYTES = 8 * 2**20
#: centres per tile column block of the subsampled estimators
TILE_CENTRES = 2048
#: query blocks of the subsampled estimators when the centres are subsampled: each block has
#: its own seeded centre subset, and the standard error comes from the spread of block means
CENTRE_SUBSET_BLOCKS = 32


class KDEEstimate(NamedTuple):
    """A Monte Carlo estimate of a kernel-density functional with its standard error.

    Attributes
    ----------
    value : float
        The estimate.
    se : float
        Its Monte Carlo standard error (NaN with fewer than 2 query samples; 0 where the value
        is exact, e.g. one group).
    queries : int
        Query samples averaged.
    centres : int
        Kernel centres per query (all points, or the size of a centre subset).
    """

    value: float
    se: float
    queries: int
    centres: int


class KernelSums(NamedTuple):
    """Sums over kernel centres of kernels relative to each query's own (:func:`own_kernel_sums`)."""

    joint: torch.Tensor  # (m,)
    marginals: torch.Tensor  # (G, m)
    joint_squares: torch.Tensor | None = None  # (m,)
    marginal_squares: torch.Tensor | None = None  # (G, m)


@dataclass(frozen=True)
class EstimatorBudget:
    """When and how the evaluation estimators subsample (``conf/evaluate.yaml``, docs/evaluation.md).

    Parameters
    ----------
    exact_max_points : int
        At or below this many points the exact estimators run (every posterior sample of
        every point a query, every point a centre: O(n_mc n^2) time); above it, the
        subsampled ones (O(query_samples n) time).
    query_samples : int
        Query samples of a subsampled estimate: iid draws ``z = mu_i + h eps`` with ``i``
        uniform over the points. The standard error shrinks as ``1/sqrt(query_samples)``.
    max_centres : int, optional
        Kernel centres of a subsampled estimate: None keeps every point a centre; a number
        below ``n`` uses seeded centre subsets of that size (the query's own kernel kept
        exactly, the others importance weighted), for a cost independent of ``n``.
    tile_bytes : int
        Memory of one tile of kernel values (the largest temporary of a subsampled estimate).
    """

    exact_max_points: int = 4000
    query_samples: int = 10_000
    max_centres: int | None = None
    tile_bytes: int = DEFAULT_TILE_BYTES

    def exact(self, n_points: int) -> bool:
        """Whether ``n_points`` points are estimated exactly."""
        return n_points <= self.exact_max_points

    def centre_subset(self, n_points: int) -> int | None:
        """Size of the centre subsets of a subsampled estimate on ``n_points`` points (None: all)."""
        if self.max_centres is None or self.max_centres >= n_points:
            return None
        return int(self.max_centres)


def partial_correlation_eval(
    means: torch.Tensor,
    width: float,
    group_sizes: Sequence[int],
    n_mc: int = 10,
    seed: int = 0,
    chunk_size: int | None = None,
    max_chunk_bytes: int | None = None,
    max_samples: int | None = None,
) -> float:
    """Evaluation estimate of PC with every point as a kernel centre, streamed in chunks.

    Draws ``n_mc`` posterior samples per point from a generator seeded with ``seed`` and
    averages ``log q(z) - sum_g log q(z_g)`` with ``log q(z) = logsumexp_j log N(z; mu_j, h^2 I) - log n``.
    Memory is O(chunk_size x n x G): the (n_mc n) x n x K tensor is never built. Time is
    O(n_mc n^2 K); :func:`partial_correlation_estimate` is this below a size threshold and
    linear in ``n`` above it.

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
    max_chunk_bytes : int, optional
        Memory budget of one chunk. By default 8 MB (cache friendly for small ``n``), raised
        to 64 rows per chunk for large ``n`` (each chunk re-groups all ``n`` centres, so
        single-row chunks would cost as much again), and never above 64 MB
        (:data:`MAX_EXACT_CHUNK_BYTES`; up to 4,000 points and 14 groups the cap is not reached).
    max_samples : int, optional
        Average over a seeded random subset of this many of the ``n_mc n`` samples (every
        point stays a kernel centre): an unbiased, cheaper estimate for long recordings, where
        the full estimate costs O(n_mc n^2 K) time.

    Returns
    -------
    float

    Notes
    -----
    Per chunk, the group kernels are shifted by their row maximum and exponentiated once;
    the joint kernel is their product (its row mass cannot underflow: the sample's own kernel
    stays above ``exp(-|eps|^2 / 2)``), so there is one ``exp`` per group and entry.
    """
    return _partial_correlation_exact(means, width, group_sizes, n_mc, seed, chunk_size, max_chunk_bytes, max_samples).value


def _partial_correlation_exact(
    means: torch.Tensor,
    width: float,
    group_sizes: Sequence[int],
    n_mc: int = 10,
    seed: int = 0,
    chunk_size: int | None = None,
    max_chunk_bytes: int | None = None,
    max_samples: int | None = None,
) -> KDEEstimate:
    """:func:`partial_correlation_eval` with the standard error of its per-sample terms."""
    n = means.shape[0]
    if len(group_sizes) == 1:
        return KDEEstimate(0.0, 0.0, n_mc * n, n)
    means = means.detach()
    n, latent_dim = means.shape
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    noise = torch.randn((n_mc, n, latent_dim), generator=generator, dtype=means.dtype).to(means.device)
    samples = (means.unsqueeze(0) + width * noise).reshape(n_mc * n, latent_dim)
    del noise
    if max_samples is not None and max_samples < samples.shape[0]:
        subset = torch.randperm(samples.shape[0], generator=generator)[: max(1, int(max_samples))]
        samples = samples[subset.to(means.device)]
    if chunk_size is None:
        bytes_per_row = n * (len(group_sizes) + 2) * means.element_size() * 2
        if max_chunk_bytes is None:
            max_chunk_bytes = min(MAX_EXACT_CHUNK_BYTES, max(8 * 2**20, 64 * bytes_per_row))
        chunk_size = max(1, max_chunk_bytes // bytes_per_row)
    group_index = padded_group_index(group_sizes)
    total = torch.zeros((), dtype=torch.float64, device=means.device)
    # allocated once: small tensors kept alive between the chunks would pin the heap that the
    # chunks are served from (glibc), which then grows chunk after chunk instead of reusing it
    terms = torch.empty(samples.shape[0], dtype=torch.float64, device=means.device)
    with torch.no_grad():
        for start in range(0, samples.shape[0], chunk_size):
            log_density = group_log_densities(samples[start : start + chunk_size], means, width, group_sizes, group_index)
            shift = log_density.amax(-1, keepdim=True)  # (G, rows, 1); cancels between joint and marginals
            kernel = log_density.sub_(shift).exp_()  # (G, rows, n)
            log_joint_mass = kernel.prod(0).sum(-1).log_()  # (rows,)
            log_marginal_mass = kernel.sum(-1).log_().sum(0)  # (rows,)
            if not torch.isfinite(log_joint_mass).all():  # pragma: no cover - underflow guard
                log_density = group_log_densities(samples[start : start + chunk_size], means, width, group_sizes, group_index)
                log_joint_mass = torch.logsumexp(log_density.sum(0), dim=-1) - shift.sum(0).squeeze(-1)
            difference = log_joint_mass - log_marginal_mass
            total += difference.sum().double()
            terms[start : start + chunk_size] = difference
    offset = (len(group_sizes) - 1) * math.log(n)
    value = float(total / samples.shape[0]) + offset
    return KDEEstimate(value, standard_error(terms), int(samples.shape[0]), n)


def partial_correlation_estimate(
    means: torch.Tensor,
    width: float,
    group_sizes: Sequence[int],
    n_mc: int = 10,
    seed: int = 0,
    budget: EstimatorBudget | None = None,
) -> KDEEstimate:
    """The evaluation estimate of PC with its standard error, linear in ``n`` for large ``n``.

    Up to ``budget.exact_max_points`` points this is :func:`partial_correlation_eval` (the same
    value, bit for bit). Above, ``budget.query_samples`` query samples ``z_s = mu_{i_s} + h eps_s``
    (``i_s`` uniform over the points, ``eps_s ~ N(0, I)``, seeded) are each scored against every
    point as a kernel centre, or against seeded centre subsets (``budget.max_centres``):

    ``PC = mean_s [log q(z_s) - sum_g log q(z_{g,s})]``, with the centre subset ``C`` (all
    points by default) and ``E_gj = N(z_gs; mu_gj, h^2 I) / N(z_gs; mu_{g i_s}, h^2 I)``:
    ``q(z_gs) ∝ 1 + w sum_{j in C, j != i_s} E_gj``, ``w = (n - 1) / |C \\ {i_s}|`` (``w = 1``
    with every point a centre), the joint with ``prod_g E_gj`` in place of ``E_gj``.

    Parameters
    ----------
    means : (n, K) tensor
        Posterior means of the evaluation points.
    width : float
        Posterior width ``h``.
    group_sizes : sequence of int
        Grouping to measure; ``[1] * K`` gives the total correlation.
    n_mc : int
        Posterior samples per point of the exact estimate.
    seed : int
        Seed of the queries (and centre subsets): the estimate is deterministic given it.
    budget : EstimatorBudget, optional
        Threshold, query samples, centres and tile memory (default :class:`EstimatorBudget()`).

    Returns
    -------
    KDEEstimate
        The value, its standard error (over query samples, or over query blocks with their own
        centre subsets), the number of query samples and of centres per query.
    """
    budget = EstimatorBudget() if budget is None else budget
    n = means.shape[0]
    if len(group_sizes) == 1:
        return KDEEstimate(0.0, 0.0, 0, n)
    if budget.exact(n):
        return _partial_correlation_exact(means, width, group_sizes, n_mc, seed)
    means = means.detach().double()
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    queries, own = posterior_queries(means, width, budget.query_samples, generator)
    subset_size = budget.centre_subset(n)
    offset = (len(group_sizes) - 1) * math.log(n)

    def block_terms(block: slice) -> torch.Tensor:
        centres = None if subset_size is None else centre_subset(n, subset_size, generator)
        sums = own_kernel_sums(
            queries[block], own[block], means, width, group_sizes, centres, budget.tile_bytes, squares=centres is not None
        )
        log_joint, log_marginals = weighted_log_mass(sums, own[block], n, centres)
        return log_joint - log_marginals.sum(0) + offset

    return blockwise_estimate(block_terms, budget.query_samples, subset_size is not None, subset_size or n)


def posterior_queries(
    means: torch.Tensor, width: float, n_queries: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n_queries`` iid draws of the aggregated posterior: ``z_s = mu_{i_s} + h eps_s``.

    Returns
    -------
    queries : (n_queries, K) tensor
    own : (n_queries,) long tensor
        ``i_s``, each query's own point (uniform over the ``n`` points, with replacement).
    """
    n, latent_dim = means.shape
    own = torch.randint(n, (int(n_queries),), generator=generator)
    noise = torch.randn((int(n_queries), latent_dim), generator=generator, dtype=means.dtype)
    return means[own] + width * noise, own


def centre_subset(n: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """A seeded subset of ``size`` of ``n`` point indices, sorted (memory order): ``(size,)``."""
    return torch.randperm(n, generator=generator)[:size].sort().values


def blockwise_estimate(block_terms, n_queries: int, subsets: bool, centres: int) -> KDEEstimate:
    """Mean and standard error of the per-query terms ``block_terms(rows)`` (a tensor per slice).

    With every point a centre (``subsets`` false): one block, and the standard error of the
    mean over queries. With centre subsets: :data:`CENTRE_SUBSET_BLOCKS` query blocks, each
    drawing its own seeded subset inside ``block_terms``, and the standard error from the
    spread of the block means (a subset's error is shared within its block, so it is counted).
    """
    if not subsets:
        terms = block_terms(slice(0, n_queries))
        return KDEEstimate(float(terms.mean()), standard_error(terms), n_queries, centres)
    n_blocks = max(2, min(CENTRE_SUBSET_BLOCKS, n_queries // 2))
    bounds = torch.linspace(0, n_queries, n_blocks + 1).round().long().tolist()
    block_means, total = [], 0.0
    for start, stop in zip(bounds[:-1], bounds[1:]):
        terms = block_terms(slice(start, stop))
        block_means.append(float(terms.mean()))
        total += float(terms.sum())
    spread = torch.tensor(block_means, dtype=torch.float64)
    return KDEEstimate(total / n_queries, standard_error(spread), n_queries, centres)


def standard_error(terms: torch.Tensor) -> float:
    """Standard error of the mean of ``terms`` (NaN for fewer than 2)."""
    if terms.numel() < 2:
        return float("nan")
    return float(terms.double().std() / math.sqrt(terms.numel()))


def weighted_log_mass(
    sums: KernelSums, own: torch.Tensor, n: int, centres: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log kernel masses relative to the own kernel, ``log(1 + w * others)``, of :class:`KernelSums`.

    With every point a centre the own kernel is among them (its term is 1) and the mass is the
    sum itself. With a subset ``C`` (``sums`` with squares), the own term is removed where
    ``i_s`` is in ``C``, the other ``c'`` kernels are weighted by ``w = (n - 1) / c'``, and the
    log gets the second-order correction ``+ Var(w S) / (2 (1 + w S)^2)`` of the log of an
    unbiased estimate, ``Var(w S) = w^2 c' s^2 (1 - c' / (n - 1))`` with ``s^2`` the sample
    variance of the subset's kernels.

    Returns
    -------
    log_joint : (m,) tensor
    log_marginals : (G, m) tensor
    """
    if centres is None:
        return sums.joint.log(), sums.marginals.log()
    inside = torch.zeros(n, dtype=torch.bool)
    inside[centres] = True
    own_inside = inside[own].to(sums.joint.dtype)  # (m,): the own kernel (1) is in the subset
    others = centres.numel() - own_inside  # c'

    def corrected_log(total: torch.Tensor, total_squares: torch.Tensor | None) -> torch.Tensor:
        other_sum = torch.clamp_min(total - own_inside, 0.0)
        weight = (n - 1) / others
        mass = other_sum * weight + 1.0
        if total_squares is None:
            return mass.log()
        other_squares = torch.clamp_min(total_squares - own_inside, 0.0)
        variance = torch.clamp_min(other_squares - other_sum.square() / others, 0.0) / torch.clamp_min(others - 1, 1.0)
        estimate_variance = weight.square() * others * variance * (1.0 - others / (n - 1))
        return mass.log() + 0.5 * estimate_variance / mass.square()

    return corrected_log(sums.joint, sums.joint_squares), corrected_log(sums.marginals, sums.marginal_squares)


def _grouped(values: torch.Tensor, group_index: torch.Tensor) -> torch.Tensor:
    """``(n, K) -> (G, n, H_max)``, zero padded (:func:`facrnn.core.grouping.padded_group_index`)."""
    padded = torch.cat([values, values.new_zeros(values.shape[0], 1)], dim=1)
    return padded[:, group_index].transpose(0, 1).contiguous()


def _tile_shape(n_rows: int, n_centres: int, planes: int, tile_bytes: int, element_size: int) -> tuple[int, int]:
    """Rows and centres of a tile of ``planes`` (rows, centres) arrays within ``tile_bytes``."""
    columns = max(1, min(n_centres, TILE_CENTRES))
    rows = max(1, min(n_rows, tile_bytes // (planes * columns * element_size)))
    return rows, columns


def own_kernel_sums(
    queries: torch.Tensor,
    own: torch.Tensor,
    means: torch.Tensor,
    width: float,
    group_sizes: Sequence[int],
    centres: torch.Tensor | None = None,
    tile_bytes: int = DEFAULT_TILE_BYTES,
    squares: bool = False,
) -> KernelSums:
    """Kernel sums of queries relative to their own kernel, per group and joint, in tiles.

    With ``S_gsj = (z_gs . mu_gj - |mu_gj|^2 / 2) / h^2`` and the own score ``S_gs = S_{g s i_s}``,
    ``E_gsj = exp(S_gsj - S_gs) = N(z_gs; mu_gj, h^2 I) / N(z_gs; mu_{g i_s}, h^2 I)`` is at most
    ``exp(|eps_gs|^2 / 2)`` (no overflow) and 1 at the own centre (no underflow of the sums), so
    tiles of centres add up without a running maximum. One tile buffer of at most
    ``tile_bytes`` is allocated once and reused.

    Parameters
    ----------
    queries : (m, K) tensor
        ``z_s = mu_{i_s} + h eps_s``.
    own : (m,) long tensor
        ``i_s``.
    means : (n, K) tensor
        All points.
    width : float
        ``h``.
    group_sizes : sequence of int
    centres : (c,) long tensor, optional
        Indices of the kernel centres (default: all ``n`` points).
    tile_bytes : int
    squares : bool
        Also the sums of squared kernels (for the variance of a centre-subset estimate).

    Returns
    -------
    KernelSums
        ``joint`` (m,): ``sum_j prod_g E_gsj`` (for one group: the group's sum); ``marginals``
        (G, m): ``sum_j E_gsj``; with ``squares``, the same sums of squares.
    """
    group_index = padded_group_index(group_sizes)
    n_groups = len(group_sizes)
    inv_h2 = 1.0 / width**2
    centre_values = means if centres is None else means[centres]
    centre_groups = _grouped(centre_values, group_index)  # (G, c, H)
    centre_term = centre_groups.pow(2).sum(-1).mul_(-0.5 * inv_h2).unsqueeze(1)  # (G, 1, c)
    centre_groups = centre_groups.transpose(1, 2).contiguous()  # (G, H, c)
    query_groups = _grouped(queries, group_index).mul_(inv_h2)  # (G, m, H)
    own_groups = _grouped(means[own], group_index)  # (G, m, H)
    own_score = (query_groups * own_groups).sum(-1) - 0.5 * inv_h2 * own_groups.pow(2).sum(-1)  # (G, m)
    n_queries, n_centres = queries.shape[0], centre_values.shape[0]
    planes = n_groups + (1 if n_groups > 1 else 0)
    rows, columns = _tile_shape(n_queries, n_centres, planes, tile_bytes, queries.element_size())
    buffer = queries.new_empty(planes * rows * columns)
    joint = queries.new_zeros(n_queries)
    marginals = queries.new_zeros(n_groups, n_queries)
    joint_squares = queries.new_zeros(n_queries) if squares else None
    marginal_squares = queries.new_zeros(n_groups, n_queries) if squares else None
    with torch.no_grad():
        for r0 in range(0, n_queries, rows):
            r1 = min(n_queries, r0 + rows)
            shift = own_score[:, r0:r1, None]
            for c0 in range(0, n_centres, columns):
                c1 = min(n_centres, c0 + columns)
                size = (r1 - r0) * (c1 - c0)
                kernel = buffer[: n_groups * size].view(n_groups, r1 - r0, c1 - c0)
                torch.baddbmm(centre_term[:, :, c0:c1], query_groups[:, r0:r1], centre_groups[:, :, c0:c1], out=kernel)
                kernel.sub_(shift).exp_()
                marginals[:, r0:r1] += kernel.sum(-1)
                if squares:
                    marginal_squares[:, r0:r1] += torch.linalg.vector_norm(kernel, dim=-1).square_()
                if n_groups > 1:
                    product = buffer[n_groups * size : (n_groups + 1) * size].view(r1 - r0, c1 - c0)
                    torch.mul(kernel[0], kernel[1], out=product)
                    for group in range(2, n_groups):
                        product.mul_(kernel[group])
                    joint[r0:r1] += product.sum(-1)
                    if squares:
                        joint_squares[r0:r1] += torch.linalg.vector_norm(product, dim=-1).square_()
    if n_groups == 1:
        joint = marginals[0].clone()
        joint_squares = None if marginal_squares is None else marginal_squares[0].clone()
    return KernelSums(joint, marginals, joint_squares, marginal_squares)


def kernel_log_sums(
    queries: torch.Tensor,
    centres: torch.Tensor,
    width: float,
    tile_bytes: int = DEFAULT_TILE_BYTES,
    population: int | None = None,
) -> torch.Tensor:
    """``log sum_j exp(-|z_s - c_j|^2 / (2 h^2))`` of every query over all centres, in tiles.

    A streaming ``logsumexp`` (running maximum per query), for centres that need not contain
    the query's own kernel (e.g. another point cloud). One reused tile buffer of at most
    ``tile_bytes``.

    Parameters
    ----------
    queries : (m, d) tensor
    centres : (c, d) tensor
    width : float
    tile_bytes : int
    population : int, optional
        The centres are a uniform subset of ``population`` components: the log of their sum
        then gets the second-order correction ``+ (1 - c / population) s^2 / (2 c mean^2)``
        (``mean``, ``s^2``: sample mean and variance of the subset's kernels), so that
        ``log(sum) - log(c)`` estimates the log of the population's mean kernel.

    Returns
    -------
    (m,) tensor
    """
    inv_h2 = 1.0 / width**2
    centre_term = centres.pow(2).sum(-1).mul_(-0.5 * inv_h2).unsqueeze(0)  # (1, c)
    centre_columns = centres.T.contiguous()  # (d, c)
    scaled = queries * inv_h2
    n_queries, n_centres = queries.shape[0], centres.shape[0]
    rows, columns = _tile_shape(n_queries, n_centres, 1, tile_bytes, queries.element_size())
    buffer = queries.new_empty(rows * columns)
    running_max = queries.new_full((n_queries,), -math.inf)
    running_sum = queries.new_zeros(n_queries)
    subset = population is not None and population > n_centres
    running_squares = queries.new_zeros(n_queries) if subset else None
    with torch.no_grad():
        for r0 in range(0, n_queries, rows):
            r1 = min(n_queries, r0 + rows)
            for c0 in range(0, n_centres, columns):
                c1 = min(n_centres, c0 + columns)
                score = buffer[: (r1 - r0) * (c1 - c0)].view(r1 - r0, c1 - c0)
                torch.addmm(centre_term[:, c0:c1], scaled[r0:r1], centre_columns[:, c0:c1], out=score)
                block_max = score.amax(-1)
                new_max = torch.maximum(running_max[r0:r1], block_max)
                rescale = torch.exp(running_max[r0:r1] - new_max)
                running_sum[r0:r1] *= rescale
                kernel = score.sub_(new_max[:, None]).exp_()
                running_sum[r0:r1] += kernel.sum(-1)
                if subset:
                    running_squares[r0:r1] *= rescale.square_()
                    running_squares[r0:r1] += torch.linalg.vector_norm(kernel, dim=-1).square_()
                running_max[r0:r1] = new_max
    log_sum = running_sum.log() + running_max - 0.5 * inv_h2 * queries.pow(2).sum(-1)
    if subset and n_centres > 1:
        variance = torch.clamp_min(running_squares - running_sum.square() / n_centres, 0.0) / (n_centres - 1)
        relative = (1.0 - n_centres / population) * variance * n_centres / running_sum.square()
        log_sum = log_sum + 0.5 * relative
    return log_sum
