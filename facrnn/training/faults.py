"""Training faults that must not lose progress: atomic checkpoint writes and a clean stop on
SIGTERM, SIGUSR2 (SLURM pre-emption and time limits) or Ctrl-C that saves ``checkpoints/last.ckpt`` first.

* :class:`AtomicCheckpointIO` (``trainer.plugins`` in ``conf/trainer/cpu.yaml``, inherited by
  ``gpu`` and ``ddp``) writes every checkpoint to a temporary file in the target's directory,
  flushes and fsyncs it and only then renames it onto the target, so a process killed
  mid-save leaves the previous checkpoint intact.
* Lightning itself turns SIGTERM into a ``SIGTERMException`` (a ``SystemExit``) raised after
  the current batch, and a ``KeyboardInterrupt`` into ``sys.exit(1)``; both call the
  callbacks' ``on_exception`` first. :class:`InterruptCheckpoint` (``conf/callbacks/default.yaml``)
  saves ``last.ckpt`` there, and :func:`raise_if_interrupted` (called by
  :func:`facrnn.runs.pipeline.train`) turns the exit into a :class:`TrainingInterrupted` whose
  one-line message says where the checkpoint is and how to continue.
* SIGUSR2 is what SLURM sends before a time limit and on pre-emption (``--signal``, set by
  the submitit launcher), and submitit's handler requeues the task and exits at once. While
  training, :class:`InterruptCheckpoint` takes that handler over: the signal (and a SIGTERM
  that follows it) is recorded, the current epoch finishes, the complete state is saved as
  ``last.ckpt`` and the run stops; :class:`TrainingInterrupted` then carries submitit's
  handler, which :func:`facrnn.runs.sweeps.run_job_isolated` calls (after W&B is closed) to
  requeue. A checkpoint saved at an epoch's end resumes bitwise: the requeued task trains
  exactly what an uninterrupted one would.

See docs/errors.md and docs/scale.md.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.cloud_io import _is_local_file_protocol
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.plugins.io import TorchCheckpointIO
from pytorch_lightning.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)

TEMPORARY_SUFFIX = ".tmp"
# exit status of a process stopped by signal N, as shells report it
EXIT_CODES = {"SIGTERM": 128 + signal.SIGTERM, "SIGINT": 128 + signal.SIGINT, "SIGUSR2": 128 + signal.SIGUSR2}


def temporary_prefix(path: Path) -> str:
    """The name prefix of the hidden temporary files a ``path`` is first written to (same directory)."""
    return f".{path.name}.{os.getpid()}."


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` still runs on this machine (a permission error counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def remove_stale_temporaries(path: Path) -> None:
    """Remove temporary files of ``path`` left by processes that no longer run (killed mid-write).

    A live writer's file (this process's included: another thread may be writing) is kept,
    so two writers never delete each other's temporary file.
    """
    for stale in path.parent.glob(f".{path.name}.*{TEMPORARY_SUFFIX}"):
        pid = stale.name[len(path.name) + 2 :].split(".", 1)[0]
        if pid.isdigit() and _pid_alive(int(pid)):
            continue
        stale.unlink(missing_ok=True)


def fsync_directory(directory: Path) -> None:
    """Make a rename inside ``directory`` durable (a no-op where directories cannot be opened)."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(handle)`` on a temporary file beside ``path``, flush and fsync it, then
    ``os.replace`` it onto ``path``: a reader sees the previous file or the new one, never a
    partial one. Temporary files left by an earlier process killed mid-write are removed first.

    Every call writes its own temporary file (``tempfile.mkstemp``: ``.NAME.PID.RANDOM.tmp``),
    so concurrent writers of one ``path`` never delete each other's file; the last rename wins.

    Returns
    -------
    Path
        The target path (its directory is created if missing).

    Raises
    ------
    OSError
        The directory cannot be created or written (disk full, read-only, ...): a one-line
        message naming ``path``, the previous file left intact and no temporary file behind.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path)
        descriptor, name = tempfile.mkstemp(prefix=temporary_prefix(path), suffix=TEMPORARY_SUFFIX, dir=path.parent)
    except OSError as error:
        raise _write_error(path, error) from None
    temporary = Path(name)
    try:
        os.close(descriptor)
        with open(temporary, "wb") as handle:  # by name: writers such as h5py reopen handle.name
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise _write_error(path, error) from None
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)
    return path


