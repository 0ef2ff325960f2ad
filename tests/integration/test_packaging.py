"""``pip wheel .`` ships what an installed FacRNN needs: every package, the Hydra configs (conf/
as ``facrnn/_conf``), the bundled M1 session (``datamodules/_data``) and the console scripts;
installed from the wheel, the package finds its configs and the session without a clone."""

from __future__ import annotations

import configparser
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.helpers import ROOT

#: [project.scripts] of pyproject.toml
CONSOLE_SCRIPTS = {
    "facrnn-compare": "facrnn.cli.compare:main",
    "facrnn-group-selection": "facrnn.cli.group_selection:main",
    "facrnn-convert": "datamodules.convert:main",
}
BUNDLED_SESSION = "m1_center_out.npz"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from a copy of the sources (an in-tree build leaves build/ and *.egg-info behind)."""
    tmp_path = tmp_path_factory.mktemp("packaging")
    source = tmp_path / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("facrnn", "datamodules", "conf"):
        shutil.copytree(ROOT / name, source / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    (source / "data" / "cache").mkdir(parents=True)
    shutil.copy2(ROOT / "data" / BUNDLED_SESSION, source / "data" / BUNDLED_SESSION)
    (source / "data" / "cache" / "synthetic.npz").write_bytes(b"generated, not shipped")
    dist = tmp_path / "dist"
    command = [sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "-w", str(dist)]
    result = subprocess.run(command, cwd=source, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "importable" not in result.stderr  # setuptools' warning about data folders that look like packages
    (built,) = dist.glob("facrnn-*.whl")
    return built


def wheel_names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


def test_wheel_ships_every_module_config_and_the_bundled_session(wheel: Path) -> None:
    names = wheel_names(wheel)
    modules = {
        path.relative_to(ROOT).as_posix()
        for package in ("facrnn", "datamodules")
        for path in (ROOT / package).rglob("*.py")
        if "__pycache__" not in path.parts
    }
    assert modules - names == set(), "modules missing from the wheel: add their package to [tool.setuptools] packages"
    configs = {f"facrnn/_conf/{path.relative_to(ROOT / 'conf').as_posix()}" for path in (ROOT / "conf").rglob("*.yaml")}
    assert {"facrnn/_conf/train.yaml", "facrnn/_conf/evaluate.yaml", "facrnn/_conf/model/facrnn.yaml"} <= configs
    assert configs - names == set()
    data = {name for name in names if name.startswith("datamodules/_data/")}
    assert data == {f"datamodules/_data/{BUNDLED_SESSION}"}  # not data/cache
    with zipfile.ZipFile(wheel) as archive:
        assert archive.read(f"datamodules/_data/{BUNDLED_SESSION}") == (ROOT / "data" / BUNDLED_SESSION).read_bytes()
        (entry_points,) = (name for name in names if name.endswith(".dist-info/entry_points.txt"))
        parser = configparser.ConfigParser()
        parser.read_string(archive.read(entry_points).decode())
    assert dict(parser["console_scripts"]) == CONSOLE_SCRIPTS


def test_installed_wheel_finds_its_configs_and_the_bundled_session(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    install = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", str(target), str(wheel)]
    result = subprocess.run(install, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    code = (
        "import json, facrnn.runs.compose as compose, datamodules.monkey_m1 as m1\n"
        "cfg = compose.compose_train_config(['experiment=monkey_m1'], 'run')\n"
        "print(json.dumps({'package': compose.__file__, 'config_dir': str(compose.CONFIG_DIR), "
        "'session': str(m1.BUNDLED_SESSION), 'beta': cfg.model.beta, 'datamodule': cfg.datamodule._target_}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(target), "WANDB_MODE": "offline"}
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    found = json.loads(run.stdout.strip().splitlines()[-1])
    assert Path(found["package"]).is_relative_to(target)  # the installed copy, not the clone
    assert Path(found["config_dir"]) == target / "facrnn" / "_conf"
    assert Path(found["session"]) == target / "datamodules" / "_data" / BUNDLED_SESSION
    assert found["beta"] == 2.0 and found["datamodule"] == "datamodules.monkey_m1.MonkeyM1DataModule"
