"""Observation models (facrnn.core.observation) against independent references: scipy's
normal density and Poisson pmf, and the links written out by hand."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from scipy import stats

from facrnn.core.copies import build_copies
from facrnn.core.losses import gaussian_nll, poisson_nll
from facrnn.core.model import LowRankRNN
from facrnn.core.observation import (
    LIKELIHOODS,
    LINKS,
    GaussianObservation,
    PoissonObservation,
    make_observation,
)


def test_factory_builds_each_observation_model_with_its_link() -> None:
    assert LIKELIHOODS == ("gaussian", "poisson") and LINKS == ("identity", "relu", "softplus")
    gaussian = make_observation("gaussian", "relu")
    assert isinstance(gaussian, GaussianObservation) and (gaussian.name, gaussian.link) == ("gaussian", "relu")
    poisson = make_observation("poisson", "softplus")
    assert isinstance(poisson, PoissonObservation) and (poisson.name, poisson.link) == ("poisson", "softplus")
    assert make_observation("gaussian", "relu") == gaussian and gaussian != make_observation("gaussian", "identity")
    assert copy.deepcopy(poisson) == poisson


def test_factory_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match=r"^model.likelihood='gamma': expected one of \('gaussian', 'poisson'\)$"):
        make_observation("gamma", "softplus")
    with pytest.raises(ValueError, match=r"^model.link='gelu': expected one of \('identity', 'relu', 'softplus'\)$"):
        make_observation("gaussian", "gelu")


@pytest.mark.parametrize(
    ("link", "reference"),
    [
        ("identity", lambda y: y),
        ("relu", lambda y: np.maximum(y, 0.0)),
        ("softplus", lambda y: np.log1p(np.exp(y))),
    ],
)
def test_mean_applies_the_link_then_adds_the_external_input(link: str, reference) -> None:
    rng = np.random.default_rng(0)
    output, external = rng.normal(0, 3, size=(2, 6, 4))
    observation = make_observation("gaussian", link)
    expected = reference(output)
    np.testing.assert_allclose(observation.mean(torch.from_numpy(output)).numpy(), expected, rtol=1e-12)
    with_input = observation.mean(torch.from_numpy(output), torch.from_numpy(external)).numpy()
    np.testing.assert_allclose(with_input, expected + external, rtol=1e-12)


def test_gaussian_nll_matches_scipy_normal_density() -> None:
    rng = np.random.default_rng(1)
    x, mean = rng.normal(size=(2, 3, 40, 5))  # (copies, n, N)
    log_std = rng.normal(0, 0.5, size=(3, 5))
    nll = GaussianObservation("identity").nll(torch.from_numpy(x), torch.from_numpy(mean), torch.from_numpy(log_std))
    expected = -stats.norm.logpdf(x, mean, np.exp(log_std)[:, None, :]).sum(-1).mean(-1)
    np.testing.assert_allclose(nll.numpy(), expected, rtol=1e-12)


def test_poisson_nll_matches_scipy_pmf_and_ignores_the_noise_parameter() -> None:
    rng = np.random.default_rng(2)
    rates = rng.uniform(0.05, 4.0, size=(50, 6))
    counts = rng.poisson(rates).astype(float)
    observation = PoissonObservation()
    assert observation.link == "softplus"
    nll = observation.nll(torch.from_numpy(counts), torch.from_numpy(rates), torch.full((6,), 7.0))
    expected = -stats.poisson.logpmf(counts, rates).sum(-1).mean()
    assert float(nll) == pytest.approx(expected, rel=1e-12)


def test_observation_nll_is_the_pure_loss_function_bit_for_bit() -> None:
    torch.manual_seed(0)
    x, mean, log_std = torch.randn(32, 5), torch.randn(32, 5), torch.randn(5)
    assert torch.equal(GaussianObservation().nll(x, mean, log_std), gaussian_nll(x, mean, log_std))
    counts, rates = torch.poisson(torch.ones(32, 5)), torch.rand(32, 5)
    assert torch.equal(PoissonObservation().nll(counts, rates, log_std), poisson_nll(counts, rates))


def test_models_and_their_copies_decode_through_one_observation_model() -> None:
    def make_model() -> LowRankRNN:
        return LowRankRNN(5, [2, 2], 100, link="softplus", likelihood="poisson", history=2)

    copies = build_copies(make_model, seed=0, replicas=2, restarts=1)
    assert copies.observation == make_model().observation and (copies.link, copies.history) == ("softplus", 2)
    latents = torch.randn(2, 7, 4)
    decoded = copies.decode(latents)
    for index in range(2):
        plain = copies.to_model(index)
        assert plain.observation.name == "poisson" and plain.history == 2
        torch.testing.assert_close(decoded[index], plain.decode(latents[index]))
        expected = torch.nn.functional.softplus(latents[index] @ plain.A.T + plain.decoder.bias)
        torch.testing.assert_close(decoded[index], expected)
