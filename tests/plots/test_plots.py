"""Figures: each plot writes a PNG; bad input fails with a ValueError naming the argument; what is
drawn is checked on the figure's artists (colours, line styles, axis labels, legends)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.axes import Axes
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure

from facrnn.core.grouping import group_slices
from facrnn.plots import behaviour, dynamics
from facrnn.plots import fit as plots
from facrnn.plots import save as save_module

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
GROUPINGS = [[3, 2, 1], [3, 3]]


def assert_png(path: Path) -> None:
    assert path.is_file()
    data = path.read_bytes()
    assert len(data) > 1000
    assert data.startswith(PNG_MAGIC)


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> list[Figure]:
    """The figures the plots modules save, in order (each is still written as a PNG)."""
    figures: list[Figure] = []
    real = save_module.save_figure

    def capture(fig: Figure, path: str | Path) -> Path:
        figures.append(fig)
        return real(fig, path)

    monkeypatch.setattr(save_module, "save_figure", capture)  # facrnn.cli.group_selection imports it late
    for module in (plots, dynamics, behaviour):
        monkeypatch.setattr(module, "save_figure", capture)
    return figures


def shown_axes(fig: Figure) -> list[Axes]:
    """The panels of ``fig`` that are drawn (no colour bars, no blank panels)."""
    return [ax for ax in fig.axes if (ax.axison or ax.name == "3d") and ax.get_label() != "<colorbar>"]


def assert_axes_labelled(fig: Figure) -> None:
    for ax in shown_axes(fig):
        labels = [ax.get_xlabel(), ax.get_ylabel()] + ([ax.get_zlabel()] if hasattr(ax, "get_zlabel") else [])
        assert all(label.strip() for label in labels), f"panel {ax.get_title()!r} has axis labels {labels}"


def lines_labelled(ax: Axes, prefix: str) -> list:
    return [line for line in ax.get_lines() if line.get_label().startswith(prefix)]


def latents(group_sizes: list[int], n_bins: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    time = np.arange(n_bins)[:, None] / 20.0
    total = sum(group_sizes)
    true = np.sin(time * (1.0 + np.arange(total)) + rng.uniform(0, np.pi, total))
    return true, true + 0.1 * rng.standard_normal(true.shape)


def low_rank(group_sizes: list[int], n: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, sum(group_sizes)))
    b = rng.standard_normal((sum(group_sizes), n))
    stack = np.stack([a[:, part] @ b[part, :] for part in group_slices(group_sizes)])
    return a @ b, stack


@pytest.mark.parametrize("group_sizes", GROUPINGS)
def test_plot_latents(tmp_path: Path, group_sizes: list[int]) -> None:
    true, estimate = latents(group_sizes, n_bins=600)
    out = plots.plot_latents(true, estimate, group_sizes, tmp_path / "sub" / "latents.png", title="latents")
    assert out == tmp_path / "sub" / "latents.png"
    assert_png(out)


@pytest.mark.parametrize("group_sizes", [[3, 2, 1], [4]])
def test_plot_latents_tells_true_from_learned_by_colour_and_style(
    tmp_path: Path, drawn: list[Figure], group_sizes: list[int]
) -> None:
    true, estimate = latents(group_sizes)
    plots.plot_latents(true, estimate, group_sizes, tmp_path / "latents.png")
    (fig,) = drawn
    assert_axes_labelled(fig)
    panels = shown_axes(fig)
    assert len(panels) == 2 * len(group_sizes)  # a time series and a state space per group
    for ax in panels:
        true_lines, learned_lines = lines_labelled(ax, plots.TRUE_LABEL), lines_labelled(ax, plots.ESTIMATE_LABEL)
        assert true_lines and learned_lines
        true_colours = {to_rgba(line.get_color()) for line in true_lines}
        learned_colours = {to_rgba(line.get_color()) for line in learned_lines}
        assert not true_colours & learned_colours
        assert {line.get_linestyle() for line in true_lines}.isdisjoint(line.get_linestyle() for line in learned_lines)
        legend = ax.get_legend()
        assert legend is not None
        texts = [text.get_text() for text in legend.get_texts()]
        assert any(text.startswith(plots.TRUE_LABEL) for text in texts)
        assert any(text.startswith(plots.ESTIMATE_LABEL) for text in texts)
    time_series = panels[0]  # group 1: one shade per dimension within each of the two families
    assert len({to_rgba(line.get_color()) for line in lines_labelled(time_series, plots.TRUE_LABEL)}) == group_sizes[0]


def test_plot_latents_skips_unmatched_group(tmp_path: Path) -> None:
    true, estimate = latents([3, 2, 1])
    estimate[:, 3:5] = np.nan  # group 2 unmatched
    assert_png(plots.plot_latents(true, estimate, [3, 2, 1], str(tmp_path / "latents.png"), max_bins=50))


def test_plot_latents_bad_input(tmp_path: Path) -> None:
    true, estimate = latents([3, 3])
    with pytest.raises(ValueError, match=r"aligned_latents.*\(200, 5\).*true_latents.*\(200, 6\)"):
        plots.plot_latents(true, estimate[:, :5], [3, 3], tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"group_sizes=\[3, 2\] sums to 5.*K=6"):
        plots.plot_latents(true, estimate, [3, 2], tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"group_sizes.*positive"):
        plots.plot_latents(true, estimate, [3, 3, 0], tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"true_latents has shape \(200,\).*2-D"):
        plots.plot_latents(true[:, 0], estimate[:, 0], [1], tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"max_bins=0"):
        plots.plot_latents(true, estimate, [3, 3], tmp_path / "x.png", max_bins=0)
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("group_sizes", [[3, 2, 1], [2]])
def test_plot_posterior_latents(tmp_path: Path, drawn: list[Figure], group_sizes: list[int]) -> None:
    _, estimate = latents(group_sizes, n_bins=120)
    out = plots.plot_posterior_latents(estimate, group_sizes, tmp_path / "sub" / "posterior.png", title="posterior means")
    assert out == tmp_path / "sub" / "posterior.png"
    assert_png(out)
    (fig,) = drawn
    assert_axes_labelled(fig)
    panels = shown_axes(fig)
    assert len(panels) == len(group_sizes)  # one panel per group
    colours = []
    for ax, part in zip(panels, group_slices(group_sizes)):
        lines = ax.get_lines()
        assert [line.get_label() for line in lines] == [f"z{k + 1}" for k in range(part.start, part.stop)]
        assert [text.get_text() for text in ax.get_legend().get_texts()] == [line.get_label() for line in lines]
        colours += [to_rgba(line.get_color()) for line in lines]
        np.testing.assert_allclose(lines[0].get_ydata(), estimate[:, part.start])
    assert len(set(colours)) == sum(group_sizes)  # coloured by latent
    assert fig.get_suptitle() == "posterior means"


def test_plot_posterior_latents_breaks_lines_between_trials(tmp_path: Path, drawn: list[Figure]) -> None:
    values = np.arange(12, dtype=float).reshape(6, 2)
    plots.plot_posterior_latents(values, [2], tmp_path / "p.png", time=[0, 1, 2, 0, 1, 2], time_label="bin in trial")
    (ax,) = shown_axes(drawn[0])
    x = ax.get_lines()[0].get_xdata()
    np.testing.assert_array_equal(np.isnan(x), [False] * 3 + [True] + [False] * 3)  # not joined across trials
    assert ax.get_xlabel() == "bin in trial"


def test_plot_posterior_latents_bad_input(tmp_path: Path) -> None:
    values = np.zeros((10, 3))
    target = tmp_path / "x.png"
    with pytest.raises(ValueError, match=r"latents has shape \(10,\)"):
        plots.plot_posterior_latents(values[:, 0], [1], target)
    with pytest.raises(ValueError, match=r"group_sizes=\[2\] sums to 2.*K=3"):
        plots.plot_posterior_latents(values, [2], target)
    with pytest.raises(ValueError, match=r"time has shape \(9,\): expected \(10,\)"):
        plots.plot_posterior_latents(values, [3], target, time=np.arange(9))
    with pytest.raises(ValueError, match=r"max_bins=0"):
        plots.plot_posterior_latents(values, [3], target, max_bins=0)
    assert not target.exists()


@pytest.mark.parametrize("group_sizes", GROUPINGS)
def test_plot_connectivity_with_truth(tmp_path: Path, group_sizes: list[int]) -> None:
    w, stack = low_rank(group_sizes, seed=0)
    w_true, stack_true = low_rank(group_sizes, seed=1)
    matching = [(g, len(group_sizes) - 1 - g) for g in range(len(group_sizes))]
    out = plots.plot_connectivity(w, stack, tmp_path / "conn.png", true_w=w_true, true_group_w=stack_true, matching=matching)
    assert_png(out)


@pytest.mark.parametrize("truth_label", ["true", "reference"])
def test_plot_connectivity_names_what_the_truth_is(tmp_path: Path, drawn: list[Figure], truth_label: str) -> None:
    w, stack = low_rank([2, 1])
    w_true, stack_true = low_rank([2, 1], seed=1)
    plots.plot_connectivity(w, stack, tmp_path / "c.png", true_w=w_true, true_group_w=stack_true, truth_label=truth_label)
    titles = [ax.get_title() for ax in shown_axes(drawn[0])]
    assert [title for title in titles if title.startswith("W*")] == [
        f"W* ({truth_label})",
        f"W*_1 ({truth_label})",
        f"W*_2 ({truth_label})",
    ]
    if truth_label == "reference":
        assert not any("true" in title for title in titles)
    assert_axes_labelled(drawn[0])


def test_plot_connectivity_learned_only_and_unequal_group_counts(tmp_path: Path) -> None:
    w, stack = low_rank([3, 2, 1])
    assert_png(plots.plot_connectivity(w, stack, tmp_path / "learned.png"))
    w_true, stack_true = low_rank([3, 3], seed=1)
    # Two true groups, three learned; one learned group unmatched, default matching too.
    truth = {"true_w": w_true, "true_group_w": stack_true}
    assert_png(plots.plot_connectivity(w, stack, tmp_path / "a.png", matching=[(0, 2)], **truth))
    assert_png(plots.plot_connectivity(w, stack, tmp_path / "b.png", **truth))


def test_plot_connectivity_bad_input(tmp_path: Path) -> None:
    w, stack = low_rank([3, 3])
    target = tmp_path / "x.png"
    with pytest.raises(ValueError, match=r"est_group_w has shape \(12, 12\).*3-D"):
        plots.plot_connectivity(w, stack[0], target)
    with pytest.raises(ValueError, match=r"est_group_w has shape \(2, 10, 10\).*\(G, 12, 12\)"):
        plots.plot_connectivity(w, stack[:, :10, :10], target)
    with pytest.raises(ValueError, match=r"est_w has shape \(12, 10\).*square"):
        plots.plot_connectivity(w[:, :10], stack, target)
    with pytest.raises(ValueError, match=r"true_w has shape \(10, 10\).*\(12, 12\)"):
        plots.plot_connectivity(w, stack, target, true_w=w[:10, :10])
    with pytest.raises(ValueError, match=r"true_group_w has shape \(12, 12\).*3-D"):
        plots.plot_connectivity(w, stack, target, true_group_w=stack[0])
    with pytest.raises(ValueError, match=r"matching pair \(0, 5\) out of range.*est_group_w has 2"):
        plots.plot_connectivity(w, stack, target, true_group_w=stack, matching=[(0, 5)])
    with pytest.raises(ValueError, match=r"learned group appears in more than one pair"):
        plots.plot_connectivity(w, stack, target, true_group_w=stack, matching=[(0, 1), (1, 1)])
    assert not target.exists()


def write_metrics_csv(path: Path, n_epochs: int = 6) -> Path:
    """Sparse rows as Lightning's CSVLogger writes them: train and val rows separate."""
    header = ["epoch", "step", "train/kl", "train/loss", "train/nll", "train/overlap", "train/partial_corr"]
    header += ["val/kl", "val/loss", "val/nll", "val/partial_corr"]
    lines = [",".join(header)]
    for epoch in range(n_epochs):
        step = 8 * (epoch + 1) - 1
        train = [2.0 + 0.1 * epoch, 140.0 - 5 * epoch, 138.0 - 5 * epoch, 0.0, 0.03 / (epoch + 1)]
        lines.append(",".join([str(epoch), str(step)] + [str(v) for v in train] + [""] * 4))
        if epoch % 2 == 1:  # validation every other epoch
            val = [2.1, 150.0 - 4 * epoch, 148.0 - 4 * epoch, ""]  # val/partial_corr never logged
            lines.append(",".join([str(epoch), str(step)] + [""] * 5 + [str(v) for v in val]))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_plot_training_curves(tmp_path: Path) -> None:
    csv_path = write_metrics_csv(tmp_path / "metrics.csv")
    out = plots.plot_training_curves(csv_path, tmp_path / "curves.png")
    assert out == tmp_path / "curves.png"
    assert_png(out)
    curves = plots._read_metrics_csv(csv_path)
    assert list(curves) == ["kl", "loss", "nll", "overlap", "partial_corr"]
    assert curves["loss"]["val"] == ([1.0, 3.0, 5.0], [146.0, 138.0, 130.0])
    assert len(curves["loss"]["train"][0]) == 6
    assert "val" not in curves["partial_corr"]


