"""Bad input and untrusted files (issue 7, docs/errors.md "Inputs" and "Untrusted files").

Every case raises the project's own :class:`~facrnn.errors.DataError` whose message starts
with the file (or config key) at fault and ends with what was expected; a fuzz test feeds
hundreds of corrupted files to the loaders and lets no other exception through.
"""

from __future__ import annotations

import logging
import os
import pickle
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np
import pytest

from datamodules.convert import RestrictedUnpickler, convert
from datamodules.convert import main as convert_main
from datamodules.from_file import FromFileDataModule, load_file_recording
from datamodules.loading import read_arrays
from datamodules.monkey_m1 import MonkeyM1DataModule, load_m1_recording, load_nwb
from datamodules.mouse_voltage import MouseVoltageDataModule
from datamodules.validation import apply_nan_policy
from facrnn.errors import ConfigError, DataError, DataFileNotFoundError, FacRNNError

pytestmark = pytest.mark.robustness

ROOT = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------- file helpers


def write_arrays(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    """Write ``arrays`` as ``.npz`` (uncompressed) or HDF5, by the extension of ``path``."""
    if path.suffix == ".npz":
        np.savez(path, **arrays)
    else:
        with h5py.File(path, "w") as handle:
            for key, value in arrays.items():
                handle.create_dataset(key, data=value)
    return path


def sequence_arrays(seed: int = 0, n_bins: int = 60, n_channels: int = 6) -> dict[str, np.ndarray]:
    """A valid ``from_file`` recording: one long sequence with ground truth."""
    rng = np.random.default_rng(seed)
    return {
        "x": rng.normal(size=(n_bins, n_channels)),
        "z": rng.normal(size=(n_bins, 2)),
        "inputs": 0.1 * rng.normal(size=(n_bins, n_channels)),
        "A": rng.normal(size=(n_channels, 2)),
        "B": rng.normal(size=(2, n_channels)),
        "group_sizes": np.array([1, 1]),
    }


def trial_arrays(seed: int = 0, n_trials: int = 6, n_bins: int = 10, n_channels: int = 5) -> dict[str, np.ndarray]:
    """A valid ``from_file`` recording made of trials."""
    rng = np.random.default_rng(seed)
    return {"x": rng.normal(size=(n_trials, n_bins, n_channels)), "z": rng.normal(size=(n_trials, n_bins, 3))}


def reach_arrays(seed: int = 0, n_trials: int = 16, n_bins: int = 8, n_units: int = 7) -> dict[str, np.ndarray]:
    """Valid M1 trial arrays: counts, hand velocity, direction labels."""
    rng = np.random.default_rng(seed)
    direction = np.arange(n_trials) % 8
    speed = np.sin(np.linspace(0, np.pi, n_bins))
    angle = direction * np.pi / 4
    vel = np.stack([np.cos(angle)[:, None] * speed, np.sin(angle)[:, None] * speed], axis=-1)
    neural = rng.poisson(2.0, size=(n_trials, n_bins, n_units)).astype(np.float64)
    return {"neural": neural, "vel": vel, "direction": direction}


def from_file(path: Path, **options) -> FromFileDataModule:
    datamodule = FromFileDataModule(path=str(path), **{"batch_size": 4, **options})
    datamodule.setup()
    return datamodule


def monkey(path: Path, **options) -> MonkeyM1DataModule:
    datamodule = MonkeyM1DataModule(path=str(path), **{"batch_size": 4, **options})
    datamodule.setup()
    return datamodule


def write_nwb(path: Path, units: bool = True, behaviour: bool = True) -> Path:
    """A tiny MC_Maze-like NWB file, optionally without units or behaviour."""
    from pynwb import NWBHDF5IO, NWBFile, TimeSeries

    rng = np.random.default_rng(0)
    nwb = NWBFile(
        session_description="test", identifier="robustness", session_start_time=datetime(2020, 1, 1, tzinfo=timezone.utc)
    )
    if units:
        for _ in range(3):
            nwb.add_unit(spike_times=np.sort(rng.uniform(0, 10, size=200)))
    nwb.add_trial_column("move_onset_time", "movement onset")
    for start in range(4):
        nwb.add_trial(start_time=2.0 * start, stop_time=2.0 * start + 2.0, move_onset_time=2.0 * start + 1.0)
    if behaviour:
        stamps = np.arange(0, 10, 0.001)
        module = nwb.create_processing_module("behavior", "behaviour")
        module.add(TimeSeries(name="hand_vel", data=rng.normal(size=(stamps.size, 2)), timestamps=stamps, unit="m/s"))
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)
    return path


