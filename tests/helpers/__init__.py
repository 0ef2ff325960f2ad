"""Helpers shared by the tests (and nothing else): composed Hydra configs on tiny data, the
entry points run as a user runs them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = str(ROOT / "conf")

# Small synthetic data: the paper recipe with a short teacher fit and fewer steps.
TINY_DATA = [
    "datamodule.n_steps=400",
    "datamodule.teacher_steps=300",
    "datamodule.batch_size=64",
]

MODELS_UNDER_TEST = ["facrnn", "lrrnn", "bdrnn", "facrnn_full"]


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


def run_script(script: str, args: list[str], root: Path) -> subprocess.CompletedProcess:
    """Run ``ROOT/script`` (train.py, evaluate.py) in ``root`` as a user would, W&B offline."""
    env = {**os.environ, "FACRNN_ROOT": str(root), "WANDB_MODE": "offline"}
    return subprocess.run(
        [sys.executable, str(ROOT / script), *args], cwd=root, env=env, capture_output=True, text=True, timeout=300
    )
