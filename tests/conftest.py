"""Shared fixtures (helpers live in tests/helpers)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig

from tests.helpers import TINY_DATA, compose_config


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture
def tiny_train_cfg(tmp_path: Path):
    """Factory: a train config on tiny synthetic data with no W&B, extra overrides appended."""

    def make(*overrides: str, run_name: str = "run") -> DictConfig:
        base = TINY_DATA + ["logger=csv", "threads=1"]
        return compose_config("train", base + list(overrides), tmp_path, run_name)

    return make
