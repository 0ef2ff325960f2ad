"""Resuming interrupted runs: which checkpoint to continue from, the W&B run id kept in the
run directory, and the RNG state saved with every checkpoint (so a resumed run draws the
same minibatches and posterior noise as an uninterrupted one)."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from facrnn.errors import ConfigError
from facrnn.runs.run_dir import RunDir

log = logging.getLogger(__name__)


def resolve_checkpoint(ckpt_path: str | None, resume: bool, run_dir: Path, last_checkpoint: Path | None = None) -> str | None:
    """The checkpoint ``trainer.fit`` continues from, or None to start fresh.

    ``ckpt_path`` and ``resume`` were checked by
    :func:`facrnn.training.settings.check_resume_config` (not both; an explicit path exists)
    before this runs.

    Parameters
    ----------
    ckpt_path : str, optional
        ``last`` (this run directory's ``checkpoints/last.ckpt``), a ``.ckpt`` path, or None.
    resume : bool
        The same as ``ckpt_path=last``.
    run_dir : Path
        This run's directory.
    last_checkpoint : Path, optional
        Where ``last`` is (default ``run_dir/checkpoints/last.ckpt``; batched copies keep
        their training state in ``checkpoints/copies/``).

    Returns
    -------
    str or None
        ``last`` with no ``last.ckpt`` yet (the first attempt of a job that may be requeued)
        gives None: the run starts fresh.
    """
    if ckpt_path is None and not resume:
        return None
    if ckpt_path in (None, "last"):
        last = last_checkpoint or RunDir(run_dir).checkpoint("last")
        if last.is_file():
            log_resume(last)
            return str(last)
        # resume=true (set by the cluster launchers) is routinely a first attempt; an explicit
        # ckpt_path=last in a fresh directory is more likely a forgotten hydra.run.dir
        report = log.info if resume else log.warning
        report("no %s yet: starting a fresh run (continue an earlier run with hydra.run.dir=ITS_DIR)", last)
        return None
    log_resume(Path(str(ckpt_path)))
    return str(ckpt_path)


#: config sections that make a run what it is: a resumed run keeps them (:func:`restore_run_config`)
IDENTITY_KEYS = ("model", "datamodule", "seed")
#: overrides that recompose whole configs (they may change any identity key)
COMPOSING_GROUPS = ("experiment", "debug", "hparams_search")


def override_keys(overrides: list[str]) -> list[str]:
    """The dotted config keys a Hydra command line sets (``model=lrrnn`` -> ``model``,
    ``+trainer.x=1`` -> ``trainer.x``), without ``hydra.*`` keys."""
    keys = []
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~").strip().split("@", 1)[0]
        if key and key != "hydra" and not key.startswith("hydra."):
            keys.append(key)
    return keys


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value


def first_difference(new: Any, old: Any, key: str) -> tuple[str, Any, Any] | None:
    """The first dotted key at or below ``key`` where plain containers ``new`` and ``old`` differ."""
    if isinstance(new, dict) and isinstance(old, dict):
        for name in sorted(set(new) | set(old)):
            found = first_difference(new.get(name), old.get(name), f"{key}.{name}" if key else str(name))
            if found:
                return found
        return None
    return None if new == old else (key, new, old)


def restore_run_config(cfg: DictConfig, run: RunDir, overrides: list[str]) -> DictConfig:
    """The config a resumed run continues with: the run's own ``config.yaml``, with the
    command line's changes to anything but its identity.

    A resume (``ckpt_path=last`` / ``resume=true``) into a directory holding ``config.yaml``
    continues *that* run: every key the command line does not set comes from the saved
    config (so ``python train.py hydra.run.dir=RUN ckpt_path=last`` resumes an lrRNN run as
    an lrRNN, with its epochs, whatever the defaults are now). A key the command line sets
    (e.g. ``trainer.max_epochs=8000``) takes the new value, logged; one that would change the
    model, the data or the seed (:data:`IDENTITY_KEYS`) is refused. Without a saved config or
    a resume, ``cfg`` is returned as it is.

    Parameters
    ----------
    cfg : DictConfig
        The config composed from the command line.
    run : RunDir
        The run directory (``cfg.paths.output_dir``).
    overrides : list of str
        The command line's overrides (``HydraConfig.get().overrides.task``).

    Raises
    ------
    ConfigError
        ``ckpt_path=last into RUN: model.name='facrnn' differs from the run's own config.yaml ...``.
    """
    from facrnn.runs.provenance import experiment_config

    resuming = cfg.get("ckpt_path") == "last" or bool(cfg.get("resume", False))
    if not resuming or not run.config_file.is_file():
        return cfg
    from facrnn.runs.trusted import check_run_config

    saved = OmegaConf.create(experiment_config(run.load_config()))
    check_run_config(saved, run.config_file)  # a resume instantiates it: only the project's own classes
    current = OmegaConf.create(experiment_config(cfg))
    keys = override_keys(overrides)
    how = "resume=true" if cfg.get("resume") else "ckpt_path=last"
    checked = [key for key in keys if key.split(".")[0] in IDENTITY_KEYS]
    if any(key in COMPOSING_GROUPS for key in keys):
        checked = list(IDENTITY_KEYS)
    for key in checked:
        found = first_difference(
            _plain(OmegaConf.select(current, key, default=None)), _plain(OmegaConf.select(saved, key, default=None)), key
        )
        if found:
            name, new_value, old_value = found
            raise ConfigError(
                f"{how} into {run.path}: {name}={new_value!r} differs from the run's own {run.CONFIG} "
                f"({name}={old_value!r}); expected a resume to keep its model, data and seed: drop the override, "
                "or train into a new hydra.run.dir"
            )
    restored = cfg.copy()  # where the run is and how it is launched: this command's
    with open_dict(restored):
        for key in saved:
            restored[key] = _plain(saved[key])
        for key in keys:
            if key.split(".")[0] in IDENTITY_KEYS or key in COMPOSING_GROUPS:
                continue
            value = _plain(OmegaConf.select(cfg, key, default=None))
            before = _plain(OmegaConf.select(saved, key, default=None))
            if first_difference(value, before, key):
                log.info("%s: %s=%s from the command line (the run had %s)", how, key, value, before)
            OmegaConf.update(restored, key, value, force_add=True)
    log.info("%s: continuing %s with its own %s", how, run.path, run.CONFIG)
    return restored


def check_fresh_run_dir(cfg: DictConfig, run: RunDir) -> None:
    """A training without ``ckpt_path``/``resume`` must not start in a directory that holds a run.

    Lightning would write ``best-v1.ckpt`` beside the old ``best.ckpt`` and the evaluation
    would score the previous run's checkpoint.

    Raises
    ------
    ConfigError
        ``hydra.run.dir=RUN already holds a trained run (...); expected a new directory, or ckpt_path=last``.
    """
    if cfg.get("ckpt_path") is not None or cfg.get("resume", False):
        return
    for path in (run.checkpoints_dir, run.metrics_file):
        if path.is_file() or (path.is_dir() and any(path.iterdir())):
            raise ConfigError(
                f"hydra.run.dir={run.path} already holds a trained run ({path.relative_to(run.path)}); expected a new "
                "directory (leave hydra.run.dir unset for a fresh one), or ckpt_path=last to continue that run"
            )


#: environment variables that give a process's rank; only rank 0 (or no rank) locks a run directory
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "PMI_RANK")


@contextmanager
def run_lock(run: RunDir) -> Iterator[None]:
    """Hold ``RUN/.run.lock`` (an exclusive ``flock``) while one process trains into ``run``.

    Two trainings started in one directory would each report the other's checkpoints and
    share one W&B id; the second is refused. The processes of one DDP run (rank > 0 in
    :data:`RANK_VARIABLES`) share the lock of rank 0. The lock goes with the process, so a
    killed run leaves nothing to clean up.

    Raises
    ------
    ConfigError
        ``RUN: another training process (pid 1234) is writing this run directory; expected one
        process per run directory: wait for it, or train into a new hydra.run.dir``.
    """
    import fcntl
    import os

    if any(os.environ.get(name, "0") not in ("", "0") for name in RANK_VARIABLES):
        yield
        return
    handle = open(run.lock_file, "a+")  # held for the whole training, closed below
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise ConfigError(
                f"{run.path}: another training process (pid {holder}) is writing this run directory; expected one "
                "process per run directory: wait for it, or train into a new hydra.run.dir"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
    finally:
        handle.close()  # releases the lock


def resume_epoch(stored: dict[str, Any]) -> int:
    """The epoch a resume from checkpoint ``stored`` continues from.

    Lightning stores ``epoch`` = the epoch in progress. A checkpoint written at a validation
    holds a finished epoch's training (its fit-loop progress has ``started`` one ahead of
    ``processed`` and the last batch done): training continues with the next epoch. One
    written once an epoch was complete (SIGUSR2) already names the next epoch; one written
    mid-epoch (SIGTERM after a batch) continues within its epoch.
    """
    epoch = int(stored.get("epoch", -1))
    fit_loop = (stored.get("loops") or {}).get("fit_loop") or {}
    progress = ((fit_loop.get("epoch_progress") or {}).get("total")) or {}
    batches = fit_loop.get("epoch_loop.batch_progress") or {}
    if progress.get("started") == progress.get("processed", -1) + 1 and batches.get("is_last_batch"):
        return epoch + 1
    return epoch


def log_resume(checkpoint: Path) -> None:
    """The one line every resume logs: ``resuming from RUN/checkpoints/last.ckpt at epoch 612
    (global step 9)``: the epoch training continues from (:func:`resume_epoch`) and the
    stored global step, read with the safe reader."""
    from facrnn.runs.checkpoints import read_checkpoint

    stored = read_checkpoint(checkpoint)
    log.info(
        "resuming from %s at epoch %d (global step %d)", checkpoint, resume_epoch(stored), int(stored.get("global_step", -1))
    )


def wandb_run_id(run_dir: Path) -> str:
    """The W&B run id of this run directory: read from ``wandb_id.txt``, created on first use."""
    path = RunDir(run_dir).wandb_id_file
    if path.is_file():
        return path.read_text().strip()
    run_id = secrets.token_hex(4)  # W&B run ids: 8 lowercase alphanumerics
    path.write_text(run_id + "\n")
    return run_id


def prepare_resume(cfg: DictConfig, run_dir: Path) -> str | None:
    """Resolve ``cfg.ckpt_path``/``cfg.resume`` and pin the W&B run id of ``run_dir``.

    Every W&B logger of ``cfg.logger`` gets ``id`` (kept in ``run_dir/wandb_id.txt``) and
    ``resume="allow"``, so a resumed run keeps logging into the same W&B run.

    Returns
    -------
    The checkpoint path for ``trainer.fit`` (None: start fresh).
    """
    from facrnn.core.copies import configured_copies

    run = RunDir(run_dir)
    last_checkpoint = run.copies_checkpoint("last") if configured_copies(cfg.model) > 1 else run.checkpoint("last")
    ckpt_path = resolve_checkpoint(cfg.get("ckpt_path"), bool(cfg.get("resume", False)), run_dir, last_checkpoint)
    for entry in (cfg.get("logger") or {}).values():
        if entry and str(entry.get("_target_", "")).endswith("WandbLogger"):
            with open_dict(entry):
                entry.id = entry.get("id") or wandb_run_id(run_dir)
                entry.resume = "allow"
    return ckpt_path


class RNGStateCheckpoint(pl.Callback):
    """Saves torch's RNG state (CPU, and CUDA when used) in every checkpoint and restores it.

    Lightning restores weights, optimizer and loop state; this adds the random state that
    decides the minibatch order and the posterior noise, so a resumed run continues the
    random stream of the interrupted one. The state is put back when the first epoch after
    the restore starts: Lightning draws from the RNG while it sets the fit up, which the
    interrupted run did not do at that point. Under DDP the checkpoint holds rank 0's state,
    from which every rank derives its own stream (bitwise resume holds for one process).

    A checkpoint saved once an epoch was complete (SIGUSR2, :class:`facrnn.training.faults.InterruptCheckpoint`)
    resumes at the start of the next epoch, and Lightning then trains that epoch from the
    iterator it created while setting the fit up, whose batch order was drawn before the
    state was put back; that iterator is created anew once the state is restored, as an
    uninterrupted run creates it when the epoch starts.
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._pending is None:
            return
        torch.set_rng_state(self._pending["torch"])
        if "cuda" in self._pending and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(self._pending["cuda"])
        self._pending = None
        fit_loop = trainer.fit_loop
        if fit_loop.is_resuming and not fit_loop.epoch_loop.restarting and fit_loop._data_fetcher is not None:
            iter(fit_loop._data_fetcher)  # this epoch's batch order, drawn from the restored stream
        if trainer.world_size > 1:  # rank 0's state on every rank: give each rank its own stream again
            torch.manual_seed(int(torch.randint(0, 2**62, (1,))) + trainer.global_rank)


