"""Process-level settings that make training fast on CPUs: torch threads and the C allocator;
and the check that the configured accelerator exists on this machine.

- Threads: a plain run's tensors are tiny, so one intra-op thread is fastest; batched model
  copies (``model.replicas``/``model.restarts``) have tensors ten times larger that do gain
  from more cores (benchmarks/README.md), but only from cores nobody else is using: torch's
  threads spin-wait for each other, so two threads beside one busy process on two cores ran a
  4-start run 15x slower than one thread. ``threads: null`` therefore gives batched copies
  the cores that are free (:func:`choose_threads`): the affinity mask, capped by the
  scheduler's allocation (SLURM, a cgroup CPU quota), ``LOKY_MAX_CPU_COUNT``, the jobs a
  joblib launcher runs at once, ``OMP_NUM_THREADS``, and the cores found idle over a short
  sample of ``/proc/stat``.
- Allocator: every training step allocates a few buffers of about a megabyte (the
  ``(copies, groups, batch, batch)`` kernels of the partial correlation term). glibc serves
  such sizes with ``mmap`` and returns them on ``free``, so each step pays page faults for
  fresh zeroed pages, about as much time as the arithmetic. Raising glibc's mmap and trim
  thresholds keeps the freed buffers in the heap for reuse; peak memory is unchanged.
- Cluster: :func:`cluster_environment` (``trainer.plugins``) is the environment Lightning
  would detect, with SLURM's auto-requeue off: submitit's SIGUSR2 handler and
  :class:`facrnn.training.faults.InterruptCheckpoint` requeue and save, one mechanism, not two.
- Accelerator: :func:`check_accelerator` refuses ``trainer=gpu`` (or ``ddp``, ``mps``) where
  torch sees no such device, before any data are loaded, instead of Lightning's error after.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import math
import os
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from facrnn.errors import ConfigError

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # glibc mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 64 * 1024 * 1024
TRIM_THRESHOLD_BYTES = 256 * 1024 * 1024
_allocator_tuned = False
#: Lightning's names of the CUDA accelerator (``trainer.accelerator``)
CUDA_ACCELERATORS = ("gpu", "cuda")


def affinity_cpus() -> set[int]:
    """The CPUs this process may run on (all of them where there is no affinity mask)."""
    try:
        return set(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return set(range(os.cpu_count() or 1))


def available_cores() -> int:
    """CPU cores this process may run on."""
    return len(affinity_cpus())


#: seconds over which /proc/stat is sampled for idle cores (only for batched copies with threads: null)
IDLE_SAMPLE_S = 0.25
#: a core counts as free when at least ``1 - FREE_CORE_MARGIN`` of it was idle over the sample
FREE_CORE_MARGIN = 0.2
PROC_STAT = Path("/proc/stat")
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2
CGROUP_V1_QUOTA = (Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"), Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us"))


@dataclass(frozen=True)
class ThreadBudget:
    """What limits the torch threads of one training process (every field but ``cores`` optional).

    Attributes
    ----------
    cores : int
        CPUs in this process's affinity mask (``os.sched_getaffinity``).
    idle_cores : float, optional
        Cores of the mask found idle over a short sample (``/proc/stat``), e.g. 1.02 on two cores
        beside one busy process; None when not measured.
    slurm_cpus : int, optional
        CPUs SLURM allocates to this task (``SLURM_CPUS_PER_TASK``, else ``SLURM_CPUS_ON_NODE`` /
        ``SLURM_NTASKS_PER_NODE``).
    cgroup_cpus : float, optional
        A cgroup CPU quota in cores (``cpu.max``: 150000 100000 is 1.5).
    loky_max_cpus : int, optional
        ``LOKY_MAX_CPU_COUNT``: the CPUs joblib/loky may use.
    omp_threads : int, optional
        ``OMP_NUM_THREADS`` (the first level of a nested list such as ``4,2``); joblib's loky
        workers get ``cores // n_jobs`` unless the user set it.
    concurrent_jobs : int
        Training processes sharing these cores at once (a joblib launcher's ``n_jobs``).
    """

    cores: int
    idle_cores: float | None = None
    slurm_cpus: int | None = None
    cgroup_cpus: float | None = None
    loky_max_cpus: int | None = None
    omp_threads: int | None = None
    concurrent_jobs: int = 1


@dataclass(frozen=True)
class ThreadChoice:
    """The torch intra-op threads of a run and why (the INFO line of :func:`training_threads`)."""

    threads: int
    reason: str


def choose_threads(configured: int | None, n_copies: int, budget: ThreadBudget) -> ThreadChoice:
    """Torch intra-op threads that never oversubscribe the cores this process may use.

    ``configured`` (the ``threads`` key) wins when set. Otherwise one model gets one thread (its
    tensors are too small to split) and batched copies get the smallest of: the affinity mask,
    SLURM's allocation, a cgroup quota, ``LOKY_MAX_CPU_COUNT``, those divided by the jobs running
    at once, ``OMP_NUM_THREADS``, and the cores idle right now; at least one.

    Parameters
    ----------
    configured : int, optional
        ``threads`` from the config; None chooses.
    n_copies : int
        Model copies trained together (``model.replicas`` x ``model.restarts``).
    budget : ThreadBudget
        The limits read from this machine (:func:`read_thread_budget`).

    Returns
    -------
    ThreadChoice
        ``threads`` and a sentence saying which limit decided, e.g. ``4 batched copies; 2 cores
        in the affinity mask, 1.0 of them idle over the sample (another process is busy)``.
    """
    if configured is not None:
        return ThreadChoice(int(configured), f"threads={int(configured)} configured")
    if n_copies <= 1:
        return ThreadChoice(1, "one model: its tensors are too small to split (threads=N overrides)")
    limits: list[tuple[int, str]] = [(max(budget.cores, 1), f"{budget.cores} cores in the affinity mask")]
    if budget.slurm_cpus is not None:
        limits.append((budget.slurm_cpus, f"SLURM allocates {budget.slurm_cpus} CPUs to the task"))
    if budget.cgroup_cpus is not None:
        limits.append((max(math.floor(budget.cgroup_cpus), 1), f"a cgroup CPU quota of {budget.cgroup_cpus:g}"))
    if budget.loky_max_cpus is not None:
        limits.append((budget.loky_max_cpus, f"LOKY_MAX_CPU_COUNT={budget.loky_max_cpus}"))
    if budget.concurrent_jobs > 1:
        share = max(min(limit for limit, _ in limits) // budget.concurrent_jobs, 1)
        limits.append((share, f"{budget.concurrent_jobs} jobs at once share them"))
    if budget.omp_threads is not None:
        limits.append((budget.omp_threads, f"OMP_NUM_THREADS={budget.omp_threads}"))
    if budget.idle_cores is not None:
        free = max(math.floor(budget.idle_cores + FREE_CORE_MARGIN), 0)
        busy = " (other processes are busy)" if free < min(limit for limit, _ in limits) else ""
        limits.append((free, f"{budget.idle_cores:.1f} of them idle over the sample{busy}"))
    threads = max(min(limit for limit, _ in limits), 1)
    deciding = [why for limit, why in limits if limit <= threads]
    others = [why for limit, why in limits if limit > threads][:1]
    return ThreadChoice(threads, f"{n_copies} batched copies; " + ", ".join(others + deciding))


def _positive_int(value: str | None) -> int | None:
    """``value`` as a positive integer (the first of a comma-separated list), None when unset or not one."""
    if value is None:
        return None
    try:
        number = int(str(value).split(",")[0].strip())
    except ValueError:
        return None
    return number if number > 0 else None


def slurm_task_cpus(environ: Mapping[str, str]) -> int | None:
    """CPUs SLURM allocated to this task: ``SLURM_CPUS_PER_TASK``, else ``SLURM_CPUS_ON_NODE``
    divided among ``SLURM_NTASKS_PER_NODE`` tasks; None outside a SLURM job."""
    per_task = _positive_int(environ.get("SLURM_CPUS_PER_TASK"))
    if per_task is not None:
        return per_task
    on_node = _positive_int(environ.get("SLURM_CPUS_ON_NODE"))
    if on_node is None:
        return None
    return max(on_node // (_positive_int(environ.get("SLURM_NTASKS_PER_NODE")) or 1), 1)


def cgroup_cpu_quota(cpu_max: Path = CGROUP_CPU_MAX, v1: tuple[Path, Path] = CGROUP_V1_QUOTA) -> float | None:
    """The CPU quota of this process's cgroup in cores (``cpu.max`` or v1's ``cfs_quota_us``); None if unlimited."""
    try:
        quota, period = cpu_max.read_text().split()[:2]
    except (OSError, ValueError):
        try:
            quota, period = (path.read_text().strip() for path in v1)
        except (OSError, ValueError):
            return None
    try:
        cores = int(quota) / int(period)
    except (ValueError, ZeroDivisionError):  # "max": no quota
        return None
    return cores if cores > 0 else None


def cpu_times(stat_text: str, cpus: Collection[int]) -> tuple[float, float]:
    """(idle, total) jiffies of the CPUs ``cpus``, summed over the ``cpuN`` lines of a ``/proc/stat`` text.

    Idle counts ``idle`` and ``iowait``; total the first eight fields (user to steal: time a
    hypervisor steals is not idle). A CPU without a line is left out.
    """
    idle = total = 0.0
    for line in stat_text.splitlines():
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or not name[3:].isdigit() or int(name[3:]) not in cpus:
            continue
        fields = [float(field) for field in rest.split()[:8]]
        idle += fields[3] + (fields[4] if len(fields) > 4 else 0.0)
        total += sum(fields)
    return idle, total


def idle_cores(cpus: Collection[int], sample_s: float = IDLE_SAMPLE_S, stat: Path = PROC_STAT) -> float | None:
    """Cores of ``cpus`` that were idle while this process slept ``sample_s`` seconds (``/proc/stat``).

    None where ``/proc/stat`` is unreadable (not Linux) or did not advance.
    """
    try:
        idle_before, total_before = cpu_times(stat.read_text(), cpus)
        time.sleep(sample_s)
        idle_after, total_after = cpu_times(stat.read_text(), cpus)
    except (OSError, ValueError, IndexError):
        return None
    elapsed = total_after - total_before
    if elapsed <= 0:
        return None
    return len(cpus) * (idle_after - idle_before) / elapsed


def concurrent_hydra_jobs(cores: int) -> int:
    """Jobs a Hydra multirun with the joblib launcher runs at once (its ``n_jobs``; -1 = every
    core); 1 for any other launcher or outside Hydra."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
            return 1
        launcher = HydraConfig.get().launcher
        if "joblib" not in str(launcher.get("_target_", "")).lower():
            return 1
        n_jobs = int(launcher.get("n_jobs") or 1)
    except (ImportError, ValueError, TypeError, AttributeError):
        return 1
    return max(n_jobs if n_jobs > 0 else cores + 1 + n_jobs, 1)  # joblib: -1 all cores, -2 all but one


