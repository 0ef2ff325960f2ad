"""Mouse widefield voltage imaging: the simulator, file readers (npz, h5, NWB in the real
ophys layouts), preprocessing with ground truth, contiguous-block splits, the figures."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from scipy.stats import kurtosis

from datamodules.base import block_split
from datamodules.mouse_voltage import (
    ImagingData,
    MouseVoltageDataModule,
    binning_matrix,
    mask_channel_map,
    oracle_encoder,
    preprocess,
    read_imaging_file,
    to_recording,
)
from datamodules.voltage_simulator import cortex_mask, simulate_voltage_imaging, traces_to_movie
from facrnn.core.model import LowRankRNN
from facrnn.plots import imaging as plots_imaging

SMALL = {"n_frames": 600, "height": 20, "width": 18}
GIF_MAGIC = b"GIF89a"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def small() -> dict[str, np.ndarray]:
    return simulate_voltage_imaging(data_seed=3, **SMALL)


# ------------------------------------------------------------------------------ simulator


def test_cortex_mask_is_bilateral_and_about_50_by_45() -> None:
    mask = cortex_mask()
    assert mask.shape == (50, 45)
    assert 1400 <= mask.sum() <= 1900
    np.testing.assert_array_equal(mask, mask[:, ::-1])  # symmetric hemispheres
    assert not mask[:, 22].any()  # midline gap
    assert mask[:, :22].any() and mask[:, 23:].any()


def test_simulator_is_deterministic_with_stated_snr_and_independent_groups() -> None:
    first = simulate_voltage_imaging(data_seed=1, n_frames=3000, snr=0.5)
    again = simulate_voltage_imaging(data_seed=1, n_frames=3000, snr=0.5)
    other = simulate_voltage_imaging(data_seed=2, n_frames=3000, snr=0.5)
    for key in ("traces", "latents", "A"):
        np.testing.assert_array_equal(first[key], again[key])
    assert not np.array_equal(first["traces"], other["traces"])
    mask, traces, latents, A = first["mask"], first["traces"], first["latents"], first["A"]
    assert traces.shape == (3000, mask.sum()) and latents.shape == (3000, 4) and A.shape == (mask.sum(), 4)
    assert list(first["group_sizes"]) == [2, 2] and float(first["fs"]) == 100.0
    signal = latents @ A.T
    noise = traces - signal - first["offset"]
    assert signal.var(0).sum() / noise.var(0).sum() == pytest.approx(0.5, rel=1e-3)
    correlation = np.corrcoef(latents.T)
    assert correlation[0, 1] == pytest.approx(0.6, abs=0.1) and correlation[2, 3] == pytest.approx(0.6, abs=0.1)
    assert np.abs(correlation[:2, 2:]).max() < 0.1  # the groups are independent
    assert (kurtosis(latents, axis=0) < -1.0).all()  # ring-shaped, non-Gaussian latents
    # smooth footprints: neighbouring in-mask pixels of a loading map differ little
    maps = np.stack([traces_to_movie(A[:, k][None], mask)[0] for k in range(4)])
    both_inside = mask[:, 1:] & mask[:, :-1]
    assert np.abs(np.diff(maps, axis=2))[:, both_inside].max() < 0.2 * np.abs(maps).max()


# ---------------------------------------------------------------------------- splits


def test_block_split_is_contiguous_and_follows_fractions() -> None:
    masks = block_split(1000, 5, 0.1, 0.2)
    assert [int(mask.sum()) for mask in masks.values()] == [700, 100, 200]
    assert not (masks["train"] & masks["test"]).any() and not (masks["val"] & masks["test"]).any()
    test_bins = np.flatnonzero(masks["test"])
    assert (np.diff(test_bins) > 1).sum() == 4  # five contiguous test segments
    assert masks["test"][180:200].all() and masks["train"][200:340].all()
    gapped = block_split(1000, 5, 0.1, 0.2, gap=3)
    dropped = ~(gapped["train"] | gapped["val"] | gapped["test"])
    assert dropped.sum() == 3 * 14  # 3 bins after each of the 14 changes of split
    assert not dropped[:140].any() and dropped[140:143].all()
    with pytest.raises(ValueError, match="at least one bin in each split"):
        block_split(10, 5, 0.1, 0.1)


# ------------------------------------------------------------------------------- files


def write_array_file(path: Path, arrays: dict[str, np.ndarray]) -> None:
    if path.suffix == ".npz":
        np.savez(path, **arrays)
    else:
        with h5py.File(path, "w") as handle:
            for key, value in arrays.items():
                handle[key] = value


@pytest.mark.parametrize("suffix", [".npz", ".h5"])
@pytest.mark.parametrize("layout", ["movie", "traces"])
def test_array_files_movie_or_traces(tmp_path: Path, small, suffix: str, layout: str) -> None:
    path = tmp_path / f"rec{suffix}"
    mask, traces = small["mask"], small["traces"]
    if layout == "movie":
        arrays = {"movie": traces_to_movie(traces, mask, fill=np.nan), "mask": mask, "fs": np.array(100.0)}
    else:
        arrays = {"traces": traces, "mask": mask, "fs": np.array(100.0)}
    arrays.update(latents=small["latents"], A=small["A"], group_sizes=small["group_sizes"])
    write_array_file(path, arrays)
    data = read_imaging_file(path)
    np.testing.assert_array_equal(data.traces, traces)
    np.testing.assert_array_equal(data.channel_map >= 0, mask)
    assert data.fs == 100.0 and data.group_sizes == [2, 2]
    datamodule = MouseVoltageDataModule(path=str(path), batch_size=64)
    datamodule.setup()
    recording = datamodule.recording
    assert recording.x.shape == (1, 600, mask.sum()) and recording.single_sequence
    np.testing.assert_array_equal(recording.extras["mask"], mask)
    assert float(recording.extras["fs"]) == 100.0
    assert recording.A.shape == (mask.sum(), 4) and recording.B.shape == (4, mask.sum())
    assert datamodule.split == "blocks"


def test_movie_without_mask_uses_finite_varying_pixels(tmp_path: Path, small) -> None:
    path = tmp_path / "movie.npz"
    np.savez(path, movie=traces_to_movie(small["traces"], small["mask"], fill=0.0))
    data = read_imaging_file(path, frames=(100, 300))
    np.testing.assert_array_equal(data.channel_map >= 0, small["mask"])
    assert data.traces.shape == (200, small["mask"].sum()) and data.fs is None


def test_array_file_errors_name_the_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, x=np.zeros((10, 3)))
    with pytest.raises(ValueError, match=r"neither 'movie' nor 'traces' found; found keys \['x'\]"):
        read_imaging_file(path)
    np.savez(path, traces=np.zeros((10, 3)), mask=np.ones((2, 2), bool))
    with pytest.raises(ValueError, match="one pixel per trace column"):
        read_imaging_file(path)
    np.savez(path, movie=np.zeros((10, 4, 4)), mask=np.ones((3, 4), bool))
    with pytest.raises(ValueError, match="expected the frame shape"):
        read_imaging_file(path)
    np.savez(path, traces=np.random.default_rng(0).normal(size=(50, 3)))
    with pytest.raises(ValueError, match="bandpass needs the frame rate"):
        MouseVoltageDataModule(path=str(path), bandpass=[1.0, 10.0], batch_size=8).setup()
    with pytest.raises(ValueError, match="frames=\\[40, 80\\]"):
        MouseVoltageDataModule(path=str(path), frames=[40, 80], batch_size=8).setup()


def nwb_file(tmp_path: Path, name: str):
    from pynwb import NWBFile
    from pynwb.ophys import OpticalChannel

    nwbfile = NWBFile(
        session_description="widefield voltage imaging (test)",
        identifier=name,
        session_start_time=datetime(2024, 1, 1, tzinfo=timezone.utc),
    )
    device = nwbfile.create_device(name="camera", description="sCMOS")
    channel = OpticalChannel(name="green", description="GEVI emission", emission_lambda=520.0)
    plane = nwbfile.create_imaging_plane(
        name="dorsal_cortex",
        optical_channel=channel,
        description="dorsal cortex, both hemispheres",
        device=device,
        excitation_lambda=488.0,
        indicator="GEVI",
        location="dorsal cortex",
        imaging_rate=100.0,
    )
    return nwbfile, plane, tmp_path / f"{name}.nwb"


def write_nwb(nwbfile, path: Path) -> Path:
    from pynwb import NWBHDF5IO

    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwbfile)
    return path


@pytest.mark.parametrize("roi_kind", ["pixel_mask", "image_mask"])
def test_nwb_dfoverf_roi_response_series(tmp_path: Path, small, roi_kind: str) -> None:
    from pynwb.ophys import DfOverF, ImageSegmentation, RoiResponseSeries

    nwbfile, plane, path = nwb_file(tmp_path, f"dff_{roi_kind}")
    mask, traces = small["mask"], small["traces"]
    ophys = nwbfile.create_processing_module(name="ophys", description="ΔF/F per pixel")
    segmentation = ImageSegmentation()
    ophys.add(segmentation)
    pixels = segmentation.create_plane_segmentation(name="pixels", description="one ROI per pixel", imaging_plane=plane)
    for row, column in zip(*np.nonzero(mask)):
        if roi_kind == "pixel_mask":
            pixels.add_roi(pixel_mask=[(int(row), int(column), 1.0)])
        else:
            image = np.zeros(mask.shape)
            image[row, column] = 1.0
            pixels.add_roi(image_mask=image)
    rois = pixels.create_roi_table_region(region=list(range(int(mask.sum()))), description="all pixels")
    series = RoiResponseSeries(name="pixel_dff", data=traces, rois=rois, unit="n.a.", rate=100.0)
    ophys.add(DfOverF(roi_response_series=series))
    write_nwb(nwbfile, path)

    data = read_imaging_file(path)
    np.testing.assert_allclose(data.traces, traces)
    np.testing.assert_array_equal(data.channel_map, mask_channel_map(mask))
    assert data.fs == 100.0 and data.pixel_channels
    datamodule = MouseVoltageDataModule(path=str(path), batch_size=64, spatial_bin=2)
    datamodule.setup()
    assert datamodule.recording.extras["mask"].shape == (10, 9)


def test_nwb_region_rois_paint_each_region(tmp_path: Path) -> None:
    from pynwb.ophys import DfOverF, ImageSegmentation, RoiResponseSeries

    nwbfile, plane, path = nwb_file(tmp_path, "regions")
    ophys = nwbfile.create_processing_module(name="ophys", description="atlas regions")
    segmentation = ImageSegmentation()
    ophys.add(segmentation)
    regions = segmentation.create_plane_segmentation(name="atlas", description="regions", imaging_plane=plane)
    labels = np.full((6, 8), -1)
    labels[1:5, 0:4], labels[1:5, 4:8] = 0, 1
    for region in range(2):
        regions.add_roi(image_mask=(labels == region).astype(float))
    rois = regions.create_roi_table_region(region=[0, 1], description="both regions")
    data = np.random.default_rng(0).normal(size=(120, 2)).astype(np.float32)
    ophys.add(DfOverF(roi_response_series=RoiResponseSeries(name="regions", data=data, rois=rois, unit="n.a.", rate=50.0)))
    write_nwb(nwbfile, path)
    read = read_imaging_file(path)
    np.testing.assert_array_equal(read.channel_map, labels)
    assert not read.pixel_channels
    with pytest.raises(ValueError, match="spatial_bin=2 needs one channel per pixel"):
        MouseVoltageDataModule(path=str(path), spatial_bin=2, batch_size=8).setup()


@pytest.mark.parametrize("with_mask", [True, False])
def test_nwb_one_photon_series(tmp_path: Path, small, with_mask: bool) -> None:
    from pynwb.ophys import ImageSegmentation, OnePhotonSeries

    nwbfile, plane, path = nwb_file(tmp_path, f"movie_{with_mask}")
    mask = small["mask"]
    movie = traces_to_movie(small["traces"], mask, fill=0.0)
    movie[:, ~mask] += 0.01 * np.random.default_rng(1).normal(size=(600, int((~mask).sum())))  # out-of-brain pixels vary
    nwbfile.add_acquisition(
        OnePhotonSeries(name="dff_movie", imaging_plane=plane, data=movie, unit="n.a.", rate=100.0, binning=1)
    )
    if with_mask:
        ophys = nwbfile.create_processing_module(name="ophys", description="brain mask")
        segmentation = ImageSegmentation()
        ophys.add(segmentation)
        brain = segmentation.create_plane_segmentation(name="brain", description="brain mask", imaging_plane=plane)
        brain.add_roi(image_mask=mask.astype(float))
    write_nwb(nwbfile, path)
    data = read_imaging_file(path, frames=(0, 500))
    assert data.fs == 100.0 and data.traces.shape[0] == 500
    if with_mask:
        np.testing.assert_array_equal(data.channel_map >= 0, mask)
        np.testing.assert_allclose(data.traces, small["traces"][:500])
    else:
        assert (data.channel_map >= 0).all()  # every varying pixel


def test_nwb_with_several_series_asks_for_a_name(tmp_path: Path) -> None:
    from pynwb.ophys import OnePhotonSeries

    nwbfile, plane, path = nwb_file(tmp_path, "two")
    movie = np.random.default_rng(0).normal(size=(50, 4, 5)).astype(np.float32)
    for name in ("first", "second"):
        nwbfile.add_acquisition(OnePhotonSeries(name=name, imaging_plane=plane, data=movie, unit="n.a.", rate=100.0))
    write_nwb(nwbfile, path)
    with pytest.raises(ValueError, match=r"several series \['first', 'second'\]"):
        read_imaging_file(path)
    assert read_imaging_file(path, series="second").traces.shape == (50, 20)
    with pytest.raises(ValueError, match="series='third' not found"):
        read_imaging_file(path, series="third")


# ------------------------------------------------------------------------ preprocessing


def imaging_data(small) -> ImagingData:
    return ImagingData(
        traces=small["traces"],
        channel_map=mask_channel_map(small["mask"]),
        fs=100.0,
        latents=small["latents"],
        A=small["A"],
        offset=small["offset"],
        group_sizes=[2, 2],
    )


def test_zscore_and_binning_carry_the_ground_truth(small) -> None:
    data = imaging_data(small)
    noise = small["traces"] - small["latents"] @ small["A"].T
    scored = preprocess(data, zscore=True)
    np.testing.assert_allclose(scored.traces.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(scored.traces.std(0), 1, atol=1e-4)
    std = small["traces"].std(0)
    residual = scored.traces - small["latents"] @ scored.A.T - scored.offset
    np.testing.assert_allclose(residual, noise / std, atol=1e-4)  # x' = A' z + a' + noise / s exactly

    binned = preprocess(data, spatial_bin=2, zscore=False)
    matrix, binned_map = binning_matrix(data.channel_map, 2)
    assert binned_map.shape == (10, 9) and binned.traces.shape[1] == matrix.shape[0] == binned_map.max() + 1
    movie = traces_to_movie(small["traces"], small["mask"], fill=np.nan)
    block = movie[:, 4:6, 6:8].reshape(600, -1)
    channel = binned_map[2, 3]
    assert channel >= 0
    np.testing.assert_allclose(binned.traces[:, channel], np.nanmean(block, axis=1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(binned.traces - small["latents"] @ binned.A.T, noise @ matrix.T, atol=1e-5)


def test_bandpass_filters_data_and_latents_alike(small) -> None:
    data = imaging_data(small)
    filtered = preprocess(data, bandpass=[3.0, 8.0], zscore=False)
    spectrum = lambda values: np.abs(np.fft.rfft(values - values.mean(0), axis=0)).mean(1)  # noqa: E731
    frequencies = np.fft.rfftfreq(600, 1 / 100.0)
    kept = spectrum(filtered.latents)[(frequencies > 4) & (frequencies < 6)].mean()
    removed = spectrum(filtered.latents)[(frequencies > 1.5) & (frequencies < 2.5)].mean()
    assert removed < 0.3 * kept  # the 2 Hz group is attenuated, the 5 Hz group kept
    noise = small["traces"] - small["latents"] @ small["A"].T
    from datamodules.mouse_voltage import bandpass_filter

    np.testing.assert_allclose(
        filtered.traces - filtered.latents @ filtered.A.T, bandpass_filter(noise, 100.0, [3.0, 8.0]), atol=1e-4
    )
    with pytest.raises(ValueError, match="0 < low < high < fs/2 = 50"):
        preprocess(data, bandpass=[3.0, 60.0])


def test_oracle_encoder_recovers_latents(small) -> None:
    scored = preprocess(imaging_data(small))
    B, b = oracle_encoder(scored.traces, scored.latents)
    u = np.tanh(np.concatenate([np.zeros((1, scored.traces.shape[1])), scored.traces[:-1]]))
    prediction = u @ B.T + b
    assert np.corrcoef(prediction[:, 0], scored.latents[:, 0])[0, 1] > 0.9
    recording = to_recording(scored)
    np.testing.assert_allclose(recording.B, B)
    assert recording.group_sizes == [2, 2]


def test_simulated_datamodule_is_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    datamodule = MouseVoltageDataModule(cache_dir=str(tmp_path), simulation=SMALL, batch_size=64, n_blocks=3)
    datamodule.setup()
    assert len(list(tmp_path.glob("mouse_voltage-*.npz"))) == 1
    times = datamodule.split_tensors("test")["time"]
    assert len(times) == 60 and (np.diff(np.sort(times.numpy())) > 1).sum() == 2  # 3 contiguous blocks

    def fail(**kwargs):
        raise AssertionError("simulated again despite the cache")

    monkeypatch.setattr("datamodules.mouse_voltage.simulate_voltage_imaging", fail)
    again = MouseVoltageDataModule(cache_dir=str(tmp_path), simulation=SMALL, batch_size=64, n_blocks=3)
    again.setup()
    np.testing.assert_array_equal(again.recording.x, datamodule.recording.x)


# ----------------------------------------------------------------------------- figures


def test_imaging_figures_of_a_model(tmp_path: Path) -> None:
    datamodule = MouseVoltageDataModule(
        cache_dir=None,
        simulation=SMALL,
        batch_size=64,
        figures={"duration_s": 0.1, "stride": 2, "n_frames": 3},
    )
    datamodule.setup()
    model = LowRankRNN(datamodule.n_channels, [2, 2], datamodule.n_train)
    paths = plots_imaging.write_imaging_figures(
        model,
        datamodule.recording,
        tmp_path,
        datamodule.figure_settings,
        test_times=datamodule.split_tensors("test")["time"].numpy(),
    )
    assert [path.name for path in paths] == ["loadings.png", "frames.png", "movie.gif"]
    for path in paths[:2]:
        assert path.read_bytes()[:8] == PNG_MAGIC
    assert paths[2].read_bytes()[:6] == GIF_MAGIC
    from PIL import Image

    with Image.open(paths[2]) as movie:
        assert movie.n_frames == 5  # 0.1 s at 100 Hz, every 2nd frame


def test_group_reconstructions_are_a_g_z_g() -> None:
    model = LowRankRNN(7, [1, 2], 100)
    means = torch.randn(5, 3)
    groups = plots_imaging.group_reconstructions(model, means)
    A = model.A.detach()
    np.testing.assert_allclose(groups[1], (means[:, 1:] @ A[:, 1:].T).numpy(), atol=1e-6)
    np.testing.assert_allclose(groups.sum(0), (means @ A.T).numpy(), atol=1e-6)


def test_figure_functions_check_their_input(tmp_path: Path) -> None:
    channel_map = mask_channel_map(cortex_mask(10, 10))
    n = int(channel_map.max()) + 1
    with pytest.raises(ValueError, match="group_sizes=\\[2, 1\\]"):
        plots_imaging.plot_loading_maps(np.zeros((n, 4)), [2, 1], channel_map, tmp_path / "a.png")
    with pytest.raises(ValueError, match="channel_map refers to channels up to"):
        plots_imaging.plot_loading_maps(np.zeros((n - 1, 2)), [1, 1], channel_map, tmp_path / "a.png")
    with pytest.raises(ValueError, match="expected a .gif or .mp4"):
        plots_imaging.write_reconstruction_movie(
            np.zeros((2, n)), np.zeros((1, 2, n)), channel_map, [0, 1], tmp_path / "m.avi"
        )


# ---------------------------------------------------------------------------- pipeline


def test_experiment_trains_evaluates_and_writes_the_imaging_figures(tmp_path: Path) -> None:
    from facrnn.runs.pipeline import train
    from tests.helpers import compose_config

    overrides = [
        "experiment=mouse_voltage",
        "logger=csv",
        "debug=short",
        "datamodule.simulation.n_frames=600",
        "datamodule.simulation.height=20",
        "datamodule.simulation.width=18",
        "datamodule.batch_size=64",
        "datamodule.figures.duration_s=0.1",
    ]
    cfg = compose_config("train", overrides, tmp_path)
    assert cfg.datamodule.split == "blocks" and cfg.model.latent_dim == 4
    result = train(cfg)
    figures = Path(result["run_dir"]) / "figures"
    for name in ("loadings.png", "frames.png", "latents.png"):
        assert (figures / name).read_bytes()[:8] == PNG_MAGIC
    assert (figures / "movie.gif").read_bytes()[:6] == GIF_MAGIC
    assert 0.0 <= result["metrics"]["group_latent_r2"] <= 1.0


@pytest.mark.slow
def test_experiment_recovers_the_simulated_groups(tmp_path: Path) -> None:
    """The issue's acceptance run: `python train.py experiment=mouse_voltage` (a few CPU minutes)."""
    from facrnn.runs.pipeline import train
    from tests.helpers import compose_config

    cfg = compose_config("train", ["experiment=mouse_voltage", "logger=csv"], tmp_path)
    result = train(cfg)
    assert result["metrics"]["group_latent_r2"] >= 0.9
    for name in ("loadings.png", "frames.png", "movie.gif"):
        assert (Path(result["run_dir"]) / "figures" / name).is_file()
