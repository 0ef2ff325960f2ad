"""Post-hoc baselines (ICA, SVD), the permutation analysis and the MLP encoder/decoder variant."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from facrnn.core.model import LowRankRNN
from facrnn.evaluation.metrics import component_latent_r2
from facrnn.evaluation.permutation import count_partitions, group_partitions, permutation_analysis
from facrnn.evaluation.posthoc import ica_transform, posthoc_model, svd_transform, transform_latents
from facrnn.training.module import FacRNNModule


def random_model(n_neurons: int = 20, group_sizes: tuple[int, ...] = (6,), seed: int = 0) -> LowRankRNN:
    torch.manual_seed(seed)
    model = LowRankRNN(n_neurons, list(group_sizes), n_samples=500)
    with torch.no_grad():
        model.decoder.bias.normal_()
        model.encoder.bias.normal_()
    return model.double().eval()


def decoded(model: LowRankRNN, inputs: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.decode(model.encode(inputs))


# ------------------------------------------------------------------------- post-hoc


def test_transform_latents_keeps_everything_observable() -> None:
    model = random_model()
    inputs = torch.randn(50, 20, dtype=torch.float64)
    rng = np.random.default_rng(1)
    T, c = rng.normal(size=(6, 6)) + 3 * np.eye(6), rng.normal(size=6)
    new = transform_latents(model, T, c)
    torch.testing.assert_close(new.connectivity(), model.connectivity())
    torch.testing.assert_close(decoded(new, inputs), decoded(model, inputs))
    with torch.no_grad():
        expected = model.encode(inputs).numpy() @ T.T + c
        np.testing.assert_allclose(new.encode(inputs).numpy(), expected, atol=1e-10)
    assert model.encoder.weight is not new.encoder.weight  # the original is untouched


def test_svd_keeps_w_and_gives_its_singular_vectors() -> None:
    model = random_model()
    new = svd_transform(model)
    W = model.connectivity().detach().numpy()
    np.testing.assert_allclose(new.connectivity().detach().numpy(), W, atol=1e-10)
    u, s, vt = np.linalg.svd(W)
    B = new.B.detach().numpy()
    np.testing.assert_allclose(B @ B.T, np.eye(6), atol=1e-10)  # B = V_K^T: orthonormal rows
    np.testing.assert_allclose(np.abs(B), np.abs(vt[:6]), atol=1e-8)
    np.testing.assert_allclose(np.linalg.norm(new.A.detach().numpy(), axis=0), s[:6], rtol=1e-8)  # A = U_K S_K
    inputs = torch.randn(40, 20, dtype=torch.float64)
    torch.testing.assert_close(decoded(new, inputs), decoded(model, inputs))


def test_ica_reconstructs_the_same_means_and_unmixes_independent_sources() -> None:
    """Posterior means that are a linear mix of independent non-Gaussian sources: ICA finds them."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    n, n_neurons, K = 2000, 20, 6
    sources = np.concatenate([rng.uniform(-1.7, 1.7, (n, 3)), rng.laplace(size=(n, 3))], axis=1)
    mixing = rng.normal(size=(K, K))
    model = random_model(n_neurons, (K,))
    # Inputs whose posterior means are exactly sources @ mixing^T + b: u = pinv(B) (mu - b).
    B = model.B.detach().numpy()
    b = model.encoder.bias.detach().numpy()
    inputs = torch.from_numpy((sources @ mixing.T) @ np.linalg.pinv(B).T)
    with torch.no_grad():
        means = model.encode(inputs).numpy()
    assert component_latent_r2(sources, means).score < 0.8  # mixed

    new = ica_transform(model, inputs, seed=0)
    torch.testing.assert_close(decoded(new, inputs), decoded(model, inputs))
    np.testing.assert_allclose(new.connectivity().detach().numpy(), model.connectivity().detach().numpy(), atol=1e-8)
    with torch.no_grad():
        components = new.encode(inputs).numpy()
    np.testing.assert_allclose(components.std(axis=0), 1.0, atol=1e-6)  # unit-variance components
    assert component_latent_r2(sources, components).score > 0.99  # unmixed up to order and scale
    assert np.allclose(b, model.encoder.bias.detach().numpy())


def test_posthoc_model_sets_the_true_grouping() -> None:
    model = random_model()
    new = posthoc_model(model, "svd", [3, 3])
    assert new.group_sizes == [3, 3]
    assert new.group_connectivity().shape == (2, 20, 20)
    assert model.group_sizes == [6]
    with pytest.raises(ValueError, match="posthoc='pca'"):
        posthoc_model(model, "pca", [3, 3])
    with pytest.raises(ValueError, match="expected the training split"):
        posthoc_model(model, "ica", [3, 3])


