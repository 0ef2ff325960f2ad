"""Monkey M1 data: the real bundled session, trial-array files, NLB tensors and NWB files
written here with h5py / pynwb in the public layouts (docs/FORMATS.md)."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np
import pytest

from datamodules.base import trial_split
from datamodules.monkey_m1 import (
    BUNDLED_SESSION,
    MonkeyM1DataModule,
    bin_spike_times,
    load_m1_recording,
    load_nwb,
    preprocess,
    reach_directions,
)

# ----------------------------------------------------------------------------- the real session


def test_bundled_session_with_the_authors_preprocessing() -> None:
    with np.load(BUNDLED_SESSION) as raw:
        neural, vel = raw["neural"], raw["vel"]
    assert neural.shape == (168, 14, 187)
    recording = load_m1_recording()  # path None = the bundled session
    assert recording.x.shape == (168, 14, 154)  # 33 silent units dropped
    assert recording.x.dtype == np.float32
    assert recording.x.min() == 0.0 and recording.x.max() == pytest.approx(1.0)
    kept = recording.extras["units_kept"]
    np.testing.assert_allclose(recording.x, neural[..., kept] / neural.max(), rtol=1e-6)
    np.testing.assert_array_equal(recording.behaviour, vel)
    assert np.bincount(recording.extras["direction"]).tolist() == [21] * 8
    # trials of one direction reach the same way: mean final position angles 45 degrees apart
    final = vel.sum(axis=1)
    angles = np.array([np.arctan2(*final[recording.extras["direction"] == d].mean(0)[::-1]) for d in range(8)])
    offset = np.angle(np.exp(1j * (angles - np.arange(8) * np.pi / 4)))  # wrapped to (-pi, pi]
    assert np.all(np.abs(np.degrees(offset)) < 15.0)


def test_preprocessing_options_on_the_real_session() -> None:
    assert load_m1_recording(drop_silent_units=False).x.shape == (168, 14, 187)
    zscored = load_m1_recording(scaling="zscore").x.reshape(-1, 154)
    np.testing.assert_allclose(zscored.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(zscored.std(0), 1, atol=1e-4)
    with pytest.raises(ValueError, match="drop_silent_units=true"):
        load_m1_recording(drop_silent_units=False, scaling="zscore")
    with pytest.raises(ValueError, match="datamodule.scaling='log'"):
        preprocess(np.ones((2, 3, 4)), scaling="log")


def test_trial_split_is_stratified_by_direction() -> None:
    datamodule = MonkeyM1DataModule(split="trials", val_fraction=0.1, test_fraction=0.1, split_seed=3)
    datamodule.setup()
    direction = datamodule.recording.extras["direction"]
    seen = []
    for name, per_direction in (("train", 17), ("val", 2), ("test", 2)):
        tensors = datamodule.split_tensors(name)
        trials = np.unique(tensors["trial"].numpy())
        assert np.bincount(direction[trials], minlength=8).tolist() == [per_direction] * 8
        assert len(tensors["x"]) == len(trials) * 14  # whole trials
        seen.append(trials)
    assert sorted(np.concatenate(seen).tolist()) == list(range(168))


def test_all_split_is_the_authors_protocol() -> None:
    datamodule = MonkeyM1DataModule(split="all")
    datamodule.setup()
    assert datamodule.n_train == 168 * 14
    assert len(datamodule.split_tensors("test")["behaviour"]) == 168 * 14


def test_unstratified_trial_split_is_unchanged() -> None:
    groups = trial_split(50, 0.2, 0.1, seed=7)
    order = np.random.default_rng(7).permutation(50)  # the previous implementation
    np.testing.assert_array_equal(groups["test"], np.sort(order[:5]))
    np.testing.assert_array_equal(groups["val"], np.sort(order[5:15]))
    assert [len(trial_split(3, 0.1, 0.1, seed=0)[name]) for name in ("train", "val", "test")] == [1, 1, 1]
    with pytest.raises(ValueError, match="at least one trial in each split"):
        trial_split(2, 0.1, 0.1, seed=0)


def test_reach_directions_from_final_position() -> None:
    degrees = np.array([0, 45, 90, 135, 180, 225, 270, 315, 22.4, 22.6, 359])
    radians = np.radians(degrees)
    velocity = np.stack([np.cos(radians), np.sin(radians)], axis=-1)[:, None, :] * np.ones((1, 5, 1))
    assert reach_directions(velocity).tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 0]
    radians = np.radians([0, 44, 46, 90, 180, 270, 316])
    velocity = np.stack([np.cos(radians), np.sin(radians)], axis=-1)[:, None, :]
    assert reach_directions(velocity, n_directions=4).tolist() == [0, 0, 1, 1, 2, 3, 0]


# ----------------------------------------------------------------------------- trial-array files


def reach_arrays(n_trials: int = 24, n_bins: int = 10, n_units: int = 37, seed: int = 0) -> dict[str, np.ndarray]:
    """Poisson counts whose rates follow the hand velocity, 8 directions."""
    rng = np.random.default_rng(seed)
    direction = np.arange(n_trials) % 8
    angle = direction * np.pi / 4
    speed = np.sin(np.linspace(0, np.pi, n_bins))
    vel = np.stack([np.cos(angle)[:, None] * speed, np.sin(angle)[:, None] * speed], axis=-1)
    tuning = rng.normal(size=(2, n_units))
    rates = np.exp(0.5 + vel @ tuning)
    neural = rng.poisson(rates).astype(np.float32)
    neural[..., 0] = 0.0  # one silent unit
    return {"neural": neural, "vel": vel.astype(np.float32), "direction": direction}


@pytest.mark.parametrize("suffix", [".npz", ".h5"])
def test_trial_arrays_with_another_unit_count(tmp_path: Path, suffix: str) -> None:
    arrays = reach_arrays()
    arrays["direction"] = (arrays["direction"] + 1) % 8  # given labels win over computed ones
    path = tmp_path / f"session{suffix}"
    if suffix == ".npz":
        np.savez(path, **arrays)
    else:
        with h5py.File(path, "w") as handle:
            for key, value in arrays.items():
                handle.create_dataset(key, data=value, compression="gzip")
    recording = load_m1_recording(path)
    assert recording.x.shape == (24, 10, 36)
    np.testing.assert_array_equal(recording.extras["direction"], arrays["direction"])
    np.testing.assert_allclose(recording.behaviour, arrays["vel"])


def test_trial_array_errors_name_the_file(tmp_path: Path) -> None:
    no_vel = tmp_path / "no_vel.npz"
    np.savez(no_vel, neural=np.ones((2, 3, 4)))
    with pytest.raises(ValueError, match="no_vel.npz: 'neural' without 'vel'"):
        load_m1_recording(no_vel)
    unknown = tmp_path / "unknown.h5"
    with h5py.File(unknown, "w") as handle:
        handle["spikes"] = np.ones((2, 3, 4))
    with pytest.raises(ValueError, match=r"found keys \['spikes'\]; expected trial arrays"):
        load_m1_recording(unknown)
    bad_direction = tmp_path / "bad_direction.npz"
    np.savez(bad_direction, neural=np.ones((2, 3, 4)), vel=np.ones((2, 3, 2)), direction=np.zeros(3))
    with pytest.raises(ValueError, match="'direction' has shape"):
        load_m1_recording(bad_direction)
    bad_vel = tmp_path / "bad_vel.npz"
    np.savez(bad_vel, neural=np.ones((2, 3, 4)), vel=np.ones((2, 4, 2)))
    with pytest.raises(ValueError, match="velocity has shape"):
        load_m1_recording(bad_vel)


# ----------------------------------------------------------------------------- NLB tensors


def test_nlb_tensor_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    heldin = rng.poisson(1.0, size=(6, 35, 5)).astype(np.float64)
    heldout = rng.poisson(1.0, size=(6, 35, 3)).astype(np.float64)
    behaviour = rng.normal(size=(6, 35, 2))
    path = tmp_path / "mc_maze_small_20_train.h5"
    with h5py.File(path, "w") as handle:  # as nlb_tools' make_train_input_tensors writes it
        handle.create_dataset("train_spikes_heldin", data=heldin, compression="gzip")
        handle.create_dataset("train_spikes_heldout", data=heldout, compression="gzip")
        handle.create_dataset("train_behavior", data=behaviour, compression="gzip")
        handle.create_dataset("eval_spikes_heldin", data=heldin[:2], compression="gzip")
    recording = load_m1_recording(path)
    both = np.concatenate([heldin, heldout], axis=-1)
    np.testing.assert_allclose(recording.x, both / both.max(), rtol=1e-6)
    np.testing.assert_allclose(recording.behaviour, behaviour, rtol=1e-6)
    assert recording.extras["direction"].shape == (6,)


# ----------------------------------------------------------------------------- NWB


def write_mc_maze_nwb(path: Path, seed: int = 0) -> dict:
    """A small NWB file in the DANDI 000128 (MC_Maze) training-file layout."""
    from pynwb import NWBHDF5IO, NWBFile, TimeSeries

    rng = np.random.default_rng(seed)
    nwb = NWBFile(
        session_description="MC_Maze-like test session",
        identifier="test-mc-maze",
        session_start_time=datetime(2020, 1, 1, tzinfo=timezone.utc),
    )
    duration = 20.0
    nwb.add_unit_column("heldout", "unit held out for the benchmark")
    spike_times = [np.sort(rng.uniform(0, duration, size=rng.integers(100, 400))) for _ in range(6)]
    heldout = [False, False, False, False, True, True]
    for times, out in zip(spike_times, heldout):
        nwb.add_unit(spike_times=times, obs_intervals=[[0.0, duration]], heldout=out)
    nwb.add_trial_column("move_onset_time", "movement onset")
    nwb.add_trial_column("split", "benchmark split")
    onsets = 1.0 + 2.0 * np.arange(9)
    onsets[7] = np.nan  # a failed trial without movement onset
    splits = ["train", "val", "train", "train", "test", "train", "val", "train", "train"]
    for onset, split in zip(onsets, splits):
        start = 2.0 * np.floor((onset if np.isfinite(onset) else 15.0) / 2.0)
        nwb.add_trial(start_time=start, stop_time=start + 2.0, move_onset_time=onset, split=split)
    stamps = np.arange(0, duration, 0.001) + 0.0005  # 1 kHz, no sample on a bin edge
    trial_of_sample = np.clip(((stamps - 0.5) // 2.0).astype(int), 0, 8)
    angle = (trial_of_sample % 8) * np.pi / 4
    velocity = (1.0 + stamps)[:, None] * np.stack([np.cos(angle), np.sin(angle)], axis=-1)
    behavior = nwb.create_processing_module("behavior", "processed behavioural data")
    behavior.add(TimeSeries(name="hand_vel", data=velocity, timestamps=stamps, unit="m/s", conversion=1e-3))
    behavior.add(TimeSeries(name="hand_pos", data=np.cumsum(velocity, 0) / 1000, timestamps=stamps, unit="m", conversion=1e-3))
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)
    return {
        "spike_times": spike_times,
        "heldout": heldout,
        "onsets": onsets,
        "splits": splits,
        "stamps": stamps,
        "velocity": velocity,
    }


def expected_counts(spike_times, onsets, start_s, bin_s, n_bins) -> np.ndarray:
    counts = np.zeros((len(onsets), n_bins, len(spike_times)))
    for i, onset in enumerate(onsets):
        for u, times in enumerate(spike_times):
            index = np.floor((times - (onset + start_s)) / bin_s).astype(int)
            index = index[(index >= 0) & (index < n_bins)]
            np.add.at(counts[i, :, u], index, 1)
    return counts


def test_nwb_spikes_binned_and_aligned_on_movement_onset(tmp_path: Path) -> None:
    path = tmp_path / "sub-Jenkins_ses-test_desc-train_behavior+ecephys.nwb"
    truth = write_mc_maze_nwb(path)
    data = load_nwb(path, bin_size_ms=20, align_event="move_onset_time", window_ms=(-100, 200))
    kept = [
        i
        for i, (onset, split) in enumerate(zip(truth["onsets"], truth["splits"]))
        if np.isfinite(onset) and split in ("train", "val")
    ]
    assert len(kept) == 7  # the test split and the NaN onset left out
    onsets = truth["onsets"][kept]
    np.testing.assert_array_equal(data.neural, expected_counts(truth["spike_times"], onsets, -0.1, 0.02, 15))
    # velocity: mean of the 1 kHz samples whose time lies in each bin
    stamps, velocity = truth["stamps"], truth["velocity"]
    for row, onset in enumerate(onsets):
        for k in (0, 7, 14):
            left = onset - 0.1 + 0.02 * k
            inside = (stamps >= left) & (stamps < left + 0.02)
            np.testing.assert_allclose(data.velocity[row, k], velocity[inside].mean(0), atol=1e-9)
    assert reach_directions(data.velocity).tolist() == [kept_trial % 8 for kept_trial in kept]

    lagged = load_nwb(path, window_ms=(-100, 200), behaviour_lag_ms=100, include_heldout=False, trial_splits=None)
    assert lagged.neural.shape == (8, 15, 4)  # every trial with an onset, held-in units only
    np.testing.assert_array_equal(
        lagged.neural[0], expected_counts(truth["spike_times"][:4], truth["onsets"][:1], -0.1, 0.02, 15)[0]
    )
    np.testing.assert_allclose(lagged.velocity[0, :10], data.velocity[0, 5:15], atol=1e-9)  # 100 ms = 5 bins later


def test_nwb_through_the_datamodule_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "session.nwb"
    write_mc_maze_nwb(path)
    datamodule = MonkeyM1DataModule(path=str(path), bin_size_ms=10, window_ms=[-250, 450], batch_size=32)
    datamodule.setup()
    recording = datamodule.recording
    assert recording.x.shape[:2] == (7, 70) and recording.x.max() == pytest.approx(1.0)
    assert recording.behaviour.shape == (7, 70, 2)
    with pytest.raises(ValueError, match="whole number of bins"):
        load_nwb(path, bin_size_ms=40, window_ms=(-100, 200))
    with pytest.raises(ValueError, match="align_event='go_cue_time' is not a trials column"):
        load_nwb(path, align_event="go_cue_time")
    with pytest.raises(
        ValueError,
        match=(
            r"no behaviour time series 'finger_vel'; "
            r"found \['processing/behavior/hand_pos', 'processing/behavior/hand_vel'\]"
        ),
    ):
        load_nwb(path, behaviour_key="finger_vel")
    with pytest.raises(FileNotFoundError, match="missing.nwb"):
        load_m1_recording(tmp_path / "missing.nwb")


def test_bin_spike_times_counts_left_closed_bins() -> None:
    edges = np.array([[0.0, 0.1, 0.2], [1.0, 1.1, 1.2]])
    counts = bin_spike_times([np.array([0.0, 0.1, 0.15, 0.2, 1.05]), np.array([])], edges)
    assert counts[..., 0].tolist() == [[1, 2], [1, 0]]
    assert counts[..., 1].sum() == 0
