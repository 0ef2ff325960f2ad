"""Known-answer tests of the partial correlation (PC) estimators (DESIGN §1).

Exactness is checked against brute-force loop references built from scipy densities;
statistical behaviour (closed form, ordering, bias) with tolerances that reflect the
upward bias of the kernel density estimator.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from scipy.stats import multivariate_normal, norm

import facrnn.core.partial_correlation as pc_module
from facrnn.core.grouping import group_slices
from facrnn.core.partial_correlation import (
    group_log_densities,
    partial_correlation_eval,
    partial_correlation_minibatch,
)

GROUPINGS = [[2, 2], [3, 3], [2, 3, 1], [1, 4], [1, 1, 1, 1, 1]]


# --------------------------------------------------------------------------- references


def ref_group_log_densities(points: np.ndarray, centres: np.ndarray, width: float, group_sizes) -> np.ndarray:
    """(G, n, m) of log N(z_{g,i}; mu_{g,j}, h^2 I), one scipy call per (g, i, j)."""
    slices = group_slices(group_sizes)
    out = np.empty((len(slices), len(points), len(centres)))
    for g, part in enumerate(slices):
        cov = width**2 * np.eye(part.stop - part.start)
        for i in range(len(points)):
            for j in range(len(centres)):
                out[g, i, j] = multivariate_normal.logpdf(points[i, part], mean=centres[j, part], cov=cov)
    return out


def ref_minibatch(samples: np.ndarray, means: np.ndarray, width: float, group_sizes, n_total: int) -> float:
    """Importance-weighted estimator with plain loops: w_ii = 1, w_ij = (M-1)/(n-1)."""
    n = len(samples)
    slices = group_slices(group_sizes)
    total = 0.0
    for i in range(n):
        log_w = np.array([0.0 if j == i else math.log((n_total - 1) / (n - 1)) for j in range(n)])
        joint = np.array([norm.logpdf(samples[i], loc=means[j], scale=width).sum() for j in range(n)])
        log_q = logsumexp(joint + log_w) - math.log(n_total)
        sum_log_q_groups = 0.0
        for part in slices:
            marginal = np.array([norm.logpdf(samples[i, part], loc=means[j, part], scale=width).sum() for j in range(n)])
            sum_log_q_groups += logsumexp(marginal + log_w) - math.log(n_total)
        total += log_q - sum_log_q_groups
    return total / n


def eval_samples(means: torch.Tensor, width: float, n_mc: int, seed: int) -> torch.Tensor:
    """The evaluation estimator's posterior samples, reproduced from the seeded generator."""
    n, latent_dim = means.shape
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn((n_mc, n, latent_dim), generator=generator, dtype=means.dtype)
    return (means.unsqueeze(0) + width * noise).reshape(n_mc * n, latent_dim)


def ref_eval(means: torch.Tensor, width: float, group_sizes, n_mc: int, seed: int) -> float:
    """Unweighted KDE estimator: log q(z) = logsumexp_j log N(z; mu_j, h^2 I) - log n."""
    samples = eval_samples(means, width, n_mc, seed).numpy()
    mu = means.numpy()
    n = len(mu)
    slices = group_slices(group_sizes)
    values = []
    for z in samples:
        log_q = logsumexp([norm.logpdf(z, loc=mu[j], scale=width).sum() for j in range(n)]) - math.log(n)
        sum_log_q_groups = sum(
            logsumexp([norm.logpdf(z[part], loc=mu[j, part], scale=width).sum() for j in range(n)]) - math.log(n)
            for part in slices
        )
        values.append(log_q - sum_log_q_groups)
    return float(np.mean(values))


