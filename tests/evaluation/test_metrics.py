"""Tests of facrnn.evaluation.metrics (DESIGN §3): reconstruction, latent alignment, connectivity."""

from __future__ import annotations

import numpy as np
import pytest
import sklearn.metrics
import torch
from scipy import stats
from scipy.stats import ortho_group

from facrnn.core.grouping import group_slices
from facrnn.evaluation.metrics import (
    GroupAlignment,
    component_latent_r2,
    cond_loglik,
    connectivity_metrics,
    evaluation_grouping,
    group_latent_r2,
    r2_score,
    recon_r2,
    sub_connectivity_metrics,
)

N_SAMPLES = 400


def independent_latents(rng: np.random.Generator, dim: int, n: int = N_SAMPLES) -> np.ndarray:
    """Independent, non-Gaussian, non-centred latents (so groups cannot predict each other)."""
    return rng.standard_normal((n, dim)) ** 3 + rng.uniform(-1, 1, size=dim)


def random_invertible(rng: np.random.Generator, dim: int) -> np.ndarray:
    """A well-conditioned random invertible matrix."""
    return rng.standard_normal((dim, dim)) + 2.0 * np.eye(dim)


def blockwise_affine(rng: np.random.Generator, latents: np.ndarray, group_sizes: list[int]) -> np.ndarray:
    """Apply an independent invertible affine map inside every group."""
    out = np.empty_like(latents)
    for part in group_slices(group_sizes):
        size = part.stop - part.start
        out[:, part] = latents[:, part] @ random_invertible(rng, size) + rng.standard_normal(size)
    return out


def permute_groups(latents: np.ndarray, group_sizes: list[int], order: list[int]) -> tuple[np.ndarray, list[int]]:
    """Reorder the groups of ``latents``: new group k is old group ``order[k]``."""
    parts = group_slices(group_sizes)
    return np.concatenate([latents[:, parts[g]] for g in order], axis=1), [group_sizes[g] for g in order]


def split_w(A: np.ndarray, B: np.ndarray, group_sizes: list[int]) -> np.ndarray:
    """Per-group ``W_g = A[:, g] B[g, :]``: ``(G, N, N)``."""
    return np.stack([A[:, part] @ B[part, :] for part in group_slices(group_sizes)])


# ----------------------------------------------------------------------------------------
# Reconstruction
# ----------------------------------------------------------------------------------------


def test_r2_score_matches_sklearn() -> None:
    rng = np.random.default_rng(0)
    y = rng.standard_normal((50, 4)) * np.array([1.0, 3.0, 0.1, 10.0])
    pred = y + rng.standard_normal((50, 4))
    expected = sklearn.metrics.r2_score(y, pred, multioutput="uniform_average")
    assert r2_score(y, pred) == pytest.approx(expected, rel=1e-12)
    assert recon_r2(y, pred) == pytest.approx(expected, rel=1e-12)
    assert r2_score(y, y) == pytest.approx(1.0)
    # Constant columns follow sklearn's convention (1 if exact, else 0).
    y[:, 0] = 2.0
    pred[:, 0] = 2.0
    pred[:, 1] = 5.0
    expected = sklearn.metrics.r2_score(y, pred, multioutput="uniform_average")
    assert r2_score(y, pred) == pytest.approx(expected, rel=1e-12)


def test_r2_score_accepts_torch_and_rejects_bad_shapes() -> None:
    rng = np.random.default_rng(1)
    y = rng.standard_normal((30, 3))
    pred = y + 0.5 * rng.standard_normal((30, 3))
    assert r2_score(torch.from_numpy(y).float(), torch.from_numpy(pred).float()) == pytest.approx(r2_score(y, pred), abs=1e-5)
    with pytest.raises(ValueError, match=r"y_pred has shape \(30, 2\)"):
        r2_score(y, pred[:, :2])


def test_cond_loglik_matches_scipy() -> None:
    rng = np.random.default_rng(2)
    n, neurons = 40, 7
    mean = rng.standard_normal((n, neurons))
    log_std = rng.uniform(-1.0, 0.5, size=neurons)
    x = mean + np.exp(log_std) * rng.standard_normal((n, neurons))
    expected = stats.norm.logpdf(x, loc=mean, scale=np.exp(log_std)).sum(axis=1).mean()
    assert cond_loglik(x, mean, log_std) == pytest.approx(expected, rel=1e-12)
    torch_value = cond_loglik(torch.from_numpy(x), torch.from_numpy(mean), torch.from_numpy(log_std))
    assert torch_value == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="log_std"):
        cond_loglik(x, mean, log_std[:3])


# ----------------------------------------------------------------------------------------
# Group latent R²
# ----------------------------------------------------------------------------------------


