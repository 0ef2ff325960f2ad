"""Issue 19: no code named by a run directory, a checkpoint or a data file runs, under any
environment variable.

(a) a run directory's ``config.yaml`` naming other code than the project's datamodules;
(b) checkpoints holding pickled code, read under ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``;
(c) checkpoints asking for absurd sizes; (d) atomic writes that fail or race.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml

from facrnn.errors import CheckpointError, ConfigError
from facrnn.runs import pipeline
from facrnn.runs.checkpoints import load_checkpoint, read_checkpoint
from facrnn.runs.trusted import TRUSTED_TARGETS, check_trusted_targets
from facrnn.training import faults
from facrnn.training.faults import AtomicCheckpointIO, atomic_write
from facrnn.training.module import FacRNNModule
from tests.helpers import ROOT

pytestmark = pytest.mark.robustness

UNSAFE = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"


def script(name: str, args: list[str], root: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "FACRNN_ROOT": str(root), "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", **env}
    return subprocess.run(
        [sys.executable, str(ROOT / name), *args], cwd=root, env=environment, capture_output=True, text=True, timeout=300
    )


def write_checkpoint(path: Path, **changes: object) -> Path:
    """A valid FacRNN checkpoint of an untrained module, hyper-parameters changed by ``changes``."""
    module = FacRNNModule(n_neurons=5, n_train=20, latent_dim=4, n_groups=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    hyper_parameters = {**dict(module.hparams), **changes}
    checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": hyper_parameters, "epoch": 0, "global_step": 0}
    torch.save({**checkpoint, "pytorch-lightning_version": pl.__version__}, path)
    return path


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    """The file a payload would create; must never exist."""
    return tmp_path / "PWNED"


# ------------------------------------------------------------ (a) run directories
def make_run(tmp_path: Path, datamodule: dict) -> Path:
    run_dir = tmp_path / "run"
    write_checkpoint(run_dir / "checkpoints" / "best.ckpt")
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"datamodule": datamodule, "model": {"name": "facrnn"}}))
    return run_dir


def hostile_configs(marker: Path) -> dict[str, dict]:
    synthetic = "datamodules.synthetic.SyntheticDataModule"
    return {
        "exec": {"_target_": "builtins.exec", "_args_": [f"open({str(marker)!r}, 'w').close()"]},
        "nested": {"_target_": synthetic, "cache_dir": {"_target_": "os.mkdir", "path": str(marker)}},
        "in a list": {"_target_": synthetic, "figures": [{"_target_": "os.mkdir", "path": str(marker)}]},
        "partial": {"_target_": synthetic, "_partial_": True},
        "resolver": {"_target_": synthetic, "cache_dir": "${oc.create:{_target_: os.mkdir, path: " + str(marker) + "}}"},
    }


@pytest.mark.parametrize("case", ["exec", "nested", "in a list", "partial", "resolver"])
def test_a_run_config_naming_other_code_is_refused_unrun(case: str, tmp_path: Path, marker: Path) -> None:
    run_dir = make_run(tmp_path, hostile_configs(marker)[case])
    with pytest.raises(ConfigError) as error:
        pipeline.evaluate_run(run_dir)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"{run_dir / 'config.yaml'}: datamodule")
    assert message.endswith("a run directory's config is never allowed to name other code")
    assert not marker.exists()


def test_the_refusal_names_the_key_and_the_allowed_targets(tmp_path: Path) -> None:
    source = tmp_path / "config.yaml"
    with pytest.raises(ConfigError) as error:
        check_trusted_targets({"_target_": "os.remove", "path": "x"}, "datamodule", source)
    assert str(error.value) == (
        f"{source}: datamodule._target_='os.remove': expected one of {', '.join(TRUSTED_TARGETS)}; "
        "a run directory's config is never allowed to name other code"
    )
    assert "datamodules.synthetic.SyntheticDataModule" in TRUSTED_TARGETS and len(TRUSTED_TARGETS) == 5


def test_a_plain_run_config_passes_resolved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from omegaconf import OmegaConf

    monkeypatch.setenv("FACRNN_TEST_CACHE", str(tmp_path))
    cfg = OmegaConf.create(
        {
            "model": {"history": 3},
            "datamodule": {
                "_target_": "datamodules.synthetic.SyntheticDataModule",
                "history": "${model.history}",
                "cache_dir": "${oc.env:FACRNN_TEST_CACHE}",
            },
        }
    )
    checked = check_trusted_targets(cfg.datamodule, "datamodule", "config.yaml")
    assert OmegaConf.to_container(checked) == {
        "_target_": "datamodules.synthetic.SyntheticDataModule",
        "history": 3,
        "cache_dir": str(tmp_path),
    }


def test_load_run_refuses_a_hostile_config_before_building_data(tmp_path: Path, marker: Path) -> None:
    from facrnn.runs.api import load_run

    run_dir = make_run(tmp_path, hostile_configs(marker)["nested"])
    loaded = load_run(run_dir)
    with pytest.raises(ConfigError, match=r"datamodule\.cache_dir\._target_='os\.mkdir'"):
        loaded.datamodule  # noqa: B018 - the property builds the data
    assert not marker.exists()


def test_cli_evaluate_of_a_hostile_run_is_one_error_line(tmp_path: Path, marker: Path) -> None:
    run_dir = make_run(tmp_path, hostile_configs(marker)["exec"])
    result = script("evaluate.py", [f"run_dir={run_dir}"], tmp_path)
    assert result.returncode == 1, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {run_dir / 'config.yaml'}: datamodule._target_='builtins.exec': expected one of ")
    assert "Traceback" not in result.stderr
    assert not marker.exists()


# ------------------------------------------------------------ (b) payload checkpoints
class Payload:
    """Unpickling this would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.fixture
