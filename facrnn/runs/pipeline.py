"""What ``train.py`` and ``evaluate.py`` do: build everything from a Hydra config, fit,
evaluate, write results into the run directory."""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from datamodules.base import RecordingDataModule
from facrnn.core.copies import configured_copies
from facrnn.errors import ConfigError
from facrnn.evaluation.settings import EvalSettings
from facrnn.runs.checkpoints import load_checkpoint, read_checkpoint
from facrnn.runs.provenance import checkpoint_record, evaluation_provenance
from facrnn.runs.resume import RunConfigWriter, check_fresh_run_dir, prepare_resume, restore_run_config, run_lock
from facrnn.runs.run_dir import RunDir
from facrnn.training.checkpoint_files import check_state_fits
from facrnn.training.faults import raise_if_interrupted
from facrnn.training.logs import finish_wandb_run, index_frozen_module_files
from facrnn.training.module import FacRNNModule
from facrnn.training.runtime import check_accelerator, keep_freed_buffers, training_threads
from facrnn.training.settings import check_train_config

if TYPE_CHECKING:
    from facrnn.core.model import LowRankRNN
    from facrnn.evaluation.scoring import Evaluation

log = logging.getLogger(__name__)

# Lightning advice that does not apply to in-memory per-bin data and epoch-level logging.
QUIET_WARNINGS = (
    r".*does not have many workers.*",
    r".*smaller than the logging interval.*",
    r".*The anonymous setting has no effect.*",
    r".*isinstance\(treespec, LeafSpec\).*",
    # FacRNNModule.transfer_batch_to_device skips batches already on the device (benchmarks/README.md)
    r".*overridden `transfer_batch_to_device` in `LightningModule`.*",
    # a resume continues its own directory: ResumableCSVLogger keeps the rows (facrnn/training/logs.py)
    r".*Experiment logs directory .* exists and is not empty.*",
    # a process on a machine that has SLURM's tools but was not started by srun (a login node)
    r".*The `srun` command is available on your system but is not used.*",
    r".*Checkpoint directory .* exists and is not empty.*",
)


def instantiate_datamodule(datamodule_cfg: DictConfig, source: str | Path | None = None) -> RecordingDataModule:
    """Build and set up the datamodule of a config.

    Parameters
    ----------
    datamodule_cfg : DictConfig
        The ``datamodule`` section.
    source : str or Path, optional
        The file the section was read from (``RUN/config.yaml``): then it may name only the
        project's own datamodules (:func:`facrnn.runs.trusted.check_trusted_targets`), checked
        before anything is imported or called. None: a config train.py composed from ``conf/``
        and the command line.

    Raises
    ------
    ConfigError
        ``source`` names other code (a ``_target_``, ``_partial_``, ``_args_`` or resolver).
    """
    if source is not None:
        from facrnn.runs.trusted import check_trusted_targets

        datamodule_cfg = check_trusted_targets(datamodule_cfg, "datamodule", source)
    datamodule = hydra.utils.instantiate(datamodule_cfg, _convert_="all")
    datamodule.setup()
    return datamodule


def instantiate_module(model_cfg: DictConfig, datamodule: RecordingDataModule, seed: int | None = None) -> FacRNNModule:
    """Build the LightningModule, taking ``n_neurons`` and ``n_train`` from the data (the rank
    ``model.latent_dim`` may not exceed the number of channels; a ``from_file`` recording's
    ground-truth ``group_sizes`` must fit the model's grouping)."""
    from datamodules.from_file import FromFileDataModule
    from datamodules.validation import check_latents_fit
    from facrnn.core.grouping import resolve_group_sizes

    latent_dim = sum(  # latent_dim may be null when n_groups x group_rank (or group_sizes) say it
        resolve_group_sizes(
            model_cfg.get("latent_dim"), model_cfg.get("n_groups"), model_cfg.get("group_sizes"), model_cfg.get("group_rank")
        )
    )
    check_latents_fit(latent_dim, datamodule.n_channels, datamodule.recording.source)
    if isinstance(datamodule, FromFileDataModule):
        datamodule.check_model_grouping(model_cfg)
    extra = {} if seed is None else {"seed": int(seed)}
    return hydra.utils.instantiate(
        model_cfg, n_neurons=datamodule.n_channels, n_train=datamodule.n_train, _convert_="all", **extra
    )


