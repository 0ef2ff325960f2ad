"""Compare methods over a sweep: ``python -m facrnn.cli.compare SWEEP_DIR [SWEEP_DIR ...]``.

For every training run found under the given directories (any folder holding
``config.yaml`` and ``checkpoints/``), this

1. evaluates the run unless it holds metrics of the same evaluation (see below);
2. for runs of the ``--posthoc-from`` method (``lrrnn``), computes the post-hoc baselines
   ``lrrnn_ica`` and ``lint`` (:mod:`facrnn.evaluation.posthoc`) likewise;
3. runs the permutation analysis (:mod:`facrnn.evaluation.permutation`) of every run and variant;
4. writes ``results.csv`` (one row per run: method, seed, dataset, every metric),
   ``summary.md`` (mean ± SE per method and metric, paired t-tests of the reference method
   against every other, paired by seed) and PNG figures into ``--out``
   (default ``FIRST_DIR/comparison``); with ``--markdown PATH`` also a results page with
   its figures in ``PATH``'s folder (``docs/results.md`` -> ``docs/results/``).

Everything it computes is cached in the run directories: the metrics of one split and
checkpoint in :meth:`RunDir.metrics_path` (``metrics.json`` for test/best,
``metrics_<split>_<checkpoint>.json`` otherwise; ``posthoc_<kind>/`` likewise), the permutation
analysis in ``permutation.json`` (``permutation_<split>_<checkpoint>.json``). A stored file is
reused only if its provenance record (:mod:`facrnn.runs.provenance`) has the same
:func:`~facrnn.runs.provenance.evaluation_key` as the evaluation asked for (split, checkpoint
file and epoch, ``n_mc``, seeds, rollout settings, config hash, package version) and it is not
older than the checkpoint; anything else (``--force`` too) is computed again.

Runs are grouped into methods by their configuration without the seed
(:func:`comparable_config`): runs of one method (``model.name``) whose configurations differ
get one row each, named by the differing keys (``facrnn[model.beta=1.18]``,
:func:`config_labels`); differing datamodule settings label the data set instead.
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

from facrnn.cli.errors import exit_on_error
from facrnn.errors import CheckpointNotFoundError
from facrnn.evaluation.posthoc import POSTHOC_METHODS
from facrnn.evaluation.settings import EvalSettings
from facrnn.runs.provenance import evaluation_key, experiment_config
from facrnn.runs.run_dir import RunDir, write_text_atomic

log = logging.getLogger(__name__)

RESULTS_FILE = "results.csv"
SUMMARY_FILE = "summary.md"
ID_COLUMNS = ("method", "seed", "dataset", "run_dir")
# Preferred method order in tables and figures; others follow alphabetically.
METHOD_ORDER = ("facrnn", "lrrnn", "lrrnn_ica", "lint", "bdrnn", "facrnn_full")
# Metrics the headline claims are about, with the direction that counts as better.
CLAIM_METRICS = {"partial_corr": "lower", "group_latent_r2": "higher", "latent_r2": "higher"}
CLAIM_BASELINES = ("lrrnn", "lrrnn_ica", "lint")
# Metrics drawn as box plots (those present); --box-metrics changes the list.
BOX_METRICS = (
    "partial_corr",
    "group_latent_r2",
    "perm_group_latent_r2_max",
    "component_latent_r2",
    "latent_r2",
    "latent_r2_refit",
    "rotation_r2_max",
    "bits_per_spike",
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
# Config keys (dotted) that differ between runs of one experiment by run identity only; the
# launch keys (facrnn.runs.provenance.LAUNCH_KEYS) are already left out by experiment_config.
IDENTITY_KEYS = ("seed", "model.seed", "optimized_metric", "hparams_search", "replica_of")
# Config paths whose resolved values differ from run to run (or machine to machine): string
# values under them are written back as an interpolation, so that they compare equal. A replica
# of a model.replicas run (replica_of: its training job) keeps the job's directories.
RUN_PATHS = {
    "paths.output_dir": "${paths.output_dir}",
    "replica_of": "${paths.output_dir}",
    "paths.root_dir": "${paths.root_dir}",
}
# Shown for a key a run's config does not have, in a method or data set label.
UNSET = "unset"

__all__ = [
    "RunVariant",
    "collect",
    "comparable_config",
    "config_labels",
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
    def base_method(self) -> str:
        """``method`` without its configuration label: ``facrnn`` for ``facrnn[model.beta=1.18]``."""
        return base_method(self.method)

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
            problem = "not a directory" if directory.exists() else "no such directory"
            raise CheckpointNotFoundError(
                f"{directory}: {problem}; expected a sweep (multirun) directory or a run directory written by train.py"
            )
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


def base_method(method: str) -> str:
    """A method name without its configuration label: ``facrnn[model.beta=1.18]`` -> ``facrnn``."""
    return method.split("[", 1)[0]


def method_sort_key(method: str) -> tuple[int, str]:
    """Methods of :data:`METHOD_ORDER` first (labelled ones after their base), then the others alphabetically."""
    base = base_method(method)
    return (METHOD_ORDER.index(base), method) if base in METHOD_ORDER else (len(METHOD_ORDER), method)


def _canonical(value: Any) -> Any:
    """A config leaf as compared between runs: numbers as float (``1`` equals ``1.0``), lists as JSON."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    return json.dumps(value, sort_keys=True, default=str)


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as ``{"model.beta": ...}``; lists stay leaves."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def comparable_config(cfg: DictConfig | dict) -> dict[str, Any]:
    """What a run trained, flattened to dotted keys, without what only identifies the run.

    :func:`facrnn.runs.provenance.experiment_config` (the resolved config without launch
    keys) minus :data:`IDENTITY_KEYS` (the seed, ...); string values under the run's own
    directories (:data:`RUN_PATHS`: ``trainer.default_root_dir``, the checkpoint directory,
    the data cache) are written back as ``${paths.output_dir}/...`` or ``${paths.root_dir}/...``,
    so that runs of one sweep, replicas of a ``model.replicas`` run, and runs of sweeps on
    different machines compare equal. Numbers are compared as floats.

    Parameters
    ----------
    cfg : DictConfig or dict
        A run's ``config.yaml``.

    Returns
    -------
    dict
        Dotted key -> canonical value (:func:`_canonical`).
    """
    container = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    resolved = _flatten(container)
    prefixes = sorted(
        ((str(resolved[key]).rstrip("/"), token) for key, token in RUN_PATHS.items() if isinstance(resolved.get(key), str)),
        key=lambda item: -len(item[0]),
    )
    prefixes = [(path, token) for path, token in prefixes if path]

    def unrun(value: Any) -> Any:
        if isinstance(value, str):
            for path, token in prefixes:
                if value == path or value.startswith(path + "/"):
                    return token + value[len(path) :]
        return value

    flat = _flatten(experiment_config(container))
    return {key: _canonical(unrun(value)) for key, value in flat.items() if key not in IDENTITY_KEYS}


