"""The real entry points, as a user runs them: train.py, evaluate.py, a multirun."""

from __future__ import annotations

import json
from pathlib import Path

from tests.helpers import TINY_DATA, run_script


def test_train_then_evaluate_from_the_command_line(tmp_path: Path) -> None:
    run_dir = tmp_path / "my_run"
    trained = run_script("train.py", [*TINY_DATA, "debug=short", "seed=3", f"hydra.run.dir={run_dir}"], tmp_path)
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert f"run directory: {run_dir}" in trained.stdout
    assert "group_latent_r2" in trained.stdout  # the metrics table
    assert (tmp_path / "data" / "cache").is_dir()  # paths.root_dir follows FACRNN_ROOT

    (run_dir / "metrics.json").unlink()
    evaluated = run_script("evaluate.py", [f"run_dir={run_dir}", "checkpoint=last", "n_mc=2"], tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert not (run_dir / "metrics.json").exists()  # checkpoint=last writes beside it
    metrics = json.loads((run_dir / "metrics_test_last.json").read_text())
    assert metrics.pop("provenance")["checkpoint"]["file"] == "checkpoints/last.ckpt"
    assert 0.0 <= metrics["group_latent_r2"] <= 1.0
    assert (run_dir / "evaluate.log").is_file()  # Hydra logs into the run, not elsewhere
    assert not (run_dir / ".hydra" / "overrides.yaml").read_text().count("run_dir")  # training record untouched


def test_multirun_over_models_and_seeds(tmp_path: Path) -> None:
    # no hydra.sweep.dir: the default sweep directory must resolve before any job runs
    result = run_script(
        "train.py",
        ["-m", *TINY_DATA, "experiment=synthetic_paper", "model=lrrnn,facrnn", "seed=0,1", "debug=fdr"],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (sweep_dir,) = (tmp_path / "logs" / "train" / "multiruns").iterdir()
    configs = sorted(sweep_dir.glob("*/config.yaml"))
    assert len(configs) == 4
    names = sorted(
        line
        for path in configs
        for line in path.read_text().splitlines()
        if line.startswith("  name: ") and "seed" not in line
    )
    assert names == ["  name: facrnn"] * 2 + ["  name: lrrnn"] * 2


def test_missing_run_dir_is_a_clear_error(tmp_path: Path) -> None:
    result = run_script("evaluate.py", [f"run_dir={tmp_path / 'nope'}"], tmp_path)
    assert result.returncode != 0
    assert "no config.yaml; expected a run directory written by train.py" in result.stderr
