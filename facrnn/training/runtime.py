"""Process-level settings that make training fast on CPUs: torch threads and the C allocator;
and the check that the configured accelerator exists on this machine.

- Threads: a plain run's tensors are tiny, so one intra-op thread is fastest; batched model
  copies (``model.replicas``/``model.restarts``) have tensors ten times larger that do gain
  from every core (benchmarks/README.md). ``threads: null`` picks between the two.
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
import os
from collections.abc import Mapping
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


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def training_threads(configured: int | None, n_copies: int) -> int:
    """Intra-op threads: ``configured``, or (None) 1 for one model and all cores for batched copies."""
    if configured is not None:
        return int(configured)
    return 1 if n_copies == 1 else available_cores()


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


__all__ = ["CUDA_ACCELERATORS", "available_cores", "check_accelerator", "keep_freed_buffers", "training_threads"]
