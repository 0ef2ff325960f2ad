"""Widefield voltage imaging of mouse dorsal cortex (DESIGN §4): pixels (or regions) inside a
brain mask are the observed channels of one long recording.

Inputs (``datamodule.path``):

- ``.npz`` / ``.h5``: ``movie`` (T, H, W) with an optional ``mask`` (H, W), or ``traces``
  (T, P) with an optional ``mask`` whose P true pixels, in row-major order, are the traces'
  pixels; ``fs`` (Hz) optional. Optional ground truth: ``latents`` (T, K), ``A`` (P, K),
  ``offset`` (P,), ``group_sizes``.
- ``.nwb``: a ``RoiResponseSeries`` in ``processing/ophys/DfOverF`` (``data`` (T, n_rois),
  ``rate``; ROI footprints from the ``PlaneSegmentation`` it references, so the maps can be
  drawn), or an ``OnePhotonSeries`` / ``TwoPhotonSeries`` / ``ImageSeries`` (T, H, W) in
  ``acquisition`` (mask from a one-ROI ``PlaneSegmentation`` of the same imaging plane, if
  any).
- ``null``: the built-in simulator (:mod:`datamodules.voltage_simulator`), cached.

Preprocessing, in this order: optional spatial binning (``spatial_bin`` × ``spatial_bin``
pixel blocks, mean over the block's in-mask pixels; a block is kept when at least half of
it is inside the mask), optional zero-phase Butterworth band-pass (``bandpass: [low, high]``
Hz, off by default), z-scoring per channel over the whole recording (on by default).
Ground truth goes through the same linear maps: the true loadings ``A`` are binned and
divided by each channel's standard deviation, band-passed latents replace the raw ones,
and the true input projection ``B`` is the oracle encoder (see :func:`oracle_encoder`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from datamodules.base import RecordingDataModule
from datamodules.loading import read_arrays
from datamodules.recording import Recording
from datamodules.synthetic import cached
from datamodules.validation import (
    apply_nan_policy,
    check_data_file,
    check_ndim,
    check_not_empty,
    check_trial_length,
    integer_labels,
    numeric_array,
    positive_scalar,
    reading,
)
from datamodules.voltage_simulator import simulate_voltage_imaging
from facrnn.core.model import encoder_input
from facrnn.errors import ConfigError, DataError

log = logging.getLogger(__name__)

FILE_KEYS = ("movie", "traces", "mask", "fs", "latents", "A", "offset", "group_sizes")
NWB_SUFFIX = ".nwb"
IMAGE_SERIES_TYPES = ("OnePhotonSeries", "TwoPhotonSeries", "ImageSeries")
FIGURE_DEFAULTS = {
    "start_s": None,  # movie window start (s); null = the start of the first test block
    "duration_s": 2.0,  # movie window length (s)
    "stride": 2,  # draw every stride-th frame of the window
    "fps": 25,  # frames per second of the GIF
    "n_frames": 6,  # rows of the still figure (evenly spaced over the window)
    "movie_format": "gif",  # gif (Pillow) | mp4 (needs ffmpeg) | none
}


@dataclass
class ImagingData:
    """One imaging recording before it becomes a :class:`Recording`.

    Attributes
    ----------
    traces : (T, P) float array
        Channels (pixels or regions) over time.
    channel_map : (H, W) int array, optional
        Channel index of every pixel, -1 outside the mask; pixel channels appear once,
        region channels cover several pixels. None when the geometry is unknown.
    fs : float, optional
        Frame rate (Hz).
    latents, A, offset, group_sizes : optional ground truth
        ``traces ≈ latents @ A.T + offset`` with latent groups ``group_sizes``.
    """

    traces: np.ndarray
    channel_map: np.ndarray | None = None
    fs: float | None = None
    latents: np.ndarray | None = None
    A: np.ndarray | None = None
    offset: np.ndarray | None = None
    group_sizes: list[int] | None = None
    source: str = "imaging"
    notes: list[str] = field(default_factory=list)

    @property
    def pixel_channels(self) -> bool:
        """Whether every channel is one pixel (binning and pixel maps apply)."""
        if self.channel_map is None:
            return False
        inside = self.channel_map[self.channel_map >= 0]
        return inside.size == self.traces.shape[1] and np.array_equal(np.sort(inside), np.arange(inside.size))


def mask_channel_map(mask: np.ndarray) -> np.ndarray:
    """``(H, W)`` channel indices of a boolean mask's pixels in row-major order, -1 outside."""
    channel_map = np.full(mask.shape, -1, dtype=np.int64)
    channel_map[mask] = np.arange(int(mask.sum()))
    return channel_map