def ref_total_correlation(samples: np.ndarray, means: np.ndarray, width: float, n_total: int) -> float:
    """Weighted TC written per dimension: mean_i [log q(z_i) - sum_k log q(z_ik)]."""
    n, latent_dim = samples.shape
    w = (n_total - 1) / (n - 1)
    total = 0.0
    for i in range(n):
        weights = np.array([1.0 if j == i else w for j in range(n)])
        joint = sum(weights[j] * np.prod(norm.pdf(samples[i], means[j], width)) for j in range(n)) / n_total
        product = 1.0
        for k in range(latent_dim):
            product *= sum(weights[j] * norm.pdf(samples[i, k], means[j, k], width) for j in range(n)) / n_total
        total += math.log(joint) - math.log(product)
    return total / n


def random_batch(n: int, latent_dim: int, seed: int, width: float = 0.6, correlated: bool = True):
    """Means with some cross-dimension correlation, and posterior samples around them."""
    gen = torch.Generator().manual_seed(seed)
    means = torch.randn(n, latent_dim, generator=gen, dtype=torch.float64)
    if correlated:
        mixing = torch.eye(latent_dim, dtype=torch.float64) + 0.5 * torch.randn(
            latent_dim, latent_dim, generator=gen, dtype=torch.float64
        )
        means = means @ mixing
    samples = means + width * torch.randn(n, latent_dim, generator=gen, dtype=torch.float64)
    return samples, means


# ------------------------------------------------------------------- exact references


@pytest.mark.parametrize("group_sizes", GROUPINGS + [[6], [3, 2, 1]])
def test_group_log_densities_matches_scipy(group_sizes) -> None:
    latent_dim = sum(group_sizes)
    gen = torch.Generator().manual_seed(latent_dim)
    points = torch.randn(7, latent_dim, generator=gen, dtype=torch.float64)
    centres = torch.randn(5, latent_dim, generator=gen, dtype=torch.float64) * 2
    width = 0.7
    result = group_log_densities(points, centres, width, group_sizes)
    assert result.shape == (len(group_sizes), 7, 5)
    expected = ref_group_log_densities(points.numpy(), centres.numpy(), width, group_sizes)
    np.testing.assert_allclose(result.numpy(), expected, rtol=1e-7, atol=1e-7)
    # The groups' log-densities add up to the joint (isotropic) log-density.
    joint = group_log_densities(points, centres, width, [latent_dim])
    torch.testing.assert_close(result.sum(0), joint[0], rtol=1e-10, atol=1e-10)


def test_group_log_densities_memory_shape() -> None:
    # (G, n, m), never (n, m, K): K = 8, G = 2 (equal and unequal).
    points = torch.randn(5, 8, dtype=torch.float64)
    centres = torch.randn(11, 8, dtype=torch.float64)
    assert group_log_densities(points, centres, 0.5, [4, 4]).shape == (2, 5, 11)
    assert group_log_densities(points, centres, 0.5, [3, 5]).shape == (2, 5, 11)


@pytest.mark.parametrize("group_sizes", GROUPINGS)
@pytest.mark.parametrize("n, n_total", [(7, 1000), (12, 50), (9, 9)])
def test_minibatch_matches_loop_reference(group_sizes, n: int, n_total: int) -> None:
    samples, means = random_batch(n, sum(group_sizes), seed=n + sum(group_sizes))
    width = 0.6
    value = partial_correlation_minibatch(samples, means, width, group_sizes, n_total)
    expected = ref_minibatch(samples.numpy(), means.numpy(), width, group_sizes, n_total)
    assert value.item() == pytest.approx(expected, abs=1e-5, rel=1e-5)


@pytest.mark.parametrize("group_sizes", [[2, 2], [3, 3], [2, 3, 1], [1, 1, 1, 1]])
@pytest.mark.parametrize("n, n_mc, seed", [(8, 3, 0), (15, 2, 7)])
def test_eval_matches_loop_reference(group_sizes, n: int, n_mc: int, seed: int) -> None:
    _, means = random_batch(n, sum(group_sizes), seed=seed + 3)
    width = 0.5
    value = partial_correlation_eval(means, width, group_sizes, n_mc=n_mc, seed=seed)
    expected = ref_eval(means, width, group_sizes, n_mc, seed)
    assert value == pytest.approx(expected, abs=1e-5, rel=1e-5)