def payload_checkpoint(tmp_path: Path, marker: Path) -> Path:
    path = write_checkpoint(tmp_path / "payload" / "last.ckpt")
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["hyper_parameters"]["name"] = Payload(marker)
    torch.save(checkpoint, path)
    return path


REFUSED = r"last.ckpt: refused to unpickle: it holds objects other than tensors and plain containers \((builtins\.)?exec\)"


def test_payload_is_refused_by_every_reader_whatever_the_environment(
    payload_checkpoint: Path, marker: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(UNSAFE, "1")
    with pytest.raises(CheckpointError, match=REFUSED):
        read_checkpoint(payload_checkpoint)
    with pytest.raises(CheckpointError, match=REFUSED):
        FacRNNModule.load(str(payload_checkpoint))
    with pytest.raises(CheckpointError, match=REFUSED):
        load_checkpoint(payload_checkpoint)
    assert not marker.exists()
    assert os.environ[UNSAFE] == "1"  # the reader hides the variable only while it reads


@pytest.mark.parametrize("weights_only", [None, False])
def test_resume_through_lightning_refuses_a_payload(
    weights_only: bool | None, payload_checkpoint: Path, marker: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``trainer.fit(ckpt_path=...)`` loads with ``strategy.load_checkpoint`` (the trainer's checkpoint IO)."""
    monkeypatch.setenv(UNSAFE, "1")
    trainer = pl.Trainer(plugins=[AtomicCheckpointIO()], logger=False, default_root_dir=tmp_path, enable_progress_bar=False)
    with pytest.raises(CheckpointError, match=REFUSED):
        trainer.strategy.load_checkpoint(payload_checkpoint, weights_only=weights_only)
    assert not marker.exists()


def test_the_checkpoint_io_still_loads_a_valid_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(UNSAFE, "1")
    path = write_checkpoint(tmp_path / "last.ckpt")
    loaded = AtomicCheckpointIO().load_checkpoint(path)
    assert set(loaded["state_dict"]) == set(FacRNNModule(n_neurons=5, n_train=20, latent_dim=4).state_dict())


def test_train_resume_from_a_payload_is_refused_in_a_subprocess(
    payload_checkpoint: Path, marker: Path, tmp_path: Path
) -> None:
    args = ["datamodule=synthetic", "datamodule.n_steps=200", "logger=none", "threads=1", "evaluate=false"]
    args += [f"hydra.run.dir={tmp_path / 'resumed'}", f"ckpt_path={payload_checkpoint}", "trainer.max_epochs=1"]
    result = script("train.py", args, tmp_path, **{UNSAFE: "1"})
    assert result.returncode == 1, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {payload_checkpoint}: refused to unpickle"), result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not marker.exists()


# ------------------------------------------------------------ (c) absurd hyper-parameters
@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"history": 10**7}, "history"),
        ({"latent_dim": 20_000}, "latent_dim"),
        ({"n_neurons": 10**6}, "n_neurons"),
        ({"group_sizes": [10_000, 10_000]}, "group_sizes"),
        ({"replicas": 10**5}, "replicas"),
        ({"latent_dim": True}, "latent_dim"),
        ({"history": 2.5}, "history"),
        ({"encoder": "mlp", "decoder": "mlp", "hidden_dim": 10**6}, "hidden_dim"),
    ],
)
def test_absurd_sizes_are_refused_before_any_allocation(changes: dict, key: str, tmp_path: Path) -> None:
    path = write_checkpoint(tmp_path / "best.ckpt", **changes)
    start = time.perf_counter()
    for load in (read_checkpoint, load_checkpoint, lambda p: FacRNNModule.load(str(p))):
        with pytest.raises(CheckpointError, match=rf"^{path}: hyper_parameters\.{key}=") as error:
            load(path)
        assert "\n" not in str(error.value)
    assert time.perf_counter() - start < 5


