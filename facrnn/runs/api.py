"""A trained run in Python: ``facrnn.load_run(RUN)`` (docs/python.md).

One call opens a run directory written by ``train.py``: its config, the model of one
checkpoint (read with the safe ``weights_only`` loader), the stored metrics, and the posterior
means, rates and connectivity of ``outputs.h5`` (:mod:`facrnn.runs.outputs`). When
``outputs.h5`` is missing, or was written for another checkpoint, the latents and rates are
computed from the run's data, built from its ``config.yaml`` on first use.

Example::

    import facrnn

    run = facrnn.load_run("logs/train/runs/2025-01-01_12-00-00_000000")
    run.metrics["group_latent_r2"]
    run.latents("test")          # (n, K) posterior means of the test bins
    run.connectivity()["W"]      # (N, N)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from facrnn.errors import ConfigError, DataError
from facrnn.runs.checkpoints import load_checkpoint
from facrnn.runs.outputs import (
    checkpoint_name,
    connectivity_arrays,
    read_connectivity,
    read_output_attributes,
    read_split_outputs,
    split_outputs,
)
from facrnn.runs.run_dir import RunDir

if TYPE_CHECKING:
    from datamodules.base import RecordingDataModule
    from facrnn.core.model import LowRankRNN
    from facrnn.training.module import FacRNNModule

log = logging.getLogger(__name__)

#: the splits of every run's data
SPLITS = ("train", "val", "test")

__all__ = ["SPLITS", "LoadedRun", "load_run"]


@dataclass
class LoadedRun:
    """A run directory opened by :func:`load_run`.

    Attributes
    ----------
    run : RunDir
        The run directory and the paths of its files.
    config : DictConfig
        Its resolved ``config.yaml``.
    checkpoint : Path
        The checkpoint file ``module`` was loaded from.
    which : str
        The checkpoint asked for (``best``, ``last`` or a path): names the metrics file
        (:meth:`RunDir.metrics_path`), as ``evaluate.py checkpoint=...`` does.
    module : FacRNNModule
        The trained LightningModule (``module.model`` is the :class:`~facrnn.core.model.LowRankRNN`).
    metrics : dict or None
        The metrics of the test split for this checkpoint (``metrics.json`` for ``best``), None
        when that evaluation has not been written.
    provenance : dict or None
        What those metrics measured (split, checkpoint, estimator settings, seeds; empty for
        a file written before provenance was recorded), None without metrics.
    """

    run: RunDir
    config: DictConfig
    checkpoint: Path
    module: FacRNNModule
    which: str = "best"
    metrics: dict[str, Any] | None = None
    provenance: dict[str, Any] | None = None
    _datamodule: RecordingDataModule | None = field(default=None, init=False, repr=False)

    @property
    def model(self) -> LowRankRNN:
        """The trained :class:`~facrnn.core.model.LowRankRNN` (``module.model``)."""
        return self.module.model

    @property
    def datamodule(self) -> RecordingDataModule:
        """The run's data, built from ``config.yaml`` and set up on first use (may take a while)."""
        if self._datamodule is None:
            from facrnn.runs.pipeline import instantiate_datamodule

            self._datamodule = instantiate_datamodule(self.config.datamodule, source=self.run.config_file)
        return self._datamodule

    @property
    def has_outputs(self) -> bool:
        """Whether ``outputs.h5`` exists and was written for :attr:`checkpoint`."""
        path = self.run.outputs_file
        if not path.is_file():
            return False
        try:
            written_for = read_output_attributes(path).get("checkpoint", "")
        except DataError as error:
            log.warning("%s; computing the outputs from the data instead", error)
            return False
        return bool(written_for) and written_for == checkpoint_name(self.run, self.checkpoint)

    def read_metrics(self, split: str = "test") -> dict[str, Any] | None:
        """The stored metrics of ``split`` for this checkpoint (:meth:`RunDir.read_metrics`), or None."""
        stored = self.run.read_metrics(split, self.which)
        return None if stored is None else stored[0]

    def outputs(self, split: str = "test") -> dict[str, np.ndarray]:
        """``latents`` ``(n, K)``, ``rates`` ``(n, N)``, ``bin_index``, ``trial_index`` and
        ``time`` ``(n,)`` of one split (:mod:`facrnn.runs.outputs`): read from ``outputs.h5``
        when it was written for this checkpoint, else computed from the run's data.

        Raises
        ------
        ConfigError
            ``split`` is not train, val or test.
        """
        if split not in SPLITS:
            raise ConfigError(f"split={split!r}: expected one of {', '.join(SPLITS)}")
        if self.has_outputs:
            return read_split_outputs(self.run.outputs_file, split)
        log.info("%s: no outputs.h5 for %s; computing the %s outputs from the data", self.run, self.checkpoint, split)
        return split_outputs(self.model, self.datamodule, split)

    def latents(self, split: str = "test") -> np.ndarray:
        """Posterior means ``(n, K)`` of the samples of ``split`` (see :meth:`outputs`)."""
        return self.outputs(split)["latents"]

    def rates(self, split: str = "test") -> np.ndarray:
        """Decoded rates (Poisson) or means (Gaussian) ``(n, N)`` of ``split`` (see :meth:`outputs`)."""
        return self.outputs(split)["rates"]

    def connectivity(self) -> dict[str, np.ndarray]:
        """``A`` ``(N, K)``, ``B`` ``(K, N)``, ``W = A B`` ``(N, N)``, ``W_groups`` ``(G, N, N)``
        and ``group_sizes`` ``(G,)`` (from ``outputs.h5`` when it was written for this
        checkpoint, else from the model: the same numbers).

        Raises
        ------
        ConfigError
            The model has an MLP encoder or decoder: there is no ``W = A B``.
        """
        if self.has_outputs:
            stored = read_connectivity(self.run.outputs_file)
            if stored is not None:
                return stored
        return connectivity_arrays(self.model)

    def __repr__(self) -> str:
        name = OmegaConf.select(self.config, "model.name", default="?")
        return f"LoadedRun({str(self.run)!r}, model={name}, checkpoint={self.checkpoint.name})"


