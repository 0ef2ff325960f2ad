"""Poisson observation model, bits per spike, the grouped teacher, and the history kernel L."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from datamodules.grouped_teacher import GroupedTeacherDataModule, generate_grouped_teacher
from facrnn.core.losses import poisson_nll
from facrnn.core.model import encoder_input
from facrnn.core.observation import GaussianObservation, PoissonObservation
from facrnn.evaluation.metrics import bits_per_spike, observation_scores, poisson_loglik
from facrnn.runs.pipeline import train
from facrnn.training.module import FacRNNModule

# ------------------------------------------------------------------------------ Poisson


def test_poisson_nll_matches_torch_distribution() -> None:
    rng = np.random.default_rng(0)
    rate = torch.from_numpy(rng.uniform(0.1, 4.0, size=(30, 5)))
    counts = torch.poisson(rate, generator=torch.Generator().manual_seed(0))
    expected = -torch.distributions.Poisson(rate).log_prob(counts).sum(-1).mean()
    torch.testing.assert_close(poisson_nll(counts, rate), expected)


def bits_per_spike_by_formula(counts: np.ndarray, rates: np.ndarray) -> float:
    """DESIGN §3 / NLB: (LL(model) - LL(neuron mean rate)) / (spikes ln 2), with scipy's pmf."""
    null = np.tile(counts.mean(0), (counts.shape[0], 1))
    model_ll = stats.poisson.logpmf(counts, rates).sum()
    null_ll = stats.poisson.logpmf(counts, null).sum()
    return float((model_ll - null_ll) / counts.sum() / np.log(2))


def test_bits_per_spike_matches_the_formula_and_known_values() -> None:
    rng = np.random.default_rng(1)
    rates = rng.uniform(0.05, 3.0, size=(400, 12))
    counts = rng.poisson(rates).astype(float)
    assert bits_per_spike(counts, rates) == pytest.approx(bits_per_spike_by_formula(counts, rates), rel=1e-10)
    assert bits_per_spike(counts, rates) > 0.1  # the true rates beat the mean rate
    # the null model itself scores exactly 0; a constant wrong rate scores below 0
    assert bits_per_spike(counts, np.tile(counts.mean(0), (400, 1))) == pytest.approx(0.0, abs=1e-12)
    assert bits_per_spike(counts, np.full_like(rates, 5.0)) < 0
    assert poisson_loglik(counts, rates) == pytest.approx(stats.poisson.logpmf(counts, rates).sum(1).mean())
    # what evaluate_model reports for a Poisson model (model.observation); log_std plays no part
    scores = observation_scores(PoissonObservation(), counts, rates, np.full(12, 9.0))
    assert list(scores) == ["cond_loglik", "bits_per_spike"]
    assert scores["cond_loglik"] == pytest.approx(stats.poisson.logpmf(counts, rates).sum(1).mean(), rel=1e-12)
    assert scores["bits_per_spike"] == pytest.approx(bits_per_spike_by_formula(counts, rates), rel=1e-10)
    assert list(observation_scores(PoissonObservation(), np.zeros((3, 2)), np.ones((3, 2)), np.zeros(2))) == [
        "cond_loglik"  # no spikes: bits per spike are undefined and left out
    ]
    gaussian = observation_scores(GaussianObservation(), counts, rates, np.full(12, -0.5))
    assert list(gaussian) == ["cond_loglik"]
    assert gaussian["cond_loglik"] == pytest.approx(stats.norm.logpdf(counts, rates, np.exp(-0.5)).sum(1).mean(), rel=1e-12)


def test_bits_per_spike_errors() -> None:
    with pytest.raises(ValueError, match="no spikes"):
        bits_per_spike(np.zeros((3, 2)), np.ones((3, 2)))
    with pytest.raises(ValueError, match="shapes"):
        bits_per_spike(np.ones((3, 2)), np.ones((3, 3)))


def test_softplus_link_decodes_positive_rates() -> None:
    from facrnn.core.model import LowRankRNN

    model = LowRankRNN(5, [2, 2], 100, link="softplus")
    z = 3 * torch.randn(10, 4)
    expected = torch.log1p(torch.exp(z @ model.A.T + model.decoder.bias))
    torch.testing.assert_close(model.decode(z), expected)
    assert (model.decode(z) > 0).all()


def test_poisson_module_needs_softplus_and_uses_the_poisson_loss() -> None:
    with pytest.raises(ValueError, match="model.likelihood=poisson"):
        FacRNNModule(n_neurons=4, n_train=100, latent_dim=2, n_groups=1, likelihood="poisson")
    with pytest.raises(ValueError, match="model.likelihood"):
        FacRNNModule(n_neurons=4, n_train=100, latent_dim=2, n_groups=1, likelihood="gamma")
    module = FacRNNModule(n_neurons=4, n_train=100, latent_dim=2, n_groups=1, beta=0.0, likelihood="poisson", link="softplus")
    batch = {"x": torch.poisson(torch.ones(16, 4)), "encoder_input": torch.randn(16, 4)}
    torch.manual_seed(0)
    terms = module.loss_terms(batch)
    torch.manual_seed(0)
    samples = module.model.sample(module.model.encode(batch["encoder_input"]))
    rate = torch.nn.functional.softplus(module.model.decoder(samples))
    torch.testing.assert_close(terms["nll"], poisson_nll(batch["x"], rate))


