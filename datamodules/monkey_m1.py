"""Monkey motor cortex (M1) reaching data (DESIGN §4, docs/monkey_m1.md).

Three input layouts, told apart by extension and content:

- trial arrays (``.npz`` / ``.h5``): ``neural`` (trials, bins, units), ``vel`` (trials, bins, 2)
  hand velocity, optional ``direction`` (trials,) — the bundled session is one;
- NLB tensor files (``.h5``): ``train_spikes_heldin``, ``train_spikes_heldout`` (units are
  concatenated), optional ``train_behavior``;
- NWB (``.nwb``, DANDI / Neural Latents Benchmark MC_Maze layout, read with pynwb): ``units``
  spike times binned at ``bin_size_ms``, trials aligned on ``align_event`` over
  ``window_ms``, hand velocity from a behaviour ``TimeSeries``.

Every layout then goes through :func:`preprocess` (drop silent units, scale) and yields a
:class:`Recording` with velocity as ``behaviour`` and reach directions in
``extras["direction"]``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datamodules.base import RecordingDataModule
from datamodules.loading import ReadBudget, max_array_bytes, read_arrays, read_hdf5_dataset
from datamodules.recording import Recording
from datamodules.validation import (
    apply_nan_policy,
    check_data_file,
    check_magnitude,
    check_ndim,
    check_not_empty,
    check_trial_length,
    integer_labels,
    numeric_array,
    reading,
)
from facrnn.errors import ConfigError, DataError

log = logging.getLogger(__name__)

# The bundled session (ERDiff project, MIT licence): data/ at the repository root; a wheel
# (pip install .) carries it as datamodules/_data/ (pyproject.toml [tool.setuptools]).
_PACKAGED_SESSION = Path(__file__).resolve().parent / "_data" / "m1_center_out.npz"
BUNDLED_SESSION = (
    _PACKAGED_SESSION if _PACKAGED_SESSION.is_file() else Path(__file__).resolve().parents[1] / "data" / "m1_center_out.npz"
)
SCALINGS = ("max", "zscore", "none")
TRIAL_ARRAY_KEYS = ("neural", "vel", "direction")
NLB_KEYS = ("train_spikes_heldin", "train_spikes_heldout", "train_behavior")
NWB_SUFFIXES = (".nwb",)
TRIAL_LAYOUT = "(trials, bins, units)"
VEL_LAYOUT = "(trials, bins, 2) hand velocity"


@dataclass
class ReachData:
    """Raw reaching trials before preprocessing.

    Attributes
    ----------
    neural : (trials, T, units) float array
    velocity : (trials, T, D) float array, optional
    direction : (trials,) int array, optional
    """

    neural: np.ndarray
    velocity: np.ndarray | None = None
    direction: np.ndarray | None = None


# --------------------------------------------------------------------------- preprocessing


def reach_directions(velocity: np.ndarray, n_directions: int = 8) -> np.ndarray:
    """Reach direction of each trial: the angle of its final hand position in ``n_directions`` sectors.

    The final position is the sum of the velocity over the trial's bins; sector ``k`` is
    centred on the angle ``2 pi k / n_directions`` (sector 0 points along +x).

    Parameters
    ----------
    velocity : (trials, T, 2) array
    n_directions : int

    Returns
    -------
    (trials,) int64 array with values in ``0 .. n_directions - 1``.
    """
    velocity = np.asarray(velocity, dtype=np.float64)
    if velocity.ndim != 3 or velocity.shape[-1] != 2:
        raise ValueError(f"velocity has shape {velocity.shape}; expected (trials, time, 2)")
    if n_directions < 1:
        raise ValueError(f"datamodule.n_directions={n_directions}: expected a positive integer")
    final = velocity.sum(axis=1)
    angle = np.arctan2(final[:, 1], final[:, 0])
    width = 2.0 * np.pi / n_directions
    return (np.floor(np.mod(angle + width / 2.0, 2.0 * np.pi) / width).astype(np.int64)) % n_directions


def preprocess(
    neural: np.ndarray,
    drop_silent_units: bool = True,
    scaling: str = "max",
    where: str = "neural data",
    train_mask: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The authors' preprocessing: drop zero-variance units, then scale.

    Parameters
    ----------
    neural : (trials, T, units) array
    drop_silent_units : bool
        Drop units whose activity has zero variance over the training bins.
    scaling : {"max", "zscore", "none"}
        ``max``: divide by the maximum (the authors' choice; keeps rates non-negative for
        the ReLU decoder). ``zscore``: per unit (pair it with ``model.link=identity``).
    where : str
        The file, for messages.
    train_mask : (trials, T) bool array, optional
        The training bins: every statistic (silent units, maximum, mean, standard deviation)
        comes from them only, so held-out data never shape the preprocessing. None: every bin
        (the authors' whole-session statistics; what ``split=all`` gives anyway).

    Returns
    -------
    x : (trials, T, kept units) float32 array
    kept : (kept units,) int64 array
        Indices of the kept units in ``neural``.
    """
    if scaling not in SCALINGS:
        raise ConfigError(f"datamodule.scaling={scaling!r}: expected one of {SCALINGS}")
    neural = np.asarray(numeric_array(neural, "neural", where), dtype=np.float64)
    check_ndim(neural, "neural", where, (3,), TRIAL_LAYOUT)
    check_not_empty(neural, "neural", where, TRIAL_LAYOUT)
    check_magnitude(neural, "neural", where)
    if train_mask is None:
        flat = neural.reshape(-1, neural.shape[-1])
    else:
        train_mask = np.asarray(train_mask, dtype=bool)
        if train_mask.shape != neural.shape[:2] or not train_mask.any():
            raise DataError(
                f"{where}: training mask of shape {train_mask.shape} with {int(train_mask.sum())} bins; "
                f"expected shape {neural.shape[:2]} (trials, bins) with at least one training bin"
            )
        flat = neural[train_mask]
    silent = np.all(flat == flat[:1], axis=0)  # zero variance, exactly (var() may round to a tiny positive number)
    kept = np.flatnonzero(~silent) if drop_silent_units else np.arange(neural.shape[-1])
    if kept.size == 0:
        raise DataError(
            f"{where}: all {neural.shape[-1]} units have zero variance; expected at least one unit whose activity varies"
        )
    if drop_silent_units and silent.any():
        log.info("%s: dropped %d of %d silent (zero-variance) units", where, int(silent.sum()), silent.size)
    x, flat = neural[..., kept], flat[:, kept]
    if scaling == "max":
        peak = np.abs(flat).max()
        if peak == 0:
            raise DataError(f"{where}: the neural data are all zero; expected some activity to scale by its maximum")
        x = x / peak
    elif scaling == "zscore":
        std = flat.std(axis=0)
        if np.any(std == 0):
            raise ConfigError(
                f"datamodule.scaling=zscore with {int(np.sum(std == 0))} zero-variance units: "
                "expected datamodule.drop_silent_units=true"
            )
        x = (x - flat.mean(axis=0)) / std
    with np.errstate(over="ignore"):  # beyond the float32 range: Inf, reported by Recording.validate
        return x.astype(np.float32), kept.astype(np.int64)


