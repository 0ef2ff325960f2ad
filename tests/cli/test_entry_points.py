"""The console scripts of pyproject.toml's [project.scripts] are installed and run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from importlib.metadata import distribution
from pathlib import Path

import pytest

SCRIPTS = {
    "facrnn-compare": "facrnn.cli.compare:main",
    "facrnn-group-selection": "facrnn.cli.group_selection:main",
    "facrnn-convert": "datamodules.convert:main",
}


def test_installed_scripts_are_the_declared_ones() -> None:
    installed = {point.name: point.value for point in distribution("facrnn").entry_points if point.group == "console_scripts"}
    assert installed == SCRIPTS, "re-run `pip install -e .` after changing [project.scripts] (make venv does)"


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_script_loads(name: str) -> None:
    (point,) = [point for point in distribution("facrnn").entry_points if point.name == name]
    assert callable(point.load())


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_script_help_runs(name: str) -> None:
    executable = shutil.which(name, path=str(Path(sys.executable).parent))  # this environment's own script
    assert executable is not None, f"{name} is not installed next to {sys.executable}"
    env = {**os.environ, "WANDB_MODE": "offline"}
    result = subprocess.run([executable, "--help"], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage:")
