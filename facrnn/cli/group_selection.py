"""Choosing the number of latent groups G from data: ``python -m facrnn.cli.group_selection SWEEP_DIR``.

Train one model per grouping (and seed), e.g.

    python train.py -m experiment=synthetic_paper model.n_groups=1,2,3,6 seed=0,1,2 \\
        hydra.sweep.dir=logs/group_sweep

then this command evaluates every run that has no ``metrics.json`` yet and tabulates, per
grouping (mean ± SE over seeds), side by side:

- ``cond_loglik`` (held-out log-likelihood; ``bits_per_spike`` too for Poisson models),
- ``partial_corr_own``: the partial correlation of the posterior under the model's *own*
  grouping (the stored ``partial_corr`` uses the true grouping when one is known, which is
  not what a user without ground truth sees),
- ``rollout_r2_auc`` and ``group_coupling`` (:mod:`facrnn.evaluation.dynamics`).

Pick the largest G whose held-out likelihood and rollout score are as good as with fewer
groups while the groups stay independent (low ``partial_corr_own``) and uncoupled
(low ``group_coupling``); see docs/dynamics.md. The functions :func:`selection_rows`,
:func:`summarise_by_grouping` and :func:`render_selection_markdown` are what
``facrnn.cli.compare`` can call on its own run list.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from facrnn.core.grouping import resolve_group_sizes
from facrnn.evaluation.settings import EvalSettings
from facrnn.runs.run_dir import RunDir

log = logging.getLogger(__name__)

SELECTION_METRICS = (
    "cond_loglik",
    "bits_per_spike",
    "partial_corr_own",
    "rollout_r2_auc",
    "group_coupling",
    "generation_psd_corr",
    "group_latent_r2",
)

__all__ = ["grouping_label", "plot_selection", "render_selection_markdown", "selection_rows", "summarise_by_grouping"]


def grouping_label(group_sizes: Sequence[int]) -> str:
    """``[3, 3] -> "G=2 (3+3)"``."""
    return f"G={len(group_sizes)} ({'+'.join(str(size) for size in group_sizes)})"


def _run_dirs(directories: Iterable[str | Path]) -> list[Path]:
    """The training runs (plain checkpoints) under ``directories``, sorted."""
    found = set()
    for directory in directories:
        found.update(run.path for run in RunDir.runs_under(directory) if run.is_plain_run())
    return sorted(found)


def own_partial_corr(run_dir: Path, n_mc: int = 5, seed: int = 0) -> float:
    """Partial correlation of a run's held-out posterior means under its own grouping (cached).

    The evaluation estimator with its default budget (:class:`EvalSettings`): exact up to
    ``exact_max_points`` test bins, linear in their number above (docs/evaluation.md).
    """
    run = RunDir(run_dir)
    cache = run.own_partial_corr_file
    if cache.is_file():
        return float(json.loads(cache.read_text())["partial_corr_own"])
    import torch

    from facrnn.core.partial_correlation import partial_correlation_estimate
    from facrnn.evaluation.settings import EvalSettings
    from facrnn.runs.checkpoints import load_checkpoint
    from facrnn.runs.pipeline import instantiate_datamodule

    cfg = OmegaConf.load(run.config_file)
    datamodule = instantiate_datamodule(cfg.datamodule, source=run.config_file)  # only the project's datamodules
    module = load_checkpoint(run.find_checkpoint("best"))
    with torch.no_grad():
        means = module.model.encode(datamodule.split_tensors("test")["encoder_input"]).double()
    budget = EvalSettings().budget
    value = partial_correlation_estimate(means, module.model.width, module.group_sizes, n_mc, seed, budget).value
    cache.write_text(json.dumps({"partial_corr_own": value}) + "\n")
    return float(value)


def selection_rows(directories: Iterable[str | Path], evaluate_missing: bool = True) -> list[dict[str, Any]]:
    """One row per run: ``grouping``, ``G``, ``seed``, ``run_dir`` and its metrics.

    Runs without ``metrics.json`` are evaluated first (``evaluate_missing``).
    """
    from facrnn.runs.pipeline import evaluate_run

    rows = []
    for run_dir in _run_dirs(directories):
        run = RunDir(run_dir)
        cfg = OmegaConf.load(run.config_file)
        model_cfg = cfg.model
        sizes = resolve_group_sizes(
            model_cfg.get("latent_dim"),
            model_cfg.get("n_groups"),
            model_cfg.get("group_sizes"),
            model_cfg.get("group_rank"),
        )
        metrics_path = run.metrics_file
        if not metrics_path.is_file():
            if not evaluate_missing:
                continue
            evaluate_run(run_dir, EvalSettings(figures=False))
        metrics = json.loads(metrics_path.read_text())
        metrics["partial_corr_own"] = own_partial_corr(run_dir)
        rows.append(
            {
                "grouping": grouping_label(sizes),
                "G": len(sizes),
                "seed": int(cfg.get("seed", 0)),
                "run_dir": str(run_dir),
                **metrics,
            }
        )
    return rows


def summarise_by_grouping(
    rows: Sequence[dict[str, Any]], metrics: Sequence[str] = SELECTION_METRICS
) -> dict[str, dict[str, tuple[float, float, int]]]:
    """Mean, standard error (NaN for one seed) and count per grouping and metric.

    Returns
    -------
    dict grouping label -> dict metric -> (mean, se, n), groupings ordered by G.
    """
    by_grouping: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_grouping[row["grouping"]].append(row)
    summary = {}
    for label in sorted(by_grouping, key=lambda name: (by_grouping[name][0]["G"], name)):
        summary[label] = {}
        for metric in metrics:
            values = np.array(
                [
                    row[metric]
                    for row in by_grouping[label]
                    if isinstance(row.get(metric), (int, float)) and math.isfinite(row[metric])
                ]
            )
            if values.size:
                se = float(values.std(ddof=1) / np.sqrt(values.size)) if values.size > 1 else float("nan")
                summary[label][metric] = (float(values.mean()), se, int(values.size))
    return summary


def render_selection_markdown(summary: dict[str, dict[str, tuple[float, float, int]]]) -> str:
    """A markdown table: one row per grouping, ``mean ± SE`` per metric."""
    metrics = [m for m in SELECTION_METRICS if any(m in entry for entry in summary.values())]
    lines = ["| grouping | n | " + " | ".join(metrics) + " |", "|---|---|" + "---|" * len(metrics)]
    for label, entry in summary.items():
        n = max((value[2] for value in entry.values()), default=0)
        cells = []
        for metric in metrics:
            if metric not in entry:
                cells.append("")
                continue
            mean, se, _ = entry[metric]
            cells.append(f"{mean:.3f}" if math.isnan(se) else f"{mean:.3f} ± {se:.3f}")
        lines.append(f"| {label} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_selection(summary: dict[str, dict[str, tuple[float, float, int]]], path: str | Path) -> Path:
    """One panel per metric: mean ± SE against the grouping (a PNG, :func:`facrnn.plots.save.save_figure`)."""
    from matplotlib.figure import Figure

    from facrnn.plots.save import save_figure

    metrics = [m for m in SELECTION_METRICS if any(m in entry for entry in summary.values())]
    labels = list(summary)
    fig = Figure(figsize=(3.2 * len(metrics), 3.4), layout="constrained")
    for index, metric in enumerate(metrics):
        ax = fig.add_subplot(1, len(metrics), index + 1)
        means = [summary[label].get(metric, (np.nan, np.nan, 0))[0] for label in labels]
        errors = [summary[label].get(metric, (np.nan, np.nan, 0))[1] for label in labels]
        ax.errorbar(range(len(labels)), means, yerr=np.nan_to_num(errors), marker="o", capsize=3)
        ax.set_xticks(range(len(labels)), labels, rotation=30, fontsize="x-small")
        ax.set_xlabel("grouping", fontsize="small")
        ax.set_ylabel(f"{metric} (mean ± SE)", fontsize="small")
        ax.set_title(metric, fontsize="small")
    return save_figure(fig, path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m facrnn.cli.group_selection", description=__doc__.split("\n")[0])
    parser.add_argument("directories", nargs="+", help="sweep directories holding training runs")
    parser.add_argument("--out", default=None, help="output folder (default: FIRST_DIR/group_selection)")
    parser.add_argument("--no-evaluate", action="store_true", help="skip runs without metrics.json")
    options = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rows = selection_rows(options.directories, evaluate_missing=not options.no_evaluate)
    if not rows:
        parser.error(f"directories={options.directories}: no training runs found; expected folders with config.yaml")
    out = Path(options.out or Path(options.directories[0]) / "group_selection")
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise_by_grouping(rows)
    table = render_selection_markdown(summary)
    (out / "group_selection.md").write_text(table)
    (out / "group_selection.json").write_text(json.dumps(rows, indent=1) + "\n")
    plot_selection(summary, out / "group_selection.png")
    sys.stdout.write(f"{table}\nwritten: {out}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
