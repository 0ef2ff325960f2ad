"""Every file name of a training run directory, in one place (light: no torch import).

Layout of a run directory (``train.py`` writes it, ``evaluate.py`` and the tools of
:mod:`facrnn.cli` read it)::

    RUN/config.yaml                   the resolved configuration of the run
    RUN/checkpoints/best.ckpt         lowest validation loss   (conf/callbacks/default.yaml)
    RUN/checkpoints/last.ckpt         latest state, resumed by ckpt_path=last
    RUN/checkpoints/copies/*.ckpt     batched copies' training state (model.replicas/restarts)
    RUN/csv/metrics.csv               training curves          (conf/logger/csv.yaml)
    RUN/.hydra/overrides.yaml         Hydra's record of the command line
    RUN/wandb_id.txt                  the W&B run id a resumed run keeps logging into
    RUN/.run.lock                     held (flock) by the process training into RUN; holds its pid
    RUN/restarts.json                 every start's objective and the kept one (model.restarts)
    RUN/failure.yaml                  the error of a failed job of a multirun
    RUN/metrics.json                  metrics of the test split, best checkpoint, with their
                                      provenance (split, checkpoint file and epoch, n_mc, seeds,
                                      config hash, package version)          (evaluate.py)
    RUN/metrics_<split>_<ckpt>.json   the same for another split or checkpoint (never over metrics.json)
    RUN/outputs.h5                    posterior means per split, rates, A, B, W, W_g (docs/python.md)
    RUN/rotation_sweep.csv            behaviour rotation sweep (M1 data)
    RUN/fixed_points.json             fixed points of the latent dynamics
    RUN/figures/*.png                 figures
    RUN/permutation.json              permutation analysis     (python -m facrnn.cli.compare)
    RUN/permutation_<split>_<ckpt>.json  the same for another split or checkpoint
    RUN/partial_corr_own.json         own-grouping PC          (python -m facrnn.cli.group_selection)
    RUN/replica_XX_seedS/             replica XX of a model.replicas run: a run directory itself
    RUN/posthoc_<kind>/               a post-hoc variant: metrics.json, posthoc.json, figures/, ...

Lightning and Hydra write ``checkpoints/``, ``csv/`` and ``.hydra/`` under the names the YAML
configures; ``tests/runs/test_run_dir.py`` checks that those equal the names here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from facrnn.errors import CheckpointNotFoundError


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically, as checkpoints are written (:func:`facrnn.training.faults.atomic_write`)."""
    from facrnn.training.faults import atomic_write

    return atomic_write(path, lambda handle: handle.write(text.encode()))