def test_eval_depends_on_seed_only_through_the_samples() -> None:
    _, means = random_batch(10, 5, seed=1)
    first = partial_correlation_eval(means, 0.5, [2, 3], n_mc=3, seed=4)
    assert partial_correlation_eval(means, 0.5, [2, 3], n_mc=3, seed=4) == first  # deterministic
    assert partial_correlation_eval(means, 0.5, [2, 3], n_mc=3, seed=5) != first


# ------------------------------------------------------------------------ known answers


def test_one_group_is_exactly_zero() -> None:
    samples, means = random_batch(10, 5, seed=2)
    assert partial_correlation_minibatch(samples, means, 0.5, [5], 100).item() == 0.0
    assert partial_correlation_eval(means, 0.5, [5], n_mc=3) == 0.0
    # Also the general formula: one group's marginal is the joint, term by term.
    log_density = group_log_densities(samples, means, 0.5, [5])
    assert torch.equal(log_density.sum(0), log_density[0])


@pytest.mark.parametrize("n, n_total", [(8, 200), (11, 11)])
def test_one_group_per_dimension_is_total_correlation(n: int, n_total: int) -> None:
    latent_dim = 4
    samples, means = random_batch(n, latent_dim, seed=n)
    width = 0.8
    value = partial_correlation_minibatch(samples, means, width, [1] * latent_dim, n_total)
    expected = ref_total_correlation(samples.numpy(), means.numpy(), width, n_total)
    assert value.item() == pytest.approx(expected, abs=1e-5, rel=1e-5)
    if n_total == n:  # unweighted: the evaluation estimator's formula on the same points
        assert partial_correlation_eval(means, width, [1] * latent_dim, n_mc=2, seed=1) == pytest.approx(
            ref_eval(means, width, [1] * latent_dim, 2, 1), abs=1e-5
        )


def test_correlated_groups_read_higher_than_independent() -> None:
    n, width = 300, 300 ** (-1 / 8)
    gen = torch.Generator().manual_seed(0)
    independent = torch.randn(n, 4, generator=gen, dtype=torch.float64)
    shared = torch.randn(n, 2, generator=gen, dtype=torch.float64)
    correlated = independent.clone()
    correlated[:, 2:] = 0.9 * shared + 0.45 * independent[:, 2:]
    correlated[:, :2] = 0.9 * shared + 0.45 * independent[:, :2]
    pc_independent = partial_correlation_eval(independent, width, [2, 2], n_mc=3, seed=0)
    pc_correlated = partial_correlation_eval(correlated, width, [2, 2], n_mc=3, seed=0)
    assert pc_independent > -0.05  # PC >= 0 up to estimator noise
    assert pc_correlated > pc_independent + 0.15
    # Same ordering from the training estimator (importance weights: M = 5000 >> n).
    noise = width * torch.randn(n, 4, generator=gen, dtype=torch.float64)
    mb_independent = partial_correlation_minibatch(independent + noise, independent, width, [2, 2], 5000)
    mb_correlated = partial_correlation_minibatch(correlated + noise, correlated, width, [2, 2], 5000)
    assert mb_correlated.item() > mb_independent.item() + 0.15


# ---------------------------------------------------------------------------- invariances


def _minibatch(samples, means, group_sizes, width=0.6, n_total=400) -> float:
    return partial_correlation_minibatch(samples, means, width, group_sizes, n_total).item()


def test_minibatch_invariant_to_batch_order() -> None:
    samples, means = random_batch(13, 6, seed=5)
    perm = torch.randperm(13, generator=torch.Generator().manual_seed(0))
    for group_sizes in ([2, 3, 1], [3, 3]):
        assert _minibatch(samples[perm], means[perm], group_sizes) == pytest.approx(
            _minibatch(samples, means, group_sizes), abs=1e-10
        )