class RunConfigWriter(pl.Callback):
    """Writes a run's ``config.yaml``, on a resume only once training continues.

    A fresh run writes its config before any data are loaded (:meth:`write`), so an
    interrupted run can be resumed. A resume continues a run whose ``config.yaml`` matches
    its checkpoints: it is rewritten (with the command line's changes, e.g.
    ``trainer.max_epochs``) only when training starts from the restored checkpoint, or fit
    returns, so a resume that fails first (a truncated or other-shape checkpoint, a data file
    that vanished, a refused setting) leaves it byte-identical.

    Parameters
    ----------
    path : Path
        ``RUN/config.yaml``.
    text : str
        The YAML to write.
    """

    def __init__(self, path: Path, text: str) -> None:
        self.path, self.text, self.written = Path(path), text, False

    def write(self) -> None:
        """Write the config (atomically), once."""
        from facrnn.runs.run_dir import write_text_atomic

        if not self.written:
            write_text_atomic(self.path, self.text)
            self.written = True

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            self.write()


__all__ = [
    "RNGStateCheckpoint",
    "RunConfigWriter",
    "check_fresh_run_dir",
    "log_resume",
    "override_keys",
    "prepare_resume",
    "resolve_checkpoint",
    "restore_run_config",
    "resume_epoch",
    "run_lock",
    "wandb_run_id",
]
