"""Figures stay cheap on long recordings: what is drawn is bounded, whatever the number of bins
or epochs (the evaluation of a run writes them every time; benchmarks/README.md has the times)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure

from facrnn.core.grouping import group_slices
from facrnn.plots import dynamics
from facrnn.plots import fit as plots
from facrnn.plots import save as save_module
from tests.plots.test_plots import assert_png, shown_axes


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> list[Figure]:
    """The figures the plots modules save, in order (each is still written as a PNG)."""
    figures: list[Figure] = []
    real = save_module.save_figure

    def capture(fig: Figure, path: str | Path) -> Path:
        figures.append(fig)
        return real(fig, path)

    for module in (plots, dynamics):
        monkeypatch.setattr(module, "save_figure", capture)
    return figures


def test_attractors_of_a_long_recording_draw_a_bounded_number_of_states(tmp_path: Path, drawn: list[Figure]) -> None:
    rng = np.random.default_rng(0)
    states = rng.standard_normal((50_000, 6))
    assert_png(dynamics.plot_attractors(states, states, [3, 3], tmp_path / "a.png"))
    (fig,) = drawn
    for ax in shown_axes(fig):
        for line in ax.get_lines():
            assert len(line.get_data_3d()[0] if hasattr(line, "get_data_3d") else line.get_xdata()) <= 2000
    assert "first 2,000 of 50,000 bins" in fig.get_suptitle()
    short = rng.standard_normal((40, 6))
    dynamics.plot_attractors(short, short, [3, 3], tmp_path / "b.png")
    assert "first" not in drawn[-1].get_suptitle()
    with pytest.raises(ValueError, match=r"max_points=0"):
        dynamics.plot_attractors(short, short, [3, 3], tmp_path / "c.png", max_points=0)


def test_long_training_curves_are_thinned_keeping_both_ends(tmp_path: Path, drawn: list[Figure]) -> None:
    n_epochs = 5000
    lines = ["epoch,step,train/loss,val/loss"]
    lines += [f"{epoch},{8 * epoch},{100.0 / (epoch + 1)},{110.0 / (epoch + 1)}" for epoch in range(n_epochs)]
    csv_path = tmp_path / "metrics.csv"
    csv_path.write_text("\n".join(lines) + "\n")
    assert_png(plots.plot_training_curves(csv_path, tmp_path / "curves.png"))
    (ax,) = shown_axes(drawn[0])
    for line in ax.get_lines():
        epochs = line.get_xdata()
        assert len(epochs) <= plots.MAX_CURVE_POINTS
        assert epochs[0] == 0 and epochs[-1] == n_epochs - 1
    assert ax.get_yscale() == "log"  # decided on every value, not only the drawn ones


def test_connectivity_has_one_colour_bar_per_row(tmp_path: Path, drawn: list[Figure]) -> None:
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((12, 4)), rng.standard_normal((4, 12))
    groups = np.stack([a[:, part] @ b[part, :] for part in group_slices([2, 2])])
    plots.plot_connectivity(a @ b, groups, tmp_path / "w.png", true_w=a @ b, true_group_w=groups)
    fig = drawn[0]
    colour_bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(colour_bars) == 3  # W row and one row per group, each shared by learned and true
    assert len(shown_axes(fig)) == 6


def png_zlib_level_class(path: Path) -> int:
    """FLEVEL of the zlib stream in ``path``'s first IDAT chunk: 0 fastest, 1 fast, 2 default, 3 best."""
    data = path.read_bytes()
    position = 8  # after the PNG signature
    while position < len(data):
        length = int.from_bytes(data[position : position + 4], "big")
        if data[position + 4 : position + 8] == b"IDAT":
            return data[position + 9] >> 6  # the zlib header's second byte
        position += 12 + length
    raise AssertionError(f"{path}: no IDAT chunk")


def test_figures_are_written_with_fast_png_compression(tmp_path: Path) -> None:
    fig = Figure(figsize=(4.0, 3.0))
    fig.subplots().plot(np.sin(np.linspace(0.0, 6.0, 200)))
    path = save_module.save_figure(fig, tmp_path / "fast.png")
    assert_png(path)
    assert save_module.PNG_COMPRESS_LEVEL == 3
    assert png_zlib_level_class(path) == 1  # zlib levels 2-5; matplotlib's default (6) writes 2
    default = tmp_path / "default.png"
    fig.savefig(default, dpi=save_module.DPI, format="png")
    assert png_zlib_level_class(default) == 2
