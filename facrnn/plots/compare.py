"""Figures of a comparison across methods (``python -m facrnn.cli.compare``).

Object-oriented matplotlib (``Figure`` + Agg canvas, no pyplot), like :mod:`facrnn.plots.fit`.
Each function writes one PNG and returns its path.

- :func:`plot_metric_boxes`: one panel per metric, a box per method, significance marks of
  the paired t-tests against the reference method.
- :func:`plot_latent_overlays`: true latent trajectories with the aligned estimates of
  several methods (3-D for 3-dimensional groups).
- :func:`plot_connectivity_grid`: ``W`` and each ``W_g``, true and per method.
- :func:`plot_permutation_boxes`: group latent R² over every split of the latents into
  groups of the true sizes, per method.
- :func:`plot_rotation_sweeps`: behavioural latent R² against the rotation of the hand
  position, per method (mean over seeds, each seed faint).
- :func:`plot_reach_grid`: held-out hand trajectories and each method's aligned latent
  trajectories, coloured by reach direction.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from mpl_toolkits.mplot3d import Axes3D  # noqa: F401  (registers the '3d' projection)

from facrnn.core.grouping import group_slices
from facrnn.plots.save import save_figure

CMAP = "RdBu_r"

__all__ = [
    "plot_connectivity_grid",
    "plot_latent_overlays",
    "plot_metric_boxes",
    "plot_permutation_boxes",
    "plot_reach_grid",
    "plot_rotation_sweeps",
    "significance_mark",
]


def significance_mark(p_value: float) -> str:
    """``***`` (p < 0.001), ``**`` (< 0.01), ``*`` (< 0.05), ``n.s.``, or ``""`` for NaN."""
    if p_value is None or not math.isfinite(p_value):
        return ""
    if p_value < 0.001:
        return "***"
    if p_value < 0.01:
        return "**"
    if p_value < 0.05:
        return "*"
    return "n.s."


def _method_colour(methods: Sequence[str], method: str) -> str:
    return f"C{list(methods).index(method) % 10}"


def plot_metric_boxes(
    values: Mapping[str, Mapping[str, Sequence[float]]],
    methods: Sequence[str],
    path: str | os.PathLike,
    reference: str,
    p_values: Mapping[str, Mapping[str, float]] | None = None,
    n_columns: int = 4,
) -> Path:
    """Box plots per metric across methods, seeds as points, significance marks vs ``reference``.

    Parameters
    ----------
    values : dict metric -> dict method -> values
        One value per run (seed).
    methods : sequence of str
        Box order (methods absent from a metric are left empty).
    path : path of the PNG.
    reference : str
        The method the others are tested against (its box is outlined thicker).
    p_values : dict metric -> dict baseline -> p, optional
        Paired t-test p-values, drawn as ``*``/``**``/``***``/``n.s.`` above each box.
    """
    metrics = list(values)
    if not metrics:
        raise ValueError("plot_metric_boxes: no metrics to plot; expected at least one")
    n_columns = min(n_columns, len(metrics))
    n_rows = math.ceil(len(metrics) / n_columns)
    fig = Figure(figsize=(3.4 * n_columns, 2.9 * n_rows), layout="constrained")
    axes = fig.subplots(n_rows, n_columns, squeeze=False)
    positions = np.arange(len(methods))
    rng = np.random.default_rng(0)
    for ax, metric in zip(axes.ravel(), metrics):
        data = [np.asarray(values[metric].get(method, []), dtype=float) for method in methods]
        data = [column[np.isfinite(column)] for column in data]
        present = [i for i, column in enumerate(data) if column.size]
        if present:
            boxes = ax.boxplot(
                [data[i] for i in present], positions=positions[present], widths=0.6, patch_artist=True, showfliers=False
            )
            for i, box in zip(present, boxes["boxes"]):
                box.set_facecolor(_method_colour(methods, methods[i]))
                box.set_alpha(0.35)
                box.set_linewidth(2.0 if methods[i] == reference else 1.0)
            for i in present:
                jitter = rng.uniform(-0.12, 0.12, data[i].size)
                ax.plot(positions[i] + jitter, data[i], "o", markersize=3, color=_method_colour(methods, methods[i]))
        top = max((column.max() for column in data if column.size), default=1.0)
        bottom = min((column.min() for column in data if column.size), default=0.0)
        span = (top - bottom) or 1.0
        if p_values:
            for i, method in enumerate(methods):
                mark = significance_mark(p_values.get(metric, {}).get(method, float("nan")))
                if mark:
                    ax.text(positions[i], top + 0.06 * span, mark, ha="center", va="bottom", fontsize=8)
        ax.set_ylim(bottom - 0.08 * span, top + 0.22 * span)
        ax.set_xticks(positions, methods, rotation=35, ha="right", fontsize=7)
        ax.set_title(metric, fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
    for ax in axes.ravel()[len(metrics) :]:
        ax.set_axis_off()
    fig.suptitle(f"per-seed metrics; marks: paired t-test of {reference} vs each method", fontsize=10)
    return save_figure(fig, path)


def plot_latent_overlays(
    true_latents: np.ndarray,
    aligned: Mapping[str, np.ndarray],
    group_sizes: Sequence[int],
    path: str | os.PathLike,
    group_scores: Mapping[str, Sequence[float]] | None = None,
    max_bins: int = 400,
) -> Path:
    """True latent trajectories (dark) with each method's aligned estimate, one row per true group.

    Parameters
    ----------
    true_latents : (T, K) array
    aligned : dict method -> (T, K) array
        Each method's latents aligned group-wise to the truth (NaN columns: unmatched).
    group_sizes : sequence of int
        True group sizes. Groups of 3 (or more: the first 3) are drawn in 3-D, 2 in 2-D,
        1 as a time series.
    group_scores : dict method -> per-group R², optional
        Shown in the panel titles.
    max_bins : int
        First bins drawn.
    """
    true = np.asarray(true_latents, dtype=float)[:max_bins]
    methods = list(aligned)
    sizes = [int(size) for size in group_sizes]
    if sum(sizes) != true.shape[1]:
        raise ValueError(f"group_sizes={sizes} sums to {sum(sizes)}: expected K={true.shape[1]} of true_latents")
    fig = Figure(figsize=(2.8 * len(methods), 2.8 * len(sizes)), layout="constrained")
    for g, part in enumerate(group_slices(sizes)):
        dims = list(range(part.start, part.stop))[:3]
        for m, method in enumerate(methods):
            estimate = np.asarray(aligned[method], dtype=float)[:max_bins]
            position = g * len(methods) + m + 1
            colour = f"C{m % 10}"
            if len(dims) == 3:
                ax = fig.add_subplot(len(sizes), len(methods), position, projection="3d")
                if not np.all(np.isnan(estimate[:, dims])):
                    ax.plot(*estimate[:, dims].T, color=colour, linewidth=0.8, alpha=0.7)
                ax.plot(*true[:, dims].T, color="0.15", linewidth=0.6)
                ax.set_xticks([]), ax.set_yticks([]), ax.set_zticks([])
            else:
                ax = fig.add_subplot(len(sizes), len(methods), position)
                if not np.all(np.isnan(estimate[:, dims])):
                    shown = estimate[:, dims].T if len(dims) == 2 else (np.arange(len(true)), estimate[:, dims[0]])
                    ax.plot(*shown, color=colour, linewidth=0.8, alpha=0.7)
                series = true[:, dims].T if len(dims) == 2 else (np.arange(len(true)), true[:, dims[0]])
                ax.plot(*series, color="0.15", linewidth=0.6)
                ax.set_xticks([]), ax.set_yticks([])
            title = f"{method}, group {g + 1}"
            if group_scores is not None and method in group_scores:
                title += f"\nR² = {group_scores[method][g]:.2f}"
            ax.set_title(title, fontsize=8)
    fig.suptitle("true latents (dark) and aligned estimates (colour), held-out bins", fontsize=10)
    return save_figure(fig, path)


def plot_connectivity_grid(
    true_w: np.ndarray,
    true_group_w: np.ndarray,
    estimates: Mapping[str, tuple[np.ndarray, np.ndarray]],
    path: str | os.PathLike,
) -> Path:
    """Heat maps of ``W`` and each ``W_g``: the truth in the first row, one row per method.

    Parameters
    ----------
    true_w : (N, N) array
    true_group_w : (G, N, N) array
    estimates : dict method -> (W (N, N), W_groups (G, N, N))
        Each method's group connectivities already ordered like the true groups (NaN
        where unmatched).
    """
    rows = [("true", np.asarray(true_w), np.asarray(true_group_w))]
    rows += [(method, np.asarray(w), np.asarray(groups)) for method, (w, groups) in estimates.items()]
    n_columns = 1 + true_group_w.shape[0]
    limit = float(np.nanmax(np.abs(np.asarray(true_w)))) or 1.0
    fig = Figure(figsize=(2.3 * n_columns + 0.8, 2.1 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), n_columns, squeeze=False)
    image = None
    for r, (name, w, groups) in enumerate(rows):
        panels = [("W", w)] + [(f"W_{g + 1}", groups[g]) for g in range(groups.shape[0])]
        for c, (label, matrix) in enumerate(panels[:n_columns]):
            ax = axes[r, c]
            image = ax.imshow(matrix, cmap=CMAP, vmin=-limit, vmax=limit, interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(label, fontsize=9)
            if c == 0:
                ax.set_ylabel(name, fontsize=9)
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.6, label="weight")
    fig.suptitle("connectivity W = A B and sub-circuits W_g (groups matched to the truth)", fontsize=10)
    return save_figure(fig, path)


def plot_permutation_boxes(
    scores: Mapping[str, Sequence[float]],
    own_scores: Mapping[str, Sequence[float]],
    path: str | os.PathLike,
    n_partitions: int | None = None,
) -> Path:
    """Group latent R² over every split into groups of the true sizes, pooled over seeds.

    Parameters
    ----------
    scores : dict method -> all partition scores of all its runs
    own_scores : dict method -> per-run score of the grouping the method reports
        (its own groups, or consecutive components for ungrouped models); drawn as points.
    n_partitions : int, optional
        Partitions per run, for the title.
    """
    methods = list(scores)
    fig = Figure(figsize=(1.3 * len(methods) + 2.5, 3.6), layout="constrained")
    ax = fig.subplots()
    positions = np.arange(len(methods))
    boxes = ax.boxplot(
        [np.asarray(scores[m], dtype=float) for m in methods],
        positions=positions,
        widths=0.6,
        patch_artist=True,
        showfliers=True,
    )
    for i, box in enumerate(boxes["boxes"]):
        box.set_facecolor(f"C{i % 10}")
        box.set_alpha(0.3)
    rng = np.random.default_rng(0)
    for i, method in enumerate(methods):
        own = np.asarray(own_scores.get(method, []), dtype=float)
        ax.plot(
            positions[i] + rng.uniform(-0.1, 0.1, own.size),
            own,
            "k^",
            markersize=4,
            label="reported grouping" if i == 0 else None,
        )
    ax.set_xticks(positions, methods, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("group latent R²")
    suffix = f" ({n_partitions} per run)" if n_partitions else ""
    ax.set_title(f"permutation analysis: every split of the latents into true-size groups{suffix}", fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    return save_figure(fig, path)


def plot_rotation_sweeps(
    sweeps: Mapping[str, Sequence[tuple[np.ndarray, np.ndarray]]], path: str | os.PathLike, ylabel: str = "latent R²"
) -> Path:
    """Latent R² against the rotation angle of the hand position, one colour per method.

    Parameters
    ----------
    sweeps : mapping
        ``method -> [(theta_deg (n_angles,), r2 (n_angles,)), ...]``, one pair per seed.
    path : str or os.PathLike
        PNG to write.
    """
    methods = list(sweeps)
    fig = Figure(figsize=(6.5, 4.2), layout="constrained")
    ax = fig.subplots()
    for method in methods:
        colour = _method_colour(methods, method)
        curves = [(np.asarray(theta, dtype=np.float64), np.asarray(r2, dtype=np.float64)) for theta, r2 in sweeps[method]]
        for theta, r2 in curves:
            ax.plot(theta, r2, color=colour, linewidth=0.6, alpha=0.25)
        theta = curves[0][0]
        same_angles = [r2 for angles, r2 in curves if angles.shape == theta.shape and np.allclose(angles, theta)]
        ax.plot(
            theta,
            np.mean(same_angles, axis=0),
            "o-",
            color=colour,
            linewidth=1.8,
            markersize=3,
            label=f"{method} (n={len(curves)})",
        )
    ax.set_xlabel("rotation of hand position θ (degrees)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="x-small")
    return save_figure(fig, path)


def plot_reach_grid(
    position: np.ndarray,
    aligned: Mapping[str, np.ndarray],
    trial: np.ndarray,
    time: np.ndarray,
    path: str | os.PathLike,
    direction: np.ndarray | None = None,
    scores: Mapping[str, float] | None = None,
) -> Path:
    """Hand trajectories beside each method's aligned integrated latents (same bins).

    Parameters
    ----------
    position : (n, 2) array
        Hand position of the scored bins.
    aligned : mapping
        ``method -> (n, 2)`` integrated latents mapped onto the position.
    trial, time : (n,) int arrays
    path : str or os.PathLike
        PNG to write.
    direction : (n,) int array, optional
        Reach direction of every bin (colours); by trial otherwise.
    scores : mapping, optional
        ``method -> latent R²`` shown in the panel titles.
    """
    from matplotlib import colormaps

    trial, time = np.asarray(trial).ravel(), np.asarray(time).ravel()
    trials = np.unique(trial)
    cmap = colormaps["hsv"]
    first_rows = np.array([np.flatnonzero(trial == t)[0] for t in trials])
    if direction is not None:
        direction = np.asarray(direction).ravel()
        labels = np.unique(direction)
        colours = [cmap(np.searchsorted(labels, direction[row]) / max(len(labels), 1)) for row in first_rows]
    else:
        colours = [cmap(i / max(len(trials), 1)) for i in range(len(trials))]
    panels = {
        "hand position": np.asarray(position, dtype=np.float64),
        **{m: np.asarray(a, dtype=np.float64) for m, a in aligned.items()},
    }
    columns = min(len(panels), 4)
    rows_of_panels = math.ceil(len(panels) / columns)
    fig = Figure(figsize=(3.2 * columns, 3.1 * rows_of_panels), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows_of_panels, columns)).ravel()
    for ax, (name, points) in zip(axes, panels.items()):
        for index, current in enumerate(trials):
            rows = np.flatnonzero(trial == current)
            rows = rows[np.argsort(time[rows])]
            ax.plot(points[rows, 0], points[rows, 1], color=colours[index], linewidth=0.8, alpha=0.8)
        score = (scores or {}).get(name)
        label = name.replace("[", "\n[").replace(",", ",\n")  # long config labels: one key per line
        ax.set_title(label if score is None else f"{label}\nlatent R² {score:.3f}", fontsize="x-small")
        ax.set_aspect("equal", adjustable="datalim")
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize="x-small")
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    return save_figure(fig, path)
