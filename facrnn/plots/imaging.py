"""Figures of imaging recordings (mouse widefield voltage, DESIGN §4): loading maps of each
latent group on the brain mask, frames of raw | per-group reconstructions, and a movie.

Like :mod:`facrnn.plots.fit`, everything uses matplotlib's object-oriented API
(``matplotlib.figure.Figure``, no pyplot); the movie is a
``matplotlib.animation.FuncAnimation`` of such a figure saved with the Pillow GIF writer
(or ffmpeg for MP4 when it is installed). Channels are mapped back to pixels with the
recording's channel map (``Recording.extras["channel_map"]``: channel index of every pixel,
-1 outside the mask).

The reconstruction of group g is its decoder contribution ``f(A_g z_g + a) - f(a)`` at the
posterior means, i.e. ``A_g z_g`` for the identity link (no bias).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib import animation
from matplotlib.figure import Figure

from facrnn.core.grouping import group_slices
from facrnn.core.model import LowRankRNN, encoder_input
from facrnn.evaluation.metrics import group_latent_r2
from facrnn.plots.save import MOVIE_DPI, save_figure

log = logging.getLogger(__name__)

MAP_CMAP = "RdBu_r"
BACKGROUND = "0.85"
MOVIE_FORMATS = ("gif", "mp4", "none")


def _check_channel_map(channel_map: np.ndarray, n_channels: int) -> np.ndarray:
    channel_map = np.asarray(channel_map)
    if channel_map.ndim != 2 or not np.issubdtype(channel_map.dtype, np.integer):
        raise ValueError(f"channel_map has shape {channel_map.shape}, dtype {channel_map.dtype}: expected a 2-D integer map")
    if channel_map.max() >= n_channels or channel_map.max() < 0:
        raise ValueError(
            f"channel_map refers to channels up to {channel_map.max()} but the data have {n_channels}: "
            "expected channel indices 0..N-1 inside the mask and -1 outside"
        )
    return channel_map


def to_image(values: np.ndarray, channel_map: np.ndarray) -> np.ndarray:
    """Per-channel ``values`` ``(..., N)`` as images ``(..., H, W)``, NaN outside the mask."""
    values = np.asarray(values, dtype=np.float64)
    image = np.full((*values.shape[:-1], *channel_map.shape), np.nan)
    inside = channel_map >= 0
    image[..., inside] = values[..., channel_map[inside]]
    return image


def _limit(*arrays: np.ndarray, percentile: float = 99.0) -> float:
    values = np.concatenate([np.abs(np.asarray(a, dtype=np.float64)).ravel() for a in arrays])
    values = values[np.isfinite(values)]
    limit = float(np.percentile(values, percentile)) if values.size else 1.0
    return limit if limit > 0 else 1.0


def _map_panel(ax, image: np.ndarray, limit: float, title: str):
    ax.set_facecolor(BACKGROUND)
    artist = ax.imshow(image, cmap=MAP_CMAP, vmin=-limit, vmax=limit, interpolation="nearest")
    ax.set_title(title, fontsize="small")
    ax.set_xticks([])
    ax.set_yticks([])
    return artist


# ---------------------------------------------------------------------- loading maps


def aligned_loadings(group_reconstruction: np.ndarray, true_latents: np.ndarray) -> np.ndarray:
    """Loadings of a learned group in the basis of the true group it matches.

    Least-squares ``group_reconstruction ≈ true_latents @ L.T + c``: column k of ``L``
    (N, H*) is the map the learned group draws for true latent dimension k, directly
    comparable with the true loading column (the learned basis within a group is arbitrary).
    """
    design = np.concatenate([true_latents, np.ones((true_latents.shape[0], 1))], axis=1)
    coefficients, *_ = np.linalg.lstsq(design, group_reconstruction, rcond=None)
    return coefficients[:-1].T


def plot_loading_maps(
    loadings: np.ndarray,
    group_sizes: Sequence[int],
    channel_map: np.ndarray,
    path: str | os.PathLike,
    aligned: Sequence[np.ndarray | None] | None = None,
    true_loadings: Sequence[np.ndarray | None] | None = None,
    title: str = "",
    true_names: Sequence[str] | None = None,
) -> Path:
    """One row per learned group: its columns of ``A_g`` on the mask.

    With ground truth, each row continues with the group's maps in the matched true group's
    basis (``aligned``, see :func:`aligned_loadings`) and the true loading columns. Colour
    limits are symmetric and shared within each block of a row.

    Parameters
    ----------
    loadings : (N, K) array
        Learned decoder ``A``.
    group_sizes : sequence of int
        Learned groups, summing to K.
    channel_map : (H, W) int array
    path : str or os.PathLike
        PNG to write.
    aligned, true_loadings : per learned group, (N, H*_g) arrays or None
        Matched-basis learned maps and true maps (None for an unmatched group).
    true_names : per learned group, str
        Label of the matched true group (default: the learned group's number).
    """
    loadings = np.asarray(loadings, dtype=np.float64)
    if loadings.ndim != 2:
        raise ValueError(f"loadings has shape {loadings.shape}: expected (N, K)")
    sizes = [int(size) for size in group_sizes]
    if sum(sizes) != loadings.shape[1] or any(size < 1 for size in sizes):
        raise ValueError(f"group_sizes={sizes}: expected positive sizes summing to K={loadings.shape[1]}")
    channel_map = _check_channel_map(channel_map, loadings.shape[0])
    n_groups = len(sizes)
    aligned = list(aligned) if aligned is not None else [None] * n_groups
    true_loadings = list(true_loadings) if true_loadings is not None else [None] * n_groups
    if len(aligned) != n_groups or len(true_loadings) != n_groups:
        raise ValueError(f"aligned/true_loadings: expected one entry per learned group ({n_groups})")
    true_names = list(true_names) if true_names is not None else [f"{g + 1}" for g in range(n_groups)]
    blocks_per_row = []
    for g, part in enumerate(group_slices(sizes)):
        blocks = [(f"A_{g + 1}[:, {{k}}]", loadings[:, part])]
        if aligned[g] is not None:
            blocks.append((f"A_{g + 1} on z*_{true_names[g]},{{k}}", np.asarray(aligned[g], dtype=np.float64)))
        if true_loadings[g] is not None:
            blocks.append((f"true A*_{true_names[g]}[:, {{k}}]", np.asarray(true_loadings[g], dtype=np.float64)))
        blocks_per_row.append(blocks)
    n_cols = max(sum(block[1].shape[1] for block in blocks) for blocks in blocks_per_row)
    height, width = channel_map.shape
    panel = 2.1
    fig = Figure(figsize=(panel * n_cols * max(width / height, 0.6) + 0.8, panel * n_groups + 0.6), layout="constrained")
    axes = fig.subplots(n_groups, n_cols, squeeze=False)
    for g, blocks in enumerate(blocks_per_row):
        column = 0
        for name, maps in blocks:
            limit = _limit(maps, percentile=100.0)
            images = to_image(maps.T, channel_map)
            artist = None
            for k, image in enumerate(images):
                artist = _map_panel(axes[g, column], image, limit, name.format(k=k + 1))
                column += 1
            fig.colorbar(artist, ax=axes[g, column - len(images) : column].tolist(), shrink=0.8, pad=0.01)
        for ax in axes[g, column:]:
            ax.set_axis_off()
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


# ------------------------------------------------------------------ frames and movie


def _frame_columns(raw: np.ndarray, groups: np.ndarray, true_groups: np.ndarray | None) -> tuple[list[np.ndarray], list[str]]:
    columns = [raw] + list(groups)
    names = ["raw"] + [f"group {g + 1} recon." for g in range(len(groups))]
    if true_groups is not None:
        columns += list(true_groups)
        names += [f"true (group {g + 1})" for g in range(len(true_groups))]
    return columns, names


def _time_label(frame: int, fs: float | None) -> str:
    return f"t = {frame / fs:.2f} s" if fs else f"frame {frame}"


def plot_reconstruction_frames(
    raw: np.ndarray,
    groups: np.ndarray,
    channel_map: np.ndarray,
    frames: Sequence[int],
    path: str | os.PathLike,
    fs: float | None = None,
    true_groups: np.ndarray | None = None,
    title: str = "",
) -> Path:
    """Rows of frames: raw | group 1 reconstruction | group 2 ... (| true group signals).

    Parameters
    ----------
    raw : (n, N) array
        Observed frames (channels).
    groups : (G, n, N) array
        Per-group reconstructions of the same frames.
    channel_map : (H, W) int array
    frames : sequence of int
        Frame numbers of the ``n`` rows (for labels).
    fs : float, optional
        Frame rate for time labels.
    true_groups : (G, n, N) array, optional
        True per-group signals ``A*_g z*_g`` of the true group matched to each learned group.
    """
    raw = np.asarray(raw, dtype=np.float64)
    groups = np.asarray(groups, dtype=np.float64)
    if raw.ndim != 2 or groups.ndim != 3 or groups.shape[1:] != raw.shape:
        raise ValueError(f"raw {raw.shape}, groups {groups.shape}: expected (n, N) and (G, n, N)")
    if len(frames) != raw.shape[0]:
        raise ValueError(f"frames has {len(frames)} entries: expected one per row of raw ({raw.shape[0]})")
    channel_map = _check_channel_map(channel_map, raw.shape[1])
    columns, names = _frame_columns(raw, groups, true_groups)
    limit = _limit(raw)
    height, width = channel_map.shape
    panel = 1.9
    fig = Figure(
        figsize=(panel * len(columns) * max(width / height, 0.6) + 1.0, panel * raw.shape[0] + 0.6),
        layout="constrained",
    )
    axes = fig.subplots(raw.shape[0], len(columns), squeeze=False)
    artist = None
    for row, frame in enumerate(frames):
        for column, (values, name) in enumerate(zip(columns, names)):
            label = name if row == 0 else ""
            artist = _map_panel(axes[row, column], to_image(values[row], channel_map), limit, label)
        axes[row, 0].set_ylabel(_time_label(int(frame), fs), fontsize="small")
    fig.colorbar(artist, ax=axes.ravel().tolist(), shrink=0.6, pad=0.01, label="activity (z-scored units)")
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def write_reconstruction_movie(
    raw: np.ndarray,
    groups: np.ndarray,
    channel_map: np.ndarray,
    frames: Sequence[int],
    path: str | os.PathLike,
    fs: float | None = None,
    fps: int = 25,
    true_groups: np.ndarray | None = None,
    title: str = "",
) -> Path:
    """Animated raw | group reconstructions (| true) over ``frames``: GIF (Pillow) or MP4 (ffmpeg).

    The format follows the suffix of ``path``; an MP4 without ffmpeg falls back to a GIF
    beside it (logged). Arguments as :func:`plot_reconstruction_frames`.
    """
    raw = np.asarray(raw, dtype=np.float64)
    groups = np.asarray(groups, dtype=np.float64)
    if raw.ndim != 2 or groups.ndim != 3 or groups.shape[1:] != raw.shape:
        raise ValueError(f"raw {raw.shape}, groups {groups.shape}: expected (n, N) and (G, n, N)")
    if len(frames) != raw.shape[0] or raw.shape[0] < 1:
        raise ValueError(f"frames has {len(frames)} entries: expected one per row of raw ({raw.shape[0]}), at least 1")
    if int(fps) < 1:
        raise ValueError(f"fps={fps}: expected a positive integer")
    channel_map = _check_channel_map(channel_map, raw.shape[1])
    path = Path(path)
    if path.suffix.lower() == ".mp4" and not animation.writers.is_available("ffmpeg"):
        log.warning("ffmpeg not found: writing a GIF instead of %s", path)
        path = path.with_suffix(".gif")
    if path.suffix.lower() not in (".gif", ".mp4"):
        raise ValueError(f"path={path}: expected a .gif or .mp4 file")
    columns, names = _frame_columns(raw, groups, true_groups)
    images = [to_image(values, channel_map) for values in columns]
    limit = _limit(raw)
    height, width = channel_map.shape
    panel, bar, top = 2.0, 0.7, 0.65  # inches: map width, colour bar strip, titles
    map_height = panel * height / width
    fig = Figure(figsize=(panel * len(columns) + bar, map_height + top))
    # a fixed layout (no layout engine to rerun on every frame)
    right = 1 - bar / (panel * len(columns) + bar)
    fig.subplots_adjust(left=0.01, right=right, bottom=0.02, top=map_height / (map_height + top), wspace=0.04)
    axes = fig.subplots(1, len(columns), squeeze=False)[0]
    artists = [_map_panel(ax, stack[0], limit, name) for ax, stack, name in zip(axes, images, names)]
    for ax in axes:
        ax.set_axis_off()  # no axis to redraw on every frame; outside the mask stays blank
    fig.colorbar(artists[-1], cax=fig.add_axes((right + 0.01, 0.08, 0.012, 0.75 * map_height / (map_height + top))))
    label = fig.suptitle(f"{title}  {_time_label(int(frames[0]), fs)}".strip(), fontsize="medium")

    def update(index: int):
        for artist, stack in zip(artists, images):
            artist.set_data(stack[index])
        label.set_text(f"{title}  {_time_label(int(frames[index]), fs)}".strip())
        return [*artists, label]

    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".gif":
        _save_blitted_gif(fig, artists, label, update, len(frames), path, int(fps))
        return path
    movie = animation.FuncAnimation(fig, update, frames=len(frames), blit=False)
    movie.save(str(path), writer=animation.FFMpegWriter(fps=int(fps)), dpi=MOVIE_DPI)
    return path


def _save_blitted_gif(fig: Figure, artists: list, label, update, n_frames: int, path: Path, fps: int) -> None:
    """Write the frames of ``update`` as a GIF, drawing the static parts (axes, colour bar) once.

    What matplotlib's ``PillowWriter`` writes (the Agg canvas as RGB frames, ``1000 / fps`` ms
    each, looped), but each frame redraws only the changing artists (the maps and the time
    label) onto the saved background instead of the whole figure: several times faster.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image

    fig.set_dpi(MOVIE_DPI)
    canvas = FigureCanvasAgg(fig)
    for artist in (*artists, label):
        artist.set_visible(False)
    canvas.draw()
    background = canvas.copy_from_bbox(fig.bbox)
    for artist in (*artists, label):
        artist.set_visible(True)
    size = canvas.get_width_height()
    images = []
    for index in range(n_frames):
        update(index)
        canvas.restore_region(background)
        for artist in artists:
            artist.axes.draw_artist(artist)
        fig.draw_artist(label)
        # opaque frames as RGB, as PillowWriter does: converts to the GIF palette better than RGBA
        images.append(Image.frombuffer("RGBA", size, bytes(canvas.buffer_rgba()), "raw", "RGBA", 0, 1).convert("RGB"))
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)


