"""Known-answer tests of the VAE loss terms (DESIGN §1) against torch.distributions."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from facrnn.core.grouping import block_mask
from facrnn.core.losses import gaussian_kl, gaussian_nll, overlap_penalty

TOL = dict(rtol=1e-5, atol=1e-5)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("n, n_neurons", [(1, 1), (7, 5), (32, 20)])
def test_gaussian_nll_matches_normal_log_prob(n: int, n_neurons: int) -> None:
    gen = _generator(n * 100 + n_neurons)
    x = torch.randn(n, n_neurons, generator=gen, dtype=torch.float64) * 2.0
    mean = torch.randn(n, n_neurons, generator=gen, dtype=torch.float64)
    log_std = torch.randn(n_neurons, generator=gen, dtype=torch.float64) * 0.7
    # -log N(x; mean, s^2), summed over neurons, averaged over the batch, full constant.
    expected = -Normal(mean, log_std.exp()).log_prob(x).sum(-1).mean()
    torch.testing.assert_close(gaussian_nll(x, mean, log_std), expected, **TOL)


def test_gaussian_nll_known_value() -> None:
    # x = mean, s = 1: each neuron contributes 0.5 log(2 pi); 3 neurons.
    x = torch.zeros(4, 3, dtype=torch.float64)
    value = gaussian_nll(x, x.clone(), torch.zeros(3, dtype=torch.float64))
    assert value.item() == pytest.approx(1.5 * math.log(2 * math.pi), abs=1e-12)
    # Per-neuron std is used per neuron (not shared): s = e^{-1} on neuron 0 only, residual 1 there.
    x = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    log_std = torch.tensor([-1.0, 0.0], dtype=torch.float64)
    expected = 0.5 * math.e**2 - 1.0 + math.log(2 * math.pi)
    assert gaussian_nll(x, torch.zeros_like(x), log_std).item() == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("width", [0.05, 0.4, 1.0, 1.7])
@pytest.mark.parametrize("latent_dim", [1, 4, 6])
def test_gaussian_kl_matches_kl_divergence(width: float, latent_dim: int) -> None:
    gen = _generator(latent_dim)
    means = torch.randn(9, latent_dim, generator=gen, dtype=torch.float64) * 1.5
    posterior = Normal(means, torch.full_like(means, width))
    prior = Normal(torch.zeros_like(means), torch.ones_like(means))
    expected = kl_divergence(posterior, prior).sum(-1).mean()
    torch.testing.assert_close(gaussian_kl(means, width), expected, **TOL)


def test_gaussian_kl_zero_iff_posterior_is_prior() -> None:
    zeros = torch.zeros(3, 4, dtype=torch.float64)
    assert gaussian_kl(zeros, 1.0).item() == pytest.approx(0.0, abs=1e-12)
    assert gaussian_kl(zeros, 0.5).item() > 0.0
    assert gaussian_kl(zeros + 0.1, 1.0).item() > 0.0


def _overlap_penalty_loop(overlap: torch.Tensor, group_sizes: list[int]) -> float:
    group_of = [g for g, size in enumerate(group_sizes) for _ in range(size)]
    total, count = 0.0, 0
    for i in range(overlap.shape[0]):
        for j in range(overlap.shape[1]):
            count += 1
            if group_of[i] != group_of[j]:  # only the off-block-diagonal entries count
                total += float(overlap[i, j]) ** 2
    return total / count  # mean over all K^2 entries


@pytest.mark.parametrize("group_sizes", [[3, 3], [2, 3, 1], [1, 1, 1, 1], [4]])
def test_overlap_penalty_matches_loop(group_sizes: list[int]) -> None:
    latent_dim = sum(group_sizes)
    overlap = torch.randn(latent_dim, latent_dim, generator=_generator(latent_dim), dtype=torch.float64)
    mask = block_mask(group_sizes).to(torch.float64)
    value = overlap_penalty(overlap, mask)
    assert value.item() == pytest.approx(_overlap_penalty_loop(overlap, group_sizes), rel=1e-5, abs=1e-5)
    if len(group_sizes) == 1:
        assert value.item() == 0.0


def test_overlap_penalty_ignores_diagonal_blocks() -> None:
    group_sizes = [2, 3, 1]
    mask = block_mask(group_sizes).to(torch.float64)
    block_diagonal = torch.randn(6, 6, generator=_generator(1), dtype=torch.float64) * mask
    assert overlap_penalty(block_diagonal, mask).item() == 0.0
