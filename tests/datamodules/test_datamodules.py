"""Data sources: the synthetic recipe, user files, splits and batching."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from datamodules.from_file import FromFileDataModule, load_file_recording
from datamodules.synthetic import SyntheticDataModule, generate_paper_benchmark, integrate_rk4, lorenz

TINY = {"n_steps": 300, "teacher_steps": 200}


def test_rk4_matches_scipy_solution() -> None:
    from scipy.integrate import solve_ivp

    start = np.array([1.0, 1.0, 1.0])
    ours = integrate_rk4(lorenz, start, 11, 0.01)
    reference = solve_ivp(lambda t, s: lorenz(s), (0, 0.1), start, t_eval=np.linspace(0, 0.1, 11), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(ours, reference.y.T, atol=1e-5)


def test_paper_benchmark_is_deterministic_and_well_formed() -> None:
    first, second = generate_paper_benchmark(data_seed=1, **TINY), generate_paper_benchmark(data_seed=1, **TINY)
    other = generate_paper_benchmark(data_seed=2, **TINY)
    for key in ("x", "latents", "A", "B"):
        np.testing.assert_array_equal(first[key], second[key])
    assert not np.array_equal(first["x"], other["x"])
    assert first["x"].shape == (300, 20) and first["latents"].shape == (300, 6)
    np.testing.assert_allclose(first["latents"].mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(first["latents"].std(0), 1, atol=1e-4)
    # x = A z + a + 0.1 noise: the residual has the observation noise's scale
    residual = first["x"] - first["latents"] @ first["A"].T - first["a"]
    assert residual.std() == pytest.approx(0.1, rel=0.1)


def test_synthetic_cache_is_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    SyntheticDataModule(cache_dir=str(tmp_path), **TINY).setup()
    assert len(list(tmp_path.glob("synthetic_paper-*.npz"))) == 1

    def fail(*args, **kwargs):
        raise AssertionError("teacher refitted despite the cache")

    monkeypatch.setattr("datamodules.synthetic.generate_paper_benchmark", fail)
    datamodule = SyntheticDataModule(cache_dir=str(tmp_path), **TINY)
    datamodule.setup()
    assert datamodule.n_train == 135  # 150 even bins, 15 of them validate


def test_even_odd_split_and_batches(tmp_path: Path) -> None:
    datamodule = SyntheticDataModule(cache_dir=str(tmp_path), batch_size=32, **TINY)
    datamodule.setup()
    train, test = datamodule.split_tensors("train"), datamodule.split_tensors("test")
    val = datamodule.split_tensors("val")
    assert (train["time"] % 2 == 0).all() and (test["time"] % 2 == 1).all() and (val["time"] % 2 == 0).all()
    assert len(train["x"]) + len(val["x"]) + len(test["x"]) == 300 and len(val["x"]) == 15
    assert not set(val["time"].tolist()) & set(train["time"].tolist())  # validation bins are not trained on
    # single recording: the first bin's missing past is zero; later bins see tanh(x_{t-1})
    assert int(val["time"][0]) == 0 and torch.all(val["encoder_input"][0] == 0)  # bin 0 validates
    x = torch.from_numpy(datamodule.recording.x[0])
    torch.testing.assert_close(train["encoder_input"][0], torch.tanh(x[int(train["time"][0]) - 1]))
    torch.testing.assert_close(test["encoder_input"][0], torch.tanh(x[0]))
    batches = list(datamodule.train_dataloader())
    assert [len(batch["x"]) for batch in batches] == [32] * 4 + [7]  # 135 training bins
    # training batches carry what the loss reads, each training bin once per epoch
    assert all(set(batch) == {"x", "encoder_input"} for batch in batches)
    seen = torch.cat([batch["x"] for batch in batches])
    rows = [int((train["x"] == row).all(1).nonzero()) for row in seen]
    assert sorted(rows) == list(range(len(train["x"])))


def write_user_file(path: Path, trials: bool = False) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    shape = (5, 40) if trials else (200,)
    arrays = {
        "x": rng.normal(size=(*shape, 8)).astype(np.float32),
        "z": rng.normal(size=(*shape, 4)).astype(np.float32),
        "A": rng.normal(size=(8, 4)),
        "B": rng.normal(size=(4, 8)),
        "inputs": rng.normal(size=(*shape, 8)).astype(np.float32),
        "group_sizes": np.array([1, 3]),
    }
    if path.suffix == ".npz":
        np.savez(path, **arrays)
    else:
        with h5py.File(path, "w") as handle:
            for key, value in arrays.items():
                handle[key] = value
    return arrays


@pytest.mark.parametrize("suffix", [".npz", ".h5"])
@pytest.mark.parametrize("trials", [False, True])
def test_from_file_reads_every_key(tmp_path: Path, suffix: str, trials: bool) -> None:
    path = tmp_path / f"data{suffix}"
    arrays = write_user_file(path, trials)
    recording = load_file_recording(path)
    assert recording.x.ndim == 3 and recording.single_sequence is (not trials)
    np.testing.assert_allclose(recording.x.reshape(-1, 8), arrays["x"].reshape(-1, 8))
    np.testing.assert_allclose(recording.latents.reshape(-1, 4), arrays["z"].reshape(-1, 4))
    np.testing.assert_allclose(recording.connectivity, arrays["A"] @ arrays["B"])
    assert recording.group_sizes == [1, 3]
    datamodule = FromFileDataModule(
        path=str(path), batch_size=16, split="trials" if trials else "even_odd", val_fraction=0.2, test_fraction=0.2
    )
    datamodule.setup()
    assert "external_input" in datamodule.split_tensors("train")
    assert "latents" in datamodule.split_tensors("test")


def test_from_file_errors_name_the_file_and_key(tmp_path: Path) -> None:
    missing = tmp_path / "nothing.npz"
    with pytest.raises(FileNotFoundError, match="nothing.npz"):
        load_file_recording(missing)
    no_x = tmp_path / "no_x.npz"
    np.savez(no_x, y=np.zeros((10, 3)))
    with pytest.raises(ValueError, match=r"'x' missing; found keys \['y'\]"):
        load_file_recording(no_x)
    bad_z = tmp_path / "bad_z.npz"
    np.savez(bad_z, x=np.zeros((10, 3)), z=np.zeros((9, 2)))
    with pytest.raises(ValueError, match="bad_z.npz: 'latents' has shape"):
        load_file_recording(bad_z)
    nan = tmp_path / "nan.npz"
    values = np.zeros((10, 3))
    values[4, 1] = np.nan
    np.savez(nan, x=values)
    with pytest.raises(ValueError, match="1 NaN/Inf values"):
        load_file_recording(nan)
    pickled = tmp_path / "data.pkl"
    pickled.write_bytes(b"not read")
    with pytest.raises(ValueError, match="pickle files are never loaded"):
        load_file_recording(pickled)


def test_batch_larger_than_training_split_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "small.npz"
    np.savez(path, x=np.random.default_rng(0).normal(size=(40, 3)))
    with pytest.raises(ValueError, match="datamodule.batch_size=128.*only 18 samples"):
        FromFileDataModule(path=str(path)).setup()