# --------------------------------------------------------------------------- array files


def _trial_array(arrays: dict, key: str, where: str) -> np.ndarray:
    """``arrays[key]`` checked to be a non-empty ``(trials, bins, channels)`` array."""
    value = check_ndim(arrays[key], key, where, (3,), "(trials, bins, channels)")
    return check_not_empty(value, key, where, "(trials, bins, channels)")


def _as_reach_data(arrays: dict, path: Path) -> ReachData:
    """Trial arrays or NLB tensors, picked by the keys present."""
    found, where = arrays["__keys__"], str(path)
    if "neural" in arrays:
        if "vel" not in arrays:
            raise DataError(
                f"{where}: 'neural' without 'vel'; found keys {found}, expected hand velocity 'vel' (trials, bins, 2) too"
            )
        neural = _trial_array(arrays, "neural", where)
        velocity = check_ndim(arrays["vel"], "vel", where, (3,), VEL_LAYOUT)
        if velocity.shape[-1] != 2:
            raise DataError(f"{where}: 'vel' has shape {velocity.shape}; expected {VEL_LAYOUT}")
        check_not_empty(velocity, "vel", where, VEL_LAYOUT)
        direction = arrays.get("direction")
    elif "train_spikes_heldin" in arrays:
        parts = [_trial_array(arrays, key, where) for key in ("train_spikes_heldin", "train_spikes_heldout") if key in arrays]
        if len({part.shape[:2] for part in parts}) != 1:
            raise DataError(
                f"{where}: 'train_spikes_heldout' has shape {parts[-1].shape} but 'train_spikes_heldin' has shape "
                f"{parts[0].shape}; expected the same (trials, bins) in both"
            )
        neural = np.concatenate(parts, axis=-1)
        velocity = _trial_array(arrays, "train_behavior", where) if "train_behavior" in arrays else None
        direction = None
    else:
        raise DataError(
            f"{where}: found keys {found}; expected trial arrays ('neural', 'vel', optional 'direction') "
            "or NLB tensors ('train_spikes_heldin', 'train_spikes_heldout', 'train_behavior')"
        )
    if velocity is not None and velocity.shape[:2] != neural.shape[:2]:
        raise DataError(
            f"{where}: velocity has shape {velocity.shape} but the neural data have shape {neural.shape}; "
            "expected the same (trials, bins) in both"
        )
    if direction is not None:
        direction = integer_labels(direction, "direction", where, length=neural.shape[0])
    return ReachData(neural=neural, velocity=velocity, direction=direction)


