"""``RUN/outputs.h5``: what a trained model says about its data, for use outside the run directory.

The posterior means and decoded rates of every sample of every split and, for the linear
low-rank RNN, its connectivity, in one HDF5 file that any HDF5 reader opens (h5py, MATLAB,
Julia) without this package, checkpoint or data. ``evaluate_run`` writes it next to
``metrics.json``; :func:`facrnn.load_run` reads it (docs/python.md).

Layout (``n`` samples of the split, ``N`` channels, ``K`` latents in ``G`` groups)::

    /                     attributes: layout_version (1), facrnn_version, checkpoint (the
                          scored file, relative to the run directory when inside it, "" when
                          not given), model_name, likelihood, link, encoder, decoder,
                          n_neurons, latent_dim, posterior_width, split_protocol
                          (datamodule.split), bins_per_trial, has_connectivity
    /<split>/latents      (n, K) float32   posterior means mu = encode(u) of the split's encoder input
    /<split>/rates        (n, N) float32   observation means f(A mu + a) + e decoded from them:
                                           rates (Poisson) or means (Gaussian)
    /<split>/bin_index    (n,) int64       position of each sample in the recording's
                                           (trials, bins) grid: trial_index * bins_per_trial + time
    /<split>/trial_index  (n,) int64       trial of each sample (0 for one long recording)
    /<split>/time         (n,) int64       bin of each sample within its trial
    /connectivity/A            (N, K) float32   output projection (decoder weight)
    /connectivity/B            (K, N) float32   input projection (encoder weight); W = A B
    /connectivity/W            (N, N) float32   model.connectivity()
    /connectivity/W_groups     (G, N, N) float32  model.group_connectivity(): W_g = A[:, g] B[g, :],
                                                 sum over g = W
    /connectivity/group_sizes  (G,) int64       the model's latent group sizes

``<split>`` is every split of the datamodule (``train``, ``val``, ``test``). ``/connectivity``
exists only for linear encoder and decoder (``has_connectivity`` true); the MLP variants
(``model.encoder=mlp`` or ``model.decoder=mlp``) have no ``W = A B``. The sub-circuits use the
model's own grouping, where ``metrics.json`` scores them in the evaluation grouping matched
to a ground truth (:func:`facrnn.evaluation.scoring.evaluate_model`).

The file is written atomically (:func:`facrnn.training.faults.atomic_write`): a reader sees
the previous file or the complete new one.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np
import torch

from facrnn.errors import ConfigError, DataError
from facrnn.runs.run_dir import RunDir
from facrnn.training.faults import atomic_write

if TYPE_CHECKING:
    from datamodules.base import RecordingDataModule
    from facrnn.core.model import LowRankRNN
    from facrnn.training.module import FacRNNModule

log = logging.getLogger(__name__)

#: version of the layout above, the root attribute ``layout_version``
LAYOUT_VERSION = 1
#: the group of the connectivity arrays
CONNECTIVITY = "connectivity"
#: datasets of every split group, in writing order (the last three when the split has positions)
SPLIT_DATASETS = ("latents", "rates", "bin_index", "trial_index", "time")
#: datasets of the connectivity group
CONNECTIVITY_DATASETS = ("A", "B", "W", "W_groups", "group_sizes")

__all__ = [
    "CONNECTIVITY",
    "CONNECTIVITY_DATASETS",
    "LAYOUT_VERSION",
    "SPLIT_DATASETS",
    "checkpoint_name",
    "connectivity_arrays",
    "read_connectivity",
    "read_output_attributes",
    "read_split_outputs",
    "split_outputs",
    "write_outputs",
]


def _model_device(model: torch.nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return torch.device("cpu") if parameter is None else parameter.device


def split_outputs(model: LowRankRNN, datamodule: RecordingDataModule, split: str) -> dict[str, np.ndarray]:
    """Posterior means, decoded rates and sample positions of one split.

    Parameters
    ----------
    model : LowRankRNN
        A plain (not batched) model.
    datamodule : RecordingDataModule
        Set up; ``split`` one of its splits.
    split : str
        ``train``, ``val`` or ``test``.

    Returns
    -------
    dict
        ``latents`` ``(n, K)`` = ``model.encode(encoder_input)``, ``rates`` ``(n, N)`` =
        ``model.decode(latents, external_input)``, and where the split carries ``trial`` and
        ``time`` (every :class:`~datamodules.base.RecordingDataModule` does) ``bin_index``,
        ``trial_index`` and ``time`` ``(n,)`` (see the module docstring).

    Raises
    ------
    ConfigError
        ``split`` is not a split of ``datamodule``.
    """
    if split not in datamodule.splits:
        raise ConfigError(f"split={split!r}: expected one of {sorted(datamodule.splits)}")
    tensors = datamodule.split_tensors(split)
    device = _model_device(model)
    external_input = tensors.get("external_input")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            latents = model.encode(tensors["encoder_input"].to(device))
            rates = model.decode(latents, None if external_input is None else external_input.to(device))
    finally:
        model.train(was_training)
    result = {"latents": latents.cpu().numpy(), "rates": rates.cpu().numpy()}
    if "trial" in tensors and "time" in tensors:
        trial = tensors["trial"].numpy().astype(np.int64)
        time = tensors["time"].numpy().astype(np.int64)
        bins_per_trial = int(datamodule.recording.x.shape[1])
        result.update(bin_index=trial * bins_per_trial + time, trial_index=trial, time=time)
    return result


def connectivity_arrays(model: LowRankRNN) -> dict[str, np.ndarray]:
    """``A`` ``(N, K)``, ``B`` ``(K, N)``, ``W = A B`` ``(N, N)``, ``W_groups`` ``(G, N, N)``
    and ``group_sizes`` ``(G,)`` of a linear model (``model.connectivity()``,
    ``model.group_connectivity()``).

    Raises
    ------
    ConfigError
        The model has an MLP encoder or decoder: ``W = A B`` is undefined.
    """
    if not model.is_linear:
        raise ConfigError(
            f"model.encoder={model.encoder_kind} model.decoder={model.decoder_kind}: no connectivity W = A B; "
            "expected model.encoder=linear model.decoder=linear"
        )
    with torch.no_grad():
        arrays = {
            "A": model.A,
            "B": model.B,
            "W": model.connectivity(),
            "W_groups": model.group_connectivity(),
        }
        result = {name: value.detach().cpu().numpy() for name, value in arrays.items()}
    result["group_sizes"] = np.asarray(model.group_sizes, dtype=np.int64)
    return result


def checkpoint_name(run: RunDir, checkpoint: str | Path | None) -> str:
    """``checkpoint`` relative to the run directory when inside it (as in ``metrics.json``'s provenance)."""
    if checkpoint is None:
        return ""
    path = Path(checkpoint)
    try:
        return str(path.resolve().relative_to(run.path.resolve()))
    except ValueError:
        return str(path)


def write_outputs(
    run: RunDir | str | Path,
    module: FacRNNModule,
    datamodule: RecordingDataModule,
    checkpoint: str | Path | None = None,
) -> Path:
    """Write ``RUN/outputs.h5`` (layout: the module docstring) atomically.

    Parameters
    ----------
    run : RunDir, str or Path
        The run directory.
    module : FacRNNModule
        The scored model (one plain model, not a run of batched copies).
    datamodule : RecordingDataModule
        The run's data, set up.
    checkpoint : str or Path, optional
        The checkpoint ``module`` was loaded from, recorded as the attribute ``checkpoint``
        (:func:`facrnn.load_run` reads the file only for that checkpoint).

    Returns
    -------
    Path
        ``run.outputs_file``.

    Raises
    ------
    ConfigError
        ``module`` holds batched copies (``model.replicas`` / ``model.restarts`` > 1 before
        export): write the outputs of each replica directory instead.
    """
    from facrnn import __version__

    run = run if isinstance(run, RunDir) else RunDir(run)
    if module.is_replicated:
        raise ConfigError(
            f"run_dir={run.path}: a module of {module.n_copies} batched copies; expected one plain model "
            "(write the outputs of each replica directory)"
        )
    model = module.model
    per_split = {split: split_outputs(model, datamodule, split) for split in datamodule.splits}
    connectivity = connectivity_arrays(model) if model.is_linear else None
    attributes: dict[str, Any] = {
        "layout_version": LAYOUT_VERSION,
        "facrnn_version": __version__,
        "checkpoint": checkpoint_name(run, checkpoint),
        "model_name": str(module.hparams.get("name", "")),
        "likelihood": model.observation.name,
        "link": model.link,
        "encoder": model.encoder_kind,
        "decoder": model.decoder_kind,
        "n_neurons": int(model.n_neurons),
        "latent_dim": int(model.latent_dim),
        "posterior_width": float(model.width),
        "split_protocol": str(getattr(datamodule, "split", "")),
        "bins_per_trial": int(datamodule.recording.x.shape[1]),
        "has_connectivity": connectivity is not None,
    }

    def write(handle: Any) -> None:
        # h5py writes the temporary file through a descriptor of its own (HDF5 may read back what
        # it wrote, which the write-only handle cannot); atomic_write then fsyncs and renames it
        with h5py.File(handle.name, "w") as file:
            file.attrs.update(attributes)
            for split, arrays in per_split.items():
                group = file.create_group(split)
                for name in SPLIT_DATASETS:
                    if name in arrays:
                        group.create_dataset(name, data=arrays[name])
            if connectivity is not None:
                group = file.create_group(CONNECTIVITY)
                for name in CONNECTIVITY_DATASETS:
                    group.create_dataset(name, data=connectivity[name])

    written = atomic_write(run.outputs_file, write)
    log.info("wrote %s (splits %s%s)", written, ", ".join(per_split), ", connectivity" if connectivity else "")
    return written


def _open(path: Path) -> h5py.File:
    if not Path(path).is_file():
        raise DataError(f"{path}: no such outputs file; expected RUN/outputs.h5 written by evaluate.py")
    try:
        return h5py.File(path, "r")
    except OSError as error:
        raise DataError(f"{path}: not a readable HDF5 file ({error}); expected outputs.h5 written by evaluate.py") from None


def read_output_attributes(path: str | Path) -> dict[str, Any]:
    """The root attributes of an ``outputs.h5`` (strings as ``str``, numbers as Python numbers).

    Raises
    ------
    DataError
        ``path`` is missing or not an HDF5 file.
    """
    with _open(Path(path)) as file:
        return {name: value.item() if isinstance(value, np.generic) else value for name, value in file.attrs.items()}


def read_split_outputs(path: str | Path, split: str) -> dict[str, np.ndarray]:
    """The datasets of ``/<split>/`` of an ``outputs.h5``: ``latents`` ``(n, K)``, ``rates``
    ``(n, N)``, ``bin_index``, ``trial_index``, ``time`` ``(n,)``.

    Raises
    ------
    DataError
        ``path`` is missing or not an HDF5 file.
    ConfigError
        The file has no group ``split``.
    """
    with _open(Path(path)) as file:
        if split not in file or split == CONNECTIVITY:
            found = sorted(name for name in file if name != CONNECTIVITY)
            raise ConfigError(f"split={split!r}: {path} has no such group; expected one of {found}")
        return {name: np.asarray(file[split][name]) for name in file[split]}


def read_connectivity(path: str | Path) -> dict[str, np.ndarray] | None:
    """``/connectivity`` of an ``outputs.h5`` (``A``, ``B``, ``W``, ``W_groups``,
    ``group_sizes``), or None for a model without one (MLP encoder or decoder).

    Raises
    ------
    DataError
        ``path`` is missing or not an HDF5 file.
    """
    with _open(Path(path)) as file:
        if CONNECTIVITY not in file:
            return None
        return {name: np.asarray(file[CONNECTIVITY][name]) for name in file[CONNECTIVITY]}
