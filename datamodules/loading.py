"""Reading arrays from user files (``.npz`` / ``.h5``) without ever unpickling."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from datamodules.validation import check_data_file, numeric_array, reading
from facrnn.errors import DataError

ARRAY_SUFFIXES = (".npz", ".h5", ".hdf5")


def read_arrays(path: str | Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Read the named datasets that exist in an ``.npz`` or HDF5 file.

    Every dataset read must hold real numbers (bool, int or float); pickled objects are
    never loaded (``.pkl`` files are refused with a pointer to ``python -m datamodules.convert``).

    Returns
    -------
    dict
        The subset of ``keys`` present in the file, plus ``"__keys__"`` listing every key found.

    Raises
    ------
    DataFileNotFoundError
        The file does not exist.
    DataError
        Unsupported extension, unreadable, truncated or corrupted file, a key that is an
        HDF5 group rather than a dataset, or a non-numeric dataset; the message starts with
        the file name and ends with what was expected.
    """
    path = check_data_file(path, ARRAY_SUFFIXES)
    suffix = path.suffix.lower()
    kind = ".npz" if suffix == ".npz" else "HDF5"
    with reading(path, kind):
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as stored:
                found = list(stored.files)
                arrays = {key: np.asarray(stored[key]) for key in keys if key in stored.files}
        else:
            with h5py.File(path, "r") as stored:
                found = list(stored.keys())
                arrays = {}
                for key in keys:
                    if key not in stored:
                        continue
                    item = stored[key]
                    if not isinstance(item, h5py.Dataset):
                        raise DataError(
                            f"{path}: '{key}' is an HDF5 {type(item).__name__.lower()}, not a dataset; expected an array"
                        )
                    arrays[key] = np.asarray(item[()])
    for key, value in arrays.items():
        arrays[key] = numeric_array(value, key, str(path))
    arrays["__keys__"] = found
    return arrays
