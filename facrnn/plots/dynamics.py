"""Figures of the rollout measures (:mod:`facrnn.evaluation.dynamics`): k-step R² curves across methods,
generated vs encoded attractors per group, the group coupling matrix.

Object-oriented matplotlib (no pyplot), like :mod:`facrnn.plots.fit`; each function writes one
PNG and returns its path.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from mpl_toolkits.mplot3d import Axes3D  # noqa: F401  (registers the '3d' projection)

from facrnn.core.grouping import group_slices
from facrnn.plots.save import save_figure

__all__ = [
    "MAX_ATTRACTOR_POINTS",
    "plot_attractors",
    "plot_coupling",
    "plot_rollout_curves",
    "rollout_curves_from_rows",
    "write_dynamics_figures",
]


def plot_rollout_curves(
    curves: Mapping[str, np.ndarray | Sequence[np.ndarray]],
    path: str | os.PathLike,
    title: str = "k-step-ahead prediction (held-out starts)",
) -> Path:
    """R² of k-step-ahead predictions vs k, one line per method (mean ± SE over seeds).

    Parameters
    ----------
    curves : mapping of method name -> (K_max,) or (seeds, K_max) array
    path : output PNG
    """
    fig = Figure(figsize=(6.0, 4.0), layout="constrained")
    ax = fig.add_subplot()
    for index, (name, values) in enumerate(curves.items()):
        values = np.atleast_2d(np.asarray(values, dtype=np.float64))
        values = values[:, np.isfinite(values).any(axis=0)]  # horizons beyond the trial length
        steps = np.arange(1, values.shape[1] + 1)
        mean = np.nanmean(values, axis=0)
        colour = f"C{index % 10}"
        label = name if values.shape[0] == 1 else f"{name} (n={values.shape[0]})"
        ax.plot(steps, mean, color=colour, marker="o", markersize=3, label=label)
        if values.shape[0] > 1:
            error = np.nanstd(values, axis=0, ddof=1) / np.sqrt(values.shape[0])
            ax.fill_between(steps, mean - error, mean + error, color=colour, alpha=0.2, linewidth=0)
    ax.axhline(0.0, color="0.6", linewidth=0.8)
    ax.set_xlabel("steps ahead k")
    ax.set_ylabel("R² of decoded prediction")
    ax.set_title(title, fontsize="medium")
    ax.legend(fontsize="small")
    return save_figure(fig, path)


#: states drawn per trajectory of :func:`plot_attractors` (a 3-D line of 100k vertices takes
#: seconds to render and shows no more than its first few thousand)
MAX_ATTRACTOR_POINTS = 2000


def plot_attractors(
    encoded: np.ndarray,
    generated: np.ndarray,
    group_sizes: Sequence[int],
    path: str | os.PathLike,
    title: str = "encoded (data) vs freely generated latent states",
    max_points: int = MAX_ATTRACTOR_POINTS,
) -> Path:
    """Per latent group: the states the data visit beside those the free-running model visits.

    Groups of 3 or more dimensions are drawn in 3-D (first three), of 2 in the plane, of 1
    as a time series; axes are named by their latent (``z1``, ``z2``, ...).

    Parameters
    ----------
    encoded, generated : (n, K) arrays
        Posterior means of the data and generated states at the same bins.
    group_sizes : sequence of int
    path : output PNG
    title : str
    max_points : int
        Only the first ``max_points`` states of each trajectory are drawn (said in the title
        when fewer than ``n``).
    """
    if int(max_points) < 1:
        raise ValueError(f"max_points={max_points}: expected a positive integer")
    encoded, generated = np.asarray(encoded), np.asarray(generated)
    if max(len(encoded), len(generated)) > int(max_points):
        title = f"{title} (first {int(max_points):,} of {max(len(encoded), len(generated)):,} bins)"
        encoded, generated = encoded[: int(max_points)], generated[: int(max_points)]
    parts = group_slices(group_sizes)
    fig = Figure(figsize=(4.0 * len(parts), 4.0), layout="constrained")
    fig.suptitle(title, fontsize="medium")
    for index, part in enumerate(parts):
        size = part.stop - part.start
        if size >= 3:
            ax = fig.add_subplot(1, len(parts), index + 1, projection="3d")
            columns = range(part.start, part.start + 3)
            for states, colour, label in ((encoded, "C0", "data (encoded)"), (generated, "C3", "generated")):
                ax.plot(*(states[:, c] for c in columns), color=colour, linewidth=0.6, alpha=0.8, label=label)
            ax.set_xlabel(f"z{part.start + 1}")
            ax.set_ylabel(f"z{part.start + 2}")
            ax.set_zlabel(f"z{part.start + 3}")
            ax.set_box_aspect(None, zoom=0.85)  # constrained layout ignores 3-D labels: keep z's inside
        elif size == 2:
            ax = fig.add_subplot(1, len(parts), index + 1)
            for states, colour, label in ((encoded, "C0", "data (encoded)"), (generated, "C3", "generated")):
                ax.plot(states[:, part.start], states[:, part.start + 1], color=colour, linewidth=0.6, label=label)
            ax.set_xlabel(f"z{part.start + 1}")
            ax.set_ylabel(f"z{part.start + 2}")
        else:
            ax = fig.add_subplot(1, len(parts), index + 1)
            for states, colour, label in ((encoded, "C0", "data (encoded)"), (generated, "C3", "generated")):
                ax.plot(states[:, part.start], color=colour, linewidth=0.8, label=label)
            ax.set_xlabel("time bin")
            ax.set_ylabel(f"z{part.start + 1}")
        ax.set_title(f"group {index + 1} (z{part.start + 1}..z{part.stop})", fontsize="small")
        if index == 0:
            ax.legend(fontsize="x-small")
    return save_figure(fig, path)


def plot_coupling(matrix: np.ndarray, path: str | os.PathLike, coupling: float | None = None) -> Path:
    """Heat map of the group coupling matrix ``C[g, h]`` (group h driving group g).

    Parameters
    ----------
    matrix : (G, G) array
        From :func:`facrnn.evaluation.dynamics.group_coupling`.
    path : output PNG
    coupling : float, optional
        The scalar ``group_coupling``, shown in the title.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    n_groups = matrix.shape[0]
    fig = Figure(figsize=(1.2 * n_groups + 2.5, 1.2 * n_groups + 1.5), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(matrix, cmap="viridis", vmin=0.0, vmax=max(1.0, float(matrix.max())))
    for g in range(n_groups):
        for h in range(n_groups):
            ax.text(h, g, f"{matrix[g, h]:.2f}", ha="center", va="center", color="w" if matrix[g, h] < 0.6 else "k")
    labels = [f"g{g + 1}" for g in range(n_groups)]
    ax.set_xticks(range(n_groups), labels)
    ax.set_yticks(range(n_groups), labels)
    ax.set_xlabel("source group h")
    ax.set_ylabel("target group g")
    suffix = "" if coupling is None else f"\ngroup_coupling = {coupling:.3f}"
    ax.set_title(f"Jacobian block norms (relative){suffix}", fontsize="small")
    fig.colorbar(image, ax=ax, shrink=0.8)
    return save_figure(fig, path)


def write_dynamics_figures(figure_dir: str | os.PathLike, result, group_sizes: Sequence[int]) -> list[Path]:
    """The rollout figures of one evaluated run: ``rollout_r2.png``, ``attractors.png``, ``coupling.png``.

    Parameters
    ----------
    figure_dir : directory
    result : facrnn.evaluation.dynamics.DynamicsResult
    group_sizes : sequence of int
        Grouping of the latents (as used for the coupling).
    """
    figure_dir = Path(figure_dir)
    written = []
    if result.rollout_r2 is not None and len(result.rollout_r2):
        written.append(plot_rollout_curves({"model": result.rollout_r2}, figure_dir / "rollout_r2.png"))
    if result.generation is not None:
        written.append(
            plot_attractors(
                result.generation.encoded_latents,
                result.generation.generated_latents,
                group_sizes,
                figure_dir / "attractors.png",
            )
        )
    if result.coupling_matrix is not None:
        written.append(
            plot_coupling(result.coupling_matrix, figure_dir / "coupling.png", result.metrics.get("group_coupling"))
        )
    return written


def rollout_curves_from_rows(rows: Sequence[Mapping[str, object]], method_key: str = "method") -> dict[str, np.ndarray]:
    """Collect ``rollout_r2_k1..k{K}`` of result rows (one per run) into ``method -> (runs, K)``.

    For :func:`plot_rollout_curves` from ``facrnn.cli.compare``'s rows; runs missing a horizon
    get NaN there.
    """
    curves: dict[str, list[list[float]]] = {}
    horizon = 0
    for row in rows:
        steps = [int(key[len("rollout_r2_k") :]) for key in row if str(key).startswith("rollout_r2_k")]
        horizon = max([horizon, *steps])
    if horizon == 0:
        return {}
    for row in rows:
        values = [row.get(f"rollout_r2_k{k}", float("nan")) for k in range(1, horizon + 1)]
        if all(not isinstance(value, (int, float)) or np.isnan(value) for value in values):
            continue
        curves.setdefault(str(row[method_key]), []).append(
            [float(value) if isinstance(value, (int, float)) else float("nan") for value in values]
        )
    return {method: np.array(values) for method, values in curves.items()}
