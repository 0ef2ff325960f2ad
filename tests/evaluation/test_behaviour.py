"""Behavioural alignment (M1 latent R², rotation sweep) against sklearn / numpy least
squares and its invariances; the figures it writes."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LinearRegression
from sklearn.metrics import r2_score

from facrnn.evaluation.behaviour import (
    BehaviourBins,
    apply_group_maps,
    behaviour_grouping,
    evaluate_behaviour,
    fit_group_maps,
    integrate_within_trials,
    latent_r2,
    rotate,
    rotation_sweep,
    write_rotation_sweep_csv,
)
from facrnn.evaluation.metrics import group_latent_r2
from facrnn.plots.behaviour import plot_reach_trajectories, plot_rotation_sweep, write_behaviour_figures
from facrnn.plots.fit import loading_order, plot_sorted_connectivity

N_TRIALS, N_BINS = 24, 12


def reaching(seed: int = 0, shuffle: bool = True) -> dict[str, np.ndarray]:
    """Velocity of centre-out reaches in 8 directions, flattened to bins in a shuffled order."""
    rng = np.random.default_rng(seed)
    angle = (np.arange(N_TRIALS) % 8) * np.pi / 4 + rng.normal(0, 0.1, N_TRIALS)
    speed = np.sin(np.linspace(0, np.pi, N_BINS))[None, :] * rng.uniform(0.8, 1.2, (N_TRIALS, 1))
    velocity = np.stack([np.cos(angle)[:, None] * speed, np.sin(angle)[:, None] * speed], axis=-1)
    trial = np.repeat(np.arange(N_TRIALS), N_BINS)
    time = np.tile(np.arange(N_BINS), N_TRIALS)
    order = rng.permutation(len(trial)) if shuffle else np.arange(len(trial))
    return {
        "velocity": velocity.reshape(-1, 2)[order],
        "trial": trial[order],
        "time": time[order],
        "noise": rng.normal(size=(len(trial), 4)),
    }


def test_integration_within_trials_matches_a_loop() -> None:
    data = reaching()
    values = data["noise"]
    result = integrate_within_trials(values, data["trial"], data["time"])
    for row in range(0, len(values), 7):
        same = (data["trial"] == data["trial"][row]) & (data["time"] <= data["time"][row])
        np.testing.assert_allclose(result[row], values[same].sum(0))
    with pytest.raises(ValueError, match="one trial and time index per row"):
        integrate_within_trials(values, data["trial"][:-1], data["time"])


def test_rotate() -> None:
    np.testing.assert_allclose(rotate(np.array([[1.0, 0.0], [0.0, 2.0]]), np.pi / 2), [[0.0, 1.0], [-2.0, 0.0]], atol=1e-12)
    with pytest.raises(ValueError, match=r"expected \(n, 2\)"):
        rotate(np.ones((3, 3)), 0.1)


@pytest.mark.parametrize(
    ("model_sizes", "expected"),
    [
        ([1, 1], ([1, 1], [1, 1])),
        ([2], ([1, 1], [1, 1])),
        ([2, 2], ([1, 1], [2, 2])),
        ([1, 1, 1, 1], ([1, 1], [1, 1, 1, 1])),
        ([4], ([2], [4])),
    ],
)
def test_behaviour_grouping(model_sizes: list[int], expected: tuple[list[int], list[int]]) -> None:
    assert behaviour_grouping(model_sizes, 2) == expected


def test_latent_r2_matches_sklearn_least_squares() -> None:
    data = reaching()
    latents = data["noise"][:, :2] + data["velocity"] @ np.array([[1.0, 0.3], [-0.2, 0.8]])
    position = integrate_within_trials(data["velocity"], data["trial"], data["time"])
    integrated = integrate_within_trials(latents, data["trial"], data["time"])
    # two groups of one: every (axis, latent) pair regressed, best one-to-one matching
    pair = np.array(
        [
            [
                r2_score(
                    position[:, i], LinearRegression().fit(integrated[:, [j]], position[:, i]).predict(integrated[:, [j]])
                )
                for j in range(2)
            ]
            for i in range(2)
        ]
    )
    expected = max(pair[0, 0] + pair[1, 1], pair[0, 1] + pair[1, 0]) / 2
    assert latent_r2(latents, data["velocity"], data["trial"], data["time"], [1, 1]).score == pytest.approx(
        expected, abs=1e-10
    )
    # one group of 4 against the whole position
    wide = np.concatenate([latents, data["noise"][:, 2:]], axis=1)
    integrated = integrate_within_trials(wide, data["trial"], data["time"])
    fit = LinearRegression().fit(integrated, position)
    alignment = latent_r2(wide, data["velocity"], data["trial"], data["time"], [4])
    assert alignment.score == pytest.approx(r2_score(position, fit.predict(integrated)), abs=1e-10)
    np.testing.assert_allclose(alignment.aligned, fit.predict(integrated), atol=1e-8)


def test_latent_r2_invariances() -> None:
    data = reaching()
    latents = data["noise"] + np.concatenate([data["velocity"], -data["velocity"]], axis=1)
    args = (data["velocity"], data["trial"], data["time"])
    base = latent_r2(latents, *args, [2, 2]).score
    mixing = np.zeros((4, 4))
    mixing[:2, :2], mixing[2:, 2:] = [[2.0, 1.0], [0.5, -1.0]], [[0.0, 3.0], [1.0, 1.0]]  # invertible within groups
    assert latent_r2(latents @ mixing.T, *args, [2, 2]).score == pytest.approx(base, abs=1e-10)
    assert latent_r2(latents[:, [2, 3, 0, 1]], *args, [2, 2]).score == pytest.approx(base, abs=1e-10)  # groups swapped
    assert latent_r2(latents, args[0] * 5.0, *args[1:], [2, 2]).score == pytest.approx(base, abs=1e-10)  # units of velocity
    order = np.random.default_rng(1).permutation(len(latents))  # row order
    assert latent_r2(latents[order], args[0][order], args[1][order], args[2][order], [2, 2]).score == pytest.approx(
        base, abs=1e-10
    )


def test_rotation_sweep_finds_the_axes_of_the_latent_groups() -> None:
    data = reaching()
    theta0 = np.pi / 6  # the 5th of 13 angles in [0, pi/2]
    latents = rotate(data["velocity"], theta0)  # group 1 follows x', group 2 follows y'
    sweep = rotation_sweep(latents, data["velocity"], data["trial"], data["time"], [1, 1])
    assert sweep["theta"].shape == (13,) and sweep["theta"][-1] == pytest.approx(np.pi / 2)
    assert np.argmax(sweep["r2"]) == 4 and sweep["r2"][4] == pytest.approx(1.0)
    assert sweep["matched_group"][4].tolist() == [0, 1]
    assert np.all(sweep["r2"][np.arange(13) != 4] < 0.999)
    assert sweep["r2"][0] == pytest.approx(sweep["r2"][-1])  # a quarter turn swaps the axes
    single = latent_r2(latents, data["velocity"], data["trial"], data["time"], [1, 1], theta=sweep["theta"][2])
    assert single.score == pytest.approx(sweep["r2"][2])
    # one group of 4 is aligned to the whole position, which it spans at every angle
    wide = np.concatenate([latents, data["noise"][:, :2]], axis=1)
    flat = rotation_sweep(wide, data["velocity"], data["trial"], data["time"], [4], n_angles=5)
    np.testing.assert_allclose(flat["r2"], 1.0, atol=1e-10)
    assert flat["r2_axes"].shape == (5, 1)


def test_evaluate_behaviour_and_csv(tmp_path: Path) -> None:
    data = reaching()
    latents = rotate(data["velocity"], np.pi / 4) + 0.1 * data["noise"][:, :2]
    direction = np.arange(N_TRIALS) % 8
    result = evaluate_behaviour(latents, data["velocity"], data["trial"], data["time"], [1, 1], direction)
    assert set(result.metrics) == {"latent_r2", "latent_r2_refit", "rotation_r2_min", "rotation_r2_max", "rotation_best_deg"}
    assert result.metrics["latent_r2_refit"] == result.metrics["latent_r2"]  # no training trials given: in-sample
    assert result.metrics["rotation_best_deg"] == pytest.approx(45.0)
    assert result.metrics["rotation_r2_min"] <= result.metrics["latent_r2"] <= result.metrics["rotation_r2_max"]
    np.testing.assert_array_equal(result.direction, direction[data["trial"]])
    path = write_rotation_sweep_csv(result.sweep, tmp_path / "rotation_sweep.csv")
    rows = list(csv.DictReader(path.open()))
    assert len(rows) == 13 and float(rows[-1]["theta_deg"]) == 90.0
    assert float(rows[0]["latent_r2"]) == pytest.approx(result.metrics["latent_r2"], abs=1e-6)
    assert set(rows[0]) >= {"r2_axis1", "r2_axis2", "matched_group_axis1"}

    written = write_behaviour_figures(tmp_path / "figures", result)
    assert [p.name for p in written] == ["reach_trajectories.png", "rotation_sweep.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in written)
    # three behavioural dimensions: latent R² only, no sweep or 2-D figures
    three = evaluate_behaviour(
        latents, np.concatenate([data["velocity"], data["noise"][:, :1]], 1), data["trial"], data["time"], [1, 1]
    )
    assert set(three.metrics) == {"latent_r2", "latent_r2_refit"} and three.sweep is None


def test_behaviour_plots_validate_shapes(tmp_path: Path) -> None:
    data = reaching()
    with pytest.raises(ValueError, match=r"expected both \(n, 2\)"):
        plot_reach_trajectories(np.ones((5, 3)), np.ones((5, 3)), np.zeros(5), np.arange(5), tmp_path / "a.png")
    path = plot_reach_trajectories(data["velocity"], data["velocity"], data["trial"], data["time"], tmp_path / "b.png")
    assert path.read_bytes()[:4] == b"\x89PNG"  # colours per trial without directions
    with pytest.raises(ValueError, match="one row per angle"):
        plot_rotation_sweep({"theta": np.zeros(3), "r2": np.zeros(2), "r2_axes": np.zeros((3, 2))}, tmp_path / "c.png")


def test_sorted_connectivity() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=30), rng.normal(size=30)
    rank_one = np.outer(a, b)
    order = loading_order(rank_one)
    sign = np.sign(a[np.argmax(np.abs(a))])
    np.testing.assert_array_equal(order, np.argsort(sign * a))
    np.testing.assert_array_equal(loading_order(-rank_one), order)  # the sign of the loading is fixed


def test_sorted_connectivity_plot(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    groups = np.stack([np.outer(rng.normal(size=150), rng.normal(size=150)) for _ in range(2)])
    path = plot_sorted_connectivity(groups.sum(0), groups, tmp_path / "connectivity_sorted.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="expected 3-D"):
        plot_sorted_connectivity(groups.sum(0), groups[:, :10], tmp_path / "x.png")
    with pytest.raises(ValueError, match="percentile=0"):
        plot_sorted_connectivity(groups.sum(0), groups, tmp_path / "x.png", percentile=0)


# ------------------------------------------------------------ maps fitted on training trials
def test_maps_fitted_and_scored_on_the_same_bins_equal_group_latent_r2() -> None:
    rng = np.random.default_rng(3)
    source = rng.standard_normal((200, 4))
    target = np.column_stack([source[:, :2] @ rng.standard_normal((2, 1)), source[:, 2:] @ rng.standard_normal((2, 1))])
    target += 0.3 * rng.standard_normal(target.shape)
    maps = fit_group_maps(target, source, [1, 1], [2, 2])
    own, reference = apply_group_maps(maps, target, source), group_latent_r2(target, source, [1, 1], [2, 2])
    assert own.score == pytest.approx(reference.score, abs=1e-12) and own.matching == reference.matching
    np.testing.assert_allclose(own.r2_matrix, reference.r2_matrix, atol=1e-12)
    np.testing.assert_allclose(maps.fit_r2, reference.r2_matrix, atol=1e-12)
    # against sklearn: held-out R² of the map fitted on the first half, scored on the second
    half = slice(0, 100), slice(100, 200)
    held_out = apply_group_maps(
        fit_group_maps(target[half[0]], source[half[0]], [1, 1], [2, 2]), target[half[1]], source[half[1]]
    )
    for i, j in held_out.matching:
        fitted = LinearRegression().fit(source[half[0], 2 * j : 2 * j + 2], target[half[0], i])
        expected = r2_score(target[half[1], i], fitted.predict(source[half[1], 2 * j : 2 * j + 2]))
        assert held_out.r2_matrix[i, j] == pytest.approx(expected, abs=1e-10)


def test_held_out_latent_r2_uses_the_training_trials_maps() -> None:
    """Latents that follow the hand in the training trials but not in the scored ones: the
    refitted (in-sample) alignment still finds an affine map, the held-out one does not."""
    data = reaching()
    trial = data["trial"]
    train, test = trial < 16, trial >= 16
    latents = data["velocity"] + 0.05 * data["noise"][:, :2]
    scrambled = latents.copy()
    scrambled[test] = latents[test][:, ::-1] * np.array([1.0, -1.0])  # axes swapped and mirrored in the test trials
    fit_on = BehaviourBins(scrambled[train], data["velocity"][train], trial[train], data["time"][train])
    result = evaluate_behaviour(
        scrambled[test], data["velocity"][test], trial[test], data["time"][test], [1, 1], fit_on=fit_on
    )
    assert result.metrics["latent_r2_refit"] > 0.95  # refitted on the scored trials: in-sample
    assert result.metrics["latent_r2"] < 0.0  # the training trials' maps: the scrambling shows
    clean = evaluate_behaviour(
        latents[test],
        data["velocity"][test],
        trial[test],
        data["time"][test],
        [1, 1],
        fit_on=BehaviourBins(latents[train], data["velocity"][train], trial[train], data["time"][train]),
    )
    assert clean.metrics["latent_r2"] > 0.9  # the same maps on latents that keep following the hand
