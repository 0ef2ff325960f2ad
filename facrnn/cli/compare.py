"""Compare methods over a sweep: ``python -m facrnn.cli.compare SWEEP_DIR [SWEEP_DIR ...]``.

For every training run found under the given directories (any folder holding
``config.yaml`` and ``checkpoints/``), this

1. evaluates the run if it has no ``metrics.json`` yet;
2. for runs of the ``--posthoc-from`` method (``lrrnn``), computes the post-hoc baselines
   ``lrrnn_ica`` and ``lint`` (:mod:`facrnn.evaluation.posthoc`) if not done yet;
3. runs the permutation analysis (:mod:`facrnn.evaluation.permutation`) of every run and variant;
4. writes ``results.csv`` (one row per run: method, seed, dataset, every metric),
   ``summary.md`` (mean ± SE per method and metric, paired t-tests of the reference method
   against every other, paired by seed) and PNG figures into ``--out``
   (default ``FIRST_DIR/comparison``); with ``--markdown PATH`` also a results page with
   its figures in ``PATH``'s folder (``docs/results.md`` -> ``docs/results/``).

Everything it computes is cached in the run directories (``metrics.json``,
``posthoc_<kind>/metrics.json``, ``permutation.json``), so a rerun only redoes what is
missing or older than the run's checkpoint (``--force`` redoes everything).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import re
import shlex
import shutil
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from scipy import stats

from facrnn.evaluation.posthoc import POSTHOC_METHODS
from facrnn.evaluation.settings import EvalSettings
from facrnn.runs.run_dir import RunDir

log = logging.getLogger(__name__)

RESULTS_FILE = "results.csv"
SUMMARY_FILE = "summary.md"
ID_COLUMNS = ("method", "seed", "dataset", "run_dir")
# Preferred method order in tables and figures; others follow alphabetically.
METHOD_ORDER = ("facrnn", "lrrnn", "lrrnn_ica", "lint", "bdrnn", "facrnn_full")
# Metrics the headline claims are about, with the direction that counts as better.
CLAIM_METRICS = {"partial_corr": "lower", "group_latent_r2": "higher"}
CLAIM_BASELINES = ("lrrnn", "lrrnn_ica", "lint")
# Metrics drawn as box plots (those present); --box-metrics changes the list.
BOX_METRICS = (
    "partial_corr",
    "group_latent_r2",
    "perm_group_latent_r2_max",
    "component_latent_r2",
    "total_corr",
    "recon_r2",
    "cond_loglik",
    "connectivity_r2",
    "sub_connectivity_r2",
    "sub_connectivity_rmse",
    "rollout_r2_auc",
    "group_coupling",
)
# Per-horizon series (rollout_r2_k1, ...) stay in results.csv but not in the markdown tables.
SERIES_METRIC = re.compile(r".*_k\d+$")

__all__ = [
    "RunVariant",
    "collect",
    "discover_runs",
    "main",
    "method_name",
    "paired_tests",
    "summarise",
]


# ------------------------------------------------------------------------------ runs


@dataclass
class RunVariant:
    """One scored model: a training run, or a post-hoc variant of one (``kind``)."""

    run_dir: Path
    method: str
    seed: int
    dataset: str
    kind: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    permutation: dict[str, Any] | None = None

    @property
    def files(self) -> RunDir:
        """The directory of this variant's ``metrics.json`` and ``permutation.json``: the run's
        own, or its ``posthoc_<kind>`` directory."""
        run = RunDir(self.run_dir)
        return run if self.kind is None else run.posthoc(self.kind)

    @property
    def out_dir(self) -> Path:
        """Where this variant's ``metrics.json`` and ``permutation.json`` live."""
        return self.files.path


def discover_runs(directories: Iterable[str | Path]) -> list[Path]:
    """Training run directories (``config.yaml`` + ``checkpoints/{best,last}.ckpt``) under
    ``directories``, sorted; a run of batched copies (``model.replicas``) counts by its replica
    directories."""
    runs: set[Path] = set()
    for directory in directories:
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"{directory}: not a directory; expected a sweep (multirun) directory")
        for run in RunDir.runs_under(directory):
            if run.is_plain_run():
                runs.add(run.path.resolve())
            elif not run.has_copies():  # batched copies: their replicas are the runs
                log.warning("%s: no checkpoints/best.ckpt or last.ckpt (a fast_dev_run?), skipped", run.path)
    return sorted(runs)


