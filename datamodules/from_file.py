"""A user's own (simulated) recording with optional ground truth, from ``.npz`` or ``.h5``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from datamodules.base import RecordingDataModule
from datamodules.loading import read_arrays
from datamodules.recording import Recording

KEYS = ("x", "z", "A", "B", "inputs", "group_sizes")


def load_file_recording(path: str | Path) -> Recording:
    """Read ``x`` (time, neurons) or (trials, time, neurons) and optional ``z``, ``A``, ``B``,
    ``inputs``, ``group_sizes`` into a :class:`Recording`.

    A 2-D ``x`` is one long recording; ``z`` and ``inputs`` then are 2-D as well.
    """
    arrays = read_arrays(path, KEYS)
    if "x" not in arrays:
        raise ValueError(f"{path}: required key 'x' missing; found keys {arrays['__keys__']}, expected 'x' and optionally {list(KEYS[1:])}")
    x = arrays["x"]
    if x.ndim not in (2, 3):
        raise ValueError(f"{path}: 'x' has shape {x.shape}; expected (time, neurons) or (trials, time, neurons)")
    single = x.ndim == 2

    def as_trials(key: str) -> np.ndarray | None:
        if key not in arrays:
            return None
        value = arrays[key]
        if value.ndim != x.ndim:
            raise ValueError(f"{path}: '{key}' has shape {value.shape}; expected the leading dimensions of 'x' {x.shape[:-1]}")
        return value[None] if single else value

    return Recording(
        x=x[None] if single else x,
        latents=as_trials("z"),
        external_input=as_trials("inputs"),
        A=arrays.get("A"),
        B=arrays.get("B"),
        group_sizes=arrays.get("group_sizes"),
        single_sequence=single,
        source=str(path),
    )


class FromFileDataModule(RecordingDataModule):
    """Data from ``path`` (see :func:`load_file_recording`); split defaults to even/odd bins."""

    def __init__(self, path: str, **kwargs) -> None:
        super().__init__(**kwargs)
        if not path:
            raise ValueError("datamodule.path is empty: expected the path of an .npz or .h5 file")
        self.path = path

    def load_recording(self) -> Recording:
        return load_file_recording(self.path)
