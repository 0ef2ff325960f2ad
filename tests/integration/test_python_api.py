"""docs/examples/load_run.py (the Python API of docs/python.md) run as a user runs it, on a tiny trained run."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from facrnn.evaluation.settings import EvalSettings
from facrnn.runs.checkpoints import load_checkpoint
from facrnn.runs.outputs import write_outputs
from facrnn.runs.pipeline import evaluate_run, instantiate_datamodule, train
from facrnn.runs.run_dir import RunDir
from tests.helpers import ROOT, TINY_DATA, compose_config

EXAMPLE = ROOT / "docs" / "examples" / "load_run.py"


def run_example(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "WANDB_MODE": "offline",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    return subprocess.run([sys.executable, str(EXAMPLE), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def evaluated_run(tmp_path_factory: pytest.TempPathFactory) -> RunDir:
    """A tiny run, evaluated (metrics.json) and with its outputs.h5."""
    tmp_path = tmp_path_factory.mktemp("python_api")
    base = TINY_DATA + ["logger=csv", "threads=1", "debug=short", "evaluate=false"]
    run = RunDir(train(compose_config("train", base, tmp_path))["run_dir"])
    evaluate_run(run.path, EvalSettings(n_mc=2, figures=False))
    checkpoint = run.find_checkpoint("best")
    datamodule = instantiate_datamodule(run.load_config().datamodule)
    write_outputs(run, load_checkpoint(checkpoint), datamodule, checkpoint=checkpoint)
    return run


def test_example_prints_metrics_latents_and_connectivity(evaluated_run: RunDir, tmp_path: Path) -> None:
    figure = tmp_path / "latents.png"
    result = run_example(str(evaluated_run.path), "--figure", str(figure), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert f"run: {evaluated_run.path}" in lines
    assert "model: facrnn, K=6 in groups [3, 3], N=20" in lines
    assert "checkpoint: best.ckpt" in lines
    assert any(line.startswith("metrics (") and line.endswith("test split):") for line in lines)
    assert any(line.split()[:1] == ["recon_r2"] for line in lines)
    assert "latents (outputs.h5):" in lines
    splits = ("train", "val", "test")
    shapes = [line.split(maxsplit=1) for line in lines if line.startswith("  ") and line.split()[0] in splits]
    assert tuple(split for split, _ in shapes) == splits
    assert all(shape.endswith(", 6)") for _, shape in shapes)
    assert "connectivity: W (20, 20), W_groups (2, 20, 20)" in lines
    assert figure.read_bytes()[:4] == b"\x89PNG"


def load_example():
    """The example as a module, to call its ``main`` in this process (a subprocess re-imports torch: ~10 s)."""
    spec = importlib.util.spec_from_file_location("load_run_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_without_outputs_file_computes_the_latents(evaluated_run: RunDir, capsys: pytest.CaptureFixture) -> None:
    load_example().main([str(evaluated_run.path), "--checkpoint", "last"])
    lines = capsys.readouterr().out.splitlines()
    assert "latents (computed from the data):" in lines  # outputs.h5 holds the best checkpoint's
    assert "checkpoint: last.ckpt" in lines
    assert "metrics: none stored for this checkpoint (run evaluate.py first)" in lines


def test_example_on_a_folder_that_is_no_run(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as stopped:
        load_example().main([str(tmp_path)])
    assert str(stopped.value) == f"run_dir={tmp_path}: no config.yaml; expected a run directory written by train.py"