# --------------------------------------------------------------------------- NWB


def check_binned_size(
    path: Path, n_trials: int, n_bins: int, n_units: int, bin_size_ms: float, window_ms: Sequence[float]
) -> None:
    """The binned arrays of an NWB session (bin edges, counts, behaviour) must fit the loaders'
    size limit (:func:`datamodules.loading.max_array_bytes`) before they are allocated.

    Raises
    ------
    DataError
        ``FILE: datamodule.bin_size_ms=1e-05 over window_ms=[-250, 450] gives 70000000 bins x ...``.
    """
    needed = 8 * n_trials * (n_bins + 1) * 3 + 4 * n_trials * n_bins * n_units  # edges (x3 with behaviour), counts
    limit = max_array_bytes()
    if needed > limit:
        raise DataError(
            f"{path}: datamodule.bin_size_ms={bin_size_ms:g} over window_ms={list(window_ms)} gives {n_bins} bins x "
            f"{n_trials} trials x {n_units} units ({needed / 2**20:.4g} MB); expected at most {limit / 2**20:.4g} MB "
            "(a larger bin_size_ms, or set FACRNN_MAX_ARRAY_MB=... to allow more)"
        )


def bin_spike_times(spike_times: Sequence[np.ndarray], edges: np.ndarray) -> np.ndarray:
    """Spike counts per bin; a spike at time ``t`` counts in the bin ``[left, right)`` holding it.

    Parameters
    ----------
    spike_times : sequence of (n_spikes_u,) arrays, one per unit, in seconds
    edges : (trials, T + 1) array
        Bin edges of each trial in seconds, increasing.

    Returns
    -------
    (trials, T, units) float32 array of counts.
    """
    counts = np.empty((edges.shape[0], edges.shape[1] - 1, len(spike_times)), dtype=np.float32)
    for unit, times in enumerate(spike_times):
        position = np.searchsorted(np.sort(np.asarray(times, dtype=np.float64)), edges, side="left")
        counts[..., unit] = np.diff(position, axis=1)
    return counts