def method_name(model_cfg: DictConfig | dict) -> str:
    """Method of a run's ``model`` config: ``model.name``, ``_mlp`` appended for MLP encoders/decoders."""
    name = str(model_cfg.get("name", "facrnn"))
    mlp = "mlp" in (model_cfg.get("encoder", "linear"), model_cfg.get("decoder", "linear"))
    return f"{name}_mlp" if mlp and not name.endswith("_mlp") else name


def dataset_name(datamodule_cfg: DictConfig | dict) -> str:
    """Short data set name: the datamodule class without ``DataModule`` (plus the file for ``from_file``)."""
    target = str(datamodule_cfg.get("_target_", "unknown")).rsplit(".", 1)[-1]
    name = target.removesuffix("DataModule").lower() or target
    if datamodule_cfg.get("path"):
        name += f":{Path(str(datamodule_cfg.get('path'))).name}"
    return name


def method_sort_key(method: str) -> tuple[int, str]:
    return (METHOD_ORDER.index(method), "") if method in METHOD_ORDER else (len(METHOD_ORDER), method)


# ---------------------------------------------------------------------- evaluation


class DataCache:
    """Set-up datamodules shared by all runs with the same data config."""

    def __init__(self) -> None:
        self._cache: dict[str, Any] = {}

    def get(self, datamodule_cfg: DictConfig) -> Any:
        from facrnn.runs.pipeline import instantiate_datamodule

        key = OmegaConf.to_yaml(datamodule_cfg, resolve=True)
        if key not in self._cache:
            self._cache[key] = instantiate_datamodule(datamodule_cfg)
        return self._cache[key]


def load_variant_model(variant: RunVariant, datamodule: Any, checkpoint: str = "best", seed: int = 0) -> Any:
    """The ``LowRankRNN`` of a run, post-hoc transformed when ``variant.kind`` is set."""
    from facrnn.evaluation.posthoc import posthoc_group_sizes, posthoc_model
    from facrnn.runs.checkpoints import load_checkpoint

    model = load_checkpoint(RunDir(variant.run_dir).find_checkpoint(checkpoint)).model
    model.eval()
    if variant.kind is None:
        return model
    train_input = datamodule.split_tensors("train")["encoder_input"]
    return posthoc_model(model, variant.kind, posthoc_group_sizes(model, datamodule), train_input, seed)


def posterior_means(model: Any, tensors: dict[str, torch.Tensor]) -> np.ndarray:
    """Posterior means ``(n, K)`` of a split, float64."""
    with torch.no_grad():
        return model.encode(tensors["encoder_input"]).double().numpy()


def ensure_scored(
    variant: RunVariant, data: DataCache, config: DictConfig, settings: EvalSettings, force: bool = False
) -> None:
    """Fill ``variant.metrics`` and ``variant.permutation``, computing and caching what is missing.

    Parameters
    ----------
    variant : RunVariant
        The run (or post-hoc variant) to score.
    data : DataCache
        Datamodules shared between runs.
    config : DictConfig
        The run's ``config.yaml``.
    settings : EvalSettings
        How a missing or outdated ``metrics.json`` is computed.
    force : bool
        Recompute even what is cached and up to date.
    """
    from facrnn.evaluation.permutation import permutation_analysis
    from facrnn.runs.pipeline import evaluate_posthoc, evaluate_run

    metrics_path = variant.files.metrics_file
    permutation_path = variant.files.permutation_file
    checkpoint_time = RunDir(variant.run_dir).find_checkpoint(settings.checkpoint).stat().st_mtime

    def outdated(path: Path) -> bool:
        """Missing, or older than the checkpoint (the run was still training, or was retrained)."""
        return force or not path.is_file() or path.stat().st_mtime < checkpoint_time

    datamodule = None
    if outdated(metrics_path):
        datamodule = data.get(config.datamodule)
        if variant.kind is None:
            evaluate_run(variant.run_dir, settings, datamodule=datamodule)
        else:
            evaluate_posthoc(variant.run_dir, variant.kind, settings, datamodule=datamodule)
    variant.metrics = json.loads(metrics_path.read_text())
    if outdated(permutation_path) or permutation_path.stat().st_mtime < metrics_path.stat().st_mtime:
        datamodule = datamodule or data.get(config.datamodule)
        tensors = datamodule.split_tensors(settings.split)
        true_sizes = datamodule.recording.group_sizes
        if "latents" not in tensors or true_sizes is None:
            permutation = {"partitions": [], "scores": []}
        else:
            model = load_variant_model(variant, datamodule, settings.checkpoint, settings.seed)
            true_latents = tensors["latents"].double().numpy()
            if true_latents.shape[1] != model.latent_dim:
                permutation = {"partitions": [], "scores": []}
            else:
                permutation = permutation_analysis(true_latents, posterior_means(model, tensors), true_sizes).to_dict()
        permutation_path.write_text(json.dumps(permutation) + "\n")
    variant.permutation = json.loads(permutation_path.read_text())


