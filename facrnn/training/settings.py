"""The training config's schema and rules, written once (docs/errors.md).

* :class:`ModelSettings`: every key of the ``model`` group (the keyword arguments of
  :class:`~facrnn.training.module.FacRNNModule` a config sets) with its type and default;
  :class:`TrainerSettings`: the ``trainer`` keys checked here. With the datamodule schemas of
  :mod:`datamodules.settings` they are registered in Hydra's ConfigStore
  (:func:`register_schemas`, at import of this module) as the structured-config schemas of
  ``conf/model/facrnn.yaml``, ``conf/trainer/cpu.yaml`` and ``conf/datamodule/*.yaml``
  (``defaults: [/schema/...@_here_, _self_]``): OmegaConf refuses a value of the wrong type
  (``model.latent_dim=2.5``, ``model.beta=abc``) while Hydra composes the config, naming the key.
* The range and cross-field rules: each schema checks them when built
  (``ModelSettings.__post_init__``, ...). :func:`check_train_config` (the first thing
  :func:`facrnn.runs.pipeline.train` does) builds them from the composed config, and
  ``FacRNNModule`` from its arguments (:func:`validate_model_settings`), so both raise the
  same one-line :class:`~facrnn.errors.ConfigError`: the key at fault first
  (``model.beta=-1: ...``), what was expected last.

Unknown config *group* options (``model=foo``) are reported by Hydra itself, with the
available options listed.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, ListConfig, OmegaConf

from datamodules.settings import (
    DATAMODULE_SCHEMAS,
    DataModuleSettings,
    check_history_fits,
    is_integer,
    known_values,
    require_choice,
    require_non_negative,
    require_positive,
    shown,
    trial_length,
)
from facrnn.core.grouping import resolve_group_sizes
from facrnn.core.model import PROJECTIONS
from facrnn.core.observation import LIKELIHOODS, LINKS
from facrnn.errors import CheckpointNotFoundError, ConfigError

#: optimizer class by ``model.optimizer``
OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
#: ``model.gradients``: the hand-derived step of the linear model (facrnn/core/fused_step.py,
#: where it applies) or autograd everywhere (the reference path)
GRADIENTS = ("fused", "autograd")
#: ``model.compile_step``: the fused step compiled by torch.compile for long CPU runs (auto),
#: for every run (always) or never (facrnn/training/compiled_step.py)
COMPILE_STEP = ("auto", "always", "never")

#: ConfigStore group of the schemas; a config file takes one with ``- /schema/NAME@_here_``
SCHEMA_GROUP = "schema"

_ABSENT = object()


# ------------------------------------------------------------------------ schemas


@dataclass
class ModelSettings:
    """Every key of the ``model`` config group (``conf/model/*.yaml``), with its default.

    The defaults are those of :class:`~facrnn.training.module.FacRNNModule`, whose
    parameters document each key; ``n_neurons``, ``n_train`` and ``seed`` come from the data
    and the run, not from the config. Building one checks every rule (``__post_init__``);
    :attr:`resolved_group_sizes` is then the list of latent group sizes.

    Raises
    ------
    ConfigError
        The first rule broken, as ``model.KEY=VALUE: ...; expected ...``.
    """

    _target_: str = "facrnn.training.module.FacRNNModule"
    name: str = "facrnn"
    latent_dim: int | None = 6
    n_groups: int | None = 2
    group_rank: int | None = None
    group_sizes: list[int] | None = None
    beta: float = 20.0
    alpha: float = 0.0
    link: str = "identity"
    likelihood: str = "gaussian"
    history: int = 1
    encoder: str = "linear"
    decoder: str = "linear"
    hidden_dim: int = 32
    width_samples: int | None = None
    optimizer: str = "adamw"
    lr: float = 3e-3
    weight_decay: float = 1e-2
    replicas: int = 1
    restarts: int = 1
    restart_epochs: int | None = None
    beta_warmup_epochs: int = 0
    nonfinite_skip_limit: int = 0
    rollout_window: int = 1
    rollout_interval: int | None = None
    rollout_forcing: float = 0.0
    rollout_window_fraction: float = 1.0
    gradients: str = "fused"
    compile_step: str = "auto"

    def __post_init__(self) -> None:
        try:
            sizes = resolve_group_sizes(self.latent_dim, self.n_groups, self.group_sizes, self.group_rank)
        except (TypeError, ValueError) as error:  # the grouping's own messages start with the key
            raise ConfigError(str(error)) from None
        require_non_negative("model.beta", self.beta, "a non-negative weight of the partial correlation penalty")
        require_non_negative("model.alpha", self.alpha, "a non-negative weight of the overlap penalty")
        require_positive("model.lr", self.lr, "a learning rate > 0")
        require_non_negative("model.weight_decay", self.weight_decay, "a non-negative weight decay")
        require_positive("model.history", self.history, "the number of encoder history lags", integer=True)
        require_positive("model.hidden_dim", self.hidden_dim, "the hidden width of the MLP encoder/decoder", integer=True)
        require_positive(
            "model.width_samples", self.width_samples, "the M of the posterior width, or null", integer=True, optional=True
        )
        require_positive("model.replicas", self.replicas, "the number of seeds trained at once", integer=True)
        require_positive("model.restarts", self.restarts, "the number of starts per seed", integer=True)
        require_positive(
            "model.restart_epochs",
            self.restart_epochs,
            "the epochs before the restarts' selection, or null",
            integer=True,
            optional=True,
        )
        require_non_negative(
            "model.beta_warmup_epochs", self.beta_warmup_epochs, "the epochs of the beta ramp (0: off)", integer=True
        )
        require_non_negative(
            "model.nonfinite_skip_limit",
            self.nonfinite_skip_limit,
            "the non-finite batches to skip (0: stop at the first)",
            integer=True,
        )
        require_positive(
            "model.rollout_window", self.rollout_window, "the bins per training window (1: one-step training)", integer=True
        )
        require_positive(
            "model.rollout_interval",
            self.rollout_interval,
            "the bins between forced states, or null (only the first)",
            integer=True,
            optional=True,
        )
        if not 0.0 <= float(self.rollout_forcing) <= 1.0:
            raise ConfigError(
                f"model.rollout_forcing={shown(self.rollout_forcing)}: expected a generalized teacher forcing weight "
                "in [0, 1] (0: sparse teacher forcing only)"
            )
        if not 0.0 < float(self.rollout_window_fraction) <= 1.0:
            raise ConfigError(
                f"model.rollout_window_fraction={shown(self.rollout_window_fraction)}: expected the share of the "
                "rollout windows drawn per epoch in (0, 1] (1: a window at every training bin)"
            )
        mlp = "mlp" in (self.encoder, self.decoder)
        if self.replicas * self.restarts > 1 and mlp:
            raise ConfigError(
                f"model.replicas={self.replicas}, model.restarts={self.restarts} with an MLP encoder/decoder: copies are "
                "batched for the linear low-rank RNN only; expected model.encoder=linear model.decoder=linear (or one copy)"
            )
        require_choice("model.likelihood", self.likelihood, LIKELIHOODS)
        require_choice("model.link", self.link, LINKS)
        require_choice("model.encoder", self.encoder, PROJECTIONS)
        require_choice("model.decoder", self.decoder, PROJECTIONS)
        require_choice("model.optimizer", self.optimizer, sorted(OPTIMIZERS))
        require_choice("model.gradients", self.gradients, GRADIENTS)
        require_choice("model.compile_step", self.compile_step, COMPILE_STEP)
        if self.likelihood == "poisson" and self.link != "softplus":
            raise ConfigError(
                f"model.link={shown(self.link)} with model.likelihood=poisson: "
                "expected model.link=softplus (a positive Poisson rate)"
            )
        if self.alpha > 0 and mlp:
            raise ConfigError(
                f"model.alpha={shown(self.alpha)} with an MLP encoder/decoder: the overlap penalty "
                "needs W = B A; expected model.alpha=0 or model.encoder=linear model.decoder=linear"
            )
        self.resolved_group_sizes = sizes  # not a field: derived, never a config key

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> ModelSettings:
        """The checked settings of a ``model`` section or of ``FacRNNModule``'s arguments.

        Keys that are no field (``n_neurons``, ``n_train``, ``seed``, ``+model.newkey=``
        additions) are ignored; absent keys keep their defaults.
        """
        return known_values(cls, values)


def validate_model_settings(values: Mapping[str, Any]) -> list[int]:
    """Check model settings by every rule of :class:`ModelSettings`; return the group sizes.

    Parameters
    ----------
    values : mapping
        A ``model`` config section or ``FacRNNModule``'s hyper-parameters (other keys ignored).

    Returns
    -------
    list of int
        ``[H_1, ..., H_G]``.

    Raises
    ------
    ConfigError
        The first rule broken.
    """
    return ModelSettings.from_values(values).resolved_group_sizes


@dataclass
class TrainerSettings:
    """The ``trainer`` keys checked before training (``conf/trainer/*.yaml``).

    The schema is open: any other argument of the ``_target_`` trainer may be set (and is
    checked to be one, :func:`check_trainer_config`). Defaults are Lightning's.

    Raises
    ------
    ConfigError
        ``max_epochs`` neither positive nor -1, or ``check_val_every_n_epoch`` not a
        positive integer.
    """

    _target_: str = "pytorch_lightning.Trainer"
    max_epochs: int | None = None
    check_val_every_n_epoch: int | None = 1

    def __post_init__(self) -> None:
        max_epochs = self.max_epochs
        if max_epochs is not None and not (is_integer(max_epochs) and (max_epochs > 0 or max_epochs == -1)):
            raise ConfigError(
                f"trainer.max_epochs={shown(max_epochs)}: expected a positive number of epochs (or -1: no limit)"
            )
        require_positive(
            "trainer.check_val_every_n_epoch",
            self.check_val_every_n_epoch,
            "a validation interval in epochs",
            integer=True,
            optional=True,
        )

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> TrainerSettings:
        """The checked settings of a ``trainer`` section (its other keys are ignored)."""
        return known_values(cls, values)


def register_schemas() -> None:
    """Store the schemas in Hydra's ConfigStore under ``schema/`` (idempotent).

    ``schema/model`` (:class:`ModelSettings`), ``schema/trainer`` (:class:`TrainerSettings`,
    open to further keys) and ``schema/datamodule/NAME`` (:data:`datamodules.settings.DATAMODULE_SCHEMAS`).
    """
    store = ConfigStore.instance()
    store.store(group=SCHEMA_GROUP, name="model", node=ModelSettings)
    trainer = OmegaConf.structured(TrainerSettings)
    OmegaConf.set_struct(trainer, False)  # every Trainer argument may be set in a config file
    store.store(group=SCHEMA_GROUP, name="trainer", node=trainer)
    for name, schema in DATAMODULE_SCHEMAS.items():
        store.store(group=f"{SCHEMA_GROUP}/datamodule", name=name, node=schema)


# ------------------------------------------------------------------ config checks


def _value(cfg: DictConfig, key: str) -> Any:
    """The value at dotted ``key`` (None when absent)."""
    return OmegaConf.select(cfg, key, default=None)


def section_values(cfg: DictConfig, group: str, schema: type) -> dict[str, Any]:
    """The resolved values of the ``schema`` fields present in ``cfg[group]``, as plain Python."""
    values = {}
    for entry in fields(schema):
        value = OmegaConf.select(cfg, f"{group}.{entry.name}", default=_ABSENT)
        if value is _ABSENT:
            continue
        if isinstance(value, (DictConfig, ListConfig)):
            value = OmegaConf.to_container(value, resolve=True)
        values[entry.name] = value
    return values


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
    """Every rule of :class:`ModelSettings` on ``cfg.model``; returns the group sizes."""
    return validate_model_settings(section_values(cfg, "model", ModelSettings))


def check_datamodule_config(cfg: DictConfig) -> None:
    """The rules of :class:`~datamodules.settings.DataModuleSettings` on ``cfg.datamodule``, and
    ``model.history`` vs the trial length where the config determines it."""
    DataModuleSettings.from_values(section_values(cfg, "datamodule", DataModuleSettings))
    section = _value(cfg, "datamodule")
    known = trial_length(section) if isinstance(section, DictConfig) else None  # resolves only the keys it reads
    if known is not None:
        check_history_fits(_value(cfg, "model.history"), *known)


def check_trainer_arguments(trainer: DictConfig) -> None:
    """Every key of ``trainer`` is an argument of its ``_target_`` (the schema is open, so a
    misspelt ``trainer.max_epoch=5`` would otherwise reach the trainer's constructor)."""
    target = trainer.get("_target_")
    try:
        signature = inspect.signature(hydra.utils.get_class(str(target)).__init__)
    except Exception:  # noqa: BLE001 - a target that cannot be inspected is left to instantiate
        return
    parameters = signature.parameters
    if any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters.values()):
        return
    for key in trainer:
        if str(key).startswith("_") or key in parameters:
            continue
        close = difflib.get_close_matches(str(key), [name for name in parameters if name != "self"], n=1)
        hint = f"trainer.{close[0]}" if close else f"one of the arguments of {target}"
        raise ConfigError(f"trainer.{key}: not an argument of {target}; expected {hint}")


def check_trainer_config(cfg: DictConfig) -> None:
    """The rules of :class:`TrainerSettings` on ``cfg.trainer``, and no key its trainer lacks."""
    TrainerSettings.from_values(section_values(cfg, "trainer", TrainerSettings))
    trainer = _value(cfg, "trainer")
    if isinstance(trainer, DictConfig):
        check_trainer_arguments(trainer)


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
    require_positive("threads", _value(cfg, "threads"), "the number of torch threads, or null", integer=True, optional=True)
    seed = _value(cfg, "seed")
    if not is_integer(seed) or not 0 <= seed < 2**32:
        raise ConfigError(f"seed={seed!r}: expected an integer from 0 to 4294967295 (numpy's seed range)")
    check_model_config(cfg)
    check_datamodule_config(cfg)
    check_trainer_config(cfg)
    check_resume_config(cfg)


def composition_error(error: BaseException) -> ConfigError | None:
    """The one-line :class:`~facrnn.errors.ConfigError` of a value a schema refused while Hydra
    composed the config (``model.latent_dim=2.5``, ``model.beta=abc``, ``model.bet=1``), else None.

    OmegaConf reports these in four lines (message, ``full_key``, ``object_type``); this names
    the key, the value and the schema field's type instead, like every other config error.

    Parameters
    ----------
    error : BaseException
        What composing raised (Hydra's ``ConfigCompositionException``, or OmegaConf's own error).
    """
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

    cause: BaseException | None = error
    while cause is not None and not isinstance(cause, OmegaConfBaseException):
        cause = cause.__cause__
    if cause is None:
        return None
    full_key, key, value = getattr(cause, "full_key", None), str(getattr(cause, "key", "")), getattr(cause, "value", None)
    schema = getattr(cause, "object_type", None)
    if isinstance(schema, type) and is_schema(schema) and full_key:
        names = {entry.name: entry.type for entry in fields(schema)}
        if isinstance(cause, ValidationError) and key in names:
            return ConfigError(f"{full_key}={value!r}: expected a value of type {names[key]} ({schema.__name__}.{key})")
        if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and key not in names:
            close = difflib.get_close_matches(key, [name for name in names if not name.startswith("_")], n=1)
            hint = f"{str(full_key).rsplit('.', 1)[0]}.{close[0]}" if close else f"one of the keys of {schema.__name__}"
            return ConfigError(f"{full_key}: not a key of {schema.__name__}; expected {hint}")
        return None
    container = getattr(cause, "parent_node", None)  # an element of a list or dict field (model.group_sizes=[2,x])
    owner = container._get_parent() if container is not None else None
    if isinstance(cause, ValidationError) and full_key and owner is not None and is_schema(OmegaConf.get_type(owner)):
        field_name = str(container._key())
        element = getattr(container._metadata, "element_type", Any)
        element_name = getattr(element, "__name__", str(element))
        schema = OmegaConf.get_type(owner)
        return ConfigError(
            f"{full_key}={value!r}: expected a value of type {element_name} (an element of {schema.__name__}.{field_name})"
        )
    return None


def is_schema(schema: Any) -> bool:
    """Whether ``schema`` is one of the registered settings schemas."""
    return isinstance(schema, type) and (schema in (ModelSettings, TrainerSettings) or issubclass(schema, DataModuleSettings))


register_schemas()

__all__ = [
    "COMPILE_STEP",
    "GRADIENTS",
    "ModelSettings",
    "OPTIMIZERS",
    "SCHEMA_GROUP",
    "TrainerSettings",
    "check_datamodule_config",
    "check_model_config",
    "check_resume_config",
    "check_train_config",
    "check_trainer_config",
    "composition_error",
    "register_schemas",
    "validate_model_settings",
]