def configure_copies(
    module: FacRNNModule, datamodule: RecordingDataModule, callbacks: list[Any], cfg: DictConfig, run: RunDir
) -> None:
    """Hand the datamodule its batching (``batches_per_call``, the rollout windows of
    ``model.rollout_window``) and, for batched model copies, one shuffling seed per copy; keep
    the copies' training checkpoints in ``checkpoints/copies``."""
    from facrnn.core.copies import copy_seed

    copy_seeds = None
    if module.is_replicated:
        restarts = int(module.hparams.restarts)
        copy_seeds = [copy_seed(int(cfg.seed), copy // restarts, copy % restarts) for copy in range(module.n_copies)]
        for callback in callbacks:
            if isinstance(callback, pl.callbacks.ModelCheckpoint):
                callback.dirpath = str(run.copies_dir)
    datamodule.configure_training(
        batches_per_call=int(cfg.get("batches_per_call", 0)),
        copy_seeds=copy_seeds,
        window=int(module.hparams.get("rollout_window", 1)),
        window_fraction=float(module.hparams.get("rollout_window_fraction", 1.0)),
    )


def instantiate_group(group_cfg: DictConfig | None) -> list[Any]:
    """Instantiate every entry with a ``_target_`` of a config group (callbacks, loggers)."""
    if not group_cfg:
        return []
    return [hydra.utils.instantiate(entry) for entry in group_cfg.values() if entry and "_target_" in entry]


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train one model as configured; evaluate it when ``cfg.evaluate``.

    Returns
    -------
    dict with ``run_dir``, ``wall_time_s``, ``callback_metrics`` (the last logged value of
    every training/validation metric) and, after evaluation, ``metrics``. With
    ``model.replicas > 1`` also ``replica_run_dirs`` and, after evaluation,
    ``replica_metrics`` (per replica directory); ``metrics`` is then their mean.
    """
    run = RunDir(cfg.paths.output_dir)
    cfg = restore_run_config(cfg, run, command_line_overrides())  # a resume continues the run's own config
    check_train_config(cfg)  # before any data is loaded (facrnn/training/settings.py)
    check_accelerator(cfg.trainer)  # trainer=gpu on this machine's torch: before any data loading
    run.path.mkdir(parents=True, exist_ok=True)
    with run_lock(run):  # one training process per run directory
        check_fresh_run_dir(cfg, run)
        return train_in(cfg, run)


def train_in(cfg: DictConfig, run: RunDir) -> dict[str, Any]:
    """The body of :func:`train` once the config is checked and ``run`` is locked."""
    started = time.perf_counter()
    quiet_known_warnings()
    keep_freed_buffers()
    torch.set_num_threads(training_threads(cfg.get("threads"), configured_copies(cfg.model)))
    run_dir = run.path
    ckpt_path = prepare_resume(cfg, run_dir)  # ckpt_path=last / resume=true; pins the W&B run id
    config_writer = RunConfigWriter(run.config_file, OmegaConf.to_yaml(cfg, resolve=True))
    if ckpt_path is None or not run.config_file.is_file():
        config_writer.write()  # a fresh run; a resume rewrites it only once training continues
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)

    datamodule = instantiate_datamodule(cfg.datamodule)
    module = instantiate_module(cfg.model, datamodule, seed=int(cfg.seed))
    callbacks = instantiate_group(cfg.get("callbacks"))
    configure_copies(module, datamodule, callbacks, cfg, run)
    callbacks.append(config_writer)
    loggers = instantiate_group(cfg.get("logger"))
    if ckpt_path is not None:  # read once: checked against this model, and the epoch the CSV log keeps
        stored = read_checkpoint(ckpt_path)
        check_state_fits(  # another model's checkpoint: one line, not load_state_dict's traceback
            ckpt_path,
            stored["state_dict"],
            module.state_dict(),
            hint="resume it with the config it was trained with (its own hydra.run.dir), or train afresh",
            copies=module.n_copies > 1,
        )
        keep_logged_history(loggers, int(stored.get("epoch", -1)))
    trainer: pl.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    index_frozen_module_files()  # W&B starts below (log_hyperparams): ~1 s less of its start
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    log.info("training %s (group sizes %s) in %s", cfg.model.name, module.group_sizes, run_dir)
    try:
        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        except (
            SystemExit,
            KeyboardInterrupt,
        ):  # SIGTERM / Ctrl-C: last.ckpt saved by facrnn.training.faults.InterruptCheckpoint
            raise_if_interrupted(callbacks, run_dir)
            raise
        if trainer.is_global_zero:
            config_writer.write()  # a resume of a run already at max_epochs does not start training
        result: dict[str, Any] = {"run_dir": str(run_dir), "method": str(cfg.model.name)}
        result["train_time_s"] = time.perf_counter() - started
        result["callback_metrics"] = {
            name: float(value) for name, value in trainer.callback_metrics.items() if value.numel() == 1
        }
        run_dirs = [run_dir]
        if module.is_replicated and trainer.is_global_zero:
            from facrnn.runs.export import export_copies

            run_dirs = export_copies(module, cfg, run_dir)
            result["replica_run_dirs"] = [str(path) for path in run_dirs]
        # under DDP every process runs this function; only rank 0 evaluates and writes metrics.json
        if cfg.get("evaluate") and not cfg.trainer.get("fast_dev_run") and trainer.is_global_zero:
            settings = EvalSettings()
            evaluations = {str(path): evaluate_run(path, settings, datamodule=datamodule) for path in run_dirs}
            evaluated = {path: evaluation.metrics for path, evaluation in evaluations.items()}
            first = evaluations[str(run_dirs[0])]
            result["metrics"] = first.metrics if len(run_dirs) == 1 else mean_metrics(list(evaluated.values()))
            result["provenance"] = first.provenance
            if len(run_dirs) > 1:
                result["replica_metrics"] = evaluated
            log_evaluation(loggers, result["metrics"], first.provenance, [RunDir(path) for path in run_dirs])
    finally:
        finish_wandb(loggers)
    result["wall_time_s"] = time.perf_counter() - started
    return result


def mean_metrics(metrics: list[dict[str, Any]]) -> dict[str, float]:
    """Mean of every numeric metric over several runs (the replicas of one configuration)."""
    names = [name for name, value in metrics[0].items() if isinstance(value, (int, float)) and not isinstance(value, bool)]
    means = {}
    for name in names:
        values = [float(entry[name]) for entry in metrics if name in entry]
        means[name] = sum(values) / len(values)
    return means


def quiet_known_warnings() -> None:
    """Silence Lightning/W&B advice that does not apply here (see ``QUIET_WARNINGS``)."""
    for pattern in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    # Lightning's start-up banner (accelerator availability, tips) is noise in sweep logs.
    logging.getLogger("pytorch_lightning.utilities.rank_zero").setLevel(logging.WARNING)
    os.environ.setdefault("WANDB_SILENT", "true")


def command_line_overrides() -> list[str]:
    """The overrides of this job's command line (``HydraConfig.get().overrides.task``), or [] outside Hydra."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def keep_logged_history(loggers: list[Any], until_epoch: int) -> None:
    """On a resume, let the CSV logger keep the curves logged up to the resumed checkpoint's
    epoch (:class:`facrnn.training.logs.ResumableCSVLogger`), so ``csv/metrics.csv`` is appended to."""
    from facrnn.training.logs import ResumableCSVLogger

    for logger in loggers:
        if isinstance(logger, ResumableCSVLogger):
            logger.keep_history(until_epoch=until_epoch)


def log_evaluation(loggers: list[Any], metrics: dict[str, Any], provenance: dict[str, Any], runs: list[RunDir]) -> None:
    """Held-out metrics into the W&B run summary (as ``<split>/<metric>``, with the provenance)
    and the evaluation figures as images, before the W&B run is closed."""
    for logger in loggers:
        if type(logger).__name__ != "WandbLogger":
            continue
        import wandb

        split = provenance.get("split", "test")
        experiment = logger.experiment
        summary = {f"{split}/{name}": value for name, value in metrics.items() if isinstance(value, (int, float))}
        experiment.summary.update({**summary, "evaluation": provenance})
        figures = sorted(path for run in runs for path in run.figures_dir.glob("*.png"))
        if figures:
            experiment.log(
                {
                    f"figures/{path.parent.parent.name}/{path.stem}" if len(runs) > 1 else f"figures/{path.stem}": wandb.Image(
                        str(path)
                    )
                    for path in figures
                }
            )


def finish_wandb(loggers: list[Any]) -> None:
    """Close W&B runs so a multirun's next job starts a fresh one."""
    for logger in loggers:
        if type(logger).__name__ == "WandbLogger":
            finish_wandb_run()


class OpenedRun(NamedTuple):
    """A run directory opened for scoring (:func:`open_run`)."""

    run: RunDir
    checkpoint: Path
    module: FacRNNModule
    datamodule: RecordingDataModule
    #: file, epoch and global step of ``checkpoint`` (:func:`facrnn.runs.provenance.checkpoint_record`)
    checkpoint_record: dict[str, Any]


def open_run(run_dir: str | Path, settings: EvalSettings, datamodule: RecordingDataModule | None = None) -> OpenedRun:
    """Check a run directory and load what scoring it needs: config, checkpoint, module, data.

    Config and checkpoint problems are reported before any data is loaded.

    Parameters
    ----------
    run_dir : str or Path
        A run directory written by ``train.py`` (one replica directory of a ``model.replicas`` run).
    settings : EvalSettings
        ``checkpoint`` and ``split`` are used here.
    datamodule : RecordingDataModule, optional
        The run's data, already set up (else built from its ``config.yaml``).

    Raises
    ------
    CheckpointNotFoundError
        No ``config.yaml``, or no such checkpoint.
    CheckpointError
        The checkpoint cannot be read.
    ConfigError
        The parent of a ``model.replicas`` run, or a split the data does not have.
    """
    run = RunDir(run_dir)
    cfg = run.load_config()
    replicas = int(cfg.model.get("replicas", 1)) if "model" in cfg else 1
    if replicas > 1 and settings.checkpoint in RunDir.CHECKPOINT_NAMES:
        replica_dirs = [replica.path.name for replica in run.replica_dirs()]
        raise ConfigError(
            f"run_dir={run.path}: a run of model.replicas={replicas} batched copies; expected one of its replica "
            f"directories ({', '.join(replica_dirs) or 'none written yet: the training has not finished'})"
        )
    checkpoint = run.find_checkpoint(settings.checkpoint)  # checkpoint problems before any data loading
    stored = read_checkpoint(checkpoint)  # read once: its epoch for the provenance, its weights for the module
    module = load_checkpoint(checkpoint, stored=stored)
    record = checkpoint_record(run, checkpoint, stored)
    if datamodule is None:
        datamodule = instantiate_datamodule(cfg.datamodule, source=run.config_file)
    if settings.split not in datamodule.splits:
        raise ConfigError(f"split={settings.split!r}: expected one of {sorted(datamodule.splits)}")
    return OpenedRun(run, checkpoint, module, datamodule, record)


def expected_provenance(run_dir: str | Path, settings: EvalSettings) -> dict[str, Any]:
    """The provenance record an evaluation of ``run_dir`` with ``settings`` would write
    (:func:`facrnn.runs.provenance.evaluation_provenance`), without loading any data: compare
    its :func:`~facrnn.runs.provenance.evaluation_key` with a stored one to know whether
    stored metrics measured the same thing."""
    run = RunDir(run_dir)
    checkpoint = run.find_checkpoint(settings.checkpoint)
    return evaluation_provenance(run, checkpoint_record(run, checkpoint, read_checkpoint(checkpoint)), settings)


def score(model: LowRankRNN, datamodule: RecordingDataModule, settings: EvalSettings) -> Evaluation:
    """Score ``model`` on the split ``settings.split`` of ``datamodule`` (behavioural
    alignment maps fitted on the training split)."""
    from facrnn.evaluation.scoring import evaluate_model

    tensors, training = datamodule.split_tensors(settings.split), datamodule.split_tensors("train")
    return evaluate_model(model, tensors, datamodule.recording, settings, fit_tensors=training)


def evaluate_run(
    run_dir: str | Path, settings: EvalSettings | None = None, datamodule: RecordingDataModule | None = None
) -> Evaluation:
    """Evaluate a finished training run; writes ``metrics.json`` and figures into it.

    Parameters
    ----------
    run_dir : str or Path
        The run directory.
    settings : EvalSettings, optional
        Checkpoint, split, estimator settings, figures (default: ``EvalSettings()``). The
        rollout measures of :mod:`facrnn.evaluation.dynamics` (``settings.dynamics``) also
        write ``fixed_points.json``.
    datamodule : RecordingDataModule, optional
        The run's data, already set up.
    """
    from facrnn.evaluation.behaviour import write_rotation_sweep_csv

    settings = settings or EvalSettings()
    opened = open_run(run_dir, settings, datamodule)
    run = opened.run
    evaluation = score(opened.module.model, opened.datamodule, settings)
    restarts = run.read_restarts()
    if restarts is not None:  # model.restarts: how many starts, which one was kept (by training objective)
        evaluation.metrics.update(restarts=float(restarts["restarts"]), kept_start=float(restarts["kept_start"]))
    evaluation.provenance = evaluation_provenance(run, opened.checkpoint_record, settings)
    written = run.write_metrics(evaluation.metrics, evaluation.provenance, settings.split, settings.checkpoint)
    log.info("evaluated %s on the %s split: %s", opened.checkpoint, settings.split, written)
    from facrnn.runs.outputs import write_outputs

    write_outputs(run, opened.module, opened.datamodule, checkpoint=opened.checkpoint)  # latents, rates, W of every split
    if evaluation.behaviour is not None and evaluation.behaviour.sweep is not None:
        write_rotation_sweep_csv(evaluation.behaviour.sweep, run.rotation_sweep_file)
    if evaluation.dynamics is not None and evaluation.dynamics.fixed_points is not None:
        fixed_points = [point.to_dict() for point in evaluation.dynamics.fixed_points]
        run.fixed_points_file.write_text(json.dumps(fixed_points, indent=1) + "\n")
    if settings.figures:
        write_figures(run, evaluation, opened.module, opened.datamodule)
    return evaluation


def write_figures(
    run: RunDir,
    evaluation: Evaluation,
    module: FacRNNModule | None = None,
    datamodule: RecordingDataModule | None = None,
) -> list[Path]:
    """Latents, connectivity, behaviour (M1) and training-curve PNGs of an evaluated run
    into ``run.figures_dir``; with ``module`` and ``datamodule`` of an imaging recording with
    a mask, also the loading maps, frames and movie of :mod:`facrnn.plots.imaging`.

    The file names of this function's own figures are written here, once each; the
    behaviour, dynamics and imaging figures are named by their :mod:`facrnn.plots` modules.
    """
    from facrnn.plots import fit as plots
    from facrnn.plots.behaviour import write_behaviour_figures

    figure_dir = run.figures_dir
    figure_dir.mkdir(exist_ok=True)
    written = []
    split = evaluation.provenance.get("split", "test")
    held = "held-out" if not evaluation.provenance.get("in_sample") else "in-sample"
    if evaluation.true_latents is not None and evaluation.true_group_sizes is not None:
        written.append(
            plots.plot_latents(
                evaluation.true_latents,
                evaluation.aligned_latents,
                evaluation.true_group_sizes,
                figure_dir / "latents.png",
                title=f"true vs aligned latents ({split} bins, {held})",
            )
        )
    elif module is not None and datamodule is not None:  # no ground truth: the posterior means over time
        import torch

        tensors = datamodule.split_tensors(split)
        with torch.no_grad():
            means = module.model.encode(tensors["encoder_input"]).double().numpy()
        written.append(
            plots.plot_posterior_latents(
                means,
                module.group_sizes,
                figure_dir / "latents.png",
                title=f"posterior means ({split} bins, {held})",
                time=tensors["time"].numpy(),
                time_label="bin in trial",
            )
        )
    arrays = evaluation.arrays
    if "W" in arrays:  # absent for MLP encoders/decoders
        written.append(
            plots.plot_connectivity(
                arrays["W"],
                arrays["W_groups"],
                figure_dir / "connectivity.png",
                true_w=arrays.get("W_true"),
                true_group_w=arrays.get("W_groups_true"),
                matching=evaluation.group_matching,
                # imaging: W* = A B with B a ridge fit of the true latents (mouse_voltage.oracle_encoder)
                truth_label="reference" if is_imaging(datamodule) else "true",
            )
        )
    if "W" in arrays and "W_true" not in arrays:  # real data: a large W reads best with units sorted by loading
        written.append(plots.plot_sorted_connectivity(arrays["W"], arrays["W_groups"], figure_dir / "connectivity_sorted.png"))
    if evaluation.behaviour is not None:
        written += write_behaviour_figures(figure_dir, evaluation.behaviour)
    if evaluation.dynamics is not None:
        from facrnn.plots.dynamics import write_dynamics_figures

        written += write_dynamics_figures(figure_dir, evaluation.dynamics, evaluation.eval_group_sizes)
    recording = None if datamodule is None else datamodule.recording
    if module is not None and recording is not None and "channel_map" in recording.extras:
        from facrnn.plots.imaging import write_imaging_figures

        written += write_imaging_figures(
            module.model,
            recording,
            figure_dir,
            getattr(datamodule, "figure_settings", {}),
            history=int(module.hparams.get("history", 1)),
            test_times=datamodule.split_tensors("test")["time"].numpy(),
        )
    if run.training_curves_file.is_file():
        written.append(plots.plot_training_curves(run.training_curves_file, figure_dir / "training_curves.png"))
    restarts = run.read_restarts()
    if restarts is not None:
        written.append(plots.plot_restarts(restarts, figure_dir / "restarts.png"))
    return written


def is_imaging(datamodule: RecordingDataModule | None) -> bool:
    """Whether ``datamodule`` is voltage imaging, whose ground-truth ``W`` is a reference fit."""
    from datamodules.mouse_voltage import MouseVoltageDataModule

    return isinstance(datamodule, MouseVoltageDataModule)


def check_posthoc_kind(kind: str) -> None:
    """``kind`` must name a post-hoc baseline of :mod:`facrnn.evaluation.posthoc` (``posthoc=`` of evaluate.py).

    Raises
    ------
    ConfigError
        ``posthoc='pca': expected one of ica, svd``.
    """
    from facrnn.evaluation.posthoc import POSTHOC_METHODS

    if kind not in POSTHOC_METHODS:
        raise ConfigError(f"posthoc={kind!r}: expected one of {', '.join(sorted(POSTHOC_METHODS))}")


def evaluate_posthoc(
    run_dir: str | Path,
    kind: str,
    settings: EvalSettings | None = None,
    datamodule: RecordingDataModule | None = None,
) -> tuple[Evaluation, LowRankRNN]:
    """Post-hoc variant ``kind`` (``ica`` or ``svd``) of a trained run, scored like the run
    itself (the other arguments as :func:`evaluate_run`).

    Writes ``RUN/posthoc_<kind>/metrics.json`` (plus ``posthoc.json`` with the method name
    and settings, and ``figures/``).

    Returns
    -------
    (Evaluation, LowRankRNN)
        The scores and the transformed model.
    """
    from facrnn.evaluation.posthoc import (
        POSTHOC_METHODS,
        posthoc_group_sizes,
        posthoc_model,
    )

    check_posthoc_kind(kind)
    settings = settings or EvalSettings()
    opened = open_run(run_dir, settings, datamodule)
    model = opened.module.model
    model.eval()
    train_input = opened.datamodule.split_tensors("train")["encoder_input"]
    transformed = posthoc_model(model, kind, posthoc_group_sizes(model, opened.datamodule), train_input, settings.seed)
    evaluation = score(transformed, opened.datamodule, settings)
    out = opened.run.posthoc(kind)
    evaluation.provenance = {**evaluation_provenance(opened.run, opened.checkpoint_record, settings), "posthoc": kind}
    written = out.write_metrics(evaluation.metrics, evaluation.provenance, settings.split, settings.checkpoint)
    record = {
        "method": POSTHOC_METHODS[kind],
        "kind": kind,
        "checkpoint": str(opened.checkpoint),
        "split": settings.split,
        "seed": settings.seed,
    }
    out.posthoc_settings_file.write_text(json.dumps(record, indent=2) + "\n")
    log.info("post-hoc %s of %s: %s", kind, opened.checkpoint, written)
    if settings.figures:
        write_figures(out, evaluation, datamodule=opened.datamodule)
    return evaluation, transformed
