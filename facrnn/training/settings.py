"""Config checks run before any data is loaded or any model is built.

:func:`check_train_config` (first thing :func:`facrnn.runs.pipeline.train` does) and
:func:`check_evaluate_config` (``evaluate.py``) raise :class:`~facrnn.errors.ConfigError`
with a one-line message that starts with the key at fault (``model.beta=-1.0: ...``) and
ends with what was expected. Unknown config *group* options (``model=foo``) are reported by
Hydra itself, with the available options listed. See docs/errors.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from datamodules.base import SPLITS
from facrnn.errors import CheckpointNotFoundError, ConfigError
from facrnn.core.grouping import resolve_group_sizes
from facrnn.core.model import LINKS, PROJECTIONS
from facrnn.training.module import LIKELIHOODS, OPTIMIZERS

EVALUATION_SPLITS = ("train", "val", "test")
POSTHOC_KINDS = ("ica", "svd")
CHECKPOINT_CHOICES = ("best", "last")


_ABSENT = object()


def _value(cfg: DictConfig, key: str) -> Any:
    """The value at dotted ``key`` (None when absent)."""
    return OmegaConf.select(cfg, key, default=None)


def _absent(cfg: DictConfig, key: str) -> bool:
    """Whether ``key`` is not in the config at all (custom configs may leave keys to the code's defaults)."""
    return OmegaConf.select(cfg, key, default=_ABSENT) is _ABSENT


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def require_positive(cfg: DictConfig, key: str, what: str, integer: bool = False, optional: bool = False) -> None:
    """``key`` must be a positive (integer) number; None is allowed when ``optional``."""
    value = _value(cfg, key)
    if _absent(cfg, key) or (value is None and optional):
        return
    valid = (_is_integer(value) if integer else _is_number(value)) and value > 0 and math.isfinite(value)
    if not valid:
        kind = "integer" if integer else "number"
        raise ConfigError(f"{key}={value!r}: expected {what} (a positive {kind})")


def require_non_negative(cfg: DictConfig, key: str, what: str) -> None:
    """``key`` must be a finite number >= 0."""
    if _absent(cfg, key):
        return
    value = _value(cfg, key)
    if not (_is_number(value) and math.isfinite(value) and value >= 0):
        raise ConfigError(f"{key}={value!r}: expected {what} (a number >= 0)")


def require_choice(cfg: DictConfig, key: str, choices: Sequence[str]) -> None:
    """``key`` must be one of ``choices``."""
    if _absent(cfg, key):
        return
    value = _value(cfg, key)
    if value not in choices:
        raise ConfigError(f"{key}={value!r}: expected one of {', '.join(choices)}")


def check_missing_values(cfg: DictConfig, groups: Sequence[str]) -> None:
    """No mandatory ``???`` value left unset in the config ``groups``."""
    for group in groups:
        section = _value(cfg, group)
        if not isinstance(section, DictConfig):
            continue
        missing = sorted(OmegaConf.missing_keys(section))
        if missing:
            key = missing[0] if missing[0].startswith(f"{group}.") else f"{group}.{missing[0]}"
            raise ConfigError(f"{key} is not set: expected {key}=VALUE on the command line or in the config")


def check_model_config(cfg: DictConfig) -> list[int]:
    """Grouping, penalty weights, optimiser and choices of ``cfg.model``; returns the group sizes."""
    try:
        sizes = resolve_group_sizes(
            _value(cfg, "model.latent_dim"), _value(cfg, "model.n_groups"),
            _value(cfg, "model.group_sizes"), _value(cfg, "model.group_rank"),
        )
    except (TypeError, ValueError) as error:  # the grouping's own messages start with the key
        raise ConfigError(str(error)) from None
    require_non_negative(cfg, "model.beta", "a non-negative weight of the partial correlation penalty")
    require_non_negative(cfg, "model.alpha", "a non-negative weight of the overlap penalty")
    require_positive(cfg, "model.lr", "a learning rate > 0")
    require_non_negative(cfg, "model.weight_decay", "a non-negative weight decay")
    require_positive(cfg, "model.history", "the number of encoder history lags", integer=True)
    require_positive(cfg, "model.hidden_dim", "the hidden width of the MLP encoder/decoder", integer=True)
    require_positive(cfg, "model.width_samples", "the M of the posterior width, or null", integer=True, optional=True)
    require_positive(cfg, "model.replicas", "the number of seeds trained at once", integer=True)
    require_positive(cfg, "model.restarts", "the number of starts per seed", integer=True)
    require_positive(cfg, "model.restart_epochs", "the epochs before the restarts' selection, or null", integer=True, optional=True)
    require_non_negative(cfg, "model.beta_warmup_epochs", "the epochs of the beta ramp (0: off)")
    require_non_negative(cfg, "model.nonfinite_skip_limit", "the non-finite batches to skip (0: stop at the first)")
    copies = (_value(cfg, "model.replicas") or 1) * (_value(cfg, "model.restarts") or 1)
    if copies > 1 and "mlp" in (_value(cfg, "model.encoder"), _value(cfg, "model.decoder")):
        raise ConfigError(
            f"model.replicas={_value(cfg, 'model.replicas')}, model.restarts={_value(cfg, 'model.restarts')} with an "
            "MLP encoder/decoder: copies are batched for the linear low-rank RNN only; expected "
            "model.encoder=linear model.decoder=linear (or one copy)"
        )
    require_choice(cfg, "model.likelihood", LIKELIHOODS)
    require_choice(cfg, "model.link", LINKS)
    require_choice(cfg, "model.encoder", PROJECTIONS)
    require_choice(cfg, "model.decoder", PROJECTIONS)
    require_choice(cfg, "model.optimizer", sorted(OPTIMIZERS))
    if _value(cfg, "model.likelihood") == "poisson" and _value(cfg, "model.link") != "softplus":
        raise ConfigError(
            f"model.link={_value(cfg, 'model.link')!r} with model.likelihood=poisson: "
            "expected model.link=softplus (a positive Poisson rate)"
        )
    if (_value(cfg, "model.alpha") or 0) > 0 and "mlp" in (_value(cfg, "model.encoder"), _value(cfg, "model.decoder")):
        raise ConfigError(
            f"model.alpha={_value(cfg, 'model.alpha')} with an MLP encoder/decoder: the overlap penalty "
            "needs W = B A; expected model.alpha=0 or model.encoder=linear model.decoder=linear"
        )
    return sizes


def trial_length(cfg: DictConfig) -> tuple[int, str] | None:
    """Bins per trial (or of the one sequence) when the config alone determines it, with the key(s) saying so."""
    n_steps = _value(cfg, "datamodule.n_steps")
    if _is_integer(n_steps):
        return n_steps, f"datamodule.n_steps={n_steps}"
    frames = _value(cfg, "datamodule.frames")
    if frames is not None and len(frames) == 2 and all(_is_integer(frame) for frame in frames):
        return int(frames[1]) - int(frames[0]), f"datamodule.frames={list(frames)}"
    n_frames = _value(cfg, "datamodule.simulation.n_frames")
    if _value(cfg, "datamodule.path") is None and _is_integer(n_frames):
        return n_frames, f"datamodule.simulation.n_frames={n_frames}"
    path, window, bin_ms = _value(cfg, "datamodule.path"), _value(cfg, "datamodule.window_ms"), _value(cfg, "datamodule.bin_size_ms")
    if isinstance(path, str) and path.endswith(".nwb") and window is not None and _is_number(bin_ms) and bin_ms > 0:
        bins = int((float(window[1]) - float(window[0])) // float(bin_ms))
        return bins, f"datamodule.window_ms={list(window)} in bins of datamodule.bin_size_ms={bin_ms}"
    return None


def check_datamodule_config(cfg: DictConfig) -> None:
    """Batch size, split and history lags vs the trial length (where the config knows it)."""
    require_positive(cfg, "datamodule.batch_size", "the minibatch size", integer=True)
    if _value(cfg, "datamodule.split") is not None:
        require_choice(cfg, "datamodule.split", SPLITS)
    known = trial_length(cfg)
    history = _value(cfg, "model.history")
    if known is not None and _is_integer(history) and history >= known[0]:
        length, source = known
        raise ConfigError(
            f"model.history={history}: {source} gives trials of {length} bins; "
            f"expected fewer history lags than bins per trial (at most {length - 1})"
        )


def check_trainer_config(cfg: DictConfig) -> None:
    """Epoch counts and validation interval of ``cfg.trainer``."""
    max_epochs = _value(cfg, "trainer.max_epochs")
    if max_epochs is not None and not (_is_integer(max_epochs) and (max_epochs > 0 or max_epochs == -1)):
        raise ConfigError(f"trainer.max_epochs={max_epochs!r}: expected a positive number of epochs (or -1: no limit)")
    require_positive(cfg, "trainer.check_val_every_n_epoch", "a validation interval in epochs", integer=True, optional=True)


def check_resume_config(cfg: DictConfig) -> None:
    """``ckpt_path`` and ``resume`` agree, and an explicit ``ckpt_path`` exists."""
    ckpt_path, resume = _value(cfg, "ckpt_path"), bool(_value(cfg, "resume"))
    if resume and ckpt_path not in (None, "last"):
        raise ConfigError(f"resume=true with ckpt_path={ckpt_path}: expected one of them, not both")
    if ckpt_path not in (None, "last") and not Path(str(ckpt_path)).is_file():
        raise CheckpointNotFoundError(f"ckpt_path={ckpt_path}: not a file; expected last or a .ckpt path")


def check_train_config(cfg: DictConfig) -> None:
    """Check a training config before any data is loaded.

    Parameters
    ----------
    cfg : DictConfig
        The composed ``conf/train.yaml``.

    Raises
    ------
    ConfigError
        The first problem found, as ``KEY=VALUE: what is wrong; expected ...``.
    CheckpointError
        ``ckpt_path`` names a file that does not exist.
    """
    check_missing_values(cfg, ("model", "datamodule", "trainer"))
    require_positive(cfg, "threads", "the number of torch threads, or null", integer=True, optional=True)
    if not _is_integer(_value(cfg, "seed")):
        raise ConfigError(f"seed={_value(cfg, 'seed')!r}: expected an integer")
    check_model_config(cfg)
    check_datamodule_config(cfg)
    check_trainer_config(cfg)
    check_resume_config(cfg)


def check_evaluate_config(cfg: DictConfig) -> None:
    """Check an evaluation config (``conf/evaluate.yaml``) before anything is loaded.

    Raises
    ------
    ConfigError
        The first problem found, as ``KEY=VALUE: what is wrong; expected ...``.
    """
    if _value(cfg, "run_dir") in (None, ""):
        raise ConfigError("run_dir is not set: expected run_dir=RUN, a directory written by train.py")
    require_choice(cfg, "split", EVALUATION_SPLITS)
    require_positive(cfg, "n_mc", "the number of posterior samples per point", integer=True)
    require_positive(cfg, "rollout_steps", "the longest rollout horizon k", integer=True, optional=True)
    require_positive(cfg, "threads", "the number of torch threads, or null", integer=True, optional=True)
    if _value(cfg, "posthoc") is not None:
        require_choice(cfg, "posthoc", POSTHOC_KINDS)
    checkpoint = _value(cfg, "checkpoint")
    if not isinstance(checkpoint, str) or not checkpoint:
        raise ConfigError(f"checkpoint={checkpoint!r}: expected best, last or a .ckpt path")


__all__ = ["check_evaluate_config", "check_model_config", "check_train_config", "trial_length"]