_MISSING = object()


def _value_label(value: Any, digits: int) -> str:
    if value is _MISSING:
        return UNSET
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return f"{value:.{digits}g}"
    return str(value).lower() if isinstance(value, bool) or value is None else str(value)


def _format_values(values: Sequence[Any]) -> list[str]:
    """Labels of one key's values: whole numbers as integers, other numbers with the fewest
    significant digits (at least 3) that keep distinct values distinct, the rest as written."""
    distinct = {value for value in values if isinstance(value, float)}
    digits = 3
    while digits < 17 and len({_value_label(value, digits) for value in distinct}) < len(distinct):
        digits += 1
    return [_value_label(value, digits) for value in values]


def config_labels(configs: Sequence[dict[str, Any]]) -> list[str]:
    """Labels telling apart the runs of one method by how their configs differ.

    Parameters
    ----------
    configs : sequence of dict
        :func:`comparable_config` of each run (of one method, one data set).

    Returns
    -------
    list of str
        ``""`` for every run when all configs agree; else, for each run, its values of the
        keys that differ between the runs, ``[model.beta=1.18]`` (keys sorted, comma-separated;
        ``unset`` for a key a run does not have). Runs with equal configs get equal labels.
    """
    keys = sorted(set().union(*configs)) if configs else []
    differing = [key for key in keys if len({repr(config.get(key, _MISSING)) for config in configs}) > 1]
    if not differing:
        return [""] * len(configs)
    columns = {key: _format_values([config.get(key, _MISSING) for config in configs]) for key in differing}
    return ["[" + ",".join(f"{key}={columns[key][i]}" for key in differing) + "]" for i in range(len(configs))]


# ---------------------------------------------------------------------- evaluation


