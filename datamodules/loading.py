"""Reading arrays from user files (``.npz`` / ``.h5``) without ever unpickling.

Every array is sized from its header before a byte of it is read (issue 19): a dataset
that inflates beyond :func:`max_array_bytes` (``FACRNN_MAX_ARRAY_MB``, default
:data:`DEFAULT_MAX_ARRAY_MB`) is refused, one by one and in total per file, so a
compressed "bomb" cannot exhaust the memory. HDF5 datasets must be plain data stored in
the file itself: external raw storage, virtual datasets and external links are refused.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from datamodules.validation import check_data_file, numeric_array, reading
from facrnn.errors import ConfigError, DataError

if TYPE_CHECKING:  # imported where a file is read: the training path of other datamodules never loads h5py
    import h5py

ARRAY_SUFFIXES = (".npz", ".h5", ".hdf5")
MAX_ARRAY_MB_ENV = "FACRNN_MAX_ARRAY_MB"
DEFAULT_MAX_ARRAY_MB = 2048.0
MB = 2**20


# ------------------------------------------------------------------------ size limits


def max_array_mb() -> float:
    """The largest array (and total per file) a loader reads, in MB: ``$FACRNN_MAX_ARRAY_MB`` or 2048.

    Read at each call, so the variable may be changed between loads.

    Raises
    ------
    ConfigError
        The variable is set but not a positive number.
    """
    raw = os.environ.get(MAX_ARRAY_MB_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_ARRAY_MB
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not np.isfinite(value) or value <= 0:
        raise ConfigError(
            f"{MAX_ARRAY_MB_ENV}={raw!r}: expected a positive number of megabytes (default {DEFAULT_MAX_ARRAY_MB:g})"
        )
    return value


def max_array_bytes() -> int:
    """:func:`max_array_mb` in bytes."""
    return int(max_array_mb() * MB)


def _megabytes(n_bytes: float) -> str:
    return f"{n_bytes / MB:.4g} MB"


class ReadBudget:
    """Sizes of the arrays read from one file, checked against :func:`max_array_bytes` before reading.

    Parameters
    ----------
    path : str or Path
        The file, for messages.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self.limit = max_array_bytes()
        self.sizes: dict[str, int] = {}

    def charge(self, name: str, shape: Sequence[int], dtype: np.dtype) -> int:
        """Add the array ``name`` of ``shape`` and ``dtype``; raise ``DataError`` if it or the total is too large.

        Object dtypes (pickles, variable-length strings, references) are refused too.

        Returns
        -------
        int
            The array's size in bytes.
        """
        dtype = np.dtype(dtype)
        shape = tuple(int(length) for length in shape)
        if dtype.hasobject:
            raise DataError(
                f"{self.path}: dataset '{name}' has object dtype {dtype} (Python objects or variable-length strings); "
                "expected real numbers (float, int or bool)"
            )
        size = int(np.prod(shape, dtype=object)) * dtype.itemsize
        described = f"shape {shape}, {dtype}"
        hint = f"(set {MAX_ARRAY_MB_ENV}=... to allow more)"
        if size > self.limit:
            raise DataError(
                f"{self.path}: dataset '{name}' holds {_megabytes(size)} ({described}); "
                f"expected at most {_megabytes(self.limit)} {hint}"
            )
        self.sizes[name] = size
        total = sum(self.sizes.values())
        if total > self.limit:
            parts = ", ".join(f"'{key}' {_megabytes(value)}" for key, value in self.sizes.items())
            raise DataError(
                f"{self.path}: the datasets read hold {_megabytes(total)} in all ({parts}); "
                f"expected at most {_megabytes(self.limit)} per file {hint}"
            )
        return size


# -------------------------------------------------------------------------- HDF5


def check_hdf5_dataset(
    dataset: h5py.Dataset, name: str, path: str | Path, budget: ReadBudget | None = None, strings: bool = False
) -> h5py.Dataset:
    """Raise unless ``dataset`` is plain data stored in the file ``path`` itself, of acceptable size.

    Parameters
    ----------
    dataset : h5py.Dataset
    name : str
        The key, for messages.
    path : str or Path
        The file the loader opened; a dataset that lives in another file (reached through
        an external link) is refused.
    budget : ReadBudget, optional
        Charged with the dataset's size (a fresh one for ``path`` if None).
    strings : bool
        Accept variable-length strings (a label column), sized at 8 bytes per cell.

    Raises
    ------
    DataError
        External raw storage, a virtual dataset, a dataset in another file, an object
        dtype, or a dataset above the size limit.
    """
    import h5py

    where = str(path)
    expected = "expected data stored in the file itself"
    if dataset.is_virtual:
        sources = sorted({source.file_name for source in dataset.virtual_sources()})
        raise DataError(f"{where}: dataset '{name}' is a virtual dataset mapping {sources}; {expected}")
    plist = dataset.id.get_create_plist()
    if dataset.external is not None or plist.get_external_count() > 0:
        files = sorted({str(entry[0]) for entry in dataset.external or []}) or ["(unknown)"]
        raise DataError(f"{where}: dataset '{name}' is stored as external raw data in {', '.join(files)}; {expected}")
    if Path(dataset.file.filename).resolve() != Path(path).resolve():
        raise DataError(
            f"{where}: dataset '{name}' is a link to {dataset.file.filename}:{dataset.name} in another file; {expected}"
        )
    dtype = dataset.dtype
    if strings and h5py.check_string_dtype(dtype) is not None and dtype.hasobject:
        dtype = np.dtype(np.uint64)
    (budget or ReadBudget(path)).charge(name, dataset.shape or (), dtype)
    return dataset


