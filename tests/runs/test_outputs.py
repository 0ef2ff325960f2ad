"""RUN/outputs.h5 (facrnn.runs.outputs) and facrnn.load_run (facrnn.runs.api) on tiny trained runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import facrnn
from facrnn.errors import CheckpointNotFoundError, ConfigError
from facrnn.runs.api import LoadedRun, load_run
from facrnn.runs.checkpoints import load_checkpoint
from facrnn.runs.outputs import read_output_attributes, write_outputs
from facrnn.runs.pipeline import instantiate_datamodule, train
from facrnn.runs.run_dir import RunDir
from facrnn.training.module import FacRNNModule
from tests.helpers import ROOT, TINY_DATA, compose_config

TOLERANCE = 1e-6
MLP = ["model.encoder=mlp", "model.decoder=mlp"]


class TrainedRun:
    """A tiny trained run: its directory, best checkpoint, module and data."""

    def __init__(self, tmp_path: Path, name: str, overrides: list[str]) -> None:
        base = TINY_DATA + ["logger=csv", "threads=1", "debug=short", "evaluate=false"]
        cfg = compose_config("train", base + overrides, tmp_path, name)
        self.run = RunDir(train(cfg)["run_dir"])
        self.checkpoint = self.run.find_checkpoint("best")
        self.module = load_checkpoint(self.checkpoint)
        self.datamodule = instantiate_datamodule(self.run.load_config().datamodule)

    @property
    def model(self):
        return self.module.model

    def write(self, checkpoint: Path | None = None) -> Path:
        return write_outputs(self.run, self.module, self.datamodule, checkpoint=checkpoint or self.checkpoint)

    def expected(self, split: str) -> dict[str, np.ndarray]:
        """What the model says about ``split``, computed here from its parts."""
        tensors = self.datamodule.split_tensors(split)
        with torch.no_grad():
            latents = self.model.encode(tensors["encoder_input"])
            rates = self.model.decode(latents, tensors.get("external_input"))
        n_bins = self.datamodule.recording.x.shape[1]
        trial, time = tensors["trial"].numpy(), tensors["time"].numpy()
        return {
            "latents": latents.numpy(),
            "rates": rates.numpy(),
            "bin_index": trial * n_bins + time,
            "trial_index": trial,
            "time": time,
        }

    def expected_connectivity(self) -> dict[str, np.ndarray]:
        with torch.no_grad():
            return {
                "A": self.model.A.numpy(),
                "B": self.model.B.numpy(),
                "W": self.model.connectivity().numpy(),
                "W_groups": self.model.group_connectivity().numpy(),
                "group_sizes": np.asarray(self.model.group_sizes),
            }


@pytest.fixture(scope="module")
def linear_run(tmp_path_factory: pytest.TempPathFactory) -> TrainedRun:
    return TrainedRun(tmp_path_factory.mktemp("outputs"), "linear", [])


@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory: pytest.TempPathFactory) -> TrainedRun:
    return TrainedRun(tmp_path_factory.mktemp("outputs_mlp"), "mlp", MLP)


def assert_arrays_close(found: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert set(found) == set(expected)
    for name, value in expected.items():
        assert found[name].shape == value.shape, name
        np.testing.assert_allclose(found[name], value, rtol=0, atol=TOLERANCE, err_msg=name)


def test_outputs_file_holds_latents_rates_and_connectivity(linear_run: TrainedRun) -> None:
    path = linear_run.write()
    assert path == linear_run.run.outputs_file
    with h5py.File(path, "r") as file:
        assert {"train", "val", "test", "connectivity"} == set(file)
        for split in ("train", "val", "test"):
            found = {name: np.asarray(file[split][name]) for name in file[split]}
            expected = linear_run.expected(split)
            assert_arrays_close(found, expected)
            assert found["latents"].shape == (len(linear_run.datamodule.splits[split]), 6)
            assert found["rates"].shape[1] == linear_run.datamodule.n_channels
        connectivity = {name: np.asarray(file["connectivity"][name]) for name in file["connectivity"]}
        assert_arrays_close(connectivity, linear_run.expected_connectivity())
        assert connectivity["W_groups"].shape == (2, 20, 20)
        np.testing.assert_allclose(connectivity["W_groups"].sum(axis=0), connectivity["W"], atol=TOLERANCE)
    attributes = read_output_attributes(path)
    assert attributes["checkpoint"] == "checkpoints/best.ckpt"
    assert attributes["facrnn_version"] == facrnn.__version__
    assert attributes["model_name"] == "facrnn"
    assert attributes["likelihood"] == "gaussian"
    assert attributes["has_connectivity"] is True
    assert attributes["layout_version"] == 1


def test_outputs_are_written_atomically(linear_run: TrainedRun, monkeypatch: pytest.MonkeyPatch) -> None:
    path = linear_run.write()
    before = path.read_bytes()

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(h5py.Group, "create_dataset", fail)
    with pytest.raises(OSError, match="disk full"):
        linear_run.write()
    assert path.read_bytes() == before  # the previous file, whole
    assert sorted(entry.name for entry in linear_run.run.path.glob(".outputs.h5*")) == []  # no temporary left


def test_load_run_reads_the_outputs_file(linear_run: TrainedRun, monkeypatch: pytest.MonkeyPatch) -> None:
    linear_run.write()
    linear_run.run.write_metrics({"recon_r2": 0.5}, {"split": "test"})
    loaded = facrnn.load_run(linear_run.run.path)
    assert isinstance(loaded, LoadedRun)
    assert loaded.has_outputs
    assert loaded.checkpoint == linear_run.checkpoint
    assert loaded.config.model.name == "facrnn"
    assert loaded.metrics == {"recon_r2": 0.5} and loaded.provenance == {"split": "test"}
    assert loaded.read_metrics("val") is None

    def no_data(self):
        raise AssertionError("the outputs file should have been read, not the data")

    monkeypatch.setattr(LoadedRun, "datamodule", property(no_data))
    for split in ("train", "val", "test"):
        np.testing.assert_allclose(loaded.latents(split), linear_run.expected(split)["latents"], atol=TOLERANCE)
        np.testing.assert_allclose(loaded.rates(split), linear_run.expected(split)["rates"], atol=TOLERANCE)
    assert_arrays_close(loaded.connectivity(), linear_run.expected_connectivity())


def test_load_run_computes_the_outputs_without_the_file(linear_run: TrainedRun) -> None:
    linear_run.run.outputs_file.unlink(missing_ok=True)
    loaded = load_run(linear_run.run.path)
    assert not loaded.has_outputs
    for split in ("train", "test"):
        assert_arrays_close(loaded.outputs(split), linear_run.expected(split))
    assert_arrays_close(loaded.connectivity(), linear_run.expected_connectivity())
    torch.testing.assert_close(loaded.model.encoder.weight, linear_run.model.encoder.weight, rtol=0, atol=0)


def test_outputs_of_another_checkpoint_are_not_read(linear_run: TrainedRun) -> None:
    last = linear_run.run.checkpoint("last")
    linear_run.write(checkpoint=last)
    assert not load_run(linear_run.run.path, checkpoint="best").has_outputs
    from_last = load_run(linear_run.run.path, checkpoint="last")
    assert from_last.has_outputs and from_last.checkpoint == last


def test_mlp_run_writes_latents_but_no_connectivity(mlp_run: TrainedRun) -> None:
    path = mlp_run.write()
    with h5py.File(path, "r") as file:
        assert set(file) == {"train", "val", "test"}
        assert_arrays_close({name: np.asarray(file["test"][name]) for name in file["test"]}, mlp_run.expected("test"))
    attributes = read_output_attributes(path)
    assert attributes["has_connectivity"] is False
    assert (attributes["encoder"], attributes["decoder"]) == ("mlp", "mlp")
    loaded = load_run(mlp_run.run.path)
    np.testing.assert_allclose(loaded.latents("val"), mlp_run.expected("val")["latents"], atol=TOLERANCE)
    with pytest.raises(ConfigError, match="model.encoder=mlp model.decoder=mlp: no connectivity"):
        loaded.connectivity()


def test_batched_copies_have_no_outputs(tmp_path: Path) -> None:
    module = FacRNNModule(n_neurons=4, n_train=16, latent_dim=2, n_groups=2, replicas=2, seed=0)
    with pytest.raises(ConfigError, match="batched copies"):
        write_outputs(RunDir(tmp_path), module, datamodule=None)  # type: ignore[arg-type]


def test_load_run_errors(tmp_path: Path, linear_run: TrainedRun) -> None:
    with pytest.raises(CheckpointNotFoundError, match="no config.yaml"):
        load_run(tmp_path)
    with pytest.raises(CheckpointNotFoundError, match="not a file"):
        load_run(linear_run.run.path, checkpoint=str(tmp_path / "missing.ckpt"))
    with pytest.raises(ConfigError, match="split='held_out'"):
        load_run(linear_run.run.path).latents("held_out")


def test_facrnn_exposes_load_run_lazily() -> None:
    assert facrnn.load_run is load_run and facrnn.LoadedRun is LoadedRun
    assert {"load_run", "LoadedRun", "__version__"} <= set(dir(facrnn))
    with pytest.raises(AttributeError, match="no_such_name"):
        facrnn.no_such_name  # noqa: B018
    # `import facrnn` (every layer does) imports neither torch nor the runs layer
    code = "import sys, facrnn; assert not {'torch', 'facrnn.runs'} & set(sys.modules), sorted(sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
