"""The code a run directory's ``config.yaml`` may name: the project's own datamodules, nothing else.

``evaluate.py run_dir=RUN``, ``posthoc=...``, ``python -m facrnn.cli.compare`` and
:func:`facrnn.load_run` rebuild a run's data with ``hydra.utils.instantiate`` from
``RUN/config.yaml``, a file anyone can edit. :func:`check_trusted_targets` refuses that config
before anything is instantiated when it names any other callable: a ``_target_`` outside
:data:`TRUSTED_TARGETS` (nested ones included), ``_partial_``, ``_args_``, or an interpolation
that calls a resolver other than ``oc.env`` (the config train.py writes is resolved: it holds
no interpolation at all). The allow-list is derived from one place, the ``_target_`` defaults
of :data:`datamodules.settings.DATAMODULE_SCHEMAS`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from datamodules.settings import DATAMODULE_SCHEMAS
from facrnn.errors import ConfigError, first_line

#: the ``_target_`` of every shipped datamodule schema (``base`` has none)
TRUSTED_TARGETS: tuple[str, ...] = tuple(
    sorted(
        str(schema._target_)
        for schema in DATAMODULE_SCHEMAS.values()
        if isinstance(getattr(schema, "_target_", None), str) and schema._target_ != "???"
    )
)
#: the model class a resumed config may name
MODEL_TARGETS: tuple[str, ...] = ("facrnn.training.module.FacRNNModule",)
#: the trainer and its plugins a resumed config may name (conf/trainer/*.yaml)
TRAINER_TARGETS: tuple[str, ...] = (
    "pytorch_lightning.Trainer",
    "facrnn.training.faults.AtomicCheckpointIO",
    "facrnn.training.runtime.cluster_environment",
)
#: the sections of a saved config a resume instantiates, and the code each may name
RESUMED_SECTIONS: dict[str, tuple[str, ...]] = {
    "datamodule": TRUSTED_TARGETS,
    "model": MODEL_TARGETS,
    "trainer": TRAINER_TARGETS,
}
#: Hydra keys that call or bind code whatever their value
REFUSED_KEYS = ("_partial_", "_args_")
#: resolvers an interpolation may call (reading an environment variable runs no code)
ALLOWED_RESOLVERS = ("oc.env",)
NEVER = "a run directory's config is never allowed to name other code"
_RESOLVER_CALL = re.compile(r"\$\{\s*([^${}:\s]+)\s*:")
_INTERPOLATED_NAME = re.compile(r"\$\{\s*\$\{")


def _shown(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_raw(node: Any, key: str, source: str) -> None:
    """Refuse resolver calls other than :data:`ALLOWED_RESOLVERS` in the unresolved strings of ``node``."""
    if isinstance(node, Mapping):
        for name, value in node.items():
            _check_raw(value, f"{key}.{name}" if key else str(name), source)
    elif isinstance(node, Sequence) and not isinstance(node, (str, bytes)):
        for index, value in enumerate(node):
            _check_raw(value, f"{key}[{index}]", source)
    elif isinstance(node, str):
        if _INTERPOLATED_NAME.search(node):
            raise ConfigError(
                f"{source}: {key}={_shown(node)}: an interpolated key or resolver name; expected plain values; {NEVER}"
            )
        for resolver in _RESOLVER_CALL.findall(node):
            if resolver not in ALLOWED_RESOLVERS:
                raise ConfigError(
                    f"{source}: {key}={_shown(node)}: calls the resolver {resolver!r}; expected plain values "
                    f"(or ${{oc.env:...}}); {NEVER}"
                )


def _check_resolved(node: Any, key: str, source: str, allowed: tuple[str, ...] = TRUSTED_TARGETS) -> None:
    """Refuse untrusted Hydra keys in the resolved ``node`` (plain dicts, lists and scalars)."""
    if isinstance(node, dict):
        for name, value in sorted(node.items(), key=lambda item: item[0] != "_target_"):  # the _target_ first
            child = f"{key}.{name}"
            if name == "_target_" and (not isinstance(value, str) or value not in allowed):
                expected = f"one of {', '.join(allowed)}" if allowed else "no _target_ here"
                raise ConfigError(f"{source}: {child}={_shown(value)}: expected {expected}; {NEVER}")
            if name in REFUSED_KEYS:
                raise ConfigError(f"{source}: {child}={_shown(value)}: expected no {name} key; {NEVER}")
            _check_resolved(value, child, source, allowed)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            _check_resolved(value, f"{key}[{index}]", source, allowed)
    elif isinstance(node, str) and "${" in node:
        raise ConfigError(f"{source}: {key}={_shown(node)}: resolves to another interpolation; expected plain values; {NEVER}")


def check_trusted_targets(
    node: DictConfig | Mapping[str, Any], key_prefix: str, source: str | Path, allowed: Sequence[str] = TRUSTED_TARGETS
) -> DictConfig:
    """Check that a config section from a run directory names only the project's datamodules.

    Parameters
    ----------
    node : DictConfig or mapping
        The section to instantiate (``cfg.datamodule`` of ``RUN/config.yaml``).
    key_prefix : str
        Its key in the file (``datamodule``), for the messages.
    source : str or Path
        The file it was read from (``RUN/config.yaml``), for the messages.
    allowed : sequence of str
        The ``_target_`` values allowed (default :data:`TRUSTED_TARGETS`, the datamodules).

    Returns
    -------
    DictConfig
        The resolved, checked section (no interpolation left): instantiate this, not ``node``,
        so what was checked is what runs.

    Raises
    ------
    ConfigError
        One line naming the file and the key: a ``_target_`` outside :data:`TRUSTED_TARGETS`
        (at any depth), a ``_partial_`` or ``_args_`` key, a resolver other than ``oc.env``,
        or a section that is no mapping or cannot be resolved.
    """
    source = str(source)
    if isinstance(node, DictConfig):
        # an interpolation in the section may reach any key of the file: check the resolvers of all of it
        root = node._get_root()
        if root is node:
            _check_raw(OmegaConf.to_container(node, resolve=False), key_prefix, source)
        else:
            _check_raw(OmegaConf.to_container(root, resolve=False), "", source)
        raw: Any = None
    elif isinstance(node, Mapping):
        raw = dict(node)
        _check_raw(raw, key_prefix, source)
    else:
        raise ConfigError(f"{source}: {key_prefix}={_shown(node)}: expected a mapping with a _target_; {NEVER}")
    try:
        resolved = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else raw
    except OmegaConfBaseException as error:
        first = first_line(error)
        raise ConfigError(f"{source}: {key_prefix}: cannot be resolved ({first}); expected plain values") from None
    if "_target_" not in resolved:
        raise ConfigError(f"{source}: {key_prefix}: no _target_; expected one of {', '.join(allowed)}")
    _check_resolved(resolved, key_prefix, source, tuple(allowed))
    return OmegaConf.create(resolved)


def check_run_config(cfg: Mapping[str, Any], source: str | Path) -> None:
    """Check every section of a run's saved config that a resume instantiates (``ckpt_path=last``
    continues ``RUN/config.yaml``, :func:`facrnn.runs.resume.restore_run_config`): the datamodule
    names one of the project's datamodules, the model :data:`MODEL_TARGETS`, the trainer
    :data:`TRAINER_TARGETS`; any other section names no code at all.

    Raises
    ------
    ConfigError
        As :func:`check_trusted_targets`, naming the file and the key.
    """
    for key, value in cfg.items():
        if not isinstance(value, (Mapping, DictConfig)):
            continue
        allowed = RESUMED_SECTIONS.get(str(key), ())
        if allowed:
            check_trusted_targets(value, str(key), source, allowed)
        else:
            _check_raw(
                OmegaConf.to_container(value, resolve=False) if isinstance(value, DictConfig) else dict(value),
                str(key),
                str(source),
            )
            _check_resolved(OmegaConf.to_container(OmegaConf.create(value), resolve=True), str(key), str(source), ())


__all__ = [
    "ALLOWED_RESOLVERS",
    "MODEL_TARGETS",
    "REFUSED_KEYS",
    "RESUMED_SECTIONS",
    "TRAINER_TARGETS",
    "TRUSTED_TARGETS",
    "check_run_config",
    "check_trusted_targets",
]