def test_sensible_sizes_still_load(tmp_path: Path) -> None:
    path = write_checkpoint(tmp_path / "best.ckpt", history=50)
    assert load_checkpoint(path).model.history == 50


# ------------------------------------------------------------ (d) atomic writes
def test_a_failed_atomic_write_keeps_the_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "last.ckpt"
    target.write_bytes(b"previous")

    def disk_full(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(faults.os, "replace", disk_full)
    with pytest.raises(OSError) as error:
        atomic_write(target, lambda handle: handle.write(b"new"))
    assert str(error.value) == (
        f"{target}: could not write (No space left on device); the previous file is unchanged; "
        "expected a writable directory with free space"
    )
    assert error.value.errno == 28
    assert target.read_bytes() == b"previous"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["last.ckpt"]


def test_a_write_failing_midway_keeps_the_previous_file(tmp_path: Path) -> None:
    target = tmp_path / "last.ckpt"
    target.write_bytes(b"previous")

    def write(handle: object) -> None:
        handle.write(b"partial")  # type: ignore[attr-defined]
        raise OSError(30, "Read-only file system")

    with pytest.raises(OSError, match=r"could not write \(Read-only file system\); the previous file is unchanged"):
        atomic_write(target, write)
    assert target.read_bytes() == b"previous"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["last.ckpt"]


def test_concurrent_writers_never_delete_each_others_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "last.ckpt"
    both_writing = threading.Barrier(2, timeout=10)
    errors: list[BaseException] = []

    def writer(data: bytes) -> None:
        def write(handle: object) -> None:
            handle.write(data)  # type: ignore[attr-defined]
            both_writing.wait()  # both temporary files exist now

        try:
            atomic_write(target, write)
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(data,)) for data in (b"first", b"second")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert target.read_bytes() in (b"first", b"second")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["last.ckpt"]


def test_a_temporary_file_of_a_dead_writer_is_removed(tmp_path: Path) -> None:
    target = tmp_path / "last.ckpt"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".last.ckpt.{dead.stdout.strip()}.tmp"
    stale.write_bytes(b"half")
    atomic_write(target, lambda handle: handle.write(b"new"))
    assert not stale.exists() and target.read_bytes() == b"new"


@pytest.mark.robustness
def test_a_resume_refuses_a_saved_config_naming_other_code(tiny_train_cfg, marker: Path) -> None:
    from omegaconf import OmegaConf

    from facrnn.runs.run_dir import RunDir

    pipeline.train(tiny_train_cfg("trainer.max_epochs=1", "evaluate=false"))
    run = RunDir(tiny_train_cfg().paths.output_dir)
    saved = OmegaConf.load(run.config_file)
    hostile = {"_target_": "pathlib.Path.touch", "self": str(marker)}
    for section, key in (("trainer", "plugins"), ("model", "encoder_extra"), ("optimized_metric_spec", "x")):
        cfg = OmegaConf.to_container(saved)
        cfg.setdefault(section, {})
        cfg[section] = {**cfg[section], key: [hostile]} if isinstance(cfg[section], dict) else {key: [hostile]}
        run.config_file.write_text(OmegaConf.to_yaml(cfg))
        with pytest.raises(ConfigError, match=rf"config.yaml: {section}\.{key}\[0\]\._target_='pathlib.Path.touch'"):
            pipeline.train(tiny_train_cfg("ckpt_path=last", "trainer.max_epochs=2", "evaluate=false"))
        assert not marker.exists()