class DataCache:
    """Set-up datamodules shared by all runs with the same data config."""

    def __init__(self) -> None:
        self._cache: dict[str, Any] = {}

    def get(self, datamodule_cfg: DictConfig, source: str | Path = "config.yaml") -> Any:
        """The set-up datamodule of ``datamodule_cfg``, read from ``source`` (a run's ``config.yaml``).

        The section may name only the project's own datamodules
        (:func:`facrnn.runs.trusted.check_trusted_targets`), checked before anything is built.
        """
        from facrnn.runs.pipeline import instantiate_datamodule
        from facrnn.runs.trusted import check_trusted_targets

        checked = check_trusted_targets(datamodule_cfg, "datamodule", source)
        key = OmegaConf.to_yaml(checked)
        if key not in self._cache:
            self._cache[key] = instantiate_datamodule(checked, source=source)
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


def expected_key(variant: RunVariant, settings: EvalSettings, run_record: dict[str, Any] | None = None) -> dict[str, Any]:
    """The :func:`~facrnn.runs.provenance.evaluation_key` that metrics of ``variant`` scored with
    ``settings`` carry (:func:`facrnn.runs.pipeline.expected_provenance`, plus ``posthoc`` for a
    post-hoc variant), as stored in JSON.

    Parameters
    ----------
    variant : RunVariant
    settings : EvalSettings
    run_record : dict, optional
        ``expected_provenance`` of the training run, when already read (it reads the checkpoint).
    """
    if run_record is None:
        from facrnn.runs.pipeline import expected_provenance

        run_record = expected_provenance(variant.run_dir, settings)
    record = run_record if variant.kind is None else {**run_record, "posthoc": variant.kind}
    return json.loads(json.dumps(evaluation_key(record), default=str))


def _differing_fields(expected: dict[str, Any], stored: dict[str, Any]) -> list[str]:
    return sorted(key for key in set(expected) | set(stored) if expected.get(key) != stored.get(key))


def outdated_reason(
    stored: tuple[dict[str, Any], dict[str, Any]] | None, path: Path, expected: dict[str, Any], not_before: float
) -> str | None:
    """Why stored metrics cannot be reused, or None when they can.

    Parameters
    ----------
    stored : (metrics, provenance) or None
        :meth:`RunDir.read_metrics` of the evaluation asked for.
    path : Path
        The file they were read from.
    expected : dict
        :func:`expected_key` of the evaluation asked for.
    not_before : float
        Modification time of the checkpoint: older metrics belong to an earlier state of the run.
    """
    if stored is None:
        return "not evaluated yet"
    provenance = stored[1]
    if not provenance:
        return "no provenance record (written by an older version)"
    differing = _differing_fields(expected, evaluation_key(provenance))
    if differing:
        return f"measured with other {', '.join(differing)}"
    if path.stat().st_mtime < not_before:
        return "older than the checkpoint"
    return None


