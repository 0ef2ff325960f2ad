"""Issue 7, training faults and config errors: atomic checkpoint writes, SIGTERM / Ctrl-C,
unusable checkpoints, config checks before any data loading, one-line CLI errors.

Every case is a row of docs/errors.md.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hydra.errors import InstantiationException

from facrnn.cli.errors import project_error
from facrnn.errors import CheckpointError, ConfigError
from facrnn.evaluation.settings import EvalSettings
from facrnn.runs import pipeline
from facrnn.runs.checkpoints import CheckpointNotFoundError, load_checkpoint
from facrnn.training.faults import AtomicCheckpointIO, InterruptCheckpoint, TrainingInterrupted
from facrnn.training.module import FacRNNModule
from facrnn.training.settings import check_train_config
from tests.helpers import ROOT, compose_config

pytestmark = pytest.mark.robustness

ENV = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}


def run_script(script: str, args: list[str], root: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**ENV, "FACRNN_ROOT": str(root)}
    return subprocess.run(
        [sys.executable, str(ROOT / script), *args], cwd=root, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def recording_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small smooth recording (600 bins x 8 channels): training on it takes milliseconds per epoch."""
    rng = np.random.default_rng(0)
    time_axis = np.arange(600)[:, None] * 0.1
    x = np.sin(time_axis * rng.uniform(0.5, 2.0, 8) + rng.uniform(0, 6, 8)) + 0.1 * rng.standard_normal((600, 8))
    path = tmp_path_factory.mktemp("data") / "recording.npz"
    np.savez(path, x=x.astype(np.float32))
    return path


def small_run_args(recording_file: Path) -> list[str]:
    return [
        "datamodule=from_file",
        f"datamodule.path={recording_file}",
        "datamodule.batch_size=64",
        "model.latent_dim=4",
        "logger=none",
        "threads=1",
        "evaluate=false",
    ]