def _write_error(path: Path, error: OSError) -> OSError:
    """The one-line error of a failed atomic write of ``path``: the type and ``errno`` of ``error``,
    a message starting with ``path``."""
    lines = str(error).splitlines()
    reason = error.strerror or (lines[0] if lines else type(error).__name__)
    message = (
        f"{path}: could not write ({reason}); the previous file is unchanged; expected a writable directory with free space"
    )
    try:
        wrapped = type(error)(message)
    except TypeError:
        wrapped = OSError(message)
    wrapped.errno = error.errno
    return wrapped


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj, path)`` that never leaves a partially written ``path``.

    The object is written to a temporary file beside ``path``, flushed and fsynced, then
    ``os.replace``d onto ``path``: a reader sees either the previous file or the new one.
    Temporary files left by an earlier process killed mid-save are removed first.

    Parameters
    ----------
    obj : Any
        What to save (a Lightning checkpoint dict).
    path : str or Path
        Target file; its directory is created if missing.

    Returns
    -------
    Path
        The target path.
    """
    return atomic_write(path, lambda handle: torch.save(obj, handle))


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning ``CheckpointIO`` writing checkpoints atomically (write, fsync, rename).

    Loading goes through the project's one safe reader
    (:func:`facrnn.training.checkpoint_files.load_weights_only`): weights only, whatever
    ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` says, so ``ckpt_path=PATH`` never runs pickled code.
    Remote paths (``s3://``, ...) fall back to Lightning's own writer and reader (the reader
    with ``weights_only=True``). Removal is :class:`~pytorch_lightning.plugins.io.TorchCheckpointIO`'s.
    """

    def load_checkpoint(
        self, path: str | Path, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """Load a checkpoint with tensors and plain containers only (``weights_only`` is ignored: always true).

        Raises
        ------
        CheckpointNotFoundError, CheckpointError
            No such file, a truncated file, or one holding other pickled objects (one line).
        """
        if not _is_local_file_protocol(str(path)):
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)
        from facrnn.training.checkpoint_files import load_weights_only

        location = map_location if map_location is not None else (lambda storage, _location: storage)
        hint = "pass ckpt_path=last or another .ckpt file written by train.py"
        return load_weights_only(path, map_location=location, hint=hint)

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None) -> None:
        """Save ``checkpoint`` to ``path`` atomically.

        Raises
        ------
        TypeError
            If ``storage_options`` is given (as Lightning's ``TorchCheckpointIO`` does).
        """
        if not _is_local_file_protocol(str(path)):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        if storage_options is not None:
            raise TypeError(
                "`Trainer.save_checkpoint(..., storage_options=...)` with `storage_options` arg"
                f" is not supported for `{self.__class__.__name__}`."
            )
        atomic_torch_save(checkpoint, path)


@dataclass(frozen=True)
class Interruption:
    """Where a training run was stopped by a signal and what was saved.

    ``requeue`` is the handler that was installed for the signal before training took it over
    (submitit's requeue for SIGUSR2), to be called once the run has closed its loggers.
    """

    signal_name: str
    epoch: int
    step: int
    checkpoint: Path | None
    requeue: Callable[[], Any] | None = None


def interrupt_signal(exception: BaseException) -> str | None:
    """``SIGTERM`` or ``SIGINT`` when ``exception`` is Lightning's reaction to that signal, else None."""
    if isinstance(exception, SIGTERMException):
        return "SIGTERM"
    if isinstance(exception, KeyboardInterrupt):
        return "SIGINT"
    return None