@dataclass(frozen=True)
class RunDir:
    """A run directory and the paths of its files (see the module docstring for the layout).

    Parameters
    ----------
    path : str or Path
        The directory (need not exist yet).
    """

    path: Path

    CONFIG: ClassVar[str] = "config.yaml"
    METRICS: ClassVar[str] = "metrics.json"
    #: metrics (or permutation analysis) of another split or checkpoint than (test, best):
    #: ``metrics_<split>_<checkpoint>.json``
    OTHER_EVALUATION: ClassVar[str] = "{stem}_{split}_{checkpoint}.json"
    #: the key of a metrics file that holds what was measured, how (not a metric)
    PROVENANCE: ClassVar[str] = "provenance"
    OUTPUTS: ClassVar[str] = "outputs.h5"
    RUN_LOCK: ClassVar[str] = ".run.lock"
    ROTATION_SWEEP: ClassVar[str] = "rotation_sweep.csv"
    FIXED_POINTS: ClassVar[str] = "fixed_points.json"
    CHECKPOINTS: ClassVar[str] = "checkpoints"
    #: checkpoint names ``checkpoint=best|last`` refers to (``ModelCheckpoint`` filename / save_last)
    CHECKPOINT_NAMES: ClassVar[tuple[str, ...]] = ("best", "last")
    CHECKPOINT_SUFFIX: ClassVar[str] = ".ckpt"
    COPIES: ClassVar[str] = "copies"
    CSV_LOGS: ClassVar[str] = "csv"
    TRAINING_CURVES: ClassVar[str] = "metrics.csv"
    FIGURES: ClassVar[str] = "figures"
    HYDRA: ClassVar[str] = ".hydra"
    OVERRIDES: ClassVar[str] = "overrides.yaml"
    WANDB_ID: ClassVar[str] = "wandb_id.txt"
    RESTARTS: ClassVar[str] = "restarts.json"
    FAILURE: ClassVar[str] = "failure.yaml"
    PERMUTATION: ClassVar[str] = "permutation.json"
    OWN_PARTIAL_CORR: ClassVar[str] = "partial_corr_own.json"
    REPLICA: ClassVar[str] = "replica_{replica:02d}_seed{seed}"
    REPLICA_PREFIX: ClassVar[str] = "replica_"
    POSTHOC: ClassVar[str] = "posthoc_{kind}"
    POSTHOC_PREFIX: ClassVar[str] = "posthoc_"
    POSTHOC_SETTINGS: ClassVar[str] = "posthoc.json"

    def __init__(self, path: str | Path) -> None:
        object.__setattr__(self, "path", Path(path))

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)

    # ----------------------------------------------------------------- files
    @property
    def config_file(self) -> Path:
        return self.path / self.CONFIG

    @property
    def metrics_file(self) -> Path:
        """``metrics.json``: the metrics of the test split and the best checkpoint."""
        return self.path / self.METRICS

    def metrics_path(self, split: str = "test", checkpoint: str = "best") -> Path:
        """The metrics file of one evaluation: ``metrics.json`` for the test split and the best
        checkpoint, ``metrics_<split>_<checkpoint>.json`` otherwise (``checkpoint``: best, last or
        a ``.ckpt`` path, named by its file stem)."""
        return self._evaluation_file(self.METRICS, split, checkpoint)

    def permutation_path(self, split: str = "test", checkpoint: str = "best") -> Path:
        """The permutation analysis of one evaluation, named like :meth:`metrics_path`
        (``permutation.json``, else ``permutation_<split>_<checkpoint>.json``)."""
        return self._evaluation_file(self.PERMUTATION, split, checkpoint)

    def _evaluation_file(self, name: str, split: str, checkpoint: str) -> Path:
        label = checkpoint if checkpoint in self.CHECKPOINT_NAMES else Path(checkpoint).stem
        if (split, label) == ("test", "best"):
            return self.path / name
        return self.path / self.OTHER_EVALUATION.format(stem=Path(name).stem, split=split, checkpoint=label)

    @property
    def outputs_file(self) -> Path:
        """``outputs.h5``: latents, rates and connectivity of the evaluated model (docs/python.md)."""
        return self.path / self.OUTPUTS

    @property
    def lock_file(self) -> Path:
        """``.run.lock``: held by the training process that writes this directory."""
        return self.path / self.RUN_LOCK

    @property
    def rotation_sweep_file(self) -> Path:
        return self.path / self.ROTATION_SWEEP

    @property
    def fixed_points_file(self) -> Path:
        return self.path / self.FIXED_POINTS

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / self.CHECKPOINTS

    def checkpoint(self, which: str) -> Path:
        """``checkpoints/best.ckpt`` or ``checkpoints/last.ckpt`` (``which``: best or last)."""
        return self.checkpoints_dir / self._checkpoint_name(which)

    @property
    def copies_dir(self) -> Path:
        """``checkpoints/copies``: the training state of a run of batched model copies."""
        return self.checkpoints_dir / self.COPIES

    def copies_checkpoint(self, which: str) -> Path:
        """``checkpoints/copies/best.ckpt`` or ``.../last.ckpt``."""
        return self.copies_dir / self._checkpoint_name(which)

    @property
    def csv_logs_dir(self) -> Path:
        return self.path / self.CSV_LOGS

    @property
    def training_curves_file(self) -> Path:
        """``csv/metrics.csv``: the CSVLogger's (or the replica export's) training curves."""
        return self.csv_logs_dir / self.TRAINING_CURVES

    @property
    def figures_dir(self) -> Path:
        return self.path / self.FIGURES

    @property
    def hydra_dir(self) -> Path:
        return self.path / self.HYDRA

    @property
    def overrides_file(self) -> Path:
        """``.hydra/overrides.yaml``: the command-line overrides of the training job."""
        return self.hydra_dir / self.OVERRIDES

    @property
    def wandb_id_file(self) -> Path:
        return self.path / self.WANDB_ID

    @property
    def restarts_file(self) -> Path:
        return self.path / self.RESTARTS

    @property
    def failure_file(self) -> Path:
        return self.path / self.FAILURE

    @property
    def permutation_file(self) -> Path:
        return self.path / self.PERMUTATION

    @property
    def own_partial_corr_file(self) -> Path:
        return self.path / self.OWN_PARTIAL_CORR

    @property
    def posthoc_settings_file(self) -> Path:
        """``posthoc.json`` of a post-hoc directory: method, checkpoint, split, seed."""
        return self.path / self.POSTHOC_SETTINGS

    # ------------------------------------------------------- nested run dirs
    def replica(self, replica: int, seed: int) -> RunDir:
        """``replica_XX_seedS/``: replica ``replica`` (seed ``seed``) of a ``model.replicas`` run."""
        return RunDir(self.path / self.REPLICA.format(replica=replica, seed=seed))

    def replica_dirs(self) -> list[RunDir]:
        """The replica directories written so far, sorted by name."""
        found = [path for path in self.path.glob(f"{self.REPLICA_PREFIX}*") if path.is_dir()]
        return [RunDir(path) for path in sorted(found, key=lambda path: path.name)]

    def posthoc(self, kind: str) -> RunDir:
        """``posthoc_<kind>/``: the results of a post-hoc variant (``ica``, ``svd``) of this run."""
        return RunDir(self.path / self.POSTHOC.format(kind=kind))

    @property
    def is_posthoc(self) -> bool:
        """Whether this is the ``posthoc_<kind>`` directory of a run."""
        return self.path.name.startswith(self.POSTHOC_PREFIX)

    # ----------------------------------------------------------- questions
    def is_plain_run(self) -> bool:
        """Whether ``checkpoints/`` holds ``best.ckpt`` or ``last.ckpt`` of one model.

        A run of batched copies (``model.replicas > 1``) keeps only its training state in
        ``checkpoints/copies``; its replica directories are the runs.
        """
        return any(self.checkpoint(which).is_file() for which in self.CHECKPOINT_NAMES)

    def has_copies(self) -> bool:
        """Whether this is the directory of a run of batched copies (``checkpoints/copies``)."""
        return self.copies_dir.is_dir()

    def find_checkpoint(self, which: str = "best") -> Path:
        """Path of the ``best`` or ``last`` checkpoint, or ``which`` itself if it is a file.

        ``best`` falls back to ``last.ckpt`` (a run that never validated).

        Raises
        ------
        CheckpointNotFoundError
            Neither exists, or ``which`` is neither best, last nor a file.
        """
        if which not in self.CHECKPOINT_NAMES:
            path = Path(which)
            if not path.is_file():
                raise CheckpointNotFoundError(f"checkpoint={which}: not a file; expected best, last or a .ckpt path")
            return path
        candidates = [self.checkpoint(which)]
        if which == "best":
            candidates.append(self.checkpoint("last"))
        for path in candidates:
            if path.is_file():
                return path
        raise CheckpointNotFoundError(
            f"{self.checkpoints_dir}: no {' or '.join(path.name for path in candidates)} (training stopped before its "
            "first checkpoint?); expected a run directory written by train.py: re-train, or pass checkpoint=PATH"
        )

    def load_config(self) -> Any:
        """The run's ``config.yaml`` (an OmegaConf ``DictConfig``).

        Raises
        ------
        CheckpointNotFoundError
            There is no ``config.yaml``: not a run directory written by ``train.py``.
        ConfigError
            ``config.yaml`` is no YAML mapping (hand-edited, truncated, another file).
        """
        import yaml
        from omegaconf import DictConfig, OmegaConf

        from facrnn.errors import ConfigError, first_line

        if not self.config_file.is_file():
            raise CheckpointNotFoundError(
                f"run_dir={self.path}: no {self.CONFIG}; expected a run directory written by train.py"
            )
        try:
            cfg = OmegaConf.load(self.config_file)
        except (yaml.YAMLError, UnicodeDecodeError, ValueError) as error:
            first = first_line(error)
            raise ConfigError(
                f"{self.config_file}: not readable as YAML ({first}); expected the config.yaml train.py wrote"
            ) from None
        if not isinstance(cfg, DictConfig):
            raise ConfigError(f"{self.config_file}: holds a list, not a mapping; expected the config.yaml train.py wrote")
        return cfg

    def read_restarts(self) -> dict[str, Any] | None:
        """``restarts.json`` (the starts of ``model.restarts``), or None."""
        return json.loads(self.restarts_file.read_text()) if self.restarts_file.is_file() else None

    def write_metrics(
        self, metrics: dict[str, Any], provenance: dict[str, Any] | None = None, split: str = "test", checkpoint: str = "best"
    ) -> Path:
        """Write the metrics of one evaluation (:meth:`metrics_path`) atomically, readers such as
        a sweep never see a partial file; ``provenance`` goes under the key ``provenance``."""
        self.path.mkdir(parents=True, exist_ok=True)
        record = dict(metrics) if provenance is None else {self.PROVENANCE: provenance, **metrics}
        return write_text_atomic(self.metrics_path(split, checkpoint), json.dumps(record, indent=2) + "\n")

    def read_metrics(self, split: str = "test", checkpoint: str = "best") -> tuple[dict[str, Any], dict[str, Any]] | None:
        """``(metrics, provenance)`` of one evaluation (:meth:`metrics_path`), or None when it has
        not been written; ``provenance`` is empty for a file written before provenance was recorded."""
        path = self.metrics_path(split, checkpoint)
        if not path.is_file():
            return None
        record = json.loads(path.read_text())
        provenance = record.pop(self.PROVENANCE, None) or {}
        return record, provenance

    @classmethod
    def runs_under(cls, directory: str | Path) -> Iterator[RunDir]:
        """Every directory below ``directory`` holding a ``config.yaml``, except post-hoc and
        ``.hydra`` folders: the candidate runs of a sweep (filter with :meth:`is_plain_run`)."""
        for config in Path(directory).rglob(cls.CONFIG):
            run = cls(config.parent)
            if run.is_posthoc or cls.HYDRA in config.parts:
                continue
            yield run

    def _checkpoint_name(self, which: str) -> str:
        if which not in self.CHECKPOINT_NAMES:
            raise ValueError(f"checkpoint={which!r}: expected one of {', '.join(self.CHECKPOINT_NAMES)}")
        return which + self.CHECKPOINT_SUFFIX


__all__ = ["RunDir", "write_text_atomic"]