def assert_message(error: BaseException, path: Path | str, *parts: str, ends: str | None = None) -> str:
    """The message starts with ``path``, contains ``parts`` and ends with ``ends``; one or two lines."""
    message = str(error)
    assert message.startswith(str(path)), message
    for part in parts:
        assert part in message, (part, message)
    if ends is not None:
        assert message.rstrip().endswith(ends), (ends, message)
    assert 1 <= len(message.splitlines()) <= 2, message
    return message


# ---------------------------------------------------------------------- files and formats


def test_missing_file_is_a_data_file_not_found_error(tmp_path: Path) -> None:
    path = tmp_path / "nothing.npz"
    with pytest.raises(DataFileNotFoundError) as caught:
        from_file(path)
    assert isinstance(caught.value, FileNotFoundError)
    assert_message(caught.value, path, "file not found", ends="expected an existing .npz or .h5 or .hdf5 file")
    nwb = tmp_path / "missing.nwb"
    with pytest.raises(DataFileNotFoundError) as caught:
        load_m1_recording(nwb)
    assert_message(caught.value, nwb, "file not found", ends="expected an existing .nwb file")


def test_unreadable_file_and_unsupported_extension(tmp_path: Path) -> None:
    directory = tmp_path / "data.h5"
    directory.mkdir()
    with pytest.raises(DataError) as caught:
        from_file(directory)
    assert_message(caught.value, directory, "not a regular file", ends="expected a readable .npz or .h5 or .hdf5 file")
    csv = tmp_path / "data.csv"
    csv.write_text("1,2,3\n")
    with pytest.raises(DataError) as caught:
        from_file(csv)
    assert_message(caught.value, csv, "unsupported extension '.csv'", ends="expected one of ['.npz', '.h5', '.hdf5']")
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    with pytest.raises(DataError) as caught:
        from_file(empty)
    assert_message(caught.value, empty, "the file is empty (0 bytes)", ends="expected a complete .npz or .h5 or .hdf5 file")