def test_group_latent_r2_perfect_recovery_through_groupwise_affine_map() -> None:
    rng = np.random.default_rng(3)
    sizes = [3, 3]
    true = independent_latents(rng, 6)
    est = blockwise_affine(rng, true, sizes)
    result = group_latent_r2(true, est, sizes, sizes)
    assert isinstance(result, GroupAlignment)
    assert result.score == pytest.approx(1.0, abs=1e-9)
    assert result.matching == [(0, 0), (1, 1)]
    assert result.r2_matrix.shape == (2, 2)
    # Independent groups do not predict each other.
    assert result.r2_matrix[0, 1] < 0.1 and result.r2_matrix[1, 0] < 0.1
    np.testing.assert_allclose(result.aligned, true, atol=1e-8)


def test_group_latent_r2_invariant_to_group_permutation_and_within_group_mixing() -> None:
    rng = np.random.default_rng(4)
    sizes = [2, 3, 1]
    true = independent_latents(rng, 6)
    est = blockwise_affine(rng, true, sizes) + 2.0 * rng.standard_normal(true.shape)
    base = group_latent_r2(true, est, sizes, sizes)
    assert 0.3 < base.score < 0.95
    assert base.matching == [(0, 0), (1, 1), (2, 2)]

    order = [2, 0, 1]
    permuted, permuted_sizes = permute_groups(est, sizes, order)
    result = group_latent_r2(true, permuted, sizes, permuted_sizes)
    assert result.score == pytest.approx(base.score, abs=1e-10)
    np.testing.assert_allclose(result.r2_matrix, base.r2_matrix[:, order], atol=1e-10)
    # True group i was learned group i, which is now at position order.index(i).
    assert result.matching == [(i, order.index(i)) for i in range(3)]
    np.testing.assert_allclose(result.aligned, base.aligned, atol=1e-8)

    mixed = blockwise_affine(rng, est, sizes)  # A -> A Q (plus a shift) within each group
    result = group_latent_r2(true, mixed, sizes, sizes)
    assert result.score == pytest.approx(base.score, abs=1e-10)
    np.testing.assert_allclose(result.r2_matrix, base.r2_matrix, atol=1e-10)


def test_group_latent_r2_unequal_sizes_perfect_recovery() -> None:
    rng = np.random.default_rng(5)
    sizes = [2, 3, 1]
    true = independent_latents(rng, 6)
    est, est_sizes = permute_groups(blockwise_affine(rng, true, sizes), sizes, [1, 2, 0])
    assert est_sizes == [3, 1, 2]
    result = group_latent_r2(true, est, sizes, est_sizes)
    assert result.score == pytest.approx(1.0, abs=1e-9)
    assert result.matching == [(0, 2), (1, 0), (2, 1)]
    np.testing.assert_allclose(result.aligned, true, atol=1e-8)


def test_group_latent_r2_mixing_across_groups_lowers_score() -> None:
    rng = np.random.default_rng(6)
    sizes = [3, 3]
    true = independent_latents(rng, 6)
    # 45° rotations in the planes (0, 3), (1, 4), (2, 5): every learned dimension is half
    # group 1 and half group 2.
    rotation = np.eye(6)
    c = s = 1 / np.sqrt(2)
    for a, b in [(0, 3), (1, 4), (2, 5)]:
        rotation[[a, a, b, b], [a, b, a, b]] = [c, -s, s, c]
    mixed = group_latent_r2(true, true @ rotation, sizes, sizes)
    assert mixed.score < 0.7
    # Rotating a single pair already costs something; a within-group rotation costs nothing.
    one_pair = np.eye(6)
    one_pair[[0, 0, 3, 3], [0, 3, 0, 3]] = [c, -s, s, c]
    partial = group_latent_r2(true, true @ one_pair, sizes, sizes)
    assert mixed.score < partial.score < 0.95
    within = np.eye(6)
    within[:3, :3] = ortho_group.rvs(3, random_state=0)
    assert group_latent_r2(true, true @ within, sizes, sizes).score == pytest.approx(1.0, abs=1e-9)


def test_group_latent_r2_rectangular_assignment() -> None:
    rng = np.random.default_rng(7)
    true = independent_latents(rng, 6)
    est = true @ random_invertible(rng, 6)  # one learned group of 6 holds both true groups

    fewer = group_latent_r2(true, est, [3, 3], [6])
    assert fewer.r2_matrix.shape == (2, 1)
    assert len(fewer.matching) == 1
    assert fewer.score == pytest.approx(1.0, abs=1e-9)
    ((i, j),) = fewer.matching
    unmatched = group_slices([3, 3])[1 - i]
    matched = group_slices([3, 3])[i]
    assert np.isnan(fewer.aligned[:, unmatched]).all()
    np.testing.assert_allclose(fewer.aligned[:, matched], true[:, matched], atol=1e-8)

    more = group_latent_r2(true[:, :3], est, [3], [2, 2, 2])  # 3 learned groups vs 1 true
    assert more.r2_matrix.shape == (1, 3)
    assert len(more.matching) == 1
    assert more.matching[0][1] == int(np.argmax(more.r2_matrix[0]))
    assert more.aligned.shape == (N_SAMPLES, 3) and not np.isnan(more.aligned).any()


