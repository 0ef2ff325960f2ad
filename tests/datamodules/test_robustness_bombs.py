"""Data files that exhaust memory, read other data, or are silently wrong (issue 19, classes 3 and 4).

Every file is written here in ``tmp_path``; size limits are lowered with
``FACRNN_MAX_ARRAY_MB=1`` so that a "bomb" of a few logical MB stays a few KB on disk.
"""

from __future__ import annotations

import logging
import pickle
import subprocess
import sys
import time
import tracemalloc
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np
import pytest

from datamodules.convert import convert
from datamodules.from_file import load_file_recording
from datamodules.loading import MAX_ARRAY_MB_ENV, read_arrays
from datamodules.monkey_m1 import load_m1_recording, load_nwb, preprocess
from datamodules.validation import check_latents_fit
from facrnn.errors import ConfigError, DataError
from tests.helpers import ROOT, compose_config

pytestmark = pytest.mark.robustness

BOMB_SHAPE = (1024, 512)  # 4 MB of float64 zeros
LIMIT_HINT = f"(set {MAX_ARRAY_MB_ENV}=... to allow more)"


@pytest.fixture
def one_mb(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MAX_ARRAY_MB_ENV, "1")


def refused_quickly(path: Path, *parts: str) -> str:
    """``read_arrays(path)`` raises a one-line ``DataError`` holding ``parts`` in < 1 s, allocating < 1 MB."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(DataError) as caught:
            read_arrays(path, ("x", "z"))
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    message = str(caught.value)
    assert message.startswith(str(path)) and len(message.splitlines()) == 1, message
    for part in parts:
        assert part in message, (part, message)
    assert elapsed < 1.0, elapsed
    assert peak < 2**20, peak
    return message


def sequence(n_bins: int = 40, n_channels: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n_bins, n_channels))


# ------------------------------------------------------------------------ size limits


def test_gzip_hdf5_bomb_is_refused_from_the_header(tmp_path: Path, one_mb: None) -> None:
    path = tmp_path / "bomb.h5"
    with h5py.File(path, "w") as handle:
        handle.create_dataset("x", data=np.zeros(BOMB_SHAPE), compression="gzip", compression_opts=9, chunks=(256, 512))
    assert path.stat().st_size < 200_000
    refused_quickly(path, "dataset 'x' holds 4 MB (shape (1024, 512), float64); expected at most 1 MB", f"1 MB {LIMIT_HINT}")


def test_compressed_npz_bomb_is_refused_from_the_header(tmp_path: Path, one_mb: None) -> None:
    path = tmp_path / "bomb.npz"
    np.savez_compressed(path, x=np.zeros(BOMB_SHAPE))
    assert path.stat().st_size < 200_000
    message = refused_quickly(path, "dataset 'x' holds 4 MB (shape (1024, 512), float64); expected at most 1 MB")
    assert message.endswith(LIMIT_HINT)


@pytest.mark.parametrize("suffix", [".npz", ".h5"])
def test_total_of_a_file_is_limited(tmp_path: Path, one_mb: None, suffix: str) -> None:
    path = tmp_path / f"two{suffix}"
    half = np.zeros((300, 256))  # 0.59 MB each
    if suffix == ".npz":
        np.savez_compressed(path, x=half, z=half)
    else:
        with h5py.File(path, "w") as handle:
            for key in ("x", "z"):
                handle.create_dataset(key, data=half, compression="gzip")
    refused_quickly(path, "the datasets read hold 1.172 MB in all ('x' 0.5859 MB, 'z' 0.5859 MB)", "per file")


def test_limit_is_configurable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ok.npz"
    np.savez_compressed(path, x=np.zeros(BOMB_SHAPE))
    monkeypatch.setenv(MAX_ARRAY_MB_ENV, "8")
    assert read_arrays(path, ("x",))["x"].shape == BOMB_SHAPE
    monkeypatch.delenv(MAX_ARRAY_MB_ENV)
    assert read_arrays(path, ("x",))["x"].shape == BOMB_SHAPE  # default 2048 MB
    monkeypatch.setenv(MAX_ARRAY_MB_ENV, "lots")
    with pytest.raises(ConfigError, match=r"FACRNN_MAX_ARRAY_MB='lots': expected a positive number of megabytes"):
        read_arrays(path, ("x",))


def test_npz_object_array_refused_without_unpickling(tmp_path: Path) -> None:
    path = tmp_path / "objects.npz"
    np.savez(path, x=np.array([{"a": 1}, None], dtype=object))
    refused_quickly(path, "dataset 'x' has object dtype object", "expected real numbers (float, int or bool)")


# -------------------------------------------------------------- data outside the file


def test_external_raw_storage_is_refused(tmp_path: Path) -> None:
    raw = tmp_path / "elsewhere.bin"
    np.arange(80, dtype=np.float64).tofile(raw)
    path = tmp_path / "external.h5"
    with h5py.File(path, "w") as handle:
        handle.create_dataset("x", shape=(20, 4), dtype=np.float64, external=[(str(raw), 0, raw.stat().st_size)])
    message = refused_quickly(path, f"dataset 'x' is stored as external raw data in {raw}")
    assert message.endswith("expected data stored in the file itself")


def test_virtual_dataset_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "source.h5"
    with h5py.File(source, "w") as handle:
        handle.create_dataset("data", data=sequence())
    layout = h5py.VirtualLayout(shape=(40, 4), dtype=np.float64)
    layout[:] = h5py.VirtualSource(str(source), "data", shape=(40, 4))
    path = tmp_path / "virtual.h5"
    with h5py.File(path, "w") as handle:
        handle.create_virtual_dataset("x", layout)
    message = refused_quickly(path, "dataset 'x' is a virtual dataset mapping", str(source))
    assert message.endswith("expected data stored in the file itself")


def test_external_link_is_refused_and_soft_link_inside_accepted(tmp_path: Path) -> None:
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as handle:
        handle.create_dataset("secret", data=sequence())
    path = tmp_path / "linked.h5"
    with h5py.File(path, "w") as handle:
        handle["x"] = h5py.ExternalLink(str(other), "/secret")
    message = refused_quickly(path, f"dataset 'x' is an external link to {other}:/secret")
    assert message.endswith("expected data stored in the file itself")

    inside = tmp_path / "soft.h5"
    with h5py.File(inside, "w") as handle:
        handle.create_dataset("stored", data=sequence())
        handle["x"] = h5py.SoftLink("/stored")
    np.testing.assert_array_equal(load_file_recording(inside).x[0], sequence().astype(np.float32))


def test_nwb_dataset_behind_an_external_link_is_refused(tmp_path: Path) -> None:
    path = write_nwb(tmp_path / "session.nwb")
    other = tmp_path / "other.h5"
    with h5py.File(path, "a") as handle, h5py.File(other, "w") as target:
        target.create_dataset("velocity", data=handle["processing/behavior/hand_vel/data"][()])
        del handle["processing/behavior/hand_vel/data"]
        handle["processing/behavior/hand_vel/data"] = h5py.ExternalLink(str(other), "/velocity")
    with pytest.raises(DataError) as caught:
        load_nwb(path, window_ms=(-100, 200))
    message = str(caught.value)
    assert message.startswith(str(path)) and "'hand_vel/data' is a link to" in message, message
    assert str(other) in message and message.endswith("expected data stored in the file itself")


# -------------------------------------------------------------- silently wrong inputs


def test_single_channel_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "one.npz"
    np.savez(path, x=sequence(n_channels=1))
    with pytest.raises(DataError, match=r"one.npz: 'x' has 1 channel\(s\); expected at least 2 neurons/channels"):
        load_file_recording(path)


def test_latent_dim_larger_than_the_channels() -> None:
    check_latents_fit(4, 4, "data.npz")
    with pytest.raises(
        ConfigError, match=r"^model.latent_dim=5: data.npz has only 4 channels; expected model.latent_dim <= 4"
    ):
        check_latents_fit(5, 4, "data.npz")


def test_from_file_group_sizes_must_fit_the_model(tmp_path: Path) -> None:
    from facrnn.runs.pipeline import instantiate_datamodule, instantiate_module

    rng = np.random.default_rng(0)
    path = tmp_path / "grouped.npz"
    np.savez(path, x=rng.normal(size=(200, 8)), z=rng.normal(size=(200, 6)), group_sizes=np.array([2, 4]))

    def module(*overrides: str):
        overrides = ("datamodule=from_file", f"datamodule.path={path}", "datamodule.batch_size=32", *overrides)
        cfg = compose_config("train", list(overrides), tmp_path)
        return instantiate_module(cfg.model, instantiate_datamodule(cfg.datamodule))

    refused = {
        (): f"model.latent_dim=6, model.n_groups=2 (groups [3, 3]): {path} has 'group_sizes' [2, 4]; expected the "
        "file's sizes for 2 groups: model.group_sizes=[2,4] (or another number of groups, scored with the file's grouping)",
        ("model.group_sizes=[4,2]",): f"model.group_sizes=[4, 2]: {path} has 'group_sizes' [2, 4]; expected the file's "
        "sizes for 2 groups: model.group_sizes=[2,4] (or another number of groups, scored with the file's grouping)",
        ("model.latent_dim=4",): f"model.latent_dim=4, model.n_groups=2 (groups [2, 2]): {path} has 'group_sizes' "
        "[2, 4] (K=6); expected model.latent_dim=6, the file's latent dimension, e.g. model.group_sizes=[2,4] (or a "
        "file without 'group_sizes')",
        ("model=lrrnn", "model.latent_dim=8"): f"model.latent_dim=8, model.n_groups=1 (groups [8]): {path} has "
        "'group_sizes' [2, 4] (K=6); expected model.latent_dim=6",
    }
    for overrides, message in refused.items():
        with pytest.raises(ConfigError) as caught:
            module(*overrides)
        assert str(caught.value).startswith(message), str(caught.value)
        assert len(str(caught.value).splitlines()) == 1
    assert module("model.group_sizes=[2,4]").group_sizes == [2, 4]
    assert module("model=lrrnn").group_sizes == [6]  # one group, scored with the file's [2, 4]
    assert module("model.n_groups=3").group_sizes == [2, 2, 2]  # a group-selection sweep's other G


def reach(n_trials: int = 8, n_bins: int = 6, n_units: int = 5) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {
        "neural": rng.poisson(2.0, size=(n_trials, n_bins, n_units)).astype(np.float64),
        "vel": rng.normal(size=(n_trials, n_bins, 2)),
    }


@pytest.mark.parametrize("vel_shape", [(8,), (8, 6, 3)], ids=["1d", "3-components"])
def test_m1_velocity_of_the_wrong_shape(tmp_path: Path, vel_shape: tuple[int, ...]) -> None:
    arrays = reach()
    arrays["vel"] = np.ones(vel_shape)
    path = tmp_path / "reach.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=r"reach.npz: 'vel' has .*shape .*; expected \(trials, bins, 2\) hand velocity$"):
        load_m1_recording(path)


@pytest.mark.parametrize(
    ("scale", "part"),
    [
        (1e30, "holds values up to |x| = 3e+30; expected |values| <= 1e+15"),
        (1e-35, "holds only tiny values (largest |x| = 3e-35"),
    ],
    ids=["huge", "denormal"],
)
def test_absurd_magnitudes_are_refused(tmp_path: Path, scale: float, part: str) -> None:
    path = tmp_path / "scaled.npz"
    x = sequence()
    np.savez(path, x=x / np.abs(x).max() * 3.0 * scale)
    with pytest.raises(DataError) as caught:
        load_file_recording(path)
    message = str(caught.value)
    assert message.startswith(str(path)) and part in message and "(rescale the data" in message, message


def test_m1_counts_of_1e30_are_refused_before_scaling() -> None:
    neural = reach()["neural"] * 1e30
    with pytest.raises(DataError, match=r"session: 'neural' holds values up to \|neural\| = "):
        preprocess(neural, where="session")


# ------------------------------------------------------------------------------ NWB


def write_nwb(path: Path, spike_times: list[np.ndarray] | None = None) -> Path:
    """A tiny MC_Maze-like NWB file with the given spike times per unit."""
    from pynwb import NWBHDF5IO, NWBFile, TimeSeries

    rng = np.random.default_rng(0)
    nwb = NWBFile(session_description="test", identifier="bombs", session_start_time=datetime(2020, 1, 1, tzinfo=timezone.utc))
    for times in spike_times or [np.sort(rng.uniform(0, 10, size=200)) for _ in range(3)]:
        nwb.add_unit(spike_times=times)
    nwb.add_trial_column("move_onset_time", "movement onset")
    for start in range(4):
        nwb.add_trial(start_time=2.0 * start, stop_time=2.0 * start + 2.0, move_onset_time=2.0 * start + 1.0)
    stamps = np.arange(0, 10, 0.001)
    module = nwb.create_processing_module("behavior", "behaviour")
    module.add(TimeSeries(name="hand_vel", data=rng.normal(size=(stamps.size, 2)), timestamps=stamps, unit="m/s"))
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)
    return path


def test_nwb_spike_index_out_of_order(tmp_path: Path) -> None:
    path = write_nwb(tmp_path / "index.nwb")
    with h5py.File(path, "a") as handle:
        handle["units/spike_times_index"][...] = np.array([200, 100, 600])
    with pytest.raises(DataError) as caught:
        load_nwb(path, window_ms=(-100, 200))
    message = str(caught.value)
    assert message.startswith(str(path)) and "units/spike_times_index is out of order or out of range (unit 1" in message
    assert message.endswith("expected non-decreasing end indices up to the number of spike times")


def test_nwb_spike_times_out_of_order(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    times = [np.sort(rng.uniform(0, 10, size=50)) for _ in range(2)]
    times[1] = times[1][::-1].copy()
    path = write_nwb(tmp_path / "unsorted.nwb", times)
    with pytest.raises(DataError, match=r"spike times of unit 1 are out of order \(49 decreases, first .*\); expected"):
        load_nwb(path, window_ms=(-100, 200))


def test_nwb_nan_spike_times_warn_with_the_count(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rng = np.random.default_rng(4)
    times = [np.sort(rng.uniform(0, 10, size=60)) for _ in range(2)]
    clean = load_nwb(write_nwb(tmp_path / "clean.nwb", times), window_ms=(-100, 200))
    times[0] = np.concatenate([times[0][:10], [np.nan] * 3, times[0][10:]])
    path = write_nwb(tmp_path / "nan.nwb", times)
    with caplog.at_level(logging.WARNING, logger="datamodules"):
        data = load_nwb(path, window_ms=(-100, 200))
    assert any(
        record.levelno == logging.WARNING and "dropped 3 NaN spike times of 123" in record.getMessage()
        for record in caplog.records
    )
    np.testing.assert_array_equal(data.neural, clean.neural)


def test_nwb_bomb_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_nwb(tmp_path / "session.nwb")
    monkeypatch.setenv(MAX_ARRAY_MB_ENV, "0.1")  # the 10 000 x 2 behaviour samples: 0.15 MB
    with pytest.raises(
        DataError, match=r"session.nwb: dataset 'hand_vel/data' holds 0.1526 MB \(shape \(10000, 2\), float64\)"
    ):
        load_nwb(path, window_ms=(-100, 200))


# ------------------------------------------------------------------ the pickle converter


class Forged:
    """Pickles as the given ``__reduce__`` tuple: a hand-made pickle without writing opcodes."""

    def __init__(self, reduced: tuple) -> None:
        self.reduced = reduced

    def __reduce__(self) -> tuple:
        return self.reduced


def write_pickle(path: Path, content: object = None, raw: bytes | None = None) -> Path:
    path.write_bytes(raw if raw is not None else pickle.dumps(content, protocol=4))
    return path


def conversion_refused(source: Path, *parts: str, peak_mb: float = 64) -> str:
    """``convert(source, ...)`` raises a one-line ``DataError`` naming ``source`` in < 5 s, writing no
    output and allocating < ``peak_mb``."""
    out = source.with_suffix(".h5")
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(DataError) as caught:
            convert(source, out)
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    message = str(caught.value)
    assert message.startswith(str(source)) and len(message.splitlines()) == 1, message
    for part in parts:
        assert part in message, (part, message)
    assert elapsed < 5.0 and peak < peak_mb * 2**20, (elapsed, peak)
    assert not out.exists() and not out.with_name(out.name + ".partial").exists()
    return message


FOUR_MB = np.zeros(2**19)  # 4 MB of float64


def test_converter_writes_memo_references_once(tmp_path: Path) -> None:
    # one 4 MB array named 238 times (a dict, a ragged list) and a DAG of 2**40 paths: the
    # same objects once each, hard-linked where the pickle refers to them again
    nested: dict = {"leaf": "s"}
    for _ in range(40):
        nested = {"a": nested, "b": nested}
    content = {"x": {str(index): FOUR_MB for index in range(238)}, "trials": [FOUR_MB, "left"] * 119, "dag": nested}
    source = write_pickle(tmp_path / "memo.pkl", content)
    out = tmp_path / "memo.h5"
    assert convert(source, out) == ["x", "trials", "dag"]
    assert out.stat().st_size < 2 * source.stat().st_size  # not 953 MB
    with h5py.File(out, "r") as handle:
        assert handle["x/0"] == handle["x/237"] == handle["trials/2"]  # one dataset, hard links
        np.testing.assert_array_equal(handle["x/100"][()], FOUR_MB)
        assert handle["trials/3"][()].decode() == "left"
        assert handle["dag/" + "a/b/" * 20 + "leaf"][()].decode() == "s"


def test_converter_refuses_a_stacked_memo_bomb_before_allocating(tmp_path: Path) -> None:
    # a 4 MB pickle whose list stacks one array 30 000 times: 117 GB, at the default limit
    source = write_pickle(tmp_path / "stack.pkl", {"x": [FOUR_MB] * 30_000})
    assert source.stat().st_size < 5 * 2**20
    conversion_refused(source, "'x' would take 117.2 GB to write (30000 stacked items); expected at most 2048 MB", LIMIT_HINT)


def test_converter_total_output_is_limited(tmp_path: Path, one_mb: None) -> None:
    row = np.arange(2**12, dtype=np.float64)  # 32 kB, stacked 8 times into 0.25 MB under each of five keys
    source = write_pickle(tmp_path / "total.pkl", {f"x{index}": [row] * 8 for index in range(5)})
    conversion_refused(source, "converting it would write more than 1 MB (1.25 MB by 'x4'); expected at most 1 MB per file")


_RECONSTRUCT = (np.ndarray.__reduce__(np.zeros(1))[0], (np.ndarray, (0,), b"b"))


@pytest.mark.parametrize(
    ("reduced", "part"),
    [
        (
            (_RECONSTRUCT[0], (np.ndarray, (2**37,), b"b")),
            "unpickling would allocate 128 GB for one array (shape (137438953472,), int8)",
        ),
        (
            (*_RECONSTRUCT, (1, (2**34,), np.dtype(">f8"), False, b"")),
            "unpickling would allocate 128 GB for one array (shape (17179869184,), >f8)",
        ),
        ((np.ndarray, ((2**37,), np.dtype("u1"))), "unpickling would allocate 128 GB for one array"),
        ((bytearray, (2**37,)), "unpickling would allocate 128 GB for one array (shape (137438953472,), uint8)"),
    ],
    ids=["reconstruct-shape", "setstate-shape", "ndarray", "bytearray"],
)
def test_converter_refuses_forged_sizes_before_allocating(tmp_path: Path, reduced: tuple, part: str) -> None:
    source = write_pickle(tmp_path / "forged.pkl", {"x": Forged(reduced)})
    assert source.stat().st_size < 1000
    conversion_refused(source, part, "expected at most 2048 MB", peak_mb=1)


def test_converter_refuses_arrays_copied_from_one_memo_string(tmp_path: Path, one_mb: None) -> None:
    # numpy copies (and byte-swaps) a str of raw data into every array it fills from it
    raw = "\0" * 2**18
    arrays = [Forged((*_RECONSTRUCT, (1, (2**15,), np.dtype(">f8"), False, raw))) for _ in range(100)]
    source = write_pickle(tmp_path / "rawdata.pkl", {"x": arrays})
    assert source.stat().st_size < 2**19
    conversion_refused(source, "unpickling would allocate more than 1 MB for its arrays (1.25 MB by array 5", "per file")


def test_converter_refuses_cycles_and_deep_nesting(tmp_path: Path) -> None:
    loop: list = []
    loop.append(loop)
    conversion_refused(
        write_pickle(tmp_path / "loop.pkl", {"x": loop}),
        "'x/0' refers back to its own container 'x' (a self-referencing pickle); expected a tree of containers",
    )
    itself: dict = {}
    itself["me"] = {"again": itself}
    conversion_refused(write_pickle(tmp_path / "dict.pkl", {"x": itself}), "'x/me/again' refers back to its own container 'x'")
    depth = 100_000  # nested lists no pickler writes (it would recurse), made of opcodes
    deep = b"\x80\x02}X\x01\x00\x00\x00x" + b"]" * depth + b"a" * (depth - 1) + b"s."
    conversion_refused(
        write_pickle(tmp_path / "deep.pkl", raw=deep), "nests containers 65 levels deep; expected at most 64 levels"
    )
    many = write_pickle(tmp_path / "many.pkl", {"x": [str(index) for index in range(100_001)]})
    conversion_refused(many, "converting it would write more than 100000 HDF5 groups, datasets and links (reached at 'x/")


def test_converter_command_line_reports_cycles_and_a_missing_folder_in_one_line(tmp_path: Path) -> None:
    loop: list = []
    loop.append(loop)
    source = write_pickle(tmp_path / "loop.pkl", {"x": loop})
    plain = write_pickle(tmp_path / "plain.pkl", {"x": np.arange(4.0)})
    missing = tmp_path / "no" / "such" / "out.h5"
    with pytest.raises(DataError) as caught:
        convert(plain, missing)
    assert str(caught.value) == (
        f"{missing}: the output folder {missing.parent} does not exist; expected an existing folder (create it first)"
    )
    for args, part in (
        ([source, tmp_path / "loop.h5"], f"error: {source}: 'x/0' refers back to its own container 'x'"),
        ([plain, missing], f"error: {missing}: the output folder {missing.parent} does not exist"),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "datamodules.convert", *map(str, args)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith(part), line
    assert not missing.parent.exists()
