"""How ``train.py`` and ``evaluate.py`` end on an anticipated failure: one line on stderr, no
traceback, a non-zero exit status (docs/errors.md).

* a :class:`~facrnn.errors.FacRNNError` (also when Hydra's ``instantiate`` wrapped it):
  ``error: <message>``, exit status 1;
* :class:`~facrnn.training.faults.TrainingInterrupted` (SIGTERM, Ctrl-C; ``last.ckpt`` saved):
  ``interrupted: <message>``, exit status 143 (SIGTERM) or 130 (Ctrl-C).

Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from facrnn.errors import FacRNNError
from facrnn.training.faults import TrainingInterrupted


def project_error(error: BaseException) -> FacRNNError | None:
    """``error`` itself or the first :class:`FacRNNError` among its causes (Hydra wraps errors of ``instantiate``)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, FacRNNError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


@contextmanager
def exit_on_error() -> Iterator[None]:
    """Turn the project's own errors into ``error: <message>`` on stderr and exit status 1.

    Raises
    ------
    SystemExit
        With status 1 after a :class:`FacRNNError`, or the signal's status after
        :class:`TrainingInterrupted`.
    """
    try:
        yield
    except TrainingInterrupted as interrupted:
        sys.stderr.write(f"interrupted: {interrupted.message}\n")
        sys.stderr.flush()
        raise SystemExit(interrupted.code) from None
    except Exception as error:
        cause = project_error(error)
        if cause is None:
            raise
        sys.stderr.write(f"error: {cause}\n")
        sys.stderr.flush()
        raise SystemExit(1) from None


__all__ = ["exit_on_error", "project_error"]
