"""Sweeps that survive a bad job: the task's objective value, per-job failure records and
a Hydra callback that summarises them and fails the multirun at the end.

A job of a multirun that raises is caught in the task function (:func:`run_job_isolated`):
the error is logged with the job's overrides, its W&B run is finished as failed, a
``failure.yaml`` is written into the job directory and the task returns None. The
launchers then carry on with the remaining jobs, the Optuna sweeper marks the trial
``FAIL`` (None is not a float), and :class:`FailureSummary` writes ``failures.yaml`` into
the sweep directory and ends the multirun with a non-zero exit status.
"""

from __future__ import annotations

import logging
import math
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from facrnn.errors import FacRNNError
from facrnn.runs.run_dir import RunDir
from facrnn.training.faults import TrainingInterrupted
from facrnn.training.logs import finish_wandb_run

log = logging.getLogger(__name__)

# the sweep directory's summary (a job's own record is RunDir.FAILURE, failure.yaml)
FAILURES_SUMMARY = "failures.yaml"


class SweepFailedError(SystemExit):
    """Raised at the end of a multirun in which some jobs failed: exit status 1 and the message.

    A :class:`SystemExit`, because Hydra turns an ``Exception`` raised by a callback into a
    warning and would exit with status 0.
    """


#: objectives computed from logged terms: the negative ELBO (NLL + KL, per sample) leaves out
#: the beta-weighted PC and the overlap penalty, so trials with different beta are judged alike
DERIVED_METRICS = {f"{split}/neg_elbo": (f"{split}/nll", f"{split}/kl") for split in ("train", "val")}


def with_derived_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """``metrics`` plus each :data:`DERIVED_METRICS` entry whose terms are present (their sum)."""
    derived = {
        name: sum(float(metrics[term]) for term in terms)
        for name, terms in DERIVED_METRICS.items()
        if all(term in metrics for term in terms)
    }
    return {**metrics, **derived}


def objective_value(metric: str | None, result: dict[str, Any]) -> float | None:
    """The value of ``optimized_metric`` for a finished run.

    Parameters
    ----------
    metric : str, optional
        A held-out metric of ``metrics.json`` (e.g. ``group_latent_r2``), a logged
        training metric (e.g. ``val/loss``, its value at the last validation) or a derived
        one (:data:`DERIVED_METRICS`: ``val/neg_elbo`` = ``val/nll + val/kl``).
    result : dict
        What :func:`facrnn.runs.pipeline.train` returned (``metrics``, ``callback_metrics``).

    Returns
    -------
    float, or None when ``metric`` is None.
    """
    if metric is None:
        return None
    available = with_derived_metrics({**(result.get("callback_metrics") or {}), **(result.get("metrics") or {})})
    if metric not in available:
        raise KeyError(f"optimized_metric={metric}: not among this run's metrics; expected one of {sorted(available)}")
    value = float(available[metric])
    if not math.isfinite(value):
        raise ValueError(f"optimized_metric={metric}: the run ended with {value}; expected a finite value")
    return value


def in_multirun() -> bool:
    """Whether this process runs a job of a Hydra multirun."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def run_job_isolated(task: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Run ``task(cfg)``; inside a multirun a raised error is recorded and None returned.

    Outside a multirun the error propagates unchanged.
    """
    job_dir = Path(cfg.paths.output_dir)
    RunDir(job_dir).failure_file.unlink(missing_ok=True)  # a requeued job that now succeeds
    if not in_multirun():
        return task(cfg)
    try:
        return task(cfg)
    except TrainingInterrupted as interrupted:
        if interrupted.interruption is None or interrupted.interruption.requeue is None:
            raise  # SIGTERM / Ctrl-C: the whole multirun stops
        return requeue(interrupted, job_dir)
    except Exception as error:  # noqa: BLE001 - one bad job must not sink the sweep
        record_failure(job_dir, error)
        return None


class RequeueRefusedError(FacRNNError):
    """The launcher would not requeue a task stopped by SIGUSR2 (e.g. out of time-outs)."""


