"""Figures of one fitted model: latents, connectivity heat maps, training curves and restarts.

Everything here uses matplotlib's object-oriented API (``matplotlib.figure.Figure``
and ``Figure.savefig``) without pyplot, so no global backend or figure state is
touched: the PNGs are rendered by the Agg canvas whatever backend the caller uses.
Each function writes one PNG and returns its path.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from mpl_toolkits.mplot3d import Axes3D  # noqa: F401  (registers the '3d' projection)

from facrnn.core.grouping import group_slices
from facrnn.plots.save import save_figure

TRUE_LABEL = "true"
ESTIMATE_LABEL = "learned (aligned)"
# True and learned latents differ in hue family and line style; within a family, one shade per dimension.
TRUE_CMAP = "Blues"
ESTIMATE_CMAP = "Oranges"
TRUE_STYLE = {"linestyle": "-", "linewidth": 1.4}
ESTIMATE_STYLE = {"linestyle": "--", "linewidth": 1.2}
CONNECTIVITY_CMAP = "RdBu_r"
# Panel order of the training curves; other logged terms follow alphabetically.
LOSS_TERM_ORDER = ("loss", "nll", "kl", "partial_corr", "overlap")
# Most points drawn per training curve (longer curves are thinned evenly, the last point kept):
# a 600-px panel shows no more, and fewer vertices render faster.
MAX_CURVE_POINTS = 1000
SPLITS = ("train", "val")


def _check_group_sizes(group_sizes: Sequence[int], total: int, name: str, what: str) -> list[int]:
    try:
        sizes = [int(size) for size in group_sizes]
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name}={group_sizes!r}: expected a sequence of positive integers") from error
    if len(sizes) == 0 or any(size < 1 for size in sizes):
        raise ValueError(f"{name}={list(group_sizes)}: expected a non-empty list of positive integers")
    if sum(sizes) != total:
        raise ValueError(f"{name}={sizes} sums to {sum(sizes)} but {what} has K={total} latent columns")
    return sizes


# --------------------------------------------------------------------------- latents


def _shades(cmap: str, n: int) -> list[tuple[float, float, float, float]]:
    """``n`` distinct dark-to-mid shades of ``cmap`` (dark first; never the near-white end)."""
    colours = colormaps[cmap]
    return [colours(value) for value in np.linspace(0.9, 0.5, n)] if n > 1 else [colours(0.8)]


def _time_series_panel(ax: Axes, true: np.ndarray, estimate: np.ndarray, columns: range, title: str) -> None:
    """True (blue shades, solid) and estimate (orange shades, dashed) of ``columns``, one shade per dimension."""
    time = np.arange(true.shape[0])
    true_colours, estimate_colours = _shades(TRUE_CMAP, len(columns)), _shades(ESTIMATE_CMAP, len(columns))
    for i, column in enumerate(columns):
        ax.plot(time, true[:, column], color=true_colours[i], label=f"{TRUE_LABEL} z{column + 1}", **TRUE_STYLE)
        if not np.all(np.isnan(estimate[:, column])):
            ax.plot(
                time, estimate[:, column], color=estimate_colours[i], label=f"{ESTIMATE_LABEL} z{column + 1}", **ESTIMATE_STYLE
            )
    ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_xlabel("time bin")
    ax.set_ylabel("latent")
    ax.set_title(title, fontsize="medium")


def _state_space_panel(fig: Figure, spec, true: np.ndarray, estimate: np.ndarray, columns: range) -> None:
    """Trajectory of the group in its own state space (3-D, 2-D, or a time series if 1-D)."""
    has_estimate = not np.any(np.all(np.isnan(estimate[:, columns.start : columns.stop]), axis=0))
    shown = list(columns)[:3]
    labels = [f"z{column + 1}" for column in shown]
    style_true = {**TRUE_STYLE, "color": _shades(TRUE_CMAP, 1)[0], "linewidth": 1.0, "label": TRUE_LABEL}
    style_est = {**ESTIMATE_STYLE, "color": _shades(ESTIMATE_CMAP, 1)[0], "linewidth": 1.0, "label": ESTIMATE_LABEL}
    if len(shown) == 3:
        ax = fig.add_subplot(spec, projection="3d")
        ax.plot(*(true[:, c] for c in shown), **style_true)
        if has_estimate:
            ax.plot(*(estimate[:, c] for c in shown), **style_est)
        ax.set_xlabel(labels[0])
        ax.set_ylabel(labels[1])
        ax.set_zlabel(labels[2])
        ax.set_box_aspect(None, zoom=0.85)  # constrained layout ignores 3-D labels: keep z's inside
    elif len(shown) == 2:
        ax = fig.add_subplot(spec)
        ax.plot(true[:, shown[0]], true[:, shown[1]], **style_true)
        if has_estimate:
            ax.plot(estimate[:, shown[0]], estimate[:, shown[1]], **style_est)
        ax.set_xlabel(labels[0])
        ax.set_ylabel(labels[1])
    else:
        ax = fig.add_subplot(spec)
        time = np.arange(true.shape[0])
        ax.plot(time, true[:, shown[0]], **style_true)
        if has_estimate:
            ax.plot(time, estimate[:, shown[0]], **style_est)
        ax.set_xlabel("time bin")
        ax.set_ylabel(labels[0])
    title = "state space"
    if len(columns) > 3:
        title += f" (first 3 of {len(columns)} dims)"
    ax.set_title(title, fontsize="medium")
    ax.legend(fontsize="x-small", loc="upper right", framealpha=0.7)


def plot_latents(
    true_latents: np.ndarray,
    aligned_latents: np.ndarray,
    group_sizes: Sequence[int],
    path: str | os.PathLike,
    title: str = "",
    max_bins: int = 500,
) -> Path:
    """True latents beside the aligned model estimate, one row per true group.

    Each row has a time-series panel and a state-space panel: 3-D for a group of 3
    dimensions (the first 3 for larger groups), 2-D for 2, a time series for 1. True
    traces are solid in shades of blue, learned ones dashed in shades of orange (one
    shade per dimension), each named in the panel's legend. Estimate columns that are
    all NaN (a true group left unmatched by the alignment) are not drawn.

    Parameters
    ----------
    true_latents : np.ndarray
        ``(T, K)`` true latents.
    aligned_latents : np.ndarray
        ``(T, K)`` model latents aligned to the true ones; NaN columns are skipped.
    group_sizes : sequence of int
        True group sizes ``[H_1, ..., H_G]``, summing to ``K``.
    path : str or os.PathLike
        PNG to write (parent folders are created).
    title : str
        Figure title; none when empty.
    max_bins : int
        Only the first ``max_bins`` time bins are drawn.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    ValueError
        If the arrays are not 2-D of the same shape, ``group_sizes`` does not sum to
        ``K``, or ``max_bins`` is not positive.
    """
    true = np.asarray(true_latents, dtype=np.float64)
    estimate = np.asarray(aligned_latents, dtype=np.float64)
    if true.ndim != 2:
        raise ValueError(f"true_latents has shape {true.shape}: expected 2-D (T, K)")
    if estimate.shape != true.shape:
        raise ValueError(
            f"aligned_latents has shape {estimate.shape} but true_latents has shape {true.shape}: expected the same (T, K)"
        )
    if true.shape[0] == 0:
        raise ValueError(f"true_latents has shape {true.shape}: expected at least one time bin")
    sizes = _check_group_sizes(group_sizes, true.shape[1], "group_sizes", f"true_latents {true.shape}")
    if int(max_bins) < 1:
        raise ValueError(f"max_bins={max_bins}: expected a positive integer")
    true, estimate = true[: int(max_bins)], estimate[: int(max_bins)]

    n_rows = len(sizes)
    fig = Figure(figsize=(12.0, 3.2 * n_rows), layout="constrained")
    grid = fig.add_gridspec(n_rows, 2, width_ratios=[2.0, 1.0])
    for g, part in enumerate(group_slices(sizes)):
        columns = range(part.start, part.stop)
        dims = f"z{part.start + 1}" if len(columns) == 1 else f"z{part.start + 1}–z{part.stop}"
        row_title = f"group {g + 1} ({dims})"
        if np.all(np.isnan(estimate[:, part])):
            row_title += ": no matched estimate"
        _time_series_panel(fig.add_subplot(grid[g, 0]), true, estimate, columns, row_title)
        _state_space_panel(fig, grid[g, 1], true, estimate, columns)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def _with_breaks(time: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``time`` and ``values`` (n, ...) with a NaN row inserted wherever time does not increase
    (the start of the next trial), so that one line never joins two trials."""
    breaks = np.flatnonzero(np.diff(time) <= 0) + 1
    if breaks.size == 0:
        return time, values
    gap = np.full((1, *values.shape[1:]), np.nan)
    time_parts = np.split(time, breaks)
    value_parts = np.split(values, breaks)
    time_out = np.concatenate([np.concatenate([part, [np.nan]]) for part in time_parts])[:-1]
    values_out = np.concatenate([np.concatenate([part, gap]) for part in value_parts])[:-1]
    return time_out, values_out


