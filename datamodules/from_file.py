"""A user's own (simulated) recording with optional ground truth, from ``.npz`` or ``.h5``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from datamodules.base import RecordingDataModule
from datamodules.loading import read_arrays
from datamodules.recording import Recording
from datamodules.validation import (
    apply_nan_policy,
    check_group_sizes_fit,
    check_ndim,
    check_not_empty,
    check_trial_length,
    model_grouping,
)
from facrnn.errors import DataError

KEYS = ("x", "z", "A", "B", "inputs", "group_sizes")
X_LAYOUT = "(time, neurons) or (trials, time, neurons)"


def load_file_recording(path: str | Path, nan_policy: str = "error") -> Recording:
    """Read ``x`` (time, neurons) or (trials, time, neurons) and optional ``z``, ``A``, ``B``,
    ``inputs``, ``group_sizes`` into a :class:`Recording`.

    A 2-D ``x`` is one long recording; ``z`` and ``inputs`` then are 2-D as well. A
    ``group_sizes`` given must fit the model trained on the file
    (:meth:`FromFileDataModule.check_model_grouping`).

    Parameters
    ----------
    path : str or Path
    nan_policy : {"error", "drop", "interpolate"}
        What to do with NaN/Inf in ``x``, ``z`` or ``inputs``
        (:func:`datamodules.validation.apply_nan_policy`): drop bins of one long recording,
        drop trials of trial data, or interpolate along time.

    Raises
    ------
    DataError, DataFileNotFoundError
        Messages start with the file name and end with what was expected.
    """
    arrays = read_arrays(path, KEYS)
    where = str(path)
    if "x" not in arrays:
        raise DataError(
            f"{where}: required key 'x' missing; found keys {arrays['__keys__']}, expected 'x' and optionally {list(KEYS[1:])}"
        )
    x = check_ndim(arrays["x"], "x", where, (2, 3), X_LAYOUT)
    check_not_empty(x, "x", where, X_LAYOUT)
    single = x.ndim == 2
    check_trial_length(x.shape[-2], where)

    def as_trials(key: str) -> np.ndarray | None:
        if key not in arrays:
            return None
        value = arrays[key]
        if value.ndim != x.ndim:
            raise DataError(
                f"{where}: '{key}' has shape {value.shape} but 'x' has shape {x.shape}; "
                f"expected '{key}' with the leading dimensions of 'x' {x.shape[:-1]}"
            )
        return value[None] if single else value

    per_bin = {"x": x[None] if single else x, "z": as_trials("z"), "inputs": as_trials("inputs")}
    for key, name in (("z", "latents"), ("inputs", "inputs")):
        if per_bin[key] is not None and per_bin[key].shape[:2] != per_bin["x"].shape[:2]:
            raise DataError(
                f"{where}: '{name}' has shape {arrays[key].shape} (file key '{key}') but 'x' has shape {x.shape}; "
                f"expected the same {'time' if single else '(trials, time)'} dimensions in both"
            )
    per_bin, _ = apply_nan_policy(per_bin, nan_policy, where, single_sequence=single)
    return Recording(
        x=per_bin["x"],
        latents=per_bin["z"],
        external_input=per_bin["inputs"],
        A=arrays.get("A"),
        B=arrays.get("B"),
        group_sizes=arrays.get("group_sizes"),
        single_sequence=single,
        source=where,
    )


class FromFileDataModule(RecordingDataModule):
    """Data from ``path`` (see :func:`load_file_recording`); split defaults to even/odd bins."""

    def __init__(self, path: str, **kwargs) -> None:
        super().__init__(**kwargs)
        if not path:
            raise DataError("datamodule.path is empty: expected the path of an .npz or .h5 file")
        self.path = path

    def load_recording(self) -> Recording:
        return load_file_recording(self.path, self.nan_policy)

    def check_model_grouping(self, model: Mapping[str, Any]) -> None:
        """Raise ``ConfigError`` if the file's ground-truth ``group_sizes`` disagree with the
        grouping of ``model`` (the ``model`` config section: ``latent_dim``, ``n_groups``,
        ``group_sizes``, ``group_rank``); see :func:`datamodules.validation.check_group_sizes_fit`.
        Call after :meth:`setup`."""
        sizes, settings = model_grouping(
            model.get("latent_dim"), model.get("n_groups"), model.get("group_sizes"), model.get("group_rank")
        )
        check_group_sizes_fit(sizes, settings, self.recording.group_sizes, self.recording.source)
