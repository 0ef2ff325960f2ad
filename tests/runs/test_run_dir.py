"""RunDir: the one place that names a run directory's files, and the YAML that must agree with it."""

from __future__ import annotations

import json
from pathlib import Path

import hydra
import pytest
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers.csv_logs import ExperimentWriter

from facrnn.errors import CheckpointNotFoundError
from facrnn.runs.run_dir import RunDir
from tests.helpers import compose_config


def test_file_names(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    assert run.path == tmp_path and RunDir(str(tmp_path)) == run
    expected = {
        run.config_file: "config.yaml",
        run.metrics_file: "metrics.json",
        run.rotation_sweep_file: "rotation_sweep.csv",
        run.fixed_points_file: "fixed_points.json",
        run.checkpoint("best"): "checkpoints/best.ckpt",
        run.checkpoint("last"): "checkpoints/last.ckpt",
        run.copies_checkpoint("last"): "checkpoints/copies/last.ckpt",
        run.training_curves_file: "csv/metrics.csv",
        run.figures_dir: "figures",
        run.overrides_file: ".hydra/overrides.yaml",
        run.wandb_id_file: "wandb_id.txt",
        run.restarts_file: "restarts.json",
        run.failure_file: "failure.yaml",
        run.permutation_file: "permutation.json",
        run.own_partial_corr_file: "partial_corr_own.json",
        run.replica(3, 10).path: "replica_03_seed10",
        run.posthoc("ica").metrics_file: "posthoc_ica/metrics.json",
        run.posthoc("svd").posthoc_settings_file: "posthoc_svd/posthoc.json",
    }
    for path, name in expected.items():
        assert path == tmp_path / name
    assert run.posthoc("ica").is_posthoc and not run.is_posthoc
    with pytest.raises(ValueError, match="checkpoint='middle': expected one of best, last"):
        run.checkpoint("middle")


def test_find_checkpoint_and_its_errors(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    assert not run.is_plain_run()
    with pytest.raises(CheckpointNotFoundError) as error:
        run.find_checkpoint("best")
    assert str(error.value) == (
        f"{tmp_path}/checkpoints: no best.ckpt or last.ckpt (training stopped before its first checkpoint?); "
        "expected a run directory written by train.py: re-train, or pass checkpoint=PATH"
    )
    with pytest.raises(CheckpointNotFoundError, match=r"checkpoints: no last.ckpt \(training stopped"):
        run.find_checkpoint("last")
    not_a_file = r"^checkpoint=nope.ckpt: not a file; expected best, last or a .ckpt path$"
    with pytest.raises(CheckpointNotFoundError, match=not_a_file):
        run.find_checkpoint("nope.ckpt")

    run.checkpoints_dir.mkdir()
    run.checkpoint("last").write_bytes(b"")
    assert run.is_plain_run()
    assert run.find_checkpoint("best") == run.checkpoint("last")  # a run that never validated
    run.checkpoint("best").write_bytes(b"")
    assert run.find_checkpoint("best") == run.checkpoint("best")
    other = tmp_path / "other.ckpt"
    other.write_bytes(b"")
    assert run.find_checkpoint(str(other)) == other


def test_config_replicas_and_runs_under(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "job")
    no_config = r"^run_dir=.*job: no config.yaml; expected a run directory written by train.py$"
    with pytest.raises(CheckpointNotFoundError, match=no_config):
        run.load_config()
    for replica, seed in ((1, 4), (0, 3)):
        child = run.replica(replica, seed)
        child.path.mkdir(parents=True)
        child.config_file.write_text("seed: 0\n")
    run.config_file.write_text("seed: 3\n")
    run.copies_dir.mkdir(parents=True)
    run.hydra_dir.mkdir()
    (run.hydra_dir / "config.yaml").write_text("{}\n")
    run.posthoc("ica").path.mkdir()
    run.posthoc("ica").config_file.write_text("{}\n")
    assert run.load_config().seed == 3
    assert run.has_copies()
    assert [child.path.name for child in run.replica_dirs()] == ["replica_00_seed3", "replica_01_seed4"]
    assert sorted(found.path for found in RunDir.runs_under(tmp_path)) == sorted(
        [run.path, *(child.path for child in run.replica_dirs())]
    )


def test_metrics_are_written_whole(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    run.write_metrics({"r2": 0.5})
    run.write_metrics({"r2": 0.25, "pc": 0.1})
    assert json.loads(run.metrics_file.read_text()) == {"r2": 0.25, "pc": 0.1}
    assert [path.name for path in run.path.iterdir()] == ["metrics.json"]  # no temporary file left
    assert run.read_restarts() is None


def test_the_yaml_configures_the_names_run_dir_reads(tmp_path: Path) -> None:
    """Lightning and Hydra write checkpoints/, csv/ and .hydra/ as conf/ says; RunDir reads them."""
    cfg = compose_config("train", ["logger=csv"], tmp_path)
    run = RunDir(cfg.paths.output_dir)

    checkpoint = hydra.utils.instantiate(cfg.callbacks.model_checkpoint)
    assert Path(checkpoint.dirpath) == run.checkpoints_dir
    assert checkpoint.filename + ModelCheckpoint.FILE_EXTENSION == run.checkpoint("best").name
    assert checkpoint.save_last
    assert checkpoint.CHECKPOINT_NAME_LAST + ModelCheckpoint.FILE_EXTENSION == run.checkpoint("last").name

    logger = hydra.utils.instantiate(cfg.logger.csv)
    assert Path(logger.log_dir) / ExperimentWriter.NAME_METRICS_FILE == run.training_curves_file

    assert cfg.hydra.output_subdir == RunDir.HYDRA
