"""Known-answer tests of the low-rank RNN VAE (DESIGN §1) and the grouping helpers."""

from __future__ import annotations

import math

import pytest
import torch

from facrnn.core.grouping import block_mask, group_slices, padded_group_index, resolve_group_sizes
from facrnn.core.model import LowRankRNN, encoder_input, history_kernel, posterior_width

# ------------------------------------------------------------------------ history kernel


@pytest.mark.parametrize("n_lags", [1, 2, 3, 7])
def test_history_kernel_normalised_decreasing_exponential(n_lags: int) -> None:
    kernel = history_kernel(n_lags).double()
    assert kernel.shape == (n_lags,)
    assert kernel.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert torch.all(kernel[1:] < kernel[:-1])  # most recent lag (l = 1) weighted most
    # psi_l ∝ exp(-l): consecutive ratios are e^{-1}, and the exact values.
    torch.testing.assert_close(kernel[1:] / kernel[:-1], torch.full((n_lags - 1,), math.exp(-1.0), dtype=torch.float64))
    exact = torch.tensor([math.exp(-lag) for lag in range(1, n_lags + 1)], dtype=torch.float64)
    torch.testing.assert_close(kernel, exact / exact.sum(), rtol=1e-6, atol=1e-7)


def test_history_kernel_rejects_no_lags() -> None:
    with pytest.raises(ValueError, match="model.history"):
        history_kernel(0)


# ------------------------------------------------------------------------- encoder input
#
# Convention under test: bin t uses the *past* only, u_t = sum_{l=1..L} psi_l tanh(x_{t-l})
# (x_{t-1} weighted most). Before the start of a trial (t - l < 0) the missing x_{t-l} is
# x_0, the trial's first bin, when missing_past="first" (trial data), and 0 when
# missing_past="zero" (one long recording). Trials never leak into each other.


def encoder_input_loop(x: torch.Tensor, n_lags: int, missing_past: str) -> torch.Tensor:
    psi = [math.exp(-lag) for lag in range(1, n_lags + 1)]
    psi = [weight / sum(psi) for weight in psi]
    n_trials, n_bins, n_channels = x.shape
    out = torch.zeros_like(x)
    for trial in range(n_trials):
        for t in range(n_bins):
            for lag in range(1, n_lags + 1):
                if t - lag >= 0:
                    past = x[trial, t - lag]
                elif missing_past == "first":
                    past = x[trial, 0]
                else:
                    past = torch.zeros(n_channels, dtype=x.dtype)
                out[trial, t] += psi[lag - 1] * torch.tanh(past)
    return out


@pytest.mark.parametrize("missing_past", ["first", "zero"])
@pytest.mark.parametrize("n_lags", [1, 3])
def test_encoder_input_matches_loop(n_lags: int, missing_past: str) -> None:
    x = 2.0 * torch.randn(3, 6, 4, generator=torch.Generator().manual_seed(n_lags), dtype=torch.float64)
    result = encoder_input(x, n_lags=n_lags, missing_past=missing_past)
    assert result.shape == x.shape
    torch.testing.assert_close(result, encoder_input_loop(x, n_lags, missing_past), rtol=1e-6, atol=1e-6)


def test_encoder_input_one_lag_by_hand() -> None:
    x = torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    first = encoder_input(x, 1, "first")
    zero = encoder_input(x, 1, "zero")
    torch.testing.assert_close(first[:, 1:], torch.tanh(x[:, :-1]))  # u_t = tanh(x_{t-1})
    torch.testing.assert_close(zero[:, 1:], torch.tanh(x[:, :-1]))
    torch.testing.assert_close(first[:, 0], torch.tanh(x[:, 0]))  # missing past = first bin
    assert torch.equal(zero[:, 0], torch.zeros_like(x[:, 0]))  # missing past = 0


def test_encoder_input_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="missing_past"):
        encoder_input(torch.zeros(1, 3, 2), 1, "last")
    with pytest.raises(ValueError, match="trials, time, channels"):
        encoder_input(torch.zeros(3, 2), 1)


# ------------------------------------------------------------------------- posterior width


@pytest.mark.parametrize("n_samples, latent_dim", [(1000, 6), (512, 4), (2352, 2), (1, 3)])
def test_posterior_width_scotts_rule(n_samples: int, latent_dim: int) -> None:
    expected = n_samples ** (-1.0 / (latent_dim + 4))
    assert posterior_width(n_samples, latent_dim) == pytest.approx(expected, rel=1e-12)
    assert LowRankRNN(5, [latent_dim], n_samples).width == pytest.approx(expected, rel=1e-12)