def ensure_scored(
    variant: RunVariant,
    data: DataCache,
    config: DictConfig,
    settings: EvalSettings,
    force: bool = False,
    expected: dict[str, Any] | None = None,
) -> None:
    """Fill ``variant.metrics`` and ``variant.permutation``, computing and caching what is missing.

    Stored metrics (:meth:`RunDir.metrics_path` of ``settings.split`` and ``settings.checkpoint``)
    are reused when :func:`outdated_reason` finds nothing against them; the permutation
    analysis (:meth:`RunDir.permutation_path`) when it records the evaluation key of those metrics
    and is not older than them.

    Parameters
    ----------
    variant : RunVariant
        The run (or post-hoc variant) to score.
    data : DataCache
        Datamodules shared between runs.
    config : DictConfig
        The run's ``config.yaml``.
    settings : EvalSettings
        How missing or outdated metrics are computed.
    force : bool
        Recompute even what is cached and up to date.
    expected : dict, optional
        :func:`expected_key` of ``variant`` and ``settings``, when already known.
    """
    from facrnn.evaluation.permutation import permutation_analysis
    from facrnn.runs import pipeline

    files = variant.files
    split, checkpoint = settings.split, settings.checkpoint
    metrics_path = files.metrics_path(split, checkpoint)
    permutation_file = files.permutation_path(split, checkpoint)
    checkpoint_time = RunDir(variant.run_dir).find_checkpoint(checkpoint).stat().st_mtime
    expected = expected if expected is not None else expected_key(variant, settings)

    datamodule = None
    stored = files.read_metrics(split, checkpoint)
    reason = "--force" if force else outdated_reason(stored, metrics_path, expected, checkpoint_time)
    if reason is not None:
        log.info("%s: evaluating (%s)", metrics_path, reason)
        datamodule = data.get(config.datamodule, RunDir(variant.run_dir).config_file)
        if variant.kind is None:
            pipeline.evaluate_run(variant.run_dir, settings, datamodule=datamodule)
        else:
            pipeline.evaluate_posthoc(variant.run_dir, variant.kind, settings, datamodule=datamodule)
    stored = files.read_metrics(split, checkpoint)
    if stored is None:
        raise RuntimeError(f"{metrics_path}: not written by the evaluation of {variant.run_dir}")
    variant.metrics, provenance = stored
    measured = json.loads(json.dumps(evaluation_key(provenance), default=str))
    if reason is not None and _differing_fields(expected, measured):
        log.warning(
            "%s: its provenance differs from the expected one in %s; it will be evaluated again on every call",
            metrics_path,
            ", ".join(_differing_fields(expected, measured)),
        )

    cached = json.loads(permutation_file.read_text()) if permutation_file.is_file() and not force else None
    if (
        cached is None
        or cached.get(RunDir.PROVENANCE) != measured
        or permutation_file.stat().st_mtime < metrics_path.stat().st_mtime
    ):
        datamodule = datamodule or data.get(config.datamodule, RunDir(variant.run_dir).config_file)
        tensors = datamodule.split_tensors(split)
        true_sizes = datamodule.recording.group_sizes
        if "latents" not in tensors or true_sizes is None:
            permutation = {"partitions": [], "scores": []}
        else:
            model = load_variant_model(variant, datamodule, checkpoint, settings.seed)
            true_latents = tensors["latents"].double().numpy()
            if true_latents.shape[1] != model.latent_dim:
                permutation = {"partitions": [], "scores": []}
            else:
                permutation = permutation_analysis(true_latents, posterior_means(model, tensors), true_sizes).to_dict()
        cached = {RunDir.PROVENANCE: measured, **permutation}
        write_text_atomic(permutation_file, json.dumps(cached) + "\n")
    variant.permutation = {key: value for key, value in cached.items() if key != RunDir.PROVENANCE}


