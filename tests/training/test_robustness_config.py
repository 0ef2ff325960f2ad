"""Issue 19, config values that used to crash deep inside or be ignored: each is a one-line
error before any data are loaded (docs/errors.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from facrnn.errors import ConfigError
from facrnn.training.settings import check_train_config
from tests.helpers import ROOT, TINY_DATA, compose_config

pytestmark = pytest.mark.robustness


@pytest.mark.parametrize(
    "override, message",
    [
        ("seed=-1", r"seed=-1: expected an integer from 0 to 4294967295"),
        ("seed=4294967296", r"seed=4294967296: expected an integer from 0 to 4294967295"),
        ("datamodule.n_blocks=0", r"datamodule.n_blocks=0: expected the number of blocks of the blocks split"),
        ("datamodule.split_gap=-2", r"datamodule.split_gap=-2: expected the bins dropped between splits \(an integer >= 0\)"),
        ("datamodule.test_fraction=nan", r"datamodule.test_fraction=nan: expected a share of the data in \(0, 1\)"),
        ("datamodule.val_fraction=-0.1", r"datamodule.val_fraction=-0.1: expected a share of the data in \(0, 1\)"),
    ],
)
def test_bad_values_are_one_line_config_errors(override: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=message):
        check_train_config(compose_config("train", [*TINY_DATA, override], tmp_path))


def test_the_error_line_starts_a_line_of_its_own_after_the_progress_bar(tmp_path: Path) -> None:
    # a training that fails after the progress bar started (a non-finite loss from lr=1e10)
    args = [
        *TINY_DATA,
        "logger=none",
        "evaluate=false",
        "model.lr=1e10",
        "trainer.max_epochs=200",
        f"hydra.run.dir={tmp_path / 'r'}",
    ]
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=tmp_path,
        env={"FACRNN_ROOT": str(tmp_path), "WANDB_MODE": "offline", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "not finite" in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    # and the line says why: the loss diverged, likely from the learning rate
    assert errors[0].startswith("error: training stopped at step ") and ": the loss diverged: the " in errors[0]
    assert "likely because the learning rate model.lr=1e+10 is too large (expected model.lr < 0.1" in errors[0]


class _Module:
    """Stands in for the LightningModule a trainer fits: its ``hparams.lr`` and default ``lr``."""

    def __init__(self, lr: float = 3e-3) -> None:
        self.hparams = {"lr": lr}


@pytest.mark.parametrize("lr", [1e10, 3e-3])
def test_a_nonfinite_loss_names_a_large_learning_rate_as_the_likely_cause(lr: float) -> None:
    from types import SimpleNamespace

    import torch

    from facrnn.training.nonfinite import NonfiniteLossPolicy

    names = ("loss", "nll", "kl", "partial_corr", "overlap")
    terms = torch.tensor([[1.0, 1.0, 0.5, 0.1, 0.0], [float("nan"), float("inf"), float("inf"), 0.1, 0.0]])
    trainer = SimpleNamespace(lightning_module=_Module(lr), checkpoint_callback=None)
    message = str(NonfiniteLossPolicy(names).error(terms, last_step=2, epoch=0, trainer=trainer))
    assert len(message.splitlines()) == 1 and message.endswith("set model.nonfinite_skip_limit to skip such batches")
    if lr > 1:
        assert message.startswith(
            "training stopped at step 2 (epoch 0): the loss diverged: the nll and kl terms are not finite (loss=nan, "
            "nll=inf, kl=inf, partial_corr=0.1, overlap=0), likely because the learning rate model.lr=1e+10 is too "
            "large (expected model.lr < 0.1; the default is 0.003); no checkpoint was saved before it; "
        ), message
    else:  # an ordinary learning rate: no guess at the cause
        assert message.startswith("training stopped at step 2 (epoch 0): the nll and kl terms are not finite (")
        assert "diverged" not in message and "likely" not in message


@pytest.mark.parametrize("multirun", [False, True], ids=["run", "multirun"])
def test_a_value_the_schema_refuses_is_one_error_line(multirun: bool, tmp_path: Path) -> None:
    # Hydra reports it in several lines (message, full_key, reference_type, object_type, a hint)
    args = ["model.group_sizes=[3.9,3.1]", f"hydra.run.dir={tmp_path / 'run'}", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *(["-m", "model.beta=1,2"] if multirun else []), *args],
        cwd=tmp_path,
        env={"FACRNN_ROOT": str(tmp_path), "WANDB_MODE": "offline", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: model.group_sizes[0]=3.9: expected a value of type int (an element of ModelSettings.group_sizes)"
    ]
    assert not (tmp_path / "run").exists() and not (tmp_path / "sweep").exists()


def test_a_failed_resume_leaves_the_run_config_byte_identical(tmp_path: Path) -> None:
    import shutil

    import numpy as np

    from facrnn.errors import CheckpointError, DataFileNotFoundError
    from facrnn.runs import pipeline
    from facrnn.runs.run_dir import RunDir

    data = tmp_path / "recording.npz"
    rng = np.random.default_rng(0)
    np.savez(data, x=np.sin(np.arange(600)[:, None] * rng.uniform(0.05, 0.2, 8)) + 0.1 * rng.normal(size=(600, 8)))

    def train(*overrides: str, run_name: str = "run") -> dict:
        base = ["datamodule=from_file", f"datamodule.path={data}", "datamodule.batch_size=64", "model.latent_dim=4"]
        base += ["logger=csv", "threads=1", "evaluate=false"]
        return pipeline.train(compose_config("train", [*base, *overrides], tmp_path, run_name))

    train("trainer.max_epochs=1")
    train("trainer.max_epochs=1", "model.latent_dim=2", run_name="other")
    run, other = RunDir(tmp_path / "run"), RunDir(tmp_path / "other")
    saved, last = run.config_file.read_bytes(), run.checkpoint("last")
    good = last.read_bytes()
    resume = ("ckpt_path=last", "trainer.max_epochs=2")

    last.write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        train(*resume)
    assert run.config_file.read_bytes() == saved
    shutil.copyfile(other.checkpoint("last"), last)  # the weights of another model (latent_dim=2)
    with pytest.raises(CheckpointError, match=r"last\.ckpt: state_dict\.\S+ has shape \(.*\); this run's model has"):
        train(*resume)  # one line naming the tensor and both shapes, not load_state_dict's traceback
    assert run.config_file.read_bytes() == saved
    last.write_bytes(good)
    data.rename(data.with_suffix(".gone"))  # the data moved away
    with pytest.raises(DataFileNotFoundError):
        train(*resume)
    assert run.config_file.read_bytes() == saved

    data.with_suffix(".gone").rename(data)  # a resume that trains on: its config, with max_epochs=2
    train(*resume)
    assert run.config_file.read_bytes() != saved and "max_epochs: 2" in run.config_file.read_text()


def test_a_second_training_in_a_locked_run_directory_is_refused(tiny_train_cfg) -> None:
    from facrnn.runs import pipeline
    from facrnn.runs.resume import run_lock
    from facrnn.runs.run_dir import RunDir

    cfg = tiny_train_cfg("trainer.max_epochs=1", "evaluate=false")
    run = RunDir(cfg.paths.output_dir)
    run.path.mkdir(parents=True)
    with run_lock(run):  # another process training here (a lock on another open file blocks like one)
        with pytest.raises(ConfigError, match=r"another training process \(pid \d+\) is writing this run directory"):
            pipeline.train(cfg)
        assert not run.checkpoints_dir.exists()
    pipeline.train(cfg)  # released: the directory is free again
    assert run.checkpoint("last").is_file()


@pytest.mark.parametrize("path", ["data/a=b.npz", "data/ü.npz"])
def test_an_unquoted_path_hydra_cannot_parse_gets_the_quoting_that_fixes_it(path: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "datamodule=from_file", f"datamodule.path={path}"],
        cwd=tmp_path,
        env={"FACRNN_ROOT": str(tmp_path), "WANDB_MODE": "offline", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: datamodule.path={path}: Hydra cannot parse this override (")
    assert line.endswith(f"expected the value quoted: \"datamodule.path='{path}'\" (the outer quotes for the shell)")


def test_a_run_config_that_is_no_yaml_mapping_is_one_line(tmp_path: Path) -> None:
    from facrnn.runs.run_dir import RunDir

    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.config_file.write_text("model: [unclosed\n")
    with pytest.raises(
        ConfigError, match=r"config.yaml: not readable as YAML \(.*\); expected the config.yaml train.py wrote"
    ):
        run.load_config()
    run.config_file.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match=r"config.yaml: holds a list, not a mapping"):
        run.load_config()


def test_a_tiny_nwb_bin_size_is_refused_before_allocating(tmp_path: Path) -> None:
    import time

    from datamodules.monkey_m1 import load_nwb
    from facrnn.errors import DataError
    from tests.datamodules.test_robustness_inputs import write_nwb

    path = write_nwb(tmp_path / "session.nwb")
    started = time.perf_counter()
    with pytest.raises(DataError, match=r"datamodule.bin_size_ms=1e-05 over window_ms=.* expected at most 2048 MB"):
        load_nwb(path, bin_size_ms=0.00001)
    assert time.perf_counter() - started < 10


def test_history_longer_than_a_single_recording_is_refused(tmp_path: Path) -> None:
    import numpy as np

    from datamodules.from_file import FromFileDataModule

    path = tmp_path / "one.npz"
    np.savez(path, x=np.random.default_rng(0).normal(size=(200, 4)).astype(np.float32))
    with pytest.raises(ConfigError, match=r"model.history=100000000: .* gives trials of 200 bins"):
        FromFileDataModule(path=str(path), history=100_000_000, batch_size=16).setup()