def requeue(interrupted: TrainingInterrupted, job_dir: Path) -> None:
    """Hand a SIGUSR2 stop (checkpoint saved, W&B closed) to the launcher's requeue handler.

    submitit's handler requeues the task (``scontrol requeue``) and exits; the requeued task
    resumes from ``last.ckpt`` (``resume=true``). When it refuses (``timed-out too many
    times``) the job is recorded as failed with a message naming the limit and the checkpoint.
    Under DDP the handler returns on ranks other than 0, which then exit quietly.

    Raises
    ------
    SystemExit
        Always, except when the requeue was refused (then None is returned, as for a failed job).
    """
    interruption = interrupted.interruption
    assert interruption is not None and interruption.requeue is not None
    log.warning("requeueing this task: stopped by %s after epoch %d", interruption.signal_name, interruption.epoch)
    try:
        interruption.requeue()
    except Exception as error:  # noqa: BLE001 - submitit raises UncompletedJobError from its handler
        launcher = OmegaConf.select(HydraConfig.get(), "launcher") or {}
        limits = ", ".join(
            f"hydra.launcher.{key}={launcher[key]}" for key in ("max_num_timeout", "timeout_min") if key in launcher
        )
        record_failure(
            job_dir,
            RequeueRefusedError(
                f"{error} ({limits or 'launcher settings unknown'}); the task stopped after epoch "
                f"{interruption.epoch} with {interruption.checkpoint} saved; expected more requeues "
                f"(raise hydra.launcher.max_num_timeout or timeout_min) or continue with: python train.py "
                f"hydra.run.dir={job_dir} ckpt_path=last"
            ),
            with_traceback=False,
        )
        return None
    raise SystemExit(interrupted.code)  # not rank 0: the requeue is rank 0's


def record_failure(job_dir: Path, error: BaseException, with_traceback: bool = True) -> dict[str, Any]:
    """Log a failed job with its overrides and error, finish its W&B run, write ``failure.yaml``.

    ``with_traceback=False`` for failures the message explains (a refused requeue).
    """
    hydra_cfg = HydraConfig.get()
    record = {
        "job": int(hydra_cfg.job.num),
        "overrides": list(hydra_cfg.overrides.task),
        "dir": str(job_dir),
        "error": f"{type(error).__name__}: {error}",
        "traceback": "".join(traceback.format_exception(type(error), error, error.__traceback__)) if with_traceback else "",
    }
    details = f"\n{record['traceback']}" if with_traceback else ""
    log.error("job %d (%s) failed: %s%s", record["job"], " ".join(record["overrides"]), record["error"], details)
    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            finish_wandb_run(exit_code=1)
    job_dir.mkdir(parents=True, exist_ok=True)
    RunDir(job_dir).failure_file.write_text(yaml.safe_dump(record, sort_keys=False))
    return record


def collect_failures(sweep_dir: Path) -> tuple[int, list[dict[str, Any]]]:
    """Number of job directories under ``sweep_dir`` and the failure records among them."""
    patterns = (f"*/{RunDir.HYDRA}", f"*/{RunDir.CONFIG}", f"*/{RunDir.FAILURE}")
    job_dirs = {path.parent for pattern in patterns for path in sweep_dir.glob(pattern)}
    failures = [yaml.safe_load(path.read_text()) for path in sorted(sweep_dir.glob(f"*/{RunDir.FAILURE}"))]
    return len(job_dirs), sorted(failures, key=lambda record: record["job"])


class FailureSummary(Callback):
    """Hydra callback: at the end of a multirun, write ``failures.yaml`` and fail if any job failed."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(OmegaConf.select(config, "hydra.sweep.dir"))
        n_jobs, failures = collect_failures(sweep_dir)
        if not failures:
            return
        summary = {
            "n_jobs": n_jobs,
            "n_failed": len(failures),
            "failed": [{key: record[key] for key in ("job", "overrides", "dir", "error")} for record in failures],
        }
        (sweep_dir / FAILURES_SUMMARY).write_text(yaml.safe_dump(summary, sort_keys=False))
        listing = "; ".join(f"job {record['job']} ({' '.join(record['overrides'])}): {record['error']}" for record in failures)
        message = (
            f"{sweep_dir / FAILURES_SUMMARY}: {len(failures)} of {n_jobs} jobs failed: {listing}; "
            "expected every job to succeed"
        )
        log.error(message)
        raise SweepFailedError(message)


class SqliteStorageDir(Callback):
    """Hydra callback: create the folder of an ``sqlite:///PATH`` Optuna storage before the study opens."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        storage = OmegaConf.select(config, "hydra.sweeper.storage")
        if storage and str(storage).startswith("sqlite:///"):
            Path(str(storage)[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)


__all__ = [
    "FailureSummary",
    "RequeueRefusedError",
    "SqliteStorageDir",
    "SweepFailedError",
    "collect_failures",
    "objective_value",
    "requeue",
    "run_job_isolated",
]