@pytest.mark.parametrize("damage", ["truncated", "corrupted"])
@pytest.mark.parametrize("suffix", [".h5", ".npz"])
def test_truncated_or_corrupted_file(tmp_path: Path, damage: str, suffix: str) -> None:
    path = write_arrays(tmp_path / f"data{suffix}", sequence_arrays())
    raw = bytearray(path.read_bytes())
    if damage == "truncated":
        raw = raw[: len(raw) // 3]
    else:
        raw[:64] = bytes(range(64))  # the HDF5 superblock / the zip local header
    path.write_bytes(bytes(raw))
    kind = "HDF5" if suffix == ".h5" else ".npz"
    with pytest.raises(DataError) as caught:
        from_file(path)
    assert_message(caught.value, path, f"cannot be read as {kind} (", ends=f"expected a valid, complete {kind} file")


def test_truncated_nwb_file(tmp_path: Path) -> None:
    path = write_nwb(tmp_path / "session.nwb")
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(DataError) as caught:
        load_m1_recording(path)
    assert_message(caught.value, path, "cannot be read as NWB (", ends="expected a valid, complete NWB file")


def test_fuzz_corrupted_nwb_files(tmp_path: Path) -> None:
    """Random byte flips and truncations of one NWB file: loaded or a DataError, nothing else."""
    original = write_nwb(tmp_path / "session.nwb").read_bytes()
    rng = np.random.default_rng(7)
    escaped, refused = [], 0
    for index in range(12):
        raw = bytearray(original)
        if index % 3 == 0:
            raw = raw[: int(rng.integers(len(raw)))]
        else:
            for position in rng.integers(0, len(raw), size=int(rng.integers(1, 40))):
                raw[position] = int(rng.integers(256))
        path = tmp_path / f"variant{index}.nwb"
        path.write_bytes(bytes(raw))
        try:
            MonkeyM1DataModule(path=str(path), batch_size=2, window_ms=[0, 200]).setup()
        except FacRNNError as error:
            refused += 1
            if not str(error).startswith(str(path)):
                escaped.append(f"{path.name}: {error}")
        except Exception as error:  # noqa: BLE001 - the point of the test
            escaped.append(f"{path.name}: {type(error).__name__}: {error}")
    assert not escaped, "\n".join(escaped)
    assert refused >= 4  # every truncation at least


def test_nwb_without_units_or_behaviour(tmp_path: Path) -> None:
    no_units = write_nwb(tmp_path / "no_units.nwb", units=False)
    with pytest.raises(DataError) as caught:
        load_nwb(no_units, window_ms=(0, 200))
    assert_message(
        caught.value, no_units, "no 'units' table", ends="expected sorted units with their spike times (NWB ecephys)"
    )
    no_behaviour = write_nwb(tmp_path / "no_behaviour.nwb", behaviour=False)
    with pytest.raises(DataError) as caught:
        load_nwb(no_behaviour, window_ms=(0, 200))
    assert_message(
        caught.value,
        no_behaviour,
        "no behaviour time series 'hand_vel'; found []",
        ends="expected one named by datamodule.behaviour_key (null: no behaviour)",
    )
    data = load_nwb(no_behaviour, window_ms=(0, 200), behaviour_key=None)  # behaviour is optional when asked
    assert data.neural.shape == (4, 10, 3) and data.velocity is None


def test_hdf5_group_instead_of_dataset(tmp_path: Path) -> None:
    path = tmp_path / "group.h5"
    with h5py.File(path, "w") as handle:
        handle.create_group("x").create_dataset("values", data=np.ones((10, 2)))
    with pytest.raises(DataError) as caught:
        from_file(path)
    assert_message(caught.value, path, "'x' is an HDF5 group, not a dataset", ends="expected an array")


# ------------------------------------------------------------------------------ keys and shapes


@pytest.mark.parametrize(
    ("loader", "arrays", "parts", "ends"),
    [
        (
            from_file,
            {"y": np.zeros((10, 3))},
            ["required key 'x' missing; found keys ['y']"],
            "expected 'x' and optionally ['z', 'A', 'B', 'inputs', 'group_sizes']",
        ),
        (
            monkey,
            {"neural": np.ones((4, 5, 3))},
            ["'neural' without 'vel'; found keys ['neural']"],
            "expected hand velocity 'vel' (trials, bins, 2) too",
        ),
        (monkey, {"spikes": np.ones((4, 5, 3))}, ["found keys ['spikes']"], "'train_spikes_heldout', 'train_behavior')"),
    ],
    ids=["from_file-x", "monkey-vel", "monkey-any"],
)
def test_required_key_missing_lists_found_and_expected(
    tmp_path: Path, loader: Callable, arrays: dict, parts: list[str], ends: str
) -> None:
    path = write_arrays(tmp_path / "keys.npz", arrays)
    with pytest.raises(DataError) as caught:
        loader(path)
    assert_message(caught.value, path, *parts, ends=ends)


@pytest.mark.parametrize(
    ("loader", "arrays", "parts", "ends"),
    [
        (
            from_file,
            {"x": np.zeros(10)},
            ["'x' has 1 dimensions, shape (10,)"],
            "expected (time, neurons) or (trials, time, neurons)",
        ),
        (
            from_file,
            {"x": np.zeros((2, 3, 4, 5))},
            ["'x' has 4 dimensions"],
            "expected (time, neurons) or (trials, time, neurons)",
        ),
        (
            monkey,
            {"neural": np.ones((5, 3)), "vel": np.ones((5, 3, 2))},
            ["'neural' has 2 dimensions, shape (5, 3)"],
            "expected (trials, bins, channels)",
        ),
    ],
    ids=["x-1d", "x-4d", "neural-2d"],
)
def test_wrong_number_of_dimensions(tmp_path: Path, loader: Callable, arrays: dict, parts: list[str], ends: str) -> None:
    path = write_arrays(tmp_path / "dims.h5", arrays)
    with pytest.raises(DataError) as caught:
        loader(path)
    assert_message(caught.value, path, *parts, ends=ends)


def test_time_and_channel_axes_apparently_swapped_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write_arrays(tmp_path / "swapped.npz", {"x": np.random.default_rng(0).normal(size=(8, 40))})
    with caplog.at_level(logging.WARNING, logger="datamodules"):
        datamodule = from_file(path, batch_size=2)
    assert datamodule.recording.x.shape == (1, 8, 40)  # a warning, not an error
    warnings = [record.getMessage() for record in caplog.records if "axes swapped" in record.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith(str(path)) and "shape (1, 8, 40)" in warnings[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="datamodules"):
        from_file(write_arrays(tmp_path / "fine.npz", {"x": np.random.default_rng(0).normal(size=(40, 8))}))
    assert not [record for record in caplog.records if "axes swapped" in record.getMessage()]


@pytest.mark.parametrize(
    ("name", "arrays", "parts"),
    [
        (
            "x-z",
            {"x": np.ones((10, 3)), "z": np.ones((9, 2))},
            ["'latents' has shape (9, 2) (file key 'z') but 'x' has shape (10, 3)"],
        ),
        (
            "x-inputs",
            {"x": np.ones((10, 3)), "inputs": np.ones((10, 4))},
            ["'inputs' has shape (1, 10, 4) but 'x' has shape (1, 10, 3)"],
        ),
        (
            "x-z-trials",
            {"x": np.ones((4, 10, 3)), "z": np.ones((5, 10, 2))},
            ["'latents' has shape (5, 10, 2) (file key 'z') but 'x' has shape (4, 10, 3)"],
        ),
        (
            "neural-vel",
            {"neural": np.ones((4, 10, 3)), "vel": np.ones((4, 9, 2))},
            ["velocity has shape (4, 9, 2) but the neural data have shape (4, 10, 3)"],
        ),
    ],
)
def test_shapes_that_disagree_name_both_arrays(tmp_path: Path, name: str, arrays: dict, parts: list[str]) -> None:
    path = write_arrays(tmp_path / f"{name}.npz", arrays)
    loader = monkey if "neural" in arrays else from_file
    with pytest.raises(DataError) as caught:
        loader(path)
    assert_message(caught.value, path, *parts, ends="in both")


@pytest.mark.parametrize("key", ["mask", "latents"])
def test_imaging_shapes_that_disagree_name_both_arrays(tmp_path: Path, key: str) -> None:
    rng = np.random.default_rng(0)
    arrays = {"movie": rng.normal(size=(50, 4, 5)), "mask": np.ones((4, 5), dtype=bool)}
    if key == "mask":
        arrays["mask"] = np.ones((5, 4), dtype=bool)
        parts, ends = ["'mask' has shape (5, 4) but the 'movie' frames have shape (4, 5)"], "expected the frame shape (4, 5)"
    else:
        arrays["latents"] = rng.normal(size=(49, 2))
        parts, ends = ["'latents' has shape (49, 2) but 'traces' has shape (50, 20)"], "expected 50 frames in both"
    path = write_arrays(tmp_path / "imaging.h5", arrays)
    with pytest.raises(DataError) as caught:
        MouseVoltageDataModule(path=str(path), batch_size=4).setup()
    assert_message(caught.value, path, *parts, ends=ends)


# ------------------------------------------------------------------------------ values


@pytest.mark.parametrize(
    ("loader", "arrays", "parts"),
    [
        (from_file, None, ["'x' holds 1 NaN/Inf values (1 NaN, 0 Inf; first at trial 0, bin 4, channel 1)"]),
        (monkey, None, ["'vel' holds 2 NaN/Inf values (0 NaN, 2 Inf; first at trial 3, bin 2, channel 1)"]),
    ],
    ids=["from_file-nan", "monkey-inf"],
)
def test_nan_or_inf_names_how_many_and_where(tmp_path: Path, loader: Callable, arrays: None, parts: list[str]) -> None:
    if loader is from_file:
        arrays = sequence_arrays()
        arrays["x"][4, 1] = np.nan
    else:
        arrays = reach_arrays()
        arrays["vel"][3, 2, 1] = np.inf
        arrays["vel"][5, 0, 0] = -np.inf
    path = write_arrays(tmp_path / "nan.npz", arrays)
    with pytest.raises(DataError) as caught:
        loader(path)
    assert_message(caught.value, path, *parts, ends="expected finite values, or datamodule.nan_policy=drop|interpolate")


def test_nan_policy_drop(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    arrays = sequence_arrays()
    arrays["x"][[5, 17], [1, 2]] = np.nan
    arrays["z"][30, 0] = np.inf
    path = write_arrays(tmp_path / "gaps.h5", arrays)
    with caplog.at_level(logging.WARNING, logger="datamodules"):
        recording = from_file(path, nan_policy="drop").recording
    keep = np.setdiff1d(np.arange(60), [5, 17, 30])
    np.testing.assert_allclose(recording.x[0], arrays["x"][keep], rtol=1e-6)
    np.testing.assert_allclose(recording.latents[0], arrays["z"][keep], rtol=1e-6)
    assert any("nan_policy=drop removed 3 of 60 bins" in record.getMessage() for record in caplog.records)

    reach = reach_arrays()
    reach["neural"][2, 3, 4] = np.nan
    reach["vel"][9, 0, 0] = np.nan
    path = write_arrays(tmp_path / "reach.npz", reach)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="datamodules"):
        recording = monkey(path, nan_policy="drop", drop_silent_units=False, scaling="none").recording
    kept = np.setdiff1d(np.arange(16), [2, 9])
    np.testing.assert_allclose(recording.x, reach["neural"][kept], rtol=1e-6)
    np.testing.assert_array_equal(recording.extras["direction"], reach["direction"][kept])
    assert any("nan_policy=drop removed 2 of 16 trials" in record.getMessage() for record in caplog.records)


def test_nan_policy_interpolate(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    arrays = sequence_arrays()
    arrays["x"][10:13, 2] = np.nan  # interior gap: linear between bins 9 and 13
    arrays["x"][0, 4] = np.nan  # edge: the first finite value
    path = write_arrays(tmp_path / "gaps.npz", arrays)
    with caplog.at_level(logging.WARNING, logger="datamodules"):
        x = from_file(path, nan_policy="interpolate").recording.x[0]
    expected = arrays["x"][9, 2] + (arrays["x"][13, 2] - arrays["x"][9, 2]) * np.array([1, 2, 3]) / 4
    np.testing.assert_allclose(x[10:13, 2], expected, rtol=1e-5)
    assert x[0, 4] == pytest.approx(arrays["x"][1, 4], rel=1e-6)
    assert np.isfinite(x).all() and x.shape == (60, 6)
    assert any("nan_policy=interpolate filled 4 NaN/Inf values" in record.getMessage() for record in caplog.records)
    with pytest.raises(DataError, match="no finite value to interpolate from"):
        apply_nan_policy({"x": np.full((1, 5, 2), np.nan)}, "interpolate", "all_nan.npz", single_sequence=True)


def test_unknown_nan_policy_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as caught:
        FromFileDataModule(path="data.npz", nan_policy="ignore")
    assert_message(caught.value, "datamodule.nan_policy='ignore'", ends="expected one of ['error', 'drop', 'interpolate']")


def test_zero_variance_channels_dropped_or_all_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    arrays = sequence_arrays()
    arrays["x"][:, [1, 4]] = 3.0
    path = write_arrays(tmp_path / "flat.npz", arrays)
    with caplog.at_level(logging.WARNING, logger="datamodules"):
        recording = from_file(path).recording
    kept = [0, 2, 3, 5]
    np.testing.assert_allclose(recording.x[0], arrays["x"][:, kept], rtol=1e-6)
    np.testing.assert_allclose(recording.A, arrays["A"][kept])  # ground truth follows the channels
    np.testing.assert_allclose(recording.B, arrays["B"][:, kept])
    assert recording.external_input.shape == (1, 60, 4)
    assert any("dropped 2 zero-variance channels of 6" in record.getMessage() for record in caplog.records)
    flat = write_arrays(tmp_path / "all_flat.npz", {"x": np.ones((20, 3))})
    with pytest.raises(DataError) as caught:
        from_file(flat)
    assert_message(
        caught.value,
        flat,
        "all 3 channels of 'x' have zero variance",
        ends="expected at least one channel whose activity varies",
    )


@pytest.mark.parametrize(
    ("suffix", "value", "parts", "ends"),
    [
        (
            ".npz",
            np.array([["a", "b"]] * 10),
            ["'x' has dtype <U1 (not numbers)"],
            "expected real numbers (float, int or bool)",
        ),
        (".h5", np.ones((10, 2), dtype=np.complex64), ["'x' has complex dtype complex64"], "expected real numbers"),
        (
            ".h5",
            np.array([[b"ab", b"cd"]] * 10),
            ["'x' has dtype |S2 (not numbers)"],
            "expected real numbers (float, int or bool)",
        ),
    ],
    ids=["npz-str", "h5-complex", "h5-bytes"],
)
def test_non_numeric_dtype(tmp_path: Path, suffix: str, value: np.ndarray, parts: list[str], ends: str) -> None:
    path = write_arrays(tmp_path / f"dtype{suffix}", {"x": value})
    with pytest.raises(DataError) as caught:
        from_file(path)
    assert_message(caught.value, path, *parts, ends=ends)


def test_bool_and_integer_data_are_numbers(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = write_arrays(tmp_path / "ints.h5", {"x": rng.integers(0, 5, size=(30, 4)).astype(np.int16)})
    assert from_file(path).recording.x.dtype == np.float32
    spikes = write_arrays(tmp_path / "bool.npz", {"x": rng.random((30, 4)) > 0.5})
    assert from_file(spikes).recording.x.max() == 1.0


@pytest.mark.parametrize(
    ("x", "parts", "ends"),
    [
        (
            np.zeros((0, 5)),
            ["'x' is empty (shape (0, 5))"],
            "expected at least one value along every axis of (time, neurons) or (trials, time, neurons)",
        ),
        (np.zeros((3, 0, 4)), ["'x' is empty (shape (3, 0, 4))"], "(trials, time, neurons)"),
        (np.ones((3, 1, 4)), ["trials have 1 time bin(s)"], "expected at least 2 (the encoder reads each bin's previous bin)"),
        (np.ones((1, 4)), ["trials have 1 time bin(s)"], "expected at least 2 (the encoder reads each bin's previous bin)"),
    ],
    ids=["empty", "trials-of-length-0", "trials-of-length-1", "one-bin-recording"],
)
def test_empty_arrays_and_too_short_trials(tmp_path: Path, x: np.ndarray, parts: list[str], ends: str) -> None:
    path = write_arrays(tmp_path / "short.npz", {"x": x})
    with pytest.raises(DataError) as caught:
        from_file(path)
    assert_message(caught.value, path, *parts, ends=ends)


def test_training_split_smaller_than_the_batch(tmp_path: Path) -> None:
    path = write_arrays(tmp_path / "small.npz", {"x": np.random.default_rng(0).normal(size=(40, 3))})
    with pytest.raises(DataError) as caught:
        from_file(path, batch_size=19)
    assert_message(
        caught.value,
        "datamodule.batch_size=19",
        f"the training split of {path} has only 18 samples (n_train=18)",  # 20 even bins, 2 validate
        ends="expected datamodule.batch_size <= 18, at least one full batch per epoch",
    )
    datamodule = from_file(path, batch_size=18)  # exactly one batch is fine
    assert datamodule.n_train == 18


def test_ground_truth_labels_must_be_whole_numbers(tmp_path: Path) -> None:
    arrays = sequence_arrays()
    arrays["group_sizes"] = np.array([1.0, np.nan])
    path = write_arrays(tmp_path / "labels.npz", arrays)
    with pytest.raises(DataError) as caught:
        from_file(path)
    assert_message(caught.value, path, "'group_sizes' holds", ends="expected whole numbers >= 1")
    reach = reach_arrays()
    reach["direction"] = reach["direction"] + 0.5
    path = write_arrays(tmp_path / "direction.npz", reach)
    with pytest.raises(DataError) as caught:
        monkey(path)
    assert_message(caught.value, path, "'direction' holds", ends="expected whole numbers >= 0")


# ------------------------------------------------------------------------------ untrusted files


class SystemPayload:
    """Unpickling this would run a shell command creating the sentinel file."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


class EvalPayload(SystemPayload):
    def __reduce__(self):
        return (eval, (f"open({str(self.sentinel)!r}, 'w').write('ran')",))


class ExecPayload(SystemPayload):
    def __reduce__(self):
        return (exec, (f"open({str(self.sentinel)!r}, 'w').write('ran')",))


class SubprocessPayload(SystemPayload):
    def __reduce__(self):
        return (subprocess.call, (["touch", str(self.sentinel)],))


def test_pickle_paths_are_refused_with_a_pointer_to_the_converter(tmp_path: Path) -> None:
    path = tmp_path / "session.pkl"
    path.write_bytes(pickle.dumps({"x": np.ones((10, 2))}))
    with pytest.raises(DataError) as caught:
        from_file(path)
    assert_message(
        caught.value,
        path,
        "pickle files are never loaded (they can run code)",
        ends=f"e.g. from `python -m datamodules.convert {path} {path.with_suffix('.h5')}`",
    )
    with pytest.raises(DataError, match="python -m datamodules.convert"):
        load_m1_recording(path)


def test_converter_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    content = {
        "x": rng.normal(size=(30, 4)),
        "z": rng.normal(size=(30, 2)).astype(np.float32),
        "group_sizes": [1, 1],
        "meta": {"fs": 100.0, "subject": "M", "count": np.int64(3), "flags": np.array([True, False])},
        "trials": [rng.normal(size=3), "left"],
    }
    source = tmp_path / "colleague.pkl"
    source.write_bytes(pickle.dumps(content, protocol=2))  # old protocol: bytes via _codecs.encode
    out = tmp_path / "colleague.h5"
    assert convert(source, out) == ["x", "z", "group_sizes", "meta", "trials"]
    arrays = read_arrays(out, ("x", "z", "group_sizes"))
    np.testing.assert_array_equal(arrays["x"], content["x"])
    np.testing.assert_array_equal(arrays["z"], content["z"])
    assert arrays["z"].dtype == np.float32 and arrays["group_sizes"].tolist() == [1, 1]
    with h5py.File(out, "r") as handle:
        assert handle["meta/fs"][()] == 100.0 and handle["meta/subject"][()].decode() == "M"
        np.testing.assert_array_equal(handle["trials/0"][()], content["trials"][0])
    recording = load_file_recording(out)
    assert recording.group_sizes == [1, 1] and recording.latents.shape == (1, 30, 2)
    with pytest.raises(DataError, match="already exists; expected a new file name"):
        convert(source, out)


@pytest.mark.parametrize("payload", [SystemPayload, EvalPayload, ExecPayload, SubprocessPayload])
def test_converter_refuses_code_execution_without_running_it(tmp_path: Path, payload: type) -> None:
    sentinel = tmp_path / "SENTINEL"
    source = tmp_path / "evil.pkl"
    source.write_bytes(pickle.dumps({"x": np.ones(3), "payload": payload(sentinel)}))
    with pytest.raises(DataError) as caught:
        convert(source, tmp_path / "evil.h5")
    function = {
        SystemPayload: "posix.system",
        EvalPayload: "builtins.eval",
        ExecPayload: "builtins.exec",
        SubprocessPayload: "subprocess.call",
    }[payload]
    assert_message(
        caught.value, source, f"refused to load global {function}", ends="expected only numpy arrays and plain containers"
    )
    assert not sentinel.exists()
    assert not (tmp_path / "evil.h5").exists()


def test_restricted_unpickler_refuses_other_globals(tmp_path: Path) -> None:
    import collections
    import io

    for value, name in [
        (collections.Counter("ab"), "collections.Counter"),
        (getattr, "builtins.getattr"),
        (Path("x"), "pathlib"),
    ]:
        with pytest.raises(DataError, match=f"refused to load global {name}"):
            RestrictedUnpickler(io.BytesIO(pickle.dumps(value)), "payload.pkl").load()


def test_converter_command_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    source = tmp_path / "ok.pkl"
    source.write_bytes(pickle.dumps({"x": np.arange(6.0).reshape(3, 2)}))
    assert convert_main([str(source), str(tmp_path / "ok.h5")]) == 0
    assert "wrote keys ['x']" in capsys.readouterr().out
    assert convert_main([str(tmp_path / "absent.pkl"), str(tmp_path / "absent.h5")]) == 1
    assert "absent.pkl: file not found" in capsys.readouterr().err
    truncated = tmp_path / "truncated.pkl"
    truncated.write_bytes(source.read_bytes()[:20])
    assert convert_main([str(truncated), str(tmp_path / "truncated.h5")]) == 1
    assert "truncated.pkl: cannot be unpickled" in capsys.readouterr().err
    # the real entry point, in a fresh interpreter: refused, no traceback, nothing ran
    sentinel = tmp_path / "SENTINEL"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"x": SystemPayload(sentinel)}))
    result = subprocess.run(
        [sys.executable, "-m", "datamodules.convert", str(evil), str(tmp_path / "evil.h5")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert f"{evil}: refused to load global posix.system" in result.stderr and "Traceback" not in result.stderr
    assert not sentinel.exists()


# ------------------------------------------------------------------------------ fuzz

N_FUZZ = 240
NUMERIC_DTYPES = [np.int8, np.int32, np.uint16, np.int64, np.float16, np.float32, bool]
ODD_DTYPES = [np.complex64, "U3", "S2", object]


def _mutate_arrays(arrays: dict[str, np.ndarray], rng: np.random.Generator, suffix: str) -> list[str]:
    """Apply 1-3 random mutations in place; return their descriptions."""
    done = []
    for _ in range(int(rng.integers(1, 4))):
        if not arrays:
            break
        key = str(rng.choice(sorted(arrays)))
        value = np.asarray(arrays[key])
        kind = str(rng.choice(["dtype", "odd_dtype", "nan", "inf", "ndim", "shape", "rename", "drop", "huge", "constant"]))
        if kind == "dtype":
            dtype = NUMERIC_DTYPES[int(rng.integers(len(NUMERIC_DTYPES)))]
            with np.errstate(all="ignore"):
                arrays[key] = value.astype(dtype)
        elif kind == "odd_dtype":
            dtype = ODD_DTYPES[int(rng.integers(len(ODD_DTYPES)))]
            if dtype is object and suffix == ".h5":
                arrays[key] = (
                    np.array([str(item) for item in value.ravel()], dtype=h5py.string_dtype()).reshape(value.shape)
                    if value.size
                    else value
                )
            else:
                arrays[key] = value.astype(dtype)
        elif kind in ("nan", "inf") and value.size and value.dtype.kind == "f":
            value = value.copy()
            flat = value.reshape(-1)
            flat[rng.integers(value.size, size=int(rng.integers(1, 4)))] = np.nan if kind == "nan" else -np.inf
            arrays[key] = value
        elif kind == "ndim":
            choice = int(rng.integers(4))
            arrays[key] = [
                value.reshape(-1),
                value[None],
                value.reshape(()) if value.size == 1 else value.ravel()[:1].reshape(()),
                value[..., None],
            ][choice]
        elif kind == "shape" and value.ndim:
            axis = int(rng.integers(value.ndim))
            arrays[key] = (
                np.take(value, np.arange(int(rng.integers(0, value.shape[axis] + 2)) % max(value.shape[axis], 1)), axis=axis)
                if value.shape[axis]
                else value
            )
        elif kind == "rename":
            arrays[key + "_renamed" if rng.random() < 0.5 else key.upper()] = arrays.pop(key)
        elif kind == "drop":
            arrays.pop(key)
        elif kind == "huge" and value.dtype.kind == "f":
            with np.errstate(over="ignore"):
                arrays[key] = value.astype(np.float64) * 1e300
        elif kind == "constant":
            arrays[key] = np.zeros_like(value)
        done.append(f"{kind}:{key}")
    return done


def _damage_bytes(path: Path, rng: np.random.Generator) -> str:
    raw = bytearray(path.read_bytes())
    if rng.random() < 0.5:
        cut = int(rng.integers(0, len(raw)))
        path.write_bytes(bytes(raw[:cut]))
        return f"truncate:{cut}/{len(raw)}"
    positions = rng.integers(0, len(raw), size=int(rng.integers(1, 20)))
    for position in positions:
        raw[position] = int(rng.integers(256))
    path.write_bytes(bytes(raw))
    return f"flip:{len(positions)}"


def _write_variant(path: Path, arrays: dict[str, np.ndarray]) -> None:
    if path.suffix == ".npz":
        np.savez(path, **arrays)  # object arrays are pickled inside; the loader must refuse them
    else:
        with h5py.File(path, "w") as handle:
            for key, value in arrays.items():
                handle.create_dataset(key, data=value)


def test_fuzz_corrupted_inputs_load_or_raise_a_data_error(tmp_path: Path) -> None:
    rng = np.random.default_rng(20260507)
    bases = [
        ("from_file", "sequence", sequence_arrays),
        ("from_file", "trials", trial_arrays),
        ("monkey_m1", "reach", reach_arrays),
    ]
    outcomes = {"loaded": 0, "refused": 0}
    escaped = []
    for index in range(N_FUZZ):
        source, name, make = bases[index % len(bases)]
        suffix = (".npz", ".h5")[(index // len(bases)) % 2]
        arrays = make(seed=index)
        path = tmp_path / f"variant{index:03d}_{name}{suffix}"
        try:
            mutations = _mutate_arrays(arrays, rng, suffix) if rng.random() < 0.75 else []
            _write_variant(path, arrays)
        except (TypeError, ValueError):
            continue  # a variant that numpy / h5py cannot even write
        if not mutations or rng.random() < 0.3:
            mutations.append(_damage_bytes(path, rng))
        variant = f"{path.name} [{', '.join(mutations)}]"
        try:
            datamodule = (from_file if source == "from_file" else monkey)(path, batch_size=2)
        except FacRNNError as error:
            message = str(error)
            if not message.strip() or not (message.startswith(str(path)) or message.startswith("datamodule.")):
                escaped.append(f"{variant}: {type(error).__name__} without a proper message: {message!r}")
            outcomes["refused"] += 1
            continue
        except Exception as error:  # noqa: BLE001 - the point of the test
            escaped.append(f"{variant}: {type(error).__name__}: {error}")
            continue
        recording = datamodule.recording
        train = datamodule.split_tensors("train")
        if not (
            recording.x.ndim == 3
            and recording.x.shape[1] >= 2
            and np.isfinite(recording.x).all()
            and np.isfinite(train["encoder_input"].numpy()).all()
            and datamodule.n_train >= 2
        ):
            escaped.append(f"{variant}: loaded but not sane: x {recording.x.shape}")
        outcomes["loaded"] += 1
    assert not escaped, "\n".join(escaped)
    assert sum(outcomes.values()) >= 200, outcomes
    assert outcomes["loaded"] >= 20 and outcomes["refused"] >= 100, outcomes  # both paths exercised
