"""Resuming interrupted runs: which checkpoint to continue from, the W&B run id kept in the
run directory, and the RNG state saved with every checkpoint (so a resumed run draws the
same minibatches and posterior noise as an uninterrupted one)."""

from __future__ import annotations

import logging
import secrets
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, open_dict

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
            log.info("resuming from %s", last)
            return str(last)
        # resume=true (set by the cluster launchers) is routinely a first attempt; an explicit
        # ckpt_path=last in a fresh directory is more likely a forgotten hydra.run.dir
        report = log.info if resume else log.warning
        report("no %s yet: starting a fresh run (continue an earlier run with hydra.run.dir=ITS_DIR)", last)
        return None
    return str(ckpt_path)


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
        if trainer.world_size > 1:  # rank 0's state on every rank: give each rank its own stream again
            torch.manual_seed(int(torch.randint(0, 2**62, (1,))) + trainer.global_rank)


__all__ = ["RNGStateCheckpoint", "prepare_resume", "resolve_checkpoint", "wandb_run_id"]