def test_minibatch_invariant_to_group_order() -> None:
    samples, means = random_batch(13, 6, seed=6)
    group_sizes = [2, 3, 1]
    slices = group_slices(group_sizes)
    order = [2, 0, 1]  # groups reordered: columns [5 | 0 1 | 2 3 4], sizes [1, 2, 3]
    columns = torch.cat([torch.arange(slices[g].start, slices[g].stop) for g in order])
    reordered_sizes = [group_sizes[g] for g in order]
    baseline = _minibatch(samples, means, group_sizes)
    assert _minibatch(samples[:, columns], means[:, columns], reordered_sizes) == pytest.approx(baseline, abs=1e-10)
    # Sanity: keeping the sizes while moving the columns is a different grouping.
    assert abs(_minibatch(samples[:, columns], means[:, columns], group_sizes) - baseline) > 1e-3


def _rotate_columns(values: torch.Tensor, part: slice, rotation: torch.Tensor) -> torch.Tensor:
    rotated = values.clone()
    rotated[:, part] = values[:, part] @ rotation.T
    return rotated


def test_minibatch_invariant_to_rotation_within_a_group() -> None:
    samples, means = random_batch(12, 6, seed=7)
    group_sizes = [2, 3, 1]
    gen = torch.Generator().manual_seed(1)
    baseline = _minibatch(samples, means, group_sizes)
    for part in group_slices(group_sizes)[:2]:
        size = part.stop - part.start
        q, _ = torch.linalg.qr(torch.randn(size, size, generator=gen, dtype=torch.float64))
        rotated = _minibatch(_rotate_columns(samples, part, q), _rotate_columns(means, part, q), group_sizes)
        assert rotated == pytest.approx(baseline, abs=1e-9)
    # Sanity: a rotation that mixes dimensions of different groups changes PC.
    across = slice(1, 3)  # dimension 1 (group 0) with dimension 2 (group 1)
    angle = torch.tensor(0.7, dtype=torch.float64)
    q = torch.stack([torch.stack([angle.cos(), -angle.sin()]), torch.stack([angle.sin(), angle.cos()])])
    mixed = _minibatch(_rotate_columns(samples, across, q), _rotate_columns(means, across, q), group_sizes)
    assert abs(mixed - baseline) > 1e-3


def test_group_log_densities_invariant_to_rotation_within_a_group() -> None:
    points, centres = random_batch(9, 5, seed=8)
    part = slice(2, 5)
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64))
    before = group_log_densities(points, centres, 0.4, [2, 3])
    after = group_log_densities(_rotate_columns(points, part, q), _rotate_columns(centres, part, q), 0.4, [2, 3])
    torch.testing.assert_close(after, before, rtol=1e-9, atol=1e-9)


# -------------------------------------------------------------------------------- chunking


@pytest.mark.parametrize("group_sizes", [[2, 3, 1], [2, 2]])
def test_chunked_eval_equals_unchunked(group_sizes) -> None:
    _, means = random_batch(14, sum(group_sizes), seed=9)
    kwargs = dict(width=0.5, group_sizes=group_sizes, n_mc=4, seed=3)
    unchunked = partial_correlation_eval(means, chunk_size=10**9, **kwargs)
    for chunk_size in (1, 3, 17, None):
        assert partial_correlation_eval(means, chunk_size=chunk_size, **kwargs) == pytest.approx(unchunked, abs=1e-6)


