"""Loading a trained :class:`~facrnn.training.module.FacRNNModule` from a checkpoint, every
failure a one-line :class:`~facrnn.errors.CheckpointError`.

The file itself is read by :mod:`facrnn.training.checkpoint_files` (the one weights-only
reader of the project, whatever ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` says; re-exported here).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from facrnn.errors import CheckpointError, CheckpointNotFoundError
from facrnn.training.checkpoint_files import (
    RETRAIN_HINT,
    _first_line,
    check_hyper_parameters,
    load_weights_only,
    read_checkpoint,
)

if TYPE_CHECKING:
    from facrnn.training.module import FacRNNModule


def load_checkpoint(path: str | Path, hint: str = RETRAIN_HINT, stored: dict | None = None) -> FacRNNModule:
    """Load a :class:`~facrnn.training.module.FacRNNModule` from a checkpoint, every failure a :class:`CheckpointError`.

    Parameters
    ----------
    path : str or Path
        The ``.ckpt`` file.
    hint : str
        What the user can do instead, appended to messages about unusable files.
    stored : dict, optional
        The checkpoint as :func:`read_checkpoint` returned it, when the caller has read it already.

    Raises
    ------
    CheckpointNotFoundError, CheckpointError
        See :func:`read_checkpoint`; also hyper-parameters the model no longer accepts and
        weights whose names or shapes do not fit the model they describe.
    """
    from facrnn.training.module import FacRNNModule

    checkpoint = read_checkpoint(path, hint) if stored is None else stored
    version = checkpoint.get("pytorch-lightning_version", "unknown")
    try:
        return FacRNNModule.from_checkpoint(checkpoint)
    except CheckpointError:
        raise
    except (TypeError, ValueError, KeyError, RuntimeError, AttributeError) as error:
        raise CheckpointError(
            f"{path}: incompatible with this version of FacRNN ({_first_line(error)}; written with "
            f"pytorch-lightning {version}); expected hyper-parameters and weights of the current model: {hint}"
        ) from None


__all__ = [
    "CheckpointNotFoundError",
    "check_hyper_parameters",
    "load_checkpoint",
    "load_weights_only",
    "read_checkpoint",
]
