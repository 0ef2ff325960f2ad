"""Rollout measures (facrnn/evaluation/dynamics.py) against independent loops and closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from datamodules.grouped_teacher import generate_grouped_teacher
from facrnn.core.model import LowRankRNN, encoder_input
from facrnn.evaluation.dynamics import (
    dynamics_metrics,
    find_fixed_points,
    gaussian_mixture_kl,
    group_coupling,
    jacobians,
    k_step_r2,
    past_buffer,
    power_spectrum_correlation,
    rollout,
)


def random_model(n_neurons: int = 7, group_sizes: tuple[int, ...] = (2, 3), seed: int = 0) -> LowRankRNN:
    torch.manual_seed(seed)
    return LowRankRNN(n_neurons, list(group_sizes), n_samples=100).double().eval()


def teacher_model(arrays: dict[str, np.ndarray]) -> LowRankRNN:
    """A LowRankRNN holding the grouped teacher's exact weights (Gaussian: identity link)."""
    n_neurons, latent_dim = arrays["A"].shape
    model = LowRankRNN(n_neurons, [int(s) for s in arrays["group_sizes"]], n_samples=100).double().eval()
    with torch.no_grad():
        model.decoder.weight.copy_(torch.from_numpy(arrays["A"]))
        model.decoder.bias.copy_(torch.from_numpy(arrays["a"]))
        model.encoder.weight.copy_(torch.from_numpy(arrays["B"]))
        model.encoder.bias.copy_(torch.from_numpy(arrays["b"]))
    return model


def noiseless_sequence(model: LowRankRNN, n_steps: int, seed: int = 0) -> torch.Tensor:
    """``x_t = decode(z_t)`` along ``z_{t+1} = latent_step(z_t)``: ``(1, n_steps, N)``."""
    generator = torch.Generator().manual_seed(seed)
    state = torch.randn((1, model.latent_dim), generator=generator, dtype=torch.float64)
    xs = []
    with torch.no_grad():
        for _ in range(n_steps):
            xs.append(model.decode(state))
            state = model.latent_step(state)
    return torch.cat(xs)[None]


# ------------------------------------------------------------------------------ rollout


@pytest.mark.parametrize("missing_past", ["first", "zero"])
def test_past_buffer_weighted_by_the_kernel_is_the_encoder_input(missing_past: str) -> None:
    x = torch.randn(3, 9, 4, dtype=torch.float64)
    kernel = torch.tensor([math.exp(-lag) for lag in (1, 2, 3)], dtype=torch.float64)
    kernel = kernel / kernel.sum()
    buffer = past_buffer(x, 3, missing_past)
    assert buffer.shape == (3, 9, 3, 4)
    torch.testing.assert_close(torch.einsum("l,btln->btn", kernel, buffer), encoder_input(x, 3, missing_past))


def test_one_lag_rollout_is_repeated_latent_step() -> None:
    model = random_model()
    start = torch.randn(5, model.latent_dim, dtype=torch.float64)
    inputs = 0.1 * torch.randn(5, 4, 7, dtype=torch.float64)
    with torch.no_grad():
        latents = rollout(model, start, 4, external_input=inputs)
        state = start
        for step in range(4):
            torch.testing.assert_close(latents[:, step], state)
            state = model.latent_step(state, inputs[:, step])
        torch.testing.assert_close(latents[:, 4], state)


def test_multi_lag_rollout_matches_an_explicit_delay_loop() -> None:
    model = random_model()
    n_lags = 3
    psi = np.array([math.exp(-lag) for lag in range(1, n_lags + 1)])
    psi = psi / psi.sum()
    start = torch.randn(2, model.latent_dim, dtype=torch.float64)
    past = torch.tanh(torch.randn(2, n_lags, 7, dtype=torch.float64))
    with torch.no_grad():
        latents = rollout(model, start, 5, initial_past=past)
        for row in range(2):
            history = [past[row, lag] for lag in range(n_lags)]  # most recent first
            state = start[row]
            for step in range(5):
                history = [torch.tanh(model.decode(state[None])[0])] + history[:-1]
                u = sum(float(psi[lag]) * history[lag] for lag in range(n_lags))
                state = model.encode(u[None])[0]
                torch.testing.assert_close(latents[row, step + 1], state)


def test_k_step_r2_matches_a_brute_force_loop() -> None:
    model = random_model(seed=1)
    x = torch.randn(2, 30, 7, dtype=torch.float64)
    inputs = encoder_input(x, 1, "first")
    starts = torch.tensor([[trial, t] for trial in range(2) for t in range(1, 30, 2)])
    scores = k_step_r2(model, x, inputs, starts, max_steps=4, missing_past="first")
    for k in range(1, 5):
        predictions, targets = [], []
        for trial, t in starts.tolist():
            if t + k >= 30:
                continue
            with torch.no_grad():
                state = model.encode(inputs[trial, t][None])
                for _ in range(k):
                    state = model.latent_step(state)
                predictions.append(model.decode(state)[0].numpy())
            targets.append(x[trial, t + k].numpy())
        predictions, targets = np.array(predictions), np.array(targets)
        ss_res = ((targets - predictions) ** 2).sum(0)
        ss_tot = ((targets - targets.mean(0)) ** 2).sum(0)
        assert scores[k - 1] == pytest.approx(np.mean(1 - ss_res / ss_tot), rel=1e-9)


