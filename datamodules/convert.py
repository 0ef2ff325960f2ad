"""Convert a pickle of plain containers to an HDF5 file the loaders read, safely.

    python -m datamodules.convert IN.pkl OUT.h5 [--overwrite]

The data loaders never unpickle: unpickling can run arbitrary code. This converter reads
the pickle with :class:`RestrictedUnpickler`, which rebuilds only numpy arrays, numpy
scalars and builtin containers (dict, list, tuple, set, numbers, strings, bytes) and
refuses every other global (a function such as ``os.system`` or ``builtins.eval``, a
class such as a pandas DataFrame) *before* it is called, so a malicious file cannot run
code. The top level must be a dict; nested dicts become HDF5 groups (``a/b`` keys), arrays
and numbers become datasets, strings become string datasets, lists of equal-shaped numbers
become one array, other lists become groups keyed ``0``, ``1``, ...; ``None`` is skipped.
"""

from __future__ import annotations

import argparse
import io
import logging
import pickle
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from facrnn.errors import DataError, DataFileNotFoundError, FacRNNError

log = logging.getLogger(__name__)

# Globals a pickle of numpy arrays and plain containers needs, and nothing else.
_NUMPY_CORE = ("numpy.core.multiarray", "numpy._core.multiarray")
ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    [(module, name) for module in _NUMPY_CORE for name in ("_reconstruct", "scalar")]
    + [(module, "_frombuffer") for module in ("numpy.core.numeric", "numpy._core.numeric")]
    + [("numpy", "ndarray"), ("numpy", "dtype")]
    + [("builtins", name) for name in ("complex", "set", "frozenset", "bytearray")]
    + [("collections", "OrderedDict"), ("_codecs", "encode")]  # protocol <= 2 pickles bytes with _codecs.encode
)
OUTPUT_SUFFIXES = (".h5", ".hdf5")


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that admits only :data:`ALLOWED_GLOBALS`.

    Parameters
    ----------
    file : binary file
    source : str
        The file name, for messages.
    """

    def __init__(self, file: io.BufferedIOBase, source: str) -> None:
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        """Resolve an allowed global; raise ``DataError`` for any other, without importing it."""
        if (module, name) not in ALLOWED_GLOBALS:
            raise DataError(
                f"{self.source}: refused to load global {module}.{name}; expected only numpy arrays and plain containers"
            )
        return super().find_class(module, name)

    def persistent_load(self, pid: Any) -> Any:
        """Persistent references point outside the file; refuse them."""
        raise DataError(
            f"{self.source}: refused a persistent reference {str(pid)[:50]!r}; expected only numpy arrays and plain containers"
        )


def load_restricted(path: str | Path) -> Any:
    """Unpickle ``path`` with :class:`RestrictedUnpickler`.

    Raises
    ------
    DataFileNotFoundError, DataError
        A missing file, a refused global, or a truncated or corrupted pickle.
    """
    path = Path(path)
    if not path.exists():
        raise DataFileNotFoundError(f"{path}: file not found; expected an existing pickle file")
    if not path.is_file():
        raise DataError(f"{path}: not a regular file (a directory?); expected a pickle file")
    with path.open("rb") as handle:
        try:
            return RestrictedUnpickler(handle, str(path)).load()
        except FacRNNError:
            raise
        except Exception as error:  # noqa: BLE001 - the boundary to an untrusted file
            raise DataError(
                f"{path}: cannot be unpickled ({type(error).__name__}: {str(error)[:200]}); "
                "expected a complete pickle of numpy arrays and plain containers"
            ) from error


def _as_dataset_value(value: Any) -> np.ndarray | None:
    """``value`` as an array h5py can store as one dataset, or None if it is a container."""
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, (bool, int, float, complex, np.generic)):
        return np.asarray(value)
    if (
        isinstance(value, (list, tuple))
        and value
        and all(isinstance(item, (bool, int, float, np.generic, np.ndarray)) for item in value)
    ):
        try:
            array = np.asarray(value)
        except ValueError:  # ragged
            return None
        return array if array.dtype.kind in "biufc" else None
    return None


def _write(group: h5py.Group, key: str, value: Any, source: str, name: str) -> None:
    """Write ``value`` under ``group[key]`` (recursively for containers)."""
    if "/" in key or key in ("", ".", ".."):
        raise DataError(f"{source}: key {name!r} cannot be an HDF5 name; expected keys without '/'")
    if value is None:
        log.warning("%s: %s is None; not written", source, name)
        return
    if isinstance(value, dict):
        sub = group.create_group(key)
        for child_key, child in value.items():
            if not isinstance(child_key, (str, int)):
                raise DataError(f"{source}: {name} has a key of type {type(child_key).__name__}; expected str or int keys")
            _write(sub, str(child_key), child, source, f"{name}/{child_key}")
        return
    if isinstance(value, str):
        group.create_dataset(key, data=value, dtype=h5py.string_dtype())
        return
    if isinstance(value, (bytes, bytearray)):
        group.create_dataset(key, data=np.void(bytes(value)))
        return
    array = _as_dataset_value(value)
    if array is not None:
        if array.dtype.kind == "O":
            if all(isinstance(item, str) for item in array.ravel()):
                group.create_dataset(key, data=array.astype(str).astype(object), dtype=h5py.string_dtype())
                return
            raise DataError(f"{source}: {name} is an object array; expected numeric arrays, strings or containers")
        if array.dtype.kind == "U":
            group.create_dataset(key, data=array.astype(object), dtype=h5py.string_dtype())
            return
        group.create_dataset(key, data=array)
        return
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        sub = group.create_group(key)
        for index, child in enumerate(items):
            _write(sub, str(index), child, source, f"{name}/{index}")
        return
    raise DataError(f"{source}: {name} is a {type(value).__name__}; expected numpy arrays, numbers, strings or containers")


def convert(in_path: str | Path, out_path: str | Path, overwrite: bool = False) -> list[str]:
    """Convert the pickle ``in_path`` to the HDF5 file ``out_path``.

    Returns
    -------
    list of str
        The top-level keys written.

    Raises
    ------
    DataError
        The pickle holds a refused global or an unsupported value, the top level is not a
        dict, or ``out_path`` exists (without ``overwrite``) or has the wrong extension.
    """
    in_path, out_path = Path(in_path), Path(out_path)
    if out_path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise DataError(
            f"{out_path}: unsupported output extension {out_path.suffix!r}; expected one of {list(OUTPUT_SUFFIXES)}"
        )
    if out_path.exists() and not overwrite:
        raise DataError(f"{out_path}: already exists; expected a new file name (or --overwrite)")
    content = load_restricted(in_path)
    if not isinstance(content, dict):
        raise DataError(f"{in_path}: holds a {type(content).__name__} at the top level; expected a dict of named arrays")
    partial = out_path.with_name(out_path.name + ".partial")
    try:
        with h5py.File(partial, "w") as handle:
            for key, value in content.items():
                if not isinstance(key, (str, int)):
                    raise DataError(f"{in_path}: a top-level key has type {type(key).__name__}; expected str keys")
                _write(handle, str(key), value, str(in_path), str(key))
        partial.replace(out_path)
    finally:
        partial.unlink(missing_ok=True)
    return [str(key) for key in content if content[key] is not None]


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m datamodules.convert IN.pkl OUT.h5 [--overwrite]``."""
    parser = argparse.ArgumentParser(
        prog="python -m datamodules.convert",
        description="Convert a pickle of numpy arrays and plain containers to HDF5, refusing anything that could run code.",
    )
    parser.add_argument("input", help="the .pkl file")
    parser.add_argument("output", help="the .h5 file to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        keys = convert(args.input, args.output, args.overwrite)
    except FacRNNError as error:
        sys.stderr.write(f"error: {error}\n")
        return 1
    sys.stdout.write(f"{args.output}: wrote keys {keys}\n")
    return 0


if __name__ == "__main__":  # pragma: no cover - exercised through subprocess in the tests
    sys.exit(main())
