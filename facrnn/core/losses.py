"""Loss terms of the FacRNN VAE (DESIGN §1). Pure functions; shapes in docstrings."""

from __future__ import annotations

import math

import torch

#: names of the loss terms, in the order they are stacked (``loss = nll + kl + beta pc + alpha overlap``)
LOSS_TERMS = ("loss", "nll", "kl", "partial_corr", "overlap")


def sample_mean(values: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over the sample dimension: ``(..., n) -> (...)``; weighted by ``weights`` ``(..., n)``
    (e.g. a 0/1 mask of the training bins of rollout windows) when given."""
    if weights is None:
        return values.mean(-1)
    weights = weights.to(values.dtype)
    return (values * weights).sum(-1) / weights.sum(-1)


def gaussian_nll(
    x: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Negative Gaussian log-likelihood with per-neuron std, full constant.

    Parameters
    ----------
    x, mean : (..., n, N) tensors
        Leading dimensions (independent model copies, ``model.replicas``) are kept.
    log_std : (..., N) tensor
        Per-neuron ``log s``.
    weights : (..., n) tensor, optional
        Sample weights of the mean over ``n`` (:func:`sample_mean`).

    Returns
    -------
    (...) tensor (a scalar for 2-D inputs)
        ``mean_i sum_n [0.5 ((x - mean) / s)^2 + log s + 0.5 log 2 pi]``.
    """
    log_std = log_std.unsqueeze(-2)
    standardized = (x - mean) * torch.exp(-log_std)
    per_neuron = 0.5 * standardized.pow(2) + log_std + 0.5 * math.log(2.0 * math.pi)
    return sample_mean(per_neuron.sum(-1), weights)


def gaussian_kl(means: torch.Tensor, width: float, weights: torch.Tensor | None = None) -> torch.Tensor:
    """``KL(N(mu, h^2 I) || N(0, I))`` averaged over the batch.

    Parameters
    ----------
    means : (..., n, K) tensor
    width : float
        Posterior width ``h``.
    weights : (..., n) tensor, optional
        Sample weights of the batch mean (:func:`sample_mean`).

    Returns
    -------
    (...) tensor (a scalar for 2-D inputs)
        ``mean_i 0.5 sum_k (mu_ik^2 + h^2 - 1 - 2 log h)``.
    """
    latent_dim = means.shape[-1]
    constant = 0.5 * latent_dim * (width**2 - 1.0 - 2.0 * math.log(width))
    return 0.5 * sample_mean(means.pow(2).sum(-1), weights) + constant


def overlap_penalty(overlap: torch.Tensor, block_mask: torch.Tensor) -> torch.Tensor:
    """Off-block-diagonal energy of the overlap matrix ``B A`` (bdRNN baseline).

    Parameters
    ----------
    overlap : (..., K, K) tensor
        ``B A`` (of each model copy).
    block_mask : (K, K) tensor
        1 inside the group blocks, 0 elsewhere.

    Returns
    -------
    (...) tensor (a scalar for one ``(K, K)`` matrix)
        ``mean((1 - mask) * overlap^2)``.
    """
    return ((1.0 - block_mask) * overlap.pow(2)).mean((-2, -1))


def poisson_nll(
    x: torch.Tensor, rate: torch.Tensor, min_rate: float = 1e-8, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Negative Poisson log-likelihood of counts, full constant (``model.likelihood=poisson``).

    Parameters
    ----------
    x : (..., n, N) tensor
        Counts (non-integer values use the continuous extension ``lgamma(x + 1)``).
    rate : (..., n, N) tensor
        Predicted rates (e.g. ``softplus(A z + a)``), clamped below at ``min_rate``.
    weights : (..., n) tensor, optional
        Sample weights of the mean over ``n`` (:func:`sample_mean`).

    Returns
    -------
    (...) tensor (a scalar for 2-D inputs)
        ``mean_i sum_n [rate - x log rate + log x!]``.
    """
    rate = rate.clamp_min(min_rate)
    per_neuron = rate - x * torch.log(rate) + torch.lgamma(x + 1.0)
    return sample_mean(per_neuron.sum(-1), weights)