def test_chunked_eval_never_builds_more_than_a_chunk(monkeypatch) -> None:
    shapes = []
    original = pc_module.group_log_densities

    def recording(points, centres, *args, **kwargs):
        result = original(points, centres, *args, **kwargs)
        shapes.append(tuple(result.shape))
        return result

    monkeypatch.setattr(pc_module, "group_log_densities", recording)
    _, means = random_batch(20, 4, seed=10)
    partial_correlation_eval(means, 0.5, [2, 2], n_mc=5, chunk_size=7)
    assert sum(shape[1] for shape in shapes) == 5 * 20  # every sample seen exactly once
    assert all(shape[0] == 2 and shape[1] <= 7 and shape[2] == 20 for shape in shapes)
    # The automatic chunk size respects the byte budget: (rows, n, G) float64 tensors.
    shapes.clear()
    partial_correlation_eval(means, 0.5, [2, 2], n_mc=5, max_chunk_bytes=20 * 4 * 8 * 2 * 10)
    assert max(shape[1] for shape in shapes) <= 10


# ---------------------------------------------------------------------------- gradients


def test_minibatch_gradients_flow() -> None:
    samples, means = random_batch(9, 5, seed=11)
    samples.requires_grad_(True)
    means.requires_grad_(True)
    value = partial_correlation_minibatch(samples, means, 0.6, [2, 3], 100)
    value.backward()
    for grad in (samples.grad, means.grad):
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    # Analytic gradients agree with finite differences.
    small_samples, small_means = (t.detach()[:5].clone().requires_grad_(True) for t in (samples, means))
    assert torch.autograd.gradcheck(
        lambda s, m: partial_correlation_minibatch(s, m, 0.6, [2, 3], 100), (small_samples, small_means)
    )


# ---------------------------------------------------------------------- closed form (KDE bias)


def _closed_form_pc(cov: np.ndarray, group_sizes) -> float:
    blocks = sum(np.linalg.slogdet(cov[part, part])[1] for part in group_slices(group_sizes))
    return 0.5 * (blocks - np.linalg.slogdet(cov)[1])


@pytest.mark.parametrize("correlated", [True, False], ids=["correlated", "independent"])
def test_eval_tends_to_gaussian_closed_form(correlated: bool) -> None:
    # Means ~ N(0, Sigma_mu), K = 4, G = 2; the aggregated posterior tends to N(0, Sigma_mu + h^2 I).
    # The KDE estimate is biased upward (DESIGN table), and the bias shrinks as n grows.
    sigma_mu = np.eye(4)
    if correlated:
        sigma_mu[0, 2] = sigma_mu[2, 0] = 0.6  # couples the two groups
    sigma_mu[0, 1] = sigma_mu[1, 0] = 0.3  # within-group correlation never counts
    group_sizes = [2, 2]
    bias = {}
    for n in (500, 2000):
        width = n ** (-1 / 8)
        rng = np.random.default_rng(n)
        means = torch.from_numpy(rng.multivariate_normal(np.zeros(4), sigma_mu, size=n))
        closed = _closed_form_pc(sigma_mu + width**2 * np.eye(4), group_sizes)
        estimate = partial_correlation_eval(means, width, group_sizes, n_mc=5, seed=0, chunk_size=256)
        bias[n] = estimate - closed
        if not correlated:
            assert closed == pytest.approx(0.0, abs=1e-12)
    closed_2000 = _closed_form_pc(sigma_mu + 2000 ** (-1 / 4) * np.eye(4), group_sizes)
    assert -0.02 <= bias[2000] <= 0.15, (closed_2000, bias)
    assert 0.0 < bias[2000] < bias[500], bias
    # The closed form itself, as the Gaussian mutual information between the two groups.
    cov = sigma_mu + 2000 ** (-1 / 4) * np.eye(4)
    conditional = cov[:2, :2] - cov[:2, 2:] @ np.linalg.solve(cov[2:, 2:], cov[2:, :2])
    mutual_information = 0.5 * (np.linalg.slogdet(cov[:2, :2])[1] - np.linalg.slogdet(conditional)[1])
    assert closed_2000 == pytest.approx(mutual_information, abs=1e-12)
    assert (closed_2000 > 0.1) == correlated
