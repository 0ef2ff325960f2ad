"""Training curves that survive interruptions: a CSV logger that appends on resume, and a
callback that writes the logged rows to disk at every validation and on SIGTERM / Ctrl-C.

Lightning's ``CSVLogger`` keeps rows in memory until every 100th logged step and deletes an
existing ``metrics.csv`` when it starts; an interrupted run lost its curves, a resumed run
started a new file. Here ``csv/metrics.csv`` holds every epoch logged before an interruption
and a resumed run continues the same file.
"""

from __future__ import annotations

import csv
import inspect
import logging
import os
import sys
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.loggers import CSVLogger

log = logging.getLogger(__name__)


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` that, on a resume, keeps the rows logged up to the checkpoint's epoch.

    :func:`facrnn.runs.pipeline.train` calls :meth:`keep_history` with the epoch of the
    checkpoint it resumes from before training starts; rows of later epochs (logged after
    that checkpoint, and recomputed now) are dropped, the others stay in ``metrics.csv`` and
    the new rows are appended. Without :meth:`keep_history` it behaves as ``CSVLogger``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._keep_until_epoch: int | None = None

    def keep_history(self, until_epoch: int) -> None:
        """Keep the rows of epochs ``<= until_epoch`` of an existing ``metrics.csv``."""
        self._keep_until_epoch = int(until_epoch)

    @property
    def experiment(self) -> Any:  # the writer, created on first use
        if self._experiment is not None:
            return self._experiment
        path = Path(self.log_dir) / "metrics.csv"
        header, rows = read_rows(path) if self._keep_until_epoch is not None else ([], [])
        writer = CSVLogger.experiment.fget(self)  # Lightning's writer removes an existing file here
        if rows:
            kept = [row for row in rows if _epoch(row) is None or _epoch(row) <= self._keep_until_epoch]
            with path.open("w", newline="") as handle:
                table = csv.DictWriter(handle, fieldnames=header)
                table.writeheader()
                table.writerows(kept)
            writer.metrics_keys = list(header)
            log.info("%s: kept %d logged rows up to epoch %d; appending", path, len(kept), self._keep_until_epoch)
        return writer


def read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of a CSV file (empty when it does not exist)."""
    if not path.is_file():
        return [], []
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def _epoch(row: dict[str, str]) -> float | None:
    try:
        return float(row.get("epoch") or "nan") if row.get("epoch") else None
    except ValueError:
        return None


def flush_loggers(trainer: pl.Trainer) -> None:
    """Write every logger's pending rows to disk (``logger.save()``)."""
    for logger in trainer.loggers:
        try:
            logger.save()
        except Exception:  # noqa: BLE001 - flushing must never end a run
            log.exception("could not write the logs of %s", type(logger).__name__)


class FlushLogs(pl.Callback):
    """Writes the loggers' rows to disk at every validation, on SIGTERM / Ctrl-C and on errors,
    so ``csv/metrics.csv`` holds every epoch before an interruption."""

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero and not trainer.sanity_checking:
            flush_loggers(trainer)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if trainer.is_global_zero:
            flush_loggers(trainer)


def index_frozen_module_files() -> int:
    """Enter the stdlib's frozen modules (``<frozen importlib._bootstrap>``...) into the
    file-to-module cache of :func:`inspect.getmodule`; returns how many entries were added.

    Every ``wandb.init`` imports ``wandb.sdk.launch``, whose pydantic models look for their
    class's source by calling ``inspect.getmodule`` on each frame of the stack. A frame of a
    frozen module (every nested import adds several) has no file on disk, so each such call
    walks all of ``sys.modules`` (~4,000 modules once torch, Lightning and scipy are loaded):
    ~1 s of the paper run's W&B start against ~0.15 s with the frozen frames known
    (benchmarks/README.md). The entries name each frame's own module, which is what
    ``getmodule`` would have found had the module had a file; call once the frozen modules
    are imported (they are, at start-up) and before W&B starts, in the working directory the
    run keeps (``inspect`` keys the cache by absolute path).
    """
    added = 0
    for name, module in list(sys.modules.items()):
        spec = getattr(module, "__spec__", None)
        if spec is None or spec.origin != "frozen":
            continue
        # the co_filename of the module's functions: <frozen importlib._bootstrap> for _frozen_importlib
        code_file = f"<frozen {getattr(spec.loader_state, 'origname', None) or spec.name}>"
        for key in (code_file, os.path.normcase(os.path.abspath(code_file))):
            if key not in inspect.modulesbyfile:
                inspect.modulesbyfile[key] = name
                added += 1
    return added


def finish_wandb_run(exit_code: int | None = None) -> None:
    """``wandb.finish()`` that survives a W&B service already gone.

    A SLURM pre-emption signals every process of the task, the W&B service too; finishing
    the run then fails with ``ConnectionResetError`` / ``BrokenPipeError``, and W&B's exit
    hook would print the same again as a traceback. Here that failure is one warning line,
    W&B is torn down (which removes its exit hook) and the run's offline files stay as
    written; a requeued task continues the same run id (``wandb_id.txt``).
    """
    import wandb

    try:
        wandb.finish(exit_code=exit_code)
    except (Exception, SystemExit) as error:  # noqa: BLE001 - the service process is gone
        log.warning("W&B could not finish its run (%s: %s): its service process has ended", type(error).__name__, error)
        try:
            wandb.teardown()
        except (Exception, SystemExit):  # noqa: BLE001, S110 - nothing left to close
            pass


__all__ = ["FlushLogs", "ResumableCSVLogger", "finish_wandb_run", "flush_loggers", "index_frozen_module_files", "read_rows"]