def plot_posterior_latents(
    latents: np.ndarray,
    group_sizes: Sequence[int],
    path: str | os.PathLike,
    title: str = "",
    time: np.ndarray | None = None,
    max_bins: int = 500,
    time_label: str = "time bin",
) -> Path:
    """Posterior means over time, one panel per latent group: the latents figure of data
    without ground truth.

    Each latent has its own colour (``C0``, ``C1``, ... by its index in ``z``) and is named in
    its panel's legend; every panel spans the same bins.

    Parameters
    ----------
    latents : np.ndarray
        ``(n, K)`` posterior means, bins in time order.
    group_sizes : sequence of int
        The model's group sizes ``[H_1, ..., H_G]``, summing to ``K``.
    path : str or os.PathLike
        PNG to write (parent folders are created).
    title : str
        Figure title; none when empty.
    time : np.ndarray, optional
        ``(n,)`` time of every bin (e.g. the bin index within its trial); a line is broken
        wherever it does not increase, so trials are not joined. Default: ``0 .. n-1``.
    max_bins : int
        Only the first ``max_bins`` bins are drawn.
    time_label : str
        Label of the time axis.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    ValueError
        If ``latents`` is not a non-empty 2-D array, ``group_sizes`` does not sum to ``K``,
        ``time`` has not one entry per bin, or ``max_bins`` is not positive.
    """
    values = np.asarray(latents, dtype=np.float64)
    if values.ndim != 2 or values.shape[0] == 0 or values.shape[1] == 0:
        raise ValueError(f"latents has shape {values.shape}: expected 2-D (n, K) with at least one bin")
    sizes = _check_group_sizes(group_sizes, values.shape[1], "group_sizes", f"latents {values.shape}")
    if time is None:
        times = np.arange(values.shape[0], dtype=np.float64)
    else:
        times = np.asarray(time, dtype=np.float64).ravel()
        if times.shape != (values.shape[0],):
            raise ValueError(f"time has shape {np.shape(time)}: expected ({values.shape[0]},), one entry per bin of latents")
    if int(max_bins) < 1:
        raise ValueError(f"max_bins={max_bins}: expected a positive integer")
    times, values = _with_breaks(times[: int(max_bins)], values[: int(max_bins)])

    fig = Figure(figsize=(9.0, 2.4 * len(sizes) + 0.6), layout="constrained")
    axes = fig.subplots(len(sizes), 1, squeeze=False)[:, 0]
    for g, (ax, part) in enumerate(zip(axes, group_slices(sizes))):
        for column in range(part.start, part.stop):
            ax.plot(times, values[:, column], color=f"C{column % 10}", linewidth=1.1, label=f"z{column + 1}")
        dims = f"z{part.start + 1}" if part.stop - part.start == 1 else f"z{part.start + 1}–z{part.stop}"
        ax.set_title(f"group {g + 1} ({dims})", fontsize="medium")
        ax.set_xlabel(time_label)
        ax.set_ylabel("posterior mean")
        ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


