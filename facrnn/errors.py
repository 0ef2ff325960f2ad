"""The project's own exception types: every anticipated failure (bad data file, bad config,
unreadable checkpoint, a training fault) raises one of these with a one- or two-line
message that starts with the file or config key at fault and ends with what was expected.
``train.py`` and ``evaluate.py`` print such messages without a traceback (docs/errors.md).

They subclass the matching built-in types (``ValueError``, ``FileNotFoundError``,
``RuntimeError``) so callers that catch those keep working.
"""

from __future__ import annotations


class FacRNNError(Exception):
    """Base class of every error this project raises on purpose."""


class DataError(FacRNNError, ValueError):
    """A data file or array is missing, unreadable or not what the loader expects."""


class DataFileNotFoundError(DataError, FileNotFoundError):
    """A data file named in the config does not exist."""


class ConfigError(FacRNNError, ValueError):
    """A config value is invalid; raised before any data is loaded where possible."""


class CheckpointError(FacRNNError, RuntimeError):
    """A run directory has no usable checkpoint, or a checkpoint cannot be read safely."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A checkpoint (or the run directory holding it) does not exist."""


class TrainingFaultError(FacRNNError, RuntimeError):
    """Training stopped on a fault (non-finite loss); the last good checkpoint is kept."""


__all__ = [
    "first_line",
    "CheckpointError",
    "CheckpointNotFoundError",
    "ConfigError",
    "DataError",
    "DataFileNotFoundError",
    "FacRNNError",
    "TrainingFaultError",
]


def first_line(error: BaseException, default: str | None = None) -> str:
    """The first non-empty line of an exception's message (for one-line reports of errors from
    libraries that print several); ``default`` (else the exception's type name) when it has none."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else (default or type(error).__name__)