def load_run(run_dir: str | Path, checkpoint: str = "best") -> LoadedRun:
    """Open a run directory written by ``train.py``.

    Parameters
    ----------
    run_dir : str or Path
        The run directory (one replica directory of a ``model.replicas`` run).
    checkpoint : str
        ``best`` (falls back to ``last`` for a run that never validated), ``last`` or the
        path of a ``.ckpt`` file.

    Returns
    -------
    LoadedRun

    Raises
    ------
    CheckpointNotFoundError
        No ``config.yaml`` (not a run directory), or no such checkpoint.
    CheckpointError
        The checkpoint cannot be read safely or does not fit this version's model.
    ConfigError
        The parent directory of a run of ``model.replicas`` batched copies.
    """
    run = RunDir(run_dir)
    config = run.load_config()
    replicas = int(OmegaConf.select(config, "model.replicas", default=1) or 1)
    if replicas > 1 and checkpoint in RunDir.CHECKPOINT_NAMES:
        replica_dirs = [replica.path.name for replica in run.replica_dirs()]
        raise ConfigError(
            f"run_dir={run.path}: a run of model.replicas={replicas} batched copies; expected one of its replica "
            f"directories ({', '.join(replica_dirs) or 'none written yet: the training has not finished'})"
        )
    path = run.find_checkpoint(checkpoint)
    module = load_checkpoint(path)
    loaded = LoadedRun(run=run, config=config, checkpoint=path, module=module, which=str(checkpoint))
    stored = run.read_metrics("test", loaded.which)
    if stored is not None:
        loaded.metrics, loaded.provenance = stored
    return loaded
