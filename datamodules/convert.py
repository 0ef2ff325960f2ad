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

An array, container or long string the pickle references several times (its memo: a 4 MB
pickle can name one array a thousand times) is written once and hard-linked at its other
places, as it was one object in the pickle. Sizes are bounded (issue 19) by the loaders'
limit, ``FACRNN_MAX_ARRAY_MB`` (:func:`datamodules.loading.max_array_bytes`), each time
*before* anything is allocated: the pickle file itself, the arrays the unpickler rebuilds (a
forged array header or dtype cannot make it allocate more) and the data written (a list
stacking one array a thousand times is a new array). Containers that refer to themselves
(cycles), nest deeper than :data:`MAX_DEPTH` or make more than :data:`MAX_NODES` HDF5
names are refused with one line naming the file.
"""

from __future__ import annotations

import argparse
import contextvars
import io
import logging
import os
import pickle
import reprlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from datamodules.loading import MAX_ARRAY_MB_ENV, MB, max_array_bytes
from facrnn.errors import DataError, DataFileNotFoundError, FacRNNError

log = logging.getLogger(__name__)

# Globals a pickle of numpy arrays and plain containers needs, and nothing else.
_NUMPY_CORE = ("numpy.core.multiarray", "numpy._core.multiarray")
_NUMPY_NUMERIC = ("numpy.core.numeric", "numpy._core.numeric")
ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    [(module, name) for module in _NUMPY_CORE for name in ("_reconstruct", "scalar")]
    + [(module, "_frombuffer") for module in _NUMPY_NUMERIC]
    + [("numpy", "ndarray"), ("numpy", "dtype")]
    + [("builtins", name) for name in ("complex", "set", "frozenset", "bytearray")]
    + [("collections", "OrderedDict"), ("_codecs", "encode")]  # protocol <= 2 pickles bytes with _codecs.encode
)
OUTPUT_SUFFIXES = (".h5", ".hdf5")
#: containers nested deeper than this (dict in list in dict ...) are refused
MAX_DEPTH = 64
#: HDF5 names (groups, datasets, hard links) one conversion may write
MAX_NODES = 100_000
#: strings and bytes at least this long are written once and hard-linked where referenced again
LINKED_STRING_LENGTH = 1024
LIMIT_HINT = f"(set {MAX_ARRAY_MB_ENV}=... to allow more)"
#: bytes counted per element of a string array (one Python str each while writing)
STR_OVERHEAD = 64


def _megabytes(n_bytes: float) -> str:
    """``4 MB`` as the loaders write sizes; ``120 GB`` for the absurd sizes of a forged pickle."""
    return f"{n_bytes / MB:.4g} MB" if n_bytes < 10**4 * MB else f"{n_bytes / 2**30:.4g} GB"


def _short(name: str, width: int = 80) -> str:
    """A key path for messages, its middle elided when long (deep nesting)."""
    return name if len(name) <= width else f"{name[: width // 2]}/…/{name[-width // 3 :]}"


# ------------------------------------------------------------------- unpickling


class _Allocations:
    """The bytes of the arrays one unpickling rebuilds, checked against the limit before each allocation."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.limit = max_array_bytes()
        self.total = 0
        self.arrays = 0

    def charge(self, shape: Any, dtype: Any) -> None:
        try:
            dims = tuple(int(length) for length in (shape if isinstance(shape, (tuple, list)) else (shape,)))
            descr = np.dtype(dtype)
        except (TypeError, ValueError, OverflowError):
            return  # not a size: numpy refuses it itself, without allocating
        size = int(np.prod(dims, dtype=object)) * descr.itemsize
        if size > self.limit:
            raise DataError(
                f"{self.source}: unpickling would allocate {_megabytes(size)} for one array (shape {dims}, {descr}); "
                f"expected at most {_megabytes(self.limit)} {LIMIT_HINT}"
            )
        self.total += size
        self.arrays += 1 if size else 0  # numpy's pickles make an empty array first, then fill it
        if self.total > self.limit:
            raise DataError(
                f"{self.source}: unpickling would allocate more than {_megabytes(self.limit)} for its arrays "
                f"({_megabytes(self.total)} by array {self.arrays}; memo references can repeat one array many times); "
                f"expected at most {_megabytes(self.limit)} per file {LIMIT_HINT}"
            )


_ALLOCATIONS: contextvars.ContextVar[_Allocations | None] = contextvars.ContextVar("facrnn_convert_allocations", default=None)


def _charge(shape: Any, dtype: Any) -> None:
    allocations = _ALLOCATIONS.get()
    if allocations is not None:
        allocations.charge(shape, dtype)


