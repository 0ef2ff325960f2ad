"""The fused partial-correlation paths agree with the plain-autograd / unchunked references.

The training estimator is a custom autograd function and the evaluation estimator streams
shifted kernels; both must give the readable formulas' values and gradients.
"""

from __future__ import annotations

import pytest
import torch

from facrnn.core.partial_correlation import (
    group_mask,
    partial_correlation_eval,
    partial_correlation_minibatch,
    partial_correlation_minibatch_autograd,
)


def _posterior_batch(n: int, latent_dim: int, width: float, dtype: torch.dtype, seed: int):
    generator = torch.Generator().manual_seed(seed)
    means = 1.5 * torch.randn(n, latent_dim, generator=generator, dtype=dtype)
    samples = means + width * torch.randn(n, latent_dim, generator=generator, dtype=dtype)
    return samples, means


@pytest.mark.parametrize("group_sizes", [[3, 3], [2, 3, 1], [1] * 6, [1, 5], [4, 4, 4, 4]])
@pytest.mark.parametrize("n, n_total", [(128, 1000), (9, 9), (33, 20)])
def test_fused_minibatch_matches_autograd_value_and_gradients(group_sizes, n: int, n_total: int) -> None:
    width = 0.5
    samples, means = _posterior_batch(n, sum(group_sizes), width, torch.float64, seed=n + len(group_sizes))
    fused_inputs = [t.clone().requires_grad_(True) for t in (samples, means)]
    reference_inputs = [t.clone().requires_grad_(True) for t in (samples, means)]
    fused = partial_correlation_minibatch(*fused_inputs, width, group_sizes, n_total)
    reference = partial_correlation_minibatch_autograd(*reference_inputs, width, group_sizes, n_total)
    (3.0 * fused).backward()
    (3.0 * reference).backward()
    assert fused.item() == pytest.approx(reference.item(), abs=1e-10)
    for fused_input, reference_input in zip(fused_inputs, reference_inputs):
        torch.testing.assert_close(fused_input.grad, reference_input.grad, rtol=1e-9, atol=1e-10)


def test_fused_minibatch_float32_close_to_float64() -> None:
    # The training dtype: float32 agrees with float64 to float32 precision.
    samples, means = _posterior_batch(128, 6, 0.5, torch.float64, seed=0)
    value64 = partial_correlation_minibatch(samples, means, 0.5, [3, 3], 1000).item()
    value32 = partial_correlation_minibatch(samples.float(), means.float(), 0.5, [3, 3], 1000).item()
    assert value32 == pytest.approx(value64, abs=1e-4)


def test_fused_minibatch_only_needed_gradients() -> None:
    samples, means = _posterior_batch(16, 4, 0.5, torch.float64, seed=1)
    means.requires_grad_(True)
    partial_correlation_minibatch(samples, means, 0.5, [2, 2], 100).backward()
    assert means.grad is not None and samples.grad is None
    with torch.no_grad():  # validation: no graph, same value
        value = partial_correlation_minibatch(samples, means, 0.5, [2, 2], 100)
    assert not value.requires_grad


def test_group_mask() -> None:
    mask = group_mask([2, 1, 3], torch.float64)
    assert mask.shape == (3, 6) and mask.dtype == torch.float64
    assert mask.sum(0).tolist() == [1.0] * 6
    assert mask.sum(1).tolist() == [2.0, 1.0, 3.0]


@pytest.mark.parametrize("group_sizes", [[2, 2], [1, 1, 1, 1], [3, 1]])
def test_eval_chunked_equals_unchunked(group_sizes) -> None:
    generator = torch.Generator().manual_seed(4)
    means = torch.randn(150, sum(group_sizes), generator=generator, dtype=torch.float64)
    kwargs = dict(width=0.5, group_sizes=group_sizes, n_mc=3, seed=2)
    unchunked = partial_correlation_eval(means, chunk_size=10**9, **kwargs)
    for chunk_size in (1, 64, None):
        assert partial_correlation_eval(means, chunk_size=chunk_size, **kwargs) == pytest.approx(unchunked, abs=1e-6)


def test_eval_max_samples_subsets_the_samples() -> None:
    generator = torch.Generator().manual_seed(5)
    means = torch.randn(200, 4, generator=generator, dtype=torch.float64)
    full = partial_correlation_eval(means, 0.5, [2, 2], n_mc=4, seed=1)
    # At least all samples: the full estimate exactly.
    assert partial_correlation_eval(means, 0.5, [2, 2], n_mc=4, seed=1, max_samples=800) == full
    # A subset: deterministic given the seed, and close to the full estimate.
    subset = partial_correlation_eval(means, 0.5, [2, 2], n_mc=4, seed=1, max_samples=400)
    assert partial_correlation_eval(means, 0.5, [2, 2], n_mc=4, seed=1, max_samples=400) == subset
    assert subset != full and subset == pytest.approx(full, abs=0.05)