def collect(
    directories: Sequence[str | Path],
    settings: EvalSettings,
    posthoc_from: str = "lrrnn",
    posthoc_kinds: Sequence[str] = tuple(sorted(POSTHOC_METHODS)),
    force: bool = False,
    progress: bool = True,
) -> list[RunVariant]:
    """Every run (and post-hoc variant) under ``directories``, scored.

    Parameters
    ----------
    directories : sequence of str or Path
        Sweep directories, searched recursively.
    settings : EvalSettings
        How runs without (up-to-date) metrics are scored.
    posthoc_from : str
        The method whose runs (linear encoder and decoder) get post-hoc variants.
    posthoc_kinds : sequence of str
        The post-hoc variants computed (``ica``, ``svd``).
    force : bool
        Re-score everything.
    progress : bool
        Show a progress bar.
    """
    runs = discover_runs(directories)
    if not runs:
        raise FileNotFoundError(
            f"{', '.join(map(str, directories))}: no training runs found; expected folders with config.yaml and checkpoints/"
        )
    data = DataCache()
    todo: list[tuple[RunVariant, DictConfig]] = []
    for run_dir in runs:
        config = OmegaConf.load(RunDir(run_dir).config_file)
        method = method_name(config.model)
        base = RunVariant(run_dir, method, int(config.get("seed", 0)), dataset_name(config.datamodule))
        todo.append((base, config))
        linear = "mlp" not in (config.model.get("encoder", "linear"), config.model.get("decoder", "linear"))
        if method == posthoc_from and linear:
            for kind in posthoc_kinds:
                todo.append((RunVariant(run_dir, POSTHOC_METHODS[kind], base.seed, base.dataset, kind=kind), config))
    variants = []
    iterator: Iterable = todo
    if progress:
        from rich.progress import track

        iterator = track(todo, description="scoring runs", transient=True)
    for variant, config in iterator:
        torch.manual_seed(settings.seed)
        try:
            RunDir(variant.run_dir).find_checkpoint(settings.checkpoint)
        except FileNotFoundError as error:  # no checkpoint yet: a run that is still starting
            log.warning("%s: skipped (%s)", variant.run_dir, error)
            continue
        ensure_scored(variant, data, config, settings, force=force)
        variants.append(variant)
    return variants


# ------------------------------------------------------------------------- tables


def variant_row(variant: RunVariant) -> dict[str, Any]:
    """One tidy row: identifiers, metrics, permutation-analysis summary."""
    row: dict[str, Any] = {
        "method": variant.method,
        "seed": variant.seed,
        "dataset": variant.dataset,
        "run_dir": str(variant.out_dir),
    }
    row.update(variant.metrics)
    scores = np.asarray((variant.permutation or {}).get("scores", []), dtype=float)
    if scores.size:
        row.update(
            perm_group_latent_r2_max=float(scores.max()),
            perm_group_latent_r2_median=float(np.median(scores)),
            perm_group_latent_r2_min=float(scores.min()),
        )
    return row


