"""Reading checkpoint files safely (the module and the resume read through this), with a
clear :class:`~facrnn.errors.CheckpointError` for every
way a checkpoint can be unusable: missing, truncated or partially written, refused by
``torch.load(weights_only=True)`` (it holds arbitrary pickled objects), or written by an
incompatible version (hyper-parameters or weights that no longer fit the model).

:func:`load_weights_only` is the one reader of checkpoint files in the project
(:func:`read_checkpoint`, :meth:`FacRNNModule.load <facrnn.training.module.FacRNNModule.load>`
and the resume through :class:`~facrnn.training.faults.AtomicCheckpointIO`): it unpickles
tensors and plain containers only, whatever ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` says.
:func:`check_hyper_parameters` bounds the sizes a checkpoint asks for by its stored weights
before any model is built from them.

Messages start with the file and end with what was expected (docs/errors.md).
"""

from __future__ import annotations

import logging
import numbers
import os
import pickle
import re
import threading
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from facrnn.errors import CheckpointError, CheckpointNotFoundError

log = logging.getLogger(__name__)

REQUIRED_KEYS = ("state_dict", "hyper_parameters")
REQUIRED_HYPER_PARAMETERS = ("n_neurons", "n_train")
RETRAIN_HINT = "re-train, or pass checkpoint=last (or checkpoint=best)"
#: environment variables that change what ``torch.load`` unpickles; never honoured by :func:`load_weights_only`
UNSAFE_LOAD_VARIABLES = ("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_WEIGHTS_ONLY_LOAD")
#: the most encoder history lags a checkpoint may ask for (no weight's shape bounds them)
MAX_HISTORY = 100_000
#: a size may exceed the largest dimension of the stored weights this many times, and be up to MIN_SIZE_LIMIT
SIZE_SLACK, MIN_SIZE_LIMIT = 4, 256
#: hyper-parameters that size a tensor of the model; each must be a positive integer
SIZE_HYPER_PARAMETERS = ("n_neurons", "n_train", "latent_dim", "n_groups", "group_rank", "width_samples", "hidden_dim")
SIZE_HYPER_PARAMETERS += ("history", "replicas", "restarts")
_ENVIRONMENT_LOCK = threading.Lock()


def _first_line(error: BaseException, limit: int = 200) -> str:
    """The first informative line of an exception's message, shortened to ``limit`` characters."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    # torch's state_dict errors start with a header; the detail is on the next line
    line = lines[1] if len(lines) > 1 and lines[0].startswith("Error(s) in loading state_dict") else lines[0]
    line = line.split(". ")[0].rstrip(".")  # the first sentence: torch appends advice of its own
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _refused_global(error: BaseException) -> str | None:
    """The pickled global that ``weights_only=True`` refused (e.g. ``os.system``), if named."""
    match = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)", str(error))
    if match:
        return match.group(1)
    match = re.search(r"Unsupported operand (\d+)", str(error))
    return f"pickle opcode {match.group(1)}" if match else None


@contextmanager
def _without_unsafe_load_variables() -> Iterator[None]:
    """Hide :data:`UNSAFE_LOAD_VARIABLES` from ``torch.load`` for the duration of one read.

    ``weights_only=True`` passed explicitly already wins over ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``
    in torch 2.6+; hiding the variables also keeps both set at once from failing the read, and
    keeps the reader safe under torch versions that let the variable win.
    """
    with _ENVIRONMENT_LOCK:
        saved = {name: os.environ.pop(name) for name in UNSAFE_LOAD_VARIABLES if name in os.environ}
        try:
            yield
        finally:
            os.environ.update(saved)


def load_weights_only(path: str | Path, map_location: Any = "cpu", hint: str = RETRAIN_HINT) -> Any:
    """Unpickle a checkpoint file with torch's weights-only unpickler, whatever the environment.

    The project's one reader of checkpoint files: no pickled global other than tensors and
    plain containers is ever called, even under ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``.

    Parameters
    ----------
    path : str or Path
        The ``.ckpt`` file.
    map_location : Any
        ``torch.load``'s ``map_location`` (default: every tensor on the CPU).
    hint : str
        What the user can do instead, appended to messages about unusable files.

    Returns
    -------
    Any
        What the file holds (a Lightning checkpoint dict for a file written by train.py).

    Raises
    ------
    CheckpointNotFoundError
        ``path`` does not exist.
    CheckpointError
        The file is truncated or corrupted, or holds objects other than tensors and plain containers.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(f"{path}: no such checkpoint file; expected a .ckpt file written by train.py")
    try:
        with _without_unsafe_load_variables():
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        if "weights only" not in str(error).lower() and "weights_only" not in str(error):
            raise CheckpointError(
                f"{path}: not a readable checkpoint ({_first_line(error)}); expected a complete .ckpt file: {hint}"
            ) from None
        refused = _refused_global(error)
        what = f" ({refused})" if refused else ""
        raise CheckpointError(
            f"{path}: refused to unpickle: it holds objects other than tensors and plain containers{what}; "
            "expected a checkpoint written by train.py (never load untrusted pickles)"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, MemoryError) as error:
        size = path.stat().st_size
        raise CheckpointError(
            f"{path}: truncated or corrupted ({size} bytes; {_first_line(error)}); expected a complete checkpoint: {hint}"
        ) from None


