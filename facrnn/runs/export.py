"""Turn a run of batched model copies (``model.replicas`` / ``model.restarts``) into ordinary
run directories that ``evaluate.py`` and ``python -m facrnn.cli.compare`` read like any other.

Layout of a run with ``model.replicas=R`` (``R > 1``)::

    RUN/config.yaml                  the configuration as given (replicas=R)
    RUN/checkpoints/copies/*.ckpt    the batched training state (resume with ckpt_path=last)
    RUN/replica_XX_seedS/            replica XX as a plain run with seed S = seed + XX:
        config.yaml                  (seed=S, model.replicas=1), checkpoints/{best,last}.ckpt,
        csv/metrics.csv              its own training curves, restarts.json (with restarts)

With ``R = 1`` (restarts only) the plain checkpoints, curves and ``restarts.json`` go into
``RUN`` itself. File names: :class:`facrnn.runs.run_dir.RunDir`. Checkpoints are written
atomically (:func:`facrnn.training.faults.atomic_torch_save`), like Lightning's own.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from facrnn.runs.run_dir import RunDir
from facrnn.training.faults import atomic_torch_save

if TYPE_CHECKING:
    from facrnn.training.module import FacRNNModule

log = logging.getLogger(__name__)


def replica_dir(run_dir: Path, replica: int, seed: int, replicas: int) -> RunDir:
    """Directory of replica ``replica`` (the run directory itself when there is one replica)."""
    run = RunDir(run_dir)
    return run if replicas == 1 else run.replica(replica, seed)


def validation_step_at(module: FacRNNModule, epoch: int) -> int:
    """The optimizer step count when the validation of ``epoch`` ran (the copies' history), -1 if none did."""
    steps = [step for validated_epoch, step, _ in module.copies.history["val"] if validated_epoch == epoch]
    return int(steps[-1]) if steps else -1


def plain_checkpoint(
    module: FacRNNModule,
    copy: int,
    parameters: dict[str, torch.Tensor] | None,
    epoch: int,
    seed: int,
    global_step: int | None = None,
) -> dict[str, Any]:
    """A checkpoint of copy ``copy`` that :meth:`FacRNNModule.load` reads as a plain run: the
    copy's weights under a plain module's names (``model.encoder.weight``, ...) and the
    hyper-parameters of one start (the restarts are recorded in restarts.json, not re-run).
    ``epoch`` and ``global_step`` (default: the module's current one) say where the weights
    are from."""
    hyper_parameters = dict(module.hparams)
    hyper_parameters.update(replicas=1, restarts=1, seed=seed)
    state = module.model.copy_state(copy, parameters)
    return {
        "state_dict": {f"model.{name}": value.cpu() for name, value in state.items()},
        "hyper_parameters": hyper_parameters,
        "pytorch-lightning_version": pl.__version__,
        "epoch": int(epoch),
        "global_step": int(module.global_step if global_step is None else global_step),
    }


def write_curves(module: FacRNNModule, copy: int, path: Path) -> Path:
    """``csv/metrics.csv`` of one copy, in the CSVLogger layout the plots read."""
    from facrnn.core.losses import LOSS_TERMS

    rows = []
    for split in ("train", "val"):
        for epoch, step, means in module.copies.history[split]:
            row = {"epoch": epoch, "step": step}
            row.update({f"{split}/{name}": float(means[index, copy]) for index, name in enumerate(LOSS_TERMS)})
            rows.append(row)
    rows.sort(key=lambda row: (row["epoch"], "val/loss" in row))
    columns = ["epoch", "step"] + [f"{split}/{name}" for split in ("train", "val") for name in LOSS_TERMS]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def restart_summary(record: dict[str, Any], replica: int) -> dict[str, Any]:
    """One replica's part of the restarts record (every start's objective, the kept start)."""
    restarts = int(record["restarts"])
    copies = range(replica * restarts, (replica + 1) * restarts)
    return {
        "restarts": restarts,
        "kept_start": int(record["kept_start"][replica]),
        "selection_epoch": int(record["selection_epoch"]),
        "window_epochs": int(record["window_epochs"]),
        "objectives": record["objectives"][replica],
        "epochs": record["epochs"],
        "objective_trajectories": [record["objective_trajectories"][copy] for copy in copies],
    }


def export_copies(module: FacRNNModule, cfg: DictConfig, run_dir: Path) -> list[Path]:
    """Write every surviving copy as a plain run directory (see the module docstring).

    Returns the run directories written. ``best.ckpt`` holds a replica's weights at its
    lowest validation loss (written once a validation has run), ``last.ckpt`` its final
    weights (unless its loss went non-finite); a replica with neither is left out, with a
    logged error.
    """
    replicas = int(module.hparams.get("replicas", 1))
    if int(module.hparams.get("restarts", 1)) > 1 and module.copies.restart_record is None:
        module.copies.select_restarts()  # training ended inside the warm phase
    seed = int(cfg.seed)
    written = []
    for replica in range(replicas):
        replica_seed = seed + replica
        target = replica_dir(run_dir, replica, replica_seed, replicas)
        validated = module.copies.best_epoch is not None and int(module.copies.best_epoch[replica]) >= 0
        history = module.copies.history["train"]
        finite = bool(history) and bool(torch.isfinite(history[-1][2][:, replica]).all())
        if not (validated or finite):
            log.error("replica %d (seed %d): its loss is not finite, no checkpoint written", replica, replica_seed)
            continue
        target.checkpoints_dir.mkdir(parents=True, exist_ok=True)
        if validated:  # like ModelCheckpoint: best.ckpt only once a validation has run
            best_epoch = int(module.copies.best_epoch[replica])
            best = plain_checkpoint(
                module,
                replica,
                module.copies.best_parameters,
                best_epoch,
                replica_seed,
                global_step=validation_step_at(module, best_epoch),
            )
            atomic_torch_save(best, target.checkpoint("best"))
        if finite:
            last = plain_checkpoint(module, replica, None, module.current_epoch, replica_seed)
            atomic_torch_save(last, target.checkpoint("last"))
        write_curves(module, replica, target.training_curves_file)
        if module.copies.restart_record is not None:
            summary = restart_summary(module.copies.restart_record, replica)
            target.restarts_file.write_text(json.dumps(summary, indent=1) + "\n")
        if target.path != Path(run_dir):
            replica_cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
            replica_cfg.seed = replica_seed
            replica_cfg.model.replicas = 1
            replica_cfg.paths.output_dir = str(target.path)
            replica_cfg.replica_of = str(run_dir)
            target.config_file.write_text(OmegaConf.to_yaml(replica_cfg))
        written.append(target.path)
    log.info("wrote %d replica run(s) of %s", len(written), run_dir)
    return written


__all__ = [
    "export_copies",
    "plain_checkpoint",
    "replica_dir",
    "restart_summary",
    "write_curves",
]