# ---------------------------------------------------------------- 1. atomic checkpoint writes
def start_saver(target: Path, mode: str, n_values: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.helpers.checkpoint_writer", str(target), mode, str(n_values)],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_line(process: subprocess.Popen, wanted: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if line.strip() == wanted:
            return
        if not line and process.poll() is not None:
            raise AssertionError(f"saver exited with {process.returncode}: {process.stderr.read()[-2000:]}")
    raise AssertionError(f"no {wanted!r} within {timeout} s")


def test_checkpoint_killed_mid_save_keeps_the_previous_one(tmp_path: Path) -> None:
    # two savers at once: one hangs half-way through writing generation 1 (killed there), one
    # saves generation after generation as fast as it can (killed at an arbitrary moment)
    target, looped = tmp_path / "checkpoints" / "last.ckpt", tmp_path / "loop" / "last.ckpt"
    slow, loop = start_saver(target, "slow", 2_000_000), start_saver(looped, "loop", 1_000_000)  # 8 MB, 4 MB
    try:
        wait_for_line(slow, "WRITING")  # generation 1 is half written
        wait_for_line(loop, "SAVED 3")
        time.sleep(0.137)  # somewhere inside a later save
    finally:
        for saver in (slow, loop):
            saver.kill()  # SIGKILL: no handler, no cleanup
            saver.wait(timeout=30)
    assert slow.returncode == loop.returncode == -signal.SIGKILL
    (partial,) = list(target.parent.glob(".last.ckpt.*.tmp"))  # the half-written new checkpoint ...
    assert 0 < partial.stat().st_size < target.stat().st_size
    checkpoint = torch.load(target, weights_only=True)  # ... never replaced the previous one
    assert checkpoint["generation"] == 0 and torch.all(checkpoint["state_dict"]["weight"] == 0)
    checkpoint = torch.load(looped, weights_only=True)
    assert checkpoint["generation"] >= 3
    assert torch.all(checkpoint["state_dict"]["weight"] == checkpoint["generation"])  # complete, one generation

    AtomicCheckpointIO().save_checkpoint({"generation": 2}, target)  # the next save cleans up
    assert torch.load(target, weights_only=True)["generation"] == 2
    assert sorted(path.name for path in target.parent.iterdir()) == ["last.ckpt"]


@pytest.mark.parametrize("trainer", ["cpu", "gpu", "ddp"])
def test_every_trainer_config_writes_checkpoints_atomically(trainer: str, tmp_path: Path) -> None:
    cfg = compose_config("train", [f"trainer={trainer}"], tmp_path)
    assert [entry["_target_"] for entry in cfg.trainer.plugins] == [
        "facrnn.training.faults.AtomicCheckpointIO",
        "facrnn.training.runtime.cluster_environment",
    ]
    if trainer == "cpu":
        import hydra

        built = hydra.utils.instantiate(cfg.trainer, logger=False, enable_progress_bar=False)
        assert isinstance(built.strategy.checkpoint_io, AtomicCheckpointIO)


def test_lightning_slurm_auto_requeue_is_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Inside a SLURM task Lightning gets its SLURM environment without its own requeue handler."""
    import hydra
    from lightning_fabric.plugins.environments import LightningEnvironment, SLURMEnvironment

    from facrnn.training.runtime import cluster_environment

    for name in ("SLURM_NTASKS", "SLURM_JOB_NAME", "SLURM_JOB_ID", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_NODEID"):
        monkeypatch.delenv(name, raising=False)
    assert type(cluster_environment()) is LightningEnvironment  # outside SLURM: what Lightning picks itself
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SLURM_JOB_NAME", "submitit")
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    for name in ("SLURM_PROCID", "SLURM_LOCALID", "SLURM_NODEID"):
        monkeypatch.setenv(name, "0")
    environment = cluster_environment()
    assert isinstance(environment, SLURMEnvironment) and environment.auto_requeue is False
    built = hydra.utils.instantiate(compose_config("train", [], tmp_path).trainer, logger=False, enable_progress_bar=False)
    chosen = built._accelerator_connector.cluster_environment
    assert isinstance(chosen, SLURMEnvironment) and chosen.auto_requeue is False


# ------------------------------------------------------------------ 2. SIGTERM and Ctrl-C
def test_sigterm_saves_last_checkpoint_and_the_run_resumes(tmp_path: Path, recording_file: Path) -> None:
    run_dir, marker = tmp_path / "run", tmp_path / "training"
    args = [
        *small_run_args(recording_file),
        "trainer.max_epochs=100000",
        "trainer.check_val_every_n_epoch=100000",
        "+callbacks.mark._target_=tests.helpers.callbacks.MarkEpoch",
        f"+callbacks.mark.path={marker}",
    ]
    with open(tmp_path / "stdout", "w") as stdout, open(tmp_path / "stderr", "w") as stderr:
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "train.py"), *args, f"hydra.run.dir={run_dir}"],
            cwd=tmp_path,
            env={**ENV, "FACRNN_ROOT": str(tmp_path)},
            stdout=stdout,
            stderr=stderr,
        )
        deadline = time.monotonic() + 90
        while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), (tmp_path / "stderr").read_text()[-3000:]
        assert not (run_dir / "checkpoints" / "last.ckpt").exists()  # no validation yet: nothing saved
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    err = (tmp_path / "stderr").read_text()
    assert process.returncode == 143, err[-3000:]
    assert "Traceback" not in err
    last = run_dir / "checkpoints" / "last.ckpt"
    (line,) = [line for line in err.splitlines() if line.startswith("interrupted: ")]
    assert line.startswith("interrupted: SIGTERM at epoch ")
    assert line.endswith(f": saved {last}; continue with: python train.py hydra.run.dir={run_dir} ckpt_path=last")
    checkpoint = torch.load(last, weights_only=True)
    assert checkpoint["epoch"] > 2 and f"at epoch {checkpoint['epoch']} (step {checkpoint['global_step']})" in line
    assert load_checkpoint(last).hparams.latent_dim == 4  # FacRNNModule.load reads it

    resume = [
        *small_run_args(recording_file),
        "ckpt_path=last",
        "trainer.check_val_every_n_epoch=1",
        f"trainer.max_epochs={checkpoint['epoch'] + 3}",
    ]
    pipeline.train(compose_config("train", resume, tmp_path, run_name="run"))
    resumed = torch.load(last, weights_only=True)
    assert resumed["epoch"] == checkpoint["epoch"] + 2 and resumed["global_step"] > checkpoint["global_step"]


def test_ctrl_c_saves_last_checkpoint_and_exits_130(tmp_path: Path, recording_file: Path) -> None:
    cfg = compose_config(
        "train",
        [
            *small_run_args(recording_file),
            "trainer.max_epochs=50",
            "trainer.check_val_every_n_epoch=100",
            "+callbacks.ctrl_c._target_=tests.helpers.callbacks.CtrlCAt",
            "+callbacks.ctrl_c.epoch=3",
        ],
        tmp_path,
    )
    try:
        with pytest.raises(TrainingInterrupted) as interrupted:
            pipeline.train(cfg)
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # Lightning ignores further Ctrl-C
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert interrupted.value.code == 130
    assert interrupted.value.message.startswith(f"SIGINT at epoch 3 (step 15): saved {last}; continue with")
    assert torch.load(last, weights_only=True)["epoch"] == 3


def test_an_error_during_training_does_not_overwrite_last_checkpoint() -> None:
    callback = InterruptCheckpoint(dirpath="/nonexistent")
    callback.on_exception(None, None, RuntimeError("model.loss is NaN"))  # type: ignore[arg-type]
    assert callback.interruption is None  # nothing saved: the last good checkpoint stays as it was


# ------------------------------------------------------------ 3. unusable checkpoints
@pytest.fixture
def checkpoint_file(tmp_path: Path) -> Path:
    """A valid FacRNN checkpoint of an untrained module (the layout Lightning writes)."""
    import pytorch_lightning as pl

    module = FacRNNModule(n_neurons=5, n_train=20, latent_dim=4, n_groups=2)
    path = tmp_path / "run" / "checkpoints" / "best.ckpt"
    path.parent.mkdir(parents=True)
    torch.save(
        {
            "state_dict": module.state_dict(),
            "hyper_parameters": dict(module.hparams),
            "pytorch-lightning_version": pl.__version__,
            "epoch": 0,
            "global_step": 0,
        },
        path,
    )
    (path.parents[1] / "config.yaml").write_text("datamodule: {}\n")
    assert load_checkpoint(path).group_sizes == [2, 2]
    return path


def test_evaluate_without_checkpoint_says_so(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("datamodule: {}\n")
    with pytest.raises(CheckpointNotFoundError) as error:
        pipeline.evaluate_run(run_dir)
    assert str(error.value) == (
        f"{run_dir}/checkpoints: no best.ckpt or last.ckpt (training stopped before its first checkpoint?); "
        "expected a run directory written by train.py: re-train, or pass checkpoint=PATH"
    )
    with pytest.raises(
        CheckpointNotFoundError, match=r"^checkpoint=nope.ckpt: not a file; expected best, last or a .ckpt path$"
    ):
        pipeline.evaluate_run(run_dir, EvalSettings(checkpoint="nope.ckpt"))


def test_truncated_checkpoint_is_reported_with_its_size(checkpoint_file: Path) -> None:
    data = checkpoint_file.read_bytes()
    checkpoint_file.write_bytes(data[: len(data) // 2])
    with pytest.raises(
        CheckpointError,
        match=r"best.ckpt: truncated or corrupted \(\d+ bytes; .*\); expected a complete "
        r"checkpoint: re-train, or pass checkpoint=last \(or checkpoint=best\)$",
    ) as error:
        pipeline.evaluate_run(checkpoint_file.parents[1])
    assert str(error.value).startswith(str(checkpoint_file))


class Payload:
    """Unpickling this would run a shell command."""

    def __reduce__(self) -> tuple:
        return (os.system, ("touch PWNED",))


def test_checkpoint_with_a_code_execution_payload_is_refused_unrun(checkpoint_file: Path, tmp_path: Path) -> None:
    checkpoint = torch.load(checkpoint_file, weights_only=True)
    checkpoint["hyper_parameters"]["name"] = Payload()
    torch.save(checkpoint, checkpoint_file)
    with pytest.raises(
        CheckpointError,
        match=r"best.ckpt: refused to unpickle: it holds objects other than tensors and "
        r"plain containers \((posix|os)\.system\); expected a checkpoint written by train.py",
    ):
        load_checkpoint(checkpoint_file)
    assert not (tmp_path / "PWNED").exists() and not Path("PWNED").exists()


def test_checkpoint_of_an_incompatible_version_is_reported(checkpoint_file: Path) -> None:
    checkpoint = torch.load(checkpoint_file, weights_only=True)
    del checkpoint["hyper_parameters"]["n_train"]
    torch.save(checkpoint, checkpoint_file)
    with pytest.raises(
        CheckpointError,
        match=r"best.ckpt: hyper_parameters lack n_train \(written by an incompatible "
        r"version\?\); expected a checkpoint written by this version of train.py",
    ):
        load_checkpoint(checkpoint_file)

    checkpoint["hyper_parameters"]["n_train"] = 20
    checkpoint["hyper_parameters"]["latent_dim"] = 6  # the weights are of a K=4 model
    checkpoint["hyper_parameters"]["n_groups"] = 3
    torch.save(checkpoint, checkpoint_file)
    with pytest.raises(
        CheckpointError,
        match=r"best.ckpt: incompatible with this version of FacRNN \(size mismatch for "
        r"model\..*; written with pytorch-lightning .*\); expected hyper-parameters and weights of the "
        r"current model",
    ):
        load_checkpoint(checkpoint_file)

    # a setting this version no longer has
    checkpoint["hyper_parameters"] = {**checkpoint["hyper_parameters"], "latent_dim": 4, "n_groups": 2, "link": "gelu"}
    torch.save(checkpoint, checkpoint_file)
    with pytest.raises(
        CheckpointError,
        match=r"incompatible with this version of FacRNN \(model.link='gelu': expected "
        r"one of identity, relu, softplus; written with",
    ):
        load_checkpoint(checkpoint_file)


def test_a_file_that_is_not_a_checkpoint_is_reported(checkpoint_file: Path) -> None:
    torch.save({"weights": torch.zeros(3)}, checkpoint_file)
    with pytest.raises(
        CheckpointError,
        match=r"best.ckpt: not a FacRNN checkpoint \(found \['weights'\]\); expected a "
        r"Lightning checkpoint with state_dict, hyper_parameters written by train.py",
    ):
        load_checkpoint(checkpoint_file)


# ------------------------------------------------------------------ 4. config checks
CONFIG_ERRORS = [
    (
        ["model.group_sizes=[2,3]"],
        "model.group_sizes=[2, 3] sums to 5 but model.latent_dim=6: expected the group sizes to sum to the latent dimension K",
    ),
    (
        ["model.n_groups=4"],
        "model.n_groups=4 does not divide model.latent_dim=6: expected equal groups, "
        "or give unequal sizes as model.group_sizes=[...]",
    ),
    (["model.beta=-1"], "model.beta=-1: expected a non-negative weight of the partial correlation penalty (a number >= 0)"),
    (["model.alpha=-0.5"], "model.alpha=-0.5: expected a non-negative weight of the overlap penalty (a number >= 0)"),
    (["model.lr=0"], "model.lr=0: expected a learning rate > 0 (a positive number)"),
    (["trainer.max_epochs=0"], "trainer.max_epochs=0: expected a positive number of epochs (or -1: no limit)"),
    (["datamodule.batch_size=0"], "datamodule.batch_size=0: expected the minibatch size (a positive integer)"),
    (["model.history=0"], "model.history=0: expected the number of encoder history lags (a positive integer)"),
    (
        ["model.likelihood=poisson"],
        "model.link='identity' with model.likelihood=poisson: expected model.link=softplus (a positive Poisson rate)",
    ),
    (["model.likelihood=bernoulli"], "model.likelihood='bernoulli': expected one of gaussian, poisson"),
    (["model.link=tanh"], "model.link='tanh': expected one of identity, relu, softplus"),
    (["model.encoder=rnn"], "model.encoder='rnn': expected one of linear, mlp"),
    (["model.optimizer=sgd"], "model.optimizer='sgd': expected one of adam, adamw"),
    (["datamodule.split=random"], "datamodule.split='random': expected one of even_odd, trials, all, blocks"),
    (
        ["model.alpha=1", "model.encoder=mlp"],
        "model.alpha=1 with an MLP encoder/decoder: the overlap penalty needs W = B A; expected model.alpha=0 or "
        "model.encoder=linear model.decoder=linear",
    ),
    (["model.replicas=0"], "model.replicas=0: expected the number of seeds trained at once (a positive integer)"),
    (
        ["model.restarts=2", "model.decoder=mlp"],
        "model.replicas=1, model.restarts=2 with an MLP encoder/decoder: copies are batched for the linear low-rank RNN "
        "only; expected model.encoder=linear model.decoder=linear (or one copy)",
    ),
    (
        ["datamodule.n_steps=400", "model.history=400"],
        "model.history=400: datamodule.n_steps=400 gives trials of 400 bins; expected fewer history lags than bins per "
        "trial (at most 399)",
    ),
    (
        ["datamodule=mouse_voltage", "datamodule.frames=[0,50]", "model.history=60"],
        "model.history=60: datamodule.frames=[0, 50] gives trials of 50 bins; expected fewer history lags than bins per "
        "trial (at most 49)",
    ),
    (
        ["datamodule=from_file"],
        "datamodule.path is not set: expected datamodule.path=VALUE on the command line or in the config",
    ),
    (["resume=true", "ckpt_path=other.ckpt"], "resume=true with ckpt_path=other.ckpt: expected one of them, not both"),
    (["threads=0"], "threads=0: expected the number of torch threads, or null (a positive integer)"),
]


@pytest.mark.parametrize(("overrides", "message"), CONFIG_ERRORS, ids=[" ".join(case[0]) for case in CONFIG_ERRORS])
def test_config_errors_are_caught_before_any_data_loading(
    overrides: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_data(*args: object, **kwargs: object) -> None:
        raise AssertionError("data loaded before the config was checked")

    monkeypatch.setattr(pipeline, "instantiate_datamodule", no_data)
    cfg = compose_config("train", overrides, tmp_path)
    with pytest.raises(ConfigError) as error:
        pipeline.train(cfg)
    assert str(error.value) == message
    assert not (tmp_path / "run").exists()  # nothing written either


def test_missing_resume_checkpoint_is_caught_before_any_data_loading(tmp_path: Path) -> None:
    cfg = compose_config("train", ["ckpt_path=nope.ckpt"], tmp_path)
    with pytest.raises(CheckpointNotFoundError, match=r"^ckpt_path=nope.ckpt: not a file; expected last or a .ckpt path$"):
        check_train_config(cfg)


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["experiment=synthetic_paper"],
        ["experiment=monkey_m1"],
        ["experiment=mouse_voltage"],
        ["model=lrrnn"],
        ["model=bdrnn"],
        ["model=facrnn_full"],
        ["model=facrnn_m1"],
        ["model.group_sizes=[2,4]"],
        ["trainer=ddp"],
        ["model.likelihood=poisson", "model.link=softplus", "datamodule=grouped_teacher"],
        ["debug=fdr"],
        ["resume=true"],
    ],
)
def test_shipped_configs_pass_the_checks(overrides: list[str], tmp_path: Path) -> None:
    check_train_config(compose_config("train", overrides, tmp_path))


# the evaluate.py config checks: tests/cli/test_evaluate.py::test_evaluate_config_checks


def test_project_errors_wrapped_by_hydra_instantiate_are_found() -> None:
    cause = ConfigError("model.beta=-1: expected a non-negative weight")
    try:
        try:
            raise cause
        except ConfigError as error:
            raise InstantiationException("Error in call to target 'facrnn.training.module.FacRNNModule'") from error
    except InstantiationException as wrapped:
        assert project_error(wrapped) is cause
    assert project_error(ValueError("a bug")) is None


# ------------------------------------------------------------------------ 5. the CLI
def test_cli_config_error_is_one_line_without_traceback(tmp_path: Path) -> None:
    result = run_script("train.py", ["model.beta=-1"], tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: model.beta=-1: expected a non-negative weight of the partial correlation penalty (a number >= 0)"
    )
    assert "Traceback" not in result.stderr + result.stdout


def test_cli_unknown_model_lists_the_available_ones(tmp_path: Path) -> None:
    result = run_script("train.py", ["model=foo"], tmp_path)
    assert result.returncode == 1
    assert "Could not find 'model/foo'" in result.stderr
    assert "Available options in 'model':" in result.stderr
    for name in ("bdrnn", "facrnn", "facrnn_full", "lrrnn"):
        assert f"\t{name}\n" in result.stderr
    assert "Traceback" not in result.stderr


def test_multirun_records_the_config_error_of_each_job(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    result = run_script("train.py", ["-m", "model.beta=-1,-2", f"hydra.sweep.dir={sweep_dir}"], tmp_path)
    assert result.returncode == 1, result.stderr[-2000:]
    summary = yaml.safe_load((sweep_dir / "failures.yaml").read_text())
    assert summary["n_failed"] == 2
    assert [entry["error"] for entry in summary["failed"]] == [
        f"ConfigError: model.beta={beta}: expected a non-negative weight of the partial correlation penalty (a number >= 0)"
        for beta in (-1, -2)
    ]


def test_cli_evaluate_without_checkpoint_is_one_line(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("datamodule: {}\n")
    result = run_script("evaluate.py", [f"run_dir={run_dir}", "checkpoint=last"], tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {run_dir}/checkpoints: no last.ckpt (training stopped before its first checkpoint?); "
        "expected a run directory written by train.py: re-train, or pass checkpoint=PATH"
    )
    assert "Traceback" not in result.stderr