class _RebuiltArray(np.ndarray):
    """``numpy.ndarray`` as a pickle names it: every array it builds or fills is sized first."""

    def __new__(cls, shape: Any, dtype: Any = float, *args: Any, **kwargs: Any) -> np.ndarray:
        _charge(shape, dtype)
        return super().__new__(cls, shape, dtype, *args, **kwargs)

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) in (4, 5):
            _charge(state[-4], state[-3])  # (version,) shape, dtype, is_fortran, raw data
        super().__setstate__(state)


def _sized_reconstruct(numpy_reconstruct: Any) -> Any:
    def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
        _charge(shape, dtype)
        return numpy_reconstruct(_RebuiltArray, shape, dtype)  # its __setstate__ sizes the data

    return _reconstruct


def _sized_frombuffer(numpy_frombuffer: Any) -> Any:
    def _frombuffer(buffer: Any, dtype: Any, shape: Any, order: str) -> np.ndarray:
        _charge(shape, dtype)
        return numpy_frombuffer(buffer, dtype, shape, order)

    return _frombuffer


def _sized_bytearray(builtin: Any) -> Any:
    def _bytearray(*args: Any) -> bytearray:
        if args and isinstance(args[0], int):  # bytearray(n): n zero bytes
            _charge((args[0],), np.uint8)
        return builtin(*args)

    return _bytearray