def read_thread_budget(environ: Mapping[str, str] | None = None, sample_s: float | None = IDLE_SAMPLE_S) -> ThreadBudget:
    """The limits :func:`choose_threads` weighs, read from this process and machine.

    Parameters
    ----------
    environ : mapping, optional
        The environment (``os.environ``).
    sample_s : float, optional
        Seconds to sample ``/proc/stat`` for idle cores; None skips the sample.
    """
    environ = os.environ if environ is None else environ
    cpus = affinity_cpus()
    return ThreadBudget(
        cores=len(cpus),
        idle_cores=None if sample_s is None else idle_cores(cpus, sample_s),
        slurm_cpus=slurm_task_cpus(environ),
        cgroup_cpus=cgroup_cpu_quota(),
        loky_max_cpus=_positive_int(environ.get("LOKY_MAX_CPU_COUNT")),
        omp_threads=_positive_int(environ.get("OMP_NUM_THREADS")),
        concurrent_jobs=concurrent_hydra_jobs(len(cpus)),
    )


def training_threads(configured: int | None, n_copies: int) -> int:
    """Intra-op threads for a run (:func:`choose_threads` on this machine's :func:`read_thread_budget`),
    logged as one INFO line with the reason. The idle sample (0.25 s) is taken only for
    batched copies with ``threads: null``."""
    if configured is not None or n_copies <= 1:
        choice = choose_threads(configured, n_copies, ThreadBudget(cores=available_cores()))
    else:
        choice = choose_threads(None, n_copies, read_thread_budget())
    log.info("torch threads: %d (%s)", choice.threads, choice.reason)
    return choice.threads


