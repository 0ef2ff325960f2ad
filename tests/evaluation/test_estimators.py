"""The evaluation estimators at scale (docs/evaluation.md): exact below a size threshold (the
computation as it was, bit for bit), subsampled above it (linear in n), always with a standard
error.

- Below ``exact_max_points``: ``partial_corr``, ``total_corr`` and the mixture KLs equal frozen
  copies of the computations before subsampling existed.
- Above: the subsampled value agrees with the exact one within 3 standard errors on
  n = 2,000-5,000; the standard error is positive and shrinks as 1/sqrt(query samples); a seeded
  subsample is reproducible; tiles stay within their memory budget.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from facrnn.core.grouping import padded_group_index
from facrnn.core.model import LowRankRNN
from facrnn.core.partial_correlation import (
    EstimatorBudget,
    _tile_shape,
    group_log_densities,
    kernel_log_sums,
    own_kernel_sums,
    partial_correlation_estimate,
    partial_correlation_eval,
)
from facrnn.errors import ConfigError
from facrnn.evaluation.dynamics import gaussian_mixture_kl, gaussian_mixture_kl_estimate
from facrnn.evaluation.settings import EvalSettings

#: always exact / always subsampled
EXACT = EstimatorBudget(exact_max_points=10**9)
SUBSAMPLED = EstimatorBudget(exact_max_points=0, query_samples=3000)


# ------------------------------------------------------------------------------ frozen references


def old_partial_correlation_eval(means: torch.Tensor, width: float, group_sizes, n_mc: int = 10, seed: int = 0) -> float:
    """``partial_correlation_eval`` as it was before the subsampled estimators (frozen copy)."""
    if len(group_sizes) == 1:
        return 0.0
    means = means.detach()
    n, latent_dim = means.shape
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    noise = torch.randn((n_mc, n, latent_dim), generator=generator, dtype=means.dtype).to(means.device)
    samples = (means.unsqueeze(0) + width * noise).reshape(n_mc * n, latent_dim)
    del noise
    bytes_per_row = n * (len(group_sizes) + 2) * means.element_size() * 2
    max_chunk_bytes = min(512 * 2**20, max(8 * 2**20, 64 * bytes_per_row))
    chunk_size = max(1, max_chunk_bytes // bytes_per_row)
    group_index = padded_group_index(group_sizes)
    total = torch.zeros((), dtype=torch.float64, device=means.device)
    with torch.no_grad():
        for start in range(0, samples.shape[0], chunk_size):
            log_density = group_log_densities(samples[start : start + chunk_size], means, width, group_sizes, group_index)
            shift = log_density.amax(-1, keepdim=True)
            kernel = log_density.sub_(shift).exp_()
            log_joint_mass = kernel.prod(0).sum(-1).log_()
            log_marginal_mass = kernel.sum(-1).log_().sum(0)
            total += (log_joint_mass - log_marginal_mass).sum().double()
    offset = (len(group_sizes) - 1) * math.log(n)
    return float(total / samples.shape[0]) + offset


def old_gaussian_mixture_kl(reference, candidate, width=None, n_mc: int = 4, seed: int = 0, chunk: int = 2048) -> float:
    """``gaussian_mixture_kl`` as it was before the subsampled estimators (frozen copy)."""
    reference = np.asarray(reference, dtype=np.float64)
    candidate = np.asarray(candidate, dtype=np.float64)
    centre, scale = reference.mean(0), reference.std(0)
    scale = np.where(scale > 0, scale, 1.0)
    reference = (reference - centre) / scale
    candidate = (candidate - centre) / scale
    if not np.all(np.isfinite(candidate)):
        return float("inf")
    dim = reference.shape[1]
    width = float(reference.shape[0] ** (-1.0 / (dim + 4))) if width is None else float(width)
    rng = np.random.default_rng(seed)
    samples = np.repeat(reference, n_mc, axis=0) + width * rng.standard_normal((reference.shape[0] * n_mc, dim))
    ref_t, cand_t = torch.from_numpy(reference), torch.from_numpy(candidate)

    def log_density(points: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
        squared = torch.cdist(points, centres).pow(2)
        log_kernel = -0.5 * squared / width**2 - dim * np.log(width) - 0.5 * dim * np.log(2 * np.pi)
        return torch.logsumexp(log_kernel, dim=1) - np.log(centres.shape[0])

    total = 0.0
    for block in torch.from_numpy(samples).split(chunk):
        total += float((log_density(block, ref_t) - log_density(block, cand_t)).sum())
    return total / samples.shape[0]


def correlated_means(n: int, latent_dim: int, seed: int) -> torch.Tensor:
    """Posterior means whose groups depend on each other (PC > 0)."""
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.eye(latent_dim, dtype=torch.float64) + 0.4 * torch.randn(
        latent_dim, latent_dim, generator=generator, dtype=torch.float64
    )
    return torch.randn(n, latent_dim, generator=generator, dtype=torch.float64) @ mixing


def two_clouds(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 3)), 1.2 * rng.standard_normal((n, 3)) + 0.3


# ------------------------------------------------------------------- below the threshold: unchanged


@pytest.mark.parametrize("group_sizes", [[3, 3], [1] * 6, [2, 3, 1], [6]])
@pytest.mark.parametrize("n", [50, 1000])
def test_small_n_partial_correlation_equals_the_old_computation(n: int, group_sizes) -> None:
    means = correlated_means(n, sum(group_sizes), seed=n)
    width = n ** (-1 / 10)
    estimate = partial_correlation_estimate(means, width, group_sizes, n_mc=3, seed=7)  # default budget: exact
    assert estimate.value == old_partial_correlation_eval(means, width, group_sizes, n_mc=3, seed=7)  # bit for bit
    assert partial_correlation_eval(means, width, group_sizes, n_mc=3, seed=7) == estimate.value
    assert estimate.queries == (3 * n if len(group_sizes) > 1 else 0) and estimate.centres == n


@pytest.mark.parametrize("n", [60, 1000])
def test_small_n_mixture_kl_equals_the_old_computation(n: int) -> None:
    reference, candidate = two_clouds(n, seed=n)
    estimate = gaussian_mixture_kl_estimate(reference, candidate, seed=3)
    assert estimate.value == old_gaussian_mixture_kl(reference, candidate, seed=3)
    assert gaussian_mixture_kl(reference, candidate, seed=3) == estimate.value
    assert estimate.se > 0 and estimate.queries == 4 * n


def test_evaluate_model_on_1000_bins_reports_the_old_values_with_standard_errors() -> None:
    from datamodules.recording import Recording
    from facrnn.core.model import encoder_input
    from facrnn.evaluation.scoring import evaluate_model

    torch.manual_seed(0)
    n_bins, n_neurons = 1000, 8
    model = LowRankRNN(n_neurons=n_neurons, group_sizes=[2, 2], n_samples=n_bins)
    x = torch.randn(1, 2 * n_bins, n_neurons)
    test = torch.arange(1, 2 * n_bins, 2)
    tensors = {"x": x[0, test], "encoder_input": encoder_input(x, 1, "zero")[0, test]}
    tensors.update(trial=torch.zeros(n_bins, dtype=torch.long), time=test)
    recording = Recording(x=x.numpy(), single_sequence=True)
    metrics = evaluate_model(model, tensors, recording, EvalSettings(figures=False)).metrics
    with torch.no_grad():
        means = model.encode(tensors["encoder_input"]).double()
    assert metrics["partial_corr"] == old_partial_correlation_eval(means, model.width, [2, 2], 10, 0)
    assert metrics["total_corr"] == old_partial_correlation_eval(means, model.width, [1] * 4, 10, 0)
    for name in ("partial_corr", "total_corr", "generation_state_kl", "generation_latent_kl"):
        assert math.isfinite(metrics[f"{name}_se"]) and metrics[f"{name}_se"] > 0, name
    keys = list(metrics)
    assert keys.index("partial_corr_se") == keys.index("partial_corr") + 1  # the SE beside its value


# ------------------------------------------------------------------ above the threshold: subsampled


@pytest.mark.parametrize("group_sizes", [[2, 2], [1, 1, 1, 1]], ids=["pc", "tc"])
@pytest.mark.parametrize("n", [2000, 3000])
def test_subsampled_partial_correlation_agrees_with_the_exact_one(n: int, group_sizes) -> None:
    means = correlated_means(n, 4, seed=n)
    width = n ** (-1 / 8)
    exact = partial_correlation_estimate(means, width, group_sizes, n_mc=2, seed=0, budget=EXACT)
    for budget in (SUBSAMPLED, EstimatorBudget(exact_max_points=0, query_samples=3000, max_centres=n // 2)):
        subsampled = partial_correlation_estimate(means, width, group_sizes, n_mc=2, seed=1, budget=budget)
        assert subsampled.queries == 3000 and subsampled.centres == (budget.max_centres or n)
        # independent Monte Carlo errors: the difference has the two SEs in quadrature
        assert abs(subsampled.value - exact.value) <= 3 * math.hypot(subsampled.se, exact.se), (budget, subsampled, exact)
        assert exact.value > 0.05  # a dependence to measure, not a difference of zeros


@pytest.mark.slow
@pytest.mark.parametrize("group_sizes", [[2, 2], [1, 1, 1, 1]], ids=["pc", "tc"])
def test_subsampled_partial_correlation_agrees_at_5000_points_with_n_mc_10(group_sizes) -> None:
    means = correlated_means(5000, 4, seed=5)
    width = 5000 ** (-1 / 8)
    exact = partial_correlation_estimate(means, width, group_sizes, n_mc=10, seed=0, budget=EXACT)
    subsampled = partial_correlation_estimate(means, width, group_sizes, seed=1, budget=EstimatorBudget(exact_max_points=4000))
    assert subsampled.queries == 10_000 and exact.queries == 50_000
    assert abs(subsampled.value - exact.value) <= 3 * math.hypot(subsampled.se, exact.se)


@pytest.mark.parametrize("max_centres", [None, 1000])
def test_subsampled_mixture_kl_agrees_with_the_exact_one(max_centres: int | None) -> None:
    reference, candidate = two_clouds(2000, seed=0)
    exact = gaussian_mixture_kl_estimate(reference, candidate, seed=0, budget=EXACT)
    budget = EstimatorBudget(exact_max_points=0, query_samples=3000, max_centres=max_centres)
    subsampled = gaussian_mixture_kl_estimate(reference, candidate, seed=1, budget=budget)
    assert exact.value > 0.1
    assert abs(subsampled.value - exact.value) <= 3 * math.hypot(subsampled.se, exact.se)


def test_standard_error_is_positive_and_shrinks_with_more_query_samples() -> None:
    means = correlated_means(2500, 4, seed=2)
    width = 2500 ** (-1 / 8)
    errors = {}
    for queries in (1000, 4000):
        budget = EstimatorBudget(exact_max_points=0, query_samples=queries)
        errors[queries] = partial_correlation_estimate(means, width, [2, 2], seed=0, budget=budget).se
    assert errors[1000] > errors[4000] > 0
    assert 1.5 < errors[1000] / errors[4000] < 2.7  # ~ sqrt(4)
    reference, candidate = two_clouds(2500, seed=1)
    kl_errors = [
        gaussian_mixture_kl_estimate(reference, candidate, budget=EstimatorBudget(exact_max_points=0, query_samples=q)).se
        for q in (1000, 4000)
    ]
    assert kl_errors[0] > kl_errors[1] > 0


def test_seeded_subsample_is_reproducible() -> None:
    means = correlated_means(2500, 4, seed=3)
    budget = EstimatorBudget(exact_max_points=0, query_samples=500, max_centres=800)
    first = partial_correlation_estimate(means, 0.4, [2, 2], seed=11, budget=budget)
    assert partial_correlation_estimate(means, 0.4, [2, 2], seed=11, budget=budget) == first
    assert partial_correlation_estimate(means, 0.4, [2, 2], seed=12, budget=budget).value != first.value
    reference, candidate = two_clouds(2500, seed=3)
    kl = gaussian_mixture_kl_estimate(reference, candidate, seed=4, budget=budget)
    assert gaussian_mixture_kl_estimate(reference, candidate, seed=4, budget=budget) == kl


def test_one_group_is_exactly_zero_at_any_size() -> None:
    means = correlated_means(5000, 3, seed=4)
    assert partial_correlation_estimate(means, 0.5, [3], budget=SUBSAMPLED)[:2] == (0.0, 0.0)


def test_every_point_a_centre_when_max_centres_reaches_n() -> None:
    means = correlated_means(600, 4, seed=6)
    everything = EstimatorBudget(exact_max_points=0, query_samples=400)
    capped = EstimatorBudget(exact_max_points=0, query_samples=400, max_centres=600)
    assert partial_correlation_estimate(means, 0.5, [2, 2], seed=0, budget=capped) == partial_correlation_estimate(
        means, 0.5, [2, 2], seed=0, budget=everything
    )


# --------------------------------------------------------------------------------- tiled kernels


def test_tiled_kernel_sums_match_brute_force_and_do_not_depend_on_the_tile() -> None:
    means = correlated_means(300, 5, seed=7)
    width, sizes = 0.45, [2, 3]
    generator = torch.Generator().manual_seed(0)
    own = torch.randint(300, (70,), generator=generator)
    queries = means[own] + width * torch.randn(70, 5, generator=generator, dtype=torch.float64)
    log_density = group_log_densities(queries, means, width, sizes)  # (G, m, n)
    own_log = log_density[:, torch.arange(70), own]  # (G, m)
    expected_marginals = (log_density - own_log[..., None]).exp().sum(-1)
    expected_joint = (log_density.sum(0) - own_log.sum(0)[:, None]).exp().sum(-1)
    for tile_bytes in (1, 5000, 2**24):
        sums = own_kernel_sums(queries, own, means, width, sizes, tile_bytes=tile_bytes, squares=True)
        torch.testing.assert_close(sums.marginals, expected_marginals, rtol=1e-10, atol=0)
        torch.testing.assert_close(sums.joint, expected_joint, rtol=1e-10, atol=0)
        expected_squares = (2 * (log_density - own_log[..., None])).exp().sum(-1)
        torch.testing.assert_close(sums.marginal_squares, expected_squares, rtol=1e-10, atol=0)
    centres = means[:123]
    expected = torch.logsumexp(-0.5 * torch.cdist(queries, centres).pow(2) / width**2, dim=-1)
    for tile_bytes in (1, 3000, 2**24):
        torch.testing.assert_close(kernel_log_sums(queries, centres, width, tile_bytes), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("rows", "centres", "planes"), [(10_000, 100_000, 3), (10_000, 1_000_000, 7), (5, 10, 2)])
def test_tiles_stay_within_their_memory_budget(rows: int, centres: int, planes: int) -> None:
    budget = EstimatorBudget().tile_bytes
    tile_rows, tile_columns = _tile_shape(rows, centres, planes, budget, 8)
    assert 1 <= tile_rows <= rows and 1 <= tile_columns <= centres
    assert planes * tile_rows * tile_columns * 8 <= max(budget, planes * tile_columns * 8)
    assert budget <= 64 * 2**20


# ------------------------------------------------------------------------------------- settings


ESTIMATOR_ERRORS = [
    ({"exact_max_points": -1}, "exact_max_points=-1: expected the most points estimated exactly, 0 to always subsample"),
    ({"query_samples": 1}, "query_samples=1: expected the query samples of a subsampled estimate (an integer of at least 2)"),
    ({"query_samples": 10.5}, "query_samples=10.5: expected the query samples of a subsampled estimate"),
    ({"max_centres": 0}, "max_centres=0: expected null (every point a kernel centre) or the kernel centres per query"),
    ({"chunk_mb": 0}, "chunk_mb=0: expected the memory of one estimator tile in MB (a positive number)"),
    ({"chunk_mb": "8"}, "chunk_mb='8': expected the memory of one estimator tile in MB (a positive number)"),
    ({"kl_n_mc": 0}, "kl_n_mc=0: expected the samples per reference point of the mixture KLs (a positive integer)"),
]


@pytest.mark.parametrize(("changes", "message"), ESTIMATOR_ERRORS, ids=[str(case[0]) for case in ESTIMATOR_ERRORS])
def test_bad_estimator_settings_are_one_line_errors_naming_the_key(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        EvalSettings(**changes)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_estimator_settings_from_the_config_and_their_budget() -> None:
    cfg = OmegaConf.create({"exact_max_points": 100, "query_samples": 500, "max_centres": 2000, "chunk_mb": 2, "kl_n_mc": 2})
    settings = EvalSettings.from_config(cfg)
    assert (settings.exact_max_points, settings.query_samples, settings.max_centres, settings.kl_n_mc) == (100, 500, 2000, 2)
    assert settings.budget == EstimatorBudget(100, 500, 2000, 2 * 2**20)
    assert EvalSettings.from_config(OmegaConf.create({"max_centres": None})).max_centres is None
    assert EvalSettings().budget == EstimatorBudget()


def test_every_setting_is_a_documented_key_of_conf_evaluate_yaml() -> None:
    from dataclasses import fields
    from pathlib import Path

    conf_file = Path(__file__).resolve().parents[2] / "conf" / "evaluate.yaml"
    conf = OmegaConf.load(conf_file)
    text = conf_file.read_text()
    for field in fields(EvalSettings):
        key = "eval_seed" if field.name == "seed" else field.name
        assert key in conf, key
        if field.name not in ("split", "checkpoint"):
            assert conf[key] == field.default or field.name == "seed", (key, conf[key], field.default)
    assert "docs/evaluation.md" in text
