"""FacRNN: factored low-rank RNNs fitted as VAEs with a partial correlation penalty.

``facrnn.load_run(RUN)`` opens a trained run directory (docs/python.md). This module stays
light, every layer imports it: :func:`~facrnn.runs.api.load_run` and
:class:`~facrnn.runs.api.LoadedRun` are imported on first access.
"""

import os
from typing import Any

from omegaconf import OmegaConf

__version__ = "0.1.0"

# `${facrnn.cwd:}` is the launch directory. Unlike `${hydra:runtime.cwd}` it also resolves
# when Hydra creates a multirun's sweep directory, before any job's runtime exists.
OmegaConf.register_new_resolver("facrnn.cwd", os.getcwd, replace=True)


def _job_dir_name() -> str:
    """``${facrnn.job_dir_name:}``: the name of this job's output directory (unique per run and per
    sweep job), ``run`` outside Hydra."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return "run"
    return os.path.basename(os.path.normpath(str(HydraConfig.get().runtime.output_dir))) or "run"


def _sweep_name() -> str:
    """``${facrnn.sweep_name:}``: the sweep directory's name in a multirun (one W&B group per
    sweep), ``single-runs`` otherwise."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return "single-runs"
    return os.path.basename(os.path.normpath(str(HydraConfig.get().sweep.dir)))


OmegaConf.register_new_resolver("facrnn.job_dir_name", _job_dir_name, replace=True)
OmegaConf.register_new_resolver("facrnn.sweep_name", _sweep_name, replace=True)

#: names served by :func:`__getattr__` from facrnn.runs.api (torch, Lightning: imported on use)
_LAZY = ("LoadedRun", "load_run")

__all__ = ["LoadedRun", "__version__", "load_run"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from facrnn.runs import api

        return getattr(api, name)
    raise AttributeError(f"module 'facrnn' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
