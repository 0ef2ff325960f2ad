"""Reading arrays from user files (``.npz`` / ``.h5``) without ever unpickling."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

ARRAY_SUFFIXES = (".npz", ".h5", ".hdf5")


def read_arrays(path: str | Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Read the named datasets that exist in an ``.npz`` or HDF5 file.

    Returns
    -------
    dict
        The subset of ``keys`` present in the file, plus ``"__keys__"`` listing every key found.

    Raises
    ------
    FileNotFoundError, ValueError
        With the file name and what was expected.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: file not found; expected an existing .npz or .h5 file")
    suffix = path.suffix.lower()
    if suffix == ".pkl" or suffix == ".pickle":
        raise ValueError(f"{path}: pickle files are never loaded (they can run code); expected .npz or .h5")
    if suffix not in ARRAY_SUFFIXES:
        raise ValueError(f"{path}: unsupported extension {suffix!r}; expected one of {ARRAY_SUFFIXES}")
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as stored:
                found = list(stored.files)
                arrays = {key: np.asarray(stored[key]) for key in keys if key in stored.files}
        else:
            with h5py.File(path, "r") as stored:
                found = list(stored.keys())
                arrays = {key: np.asarray(stored[key][()]) for key in keys if key in stored}
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(f"{path}: cannot be read as {suffix} ({error}); expected a valid {suffix} file") from None
    arrays["__keys__"] = found
    return arrays
