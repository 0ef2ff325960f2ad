"""The forced latent rollout of multi-step training (facrnn.core.rollout) against the
evaluation's independent rollout, brute force and finite differences."""

from __future__ import annotations

import pytest
import torch

from facrnn.core.copies import build_copies
from facrnn.core.model import LowRankRNN, past_buffer
from facrnn.core.rollout import forced_rollout, forcing_pattern
from facrnn.evaluation.dynamics import rollout as evaluation_rollout


def tiny_model(seed: int = 0, history: int = 1, likelihood: str = "gaussian", link: str = "identity") -> LowRankRNN:
    torch.manual_seed(seed)
    return LowRankRNN(5, [1, 2], 100, history=history, likelihood=likelihood, link=link).double()


def test_forcing_pattern_every_interval_at_eligible_bins_only() -> None:
    eligible = torch.tensor([[True, True, False, True, True, True, True, False]])
    assert forcing_pattern(8, 2, eligible).tolist() == [[True, False, False, False, True, False, True, False]]
    assert forcing_pattern(8, None, eligible).tolist() == [[True] + [False] * 7]
    assert forcing_pattern(8, 1, eligible).tolist() == eligible.tolist()
    with pytest.raises(ValueError, match="rollout_interval=0"):
        forcing_pattern(8, 0, eligible)


@pytest.mark.parametrize("history", [1, 3])
def test_free_running_windows_equal_the_evaluation_rollout(history: int) -> None:
    model = tiny_model(history=history)
    x = torch.randn(2, 12, 5, dtype=torch.float64)
    past = past_buffer(x, history, "zero")  # (trials, T, L, N)
    encoded = model.encode(torch.randn(2, 6, 5, dtype=torch.float64))  # (n, W, K)
    forced = torch.zeros(2, 6, dtype=torch.bool)
    forced[:, 0] = True
    states = forced_rollout(model, encoded, forced, observed_past=past[:, :6] if history > 1 else None)
    reference = evaluation_rollout(model, encoded[:, 0], 5, initial_past=past[:, 0] if history > 1 else None)
    torch.testing.assert_close(states, reference, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("history", [1, 2])
def test_sparse_forcing_restarts_an_independent_rollout_at_each_forced_bin(history: int) -> None:
    model = tiny_model(1, history=history)
    window, interval = 9, 4
    x = torch.randn(3, window, 5, dtype=torch.float64)
    past = past_buffer(x, history, "first") if history > 1 else None
    encoded = torch.randn(3, window, 3, dtype=torch.float64)
    forced = forcing_pattern(window, interval, torch.ones(3, window, dtype=torch.bool))
    states = forced_rollout(model, encoded, forced, observed_past=past)
    for start in range(0, window, interval):
        steps = min(interval, window - start) - 1
        initial_past = None if past is None else past[:, start]
        segment = evaluation_rollout(model, encoded[:, start], steps, initial_past=initial_past)
        torch.testing.assert_close(states[:, start : start + steps + 1], segment, rtol=1e-12, atol=1e-12)


def test_generalized_forcing_mixes_prediction_and_encoding() -> None:
    model = tiny_model(2)
    encoded = torch.randn(4, 5, 3, dtype=torch.float64)
    first_only = torch.zeros(4, 5, dtype=torch.bool)
    first_only[:, 0] = True
    torch.testing.assert_close(forced_rollout(model, encoded, first_only, mix=1.0), encoded)
    alpha = 0.3
    states = forced_rollout(model, encoded, first_only, mix=alpha)
    # brute force, one step at a time
    state = encoded[:, 0]
    for position in range(1, 5):
        free = model.latent_step(state)
        state = (1 - alpha) * free + alpha * encoded[:, position]
        torch.testing.assert_close(states[:, position], state, rtol=1e-12, atol=1e-12)
    # a per-bin weight of 0 (a bin without an encoding) is a free step there
    weights = torch.full((4, 5), alpha, dtype=torch.float64)
    weights[:, 2] = 0.0
    mixed = forced_rollout(model, encoded, first_only, mix=weights)
    torch.testing.assert_close(mixed[:, 2], model.latent_step(mixed[:, 1]), rtol=1e-12, atol=1e-12)


def test_forced_everywhere_is_the_encoding() -> None:
    model = tiny_model(3, history=2)
    encoded = torch.randn(2, 6, 3, dtype=torch.float64)
    past = torch.randn(2, 6, 2, 5, dtype=torch.float64)
    states = forced_rollout(model, encoded, torch.ones(2, 6, dtype=torch.bool), observed_past=past)
    assert torch.equal(states, encoded)


def test_unforced_first_bin_is_refused() -> None:
    model = tiny_model()
    with pytest.raises(ValueError, match="first bin must be forced"):
        forced_rollout(model, torch.zeros(1, 3, 3, dtype=torch.float64), torch.zeros(1, 3, dtype=torch.bool))


def test_batched_copies_roll_out_like_each_copy_alone() -> None:
    copies = build_copies(lambda: LowRankRNN(5, [1, 2], 100, history=2), seed=3, replicas=2, restarts=1).double()
    encoded = torch.randn(2, 4, 7, 3, dtype=torch.float64)  # (C, n, W, K)
    past = torch.randn(2, 4, 7, 2, 5, dtype=torch.float64)
    external = torch.randn(2, 4, 7, 5, dtype=torch.float64)
    forced = forcing_pattern(7, 3, torch.ones(2, 4, 7, dtype=torch.bool))
    states = forced_rollout(copies, encoded, forced, 0.2, past, external)
    for index in range(2):
        alone = copies.to_model(index).double()
        expected = forced_rollout(alone, encoded[index], forced[index], 0.2, past[index], external[index])
        torch.testing.assert_close(states[index], expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(("likelihood", "link"), [("gaussian", "identity"), ("poisson", "softplus")])
def test_rollout_gradients_match_finite_differences(likelihood: str, link: str) -> None:
    model = tiny_model(4, history=2, likelihood=likelihood, link=link)
    encoded = torch.randn(2, 5, 3, dtype=torch.float64)
    past = torch.randn(2, 5, 2, 5, dtype=torch.float64)
    external = 0.1 * torch.randn(2, 5, 5, dtype=torch.float64)
    forced = forcing_pattern(5, 3, torch.ones(2, 5, dtype=torch.bool))
    target = torch.rand(2 * 5, 5, dtype=torch.float64) * 2
    names = [name for name, _ in model.named_parameters()]

    def loss(*parameters: torch.Tensor) -> torch.Tensor:
        state = dict(zip(names, parameters))

        class Bound(torch.nn.Module):
            def encode(self, u: torch.Tensor) -> torch.Tensor:
                return torch.nn.functional.linear(u, state["encoder.weight"], state["encoder.bias"])

            def decode(self, z: torch.Tensor, e: torch.Tensor | None = None) -> torch.Tensor:
                output = torch.nn.functional.linear(z, state["decoder.weight"], state["decoder.bias"])
                return model.observation.mean(output, e)

        bound = Bound()
        states = forced_rollout(bound, encoded, forced, 0.1, past, external)
        mean = bound.decode(states.reshape(-1, 3), external.reshape(-1, 5))
        return model.observation.nll(target, mean, state["log_noise_std"])

    parameters = tuple(parameter.detach().clone().requires_grad_(True) for parameter in model.parameters())
    assert torch.autograd.gradcheck(loss, parameters, eps=1e-6, atol=1e-6)
