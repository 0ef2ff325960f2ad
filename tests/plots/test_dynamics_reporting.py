"""Figures of the rollout measures and the group-number selection tables."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from facrnn.cli.group_selection import grouping_label, render_selection_markdown, summarise_by_grouping
from facrnn.plots.dynamics import plot_attractors, plot_coupling, plot_rollout_curves, rollout_curves_from_rows

PNG = b"\x89PNG"


def test_rollout_curves_from_rows_groups_runs_by_method() -> None:
    rows = [
        {"method": "facrnn", "seed": 0, "rollout_r2_k1": 0.9, "rollout_r2_k2": 0.5},
        {"method": "facrnn", "seed": 1, "rollout_r2_k1": 0.7, "rollout_r2_k2": 0.3},
        {"method": "lrrnn", "seed": 0, "rollout_r2_k1": 0.8},
        {"method": "lint", "seed": 0, "recon_r2": 0.5},  # no rollout: left out
    ]
    curves = rollout_curves_from_rows(rows)
    assert sorted(curves) == ["facrnn", "lrrnn"]
    np.testing.assert_allclose(curves["facrnn"], [[0.9, 0.5], [0.7, 0.3]])
    assert curves["lrrnn"].shape == (1, 2) and math.isnan(curves["lrrnn"][0, 1])


def test_dynamics_figures_are_written(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    paths = [
        plot_rollout_curves({"facrnn": rng.random((3, 5)), "lrrnn": rng.random(5)}, tmp_path / "rollout.png"),
        plot_attractors(rng.standard_normal((50, 6)), rng.standard_normal((50, 6)), [3, 2, 1], tmp_path / "att.png"),
        plot_coupling(np.array([[1.0, 0.2], [0.1, 1.0]]), tmp_path / "coupling.png", coupling=0.15),
    ]
    for path in paths:
        assert path.read_bytes()[:4] == PNG


def test_group_selection_summary_mean_and_standard_error() -> None:
    rows = [
        {"grouping": grouping_label([6]), "G": 1, "seed": 0, "cond_loglik": 1.0, "rollout_r2_auc": 0.2},
        {"grouping": grouping_label([6]), "G": 1, "seed": 1, "cond_loglik": 3.0, "rollout_r2_auc": 0.4},
        {"grouping": grouping_label([3, 3]), "G": 2, "seed": 0, "cond_loglik": 2.0, "partial_corr_own": 0.1},
    ]
    summary = summarise_by_grouping(rows)
    assert list(summary) == ["G=1 (6)", "G=2 (3+3)"]  # ordered by G
    mean, se, n = summary["G=1 (6)"]["cond_loglik"]
    assert (mean, n) == (2.0, 2) and se == pytest.approx(np.std([1.0, 3.0], ddof=1) / np.sqrt(2))
    assert math.isnan(summary["G=2 (3+3)"]["cond_loglik"][1])
    table = render_selection_markdown(summary)
    assert "| G=1 (6) | 2 | 2.000 ± 1.000 |" in table
    assert "partial_corr_own" in table and "rollout_r2_auc" in table