def write_results_csv(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """``results.csv``: identifier columns first, then metrics in order of first appearance."""
    columns = list(ID_COLUMNS)
    for row in rows:
        columns += [key for key in row if key not in columns]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
    return path


def metric_columns(rows: Sequence[dict[str, Any]], series: bool = True) -> list[str]:
    """Numeric metric columns of ``rows`` in order of first appearance.

    ``series=False`` leaves out per-horizon series such as ``rollout_r2_k3``.
    """
    columns: list[str] = []
    for row in rows:
        columns += [
            key
            for key, value in row.items()
            if key not in ID_COLUMNS
            and key not in columns
            and isinstance(value, (int, float))
            and (series or not SERIES_METRIC.match(key))
        ]
    return columns


def methods_of(rows: Sequence[dict[str, Any]]) -> list[str]:
    return sorted({row["method"] for row in rows}, key=method_sort_key)


def summarise(rows: Sequence[dict[str, Any]], metrics: Sequence[str]) -> dict[str, dict[str, tuple[float, float, int]]]:
    """Mean, standard error (``std(ddof=1) / sqrt(n)``; NaN for n < 2) and n per method and metric.

    Returns
    -------
    dict method -> dict metric -> (mean, se, n)
    """
    result: dict[str, dict[str, tuple[float, float, int]]] = {}
    for method in methods_of(rows):
        result[method] = {}
        for metric in metrics:
            values = np.array(
                [
                    row[metric]
                    for row in rows
                    if row["method"] == method and isinstance(row.get(metric), (int, float)) and math.isfinite(row[metric])
                ]
            )
            n = int(values.size)
            mean = float(values.mean()) if n else float("nan")
            se = float(values.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
            result[method][metric] = (mean, se, n)
    return result


def _by_seed(rows: Sequence[dict[str, Any]], method: str, metric: str) -> dict[tuple[str, int], float]:
    """``(dataset, seed) -> value`` of one method (duplicates averaged)."""
    grouped: dict[tuple[str, int], list[float]] = defaultdict(list)
    for row in rows:
        value = row.get(metric)
        if row["method"] == method and isinstance(value, (int, float)) and math.isfinite(value):
            grouped[row["dataset"], int(row["seed"])].append(float(value))
    return {key: float(np.mean(values)) for key, values in grouped.items()}


def paired_tests(
    rows: Sequence[dict[str, Any]], reference: str, baselines: Sequence[str], metrics: Sequence[str]
) -> list[dict[str, Any]]:
    """Paired t-tests (``scipy.stats.ttest_rel``) of ``reference`` against each baseline, paired by seed.

    Only seeds (of the same data set) present for both methods enter. ``t`` and ``p`` are
    NaN with fewer than 2 pairs.

    Returns
    -------
    list of dict
        ``metric``, ``baseline``, ``n`` (pairs), ``reference_mean``, ``baseline_mean``,
        ``mean_diff`` (reference - baseline), ``t``, ``p``.
    """
    results = []
    for metric in metrics:
        reference_values = _by_seed(rows, reference, metric)
        for baseline in baselines:
            baseline_values = _by_seed(rows, baseline, metric)
            keys = sorted(set(reference_values) & set(baseline_values))
            a = np.array([reference_values[key] for key in keys])
            b = np.array([baseline_values[key] for key in keys])
            if len(keys) >= 2:
                test = stats.ttest_rel(a, b)
                t, p = float(test.statistic), float(test.pvalue)
            else:
                t = p = float("nan")
            results.append(
                {
                    "metric": metric,
                    "baseline": baseline,
                    "n": len(keys),
                    "reference_mean": float(a.mean()) if keys else float("nan"),
                    "baseline_mean": float(b.mean()) if keys else float("nan"),
                    "mean_diff": float((a - b).mean()) if keys else float("nan"),
                    "t": t,
                    "p": p,
                }
            )
    return results


# ----------------------------------------------------------------------- markdown


def _format(value: float, digits: int = 3) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:.{digits}g}" if abs(value) < 1e-3 and value != 0 else f"{value:.{digits}f}"


def _p_format(p: float) -> str:
    if not math.isfinite(p):
        return "–"
    return f"{p:.1e}" if p < 1e-3 else f"{p:.3f}"


def claims(tests: Sequence[dict[str, Any]], reference: str) -> list[str]:
    """Plain statements of the headline comparisons, as measured (true or not)."""
    lines = []
    for test in tests:
        direction = CLAIM_METRICS.get(test["metric"])
        if direction is None or test["baseline"] not in CLAIM_BASELINES or test["n"] == 0:
            continue
        diff = test["mean_diff"]
        better = diff < 0 if direction == "lower" else diff > 0
        significant = math.isfinite(test["p"]) and test["p"] < 0.05
        verdict = "yes" if better and significant else ("better but not significant" if better else "**no**")
        lines.append(
            f"| {test['metric']} ({direction} is better) | {test['baseline']} | {_format(test['reference_mean'])} "
            f"| {_format(test['baseline_mean'])} | {test['n']} | {_p_format(test['p'])} | {verdict} |"
        )
    if not lines:
        return []
    header = [
        f"| metric | baseline | {reference} mean | baseline mean | pairs | p (paired t) | {reference} better, p < 0.05? |",
        "|---|---|---|---|---|---|---|",
    ]
    return header + lines


def render_markdown(
    rows: Sequence[dict[str, Any]],
    reference: str,
    baselines: Sequence[str] | None,
    figures: dict[str, str],
    commands: Sequence[str] = (),
    title: str = "Comparison",
) -> str:
    """The summary page: runs, headline comparisons, mean ± SE table, t-tests, figures."""
    lines = [f"# {title}", ""]
    if commands:
        lines += ["Produced by:", "", "```bash", *commands, "```", ""]
    for dataset in sorted({row["dataset"] for row in rows}):
        subset = [row for row in rows if row["dataset"] == dataset]
        metrics = metric_columns(subset, series=False)
        methods = methods_of(subset)
        seeds = sorted({int(row["seed"]) for row in subset})
        lines += [f"## Data set `{dataset}`", ""]
        lines += [
            (
                f"{len(subset)} scored models; methods {', '.join(f'`{m}`' for m in methods)}; "
                f"seeds {', '.join(map(str, seeds))}. Held-out metrics; SE = standard error over seeds."
            ),
            "",
        ]
        others = [m for m in methods if m != reference] if baselines is None else [m for m in baselines if m in methods]
        tests = paired_tests(subset, reference, others, metrics) if reference in methods else []
        headline = claims(tests, reference)
        if headline:
            lines += ["### Headline comparisons", "", *headline, ""]
        summary = summarise(subset, metrics)
        lines += ["### Mean ± SE per method", ""]
        lines += ["| metric | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
        for metric in metrics:
            cells = []
            for method in methods:
                mean, se, n = summary[method][metric]
                cells.append("–" if n == 0 else f"{_format(mean)} ± {_format(se)} (n={n})")
            lines.append(f"| {metric} | " + " | ".join(cells) + " |")
        lines.append("")
        if tests:
            lines += [f"### Paired t-tests: `{reference}` vs each baseline (scipy `ttest_rel`, paired by seed)", ""]
            lines += ["Each cell: mean difference (reference − baseline), t, p.", ""]
            lines += ["| metric | " + " | ".join(others) + " |", "|---|" + "---|" * len(others)]
            by_key = {(test["metric"], test["baseline"]): test for test in tests}
            for metric in metrics:
                cells = []
                for baseline in others:
                    test = by_key[metric, baseline]
                    cells.append(
                        "–"
                        if test["n"] == 0
                        else f"{_format(test['mean_diff'])}, t={_format(test['t'], 2)}, p={_p_format(test['p'])}"
                    )
                lines.append(f"| {metric} | " + " | ".join(cells) + " |")
            lines.append("")
    if figures:
        lines += ["## Figures", ""]
        for caption, link in figures.items():
            lines += [f"**{caption}**", "", f"![{caption}]({link})", ""]
    lines += [
        (
            "Metrics are defined in README.md (`evaluate.py`) and DESIGN §3. `perm_group_latent_r2_*`: group latent R² "
            "over every split of the K latent dimensions into groups of the true sizes (permutation analysis). "
            "Models without the true number of groups (`lrrnn`, `lrrnn_ica`, `lint`, `facrnn_full`) are scored with "
            "the true group sizes applied to consecutive latent dimensions. Per-horizon series (`*_k1`, `*_k2`, ...) "
            "are in results.csv only."
        ),
        "",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------ figures


def make_figures(
    variants: Sequence[RunVariant],
    rows: Sequence[dict[str, Any]],
    out_dir: Path,
    reference: str,
    settings: EvalSettings,
    box_metrics: Sequence[str] | None = None,
    figure_seed: int | None = None,
) -> dict[str, Path]:
    """All comparison figures into ``out_dir``; returns ``caption -> path``.

    ``box_metrics`` are drawn as box plots (default: those of :data:`BOX_METRICS` present);
    the latent and connectivity figures show the runs of ``figure_seed`` (default: the
    reference method's lowest seed), scored with ``settings`` (one posterior sample, no
    rollout measures).
    """
    from facrnn.evaluation.metrics import r2_score
    from facrnn.evaluation.scoring import evaluate_model
    from facrnn.plots import compare as compare_plots
    from facrnn.plots.dynamics import plot_rollout_curves, rollout_curves_from_rows

    out_dir.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Path] = {}
    dataset = min({row["dataset"] for row in rows})
    subset = [row for row in rows if row["dataset"] == dataset]
    methods = methods_of(subset)
    available = metric_columns(subset)
    metrics = [m for m in (box_metrics or BOX_METRICS) if m in available]
    tests = paired_tests(subset, reference, [m for m in methods if m != reference], metrics) if reference in methods else []
    p_values: dict[str, dict[str, float]] = defaultdict(dict)
    for test in tests:
        p_values[test["metric"]][test["baseline"]] = test["p"]
    values = {
        metric: {
            method: [
                row[metric]
                for row in subset
                if row["method"] == method and metric in row and isinstance(row[metric], (int, float))
            ]
            for method in methods
        }
        for metric in metrics
    }
    figures["Per-seed metrics by method"] = compare_plots.plot_metric_boxes(
        values, methods, out_dir / "metrics_boxplots.png", reference, p_values
    )

    curves = rollout_curves_from_rows(subset)
    if curves:
        figures["Rollout R² vs k"] = plot_rollout_curves(curves, out_dir / "rollout_r2.png")

    chosen = [v for v in variants if v.dataset == dataset]
    with_perm = {}
    own = {}
    n_partitions = None
    for method in methods:
        scores = [s for v in chosen if v.method == method for s in (v.permutation or {}).get("scores", [])]
        if scores:
            with_perm[method] = scores
            own[method] = [v.metrics.get("group_latent_r2", float("nan")) for v in chosen if v.method == method]
            n_partitions = len(next(v for v in chosen if v.method == method).permutation["scores"])
    if with_perm:
        figures["Permutation analysis"] = compare_plots.plot_permutation_boxes(
            with_perm, own, out_dir / "permutation_boxplots.png", n_partitions
        )

    # One seed for the latent and connectivity figures.
    seeds = sorted({v.seed for v in chosen if v.method == reference} or {v.seed for v in chosen})
    seed = figure_seed if figure_seed is not None else seeds[0]
    shown = {v.method: v for v in sorted(chosen, key=lambda v: method_sort_key(v.method)) if v.seed == seed}
    if not shown:
        log.warning("no runs with seed %s: no latent or connectivity figures", seed)
        return figures
    data = DataCache()
    figure_settings = settings.with_changes(n_mc=1, dynamics=False)
    aligned, group_scores, connectivity = {}, {}, {}
    true_latents = true_sizes = true_w = true_groups = None
    for method, variant in shown.items():
        config = OmegaConf.load(RunDir(variant.run_dir).config_file)
        datamodule = data.get(config.datamodule)
        model = load_variant_model(variant, datamodule, settings.checkpoint, settings.seed)
        evaluation = evaluate_model(model, datamodule.split_tensors(settings.split), datamodule.recording, figure_settings)
        if evaluation.true_latents is not None and evaluation.true_group_sizes is not None:
            true_latents, true_sizes = evaluation.true_latents, evaluation.true_group_sizes
            aligned[method] = evaluation.aligned_latents
            from facrnn.core.grouping import group_slices

            group_scores[method] = [
                r2_score(true_latents[:, part], evaluation.aligned_latents[:, part])
                if not np.all(np.isnan(evaluation.aligned_latents[:, part]))
                else float("nan")
                for part in group_slices(true_sizes)
            ]
        arrays = evaluation.arrays
        if "W_true" in arrays and "W" in arrays:
            true_w, true_groups = arrays["W_true"], arrays["W_groups_true"]
            ordered = np.full(true_groups.shape, np.nan)
            for i, j in evaluation.group_matching or []:
                ordered[i] = arrays["W_groups"][j]
            connectivity[method] = (arrays["W"], ordered)
    if aligned:
        figures[f"Latent trajectories (seed {seed})"] = compare_plots.plot_latent_overlays(
            true_latents, aligned, true_sizes, out_dir / "latent_overlays.png", group_scores
        )
    if connectivity:
        figures[f"Connectivity (seed {seed})"] = compare_plots.plot_connectivity_grid(
            true_w, true_groups, connectivity, out_dir / "connectivity_grid.png"
        )
    return figures


# ---------------------------------------------------------------------------- CLI


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m facrnn.cli.compare",
        description="Evaluate every run of one or more sweep directories, add post-hoc baselines, "
        "and write results.csv, summary.md and comparison figures.",
    )
    parser.add_argument("sweep_dirs", nargs="+", type=Path, help="Hydra multirun directories (searched recursively)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: FIRST_SWEEP_DIR/comparison)")
    parser.add_argument("--reference", default="facrnn", help="method tested against every other (default: facrnn)")
    parser.add_argument(
        "--baseline",
        action="append",
        default=None,
        help="baseline(s) to test the reference against (repeatable; default: every other method)",
    )
    parser.add_argument("--posthoc-from", default="lrrnn", help="method whose runs get post-hoc variants (default: lrrnn)")
    parser.add_argument(
        "--posthoc",
        nargs="*",
        default=sorted(POSTHOC_METHODS),
        choices=sorted(POSTHOC_METHODS),
        help="post-hoc variants to compute (default: ica svd; none: --posthoc)",
    )
    parser.add_argument("--checkpoint", default="best", help="best | last (default: best)")
    parser.add_argument("--split", default="test", help="held-out split to score (default: test)")
    parser.add_argument("--n-mc", type=int, default=10, help="posterior samples per point for PC (default: 10)")
    parser.add_argument("--eval-seed", type=int, default=0, help="seed of PC samples and FastICA (default: 0)")
    parser.add_argument("--rollout-steps", type=int, default=20, help="k-step rollout R² horizon (default: 20)")
    parser.add_argument("--no-dynamics", action="store_true", help="skip rollout/fixed-point measures when evaluating")
    parser.add_argument("--figure-seed", type=int, default=None, help="seed of the runs shown in latent/connectivity figures")
    parser.add_argument(
        "--markdown",
        type=Path,
        default=None,
        help="also write a results page here, figures into its folder (docs/results.md -> docs/results/)",
    )
    parser.add_argument(
        "--box-metrics",
        nargs="+",
        default=None,
        help=f"metrics drawn as box plots (default: those of {', '.join(BOX_METRICS)} present)",
    )
    parser.add_argument("--title", default="Comparison", help="title of summary.md / the results page")
    parser.add_argument("--force", action="store_true", help="re-evaluate runs that already have metrics")
    parser.add_argument("--run-figures", action="store_true", help="also write per-run figures when evaluating")
    parser.add_argument("--no-figures", action="store_true", help="skip the comparison figures")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    return parser.parse_args(argv)


def eval_settings(options: argparse.Namespace) -> EvalSettings:
    """The evaluation settings of the parsed command line (checked: a bad value is a ConfigError)."""
    return EvalSettings(
        split=options.split,
        checkpoint=options.checkpoint,
        n_mc=options.n_mc,
        seed=options.eval_seed,
        rollout_steps=options.rollout_steps,
        dynamics=not options.no_dynamics,
        figures=options.run_figures,
    )


def training_job_dir(run_dir: Path) -> Path:
    """The directory of the training job that wrote ``run_dir``: the parent run for a replica
    of a ``model.replicas`` run (``replica_of`` in its config.yaml), else ``run_dir`` itself."""
    replica_of = OmegaConf.load(RunDir(run_dir).config_file).get("replica_of")
    return Path(replica_of) if replica_of else run_dir


def sweep_commands(variants: Sequence[RunVariant]) -> list[str]:
    """An equivalent single sweep command reconstructed from the runs' ``.hydra/overrides.yaml``."""
    common: list[str] | None = None
    trained = [v for v in variants if v.kind is None]
    # a replica of a model.replicas run was launched as its parent job (seed = the parent's seed)
    origins = {training_job_dir(variant.run_dir) for variant in trained}
    seeds: set[int] = set()
    for origin in origins:
        path = RunDir(origin).overrides_file
        overrides = [str(item) for item in OmegaConf.load(path)] if path.is_file() else []
        overrides = [item for item in overrides if item.split("=")[0] not in ("model", "seed")]
        common = overrides if common is None else [item for item in common if item in overrides]
        seeds.add(int(OmegaConf.load(RunDir(origin).config_file).get("seed", 0)))
    methods = sorted({v.method for v in trained}, key=method_sort_key)
    if not trained or any(m.endswith("_mlp") for m in methods):
        return []
    sweep = [
        "python",
        "train.py",
        "-m",
        *(common or []),
        f"model={','.join(methods)}",
        f"seed={','.join(map(str, sorted(seeds)))}",
    ]
    parents = {origin.parent for origin in origins}
    if len(parents) == 1:
        parent = parents.pop()
        try:
            parent = parent.relative_to(Path.cwd().resolve())
        except ValueError:
            pass
        sweep.append(f"hydra.sweep.dir={parent}")
    return [shlex.join(sweep)]


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    settings = eval_settings(options)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(options.threads)
    from facrnn.runs.pipeline import quiet_known_warnings

    quiet_known_warnings()
    out_dir = options.out or options.sweep_dirs[0] / "comparison"
    variants = collect(
        options.sweep_dirs, settings, posthoc_from=options.posthoc_from, posthoc_kinds=options.posthoc, force=options.force
    )
    rows = [variant_row(variant) for variant in sorted(variants, key=lambda v: (v.dataset, method_sort_key(v.method), v.seed))]
    results = write_results_csv(rows, out_dir / RESULTS_FILE)
    figures = (
        {}
        if options.no_figures
        else make_figures(
            variants, rows, out_dir / "figures", options.reference, settings, options.box_metrics, options.figure_seed
        )
    )
    compare_command = shlex.join(["python", "-m", "facrnn.cli.compare", *(argv if argv is not None else sys.argv[1:])])
    commands = [*sweep_commands(variants), compare_command]
    summary = render_markdown(
        rows,
        options.reference,
        options.baseline,
        {caption: f"figures/{path.name}" for caption, path in figures.items()},
        commands,
        options.title,
    )
    (out_dir / SUMMARY_FILE).write_text(summary)
    sys.stdout.write(summary + "\n")
    sys.stdout.write(f"written: {results}, {out_dir / SUMMARY_FILE}, {len(figures)} figures in {out_dir / 'figures'}\n")
    if options.markdown is not None:
        page = options.markdown
        figure_dir = page.parent / page.stem
        figure_dir.mkdir(parents=True, exist_ok=True)
        for path in figures.values():
            shutil.copyfile(path, figure_dir / path.name)
        page.write_text(
            render_markdown(
                rows,
                options.reference,
                options.baseline,
                {caption: f"{page.stem}/{path.name}" for caption, path in figures.items()},
                commands,
                options.title,
            )
        )
        sys.stdout.write(f"written: {page} and {figure_dir}/\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