# ---------------------------------------------------------------- from a trained model


def group_reconstructions(model: LowRankRNN, means: torch.Tensor) -> np.ndarray:
    """Per-group decoder contributions ``f(A_g z_g + a) - f(a)``: ``(n, K) -> (G, n, N)``."""
    with torch.no_grad():
        baseline = model.decode(torch.zeros_like(means[:1]))
        parts = []
        for part in group_slices(model.group_sizes):
            only = torch.zeros_like(means)
            only[:, part] = means[:, part]
            parts.append((model.decode(only) - baseline).double().numpy())
    return np.stack(parts)


def first_segment(times: np.ndarray) -> tuple[int, int]:
    """``[start, stop)`` of the first contiguous run of frames in ``times`` (e.g. the first test block)."""
    times = np.unique(np.asarray(times, dtype=np.int64))
    if times.size == 0:
        return 0, 0
    breaks = np.flatnonzero(np.diff(times) > 1)
    stop = times[breaks[0]] + 1 if breaks.size else times[-1] + 1
    return int(times[0]), int(stop)


def write_imaging_figures(
    model: LowRankRNN,
    recording,
    figure_dir: str | os.PathLike,
    settings: dict,
    history: int | None = None,
    test_times: np.ndarray | None = None,
) -> list[Path]:
    """Loading maps, frames and movie of a model fitted to an imaging recording with a mask.

    Parameters
    ----------
    model : LowRankRNN
    recording : datamodules.recording.Recording
        Single-sequence recording with ``extras["channel_map"]`` (and optionally ``fs``).
    figure_dir : path
    settings : dict
        ``start_s`` (None: first frame of ``test_times``), ``duration_s``, ``stride``,
        ``fps``, ``n_frames``, ``movie_format`` (see ``datamodules.mouse_voltage.FIGURE_DEFAULTS``).
    history : int, optional
        Encoder lags; default the model's (``model.history``).
    test_times : array of int, optional
        Frames of the held-out split; the default window starts at the first.

    Returns
    -------
    list of written paths: ``loadings.png`` (linear decoder only), ``frames.png``, ``movie.gif``.
    """
    figure_dir = Path(figure_dir)
    channel_map = np.asarray(recording.extras["channel_map"])
    fs = float(recording.extras["fs"]) if "fs" in recording.extras else None
    movie_format = str(settings.get("movie_format", "gif"))
    if movie_format not in MOVIE_FORMATS:
        raise ValueError(f"datamodule.figures.movie_format={movie_format!r}: expected one of {MOVIE_FORMATS}")
    x = torch.from_numpy(recording.x[0])  # one long recording
    history = model.history if history is None else history
    model.eval()
    with torch.no_grad():
        means = model.encode(encoder_input(x[None], history, "zero")[0])
    groups = group_reconstructions(model, means)
    n_total = x.shape[0]

    # the window
    rate = fs or 1.0
    start_s = settings.get("start_s")
    length = max(1, int(round(float(settings.get("duration_s", 2.0)) * rate)))
    if start_s is None and test_times is not None and len(test_times):
        start, segment_stop = first_segment(test_times)  # held-out frames: within the first test segment
        stop = min(segment_stop, start + length)
    else:
        start = min(max(int(round((start_s or 0.0) * rate)), 0), n_total - 1)
        stop = min(n_total, start + length)
    stride = max(1, int(settings.get("stride", 1)))
    window = np.arange(start, stop, stride)
    n_rows = max(1, min(int(settings.get("n_frames", 6)), stop - start))
    still = np.linspace(start, stop - 1, n_rows).round().astype(int)

    # ground truth: the true group matched to each learned group (Hungarian, on latents)
    true_groups = aligned = truth = true_names = None
    if recording.latents is not None and recording.group_sizes is not None and recording.A is not None:
        true_latents = recording.latents[0].astype(np.float64)
        matching = group_latent_r2(true_latents, means.double().numpy(), recording.group_sizes, model.group_sizes).matching
        true_parts = group_slices(recording.group_sizes)
        parts = {learned: true_parts[true] for true, learned in matching}  # learned group -> true columns
        aligned = [aligned_loadings(groups[g], true_latents[:, parts[g]]) if g in parts else None for g in range(len(groups))]
        truth = [recording.A[:, parts[g]] if g in parts else None for g in range(len(groups))]
        true_of = {learned: true for true, learned in matching}
        true_names = [str(true_of[g] + 1) if g in true_of else "?" for g in range(len(groups))]
        if len(parts) == len(groups):
            true_groups = np.stack([true_latents[:, parts[g]] @ recording.A[:, parts[g]].T for g in range(len(groups))])

    written = []
    if model.is_linear:
        written.append(
            plot_loading_maps(
                model.A.detach().double().numpy(),
                model.group_sizes,
                channel_map,
                figure_dir / "loadings.png",
                aligned=aligned,
                true_loadings=truth,
                true_names=true_names,
                title="loading maps of each latent group (columns of A_g on the mask)",
            )
        )
    raw = recording.x[0].astype(np.float64)
    where = "held-out" if test_times is not None and np.isin(window, test_times).all() else "recording"
    title = f"raw | per-group reconstructions A_g z_g ({where} frames)"
    written.append(
        plot_reconstruction_frames(
            raw[still],
            groups[:, still],
            channel_map,
            still,
            figure_dir / "frames.png",
            fs=fs,
            true_groups=None if true_groups is None else true_groups[:, still],
            title=title,
        )
    )
    if movie_format != "none":
        written.append(
            write_reconstruction_movie(
                raw[window],
                groups[:, window],
                channel_map,
                window,
                figure_dir / f"movie.{movie_format}",
                fs=fs,
                fps=int(settings.get("fps", 25)),
                true_groups=None if true_groups is None else true_groups[:, window],
                title="raw | group reconstructions",
            )
        )
    return written


__all__ = [
    "aligned_loadings",
    "group_reconstructions",
    "plot_loading_maps",
    "plot_reconstruction_frames",
    "to_image",
    "write_imaging_figures",
    "write_reconstruction_movie",
]
