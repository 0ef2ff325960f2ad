"""Shared fixtures: composed Hydra configs on tiny data, in temporary directories."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = str(ROOT / "conf")

# Small synthetic data: the paper recipe with a short teacher fit and fewer steps.
TINY_DATA = [
    "datamodule.n_steps=400",
    "datamodule.teacher_steps=300",
    "datamodule.batch_size=64",
]


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def compose_config(name: str, overrides: list[str], tmp_path: Path, run_name: str = "run") -> DictConfig:
    """Compose ``conf/NAME.yaml`` like ``@hydra.main`` would, with the run in ``tmp_path/run_name``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name=name, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.root_dir = str(tmp_path)
        cfg.paths.output_dir = str(tmp_path / run_name)
        cfg.hydra.runtime.output_dir = str(tmp_path / run_name)
        cfg.hydra.job.num = 0
    HydraConfig().set_config(cfg)
    return cfg


@pytest.fixture
def tiny_train_cfg(tmp_path: Path):
    """Factory: a train config on tiny synthetic data with no W&B, extra overrides appended."""

    def make(*overrides: str, run_name: str = "run") -> DictConfig:
        base = TINY_DATA + ["logger=csv", "threads=1"]
        return compose_config("train", base + list(overrides), tmp_path, run_name)

    return make


MODELS_UNDER_TEST = ["facrnn", "lrrnn", "bdrnn", "facrnn_full"]