def claim_as_last(trainer: pl.Trainer, path: Path) -> None:
    """Record ``path`` as the ``ModelCheckpoint``'s own last checkpoint when it is that file.

    Otherwise the resumed run's ``ModelCheckpoint`` finds a ``last.ckpt`` it did not write
    and saves ``last-v1.ckpt`` beside it, and a later ``ckpt_path=last`` would go back to
    the stale file.
    """
    for callback in trainer.checkpoint_callbacks:
        if not isinstance(callback, ModelCheckpoint) or not callback.save_last or callback.dirpath is None:
            continue
        last_name = callback.CHECKPOINT_NAME_LAST + callback.FILE_EXTENSION
        if Path(callback.dirpath) / last_name == path:
            callback.last_model_path = str(path)


def any_rank(trainer: pl.Trainer, flag: bool) -> bool:
    """Whether ``flag`` is true on any process of a distributed run (``flag`` itself on one process)."""
    if trainer.world_size <= 1 or not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=trainer.strategy.root_device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item() > 0)


class InterruptCheckpoint(pl.Callback):
    """Saves ``last.ckpt`` when training is stopped by SIGTERM, SIGUSR2 or Ctrl-C (SIGINT).

    Only these interruptions save: a run stopped by an error (e.g. a non-finite loss) keeps
    the last good checkpoint untouched. The save goes through the trainer's checkpoint IO,
    so it is atomic with :class:`AtomicCheckpointIO`.

    * SIGTERM and Ctrl-C stop after the current batch (Lightning's own handling).
    * SIGUSR2, when a Python handler is installed for it (submitit's requeue), stops at the
      end of the current epoch: the handler is replaced while training; the signal, and a
      SIGTERM that follows it (``scancel --full``, the step's end), are only recorded; when
      the epoch ends (on every rank under DDP) Lightning is told to stop, which it does once
      the epoch is complete, and the checkpoint then holds the state an uninterrupted run has
      at the start of the next epoch. The saved handler travels with the
      :class:`Interruption`; Lightning restores the original handlers when ``fit`` ends.

    Parameters
    ----------
    dirpath : str, optional
        Directory of the saved checkpoint; by default that of the trainer's
        ``ModelCheckpoint`` (``${paths.output_dir}/checkpoints``), where ``ckpt_path=last``
        looks.
    filename : str
        File name of the checkpoint ``ckpt_path=last`` resumes from.
    """

    #: the signal that stops at an epoch's end (SLURM's warning before a time limit / pre-emption)
    EPOCH_END_SIGNAL = signal.SIGUSR2

    def __init__(self, dirpath: str | None = None, filename: str = "last.ckpt") -> None:
        self.dirpath = dirpath
        self.filename = filename
        self.interruption: Interruption | None = None
        self._deferred_handler: Callable[..., Any] | None = None
        self._sigterm_handler: Any = None
        self._received: int | None = None  # the deferred signal, once received
        self._stopped_after_epoch: int | None = None

    def checkpoint_path(self, trainer: pl.Trainer) -> Path:
        """Where the interruption checkpoint goes (next to the ``ModelCheckpoint``'s files)."""
        directory = self.dirpath
        if directory is None and trainer.checkpoint_callback is not None:
            directory = getattr(trainer.checkpoint_callback, "dirpath", None)
        if directory is None:
            directory = str(Path(trainer.default_root_dir) / "checkpoints")
        return Path(directory) / self.filename

    # ------------------------------------------------------------ SIGUSR2 at an epoch's end
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not hasattr(signal, "SIGUSR2"):  # Windows
            return
        installed = signal.getsignal(self.EPOCH_END_SIGNAL)
        if not callable(installed):  # no requeue handler: the signal keeps its default meaning
            return
        self._deferred_handler, self._received, self._stopped_after_epoch = installed, None, None
        self._sigterm_handler = signal.getsignal(signal.SIGTERM)  # Lightning's (it calls submitit's bypass)
        signal.signal(self.EPOCH_END_SIGNAL, self._record_signal)
        signal.signal(signal.SIGTERM, self._sigterm)

    def _record_signal(self, signum: int, frame: Any) -> None:
        if self._received is None:
            self._received = signum
            log.warning("%s received: saving a checkpoint when this epoch ends", signal.Signals(signum).name)

    def _sigterm(self, signum: int, frame: Any) -> None:
        if self._received is not None:  # the step ends after SIGUSR2: the save at the epoch's end is on its way
            return
        if callable(self._sigterm_handler):
            self._sigterm_handler(signum, frame)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._deferred_handler is None or not any_rank(trainer, self._received is not None):
            return
        if self._received is None:  # another rank got it: stop here too
            self._received = int(self.EPOCH_END_SIGNAL)
        self._stopped_after_epoch = int(trainer.current_epoch)
        # Lightning raises its SIGTERMException once the epoch is complete (FitLoop.on_advance_end)
        trainer._signal_connector.received_sigterm = True

    # ------------------------------------------------------------ the save
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        signal_name = interrupt_signal(exception)
        if signal_name is None:
            return
        epoch, requeue = int(trainer.current_epoch), None
        if signal_name == "SIGTERM" and self._stopped_after_epoch is not None and self._received is not None:
            signal_name, epoch = signal.Signals(self._received).name, self._stopped_after_epoch
            requeue = functools.partial(self._deferred_handler, self._received, None)
        saved: Path | None = self.checkpoint_path(trainer)
        claim_as_last(trainer, saved)
        try:
            trainer.save_checkpoint(saved, weights_only=False)  # the full state: ckpt_path=last resumes from it
        except Exception:  # noqa: BLE001 - report the interruption even if the save fails
            log.exception("%s: could not save %s", signal_name, saved)
            saved = None
        self.interruption = Interruption(signal_name, epoch, int(trainer.global_step), saved, requeue)
        if saved is not None:
            log.warning("%s at epoch %d (step %d): saved %s", signal_name, epoch, trainer.global_step, saved)