def test_group_latent_r2_aligned_matches_score() -> None:
    rng = np.random.default_rng(8)
    sizes, est_sizes = [2, 4], [4, 2]
    true = independent_latents(rng, 6)
    est, _ = permute_groups(blockwise_affine(rng, true, sizes), sizes, [1, 0])
    est = est + 1.5 * rng.standard_normal(est.shape)
    result = group_latent_r2(true, est, sizes, est_sizes)
    assert result.aligned.shape == (N_SAMPLES, 6)
    assert result.matching == [(0, 1), (1, 0)]
    parts = group_slices(sizes)
    per_group = []
    for i, j in result.matching:
        value = r2_score(true[:, parts[i]], result.aligned[:, parts[i]])
        assert value == pytest.approx(result.r2_matrix[i, j], abs=1e-10)
        per_group.append(value)
    assert result.score == pytest.approx(np.mean(per_group), abs=1e-10)
    assert 0.1 < result.score < 0.95


def test_group_latent_r2_errors_name_argument_and_shapes() -> None:
    rng = np.random.default_rng(9)
    true, est = rng.standard_normal((20, 6)), rng.standard_normal((19, 6))
    with pytest.raises(ValueError, match=r"true_latents has shape \(20, 6\).*est_latents has shape \(19, 6\)"):
        group_latent_r2(true, est, [3, 3], [3, 3])
    with pytest.raises(ValueError, match=r"true_group_sizes=\[3, 2\].*\(20, 6\)"):
        group_latent_r2(true, true, [3, 2], [3, 3])
    with pytest.raises(ValueError, match=r"est_group_sizes=\[4, 4\].*est_latents has shape \(20, 6\)"):
        group_latent_r2(true, true, [3, 3], [4, 4])
    with pytest.raises(ValueError, match="est_group_sizes"):
        group_latent_r2(true, true, [3, 3], [6, 0])


def test_component_latent_r2_scaling_permutation_and_rotation() -> None:
    rng = np.random.default_rng(10)
    true = independent_latents(rng, 4)
    perm = [2, 0, 3, 1]
    est = true[:, perm] * np.array([2.0, -0.5, 3.0, -1.0]) + 4.0
    result = component_latent_r2(true, est)
    assert result.score == pytest.approx(1.0, abs=1e-9)
    assert result.r2_matrix.shape == (4, 4)
    assert result.matching == [(i, perm.index(i)) for i in range(4)]  # est column k is true perm[k]
    np.testing.assert_allclose(result.aligned, true, atol=1e-8)

    rotated = component_latent_r2(true, true @ ortho_group.rvs(4, random_state=1))
    assert rotated.score < 0.9
    # Torch input works the same.
    assert component_latent_r2(torch.from_numpy(true), torch.from_numpy(est)).score == pytest.approx(1.0, abs=1e-9)


# ----------------------------------------------------------------------------------------
# Connectivity
# ----------------------------------------------------------------------------------------


def test_connectivity_metrics_match_sklearn_and_scipy() -> None:
    rng = np.random.default_rng(11)
    true_w = rng.standard_normal((12, 12))
    est_w = 0.8 * true_w + 0.3 * rng.standard_normal((12, 12)) + 0.1
    result = connectivity_metrics(true_w, est_w)
    assert set(result) == {"mae", "rmse", "r2", "pearson"}
    t, e = true_w.ravel(), est_w.ravel()
    assert result["mae"] == pytest.approx(sklearn.metrics.mean_absolute_error(t, e), rel=1e-12)
    assert result["rmse"] == pytest.approx(np.sqrt(sklearn.metrics.mean_squared_error(t, e)), rel=1e-12)
    assert result["r2"] == pytest.approx(sklearn.metrics.r2_score(t, e), rel=1e-12)
    assert result["pearson"] == pytest.approx(stats.pearsonr(t, e)[0], rel=1e-12)
    perfect = connectivity_metrics(true_w, true_w)
    assert perfect["mae"] == 0 and perfect["rmse"] == 0
    assert perfect["r2"] == pytest.approx(1.0) and perfect["pearson"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"est_w has shape \(12, 11\)"):
        connectivity_metrics(true_w, est_w[:, :11])