def name_runs(configs: dict[Path, DictConfig]) -> dict[Path, tuple[str, str]]:
    """Method and data set names of runs, from their configs.

    The data set is :func:`dataset_name`, labelled by :func:`config_labels` of the ``datamodule``
    settings where runs of that name differ in them; the method is :func:`method_name`,
    labelled by the other settings where runs of that name and data set differ in them
    (``facrnn[model.beta=1.18]``). Settings are compared by :func:`comparable_config`, so
    runs that differ only by seed share a name.

    Parameters
    ----------
    configs : dict Path -> DictConfig
        ``config.yaml`` of each run.

    Returns
    -------
    dict Path -> (method, dataset)
    """
    comparable = {run: comparable_config(cfg) for run, cfg in configs.items()}
    by_dataset: dict[str, list[Path]] = defaultdict(list)
    for run, cfg in configs.items():
        by_dataset[dataset_name(cfg.datamodule)].append(run)
    datasets: dict[Path, str] = {}
    for name, members in by_dataset.items():
        data_settings = [{k: v for k, v in comparable[run].items() if k.startswith("datamodule.")} for run in members]
        datasets.update((run, name + label) for run, label in zip(members, config_labels(data_settings)))
    by_method: dict[tuple[str, str], list[Path]] = defaultdict(list)
    for run, cfg in configs.items():
        by_method[datasets[run], method_name(cfg.model)].append(run)
    names: dict[Path, tuple[str, str]] = {}
    for (dataset, name), members in by_method.items():
        settings = [{k: v for k, v in comparable[run].items() if not k.startswith("datamodule.")} for run in members]
        names.update((run, (name + label, dataset)) for run, label in zip(members, config_labels(settings)))
    return names


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
        The method (``model.name``) whose runs (linear encoder and decoder) get post-hoc variants.
    posthoc_kinds : sequence of str
        The post-hoc variants computed (``ica``, ``svd``).
    force : bool
        Re-score everything.
    progress : bool
        Show a progress bar.

    Raises
    ------
    CheckpointNotFoundError
        A directory does not exist, or none holds a training run.
    """
    runs = discover_runs(directories)
    if not runs:
        raise CheckpointNotFoundError(
            f"{', '.join(map(str, directories))}: no training runs found; expected folders with config.yaml and checkpoints/"
        )
    from facrnn.runs.pipeline import expected_provenance

    data = DataCache()
    configs = {run_dir: OmegaConf.load(RunDir(run_dir).config_file) for run_dir in runs}
    names = name_runs(configs)
    todo: list[tuple[RunVariant, DictConfig]] = []
    for run_dir, config in configs.items():
        method, dataset = names[run_dir]
        base = RunVariant(run_dir, method, int(config.get("seed", 0)), dataset)
        todo.append((base, config))
        linear = "mlp" not in (config.model.get("encoder", "linear"), config.model.get("decoder", "linear"))
        if base.base_method == posthoc_from and linear:
            label = method[len(base.base_method) :]
            for kind in posthoc_kinds:
                todo.append((RunVariant(run_dir, POSTHOC_METHODS[kind] + label, base.seed, dataset, kind=kind), config))
    variants = []
    iterator: Iterable = todo
    if progress:
        from rich.progress import track

        iterator = track(todo, description="scoring runs", transient=True)
    records: dict[Path, dict[str, Any]] = {}
    for variant, config in iterator:
        torch.manual_seed(settings.seed)
        try:
            if variant.run_dir not in records:
                records[variant.run_dir] = expected_provenance(variant.run_dir, settings)
        except CheckpointNotFoundError as error:  # no checkpoint yet: a run that is still starting
            log.warning("%s: skipped (%s)", variant.run_dir, error)
            continue
        expected = expected_key(variant, settings, records[variant.run_dir])
        ensure_scored(variant, data, config, settings, force=force, expected=expected)
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
    sweeps = rotation_sweeps(chosen, methods)
    if sweeps:
        figures["Behaviour: latent R² vs rotation of the hand position"] = compare_plots.plot_rotation_sweeps(
            sweeps, out_dir / "rotation_sweeps.png"
        )
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
    aligned, group_scores, connectivity, reaches = {}, {}, {}, {}
    true_latents = true_sizes = true_w = true_groups = None
    for method, variant in shown.items():
        config = OmegaConf.load(RunDir(variant.run_dir).config_file)
        datamodule = data.get(config.datamodule, RunDir(variant.run_dir).config_file)
        model = load_variant_model(variant, datamodule, settings.checkpoint, settings.seed)
        evaluation = evaluate_model(
            model,
            datamodule.split_tensors(settings.split),
            datamodule.recording,
            figure_settings,
            fit_tensors=datamodule.split_tensors("train"),
        )
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
        if evaluation.behaviour is not None and evaluation.behaviour.position.shape[1] == 2:
            reaches[method] = evaluation.behaviour
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
    if reaches:
        first = next(iter(reaches.values()))
        figures[f"Reach trajectories, {settings.split} trials (seed {seed})"] = compare_plots.plot_reach_grid(
            first.position,
            {method: behaviour.aligned for method, behaviour in reaches.items()},
            first.trial,
            first.time,
            out_dir / "reach_trajectories.png",
            first.direction,
            {method: behaviour.metrics["latent_r2"] for method, behaviour in reaches.items()},
        )
    return figures


def rotation_sweeps(variants: Sequence[RunVariant], methods: Sequence[str]) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """``method -> [(theta_deg, latent_r2), ...]`` from the ``rotation_sweep.csv`` of every variant that has one."""
    sweeps: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for method in methods:
        for variant in (v for v in variants if v.method == method):
            path = variant.files.rotation_sweep_file
            if not path.is_file():
                continue
            with open(path, newline="") as handle:
                rows = list(csv.DictReader(handle))
            if rows:
                theta = np.array([float(row["theta_deg"]) for row in rows])
                sweeps.setdefault(method, []).append((theta, np.array([float(row["latent_r2"]) for row in rows])))
    return sweeps


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
    methods = sorted({v.base_method for v in trained}, key=method_sort_key)
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
    """The command line; a bad argument or run directory ends with ``error: <message>`` and exit status 1.

    Raises
    ------
    SystemExit
        After a :class:`~facrnn.errors.FacRNNError` (:func:`facrnn.cli.errors.exit_on_error`) or bad usage.
    """
    options = parse_args(argv)
    with exit_on_error():
        return run_compare(options, argv)


def run_compare(options: argparse.Namespace, argv: Sequence[str] | None = None) -> int:
    """Score, tabulate and draw what ``options`` (:func:`parse_args`) ask for; ``argv`` goes into the summary's commands."""
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
    methods = methods_of(rows)
    if options.reference not in methods:
        log.warning(
            "--reference %s: no such method, so no paired t-tests; the methods are %s", options.reference, ", ".join(methods)
        )
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
