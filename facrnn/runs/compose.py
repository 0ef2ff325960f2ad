"""A run's config composed in-process, as ``@hydra.main`` composes it for ``python train.py``.

For code that runs the pipeline without the command line (the tests, the benchmarks): the
config of ``conf/NAME.yaml`` with the given overrides, the run directory set, and Hydra's
runtime config installed so that :func:`facrnn.runs.pipeline.train` finds it.

The configs are the checkout's ``conf/`` in a clone (and an editable install of one); a wheel
(``pip install .``) carries the same files as ``facrnn/_conf`` (:data:`CONFIG_DIR`, docs/python.md).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from facrnn.errors import ConfigError
from facrnn.training.settings import register_schemas

#: the checkout the package is installed from (editable): train.py, evaluate.py, conf/
ROOT = Path(__file__).resolve().parents[2]
#: where a wheel (``pip install .``) keeps conf/: ``facrnn/_conf`` (pyproject.toml ``[tool.setuptools]``)
PACKAGED_CONFIG_DIR = Path(__file__).resolve().parents[1] / "_conf"


def find_config_dir() -> Path:
    """The Hydra config directory: the installed wheel's ``facrnn/_conf`` when there is one,
    else the checkout's ``conf/`` (a clone, or an editable install of one)."""
    if (PACKAGED_CONFIG_DIR / "train.yaml").is_file():
        return PACKAGED_CONFIG_DIR
    return ROOT / "conf"


#: the config directory train.py and evaluate.py read (:func:`find_config_dir`)
CONFIG_DIR = find_config_dir()

__all__ = ["CONFIG_DIR", "PACKAGED_CONFIG_DIR", "ROOT", "compose_train_config", "find_config_dir"]


def compose_train_config(
    overrides: Sequence[str],
    output_dir: str | os.PathLike,
    config_name: str = "train",
    root_dir: str | os.PathLike | None = None,
) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` with ``overrides`` as ``@hydra.main`` would.

    Parameters
    ----------
    overrides
        Hydra command-line overrides (``key=value``, ``group=option``, ``+key=value``).
    output_dir
        The run directory: ``paths.output_dir`` and ``hydra.runtime.output_dir``.
    config_name
        Primary config in :data:`CONFIG_DIR` (``train`` or ``evaluate``).
    root_dir
        ``paths.root_dir`` (data cache, logs); None keeps the config's value.

    Returns
    -------
    DictConfig
        The composed config, including its ``hydra`` node (job number 0), which is also
        installed as the current :class:`~hydra.core.hydra_config.HydraConfig`.
    """
    if not (CONFIG_DIR / f"{config_name}.yaml").is_file():
        raise ConfigError(
            f"config_name={config_name}: no {config_name}.yaml in {CONFIG_DIR}; expected a FacRNN checkout "
            "(conf/) or an installed wheel (facrnn/_conf)"
        )
    GlobalHydra.instance().clear()
    register_schemas()  # the schemas conf/model, conf/datamodule and conf/trainer take (`/schema/...`)
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        if root_dir is not None:
            cfg.paths.root_dir = str(root_dir)
        cfg.paths.output_dir = str(output_dir)
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
    HydraConfig().set_config(cfg)
    return cfg