def keep_freed_buffers() -> bool:
    """Raise glibc's mmap and trim thresholds (see the module docstring); once per process.

    Returns whether the allocator was tuned (False where the C library is not glibc).
    """
    global _allocator_tuned
    if _allocator_tuned:
        return True
    path = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(path or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        log.debug("no glibc mallopt: allocator left as it is")
        return False
    _allocator_tuned = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )
    return _allocator_tuned


def cluster_environment() -> Any:
    """The cluster environment Lightning would choose here, with SLURM auto-requeue disabled.

    Lightning's own choice (TorchElastic, then SLURM, LSF, MPI, else a plain local
    environment) is kept; only its ``SLURMEnvironment`` comes with ``auto_requeue=False``,
    so Lightning installs no SIGUSR1 requeue handler beside submitit's.
    """
    from lightning_fabric.plugins.environments import (
        LightningEnvironment,
        LSFEnvironment,
        MPIEnvironment,
        SLURMEnvironment,
        TorchElasticEnvironment,
    )

    for environment in (TorchElasticEnvironment, SLURMEnvironment, LSFEnvironment, MPIEnvironment):
        if environment.detect():
            return SLURMEnvironment(auto_requeue=False) if environment is SLURMEnvironment else environment()
    return LightningEnvironment()


def _setting(trainer_cfg: Mapping[str, Any] | Any, key: str) -> Any:
    """``trainer_cfg[key]`` of a DictConfig or dict, or its attribute ``key``; None when absent."""
    get = getattr(trainer_cfg, "get", None)
    return get(key) if callable(get) else getattr(trainer_cfg, key, None)