# --------------------------------------------------------------------- connectivity


def _symmetric_limit(*matrices: np.ndarray) -> float:
    values = [np.nanmax(np.abs(m)) for m in matrices if m.size and not np.all(np.isnan(m))]
    limit = float(max(values)) if values else 0.0
    return limit if limit > 0 and math.isfinite(limit) else 1.0


def _heat_map(fig: Figure, ax: Axes, matrix: np.ndarray, limit: float, title: str, colorbar: bool = True):
    image = ax.imshow(matrix, cmap=CONNECTIVITY_CMAP, vmin=-limit, vmax=limit, interpolation="nearest", aspect="equal")
    ax.set_title(title, fontsize="medium")
    ax.set_xlabel("presynaptic neuron")
    ax.set_ylabel("postsynaptic neuron")
    if colorbar:
        fig.colorbar(image, ax=ax, shrink=0.85)
    return image


def _row_colorbar(fig: Figure, axes: Sequence[Axes], image) -> None:
    """One colour bar for a row of heat maps that share their limits (one per panel would
    double the axes that the layout has to place)."""
    if image is not None:
        fig.colorbar(image, ax=list(axes), shrink=0.85)


def _check_square(matrix: np.ndarray | None, name: str, n: int | None = None) -> np.ndarray | None:
    if matrix is None:
        return None
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"{name} has shape {matrix.shape}: expected a square 2-D (N, N) matrix")
    if n is not None and matrix.shape[0] != n:
        raise ValueError(f"{name} has shape {matrix.shape}: expected ({n}, {n}) like est_w")
    return matrix