def _size(value: Any) -> int | None:
    """``value`` as a size (an integer that is no bool), else None."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        return None
    return int(value)


def check_hyper_parameters(path: str | Path, checkpoint: Mapping[str, Any], hint: str = RETRAIN_HINT) -> None:
    """Refuse hyper-parameters that would build a model other than the stored weights describe.

    Every size (``n_neurons``, ``latent_dim``, ``history``, ...) must be a positive integer
    (or null where the model accepts null); ``n_neurons`` must be the width of the stored
    ``log_noise_std``; the latent, hidden and copy sizes at most :data:`SIZE_SLACK` times the
    largest dimension of any stored tensor (or :data:`MIN_SIZE_LIMIT`); ``history`` at most
    :data:`MAX_HISTORY`. Nothing is allocated before
    these checks, so ``latent_dim=20000`` is refused at once.

    Raises
    ------
    CheckpointError
        The first size out of bounds, naming the file and the key.
    """
    hyper_parameters = checkpoint["hyper_parameters"]
    state_dict = checkpoint["state_dict"]
    if not isinstance(hyper_parameters, Mapping) or not isinstance(state_dict, Mapping):
        raise CheckpointError(
            f"{path}: hyper_parameters and state_dict are no mappings; expected a checkpoint written by train.py: {hint}"
        )
    shapes = [tuple(tensor.shape) for tensor in state_dict.values() if isinstance(tensor, torch.Tensor)]
    largest = max((dim for shape in shapes for dim in shape), default=0)

    def refuse(key: str, expected: str) -> CheckpointError:
        return CheckpointError(
            f"{path}: hyper_parameters.{key}={hyper_parameters.get(key)!r}: expected {expected}; "
            f"the checkpoint was not written by train.py, or is corrupted: {hint}"
        )

    sizes: dict[str, int] = {}
    for key in SIZE_HYPER_PARAMETERS:
        value = hyper_parameters.get(key)
        if value is None and key not in REQUIRED_HYPER_PARAMETERS:
            continue
        size = _size(value)
        if size is None or size < 1:
            raise refuse(key, "a positive integer")
        sizes[key] = size
    group_sizes = hyper_parameters.get("group_sizes")
    if group_sizes is not None:
        if not isinstance(group_sizes, (list, tuple)) or not all((_size(g) or 0) >= 1 for g in group_sizes):
            raise refuse("group_sizes", "a list of positive integers")
        sizes["group_sizes"] = sum(int(g) for g in group_sizes)
    noise = state_dict.get("model.log_noise_std")
    if isinstance(noise, torch.Tensor) and noise.ndim >= 1 and sizes["n_neurons"] != noise.shape[-1]:
        raise refuse("n_neurons", f"{noise.shape[-1]}, the width of the stored model.log_noise_std")
    # generous bounds: a modest mismatch is left to load_state_dict, whose message names the tensor
    limit = max(SIZE_SLACK * largest, MIN_SIZE_LIMIT)
    mlp = "mlp" in (hyper_parameters.get("encoder"), hyper_parameters.get("decoder"))
    bounded = ["n_neurons", "latent_dim", "group_sizes", "n_groups", "group_rank"] + (["hidden_dim"] if mlp else [])
    for key in bounded:
        if key in sizes and sizes[key] > limit:
            raise refuse(key, f"at most {limit} (the stored weights are at most {largest} wide)")
    copies = sizes.get("replicas", 1) * sizes.get("restarts", 1)
    if copies > limit:
        raise refuse("replicas", f"replicas x restarts at most {limit} (the stored weights are at most {largest} wide)")
    if sizes.get("history", 1) > MAX_HISTORY:
        raise refuse("history", f"at most {MAX_HISTORY} lags")


def read_checkpoint(path: str | Path, hint: str = RETRAIN_HINT, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint file with :func:`load_weights_only` and check its layout and sizes.

    Parameters
    ----------
    path : str or Path
        The ``.ckpt`` file.
    hint : str
        What the user can do instead, appended to messages about unusable files.
    map_location : Any
        ``torch.load``'s ``map_location`` (default: every tensor on the CPU).

    Returns
    -------
    dict
        The checkpoint (``state_dict``, ``hyper_parameters``, ...).

    Raises
    ------
    CheckpointNotFoundError
        ``path`` does not exist.
    CheckpointError
        The file is truncated or corrupted, holds objects other than tensors and plain
        containers, lacks what a FacRNN checkpoint holds, or asks for sizes its weights do
        not have (:func:`check_hyper_parameters`).
    """
    checkpoint = load_weights_only(path, map_location, hint)
    if not isinstance(checkpoint, dict) or any(key not in checkpoint for key in REQUIRED_KEYS):
        found = sorted(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointError(
            f"{path}: not a FacRNN checkpoint (found {found}); expected a Lightning checkpoint with "
            f"{', '.join(REQUIRED_KEYS)} written by train.py"
        )
    hyper_parameters = checkpoint["hyper_parameters"]
    if not isinstance(hyper_parameters, Mapping):
        raise CheckpointError(
            f"{path}: hyper_parameters is a {type(hyper_parameters).__name__}; expected a mapping written by train.py: {hint}"
        )
    missing = [key for key in REQUIRED_HYPER_PARAMETERS if key not in hyper_parameters]
    if missing:
        raise CheckpointError(
            f"{path}: hyper_parameters lack {', '.join(missing)} (written by an incompatible version?); "
            f"expected a checkpoint written by this version of train.py: {hint}"
        )
    check_hyper_parameters(path, checkpoint, hint)
    return checkpoint


def check_state_fits(
    path: str | Path, state_dict: Mapping[str, Any], expected: Mapping[str, torch.Tensor], hint: str, copies: bool = False
) -> None:
    """Refuse a stored ``state_dict`` whose tensors a model's own ``expected`` state does not take.

    ``copies``: the model holds batched copies (``model.replicas``/``model.restarts``), whose
    leading dimension a checkpoint may have fewer of (the restarts' selection keeps one start
    per replica; the module restricts itself when it loads): that dimension is not compared.

    Raises
    ------
    CheckpointError
        The first tensor missing, unexpected or of another shape, with both shapes (one line),
        instead of ``load_state_dict``'s multi-line ``RuntimeError``.
    """
    for name, tensor in expected.items():
        if name not in state_dict:
            raise CheckpointError(f"{path}: state_dict has no {name}; expected a checkpoint of this run's model: {hint}")
        stored = state_dict[name]
        compared = slice(1, None) if copies else slice(None)
        if not isinstance(stored, torch.Tensor) or tuple(stored.shape)[compared] != tuple(tensor.shape)[compared]:
            shape = tuple(stored.shape) if isinstance(stored, torch.Tensor) else type(stored).__name__
            raise CheckpointError(
                f"{path}: state_dict.{name} has shape {shape}; this run's model has {tuple(tensor.shape)} "
                f"(another latent_dim, grouping, history or data?); expected a checkpoint of this run's model: {hint}"
            )
    unexpected = sorted(set(state_dict) - set(expected))
    if unexpected:
        raise CheckpointError(
            f"{path}: state_dict has {unexpected[0]}, which this run's model does not; "
            f"expected a checkpoint of this run's model: {hint}"
        )


__all__ = [
    "RETRAIN_HINT",
    "check_hyper_parameters",
    "check_state_fits",
    "load_weights_only",
    "read_checkpoint",
]