# --------------------------------------------------------------------- permutation


def brute_force_partitions(sizes: list[int]) -> set[frozenset[frozenset[int]]]:
    """Every assignment of dimensions to ordered groups, as unordered sets of sets."""
    result = set()
    for order in itertools.permutations(range(sum(sizes))):
        groups, start = [], 0
        for size in sizes:
            groups.append(frozenset(order[start : start + size]))
            start += size
        result.add(frozenset(groups))
    return result


@pytest.mark.parametrize(
    ("sizes", "expected"), [([3, 3], 10), ([2, 4], 15), ([2, 2, 2], 15), ([1, 2, 3], 60), ([1, 1, 1], 1), ([4], 1)]
)
def test_group_partitions_are_every_split_once(sizes: list[int], expected: int) -> None:
    partitions = list(group_partitions(sizes))
    assert len(partitions) == expected == count_partitions(sizes)
    as_sets = {frozenset(frozenset(group) for group in partition) for partition in partitions}
    assert len(as_sets) == expected  # no duplicates
    assert as_sets == brute_force_partitions(sizes)
    for partition in partitions:
        assert sorted(len(group) for group in partition) == sorted(sizes)
        assert sorted(index for group in partition for index in group) == list(range(sum(sizes)))


def test_group_partitions_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="group_sizes"):
        list(group_partitions([3, 0]))


def test_permutation_analysis_finds_the_hidden_grouping() -> None:
    """Learned dims = the true groups, mixed within each group and shuffled: one split recovers them."""
    rng = np.random.default_rng(0)
    n = 800
    true = rng.normal(size=(n, 6))
    mixed = np.concatenate([true[:, :3] @ rng.normal(size=(3, 3)), true[:, 3:] @ rng.normal(size=(3, 3))], axis=1)
    order = np.array([4, 0, 2, 5, 1, 3])  # learned column j holds mixed[:, order[j]]
    learned = mixed[:, order]
    analysis = permutation_analysis(true, learned, [3, 3])
    assert len(analysis.scores) == 10
    best = analysis.partitions[int(np.argmax(analysis.scores))]
    # Learned columns holding true group 1 (mixed cols 0..2) are positions 1, 2, 4.
    assert {frozenset(group) for group in best} == {frozenset({1, 2, 4}), frozenset({0, 3, 5})}
    assert analysis.scores.max() == pytest.approx(1.0, abs=1e-9)
    assert np.sort(analysis.scores)[-2] < 0.7  # every other split mixes the groups
    summary = analysis.summary()
    assert summary["n_partitions"] == 10 and summary["perm_group_latent_r2_max"] == pytest.approx(1.0)


# ------------------------------------------------------------------------- MLP variant


def test_mlp_variant_trains_and_has_no_connectivity() -> None:
    module = FacRNNModule(n_neurons=8, n_train=64, latent_dim=4, n_groups=2, encoder="mlp", decoder="mlp")
    model = module.model
    assert not model.is_linear
    assert [type(layer).__name__ for layer in model.encoder] == ["Linear", "ReLU", "Linear"]
    assert [type(layer).__name__ for layer in model.decoder] == ["Linear", "ReLU", "Linear", "ReLU"]
    assert model.encoder[0].in_features == 8 and model.encoder[0].out_features == 32
    batch = {"x": torch.randn(32, 8), "encoder_input": torch.randn(32, 8)}
    terms = module.loss_terms(batch)
    terms["loss"].backward()
    assert torch.isfinite(terms["loss"]) and terms["partial_corr"] != 0  # the PC penalty is active
    assert all(parameter.grad is not None for parameter in model.encoder.parameters())
    with pytest.raises(ValueError, match="model.decoder=mlp"):
        model.connectivity()
    with pytest.raises(ValueError, match=r"model.alpha=1(\.0)? with an MLP encoder"):
        FacRNNModule(n_neurons=8, n_train=64, latent_dim=4, n_groups=2, alpha=1.0, encoder="mlp")
    with pytest.raises(ValueError, match="model.encoder='conv'"):
        FacRNNModule(n_neurons=8, n_train=64, latent_dim=4, n_groups=2, encoder="conv")


def test_linear_variant_keeps_its_parameter_names() -> None:
    """Checkpoints of the linear model stay loadable: same state-dict keys as before the MLP option."""
    keys = set(LowRankRNN(5, [2, 2], 100).state_dict())
    assert keys == {"encoder.weight", "encoder.bias", "decoder.weight", "decoder.bias", "log_noise_std"}