def test_posterior_width_known_value_and_error() -> None:
    assert posterior_width(10**6, 2) == pytest.approx(0.1, rel=1e-12)  # 10^6^(-1/6)
    with pytest.raises(ValueError, match=r"^posterior_width: n_samples=0, expected at least 1$"):
        posterior_width(0, 4)


# ------------------------------------------------------------------------------ LowRankRNN

GROUPS = [2, 3, 1]  # unequal on purpose


def make_model(link: str = "identity", n_neurons: int = 7, seed: int = 0) -> LowRankRNN:
    torch.manual_seed(seed)
    model = LowRankRNN(n_neurons, GROUPS, n_samples=500, link=link).double()
    with torch.no_grad():  # well-spread parameters, including the biases
        for parameter in model.parameters():
            parameter.copy_(torch.randn_like(parameter))
    return model


def test_connectivity_groups_and_overlap() -> None:
    model = make_model()
    A, B = model.A, model.B
    assert A.shape == (7, 6) and B.shape == (6, 7)
    torch.testing.assert_close(model.connectivity(), A @ B)
    sub = model.group_connectivity()
    assert sub.shape == (3, 7, 7)
    torch.testing.assert_close(sub.sum(0), model.connectivity())
    # W_g = A[:, g] B[g, :] with groups {0, 1}, {2, 3, 4}, {5}.
    torch.testing.assert_close(sub[0], A[:, 0:2] @ B[0:2, :])
    torch.testing.assert_close(sub[1], A[:, 2:5] @ B[2:5, :])
    torch.testing.assert_close(sub[2], torch.outer(A[:, 5], B[5, :]))
    assert torch.linalg.matrix_rank(sub[1]).item() == 3
    overlap = model.overlap()
    assert overlap.shape == (6, 6)
    torch.testing.assert_close(overlap, B @ A)


