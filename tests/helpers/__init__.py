"""Helpers shared by the tests (and nothing else): composed Hydra configs on tiny data, the
entry points run as a user runs them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from omegaconf import DictConfig

from facrnn.runs.compose import CONFIG_DIR, ROOT, compose_train_config

__all__ = ["CONFIG_DIR", "MODELS_UNDER_TEST", "ROOT", "TINY_DATA", "compose_config", "run_script"]

# Small synthetic data: the paper recipe with a short teacher fit and fewer steps.
TINY_DATA = [
    "datamodule.n_steps=400",
    "datamodule.teacher_steps=300",
    "datamodule.batch_size=64",
]

MODELS_UNDER_TEST = ["facrnn", "lrrnn", "bdrnn", "facrnn_full"]


def compose_config(name: str, overrides: list[str], tmp_path: Path, run_name: str = "run") -> DictConfig:
    """Compose ``conf/NAME.yaml`` like ``@hydra.main`` would, with ``paths.root_dir`` ``tmp_path``
    and the run in ``tmp_path/run_name`` (:func:`facrnn.runs.compose.compose_train_config`)."""
    return compose_train_config(overrides, tmp_path / run_name, config_name=name, root_dir=tmp_path)


def run_script(script: str, args: list[str], root: Path) -> subprocess.CompletedProcess:
    """Run ``ROOT/script`` (train.py, evaluate.py) in ``root`` as a user would, W&B offline."""
    env = {**os.environ, "FACRNN_ROOT": str(root), "WANDB_MODE": "offline"}
    return subprocess.run(
        [sys.executable, str(ROOT / script), *args], cwd=root, env=env, capture_output=True, text=True, timeout=300
    )
