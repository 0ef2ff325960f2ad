"""Reading checkpoints safely, with a clear :class:`~facrnn.errors.CheckpointError` for every
way a checkpoint can be unusable: missing, truncated or partially written, refused by
``torch.load(weights_only=True)`` (it holds arbitrary pickled objects), or written by an
incompatible version (hyper-parameters or weights that no longer fit the model).

Messages start with the file and end with what was expected (docs/errors.md).
"""

from __future__ import annotations

import logging
import pickle
import re
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from facrnn.errors import CheckpointError, CheckpointNotFoundError

if TYPE_CHECKING:
    from facrnn.training.module import FacRNNModule

log = logging.getLogger(__name__)

REQUIRED_KEYS = ("state_dict", "hyper_parameters")
REQUIRED_HYPER_PARAMETERS = ("n_neurons", "n_train")
RETRAIN_HINT = "re-train, or pass checkpoint=last (or checkpoint=best)"


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


def read_checkpoint(path: str | Path, hint: str = RETRAIN_HINT) -> dict[str, Any]:
    """Load a checkpoint file with ``torch.load(weights_only=True)`` and check its layout.

    Parameters
    ----------
    path : str or Path
        The ``.ckpt`` file.
    hint : str
        What the user can do instead, appended to messages about unusable files.

    Returns
    -------
    dict
        The checkpoint (``state_dict``, ``hyper_parameters``, ...), tensors on the CPU.

    Raises
    ------
    CheckpointNotFoundError
        ``path`` does not exist.
    CheckpointError
        The file is truncated or corrupted, holds objects other than tensors and plain
        containers, or lacks what a FacRNN checkpoint holds.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(f"{path}: no such checkpoint file; expected a .ckpt file written by train.py")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
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
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as error:
        size = path.stat().st_size
        raise CheckpointError(
            f"{path}: truncated or corrupted ({size} bytes; {_first_line(error)}); expected a complete checkpoint: {hint}"
        ) from None
    if not isinstance(checkpoint, dict) or any(key not in checkpoint for key in REQUIRED_KEYS):
        found = sorted(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointError(
            f"{path}: not a FacRNN checkpoint (found {found}); expected a Lightning checkpoint with "
            f"{', '.join(REQUIRED_KEYS)} written by train.py"
        )
    hyper_parameters = checkpoint["hyper_parameters"]
    missing = [key for key in REQUIRED_HYPER_PARAMETERS if key not in hyper_parameters]
    if missing:
        raise CheckpointError(
            f"{path}: hyper_parameters lack {', '.join(missing)} (written by an incompatible version?); "
            f"expected a checkpoint written by this version of train.py: {hint}"
        )
    return checkpoint


def load_checkpoint(path: str | Path, hint: str = RETRAIN_HINT) -> FacRNNModule:
    """Load a :class:`~facrnn.training.module.FacRNNModule` from a checkpoint, every failure a :class:`CheckpointError`.

    Parameters
    ----------
    path : str or Path
        The ``.ckpt`` file.
    hint : str
        What the user can do instead, appended to messages about unusable files.

    Raises
    ------
    CheckpointNotFoundError, CheckpointError
        See :func:`read_checkpoint`; also hyper-parameters the model no longer accepts and
        weights whose names or shapes do not fit the model they describe.
    """
    from facrnn.training.module import FacRNNModule

    checkpoint = read_checkpoint(path, hint)
    version = checkpoint.get("pytorch-lightning_version", "unknown")
    try:
        return FacRNNModule.load(str(path))
    except CheckpointError:
        raise
    except (TypeError, ValueError, KeyError, RuntimeError, AttributeError) as error:
        raise CheckpointError(
            f"{path}: incompatible with this version of FacRNN ({_first_line(error)}; written with "
            f"pytorch-lightning {version}); expected hyper-parameters and weights of the current model: {hint}"
        ) from None


__all__ = ["CheckpointNotFoundError", "load_checkpoint", "read_checkpoint"]
