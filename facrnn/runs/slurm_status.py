"""Task states of a SLURM sweep where ``sacct`` cannot answer (no accounting storage).

submitit asks ``sacct`` for the state of every task it waits for. On a cluster without
accounting every poll fails, sacct prints ``Slurm accounting storage is disabled`` and submitit
a warning (two lines per poll, the whole sweep long), and, knowing no state, it waits forever
for a task that died without writing its result (killed, out of memory). The
:class:`SlurmStatusWatcher` asks ``sacct`` once; when that fails it logs one line and reads
the states from ``squeue`` (which lists pending, running and recently ended jobs; a task no
longer listed has ended). :class:`SqueueWhenNoAccounting`, a Hydra callback added by
``conf/launcher/slurm.yaml``, installs it in the launching process.
"""

from __future__ import annotations

import logging
import subprocess
import time
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)

#: what a task not listed by ``squeue`` any more is taken to be: ended (its result file decides how)
ENDED = "COMPLETED"


def parse_squeue(output: str) -> dict[str, str]:
    """``{job id: state}`` from ``squeue -h -r -t all -o '%i|%T'`` (array tasks as ``JOB_TASK``)."""
    states = {}
    for line in output.splitlines():
        job_id, separator, state = line.partition("|")
        if separator and job_id.strip():
            states[job_id.strip()] = state.strip()
    return states


def squeue_states(job_ids: set[str], timeout_s: float = 60) -> dict[str, str] | None:
    """The state of every id of ``job_ids`` (``ENDED`` when squeue no longer lists it), None when squeue fails."""
    jobs = sorted({job_id.split("_")[0] for job_id in job_ids})
    command = ["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T", "-j", ",".join(jobs)]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        log.debug("squeue failed: %s", error)
        return None
    if result.returncode != 0 and "Invalid job id" not in result.stderr:  # every job purged: all ended
        log.debug("squeue failed (status %d): %s", result.returncode, result.stderr.strip())
        return None
    listed = parse_squeue(result.stdout if result.returncode == 0 else "")
    return {job_id: listed.get(job_id, ENDED) for job_id in job_ids}


def sacct_error(timeout_s: float = 60) -> str | None:
    """Why ``sacct`` cannot report job states here (its first error line), or None when it works."""
    try:
        result = subprocess.run(
            ["sacct", "-n", "-X", "-o", "JobID", "-S", "now"], capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return str(error)
    if result.returncode == 0:
        return None
    lines = (result.stderr or result.stdout).strip().splitlines()
    return lines[0] if lines else f"exit status {result.returncode}"


def _watcher_class() -> type:
    from submitit.slurm.slurm import SlurmInfoWatcher

    class SlurmStatusWatcher(SlurmInfoWatcher):
        """submitit's watcher, reading states from ``squeue`` once ``sacct`` has failed."""

        def __init__(self, delay_s: int = 60) -> None:
            super().__init__(delay_s=delay_s)
            self.source: str | None = None  # "sacct" or "squeue", decided at the first update

        def update(self) -> None:
            if self.source is None:
                reason = sacct_error()
                self.source = "sacct" if reason is None else "squeue"
                if reason is not None:
                    log.warning("sacct unavailable (%s): task states from squeue", reason)
            if self.source == "sacct":
                super().update()
                return
            to_check = self._registered - self._finished
            if not to_check:
                return
            self._num_calls += 1
            states = squeue_states(to_check)
            self._last_status_check = time.time()
            if states is None:
                return
            self._info_dict.update({job_id: {"JobID": job_id, "State": state} for job_id, state in states.items()})
            for job_id in to_check:
                if self.is_done(job_id, mode="cache"):
                    self._finished.add(job_id)

    return SlurmStatusWatcher


def slurm_status_watcher(delay_s: int = 600) -> Any:
    """A new :class:`SlurmStatusWatcher` (submitit's ``SlurmJob`` polls with ``delay_s=600``)."""
    return _watcher_class()(delay_s=delay_s)


class SqueueWhenNoAccounting(Callback):
    """Hydra callback: the SLURM jobs of this multirun report their states through
    :func:`slurm_status_watcher` (sacct when it works, else squeue, one log line)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            from submitit.slurm.slurm import SlurmJob
        except ImportError:  # no submitit: no SLURM launcher either
            return
        SlurmJob.watcher = slurm_status_watcher()


__all__ = ["SqueueWhenNoAccounting", "parse_squeue", "sacct_error", "slurm_status_watcher", "squeue_states"]
