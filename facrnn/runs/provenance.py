"""What a metrics file measured: split, checkpoint (file and epoch), estimator settings,
seeds, a hash of the run's configuration and the package version.

``metrics.json`` (and ``metrics_<split>_<checkpoint>.json``, :meth:`RunDir.metrics_path`)
carry this record under the key ``provenance``. A reader that wants metrics of given
settings (``python -m facrnn.cli.compare``) compares :func:`evaluation_key` of the stored
record with that of the record it would write; any difference means "evaluate again".
"""

from __future__ import annotations

import datetime as _datetime
import hashlib
import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from facrnn.evaluation.settings import EvalSettings
from facrnn.runs.run_dir import RunDir

#: config keys that say where and how a run was launched, not what was trained on what (the
#: callbacks: checkpointing, progress bar, interrupt handling, test probes)
LAUNCH_KEYS = ("paths", "hydra", "ckpt_path", "resume", "evaluate", "tags", "logger", "threads", "task_name", "callbacks")
#: provenance fields that do not decide whether two evaluations measured the same thing
VOLATILE_FIELDS = ("evaluated_at",)


def experiment_config(cfg: DictConfig | dict) -> dict[str, Any]:
    """The resolved config without its launch keys (:data:`LAUNCH_KEYS`): what was trained, on what."""
    container = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    return {key: value for key, value in container.items() if key not in LAUNCH_KEYS}


def config_hash(cfg: DictConfig | dict) -> str:
    """SHA-256 (first 16 hex digits) of :func:`experiment_config`, keys sorted."""
    text = json.dumps(experiment_config(cfg), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def package_version() -> str:
    """The installed ``facrnn`` version."""
    from facrnn import __version__

    return __version__


def checkpoint_record(run: RunDir, checkpoint: Path, stored: dict[str, Any]) -> dict[str, Any]:
    """``file`` (relative to the run directory where inside it), ``epoch`` and ``global_step``
    of a checkpoint whose contents ``stored`` were read with :func:`facrnn.runs.checkpoints.read_checkpoint`."""
    checkpoint = Path(checkpoint)
    try:
        name = str(checkpoint.resolve().relative_to(run.path.resolve()))
    except ValueError:
        name = str(checkpoint)
    return {"file": name, "epoch": int(stored.get("epoch", -1)), "global_step": int(stored.get("global_step", -1))}


def is_in_sample(split_protocol: str, split: str) -> bool:
    """Whether the bins of ``split`` were also training bins: ``split=train``, or the
    datamodule's ``split=all`` (every bin in every split, the authors' M1 protocol)."""
    return split == "train" or split_protocol == "all"


def evaluation_provenance(run: RunDir, checkpoint: dict[str, Any], settings: EvalSettings) -> dict[str, Any]:
    """The ``provenance`` record of one evaluation of ``run``.

    Parameters
    ----------
    run : RunDir
    checkpoint : dict
        :func:`checkpoint_record` of the scored checkpoint.
    settings : EvalSettings

    The record names the split scored, the datamodule's split protocol (``split_protocol``:
    ``even_odd``, ``trials``, ``blocks``, ``all``) and whether the scored bins were training
    bins (``in_sample``, :func:`is_in_sample`).
    """
    cfg = run.load_config()
    split_protocol = str(OmegaConf.select(cfg, "datamodule.split", default="unknown"))
    in_sample = is_in_sample(split_protocol, settings.split)
    return {
        "split": settings.split,
        "split_protocol": split_protocol,
        "in_sample": bool(in_sample),
        "checkpoint": {"which": settings.checkpoint, **checkpoint},
        "n_mc": settings.n_mc,
        "eval_seed": settings.seed,
        "rollout_steps": settings.rollout_steps,
        "dynamics": settings.dynamics,
        # when the PC/TC and mixture-KL estimators subsample (docs/evaluation.md); the tile size only moves memory
        "estimators": {
            "exact_max_points": settings.exact_max_points,
            "query_samples": settings.query_samples,
            "max_centres": settings.max_centres,
            "kl_n_mc": settings.kl_n_mc,
        },
        # behaviour (M1) latent_r2: alignment maps fitted on the training split, applied to the scored one
        "behaviour_alignment": "train",
        "seed": int(cfg.get("seed", 0)),
        "config_hash": config_hash(cfg),
        "facrnn_version": package_version(),
        "evaluated_at": _datetime.datetime.now(_datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def evaluation_key(provenance: dict[str, Any]) -> dict[str, Any]:
    """The fields of a provenance record that decide what was measured (all but :data:`VOLATILE_FIELDS`)."""
    return {key: value for key, value in provenance.items() if key not in VOLATILE_FIELDS}


__all__ = [
    "LAUNCH_KEYS",
    "checkpoint_record",
    "config_hash",
    "evaluation_key",
    "evaluation_provenance",
    "is_in_sample",
    "experiment_config",
    "package_version",
]