def read_hdf5_dataset(
    dataset: object, name: str, path: str | Path, budget: ReadBudget | None = None, strings: bool = False
) -> np.ndarray:
    """``dataset`` read into memory after :func:`check_hdf5_dataset` (anything not an h5py dataset is just converted).

    Used for the lazily read datasets pynwb hands out (``.data``, ``.timestamps``).
    """
    import h5py

    if isinstance(dataset, h5py.Dataset):
        check_hdf5_dataset(dataset, name, path, budget, strings)
        return np.asarray(dataset[()])
    return np.asarray(dataset)


def _hdf5_item(stored: h5py.File, key: str, path: Path) -> h5py.Dataset | None:
    """The dataset at ``key``, None if there is no link of that name; external links and groups raise."""
    import h5py

    link = stored.get(key, getlink=True)
    if link is None:
        return None
    if isinstance(link, h5py.ExternalLink):
        raise DataError(
            f"{path}: dataset '{key}' is an external link to {link.filename}:{link.path}; "
            "expected data stored in the file itself"
        )
    if isinstance(link, h5py.SoftLink) and link.path not in stored:
        raise DataError(f"{path}: '{key}' is a dangling soft link to {link.path}; expected a dataset stored in the file")
    item = stored[key]
    if not isinstance(item, h5py.Dataset):
        raise DataError(f"{path}: '{key}' is an HDF5 {type(item).__name__.lower()}, not a dataset; expected an array")
    return item


# --------------------------------------------------------------------------- .npz


def npz_headers(path: str | Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of every ``.npy`` member of an ``.npz`` file, from the headers only.

    No array data is decompressed and nothing is unpickled.
    """
    headers = {}
    with zipfile.ZipFile(path) as archive:
        for member in archive.namelist():
            if not member.endswith(".npy"):
                continue
            with archive.open(member) as stream:
                version = np.lib.format.read_magic(stream)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
                elif version == (2, 0):
                    shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
                else:
                    raise DataError(f"{path}: member '{member}' has .npy format version {version}; expected 1.0 or 2.0")
            headers[member[: -len(".npy")]] = (tuple(shape), np.dtype(dtype))
    return headers


# --------------------------------------------------------------------------- reader


def read_arrays(path: str | Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Read the named datasets that exist in an ``.npz`` or HDF5 file.

    Every dataset read must hold real numbers (bool, int or float); pickled objects are
    never loaded (``.pkl`` files are refused with a pointer to ``python -m datamodules.convert``).
    Sizes come from the headers and are checked (:class:`ReadBudget`) before any data is
    read; HDF5 datasets must be stored in the file itself (:func:`check_hdf5_dataset`).

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
        HDF5 group rather than a dataset, a non-numeric dataset, a dataset above the size
        limit, or one whose data live outside the file; the message starts with the file
        name and ends with what was expected.
    """
    path = check_data_file(path, ARRAY_SUFFIXES)
    suffix = path.suffix.lower()
    kind = ".npz" if suffix == ".npz" else "HDF5"
    budget = ReadBudget(path)
    with reading(path, kind):
        if suffix == ".npz":
            headers = npz_headers(path)
            for key in keys:
                if key in headers:
                    budget.charge(key, *headers[key])
            with np.load(path, allow_pickle=False) as stored:
                found = list(stored.files)
                arrays = {key: np.asarray(stored[key]) for key in keys if key in stored.files}
        else:
            import h5py

            with h5py.File(path, "r") as stored:
                found = list(stored.keys())
                datasets = {}
                for key in keys:
                    item = _hdf5_item(stored, key, path)
                    if item is not None:
                        datasets[key] = check_hdf5_dataset(item, key, path, budget)
                arrays = {key: np.asarray(item[()]) for key, item in datasets.items()}
    for key, value in arrays.items():
        arrays[key] = numeric_array(value, key, str(path))
    arrays["__keys__"] = found
    return arrays


__all__ = [
    "ARRAY_SUFFIXES",
    "DEFAULT_MAX_ARRAY_MB",
    "MAX_ARRAY_MB_ENV",
    "ReadBudget",
    "check_hdf5_dataset",
    "max_array_bytes",
    "max_array_mb",
    "npz_headers",
    "read_arrays",
    "read_hdf5_dataset",
]