def test_encode_and_sample() -> None:
    model = make_model()
    u = torch.randn(4, 7, dtype=torch.float64)
    torch.testing.assert_close(model.encode(u), u @ model.B.T + model.encoder.bias)
    means = model.encode(u)
    samples = model.sample(means, generator=torch.Generator().manual_seed(3))
    noise = torch.randn(means.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    torch.testing.assert_close(samples, means + model.width * noise)


def test_latent_step_identity_link() -> None:
    model = make_model("identity")
    z = torch.randn(5, 6, dtype=torch.float64)
    a, b = model.decoder.bias, model.encoder.bias
    expected = torch.tanh(z @ model.A.T + a) @ model.B.T + b  # z' = B tanh(A z + a) + b
    torch.testing.assert_close(model.latent_step(z), expected)


def test_latent_step_relu_link_with_input() -> None:
    model = make_model("relu")
    z = torch.randn(5, 6, dtype=torch.float64)
    e = torch.randn(5, 7, dtype=torch.float64)
    a, b = model.decoder.bias, model.encoder.bias
    expected = torch.tanh(torch.relu(z @ model.A.T + a) + e) @ model.B.T + b  # B tanh(relu(Az+a)+e)+b
    torch.testing.assert_close(model.latent_step(z, e), expected)
    assert not torch.allclose(model.latent_step(z, e), model.latent_step(z))


@pytest.mark.parametrize("link", ["identity", "relu"])
def test_decode_adds_external_input(link: str) -> None:
    model = make_model(link)
    z = torch.randn(5, 6, dtype=torch.float64)
    e = torch.randn(5, 7, dtype=torch.float64)
    pre = z @ model.A.T + model.decoder.bias
    base = torch.relu(pre) if link == "relu" else pre
    torch.testing.assert_close(model.decode(z), base)
    torch.testing.assert_close(model.decode(z, e), base + e)  # e is added after the link
    if link == "relu":
        assert (model.decode(z) >= 0).all() and (pre < 0).any()


def test_bad_link_raises() -> None:
    # a checkpoint of a link this version lacks (the config schema rejects it before any model)
    with pytest.raises(ValueError, match=r"model.link='sigmoid': expected one of \('identity', 'relu', 'softplus'\)"):
        LowRankRNN(5, [2, 2], 100, link="sigmoid")  # (softplus is a valid link: Poisson rates)


def test_model_holds_its_observation_model_and_history() -> None:
    model = LowRankRNN(5, [2, 2], 100)
    assert (model.observation.name, model.link, model.history) == ("gaussian", "identity", 1)
    model = LowRankRNN(5, [2, 2], 100, link="softplus", likelihood="poisson", history=3)
    assert (model.observation.name, model.link, model.history) == ("poisson", "softplus", 3)
    assert set(model.state_dict()) == set(LowRankRNN(5, [2, 2], 100).state_dict())  # no new weights


# -------------------------------------------------------------------------------- grouping


def test_resolve_group_sizes_shorthand_and_explicit() -> None:
    assert resolve_group_sizes(latent_dim=6, n_groups=2) == [3, 3]
    assert resolve_group_sizes(latent_dim=4, n_groups=4) == [1, 1, 1, 1]
    assert resolve_group_sizes(latent_dim=5, n_groups=1) == [5]
    assert resolve_group_sizes(group_sizes=[2, 3, 1]) == [2, 3, 1]
    # Explicit sizes win over the shorthand (n_groups is ignored when group_sizes is given).
    assert resolve_group_sizes(latent_dim=6, n_groups=2, group_sizes=[2, 3, 1]) == [2, 3, 1]


@pytest.mark.parametrize(
    "kwargs, key",
    [
        (dict(latent_dim=6, group_sizes=[2, 2]), "model.group_sizes"),  # sums to 4, not 6
        (dict(latent_dim=6, group_sizes=[3, 0, 3]), "model.group_sizes"),
        (dict(group_sizes=[]), "model.group_sizes"),
        (dict(latent_dim=7, n_groups=2), "model.n_groups"),  # does not divide
        (dict(latent_dim=0, n_groups=1), "model.latent_dim"),
        (dict(latent_dim=6), "model.n_groups"),  # nothing to split with
    ],
)
def test_resolve_group_sizes_errors_name_the_key(kwargs, key: str) -> None:
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        resolve_group_sizes(**kwargs)


def test_resolve_group_sizes_mismatch_names_both_keys() -> None:
    with pytest.raises(ValueError) as info:
        resolve_group_sizes(latent_dim=6, group_sizes=[2, 2])
    assert "model.group_sizes" in str(info.value) and "model.latent_dim" in str(info.value)


def test_group_slices_block_mask_and_padded_index() -> None:
    assert group_slices([2, 3, 1]) == [slice(0, 2), slice(2, 5), slice(5, 6)]
    expected_mask = torch.tensor(
        [
            [1, 1, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [0, 0, 1, 1, 1, 0],
            [0, 0, 1, 1, 1, 0],
            [0, 0, 1, 1, 1, 0],
            [0, 0, 0, 0, 0, 1],
        ],
        dtype=torch.float32,
    )
    assert torch.equal(block_mask([2, 3, 1]), expected_mask)
    assert torch.equal(block_mask([4]), torch.ones(4, 4))
    assert torch.equal(block_mask([1, 1, 1]), torch.eye(3))
    # (G, H_max) into K + 1 columns; padding points at column K = 6.
    index = padded_group_index([2, 3, 1])
    assert index.dtype == torch.long
    assert torch.equal(index, torch.tensor([[0, 1, 6], [2, 3, 4], [5, 6, 6]]))
    # Gathering with it gives each group's columns, zero padded.
    z = torch.arange(1.0, 7.0).unsqueeze(0)
    gathered = torch.cat([z, torch.zeros(1, 1)], dim=1)[:, index]
    assert torch.equal(gathered[0], torch.tensor([[1.0, 2.0, 0.0], [3.0, 4.0, 5.0], [6.0, 0.0, 0.0]]))
    assert torch.equal(padded_group_index([3, 3]), torch.tensor([[0, 1, 2], [3, 4, 5]]))


def test_group_rank_shorthand() -> None:
    from facrnn.core.grouping import resolve_group_sizes

    assert resolve_group_sizes(None, 4, None, 2) == [2, 2, 2, 2]
    assert resolve_group_sizes(8, 4, None, 2) == [2, 2, 2, 2]
    with pytest.raises(ValueError, match="model.latent_dim=6"):
        resolve_group_sizes(6, 4, None, 2)
    with pytest.raises(ValueError, match="model.n_groups=0"):
        resolve_group_sizes(None, 0, None, 2)