def _check_stack(stack: np.ndarray | None, name: str, n: int) -> np.ndarray | None:
    if stack is None:
        return None
    stack = np.asarray(stack, dtype=np.float64)
    if stack.ndim != 3 or stack.shape[1:] != (n, n) or stack.shape[0] < 1:
        raise ValueError(f"{name} has shape {stack.shape}: expected 3-D (G, {n}, {n}) with N from est_w")
    return stack


def _check_matching(matching: Sequence[tuple[int, int]], n_true: int, n_est: int) -> list[tuple[int, int]]:
    pairs = []
    for pair in matching:
        try:
            true_g, est_g = (int(index) for index in pair)
        except (TypeError, ValueError) as error:
            raise ValueError(f"matching={list(matching)!r}: expected (true group, learned group) pairs") from error
        if not (0 <= true_g < n_true and 0 <= est_g < n_est):
            raise ValueError(
                f"matching pair {(true_g, est_g)} out of range: true_group_w has {n_true} groups and "
                f"est_group_w has {n_est}; expected (true group, learned group) pairs of 0-based indices"
            )
        pairs.append((true_g, est_g))
    for position in (0, 1):
        used = [pair[position] for pair in pairs]
        if len(set(used)) != len(used):
            side = "true" if position == 0 else "learned"
            raise ValueError(f"matching={pairs}: a {side} group appears in more than one pair")
    return pairs