class TrainingInterrupted(SystemExit):
    """Training stopped by SIGTERM, SIGUSR2 or Ctrl-C after saving ``last.ckpt``.

    A :class:`SystemExit` (like Lightning's own ``SIGTERMException``), so a multirun stops
    instead of recording the job as failed and starting the next one. ``code`` is the
    shell's status for the signal (143 for SIGTERM, 140 for SIGUSR2, 130 for SIGINT);
    ``message`` is the one line ``train.py`` prints; ``interruption`` says where and what
    was saved (and holds the requeue handler of a SIGUSR2).
    """

    def __init__(self, message: str, code: int, interruption: Interruption | None = None) -> None:
        super().__init__(code)
        self.message = message
        self.interruption = interruption

    def __str__(self) -> str:
        return self.message


def interruption_message(interruption: Interruption, run_dir: Path) -> str:
    """The one-line report of an interrupted run."""
    where = f"{interruption.signal_name} at epoch {interruption.epoch} (step {interruption.step})"
    if interruption.checkpoint is None:
        return f"{where}: could not save a checkpoint; expected {run_dir / 'checkpoints'} to be writable"
    return f"{where}: saved {interruption.checkpoint}; continue with: python train.py hydra.run.dir={run_dir} ckpt_path=last"


def raise_if_interrupted(callbacks: Iterable[Any], run_dir: Path) -> None:
    """Raise :class:`TrainingInterrupted` when an :class:`InterruptCheckpoint` recorded an interruption.

    Called by :func:`facrnn.runs.pipeline.train` when ``trainer.fit`` exits with ``SystemExit`` or
    ``KeyboardInterrupt``; returns quietly otherwise (the caller re-raises).
    """
    for callback in callbacks:
        if isinstance(callback, InterruptCheckpoint) and callback.interruption is not None:
            interruption = callback.interruption
            code = EXIT_CODES.get(interruption.signal_name, EXIT_CODES["SIGTERM"])
            raise TrainingInterrupted(interruption_message(interruption, run_dir), code, interruption)


__all__ = [
    "AtomicCheckpointIO",
    "InterruptCheckpoint",
    "Interruption",
    "TrainingInterrupted",
    "atomic_torch_save",
    "atomic_write",
    "interrupt_signal",
    "raise_if_interrupted",
]