def test_grouped_teacher_is_neuron_disjoint_and_its_counts_follow_the_rates() -> None:
    arrays = generate_grouped_teacher(n_groups=3, group_rank=2, neurons_per_group=5, n_steps=3000, seed=2)
    A, B = arrays["A"], arrays["B"]
    for group in range(3):
        rows = slice(5 * group, 5 * group + 5)
        cols = slice(2 * group, 2 * group + 2)
        off_rows = np.ones(15, dtype=bool)
        off_rows[rows] = False
        assert np.all(A[off_rows][:, cols] == 0) and np.all(B[cols][:, off_rows] == 0)
    overlap = B @ A
    mask = np.kron(np.eye(3), np.ones((2, 2))).astype(bool)
    assert np.all(overlap[~mask] == 0)
    # self-sustained oscillation, not a fixed point
    assert np.all(arrays["latents"].std(0) > 0.2)
    assert np.all(arrays["x"] == np.round(arrays["x"])) and arrays["x"].min() >= 0
    # counts average to the rates
    assert np.mean(arrays["x"]) == pytest.approx(np.mean(arrays["rates"]), rel=0.05)


POISSON_BASIN = pytest.mark.xfail(
    strict=True,
    reason=(
        "pinned a lucky basin (0.907) found with val = test bins; with validation carved from the training "
        "bins (issue 14) seeds 0-7 stop at 0.36-0.53 (docs/dynamics.md): group recovery of two Poisson rings "
        "is not reliable, see the docstrings"
    ),
)


@pytest.mark.slow
@POISSON_BASIN
def test_poisson_facrnn_recovers_the_groups_of_a_poisson_teacher(tmp_path: Path) -> None:
    """Two 2-D oscillator groups, 100 neurons each, Poisson counts at ~0.5 per bin (~2-5 min).

    The linear-readout ceiling of the group latent R² here is ~0.94 (z_t from tanh(x_{t-1})).
    This configuration (beta = 100, data_seed = 1, seed 0) reaches >= 0.9; other data or
    model seeds often stop at ~0.4-0.5, a local minimum that pairs one dimension of each
    ring per learned group (Gaussian observations do the same; docs/dynamics.md), so this
    pins the reported result rather than proving robustness. The truth scores 0.54 bits/spike.
    """
    from tests.helpers import compose_config

    cfg = compose_config(
        "train",
        [
            "datamodule=grouped_teacher",
            "datamodule.neurons_per_group=100",
            "datamodule.bias=-1.0",
            "datamodule.data_seed=1",
            "model.latent_dim=4",
            "model.beta=100",
            "model.likelihood=poisson",
            "model.link=softplus",
            "trainer.max_epochs=500",
            "logger=csv",
            "threads=1",
            "seed=0",
        ],
        tmp_path,
    )
    metrics = train(cfg)["metrics"]
    assert metrics["group_latent_r2"] >= 0.9
    assert metrics["bits_per_spike"] > 0.4


@pytest.mark.slow
@POISSON_BASIN
def test_poisson_facrnn_with_history_and_restarts_recovers_the_groups(tmp_path: Path) -> None:
    """The same teacher on data_seed 0, where single starts stop at <= 0.874 (one seed of four
    at 0.42): 3 history lags lift the ceiling, 4 starts kept by their final training objective
    avoid the mixed solutions (about 1 minute; measured 0.935, docs/robust.md)."""
    from tests.helpers import compose_config

    cfg = compose_config(
        "train",
        [
            "datamodule=grouped_teacher",
            "datamodule.neurons_per_group=100",
            "datamodule.bias=-1.0",
            "datamodule.data_seed=0",
            "model.latent_dim=4",
            "model.beta=100",
            "model.likelihood=poisson",
            "model.link=softplus",
            "model.history=3",
            "model.restarts=4",
            "model.restart_epochs=500",
            "trainer.max_epochs=500",
            "logger=csv",
            "seed=0",
        ],
        tmp_path,
    )
    metrics = train(cfg)["metrics"]
    assert metrics["group_latent_r2"] >= 0.9
    assert metrics["restarts"] == 4


# ------------------------------------------------------------------------------ history


def test_history_one_is_the_default_exactly(tiny_train_cfg) -> None:
    from facrnn.runs.pipeline import instantiate_datamodule

    default = instantiate_datamodule(tiny_train_cfg().datamodule)
    explicit = instantiate_datamodule(tiny_train_cfg("model.history=1", run_name="explicit").datamodule)
    x = torch.from_numpy(default.recording.x)
    by_hand = torch.cat([torch.zeros_like(x[:, :1]), torch.tanh(x[:, :-1])], dim=1)  # u_t = tanh(x_{t-1})
    for split in ("train", "test"):
        tensors = default.split_tensors(split)
        torch.testing.assert_close(tensors["encoder_input"], by_hand[tensors["trial"], tensors["time"]], rtol=0, atol=0)
        torch.testing.assert_close(explicit.split_tensors(split)["encoder_input"], tensors["encoder_input"], rtol=0, atol=0)


def test_history_three_feeds_three_lags_to_the_encoder(tiny_train_cfg) -> None:
    from facrnn.runs.pipeline import instantiate_datamodule

    datamodule = instantiate_datamodule(tiny_train_cfg("model.history=3").datamodule)
    x = torch.from_numpy(datamodule.recording.x)
    tensors = datamodule.split_tensors("test")
    expected = encoder_input(x, 3, "zero")[tensors["trial"], tensors["time"]]
    torch.testing.assert_close(tensors["encoder_input"], expected)
    assert not torch.allclose(expected, encoder_input(x, 1, "zero")[tensors["trial"], tensors["time"]])


def test_grouped_teacher_datamodule_serves_counts(tmp_path: Path) -> None:
    datamodule = GroupedTeacherDataModule(neurons_per_group=6, n_steps=300, batch_size=32)
    datamodule.setup()
    assert datamodule.n_channels == 12
    assert datamodule.recording.group_sizes == [2, 2]
    assert datamodule.split_tensors("train")["latents"].shape == (135, 4)  # 150 even bins, 15 validate