def bin_time_series(timestamps: np.ndarray, values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Mean of a sampled signal in each bin ``[left, right)``; NaN where a sample in it is NaN.

    Bins holding no sample take the linear interpolation at their centre.

    Parameters
    ----------
    timestamps : (S,) increasing array, seconds
    values : (S, D) array
    edges : (trials, T + 1) array, seconds

    Returns
    -------
    (trials, T, D) float64 array
    """
    values = np.asarray(values, dtype=np.float64).reshape(len(timestamps), -1)
    missing = np.isnan(values)
    padded = np.concatenate([np.zeros((1, values.shape[1])), np.cumsum(np.where(missing, 0.0, values), axis=0)])
    padded_missing = np.concatenate([np.zeros((1, values.shape[1])), np.cumsum(missing, axis=0)])
    index = np.searchsorted(timestamps, edges, side="left")
    start, stop = index[:, :-1], index[:, 1:]
    count = (stop - start)[..., None]
    with np.errstate(invalid="ignore", divide="ignore"):
        means = (padded[stop] - padded[start]) / count
    means[(padded_missing[stop] - padded_missing[start]) > 0] = np.nan
    empty = count[..., 0] == 0
    if empty.any():
        centres = 0.5 * (edges[:, :-1] + edges[:, 1:])[empty]
        means[empty] = np.stack([np.interp(centres, timestamps, values[:, d]) for d in range(values.shape[1])], axis=-1)
    return means


def unit_spike_times(flat: np.ndarray, ends: np.ndarray, where: str) -> list[np.ndarray]:
    """Split the NWB ragged ``spike_times`` column by its ``spike_times_index`` into one array per unit.

    NaN spike times are dropped with a warning giving their count.

    Parameters
    ----------
    flat : (total spikes,) float array
        ``units/spike_times``.
    ends : (units,) int array
        ``units/spike_times_index``: the end of each unit's spikes in ``flat``.
    where : str
        The file, for messages.

    Raises
    ------
    DataError
        The index is not non-decreasing, points outside ``flat``, or a unit's spike times
        are not in increasing order.
    """
    steps = np.diff(np.concatenate([[0], ends]))
    if np.any(steps < 0) or ends[-1] > len(flat):
        unit = int(np.argmax(steps < 0)) if np.any(steps < 0) else len(ends) - 1
        raise DataError(
            f"{where}: units/spike_times_index is out of order or out of range (unit {unit} ends at {int(ends[unit])}, "
            f"{len(flat)} spike times in all); expected non-decreasing end indices up to the number of spike times"
        )
    spike_times = np.split(flat, ends[:-1])
    n_nan = int(np.isnan(flat[: ends[-1]]).sum())
    if n_nan:
        log.warning("%s: dropped %d NaN spike times of %d in units/spike_times", where, n_nan, int(ends[-1]))
        spike_times = [times[~np.isnan(times)] for times in spike_times]
    for unit, times in enumerate(spike_times):
        backwards = np.flatnonzero(np.diff(times) < 0)
        if backwards.size:
            first = int(backwards[0])
            raise DataError(
                f"{where}: spike times of unit {unit} are out of order ({backwards.size} decreases, first "
                f"{times[first]:.6g} s then {times[first + 1]:.6g} s); expected increasing spike times per unit"
            )
    return spike_times


def _find_time_series(nwb, name: str, where: str):
    """A TimeSeries called ``name`` in any processing module or in acquisition."""
    places = [(f"processing/{module}", nwb.processing[module].data_interfaces) for module in nwb.processing]
    places.append(("acquisition", nwb.acquisition))
    for _, interfaces in places:
        if name in interfaces:
            return interfaces[name]
    available = [f"{where}/{key}" for where, interfaces in places for key in interfaces]
    raise DataError(
        f"{where}: no behaviour time series {name!r}; found {available}; "
        "expected one named by datamodule.behaviour_key (null: no behaviour)"
    )


def load_nwb(
    path: str | Path,
    bin_size_ms: float = 20.0,
    align_event: str = "move_onset_time",
    window_ms: Sequence[float] = (-250.0, 450.0),
    behaviour_key: str | None = "hand_vel",
    behaviour_lag_ms: float = 0.0,
    trial_splits: Sequence[str] | None = ("train", "val"),
    include_heldout: bool = True,
) -> ReachData:
    """Trials of an NWB reaching session (DANDI / NLB MC_Maze layout), read with pynwb.

    Spikes of every unit (``units.spike_times``) are counted in bins of ``bin_size_ms``;
    trial ``i`` is the bins whose left edges are ``t_i + window_ms[0] + k bin_size_ms``
    (``t_i`` the trial's ``align_event`` column, NLB convention), ``k = 0 ..
    (window_ms[1] - window_ms[0]) / bin_size_ms - 1``. Behaviour (``behaviour_key``, e.g.
    ``hand_vel``, as stored: mm/s in NLB files) is averaged in the same bins shifted by
    ``behaviour_lag_ms``. Trials with a NaN align time, a ``split`` outside
    ``trial_splits`` (when the trials table has that column) or NaN behaviour in the
    window are left out.
    """
    from pynwb import NWBHDF5IO

    bin_s = float(bin_size_ms) / 1000.0
    start_ms, stop_ms = (float(value) for value in window_ms)
    n_bins = (stop_ms - start_ms) / float(bin_size_ms)
    if bin_size_ms <= 0 or n_bins < 1 or abs(n_bins - round(n_bins)) > 1e-6:
        raise ConfigError(
            f"datamodule.window_ms={list(window_ms)}, bin_size_ms={bin_size_ms}: expected a window that is a "
            "positive whole number of bins"
        )
    n_bins = int(round(n_bins))
    path = check_data_file(path, NWB_SUFFIXES)
    budget = ReadBudget(path)
    with reading(path, "NWB"), NWBHDF5IO(str(path), "r") as io:
        nwb = io.read()
        if nwb.units is None or "spike_times" not in nwb.units.colnames:
            raise DataError(
                f"{path}: no 'units' table with spike_times; expected sorted units with their spike times (NWB ecephys)"
            )
        if nwb.trials is None:
            raise DataError(f"{path}: no 'intervals/trials' table; expected a trials table with the align event")
        trials, units = nwb.trials, nwb.units
        if align_event not in trials.colnames:
            raise DataError(
                f"{path}: datamodule.align_event={align_event!r} is not a trials column; found {list(trials.colnames)}"
            )
        align = np.asarray(read_hdf5_dataset(trials[align_event].data, align_event, path, budget), dtype=np.float64)
        keep = np.isfinite(align)
        if trial_splits is not None and "split" in trials.colnames:
            split = np.array(
                [
                    s.decode() if isinstance(s, bytes) else str(s)
                    for s in read_hdf5_dataset(trials["split"].data, "trials/split", path, budget, strings=True)
                ]
            )
            keep &= np.isin(split, list(trial_splits))
        index = units["spike_times"]
        flat = np.asarray(read_hdf5_dataset(index.target.data, "units/spike_times", path, budget), dtype=np.float64)
        ends = np.asarray(read_hdf5_dataset(index.data, "units/spike_times_index", path, budget), dtype=np.int64)
        if len(ends) == 0:
            raise DataError(f"{path}: the units table is empty; expected spike times of at least one unit")
        spike_times = unit_spike_times(flat, ends, str(path))
        if not include_heldout and "heldout" in units.colnames:
            heldout = np.asarray(read_hdf5_dataset(units["heldout"].data, "units/heldout", path, budget), dtype=bool)
            spike_times = [times for times, out in zip(spike_times, heldout) if not out]
        series = _find_time_series(nwb, behaviour_key, str(path)) if behaviour_key else None
        if series is not None:
            values = np.asarray(read_hdf5_dataset(series.data, f"{behaviour_key}/data", path, budget), dtype=np.float64)
            if series.timestamps is not None:
                stamps = read_hdf5_dataset(series.timestamps, f"{behaviour_key}/timestamps", path, budget)
                stamps = np.asarray(stamps, dtype=np.float64)
            else:
                stamps = float(series.starting_time or 0.0) + np.arange(len(values)) / float(series.rate)
            if len(values) < 2 or len(stamps) != len(values) or not np.all(np.diff(stamps) >= 0):
                raise DataError(
                    f"{path}: behaviour series {behaviour_key!r} has {len(values)} samples and {len(stamps)} "
                    "timestamps; expected at least 2 samples with one increasing timestamp each"
                )
    check_binned_size(path, len(align), n_bins, len(spike_times), bin_size_ms, window_ms)
    left = align[:, None] + (start_ms / 1000.0) + bin_s * np.arange(n_bins + 1)[None, :]
    velocity = None
    if series is not None:
        shifted = left + float(behaviour_lag_ms) / 1000.0
        velocity = bin_time_series(stamps, values, shifted)
        inside = (shifted[:, 0] >= stamps[0]) & (shifted[:, -1] <= stamps[-1] + bin_s)
        keep &= inside & np.isfinite(velocity).all(axis=(1, 2))
    if not keep.any():
        raise DataError(f"{path}: no trial left after removing NaN {align_event}, other splits and missing behaviour")
    log.info(
        "%s: %d of %d trials kept, %d units, %d bins of %g ms",
        path,
        keep.sum(),
        len(keep),
        len(spike_times),
        n_bins,
        bin_size_ms,
    )
    neural = bin_spike_times(spike_times, left[keep])
    return ReachData(neural=neural, velocity=None if velocity is None else velocity[keep])


# --------------------------------------------------------------------------- entry point


def load_m1_recording(
    path: str | Path | None = None,
    drop_silent_units: bool = True,
    scaling: str = "max",
    n_directions: int = 8,
    nan_policy: str = "error",
    training_mask: Callable[[int, int, np.ndarray | None], np.ndarray] | None = None,
    **nwb_options,
) -> Recording:
    """Read and preprocess an M1 reaching session into a :class:`Recording`.

    Parameters
    ----------
    path : str or Path, optional
        ``.npz`` / ``.h5`` trial arrays or NLB tensors, or ``.nwb``; None = the bundled session.
    drop_silent_units, scaling
        See :func:`preprocess`.
    n_directions : int
        Sectors of :func:`reach_directions` when the file gives no ``direction``.
    nan_policy : {"error", "drop", "interpolate"}
        NaN/Inf in the neural data or velocity: stop, drop the affected trials, or
        interpolate along time (:func:`datamodules.validation.apply_nan_policy`).
    training_mask : callable, optional
        ``training_mask(n_trials, n_bins, directions)`` -> ``(trials, bins)`` bool mask of the
        training bins (the datamodule's split); the preprocessing statistics come from those
        bins only. None: from every bin.
    **nwb_options
        Passed to :func:`load_nwb` for ``.nwb`` files.
    """
    path = Path(path) if path else BUNDLED_SESSION
    where = str(path)
    if path.suffix.lower() in NWB_SUFFIXES:
        data = load_nwb(path, **nwb_options)
    else:
        data = _as_reach_data(read_arrays(path, TRIAL_ARRAY_KEYS + NLB_KEYS), path)
    check_trial_length(data.neural.shape[1], where)
    repaired, kept_trials = apply_nan_policy(
        {"neural": data.neural, "vel": data.velocity}, nan_policy, where, single_sequence=False
    )
    velocity = repaired["vel"]
    direction = None if data.direction is None else data.direction[kept_trials]
    if direction is None and velocity is not None and velocity.shape[-1] == 2:
        direction = reach_directions(velocity, n_directions)
    neural = repaired["neural"]
    train_mask = None if training_mask is None else training_mask(neural.shape[0], neural.shape[1], direction)
    x, kept = preprocess(neural, drop_silent_units, scaling, where, train_mask)
    extras = {"units_kept": kept}
    if direction is not None:
        extras["direction"] = direction
    log.info(
        "%s: %d trials x %d bins, %d of %d units kept, scaling %s",
        path,
        *x.shape[:2],
        x.shape[2],
        data.neural.shape[2],
        scaling,
    )
    return Recording(x=x, behaviour=velocity, source=where, extras=extras)


class MonkeyM1DataModule(RecordingDataModule):
    """M1 reaching trials (see :func:`load_m1_recording`); ``split=trials`` is stratified by direction.

    Parameters
    ----------
    path : str, optional
        Data file; None (default) = the bundled session ``data/m1_center_out.npz``.
    drop_silent_units, scaling, n_directions
        Preprocessing, see :func:`load_m1_recording`.
    bin_size_ms, align_event, window_ms, behaviour_key, behaviour_lag_ms, trial_splits, include_heldout
        NWB only, see :func:`load_nwb`.
    **kwargs
        :class:`RecordingDataModule` settings (``batch_size``, ``split`` — default ``trials``:
        held-out trials stratified by reach direction; ``all`` is the authors' in-sample
        protocol —, ``nan_policy`` ...).
    """

    def __init__(
        self,
        path: str | None = None,
        drop_silent_units: bool = True,
        scaling: str = "max",
        n_directions: int = 8,
        bin_size_ms: float = 20.0,
        align_event: str = "move_onset_time",
        window_ms: Sequence[float] = (-250.0, 450.0),
        behaviour_key: str | None = "hand_vel",
        behaviour_lag_ms: float = 0.0,
        trial_splits: Sequence[str] | None = ("train", "val"),
        include_heldout: bool = True,
        **kwargs,
    ) -> None:
        kwargs.setdefault("split", "trials")
        super().__init__(**kwargs)
        if scaling not in SCALINGS:
            raise ConfigError(f"datamodule.scaling={scaling!r}: expected one of {SCALINGS}")
        self.path = path
        self.drop_constant_channels = bool(drop_silent_units)
        self.options = {"drop_silent_units": drop_silent_units, "scaling": scaling, "n_directions": n_directions}
        self.nwb_options = {
            "bin_size_ms": bin_size_ms,
            "align_event": align_event,
            "window_ms": tuple(window_ms),
            "behaviour_key": behaviour_key,
            "behaviour_lag_ms": behaviour_lag_ms,
            "trial_splits": None if trial_splits is None else tuple(trial_splits),
            "include_heldout": include_heldout,
        }

    def load_recording(self) -> Recording:
        return load_m1_recording(
            self.path, **self.options, nan_policy=self.nan_policy, training_mask=self.training_mask, **self.nwb_options
        )

    def trial_strata(self, recording: Recording) -> np.ndarray | None:
        return recording.extras.get("direction")
