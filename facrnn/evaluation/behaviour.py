"""Behavioural alignment of latents (DESIGN §3, M1): integrated latents against hand position.

Posterior-mean latents are integrated over time within each trial (cumulative sum) and
aligned group-wise to the hand position (cumulative sum of the velocity): every position
axis is one target group, an affine least-squares map per (axis, latent group) pair, groups
matched one-to-one by the Hungarian algorithm maximising the summed R². The rotation sweep
repeats this with the hand position rotated by θ, to show whether latent groups pick out
fixed axes.

Held out: the maps and the matching are fitted on the *training* trials
(:func:`facrnn.evaluation.metrics.fit_group_maps`) and applied to the scored trials
(:func:`~facrnn.evaluation.metrics.apply_group_maps`; re-exported here), so
``latent_r2`` of the test split is an out-of-sample R² (``1 - SS_res / SS_tot`` of the
scored trials; it can be negative). ``latent_r2_refit`` beside it refits the maps on the
scored trials themselves (the authors' alignment, as
:func:`facrnn.evaluation.metrics.group_latent_r2` does). Pure functions on numpy arrays,
computed in float64.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facrnn.evaluation.metrics import GroupAlignment, GroupMaps, _as_matrix, apply_group_maps, fit_group_maps

N_ANGLES = 13
MAX_ANGLE = np.pi / 2

__all__ = [
    "BehaviourBins",
    "BehaviourEvaluation",
    "GroupMaps",
    "align_to_position",
    "apply_group_maps",
    "fit_group_maps",
    "behaviour_grouping",
    "evaluate_behaviour",
    "integrate_within_trials",
    "latent_r2",
    "rotate",
    "rotation_sweep",
    "write_rotation_sweep_csv",
]


def integrate_within_trials(values: np.ndarray, trial: np.ndarray, time: np.ndarray) -> np.ndarray:
    """Cumulative sum over time within each trial.

    Parameters
    ----------
    values : (n, d) array
        One row per bin, in any order.
    trial, time : (n,) int arrays
        Trial and time index of every row.

    Returns
    -------
    (n, d) float64 array in the input row order: row ``i`` holds the sum of ``values`` over
    the rows of the same trial with ``time <= time[i]``.
    """
    values = _as_matrix(values, "values")
    trial, time = np.asarray(trial).ravel(), np.asarray(time).ravel()
    if not (len(trial) == len(time) == len(values)):
        raise ValueError(
            f"values has {len(values)} rows, trial {len(trial)}, time {len(time)}: expected one trial and time index per row"
        )
    order = np.lexsort((time, trial))
    bounds = np.flatnonzero(np.diff(trial[order])) + 1
    result = np.empty_like(values)
    result[order] = np.concatenate([np.cumsum(part, axis=0) for part in np.split(values[order], bounds)])
    return result


def rotate(points: np.ndarray, theta: float) -> np.ndarray:
    """Rotate 2-D points counter-clockwise by ``theta`` radians: ``(n, 2) -> (n, 2)``."""
    points = _as_matrix(points, "points")
    if points.shape[1] != 2:
        raise ValueError(f"points has shape {points.shape}: expected (n, 2) to rotate")
    cos, sin = np.cos(theta), np.sin(theta)
    return points @ np.array([[cos, sin], [-sin, cos]])


def behaviour_grouping(latent_group_sizes: Sequence[int], n_axes: int) -> tuple[list[int], list[int]]:
    """Groupings ``(behaviour, latents)`` used to align latents to ``n_axes`` behavioural axes.

    Every axis is its own target group. The latents keep the model's groups when there are
    at least as many groups as axes (the Hungarian matching picks the best ones); a model
    with fewer groups but exactly ``n_axes`` latent dimensions (an lrRNN with K = 2) is
    scored one dimension per axis, like :func:`facrnn.evaluation.metrics.evaluation_grouping`; any
    other model aligns its groups to the whole position at once.

    Returns
    -------
    behaviour_sizes, latent_sizes : list of int
    """
    sizes = [int(size) for size in latent_group_sizes]
    axes = [1] * int(n_axes)
    if len(sizes) >= n_axes:
        return axes, sizes
    if sum(sizes) == n_axes:
        return axes, [1] * n_axes
    return [int(n_axes)], sizes


@dataclass(frozen=True)
class BehaviourBins:
    """Latents and behaviour of a set of bins (one split): what maps are fitted on or scored.

    Attributes
    ----------
    latents : (n, K) array
        Posterior means.
    velocity : (n, D) array
        Hand velocity.
    trial, time : (n,) int arrays
        Trial and time index of every bin.
    """

    latents: np.ndarray
    velocity: np.ndarray
    trial: np.ndarray
    time: np.ndarray

    def integrated(self) -> tuple[np.ndarray, np.ndarray]:
        """Integrated latents ``(n, K)`` and hand position ``(n, D)`` (cumulative sums within trials)."""
        return (
            integrate_within_trials(self.latents, self.trial, self.time),
            integrate_within_trials(self.velocity, self.trial, self.time),
        )


def align_to_position(
    integrated: np.ndarray,
    position: np.ndarray,
    latent_group_sizes: Sequence[int],
    fit: tuple[np.ndarray, np.ndarray] | None = None,
) -> GroupAlignment:
    """Group-wise affine alignment of integrated latents ``(n, K)`` to positions ``(n, D)``.

    Targets and latents are grouped by :func:`behaviour_grouping`. ``fit`` = ``(integrated,
    position)`` of other bins (the training trials) to fit the maps and the matching on; by
    default they are fitted on these bins (in-sample).
    """
    behaviour_sizes, latent_sizes = behaviour_grouping(latent_group_sizes, _as_matrix(position, "position").shape[1])
    fit_integrated, fit_position = (integrated, position) if fit is None else fit
    maps = fit_group_maps(fit_position, fit_integrated, behaviour_sizes, latent_sizes)
    return apply_group_maps(maps, position, integrated)


def latent_r2(
    latents: np.ndarray,
    velocity: np.ndarray,
    trial: np.ndarray,
    time: np.ndarray,
    latent_group_sizes: Sequence[int],
    theta: float = 0.0,
    fit_on: BehaviourBins | None = None,
) -> GroupAlignment:
    """Group-wise R² of integrated latents against hand position (rotated by ``theta``).

    Parameters
    ----------
    latents : (n, K) array
        Posterior means, one row per bin.
    velocity : (n, D) array
        Hand velocity of the same bins (``D = 2`` when ``theta`` is not 0).
    trial, time : (n,) int arrays
        Trial and time index of every bin.
    latent_group_sizes : sequence of int
        The model's groups, summing to K.
    theta : float
        Rotation of the hand position, radians.
    fit_on : BehaviourBins, optional
        Bins (the training trials) the maps and the matching are fitted on; default these bins.

    Returns
    -------
    GroupAlignment
        Of the position (targets, grouped per :func:`behaviour_grouping`) by the integrated
        latents; ``aligned`` is the matched affine prediction of the (rotated) position.
    """
    integrated, position = BehaviourBins(latents, velocity, trial, time).integrated()
    fit = None if fit_on is None else fit_on.integrated()
    if theta:
        position = rotate(position, theta)
        fit = None if fit is None else (fit[0], rotate(fit[1], theta))
    return align_to_position(integrated, position, latent_group_sizes, fit)


def rotation_sweep(
    latents: np.ndarray,
    velocity: np.ndarray,
    trial: np.ndarray,
    time: np.ndarray,
    latent_group_sizes: Sequence[int],
    n_angles: int = N_ANGLES,
    max_angle: float = MAX_ANGLE,
    fit_on: BehaviourBins | None = None,
) -> dict[str, np.ndarray]:
    """:func:`latent_r2` with the hand position rotated by ``theta = linspace(0, max_angle, n_angles)``.

    Parameters are those of :func:`latent_r2`; the velocity must be 2-D ``(n, 2)``.

    Returns
    -------
    dict
        ``theta`` (n_angles,) radians, ``r2`` (n_angles,) the score, ``r2_axes``
        (n_angles, n_target_groups) R² of each target group with its matched latent group
        (NaN if unmatched), ``matched_group`` (n_angles, n_target_groups) the latent group
        matched to each target group (-1 if none).
    """
    if n_angles < 1:
        raise ValueError(f"n_angles={n_angles}: expected a positive integer")
    thetas = np.linspace(0.0, max_angle, int(n_angles))
    scores, per_axis, matched = [], [], []
    for theta in thetas:
        alignment = latent_r2(latents, velocity, trial, time, latent_group_sizes, theta, fit_on)
        pairs = dict(alignment.matching)
        n_targets = alignment.r2_matrix.shape[0]
        scores.append(alignment.score)
        per_axis.append([alignment.r2_matrix[i, pairs[i]] if i in pairs else np.nan for i in range(n_targets)])
        matched.append([pairs.get(i, -1) for i in range(n_targets)])
    return {
        "theta": thetas,
        "r2": np.asarray(scores),
        "r2_axes": np.asarray(per_axis, dtype=np.float64),
        "matched_group": np.asarray(matched, dtype=np.int64),
    }


@dataclass
class BehaviourEvaluation:
    """Behavioural metrics of one split and the arrays their figures need.

    Attributes
    ----------
    metrics : dict
        ``latent_r2`` (maps fitted on the training trials when given), ``latent_r2_refit``
        (maps refitted on the scored trials) and, for 2-D behaviour, ``rotation_r2_min``, ``rotation_r2_max``,
        ``rotation_best_deg`` (the angle of the highest R²).
    position : (n, D) array
        Hand position (cumulative velocity) of every bin.
    aligned : (n, D) array
        Integrated latents mapped onto it (:func:`latent_r2` at θ = 0).
    trial, time : (n,) int arrays
    direction : (n,) int array, optional
        Reach direction of every bin's trial.
    sweep : dict, optional
        :func:`rotation_sweep` (2-D behaviour only).
    """

    metrics: dict[str, float]
    position: np.ndarray
    aligned: np.ndarray
    trial: np.ndarray
    time: np.ndarray
    direction: np.ndarray | None = None
    sweep: dict[str, np.ndarray] | None = None


def evaluate_behaviour(
    latents: np.ndarray,
    velocity: np.ndarray,
    trial: np.ndarray,
    time: np.ndarray,
    latent_group_sizes: Sequence[int],
    trial_direction: np.ndarray | None = None,
    fit_on: BehaviourBins | None = None,
) -> BehaviourEvaluation:
    """``latent_r2`` and (2-D behaviour) the rotation sweep of one split.

    Parameters
    ----------
    latents : (n, K) array
    velocity : (n, D) array
    trial, time : (n,) int arrays
        The scored split.
    latent_group_sizes : sequence of int
    trial_direction : (trials,) int array, optional
        Reach direction per trial of the recording (indexed by ``trial``).
    fit_on : BehaviourBins, optional
        The training trials: maps and matching are fitted on them and applied to ``bins``
        (``latent_r2``, the rotation sweep); ``latent_r2_refit`` refits them on the scored bins.
        Default: fitted on the scored bins (in-sample, ``latent_r2 == latent_r2_refit``).
    """
    bins = BehaviourBins(
        _as_matrix(latents, "latents"), _as_matrix(velocity, "velocity"), np.asarray(trial).ravel(), np.asarray(time).ravel()
    )
    scored = (bins.latents, bins.velocity, bins.trial, bins.time)
    alignment = latent_r2(*scored, latent_group_sizes, fit_on=fit_on)
    refit = alignment if fit_on is None else latent_r2(*scored, latent_group_sizes)
    position = integrate_within_trials(bins.velocity, bins.trial, bins.time)
    result = BehaviourEvaluation(
        metrics={"latent_r2": alignment.score, "latent_r2_refit": refit.score},
        position=position,
        aligned=alignment.aligned,
        trial=bins.trial,
        time=bins.time,
        direction=None if trial_direction is None else np.asarray(trial_direction)[bins.trial],
    )
    if bins.velocity.shape[1] == 2:
        sweep = rotation_sweep(*scored, latent_group_sizes, fit_on=fit_on)
        best = int(np.argmax(sweep["r2"]))
        result.sweep = sweep
        result.metrics.update(
            rotation_r2_min=float(sweep["r2"].min()),
            rotation_r2_max=float(sweep["r2"][best]),
            rotation_best_deg=float(np.degrees(sweep["theta"][best])),
        )
    return result


def write_rotation_sweep_csv(sweep: dict[str, np.ndarray], path: str | os.PathLike) -> Path:
    """Write :func:`rotation_sweep` as CSV: ``theta_rad, theta_deg, latent_r2``, then per target
    group ``r2_axis<i>`` and ``matched_group_axis<i>`` (1-based axis numbers)."""
    path = Path(path)
    n_axes = sweep["r2_axes"].shape[1]
    header = ["theta_rad", "theta_deg", "latent_r2"]
    header += [f"r2_axis{i + 1}" for i in range(n_axes)] + [f"matched_group_axis{i + 1}" for i in range(n_axes)]
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for row, theta in enumerate(sweep["theta"]):
            writer.writerow(
                [f"{theta:.6f}", f"{np.degrees(theta):.2f}", f"{sweep['r2'][row]:.6f}"]
                + [f"{value:.6f}" for value in sweep["r2_axes"][row]]
                + [int(group) for group in sweep["matched_group"][row]]
            )
    return path