def plot_connectivity(
    est_w: np.ndarray,
    est_group_w: np.ndarray,
    path: str | os.PathLike,
    true_w: np.ndarray | None = None,
    true_group_w: np.ndarray | None = None,
    matching: Sequence[tuple[int, int]] | None = None,
    truth_label: str = TRUE_LABEL,
) -> Path:
    """Heat maps of the learned connectivity and its per-group parts, beside the truth if known.

    The top row is ``W`` (learned) beside ``W*`` (true, or ``truth_label``). Each further row shows one
    group: with ``true_group_w``, a row per true group ``W*_g`` with its matched
    learned ``W_h`` on its left (blank if unmatched), then a row per learned group
    left unmatched; without it, one row per learned ``W_g``. Colour limits are
    symmetric around 0 and shared within a row, with one colour bar per row; titles number
    groups from 1.

    Parameters
    ----------
    est_w : np.ndarray
        ``(N, N)`` learned connectivity ``W = A B``.
    est_group_w : np.ndarray
        ``(G, N, N)`` learned per-group connectivities ``W_g``.
    path : str or os.PathLike
        PNG to write (parent folders are created).
    true_w : np.ndarray, optional
        ``(N, N)`` true connectivity ``W*``.
    true_group_w : np.ndarray, optional
        ``(G*, N, N)`` true per-group connectivities ``W*_g``.
    matching : sequence of (int, int), optional
        0-based ``(true group, learned group)`` pairs; by default group ``i`` with
        group ``i`` for ``i < min(G*, G)``. Ignored without ``true_group_w``.
    truth_label : str
        What ``W*`` is, in the panel titles: ``"true"`` for a simulation's connectivity,
        ``"reference"`` where ``W*`` is itself a fit (an imaging recording's ``A* B*``, whose
        ``B*`` is the ridge fit ``datamodules.mouse_voltage.oracle_encoder``).

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    ValueError
        If a matrix has the wrong shape (``est_w`` not square, ``est_group_w`` not
        ``(G, N, N)``, ...) or a matching pair is out of range or repeated.
    """
    w = _check_square(est_w, "est_w")
    n = w.shape[0]
    groups = _check_stack(est_group_w, "est_group_w", n)
    if groups is None:
        raise ValueError("est_group_w is None: expected a 3-D (G, N, N) array")
    w_true = _check_square(true_w, "true_w", n)
    groups_true = _check_stack(true_group_w, "true_group_w", n)

    # Rows of (learned index | None, true index | None).
    rows: list[tuple[int | None, int | None]] = []
    if groups_true is None:
        rows = [(g, None) for g in range(groups.shape[0])]
    else:
        if matching is None:
            matching = [(g, g) for g in range(min(groups_true.shape[0], groups.shape[0]))]
        pairs = dict(_check_matching(matching, groups_true.shape[0], groups.shape[0]))
        rows = [(pairs.get(g), g) for g in range(groups_true.shape[0])]
        rows += [(h, None) for h in range(groups.shape[0]) if h not in pairs.values()]

    n_cols = 2 if (w_true is not None or groups_true is not None) else 1
    n_rows = 1 + len(rows)
    fig = Figure(figsize=(4.6 * n_cols, 3.8 * n_rows), layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False)

    limit = _symmetric_limit(w, *([] if w_true is None else [w_true]))
    image = _heat_map(fig, axes[0, 0], w, limit, "W (learned)", colorbar=False)
    if n_cols == 2:
        if w_true is not None:
            _heat_map(fig, axes[0, 1], w_true, limit, f"W* ({truth_label})", colorbar=False)
        else:
            axes[0, 1].set_axis_off()
    _row_colorbar(fig, axes[0], image)  # one per row: a row shares its colour limits

    for row, (est_g, true_g) in enumerate(rows, start=1):
        shown = [] if est_g is None else [groups[est_g]]
        shown += [] if true_g is None else [groups_true[true_g]]
        limit = _symmetric_limit(*shown)
        image = None
        if est_g is not None:
            image = _heat_map(fig, axes[row, 0], groups[est_g], limit, f"W_{est_g + 1} (learned)", colorbar=False)
        else:
            axes[row, 0].set_axis_off()
            axes[row, 0].set_title(f"no learned group matched to W*_{true_g + 1}", fontsize="medium")
        if n_cols == 2:
            if true_g is not None:
                true_title = f"W*_{true_g + 1} ({truth_label})"
                image = _heat_map(fig, axes[row, 1], groups_true[true_g], limit, true_title, colorbar=False)
            else:
                axes[row, 1].set_axis_off()
                if groups_true is not None:
                    axes[row, 1].set_title("(unmatched learned group)", fontsize="medium")
        _row_colorbar(fig, axes[row], image)
    return save_figure(fig, path)


def loading_order(matrix: np.ndarray) -> np.ndarray:
    """Units of an ``(N, N)`` connectivity sorted by their loading on its leading component.

    The loading is the first left singular vector (for a rank-1 ``W_g = a bᵀ`` that is ``a``
    up to scale), its sign fixed so that its largest-magnitude entry is positive.

    Returns
    -------
    (N,) int array of unit indices, lowest loading first.
    """
    matrix = _check_square(matrix, "matrix")
    lead = np.linalg.svd(matrix)[0][:, 0]
    if lead[np.argmax(np.abs(lead))] < 0:
        lead = -lead
    return np.argsort(lead, kind="stable")