def test_the_true_network_predicts_its_own_noiseless_data_perfectly() -> None:
    arrays = generate_grouped_teacher(likelihood="gaussian", neurons_per_group=10, n_steps=10, seed=3)
    model = teacher_model(arrays)
    x = noiseless_sequence(model, 300)
    bins = torch.stack([torch.zeros(149, dtype=torch.long), torch.arange(1, 299, 2)], dim=1)
    result = dynamics_metrics(model, x, bins, [2, 2], max_steps=10, n_fixed_point_starts=8)
    assert result.metrics["rollout_r2_auc"] == pytest.approx(1.0, abs=1e-6)
    assert result.metrics["generation_psd_corr"] == pytest.approx(1.0, abs=1e-6)
    assert abs(result.metrics["generation_state_kl"]) < 1e-6  # generated = data exactly
    assert result.metrics["group_coupling"] < 1e-8  # neuron-disjoint groups
    assert result.metrics["n_fixed_points"] >= 1
    for point in result.fixed_points:
        with torch.no_grad():
            image = model.latent_step(torch.from_numpy(point.state)[None])[0].numpy()
        np.testing.assert_allclose(image, point.state, atol=1e-8)
    # the origin is the teacher's fixed point by construction, with linearisation gain x rotation
    origin = find_fixed_points(model, np.full((1, 4), 0.01), [2, 2])
    assert np.linalg.norm(origin[0].state) < 1e-8 and not origin[0].stable
    np.testing.assert_allclose(np.abs(origin[0].eigenvalues), 1.3, rtol=1e-6)
    for values in origin[0].group_eigenvalues:
        np.testing.assert_allclose(np.abs(values), 1.3, rtol=1e-6)


# ------------------------------------------------------------------------- divergences


def test_mixture_kl_of_a_cloud_with_itself_is_zero() -> None:
    cloud = np.random.default_rng(0).standard_normal((500, 3))
    assert gaussian_mixture_kl(cloud, cloud) == pytest.approx(0.0, abs=1e-12)


def test_mixture_kl_of_shifted_gaussians_approaches_the_closed_form() -> None:
    # KDE of N(0, 1) samples with width w tends to N(0, 1 + w^2); KL between two such with
    # means 0 and mu is mu^2 / (2 (1 + w^2)).
    rng = np.random.default_rng(1)
    reference, candidate = rng.standard_normal((2000, 1)), 1.0 + rng.standard_normal((2000, 1))
    width = 0.3
    expected = 1.0 / (2 * (1 + width**2))
    assert gaussian_mixture_kl(reference, candidate, width=width, n_mc=3) == pytest.approx(expected, rel=0.12)


def test_power_spectrum_correlation_tells_frequencies_apart() -> None:
    time = np.arange(512)
    rng = np.random.default_rng(2)
    slow = np.sin(2 * np.pi * time / 32)[:, None] + 0.1 * rng.standard_normal((512, 1))
    slow_again = np.sin(2 * np.pi * time / 32 + 1.0)[:, None] + 0.1 * rng.standard_normal((512, 1))
    fast = np.sin(2 * np.pi * time / 5)[:, None] + 0.1 * rng.standard_normal((512, 1))
    segments = [np.arange(512)]
    assert power_spectrum_correlation(slow, slow_again, segments, nperseg=128)[0] > 0.95
    assert power_spectrum_correlation(slow, fast, segments, nperseg=128)[0] < 0.2


# ---------------------------------------------------------------------------- coupling


def test_jacobians_match_the_closed_form() -> None:
    model = random_model()
    states = torch.randn(4, model.latent_dim, dtype=torch.float64)
    A, B, a = model.A.detach(), model.B.detach(), model.decoder.bias.detach()
    for state, jacobian in zip(states, jacobians(model, states)):
        slope = 1 - torch.tanh(A @ state + a) ** 2
        torch.testing.assert_close(jacobian, B @ torch.diag(slope) @ A)


def test_coupling_is_zero_for_neuron_disjoint_groups_and_positive_for_a_dense_network() -> None:
    arrays = generate_grouped_teacher(likelihood="gaussian", n_groups=3, group_rank=2, neurons_per_group=6, n_steps=10)
    block_model = teacher_model(arrays)
    states = torch.randn(50, 6, dtype=torch.float64)
    coupling, matrix = group_coupling(jacobians(block_model, states).detach().numpy(), [2, 2, 2])
    assert coupling < 1e-10
    np.testing.assert_allclose(matrix, np.eye(3), atol=1e-10)
    dense_model = random_model(n_neurons=18, group_sizes=(2, 2, 2), seed=4)
    coupling, matrix = group_coupling(jacobians(dense_model, states).detach().numpy(), [2, 2, 2])
    assert coupling > 0.3
    np.testing.assert_allclose(np.diag(matrix), 1.0)
    assert matrix[~np.eye(3, dtype=bool)].min() > 0.1


