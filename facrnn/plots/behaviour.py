"""Figures of the behavioural alignment (M1): reach trajectories and the rotation sweep.

matplotlib's object-oriented API only (``matplotlib.figure.Figure``), like
:mod:`facrnn.plots.fit`; each function writes one PNG and returns its path.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from facrnn.evaluation.behaviour import BehaviourEvaluation
from facrnn.plots.save import save_figure

DIRECTION_CMAP = "hsv"


def _trajectories(ax, points: np.ndarray, trial: np.ndarray, time: np.ndarray, colours: list) -> None:
    """One line per trial through its bins in time order (end marked with a dot)."""
    for index, current in enumerate(np.unique(trial)):
        rows = np.flatnonzero(trial == current)
        rows = rows[np.argsort(time[rows])]
        ax.plot(points[rows, 0], points[rows, 1], color=colours[index], linewidth=0.9, alpha=0.8)
        ax.plot(points[rows[-1], 0], points[rows[-1], 1], "o", color=colours[index], markersize=2.5)
    ax.set_aspect("equal", adjustable="datalim")
    ax.grid(alpha=0.3)


def plot_reach_trajectories(
    position: np.ndarray,
    aligned: np.ndarray,
    trial: np.ndarray,
    time: np.ndarray,
    path: str | os.PathLike,
    direction: np.ndarray | None = None,
    title: str = "",
) -> Path:
    """True hand trajectories beside the aligned latent trajectories, coloured by reach direction.

    Parameters
    ----------
    position : (n, 2) array
        Hand position (cumulative velocity) of every bin.
    aligned : (n, 2) array
        Integrated latents mapped onto the position (NaN columns are left blank).
    trial, time : (n,) int arrays
        Trial and time index of every bin.
    path : str or os.PathLike
        PNG to write.
    direction : (n,) int array, optional
        Reach direction of every bin's trial; colours are by trial when absent.
    title : str
        Figure title; none when empty.
    """
    position, aligned = np.asarray(position, dtype=np.float64), np.asarray(aligned, dtype=np.float64)
    trial, time = np.asarray(trial).ravel(), np.asarray(time).ravel()
    if position.ndim != 2 or position.shape[1] != 2 or aligned.shape != position.shape:
        raise ValueError(f"position has shape {position.shape} and aligned {aligned.shape}: expected both (n, 2)")
    if trial.shape != (len(position),) or time.shape != (len(position),):
        raise ValueError(f"trial {trial.shape} and time {time.shape}: expected ({len(position)},) like position")
    trials = np.unique(trial)
    cmap = colormaps[DIRECTION_CMAP]
    if direction is not None:
        direction = np.asarray(direction).ravel()
        labels = np.unique(direction)
        first_rows = np.array([np.flatnonzero(trial == t)[0] for t in trials])
        colours = [cmap(np.searchsorted(labels, direction[row]) / max(len(labels), 1)) for row in first_rows]
    else:
        colours = [cmap(i / max(len(trials), 1)) for i in range(len(trials))]
    fig = Figure(figsize=(10.5, 5.0), layout="constrained")
    left, right = fig.subplots(1, 2)
    _trajectories(left, position, trial, time, colours)
    left.set_title("hand position (cumulative velocity)", fontsize="medium")
    _trajectories(right, aligned, trial, time, colours)
    right.set_title("integrated latents, aligned group-wise", fontsize="medium")
    left.set_xlabel("hand position x")
    left.set_ylabel("hand position y")
    right.set_xlabel("aligned latents, x")
    right.set_ylabel("aligned latents, y")
    if direction is not None:
        for index, label in enumerate(labels):
            right.plot([], [], color=cmap(index / len(labels)), label=f"direction {label}")
        right.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def plot_rotation_sweep(sweep: dict[str, np.ndarray], path: str | os.PathLike, title: str = "") -> Path:
    """Latent R² against the rotation angle of the hand position, with each axis's matched R².

    Parameters
    ----------
    sweep : dict
        :func:`facrnn.evaluation.behaviour.rotation_sweep` output (``theta``, ``r2``, ``r2_axes``).
    path : str or os.PathLike
        PNG to write.
    """
    theta = np.degrees(np.asarray(sweep["theta"], dtype=np.float64))
    r2, per_axis = np.asarray(sweep["r2"]), np.asarray(sweep["r2_axes"])
    if r2.shape != theta.shape or per_axis.shape[0] != theta.shape[0]:
        raise ValueError(f"theta {theta.shape}, r2 {r2.shape}, r2_axes {per_axis.shape}: expected one row per angle")
    fig = Figure(figsize=(6.0, 4.0), layout="constrained")
    ax = fig.subplots()
    ax.plot(theta, r2, "o-", color="k", linewidth=1.6, label="latent R² (mean over axes)")
    if per_axis.shape[1] > 1:
        for axis in range(per_axis.shape[1]):
            ax.plot(theta, per_axis[:, axis], "--", linewidth=1.0, label=f"rotated axis {axis + 1}")
    ax.set_xlabel("rotation of hand position θ (degrees)")
    ax.set_ylabel("R²")
    ax.set_xticks(np.linspace(theta[0], theta[-1], 7) if len(theta) > 1 else theta)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    if title:
        ax.set_title(title, fontsize="medium")
    return save_figure(fig, path)


def write_behaviour_figures(figure_dir: str | os.PathLike, behaviour: BehaviourEvaluation) -> list[Path]:
    """``reach_trajectories.png`` and (2-D behaviour) ``rotation_sweep.png`` in ``figure_dir``."""
    figure_dir = Path(figure_dir)
    written = []
    if behaviour.position.shape[1] == 2:
        written.append(
            plot_reach_trajectories(
                behaviour.position,
                behaviour.aligned,
                behaviour.trial,
                behaviour.time,
                figure_dir / "reach_trajectories.png",
                direction=behaviour.direction,
                title=f"latent R² = {behaviour.metrics['latent_r2']:.3f}",
            )
        )
    if behaviour.sweep is not None:
        written.append(plot_rotation_sweep(behaviour.sweep, figure_dir / "rotation_sweep.png", title="rotation sweep"))
    return written