#: allowed globals that allocate by a size the pickle gives, wrapped to size it first
_SIZED = {
    "_reconstruct": _sized_reconstruct,
    "_frombuffer": _sized_frombuffer,
    "ndarray": lambda _: _RebuiltArray,
    "bytearray": _sized_bytearray,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that admits only :data:`ALLOWED_GLOBALS`, and sizes every array before it is allocated.

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
        module = "builtins" if module == "__builtin__" else module  # protocol <= 2 names
        if (module, name) not in ALLOWED_GLOBALS:
            raise DataError(
                f"{self.source}: refused to load global {module}.{name}; expected only numpy arrays and plain containers"
            )
        found = super().find_class(module, name)
        return _SIZED[name](found) if name in _SIZED else found

    def persistent_load(self, pid: Any) -> Any:
        """Persistent references point outside the file; refuse them."""
        raise DataError(
            f"{self.source}: refused a persistent reference {str(pid)[:50]!r}; expected only numpy arrays and plain containers"
        )

    def load(self) -> Any:
        """Unpickle, refusing arrays beyond ``FACRNN_MAX_ARRAY_MB`` (one or all together) before they are allocated."""
        token = _ALLOCATIONS.set(_Allocations(self.source))
        try:
            return super().load()
        finally:
            _ALLOCATIONS.reset(token)


def load_restricted(path: str | Path) -> Any:
    """Unpickle ``path`` with :class:`RestrictedUnpickler`.

    The file is read whole (it may hold at most ``FACRNN_MAX_ARRAY_MB``), so a length
    the pickle declares cannot make the reader allocate more than the file.

    Raises
    ------
    DataFileNotFoundError, DataError
        A missing or too large file, a refused global, an array above the size limit, or a
        truncated or corrupted pickle.
    """
    path = Path(path)
    if not path.exists():
        raise DataFileNotFoundError(f"{path}: file not found; expected an existing pickle file")
    if not path.is_file():
        raise DataError(f"{path}: not a regular file (a directory?); expected a pickle file")
    limit, size = max_array_bytes(), path.stat().st_size
    if size > limit:
        raise DataError(f"{path}: the file holds {_megabytes(size)}; expected at most {_megabytes(limit)} {LIMIT_HINT}")
    try:
        return RestrictedUnpickler(io.BytesIO(path.read_bytes()), str(path)).load()
    except FacRNNError:
        raise
    except Exception as error:  # noqa: BLE001 - the boundary to an untrusted file
        raise DataError(
            f"{path}: cannot be unpickled ({type(error).__name__}: {str(error)[:200]}); "
            "expected a complete pickle of numpy arrays and plain containers"
        ) from error


# ---------------------------------------------------------------- the HDF5 plan

_SET_KEY = reprlib.Repr()
_SET_KEY.maxlevel, _SET_KEY.maxstring, _SET_KEY.maxother = 4, 200, 200


def _set_order(item: Any) -> tuple[int, str, str]:
    """A deterministic, bounded sort key for the elements of a set (a full ``repr`` can be huge or deep)."""
    if isinstance(item, (str, bytes, bool, int, float, complex)):
        return (0, type(item).__name__, repr(item))
    return (1, type(item).__name__, _SET_KEY.repr(item))


def _stacked_size(items: list | tuple) -> int | None:
    """Bytes of ``np.asarray(items)`` for a non-empty list of numbers or equal-shaped numeric
    arrays (an upper bound when dtypes mix), None when it would not be one numeric array."""
    if not items:
        return None
    shapes, itemsizes, elements = set(), set(), 0
    for item in items:
        if isinstance(item, (np.ndarray, np.generic)):
            if item.dtype.kind not in "biufc":
                return None
            shapes.add(item.shape)
            itemsizes.add((item.dtype.kind, item.dtype.itemsize))
            elements += item.size
        elif isinstance(item, (bool, int, float)):
            shapes.add(())
            itemsizes.add(("f", 8))
            elements += 1
        else:
            return None
        if len(shapes) > 1:
            return None  # ragged: a group of items
    if len(itemsizes) == 1:
        itemsize = next(iter(itemsizes))[1]
    else:  # numpy promotes mixed numbers to at most complex128 / float64 (or the widest given)
        widest = max(size for _, size in itemsizes)
        itemsize = max(widest, 16 if any(kind == "c" for kind, _ in itemsizes) else 8)
    return elements * itemsize


class _Plan:
    """What converting a pickle's content writes, checked before any of it is: no cycles,
    at most :data:`MAX_DEPTH` levels and :data:`MAX_NODES` HDF5 names, and at most
    ``FACRNN_MAX_ARRAY_MB`` of data; a value met again (a memo reference) becomes a hard link.

    Parameters
    ----------
    source : str
        The pickle, for messages.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self.limit = max_array_bytes()
        self.total = 0
        self.nodes = 0
        self.entries: list[tuple[str, str, Any]] = []  # (HDF5 path, "group" | "data" | "string" | "link", payload)
        self._ancestors: dict[int, str] = {}  # containers being planned (id -> path): a cycle meets one again
        self._written: dict[int, str] = {}  # arrays, containers, long strings planned (id -> path): linked again

    def _count_node(self, name: str) -> None:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise DataError(
                f"{self.source}: converting it would write more than {MAX_NODES} HDF5 groups, datasets and "
                f"links (reached at '{_short(name)}'); expected at most {MAX_NODES}"
            )

    def _check_size(self, name: str, size: int, described: str, add: bool = True) -> None:
        """Raise if ``size`` bytes at ``name``, or the total with them, exceed the limit; count them if ``add``."""
        if size > self.limit:
            raise DataError(
                f"{self.source}: '{_short(name)}' would take {_megabytes(size)} to write ({described}); "
                f"expected at most {_megabytes(self.limit)} {LIMIT_HINT}"
            )
        if self.total + size > self.limit:
            raise DataError(
                f"{self.source}: converting it would write more than {_megabytes(self.limit)} "
                f"({_megabytes(self.total + size)} by '{_short(name)}'); "
                f"expected at most {_megabytes(self.limit)} per file {LIMIT_HINT}"
            )
        if add:
            self.total += size

    def _array(self, name: str, array: np.ndarray) -> None:
        array = np.asarray(array)  # the unpickler's arrays as plain ones
        if array.dtype.kind in "OU":  # variable-length strings: one Python str per element while writing
            items = array.ravel().tolist()
            if not all(isinstance(item, str) for item in items):
                raise DataError(f"{self.source}: {name} is an object array; expected numeric arrays, strings or containers")
            size = array.size * STR_OVERHEAD + sum(len(item) for item in items)
            self._check_size(name, size, f"shape {array.shape}, strings")
            self.entries.append((name, "string", np.array(items, dtype=object).reshape(array.shape)))
            return
        self._check_size(name, array.nbytes, f"shape {array.shape}, {array.dtype}")
        self.entries.append((name, "data", array))

    def add(self, key: str, value: Any, name: str, depth: int) -> None:
        """Plan ``value`` at the HDF5 path ``name`` (ending in ``key``), recursively for containers.

        Raises
        ------
        DataError
            A key HDF5 cannot name, an unsupported value, a cycle, nesting deeper than
            :data:`MAX_DEPTH`, or more than the limits allow.
        """
        if "/" in key or key in ("", ".", ".."):
            raise DataError(f"{self.source}: key {name!r} cannot be an HDF5 name; expected keys without '/'")
        self._count_node(name)
        if value is None:
            log.warning("%s: %s is None; not written", self.source, name)
            return
        if id(value) in self._written and id(value) not in self._ancestors:  # planned already: a hard link
            self.entries.append((name, "link", self._written[id(value)]))
            return
        if isinstance(value, (np.ndarray, dict, list, tuple, set, frozenset)) or (
            isinstance(value, (str, bytes, bytearray)) and len(value) >= LINKED_STRING_LENGTH
        ):
            self._written[id(value)] = name
        if isinstance(value, str):
            self._check_size(name, len(value) * (1 if value.isascii() else 4), "a string")
            self.entries.append((name, "string", value))
            return
        if isinstance(value, (bytes, bytearray)):
            self._check_size(name, len(value), "bytes")
            self.entries.append((name, "data", np.void(bytes(value))))
            return
        if isinstance(value, (np.ndarray, np.generic, bool, int, float, complex)):
            self._array(name, np.asarray(value))
            return
        if not isinstance(value, (dict, list, tuple, set, frozenset)):
            raise DataError(
                f"{self.source}: {name} is a {type(value).__name__}; expected numpy arrays, numbers, strings or containers"
            )
        if id(value) in self._ancestors:
            raise DataError(
                f"{self.source}: '{_short(name)}' refers back to its own container '{_short(self._ancestors[id(value)])}' "
                "(a self-referencing pickle); expected a tree of containers without cycles"
            )
        if depth > MAX_DEPTH:
            raise DataError(
                f"{self.source}: '{_short(name)}' nests containers {depth} levels deep; expected at most {MAX_DEPTH} levels"
            )
        if isinstance(value, (list, tuple)) and self._stack(name, value):
            return
        if isinstance(value, dict):
            children = []
            for child_key in value:
                if not isinstance(child_key, (str, int)):
                    raise DataError(
                        f"{self.source}: {name} has a key of type {type(child_key).__name__}; expected str or int keys"
                    )
                children.append((str(child_key), value[child_key]))
        else:
            items = sorted(value, key=_set_order) if isinstance(value, (set, frozenset)) else value
            children = [(str(index), child) for index, child in enumerate(items)]
        self.entries.append((name, "group", None))
        self._ancestors[id(value)] = name
        try:
            for child_key, child in children:
                self.add(child_key, child, f"{name}/{child_key}", depth + 1)
        finally:
            del self._ancestors[id(value)]

    def _stack(self, name: str, value: list | tuple) -> bool:
        """Plan a list of numbers or of equal-shaped numeric arrays as one array; False if it is none."""
        size = _stacked_size(value)
        if size is None:
            return False
        self._check_size(name, size, f"{len(value)} stacked items", add=False)  # before np.asarray allocates
        try:
            array = np.asarray(value)
        except (ValueError, OverflowError, TypeError):
            return False
        if array.dtype.kind not in "biufc":
            return False
        self._array(name, array)
        return True


def _write(handle: h5py.File, plan: _Plan) -> None:
    """Write the planned groups, datasets and hard links into ``handle``."""
    for name, kind, payload in plan.entries:
        if kind == "group":
            handle.create_group(name)
            continue
        if kind == "link":
            handle[name] = handle[payload]
            continue
        try:
            if kind == "string":
                handle.create_dataset(name, data=payload, dtype=h5py.string_dtype())
            else:
                handle.create_dataset(name, data=payload)
        except (TypeError, ValueError) as error:
            dtype = getattr(payload, "dtype", type(payload).__name__)
            raise DataError(
                f"{plan.source}: {name} has dtype {dtype}, which HDF5 cannot store ({str(error)[:100]}); "
                "expected numbers, strings or bytes"
            ) from None


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
        dict, its content is too large, self-referencing or too deeply nested, or
        ``out_path`` exists (without ``overwrite``), has the wrong extension, lies in a
        folder that does not exist or cannot be written.
    """
    in_path, out_path = Path(in_path), Path(out_path)
    if out_path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise DataError(
            f"{out_path}: unsupported output extension {out_path.suffix!r}; expected one of {list(OUTPUT_SUFFIXES)}"
        )
    folder = out_path.parent
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise DataError(f"{out_path}: the output folder {folder} {what}; expected an existing folder (create it first)")
    if out_path.exists() and not overwrite:
        raise DataError(f"{out_path}: already exists; expected a new file name (or --overwrite)")
    content = load_restricted(in_path)
    if not isinstance(content, dict):
        raise DataError(f"{in_path}: holds a {type(content).__name__} at the top level; expected a dict of named arrays")
    plan = _Plan(str(in_path))
    for key, value in content.items():
        if not isinstance(key, (str, int)):
            raise DataError(f"{in_path}: a top-level key has type {type(key).__name__}; expected str keys")
        plan.add(str(key), value, str(key), depth=1)
    partial = out_path.with_name(out_path.name + ".partial")
    try:
        with h5py.File(partial, "w") as handle:
            _write(handle, plan)
        partial.replace(out_path)
    except OSError as error:
        reason = os.strerror(error.errno) if error.errno else str(error)[:200]
        raise DataError(f"{out_path}: could not write ({reason}); expected a writable folder with free space") from None
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