def test_block_diagonal_overlap_alone_is_not_decoupled() -> None:
    # B A block-diagonal but groups sharing neurons: the Jacobian B diag(slope) A is not.
    model = random_model(n_neurons=6, group_sizes=(1, 1), seed=5)
    with torch.no_grad():
        A = torch.randn(6, 2, dtype=torch.float64)
        B = torch.linalg.pinv(A)  # B A = I exactly
        model.decoder.weight.copy_(A)
        model.encoder.weight.copy_(B)
    torch.testing.assert_close(model.overlap(), torch.eye(2, dtype=torch.float64))
    states = 2 * torch.randn(50, 2, dtype=torch.float64)
    coupling, _ = group_coupling(jacobians(model, states).detach().numpy(), [1, 1])
    assert coupling > 0.01


# ------------------------------------------------------------------------- fixed points


def test_fixed_points_of_a_bistable_unit() -> None:
    # z' = 2 tanh(z): fixed points 0 (slope 2, unstable) and +-z* with z* = 2 tanh(z*)
    # (slope 2 (1 - tanh^2 z*) < 1, stable).
    model = LowRankRNN(1, [1], n_samples=10).double()
    with torch.no_grad():
        model.decoder.weight.fill_(1.0)
        model.decoder.bias.zero_()
        model.encoder.weight.fill_(2.0)
        model.encoder.bias.zero_()
    points = find_fixed_points(model, np.linspace(-3, 3, 13)[:, None], [1])
    assert len(points) == 3
    z_star = 1.9150080481545  # root of z = 2 tanh z
    assert points[0].state[0] == pytest.approx(0.0, abs=1e-9)
    assert points[0].eigenvalues[0].real == pytest.approx(2.0)
    assert not points[0].stable
    for point in points[1:]:
        assert abs(point.state[0]) == pytest.approx(z_star, abs=1e-8)
        assert point.eigenvalues[0].real == pytest.approx(2 * (1 - math.tanh(z_star) ** 2), rel=1e-6)
        assert point.stable


def test_fixed_point_eigenvalues_per_group_at_the_origin() -> None:
    # a = b = 0: the origin is a fixed point with Jacobian B A; with small weights it is the only one.
    model = random_model(n_neurons=8, group_sizes=(2, 2), seed=6)
    with torch.no_grad():
        model.decoder.bias.zero_()
        model.encoder.bias.zero_()
        model.encoder.weight.mul_(0.3)
    points = find_fixed_points(model, np.random.default_rng(0).standard_normal((10, 4)), [2, 2])
    assert len(points) == 1
    overlap = model.overlap().detach().numpy()
    np.testing.assert_allclose(np.sort_complex(points[0].eigenvalues), np.sort_complex(np.linalg.eigvals(overlap)), atol=1e-8)
    for part, values in zip((slice(0, 2), slice(2, 4)), points[0].group_eigenvalues):
        np.testing.assert_allclose(np.sort_complex(values), np.sort_complex(np.linalg.eigvals(overlap[part, part])), atol=1e-8)


# --------------------------------------------------------------------------- pipeline


def test_evaluate_run_reports_rollout_metrics_and_fixed_points(tiny_train_cfg) -> None:
    import json
    from pathlib import Path

    from facrnn.evaluation.settings import EvalSettings
    from facrnn.runs.pipeline import evaluate_run, train

    run_dir = Path(train(tiny_train_cfg("trainer.max_epochs=2", "evaluate=false"))["run_dir"])
    evaluation = evaluate_run(run_dir, EvalSettings(n_mc=1, rollout_steps=5))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in (
        "rollout_r2_auc",
        "rollout_r2_k5",
        "generation_state_kl",
        "generation_psd_corr",
        "group_coupling",
        "n_fixed_points",
    ):
        assert key in metrics and math.isfinite(metrics[key]), key
    assert "rollout_r2_k6" not in metrics
    assert metrics["rollout_r2_auc"] == pytest.approx(np.mean([metrics[f"rollout_r2_k{k}"] for k in range(1, 6)]))
    stored = json.loads((run_dir / "fixed_points.json").read_text())
    assert len(stored) == metrics["n_fixed_points"] == len(evaluation.dynamics.fixed_points)
    for figure in ("rollout_r2.png", "attractors.png", "coupling.png"):
        assert (run_dir / "figures" / figure).read_bytes()[:4] == b"\x89PNG"
    evaluate_run(run_dir, EvalSettings(n_mc=1, dynamics=False, figures=False))
    assert "rollout_r2_auc" not in json.loads((run_dir / "metrics.json").read_text())
