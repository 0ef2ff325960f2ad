"""Checks and opt-in repairs shared by every data loader (issue 7, docs/errors.md).

Every check raises :class:`~facrnn.errors.DataError` (or
:class:`~facrnn.errors.DataFileNotFoundError`) with a one- or two-line message that starts
with the file (or config key) at fault and ends with what was expected. Arrays are
checked in the canonical ``(trials, time, channels)`` layout unless said otherwise.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from facrnn.errors import ConfigError, DataError, DataFileNotFoundError, FacRNNError

log = logging.getLogger(__name__)

NAN_POLICIES = ("error", "drop", "interpolate")
PICKLE_SUFFIXES = (".pkl", ".pickle")
CONVERT_COMMAND = "python -m datamodules.convert"
MIN_BINS = 2  # the encoder reads the previous bin
MIN_CHANNELS = 2  # a low-rank network of one channel is a scalar autoregression
MAX_MAGNITUDE = 1e15  # beyond: float32 sums and squares overflow or lose every digit in training
MIN_MAGNITUDE = 1e-30  # below (for the largest value): denormal-scale data, gradients underflow


# ------------------------------------------------------------------------------ files


def check_nan_policy(nan_policy: str) -> str:
    """Return ``nan_policy`` if it is one of :data:`NAN_POLICIES`, else raise ``ConfigError``."""
    if nan_policy not in NAN_POLICIES:
        raise ConfigError(f"datamodule.nan_policy={nan_policy!r}: expected one of {list(NAN_POLICIES)}")
    return nan_policy


def check_data_file(path: str | Path, suffixes: Sequence[str]) -> Path:
    """The path of an existing, readable data file with one of ``suffixes``.

    Raises
    ------
    DataFileNotFoundError
        The file does not exist.
    DataError
        A pickle, another unsupported extension, a directory or an unreadable file.
    """
    path = Path(path)
    expected = " or ".join(suffixes)
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise DataError(
            f"{path}: pickle files are never loaded (they can run code); expected {expected}, "
            f"e.g. from `{CONVERT_COMMAND} {path} {path.with_suffix('.h5')}`"
        )
    if suffix not in suffixes:
        raise DataError(f"{path}: unsupported extension {suffix or '(none)'!r}; expected one of {list(suffixes)}")
    if not path.exists():
        raise DataFileNotFoundError(f"{path}: file not found; expected an existing {expected} file")
    if not path.is_file():
        raise DataError(f"{path}: not a regular file (a directory?); expected a readable {expected} file")
    if not os.access(path, os.R_OK):
        raise DataError(f"{path}: permission denied; expected a readable {expected} file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty (0 bytes); expected a complete {expected} file")
    return path


@contextlib.contextmanager
def reading(path: str | Path, kind: str) -> Iterator[None]:
    """Turn any low-level error raised while parsing ``path`` into a ``DataError`` naming it.

    Used around the calls into h5py / numpy / pynwb only: a truncated or corrupted file can
    make those raise almost any exception type (``OSError``, ``KeyError``, ``zipfile.BadZipFile``,
    ``MemoryError`` for a corrupted shape, ...). The project's own errors pass through.
    """
    try:
        yield
    except FacRNNError:
        raise
    except Exception as error:  # noqa: BLE001 - the boundary to untrusted files
        detail = " ".join(str(error).split())[:200] or "no detail"
        raise DataError(
            f"{path}: cannot be read as {kind} ({type(error).__name__}: {detail}); expected a valid, complete {kind} file"
        ) from error


# ---------------------------------------------------------------------------- arrays


def numeric_array(value: object, name: str, where: str) -> np.ndarray:
    """``value`` as a real-valued array: booleans, integers and floats pass; anything else raises.

    Raises
    ------
    DataError
        Complex numbers, strings, bytes, objects, structured records, dates.
    """
    array = np.asarray(value)
    kind = array.dtype.kind
    if kind == "c":
        raise DataError(f"{where}: '{name}' has complex dtype {array.dtype}; expected real numbers")
    if kind not in "biuf":
        raise DataError(f"{where}: '{name}' has dtype {array.dtype} (not numbers); expected real numbers (float, int or bool)")
    return array


def check_ndim(array: np.ndarray, name: str, where: str, ndims: Sequence[int], layout: str) -> np.ndarray:
    """Raise unless ``array.ndim`` is one of ``ndims``; ``layout`` describes the expected axes."""
    if array.ndim not in tuple(ndims):
        raise DataError(f"{where}: '{name}' has {array.ndim} dimensions, shape {array.shape}; expected {layout}")
    return array


def check_not_empty(array: np.ndarray, name: str, where: str, layout: str) -> np.ndarray:
    """Raise if ``array`` has no element."""
    if array.size == 0:
        raise DataError(
            f"{where}: '{name}' is empty (shape {array.shape}); expected at least one value along every axis of {layout}"
        )
    return array


def check_same_leading(
    first: np.ndarray, first_name: str, second: np.ndarray, second_name: str, where: str, n_axes: int, axes: str
) -> None:
    """Raise unless the first ``n_axes`` dimensions of two arrays agree, naming both."""
    if first.ndim < n_axes or second.ndim < n_axes or first.shape[:n_axes] != second.shape[:n_axes]:
        raise DataError(
            f"{where}: '{second_name}' has shape {second.shape} but '{first_name}' has shape {first.shape}; "
            f"expected the same {axes} in both"
        )


def non_finite_message(
    array: np.ndarray,
    name: str,
    where: str,
    axes: Sequence[str] = ("trial", "bin", "channel"),
    repairable: bool = True,
) -> str | None:
    """A message naming how many values of ``array`` are NaN/Inf and where the first is; None if all finite.

    ``repairable``: whether ``datamodule.nan_policy`` applies to this array (it is named as
    the alternative then).
    """
    bad = ~np.isfinite(array)
    n_bad = int(bad.sum())
    if not n_bad:
        return None
    first = np.unravel_index(int(np.argmax(bad.ravel())), array.shape)
    position = ", ".join(f"{axis} {int(index)}" for axis, index in zip(axes, first))
    n_nan = int(np.isnan(array).sum())
    return f"{where}: '{name}' holds {n_bad} NaN/Inf values ({n_nan} NaN, {n_bad - n_nan} Inf; first at {position}); " + (
        "expected finite values, or datamodule.nan_policy=drop|interpolate" if repairable else "expected finite values"
    )


def check_finite(
    array: np.ndarray,
    name: str,
    where: str,
    axes: Sequence[str] = ("trial", "bin", "channel"),
    repairable: bool = True,
) -> None:
    """Raise ``DataError`` with the count and first position of NaN/Inf values in ``array``."""
    message = non_finite_message(array, name, where, axes, repairable)
    if message:
        raise DataError(message)


def check_trial_length(n_bins: int, where: str) -> None:
    """Raise if a trial (or the recording) has fewer than :data:`MIN_BINS` time bins."""
    if n_bins < MIN_BINS:
        raise DataError(
            f"{where}: trials have {n_bins} time bin(s); expected at least {MIN_BINS} "
            "(the encoder reads each bin's previous bin)"
        )


def warn_if_axes_swapped(shape: tuple[int, ...], name: str, where: str) -> bool:
    """Log a warning when one long ``(time, channels)`` recording has more channels than bins.

    Returns
    -------
    bool
        Whether the warning was logged.
    """
    n_bins, n_channels = shape[-2], shape[-1]
    if n_channels > n_bins:
        log.warning(
            "%s: '%s' has shape %s, more channels (%d) than time bins (%d); are the axes swapped? Expected (time, channels)",
            where,
            name,
            tuple(shape),
            n_channels,
            n_bins,
        )
        return True
    return False


def integer_labels(value: object, name: str, where: str, length: int | None = None, minimum: int = 0) -> np.ndarray:
    """A 1-D int64 array of finite whole numbers ``>= minimum`` (labels, group sizes)."""
    array = numeric_array(value, name, where)
    if length is not None and array.ravel().shape != (length,):
        raise DataError(f"{where}: '{name}' has shape {array.shape}; expected one value per trial ({length},)")
    array = array.ravel()
    as_float = array.astype(np.float64)
    if not np.isfinite(as_float).all() or np.any(as_float != np.round(as_float)) or np.any(as_float < minimum):
        shown = f"{array[:8].tolist()} (first 8 values)" if array.size > 8 else f"{array.tolist()}"
        raise DataError(f"{where}: '{name}' holds {shown}; expected whole numbers >= {minimum}")
    return as_float.astype(np.int64)


def positive_scalar(value: object, name: str, where: str) -> float:
    """A single finite positive number (e.g. a frame rate)."""
    array = numeric_array(value, name, where)
    if array.size != 1 or not np.isfinite(array.astype(np.float64)).all() or float(array.ravel()[0]) <= 0:
        raise DataError(
            f"{where}: '{name}' is {array.ravel()[:4].tolist()} with shape {array.shape}; expected one positive number"
        )
    return float(array.ravel()[0])


def check_magnitude(array: np.ndarray, name: str, where: str) -> None:
    """Raise ``DataError`` when the finite values of ``array`` are of an absurd scale.

    Refused: a largest ``|value|`` above :data:`MAX_MAGNITUDE` (``1e30`` spike counts,
    uninitialised memory) or a non-zero largest ``|value|`` below :data:`MIN_MAGNITUDE`
    (denormal-scale data that train to nothing). All-zero arrays pass (the variance checks
    report them).
    """
    values = np.asarray(array)
    if values.size == 0 or values.dtype.kind not in "iuf":
        return
    with np.errstate(invalid="ignore", over="ignore"):
        magnitude = np.abs(values.astype(np.float64, copy=False))
    finite = magnitude[np.isfinite(magnitude)]
    if finite.size == 0:
        return
    peak = float(finite.max())
    if peak > MAX_MAGNITUDE:
        raise DataError(
            f"{where}: '{name}' holds values up to |{name}| = {peak:.3g}; expected |values| <= {MAX_MAGNITUDE:.0e} "
            "(rescale the data, e.g. to counts per bin or z-scores)"
        )
    if 0 < peak < MIN_MAGNITUDE:
        raise DataError(
            f"{where}: '{name}' holds only tiny values (largest |{name}| = {peak:.3g}, denormal scale); "
            f"expected a largest |value| >= {MIN_MAGNITUDE:.0e} (rescale the data)"
        )


def check_min_channels(n_channels: int, name: str, where: str) -> None:
    """Raise ``DataError`` if a recording has fewer than :data:`MIN_CHANNELS` channels."""
    if n_channels < MIN_CHANNELS:
        raise DataError(
            f"{where}: '{name}' has {n_channels} channel(s); expected at least {MIN_CHANNELS} neurons/channels "
            "(a low-rank network needs several)"
        )


def check_latents_fit(latent_dim: int, n_channels: int, source: str) -> None:
    """Raise ``ConfigError`` if ``model.latent_dim`` exceeds the number of channels of the data.

    A rank-K connectivity ``W = A B`` with ``A`` of shape ``(N, K)`` has rank at most ``N``:
    ``K > N`` leaves latent directions the data cannot constrain.

    Parameters
    ----------
    latent_dim : int
        ``model.latent_dim`` (K).
    n_channels : int
        Channels of the loaded recording (N).
    source : str
        The recording, for messages.
    """
    if int(latent_dim) > int(n_channels):
        raise ConfigError(
            f"model.latent_dim={latent_dim}: {source} has only {n_channels} channels; "
            f"expected model.latent_dim <= {n_channels} (the rank cannot exceed the number of channels)"
        )


def model_grouping(
    latent_dim: int | None = None,
    n_groups: int | None = None,
    group_sizes: Sequence[int] | None = None,
    group_rank: int | None = None,
) -> tuple[list[int], str]:
    """The model's group sizes and the settings that gave them, for messages:
    ``([3, 3], "model.latent_dim=6, model.n_groups=2 (groups [3, 3])")``.

    Raises
    ------
    ConfigError
        The settings do not give a grouping (:func:`facrnn.core.grouping.resolve_group_sizes`).
    """
    from facrnn.core.grouping import resolve_group_sizes

    try:
        sizes = resolve_group_sizes(latent_dim, n_groups, group_sizes, group_rank)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if group_sizes is not None:
        return sizes, f"model.group_sizes={sizes}"
    if group_rank is not None:
        return sizes, f"model.n_groups={n_groups}, model.group_rank={group_rank} (groups {sizes})"
    return sizes, f"model.latent_dim={latent_dim}, model.n_groups={n_groups} (groups {sizes})"


def check_group_sizes_fit(
    model_sizes: Sequence[int], model_settings: str, true_sizes: Sequence[int] | None, source: str
) -> None:
    """Raise ``ConfigError`` if the ground-truth ``group_sizes`` a data file carries disagree with the model's grouping.

    The model must have the file's latent dimension ``K = sum(group_sizes)``; with as many
    groups as the file, the same sizes (a different number of groups, as a group-selection
    sweep over ``model.n_groups`` trains, is scored with the file's grouping). Without
    ``group_sizes`` in the file there is nothing to check.

    Parameters
    ----------
    model_sizes : sequence of int
        The model's group sizes.
    model_settings : str
        The settings that gave them (:func:`model_grouping`), for messages.
    true_sizes : sequence of int, optional
        The file's ``group_sizes``.
    source : str
        The file, for messages.
    """
    if true_sizes is None:
        return
    model, true = [int(size) for size in model_sizes], [int(size) for size in true_sizes]
    suggestion = f"model.group_sizes=[{','.join(map(str, true))}]"
    if sum(model) != sum(true):
        raise ConfigError(
            f"{model_settings}: {source} has 'group_sizes' {true} (K={sum(true)}); expected model.latent_dim={sum(true)}, "
            f"the file's latent dimension, e.g. {suggestion} (or a file without 'group_sizes')"
        )
    if len(model) == len(true) and model != true:
        raise ConfigError(
            f"{model_settings}: {source} has 'group_sizes' {true}; expected the file's sizes for {len(true)} groups: "
            f"{suggestion} (or another number of groups, scored with the file's grouping)"
        )


# ------------------------------------------------------------------------ NaN policy


def _interpolate_along_time(values: np.ndarray, name: str, where: str) -> tuple[np.ndarray, int]:
    """Linear interpolation of non-finite values along axis 1 of ``(trials, T, C)``, per trial and channel.

    Values before the first (after the last) finite bin take the first (last) finite value.
    """
    values = np.array(values, dtype=np.float64)
    bad = ~np.isfinite(values)
    n_bad = int(bad.sum())
    if not n_bad:
        return values, 0
    bins = np.arange(values.shape[1])
    for trial, channel in zip(*np.nonzero(bad.any(axis=1))):
        column = values[trial, :, channel]
        good = ~bad[trial, :, channel]
        if not good.any():
            raise DataError(
                f"{where}: '{name}' trial {trial}, channel {channel} has no finite value to interpolate from; "
                "expected datamodule.nan_policy=drop or at least one finite bin per trial and channel"
            )
        column[~good] = np.interp(bins[~good], bins[good], column[good])
    return values, n_bad


def apply_nan_policy(
    arrays: Mapping[str, np.ndarray | None],
    policy: str,
    where: str,
    single_sequence: bool,
) -> tuple[dict[str, np.ndarray | None], np.ndarray]:
    """Check or repair non-finite values in per-bin arrays ``(trials, T, ...)``.

    Parameters
    ----------
    arrays : mapping name -> (trials, T, C) array or None
        Arrays sharing the ``(trials, T)`` axes (``x``, inputs, latents, behaviour).
    policy : {"error", "drop", "interpolate"}
        ``error``: raise naming the first array with NaN/Inf, how many and where.
        ``drop``: drop the affected bins of one long recording (the segments around them
        are joined), or the affected trials of trial data. ``interpolate``: linear
        interpolation along time per trial and channel. Both repairs log how many values
        they changed.
    where : str
        The file, for messages.
    single_sequence : bool
        One long recording (drop bins) rather than trials (drop trials).

    Returns
    -------
    arrays : dict
        The checked or repaired arrays (float64 where repaired).
    kept_trials : (trials kept,) int64 array
        Indices of the trials kept (all of them unless trials were dropped).
    """
    check_nan_policy(policy)
    present = {name: value for name, value in arrays.items() if value is not None}
    n_trials = next(iter(present.values())).shape[0] if present else 0
    kept_trials = np.arange(n_trials)
    bad_bins = {name: ~np.isfinite(value).reshape(*value.shape[:2], -1).all(axis=-1) for name, value in present.items()}
    if not any(mask.any() for mask in bad_bins.values()):
        return dict(arrays), kept_trials
    if policy == "error":
        for name, value in present.items():
            check_finite(value, name, where)
    result: dict[str, np.ndarray | None] = dict(arrays)
    if policy == "interpolate":
        total = 0
        for name, value in present.items():
            result[name], n_fixed = _interpolate_along_time(value, name, where)
            total += n_fixed
        log.warning("%s: nan_policy=interpolate filled %d NaN/Inf values by linear interpolation along time", where, total)
        return result, kept_trials
    any_bad = np.logical_or.reduce(list(bad_bins.values()))
    if single_sequence:
        keep_bins = ~any_bad[0]
        if keep_bins.sum() < MIN_BINS:
            raise DataError(
                f"{where}: nan_policy=drop leaves {int(keep_bins.sum())} of {keep_bins.size} bins; "
                f"expected at least {MIN_BINS} bins with finite values"
            )
        for name, value in present.items():
            result[name] = value[:, keep_bins]
        log.warning(
            "%s: nan_policy=drop removed %d of %d bins holding NaN/Inf", where, int((~keep_bins).sum()), keep_bins.size
        )
        return result, kept_trials
    keep = ~any_bad.any(axis=1)
    if not keep.any():
        raise DataError(
            f"{where}: nan_policy=drop would remove all {n_trials} trials; expected some trials with finite values"
        )
    for name, value in present.items():
        result[name] = value[keep]
    log.warning("%s: nan_policy=drop removed %d of %d trials holding NaN/Inf", where, int((~keep).sum()), n_trials)
    return result, kept_trials[keep]


# ------------------------------------------------------------------ constant channels


def constant_channels(x: np.ndarray) -> np.ndarray:
    """Boolean ``(channels,)``: channels of ``(trials, T, channels)`` with zero variance over all bins."""
    flat = np.asarray(x).reshape(-1, x.shape[-1])
    return np.all(flat == flat[:1], axis=0)


def check_some_variance(x: np.ndarray, name: str, where: str) -> np.ndarray:
    """Boolean mask of the channels that vary; ``DataError`` if none does."""
    constant = constant_channels(x)
    if constant.all():
        raise DataError(
            f"{where}: all {constant.size} channels of '{name}' have zero variance; "
            "expected at least one channel whose activity varies"
        )
    return ~constant


__all__ = [
    "CONVERT_COMMAND",
    "MAX_MAGNITUDE",
    "MIN_BINS",
    "MIN_CHANNELS",
    "MIN_MAGNITUDE",
    "NAN_POLICIES",
    "apply_nan_policy",
    "check_data_file",
    "check_finite",
    "check_group_sizes_fit",
    "check_latents_fit",
    "check_magnitude",
    "check_min_channels",
    "check_nan_policy",
    "check_ndim",
    "check_not_empty",
    "check_same_leading",
    "check_some_variance",
    "check_trial_length",
    "constant_channels",
    "integer_labels",
    "model_grouping",
    "non_finite_message",
    "numeric_array",
    "positive_scalar",
    "reading",
    "warn_if_axes_swapped",
]