def test_connectivity_invariant_to_factor_reparametrisation() -> None:
    rng = np.random.default_rng(12)
    neurons, rank = 15, 4
    A_true, B_true = rng.standard_normal((neurons, rank)), rng.standard_normal((rank, neurons))
    A, B = A_true + 0.3 * rng.standard_normal(A_true.shape), B_true + 0.3 * rng.standard_normal(B_true.shape)
    Q = random_invertible(rng, rank)
    base = connectivity_metrics(A_true @ B_true, A @ B)
    moved = connectivity_metrics(A_true @ B_true, (A @ Q) @ (np.linalg.inv(Q) @ B))
    for key in base:
        assert moved[key] == pytest.approx(base[key], rel=1e-9, abs=1e-12)


def test_sub_connectivity_invariances_and_wrong_split() -> None:
    rng = np.random.default_rng(13)
    neurons, sizes = 15, [2, 3, 1]
    rank = sum(sizes)
    A_true, B_true = rng.standard_normal((neurons, rank)), rng.standard_normal((rank, neurons))
    A, B = A_true + 0.2 * rng.standard_normal(A_true.shape), B_true + 0.2 * rng.standard_normal(B_true.shape)
    true_groups = split_w(A_true, B_true, sizes)
    base, matching = sub_connectivity_metrics(true_groups, split_w(A, B, sizes))
    assert matching == [(0, 0), (1, 1), (2, 2)]
    assert 0.5 < base["r2"] < 1.0

    # Block-diagonal Q: A -> A Q, B -> Q^-1 B within groups changes nothing.
    Q = np.zeros((rank, rank))
    for part in group_slices(sizes):
        Q[part, part] = random_invertible(rng, part.stop - part.start)
    moved, moved_matching = sub_connectivity_metrics(true_groups, split_w(A @ Q, np.linalg.inv(Q) @ B, sizes))
    assert moved_matching == matching
    for key in base:
        assert moved[key] == pytest.approx(base[key], rel=1e-9, abs=1e-12)

    # Permuting the learned groups permutes the matching only.
    order = [2, 0, 1]
    parts = group_slices(sizes)
    columns = np.concatenate([np.arange(rank)[parts[g]] for g in order])
    permuted, permuted_matching = sub_connectivity_metrics(
        true_groups, split_w(A[:, columns], B[columns, :], [sizes[g] for g in order])
    )
    assert permuted_matching == [(i, order.index(i)) for i in range(3)]
    for key in base:
        assert permuted[key] == pytest.approx(base[key], rel=1e-12, abs=1e-12)

    # A full (cross-group) Q keeps W = A B but scrambles the W_g: clearly worse.
    Q_full = random_invertible(rng, rank)
    A_wrong, B_wrong = A @ Q_full, np.linalg.inv(Q_full) @ B
    np.testing.assert_allclose(A_wrong @ B_wrong, A @ B, atol=1e-9)
    wrong, _ = sub_connectivity_metrics(true_groups, split_w(A_wrong, B_wrong, sizes))
    assert wrong["rmse"] > 1.5 * base["rmse"]
    assert wrong["r2"] < base["r2"] - 0.3


def test_sub_connectivity_rectangular_and_errors() -> None:
    rng = np.random.default_rng(14)
    true_groups = rng.standard_normal((2, 5, 5))
    est_groups = np.concatenate([true_groups[::-1], rng.standard_normal((1, 5, 5))])
    result, matching = sub_connectivity_metrics(true_groups, est_groups)
    assert matching == [(0, 1), (1, 0)]
    assert result["rmse"] == pytest.approx(0.0, abs=1e-12)
    single, single_matching = sub_connectivity_metrics(true_groups, true_groups[1])
    assert single_matching == [(1, 0)] and single["rmse"] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match=r"\(2, 5, 5\).*\(2, 4, 4\)"):
        sub_connectivity_metrics(true_groups, rng.standard_normal((2, 4, 4)))


# ----------------------------------------------------------------------------------------
# Evaluation grouping
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model_sizes", "true_sizes", "expected"),
    [
        ([3, 3], [3, 3], [3, 3]),
        ([2, 4], [3, 3], [2, 4]),  # same number of groups: the model's own grouping
        ([2, 2], [3, 3], [2, 2]),  # same number of groups, different K
        ([6], [3, 3], [3, 3]),  # lrRNN: one group of 6 scored as the truth's [3, 3]
        ([1] * 6, [3, 3], [3, 3]),
        ([6], [2, 3, 1], [2, 3, 1]),
    ],
)
def test_evaluation_grouping(model_sizes: list[int], true_sizes: list[int], expected: list[int]) -> None:
    assert evaluation_grouping(model_sizes, true_sizes) == expected


def test_evaluation_grouping_errors() -> None:
    with pytest.raises(ValueError, match=r"model_group_sizes=\[4\].*true_group_sizes=\[3, 3\]"):
        evaluation_grouping([4], [3, 3])
    with pytest.raises(ValueError, match="true_group_sizes"):
        evaluation_grouping([6], [])
    with pytest.raises(ValueError, match="model_group_sizes"):
        evaluation_grouping([3, 0], [3, 3])