def test_plot_training_curves_bad_input(tmp_path: Path) -> None:
    no_epoch = tmp_path / "no_epoch.csv"
    no_epoch.write_text("step,train/loss\n1,2.0\n")
    with pytest.raises(ValueError, match=r"no_epoch\.csv.*no 'epoch' column"):
        plots.plot_training_curves(no_epoch, tmp_path / "x.png")
    no_terms = tmp_path / "no_terms.csv"
    no_terms.write_text("epoch,step,lr-Adam\n0,1,0.001\n")
    with pytest.raises(ValueError, match=r"no_terms\.csv.*no train/ or val/ columns"):
        plots.plot_training_curves(no_terms, tmp_path / "x.png")
    empty_values = tmp_path / "empty_values.csv"
    empty_values.write_text("epoch,step,train/loss\n0,1,\n")
    with pytest.raises(ValueError, match=r"empty_values\.csv.*no values"):
        plots.plot_training_curves(empty_values, tmp_path / "x.png")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(ValueError, match=r"empty\.csv.*empty file"):
        plots.plot_training_curves(empty, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_attractor_panels_name_their_axes(tmp_path: Path, drawn: list[Figure]) -> None:
    rng = np.random.default_rng(0)
    dynamics.plot_attractors(rng.standard_normal((40, 6)), rng.standard_normal((40, 6)), [3, 2, 1], tmp_path / "a.png")
    (fig,) = drawn
    assert_axes_labelled(fig)
    panels = shown_axes(fig)
    assert [ax.get_xlabel() for ax in panels] == ["z1", "z4", "time bin"]
    assert [ax.get_ylabel() for ax in panels] == ["z2", "z5", "z6"]
    assert panels[0].get_zlabel() == "z3"
    assert panels[0].get_legend() is not None


def test_dynamics_and_coupling_panels_are_labelled(tmp_path: Path, drawn: list[Figure]) -> None:
    rng = np.random.default_rng(0)
    dynamics.plot_rollout_curves({"facrnn": rng.random((3, 5))}, tmp_path / "r.png")
    dynamics.plot_coupling(np.array([[1.0, 0.2], [0.1, 1.0]]), tmp_path / "c.png")
    for fig in drawn:
        assert_axes_labelled(fig)


def test_reach_trajectory_panels_name_their_axes(tmp_path: Path, drawn: list[Figure]) -> None:
    rng = np.random.default_rng(0)
    trial, time = np.repeat(np.arange(4), 10), np.tile(np.arange(10), 4)
    position = np.cumsum(rng.standard_normal((40, 2)), axis=0)
    behaviour.plot_reach_trajectories(position, position + 0.1, trial, time, tmp_path / "r.png", direction=trial % 2)
    (fig,) = drawn
    assert_axes_labelled(fig)
    left, right = shown_axes(fig)
    assert "hand" in left.get_xlabel() and "latent" in right.get_xlabel()


def test_group_selection_figure_is_labelled(tmp_path: Path, drawn: list[Figure]) -> None:
    from facrnn.cli.group_selection import grouping_label, plot_selection, summarise_by_grouping

    rows = [
        {"grouping": grouping_label([6]), "G": 1, "seed": 0, "cond_loglik": 1.0, "group_coupling": 0.3},
        {"grouping": grouping_label([6]), "G": 1, "seed": 1, "cond_loglik": 3.0, "group_coupling": 0.2},
        {"grouping": grouping_label([3, 3]), "G": 2, "seed": 0, "cond_loglik": 2.0, "group_coupling": 0.1},
    ]
    out = plot_selection(summarise_by_grouping(rows), tmp_path / "sel" / "group_selection.png")
    assert_png(out)
    (fig,) = drawn
    assert_axes_labelled(fig)
    panels = shown_axes(fig)
    assert [ax.get_title() for ax in panels] == ["cond_loglik", "group_coupling"]
    assert [tick.get_text() for tick in panels[0].get_xticklabels()] == ["G=1 (6)", "G=2 (3+3)"]
