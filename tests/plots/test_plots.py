"""Figures: each plot writes a PNG; bad input fails with a ValueError naming the argument."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from facrnn.core.grouping import group_slices
from facrnn.plots import fit as plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
GROUPINGS = [[3, 2, 1], [3, 3]]


def assert_png(path: Path) -> None:
    assert path.is_file()
    data = path.read_bytes()
    assert len(data) > 1000
    assert data.startswith(PNG_MAGIC)


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


@pytest.mark.parametrize("group_sizes", GROUPINGS)
def test_plot_connectivity_with_truth(tmp_path: Path, group_sizes: list[int]) -> None:
    w, stack = low_rank(group_sizes, seed=0)
    w_true, stack_true = low_rank(group_sizes, seed=1)
    matching = [(g, len(group_sizes) - 1 - g) for g in range(len(group_sizes))]
    out = plots.plot_connectivity(w, stack, tmp_path / "conn.png", true_w=w_true, true_group_w=stack_true, matching=matching)
    assert_png(out)


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