# ------------------------------------------------------------------------------ reading


def _movie_to_data(movie: np.ndarray, mask: np.ndarray | None, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Traces of the in-mask pixels and the channel map of a ``(T, H, W)`` movie."""
    check_ndim(movie, "movie", where, (3,), "(time, height, width)")
    check_not_empty(movie, "movie", where, "(time, height, width)")
    movie = np.asarray(numeric_array(movie, "movie", where), dtype=np.float32)
    if mask is None:
        finite = np.isfinite(movie).all(axis=0)
        mask = finite & (np.nanstd(np.where(finite, movie, 0.0), axis=0) > 0)
        log.info("%s: no mask given; using the %d pixels that are finite and not constant", where, int(mask.sum()))
    mask = _check_mask(mask, movie.shape[1:], where)
    return movie[:, mask], mask_channel_map(mask)


def _check_mask(mask: np.ndarray, frame_shape: tuple[int, ...], where: str) -> np.ndarray:
    mask = numeric_array(mask, "mask", where)
    if mask.shape != tuple(frame_shape):
        raise DataError(
            f"{where}: 'mask' has shape {mask.shape} but the 'movie' frames have shape {tuple(frame_shape)}; "
            f"expected the frame shape {tuple(frame_shape)}"
        )
    mask = mask.astype(bool)
    if not mask.any():
        raise DataError(f"{where}: the mask selects no pixel; expected at least one pixel inside")
    return mask


def read_array_file(path: str | Path) -> ImagingData:
    """Read a ``.npz`` / ``.h5`` imaging file (keys in the module docstring)."""
    arrays = read_arrays(path, FILE_KEYS)
    where = str(path)
    mask = arrays.get("mask")
    if "movie" in arrays:
        traces, channel_map = _movie_to_data(arrays["movie"], mask, where)
    elif "traces" in arrays:
        traces = check_ndim(arrays["traces"], "traces", where, (2,), "(time, channels)")
        check_not_empty(traces, "traces", where, "(time, channels)")
        traces = np.asarray(traces, dtype=np.float32)
        channel_map = None
        if mask is not None:
            mask = np.asarray(mask).astype(bool)
            if mask.ndim != 2 or int(mask.sum()) != traces.shape[1]:
                raise DataError(
                    f"{where}: 'mask' has shape {mask.shape} with {int(mask.sum())} pixels inside but 'traces' has "
                    f"shape {traces.shape}; expected a 2-D mask with one pixel per trace column ({traces.shape[1]})"
                )
            channel_map = mask_channel_map(mask)
    else:
        raise DataError(
            f"{where}: neither 'movie' nor 'traces' found; found keys {arrays['__keys__']}, expected 'movie' "
            "(time, height, width) or 'traces' (time, channels), optionally 'mask' and 'fs'"
        )
    fs = positive_scalar(arrays["fs"], "fs", where) if "fs" in arrays else None
    group_sizes = (
        integer_labels(arrays["group_sizes"], "group_sizes", where, minimum=1).tolist() if "group_sizes" in arrays else None
    )
    return ImagingData(
        traces=traces,
        channel_map=channel_map,
        fs=fs,
        latents=arrays.get("latents"),
        A=arrays.get("A"),
        offset=arrays.get("offset"),
        group_sizes=group_sizes,
        source=where,
    )


def _series_rate(series, where: str) -> float | None:
    if series.rate is not None:
        return float(series.rate)
    if series.timestamps is not None and len(series.timestamps) > 1:
        return float(1.0 / np.median(np.diff(np.asarray(series.timestamps[:]))))
    log.warning("%s: series %s has neither rate nor timestamps", where, series.name)
    return None


def _roi_channel_map(table, roi_ids: np.ndarray, frame_shape: tuple[int, int] | None, where: str) -> np.ndarray | None:
    """Channel map of the ROIs a RoiResponseSeries references (``image_mask`` or ``pixel_mask``).

    ``pixel_mask`` entries ``(x, y, weight)`` index the first and second frame axes, as the
    ``image_mask`` and the imaging series do. A pixel claimed by several ROIs goes to the one
    with the largest weight.
    """
    columns = set(table.colnames)
    if "image_mask" in columns:
        weights = np.stack([np.asarray(table["image_mask"][int(i)], dtype=np.float64) for i in roi_ids])
    elif "pixel_mask" in columns:
        entries = [np.asarray([tuple(row) for row in table["pixel_mask"][int(i)]], dtype=np.float64) for i in roi_ids]
        if frame_shape is None:
            stacked = np.concatenate(entries)
            frame_shape = (int(stacked[:, 0].max()) + 1, int(stacked[:, 1].max()) + 1)
        weights = np.zeros((len(roi_ids), *frame_shape))
        for channel, entry in enumerate(entries):
            weights[channel, entry[:, 0].astype(int), entry[:, 1].astype(int)] = entry[:, 2]
    else:
        log.info("%s: the ROI table has no image_mask or pixel_mask; maps cannot be drawn", where)
        return None
    channel_map = np.where(weights.max(axis=0) > 0, weights.argmax(axis=0), -1)
    return channel_map.astype(np.int64)


def _frame_mask_from_segmentation(nwbfile, imaging_plane, frame_shape: tuple[int, int]) -> np.ndarray | None:
    """A brain mask stored as a one-ROI ``PlaneSegmentation`` on ``imaging_plane``, if any."""
    for module in nwbfile.processing.values():
        for interface in module.data_interfaces.values():
            for segmentation in getattr(interface, "plane_segmentations", {}).values():
                if segmentation.imaging_plane is not imaging_plane or len(segmentation) != 1:
                    continue
                channel_map = _roi_channel_map(segmentation, np.array([0]), frame_shape, "mask")
                if channel_map is not None:
                    return channel_map >= 0
    return None


def read_nwb_file(path: str | Path, series: str | None = None, frames: Sequence[int] | None = None) -> ImagingData:
    """Read a ``DfOverF`` ``RoiResponseSeries`` or an imaging series (module docstring).

    Parameters
    ----------
    path : str or Path
    series : str, optional
        Name of the series; by default the only ``RoiResponseSeries`` under ``DfOverF``,
        else the only imaging series in ``acquisition``.
    frames : (start, stop), optional
        Read only these frames.
    """
    try:
        from pynwb import NWBHDF5IO
    except ImportError as error:  # pragma: no cover - pynwb is a dependency
        raise ImportError(f"{path}: reading NWB files needs pynwb (pip install pynwb)") from error
    path = check_data_file(path, (NWB_SUFFIX,))
    where = str(path)
    window = slice(None) if frames is None else slice(int(frames[0]), int(frames[1]))
    with reading(path, "NWB"), NWBHDF5IO(str(path), "r", load_namespaces=True) as io:
        nwbfile = io.read()
        candidates = {}
        for module in nwbfile.processing.values():
            for interface in module.data_interfaces.values():
                if type(interface).__name__ == "DfOverF":
                    candidates.update({name: ("rois", s) for name, s in interface.roi_response_series.items()})
        if not candidates:
            candidates = {
                name: ("movie", s)
                for name, s in nwbfile.acquisition.items()
                if type(s).__name__ in IMAGE_SERIES_TYPES and getattr(s, "data", None) is not None and s.data.ndim == 3
            }
            candidates.update(
                {
                    name: ("movie", s)
                    for module in nwbfile.processing.values()
                    for name, s in module.data_interfaces.items()
                    if type(s).__name__ in IMAGE_SERIES_TYPES and s.data.ndim == 3
                }
            )
        if not candidates:
            raise DataError(
                f"{where}: no DfOverF RoiResponseSeries and no OnePhotonSeries/ImageSeries (T, H, W) found; "
                "expected one of them"
            )
        if series is None:
            if len(candidates) > 1:
                raise ConfigError(f"{where}: several series {sorted(candidates)}; choose one with datamodule.series=NAME")
            series = next(iter(candidates))
        if series not in candidates:
            raise ConfigError(f"{where}: datamodule.series={series!r} not found; expected one of {sorted(candidates)}")
        kind, chosen = candidates[series]
        fs = _series_rate(chosen, where)
        data = np.asarray(chosen.data[window], dtype=np.float32)
        if kind == "rois":
            if data.ndim == 1:
                data = data[:, None]
            roi_ids = np.asarray(chosen.rois.data[:], dtype=np.int64)
            table = chosen.rois.table
            frame_shape = None
            plane = getattr(table, "imaging_plane", None)
            for other in nwbfile.acquisition.values():
                if getattr(other, "imaging_plane", None) is plane and plane is not None and other.data.ndim == 3:
                    frame_shape = tuple(other.data.shape[1:])
            channel_map = _roi_channel_map(table, roi_ids, frame_shape, where)
            traces = data
        else:
            mask = _frame_mask_from_segmentation(nwbfile, getattr(chosen, "imaging_plane", None), data.shape[1:])
            traces, channel_map = _movie_to_data(data, mask, f"{where}:{series}")
    return ImagingData(traces=traces, channel_map=channel_map, fs=fs, source=f"{where}:{series}")


def read_imaging_file(path: str | Path, series: str | None = None, frames: Sequence[int] | None = None) -> ImagingData:
    """Read any supported imaging file (``.npz``, ``.h5``, ``.nwb``), optionally a frame window."""
    if Path(path).suffix.lower() == NWB_SUFFIX:
        return read_nwb_file(path, series, frames)
    data = read_array_file(path)
    if frames is not None:
        data = select_frames(data, frames)
    return data


def check_imaging(data: ImagingData, nan_policy: str = "error") -> ImagingData:
    """Check the shapes of a recording and its ground truth, then apply ``nan_policy``.

    Parameters
    ----------
    data : ImagingData
    nan_policy : {"error", "drop", "interpolate"}
        NaN/Inf in the traces or true latents: stop, drop the affected frames, or
        interpolate along time (:func:`datamodules.validation.apply_nan_policy`).

    Raises
    ------
    DataError
        Naming the source and the arrays whose shapes disagree, or the NaN/Inf values.
    """
    where = data.source
    traces = np.asarray(data.traces)
    n_frames, n_channels = traces.shape
    check_trial_length(n_frames, where)
    latents = data.latents
    if latents is not None:
        latents = check_ndim(numeric_array(latents, "latents", where), "latents", where, (2,), "(time, K)")
        if latents.shape[0] != n_frames:
            raise DataError(
                f"{where}: 'latents' has shape {latents.shape} but 'traces' has shape {traces.shape}; "
                f"expected {n_frames} frames in both"
            )
    if data.A is not None:
        A = numeric_array(data.A, "A", where)
        width = None if latents is None else latents.shape[1]
        if A.ndim != 2 or A.shape[0] != n_channels or (width is not None and A.shape[1] != width):
            raise DataError(
                f"{where}: 'A' has shape {A.shape} but 'traces' has shape {traces.shape}; "
                f"expected (channels={n_channels}, K={width})"
            )
    if data.offset is not None and numeric_array(data.offset, "offset", where).shape != (n_channels,):
        raise DataError(
            f"{where}: 'offset' has shape {np.shape(data.offset)} but 'traces' has shape {traces.shape}; "
            f"expected ({n_channels},)"
        )
    repaired, _ = apply_nan_policy(
        {"traces": traces[None], "latents": None if latents is None else latents[None]},
        nan_policy,
        where,
        single_sequence=True,
    )
    return replace(
        data,
        traces=np.asarray(repaired["traces"][0], dtype=np.float32),
        latents=None if latents is None else repaired["latents"][0],
    )


def select_frames(data: ImagingData, frames: Sequence[int]) -> ImagingData:
    """The frames ``[start, stop)`` of a recording (and of its true latents)."""
    start, stop = (int(value) for value in frames)
    n_frames = data.traces.shape[0]
    if not 0 <= start < stop <= n_frames:
        raise ConfigError(f"datamodule.frames={[start, stop]}: expected 0 <= start < stop <= {n_frames} frames")
    latents = None if data.latents is None else data.latents[start:stop]
    return replace(data, traces=data.traces[start:stop], latents=latents)


# ------------------------------------------------------------------------ preprocessing


def binning_matrix(channel_map: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Averaging matrix of ``factor`` × ``factor`` spatial binning of pixel channels.

    Returns
    -------
    matrix : (P', P) array
        Row ``i`` averages the in-mask pixels of binned pixel ``i``.
    binned_map : (ceil(H / factor), ceil(W / factor)) int array
        Channel map of the binned frame: a block is kept when at least half of it is inside.
    """
    height, width = channel_map.shape
    rows, cols = np.nonzero(channel_map >= 0)
    block = (rows // factor) * (-(-width // factor)) + cols // factor
    n_blocks_total = (-(-height // factor)) * (-(-width // factor))
    counts = np.bincount(block, minlength=n_blocks_total)
    kept = np.flatnonzero(counts >= 0.5 * factor * factor)
    if kept.size == 0:
        raise ValueError(f"datamodule.spatial_bin={factor}: no {factor}x{factor} block is half inside the mask")
    index = np.full(n_blocks_total, -1)
    index[kept] = np.arange(kept.size)
    matrix = np.zeros((kept.size, channel_map.max() + 1))
    channels = channel_map[rows, cols]
    keep = index[block] >= 0
    matrix[index[block[keep]], channels[keep]] = 1.0
    matrix /= matrix.sum(axis=1, keepdims=True)
    binned_map = index.reshape(-(-height // factor), -(-width // factor))
    return matrix, binned_map


def bandpass_filter(values: np.ndarray, fs: float, band: Sequence[float | None], order: int = 4) -> np.ndarray:
    """Zero-phase Butterworth band-pass along axis 0 (``low`` or ``high`` may be None)."""
    from scipy.signal import butter, sosfiltfilt

    low, high = (None if edge is None else float(edge) for edge in band)
    nyquist = fs / 2.0
    if (
        (low is None and high is None)
        or (low is not None and low <= 0)
        or (high is not None and high >= nyquist)
        or (low is not None and high is not None and low >= high)
    ):
        raise ValueError(
            f"datamodule.bandpass={list(band)}: expected [low, high] Hz with 0 < low < high < fs/2 = {nyquist:g} "
            "(either may be null for a high-pass or low-pass)"
        )
    if low is None:
        sos = butter(order, high, btype="lowpass", fs=fs, output="sos")
    elif high is None:
        sos = butter(order, low, btype="highpass", fs=fs, output="sos")
    else:
        sos = butter(order, [low, high], btype="bandpass", fs=fs, output="sos")
    return sosfiltfilt(sos, values, axis=0)


def preprocess(
    data: ImagingData,
    spatial_bin: int = 1,
    bandpass: Sequence[float | None] | None = None,
    zscore: bool = True,
    train_frames: np.ndarray | None = None,
) -> ImagingData:
    """Binning, band-pass and z-scoring (module docstring); ground truth follows along.

    ``train_frames`` ((frames,) bool, optional): the training frames, whose mean and standard
    deviation z-score every frame (held-out frames never shape the statistics); None: all frames.
    """
    traces = np.asarray(data.traces, dtype=np.float64)
    A = None if data.A is None else np.asarray(data.A, dtype=np.float64)
    offset = None if data.offset is None else np.asarray(data.offset, dtype=np.float64)
    if offset is None and A is not None:
        offset = np.zeros(A.shape[0])
    latents = None if data.latents is None else np.asarray(data.latents, dtype=np.float64)
    channel_map = data.channel_map
    notes = list(data.notes)
    if spatial_bin != 1:
        if int(spatial_bin) < 1:
            raise ValueError(f"datamodule.spatial_bin={spatial_bin}: expected a positive integer")
        if not data.pixel_channels:
            raise ValueError(
                f"{data.source}: datamodule.spatial_bin={spatial_bin} needs one channel per pixel of a known mask; "
                "this recording has region traces or no mask"
            )
        matrix, channel_map = binning_matrix(channel_map, int(spatial_bin))
        traces = traces @ matrix.T
        if A is not None:
            A, offset = matrix @ A, matrix @ offset
        notes.append(f"binned {spatial_bin}x{spatial_bin} to {traces.shape[1]} channels")
    if bandpass is not None:
        if data.fs is None:
            raise ValueError(f"{data.source}: datamodule.bandpass needs the frame rate; set datamodule.fs=HZ")
        traces = bandpass_filter(traces, data.fs, bandpass)
        if latents is not None:
            latents = bandpass_filter(latents, data.fs, bandpass)
        if offset is not None:
            offset = np.zeros_like(offset)  # a band-pass removes constants
        notes.append(f"band-pass {list(bandpass)} Hz")
    if zscore:
        fitted = traces if train_frames is None else traces[np.asarray(train_frames, dtype=bool)]
        mean, std = fitted.mean(axis=0), fitted.std(axis=0)
        constant = std == 0
        if constant.any():
            log.warning("%s: %d constant channels are centred but not scaled", data.source, int(constant.sum()))
            std[constant] = 1.0
        traces = (traces - mean) / std
        if A is not None:
            A, offset = A / std[:, None], (offset - mean) / std
        notes.append("z-scored per channel")
    return replace(
        data,
        traces=traces.astype(np.float32),
        channel_map=channel_map,
        latents=None if latents is None else latents.astype(np.float32),
        A=A,
        offset=offset,
        notes=notes,
    )


def oracle_encoder(x: np.ndarray, latents: np.ndarray, history: int = 1, ridge: float = 1e-2) -> tuple[np.ndarray, np.ndarray]:
    """Ridge-regression input projection of the true latents from the model's encoder input.

    ``z_t ≈ B u_t + b`` with ``u_t = sum_l psi_l tanh(x_{t-l})`` (zero past): the best
    ``B`` (K, P) a model of this form can have, up to the ridge — the reference ``B`` of a
    simulated imaging recording, whose latent dynamics are not a low-rank RNN. Hundreds of
    collinear pixels make the plain least-squares ``B`` mostly fitted noise; the ridge
    (``ridge`` times the mean eigenvalue of the centred Gram matrix) removes that while
    costing about 0.002 of in-sample R².

    Parameters
    ----------
    x : (T, P) array
    latents : (T, K) array
    """
    u = encoder_input(torch.from_numpy(np.asarray(x, dtype=np.float32))[None], history, "zero")[0].double().numpy()
    latents = np.asarray(latents, dtype=np.float64)
    u_mean, z_mean = u.mean(axis=0), latents.mean(axis=0)
    centred = u - u_mean
    gram = centred.T @ centred
    gram[np.diag_indices_from(gram)] += ridge * np.trace(gram) / len(gram) + 1e-12
    B = np.linalg.solve(gram, centred.T @ (latents - z_mean)).T
    return B, z_mean - B @ u_mean


def to_recording(data: ImagingData, history: int = 1) -> Recording:
    """A single-sequence :class:`Recording`; the mask, channel map and frame rate go to ``extras``."""
    n_channels = data.traces.shape[1]
    extras: dict[str, np.ndarray] = {}
    if data.channel_map is not None:
        extras["channel_map"] = np.asarray(data.channel_map, dtype=np.int64)
        extras["mask"] = extras["channel_map"] >= 0
    if data.fs is not None:
        extras["fs"] = np.array(float(data.fs))
    latents = data.latents
    if latents is not None and latents.shape[0] != data.traces.shape[0]:
        raise DataError(
            f"{data.source}: 'latents' has shape {latents.shape} but 'traces' has shape {data.traces.shape}; "
            f"expected {data.traces.shape[0]} frames in both"
        )
    A = B = None
    if data.A is not None and latents is not None:
        if data.A.shape != (n_channels, latents.shape[1]):
            raise DataError(
                f"{data.source}: 'A' has shape {data.A.shape}; expected (channels={n_channels}, K={latents.shape[1]})"
            )
        A = data.A
        B, _ = oracle_encoder(data.traces, latents, history)
    return Recording(
        x=data.traces[None],
        latents=None if latents is None else latents[None],
        A=A,
        B=B,
        group_sizes=data.group_sizes,
        single_sequence=True,
        source=data.source,
        extras=extras,
    )


# --------------------------------------------------------------------------- datamodule


def simulated_imaging(settings: dict, cache_dir: str | None) -> ImagingData:
    """The simulator's recording (cached like the synthetic benchmark)."""
    arrays = cached(cache_dir, "mouse_voltage", settings, lambda: simulate_voltage_imaging(**settings))
    mask = np.asarray(arrays["mask"], dtype=bool)
    return ImagingData(
        traces=arrays["traces"],
        channel_map=mask_channel_map(mask),
        fs=float(arrays["fs"]),
        latents=arrays["latents"],
        A=arrays["A"],
        offset=arrays["offset"],
        group_sizes=[int(size) for size in arrays["group_sizes"]],
        source=f"simulated voltage imaging (data_seed={settings.get('data_seed', 0)})",
    )


class MouseVoltageDataModule(RecordingDataModule):
    """Widefield voltage imaging; see the module docstring.

    Parameters
    ----------
    path : str, optional
        ``.npz`` / ``.h5`` / ``.nwb`` file; None = the simulator with ``simulation`` settings.
    series : str, optional
        NWB series name when the file has several.
    fs : float, optional
        Frame rate (Hz); wins over the file's.
    frames : (start, stop), optional
        Use only these frames.
    spatial_bin : int
        Binning factor (1 = none).
    bandpass : (low, high) Hz, optional
        Zero-phase Butterworth band-pass; None (default) = off.
    zscore : bool
        Z-score every channel.
    simulation : dict
        Keyword arguments of :func:`~datamodules.voltage_simulator.simulate_voltage_imaging`.
    figures : dict
        Settings of the imaging figures (``FIGURE_DEFAULTS``).
    cache_dir : str, optional
        Where simulated recordings are cached.
    **kwargs
        :class:`RecordingDataModule` settings (``batch_size``, ``split``, ``nan_policy`` for
        NaN/Inf in file data, see :func:`check_imaging`, ...).
    """

    def __init__(
        self,
        path: str | None = None,
        series: str | None = None,
        fs: float | None = None,
        frames: Sequence[int] | None = None,
        spatial_bin: int = 1,
        bandpass: Sequence[float | None] | None = None,
        zscore: bool = True,
        simulation: dict | None = None,
        figures: dict | None = None,
        cache_dir: str | None = None,
        **kwargs,
    ) -> None:
        kwargs.setdefault("split", "blocks")
        super().__init__(**kwargs)
        self.path = path or None
        self.series = series
        self.fs = None if fs is None else float(fs)
        self.frames = None if frames is None else [int(frame) for frame in frames]
        if self.frames is not None and len(self.frames) != 2:
            raise ValueError(f"datamodule.frames={frames}: expected [start, stop]")
        self.spatial_bin = int(spatial_bin)
        if self.spatial_bin < 1:
            raise ValueError(f"datamodule.spatial_bin={spatial_bin}: expected a positive integer")
        self.bandpass = None if bandpass is None else list(bandpass)
        if self.bandpass is not None and len(self.bandpass) != 2:
            raise ValueError(f"datamodule.bandpass={bandpass}: expected [low, high] in Hz")
        self.zscore = bool(zscore)
        self.simulation = dict(simulation or {})
        unknown = set(figures or {}) - set(FIGURE_DEFAULTS)
        if unknown:
            raise ValueError(f"datamodule.figures: unknown keys {sorted(unknown)}; expected some of {sorted(FIGURE_DEFAULTS)}")
        self.figure_settings = {**FIGURE_DEFAULTS, **(figures or {})}
        self.cache_dir = cache_dir

    def load_imaging(self) -> ImagingData:
        """The raw recording (file or simulator), before preprocessing."""
        if self.path is None:
            data = simulated_imaging(self.simulation, self.cache_dir)
            if self.frames is not None:
                data = select_frames(data, self.frames)
        else:
            data = read_imaging_file(self.path, self.series, self.frames)
        if self.fs is not None:
            if data.fs is not None and not np.isclose(data.fs, self.fs):
                log.warning("%s: datamodule.fs=%g overrides the file's %g Hz", data.source, self.fs, data.fs)
            data = replace(data, fs=self.fs)
        return data

    def load_recording(self) -> Recording:
        data = check_imaging(self.load_imaging(), self.nan_policy)
        train_frames = self.training_mask(1, data.traces.shape[0])[0]
        data = preprocess(data, self.spatial_bin, self.bandpass, self.zscore, train_frames)
        log.info(
            "%s: %d frames x %d channels%s; %s",
            data.source,
            data.traces.shape[0],
            data.traces.shape[1],
            "" if data.fs is None else f" at {data.fs:g} Hz",
            ", ".join(data.notes) or "no preprocessing",
        )
        return to_recording(data, self.history)


__all__ = [
    "FIGURE_DEFAULTS",
    "ImagingData",
    "MouseVoltageDataModule",
    "bandpass_filter",
    "binning_matrix",
    "check_imaging",
    "mask_channel_map",
    "oracle_encoder",
    "preprocess",
    "read_imaging_file",
    "to_recording",
]