def plot_sorted_connectivity(
    est_w: np.ndarray, est_group_w: np.ndarray, path: str | os.PathLike, percentile: float = 99.0
) -> Path:
    """``W`` and each ``W_g`` with units sorted by their loading, for large recorded networks.

    Rows and columns of each panel are reordered by :func:`loading_order` of that panel's
    matrix, which turns a low-rank ``W_g`` into a smooth, readable pattern even for 150+
    units. Colour limits are symmetric at the ``percentile`` of the absolute entries, so a
    few large weights do not wash out the rest.

    Parameters
    ----------
    est_w : (N, N) array
        Learned ``W = A B``.
    est_group_w : (G, N, N) array
        Learned ``W_g``.
    path : str or os.PathLike
        PNG to write.
    percentile : float
        Colour limit, in percent of ``|W|`` entries (100 = the maximum).
    """
    w = _check_square(est_w, "est_w")
    groups = _check_stack(est_group_w, "est_group_w", w.shape[0])
    if groups is None:
        raise ValueError("est_group_w is None: expected a 3-D (G, N, N) array")
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile={percentile}: expected a value in (0, 100]")
    panels = [("W", w)] + [(f"W_{g + 1}", groups[g]) for g in range(groups.shape[0])]
    n_cols = min(3, len(panels))
    n_rows = math.ceil(len(panels) / n_cols)
    fig = Figure(figsize=(4.6 * n_cols, 4.0 * n_rows), layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for ax, (name, matrix) in zip(axes.flat, panels):
        order = loading_order(matrix)
        limit = float(np.percentile(np.abs(matrix), percentile))
        _heat_map(fig, ax, matrix[np.ix_(order, order)], limit if limit > 0 else 1.0, f"{name} (units sorted by loading)")
        ax.set_xlabel("presynaptic unit (sorted)")
        ax.set_ylabel("postsynaptic unit (sorted)")
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_axis_off()
    return save_figure(fig, path)


# ------------------------------------------------------------------ training curves


def _read_metrics_csv(metrics_csv: Path) -> dict[str, dict[str, tuple[list[float], list[float]]]]:
    """``{term: {split: (epochs, values)}}`` from a Lightning CSVLogger file, empty cells skipped."""
    with open(metrics_csv, newline="") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames
        if not header:
            raise ValueError(f"metrics_csv={metrics_csv}: empty file, expected a CSVLogger metrics.csv header")
        if "epoch" not in header:
            raise ValueError(f"metrics_csv={metrics_csv}: no 'epoch' column (columns: {header})")
        logged = {}
        for column in header:
            split, _, term = column.partition("/")
            if split not in SPLITS or not term:
                continue
            if term.endswith("_step") and f"{split}/{term[: -len('_step')]}_epoch" in header:
                continue  # on_step twin of an on_epoch metric: the epoch curve is plotted
            logged[column] = (split, term.removesuffix("_epoch"))
        if not logged:
            raise ValueError(
                f"metrics_csv={metrics_csv}: no train/ or val/ columns, expected e.g. train/loss (columns: {header})"
            )
        curves: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
        for line, row in enumerate(reader, start=2):
            epoch_cell = (row.get("epoch") or "").strip()
            if not epoch_cell:
                continue
            for column, (split, term) in logged.items():
                cell = (row.get(column) or "").strip()
                if not cell:
                    continue
                try:
                    epoch, value = float(epoch_cell), float(cell)
                except ValueError as error:
                    raise ValueError(
                        f"metrics_csv={metrics_csv}, line {line}: non-numeric epoch={epoch_cell!r} or {column}={cell!r}"
                    ) from error
                epochs, values = curves.setdefault(term, {}).setdefault(split, ([], []))
                epochs.append(epoch)
                values.append(value)
    return curves


def _thinned(epochs: list[float], values: list[float], max_points: int) -> tuple[list[float], list[float]]:
    """At most ``max_points`` evenly spaced points of a curve, its first and last included."""
    if len(epochs) <= max_points:
        return epochs, values
    keep = np.unique(np.linspace(0, len(epochs) - 1, max_points).round().astype(int))
    return [epochs[i] for i in keep], [values[i] for i in keep]


def plot_training_curves(metrics_csv: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Train and validation curves per loss term against epoch, from a CSVLogger file.

    One panel per term logged with at least one value (``loss``, ``nll``, ``kl``,
    ``partial_corr``, ``overlap`` in that order, then any other term alphabetically),
    with the ``train/`` and ``val/`` curves of that term; a panel whose values are all
    positive and span more than a decade gets a log y-axis. Rows are sparse as
    Lightning writes them: empty cells are skipped. Curves longer than
    :data:`MAX_CURVE_POINTS` are thinned evenly for drawing (first and last epoch kept).

    Parameters
    ----------
    metrics_csv : str or os.PathLike
        Lightning ``CSVLogger`` ``metrics.csv`` with an ``epoch`` column and
        ``train/TERM`` / ``val/TERM`` columns.
    path : str or os.PathLike
        PNG to write (parent folders are created).

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    ValueError
        Naming the file if it is empty, has no ``epoch`` column, no ``train/`` or
        ``val/`` columns, no logged values, or a non-numeric cell.
    FileNotFoundError
        If ``metrics_csv`` does not exist.
    """
    metrics_csv = Path(metrics_csv)
    curves = _read_metrics_csv(metrics_csv)
    if not curves:
        raise ValueError(f"metrics_csv={metrics_csv}: train/ and val/ columns hold no values")
    terms = [term for term in LOSS_TERM_ORDER if term in curves]
    terms += sorted(term for term in curves if term not in LOSS_TERM_ORDER)

    n_cols = min(3, len(terms))
    n_rows = math.ceil(len(terms) / n_cols)
    fig = Figure(figsize=(4.4 * n_cols, 3.3 * n_rows), layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    styles = {"train": {"color": "C0", "linestyle": "-"}, "val": {"color": "C1", "linestyle": "--"}}
    for ax, term in zip(axes.flat, terms):
        every: list[float] = []
        for split in SPLITS:
            if split not in curves[term]:
                continue
            epochs, values = curves[term][split]
            every.extend(values)
            epochs, values = _thinned(epochs, values, MAX_CURVE_POINTS)
            marker = "o" if len(epochs) <= 30 else None
            ax.plot(epochs, values, marker=marker, markersize=3, linewidth=1.2, label=split, **styles[split])
        finite = np.asarray(every)[np.isfinite(every)]
        if finite.size and finite.min() > 0 and finite.max() > 10 * finite.min():
            ax.set_yscale("log")  # positive terms spanning a decade: the early transient would flatten the rest
        ax.set_title(term, fontsize="medium")
        ax.set_xlabel("epoch")
        ax.set_ylabel(term)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    for ax in list(axes.flat)[len(terms) :]:
        ax.set_axis_off()
    fig.suptitle(f"training curves ({'/'.join(metrics_csv.parts[-3:])})", fontsize="medium")
    return save_figure(fig, path)


def plot_restarts(record: dict, path: str | os.PathLike) -> Path:
    """Training objective of every start against epoch, the kept start highlighted
    (``restarts.json`` of a run with ``model.restarts > 1``; see :mod:`facrnn.runs.export`).

    Parameters
    ----------
    record : dict
        ``epochs`` (E,), ``objective_trajectories`` (k lists of E values), ``kept_start``,
        ``selection_epoch``, ``window_epochs``.
    path : str or os.PathLike
        PNG to write.
    """
    epochs = np.asarray(record["epochs"], dtype=float)
    lengths = [len(trajectory) for trajectory in record["objective_trajectories"]]
    if not lengths or any(length != epochs.size for length in lengths):
        raise ValueError(
            f"restarts record: objective_trajectories of lengths {lengths}; expected one list of "
            f"{epochs.size} values (one per epoch) per start"
        )
    trajectories = np.asarray(record["objective_trajectories"], dtype=float)
    kept = int(record["kept_start"])
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.add_subplot(1, 1, 1)
    for start, trajectory in enumerate(trajectories):
        is_kept = start == kept
        ax.plot(
            epochs,
            trajectory,
            lw=2.0 if is_kept else 1.0,
            color="C3" if is_kept else "0.6",
            label=f"start {start}" + (" (kept)" if is_kept else ""),
            zorder=3 if is_kept else 2,
        )
    selection = float(record["selection_epoch"])
    window = float(record["window_epochs"])
    ax.axvspan(selection - window + 1, selection, color="C0", alpha=0.15, label="selection window")
    finite = trajectories[np.isfinite(trajectories)]
    if finite.size and finite.min() > 0 and finite.max() / finite.min() > 10:
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training objective (nll + kl + beta pc)")
    ax.set_title(f"{len(trajectories)} starts; start {kept} kept at epoch {int(selection)}")
    ax.legend(fontsize="small")
    fig.tight_layout()
    return save_figure(fig, path)