def check_accelerator(trainer_cfg: Mapping[str, Any] | Any) -> None:
    """Refuse an accelerator that torch cannot use on this machine, before any data are loaded.

    ``trainer.accelerator`` ``gpu`` or ``cuda`` needs ``torch.cuda.is_available()`` (and, with an
    integer ``trainer.devices``, that many GPUs); ``mps`` needs ``torch.backends.mps.is_available()``.
    ``cpu``, ``auto`` and anything else are left to Lightning.

    Parameters
    ----------
    trainer_cfg : DictConfig or mapping
        The ``trainer`` node of the composed config (``accelerator``, ``devices``).

    Raises
    ------
    ConfigError
        ``trainer.accelerator=gpu: torch 2.13.0+cpu was built without CUDA; expected trainer=cpu on
        this machine, or install a CUDA build of torch`` (or: no GPU visible, fewer GPUs than
        ``trainer.devices``, no MPS device).
    """
    accelerator = _setting(trainer_cfg, "accelerator")
    if not isinstance(accelerator, str):
        return
    name = accelerator.lower()
    if name not in (*CUDA_ACCELERATORS, "mps"):
        return
    import torch

    key = f"trainer.accelerator={accelerator}"
    if name == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ConfigError(
                f"{key}: no MPS device (Apple silicon GPU) visible to torch {torch.__version__}; "
                "expected trainer=cpu on this machine"
            )
        return
    if not torch.cuda.is_available():
        if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
            reason, remedy = f"torch {torch.__version__} was built without CUDA", "or install a CUDA build of torch"
        else:
            built = f"CUDA {torch.version.cuda}" if torch.version.cuda else f"ROCm {torch.version.hip}"
            reason = f"no GPU visible to torch {torch.__version__} ({built})"
            remedy = "or make a GPU visible (nvidia-smi, CUDA_VISIBLE_DEVICES)"
        raise ConfigError(f"{key}: {reason}; expected trainer=cpu on this machine, {remedy}")
    devices = _setting(trainer_cfg, "devices")
    if isinstance(devices, int) and not isinstance(devices, bool) and devices > torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise ConfigError(
            f"trainer.devices={devices} with {key}: torch sees {count} GPU{'' if count == 1 else 's'}; "
            f"expected trainer.devices<={count} (or trainer.devices=-1: all of them)"
        )


__all__ = [
    "CUDA_ACCELERATORS",
    "ThreadBudget",
    "ThreadChoice",
    "available_cores",
    "check_accelerator",
    "choose_threads",
    "keep_freed_buffers",
    "read_thread_budget",
    "training_threads",
]
