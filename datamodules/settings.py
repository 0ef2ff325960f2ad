"""The ``datamodule`` config group's schema and its rules, written once.

* :class:`DataModuleSettings`: the keys every
  :class:`~datamodules.base.RecordingDataModule` takes (``batch_size``, ``split``, the split
  fractions, ``history``, ``nan_policy``, ...), with their types and defaults; one subclass
  per shipped datamodule adds its own keys (:data:`DATAMODULE_SCHEMAS`). They are the Hydra
  structured-config schemas of ``conf/datamodule/*.yaml`` (registered by
  :func:`facrnn.training.settings.register_schemas`), so OmegaConf refuses a value of the
  wrong type when the config is composed, naming the key.
* The range rules: :class:`DataModuleSettings` checks them when built. The pipeline's config
  check (:func:`facrnn.training.settings.check_train_config`) and the datamodule's
  constructor both build one, so a bad value gets the same one-line
  :class:`~facrnn.errors.ConfigError` however the datamodule is made.
* :func:`check_history_fits`: encoder history lags vs the bins of a trial, at config time
  where the config determines the trial length (:func:`trial_length`) and in ``setup`` on
  the real data, with one message.
* The value rules shared by every settings schema (:func:`require_positive`,
  :func:`require_non_negative`, :func:`require_choice`, :func:`shown`): this is the lowest
  layer the schemas of ``datamodules`` and ``facrnn.training`` both may import.

Messages start with the key at fault and end with what was expected (docs/errors.md).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from omegaconf import MISSING

from datamodules.validation import check_nan_policy
from facrnn.errors import ConfigError

#: how ``datamodule.split`` divides the bins (:class:`datamodules.base.RecordingDataModule`)
SPLITS = ("even_odd", "trials", "all", "blocks")

Settings = TypeVar("Settings")

# ----------------------------------------------------------------------- value rules


def shown(value: Any) -> str:
    """``value`` as a message shows it: strings quoted, whole floats without ``.0``.

    The schema turns ``model.beta=-1`` into the float ``-1.0``; messages show ``-1``, as typed.
    """
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e16:
        return str(int(value))
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(shown(item) for item in value) + "]"
    return repr(value)


def is_number(value: Any) -> bool:
    """A real number (Python or numpy), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_integer(value: Any) -> bool:
    """An integer (Python or numpy), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def require_positive(key: str, value: Any, what: str, integer: bool = False, optional: bool = False) -> None:
    """``value`` of ``key`` must be a positive (integer) number; None too when ``optional``.

    Raises
    ------
    ConfigError
        ``KEY=VALUE: expected WHAT (a positive integer|number)``.
    """
    if value is None and optional:
        return
    valid = (is_integer(value) if integer else is_number(value)) and value > 0 and math.isfinite(value)
    if not valid:
        kind = "integer" if integer else "number"
        raise ConfigError(f"{key}={shown(value)}: expected {what} (a positive {kind})")


def require_non_negative(key: str, value: Any, what: str, integer: bool = False) -> None:
    """``value`` of ``key`` must be a finite (integer) number >= 0.

    Raises
    ------
    ConfigError
        ``KEY=VALUE: expected WHAT (a number|an integer >= 0)``.
    """
    if not ((is_integer(value) if integer else is_number(value)) and math.isfinite(value) and value >= 0):
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"{key}={shown(value)}: expected {what} ({kind} >= 0)")


def check_split_fractions(val_fraction: Any, test_fraction: Any) -> None:
    """``datamodule.val_fraction`` and ``test_fraction``: each a number in (0, 1), together below 1.

    Raises
    ------
    ConfigError
        ``datamodule.val_fraction=-0.1: expected a share of the data in (0, 1)``.
    """
    for key, value in (("datamodule.val_fraction", val_fraction), ("datamodule.test_fraction", test_fraction)):
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or not math.isfinite(value) or not 0 < value < 1:
            raise ConfigError(f"{key}={value!r}: expected a share of the data in (0, 1)")
    if val_fraction + test_fraction >= 1:
        raise ConfigError(
            f"datamodule.val_fraction={val_fraction} + datamodule.test_fraction={test_fraction} = "
            f"{val_fraction + test_fraction:g}: expected below 1, leaving training data"
        )


def require_choice(key: str, value: Any, choices: Sequence[str]) -> None:
    """``value`` of ``key`` must be one of ``choices``.

    Raises
    ------
    ConfigError
        ``KEY=VALUE: expected one of A, B, C``.
    """
    if value not in choices:
        raise ConfigError(f"{key}={shown(value)}: expected one of {', '.join(choices)}")


def known_values(settings: type[Settings], values: Mapping[str, Any]) -> Settings:
    """``settings(**values)`` with the keys of ``values`` that are fields of the dataclass ``settings``.

    Other keys (``n_neurons``, ``seed``, a subclass's own keys, ``+model.newkey=``
    additions) are left to whoever takes them; absent keys keep the schema's defaults.
    """
    names = {entry.name for entry in fields(settings)}  # type: ignore[arg-type]
    return settings(**{key: value for key, value in values.items() if key in names})


# ------------------------------------------------------------------- history lags


def check_history_fits(history: Any, n_bins: int, source: str) -> None:
    """Fewer encoder history lags (``model.history``) than the ``n_bins`` bins of a trial.

    Parameters
    ----------
    history : int
        ``model.history``.
    n_bins : int
        Bins per trial.
    source : str
        What gives trials of ``n_bins`` bins: the config key(s) (``datamodule.n_steps=400``)
        or the recording (its file or source name).

    Raises
    ------
    ConfigError
        ``model.history=L: SOURCE gives trials of T bins; expected fewer history lags ...``.
    """
    if is_integer(history) and history >= n_bins:
        raise ConfigError(
            f"model.history={history}: {source} gives trials of {n_bins} bins; "
            f"expected fewer history lags than bins per trial (at most {n_bins - 1})"
        )


def trial_length(datamodule: Mapping[str, Any]) -> tuple[int, str] | None:
    """Bins per trial (or of the one sequence) when the config alone determines it.

    Parameters
    ----------
    datamodule : mapping
        The ``datamodule`` section's values (any datamodule; keys it lacks are ignored).

    Returns
    -------
    ``(n_bins, source)``, ``source`` naming the key(s) that say so, or None.
    """
    n_steps = datamodule.get("n_steps")
    if is_integer(n_steps):
        return int(n_steps), f"datamodule.n_steps={n_steps}"
    frames = datamodule.get("frames")
    if frames is not None and len(frames) == 2 and all(is_integer(frame) for frame in frames):
        return int(frames[1]) - int(frames[0]), f"datamodule.frames={shown(list(frames))}"
    path = datamodule.get("path")
    n_frames = (datamodule.get("simulation") or {}).get("n_frames")
    if path is None and is_integer(n_frames):
        return int(n_frames), f"datamodule.simulation.n_frames={n_frames}"
    window, bin_ms = datamodule.get("window_ms"), datamodule.get("bin_size_ms")
    if isinstance(path, str) and path.endswith(".nwb") and window is not None and is_number(bin_ms) and bin_ms > 0:
        bins = int((float(window[1]) - float(window[0])) // float(bin_ms))
        return bins, f"datamodule.window_ms={shown(list(window))} in bins of datamodule.bin_size_ms={shown(bin_ms)}"
    return None


# ------------------------------------------------------------------------ schemas


@dataclass
class DataModuleSettings:
    """Keys of every :class:`~datamodules.base.RecordingDataModule` (``datamodule.*``).

    Parameters
    ----------
    _target_ : str
        The datamodule class (set by each ``conf/datamodule/*.yaml``).
    batch_size : int
        Training minibatch size (also of validation batches).
    split : {"even_odd", "trials", "all", "blocks"}
        How the bins are divided into train / val / test (see ``RecordingDataModule``).
    val_fraction, test_fraction : float
        Shares of the ``trials`` and ``blocks`` splits (each in (0, 1), together below 1);
        ``val_fraction`` is also the share of the even bins that validate under ``even_odd``.
    split_seed : int
        Seed of the ``trials`` split.
    history : int
        Encoder history lags ``L`` (``${model.history}`` in the shipped configs).
    n_blocks, split_gap : int
        Blocks of the ``blocks`` split and the bins dropped at every change of split.
    nan_policy : {"error", "drop", "interpolate"}
        What NaN/Inf values in file data do.

    Raises
    ------
    ConfigError
        ``batch_size`` not a positive integer, an unknown ``split`` or ``nan_policy``.
    """

    _target_: str = MISSING
    batch_size: int = 128
    split: str = "even_odd"
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    split_seed: int = 0
    history: int = 1
    n_blocks: int = 1
    split_gap: int = 0
    nan_policy: str = "error"

    def __post_init__(self) -> None:
        require_positive("datamodule.batch_size", self.batch_size, "the minibatch size", integer=True)
        require_choice("datamodule.split", self.split, SPLITS)
        check_split_fractions(self.val_fraction, self.test_fraction)
        require_positive("datamodule.n_blocks", self.n_blocks, "the number of blocks of the blocks split", integer=True)
        require_non_negative("datamodule.split_gap", self.split_gap, "the bins dropped between splits", integer=True)
        check_nan_policy(self.nan_policy)

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> DataModuleSettings:
        """The checked settings of a ``datamodule`` section (keys this schema lacks are ignored)."""
        return known_values(cls, values)


@dataclass
class SyntheticSettings(DataModuleSettings):
    """``conf/datamodule/synthetic.yaml``: :class:`datamodules.synthetic.SyntheticDataModule`."""

    _target_: str = "datamodules.synthetic.SyntheticDataModule"
    data_seed: int = 0
    n_steps: int = 2000
    dt: float = 0.1
    n_neurons: int = 20
    teacher_steps: int = 10_000
    teacher_lr: float = 1e-3
    observation_noise: float = 0.1
    input_noise: float = 0.005
    cache_dir: str | None = None


@dataclass
class GroupedTeacherSettings(DataModuleSettings):
    """``conf/datamodule/grouped_teacher.yaml``: :class:`datamodules.grouped_teacher.GroupedTeacherDataModule`."""

    _target_: str = "datamodules.grouped_teacher.GroupedTeacherDataModule"
    n_groups: int = 2
    group_rank: int = 2
    neurons_per_group: int = 40
    n_steps: int = 2000
    likelihood: str = "poisson"
    gain: float = 1.3
    loading_scale: float = 1.0
    bias: float = 0.0
    process_noise: float = 0.01
    observation_noise: float = 0.1
    data_seed: int = 0
    dynamics: str = "oscillator"
    dt: float = 0.1


@dataclass
class FromFileSettings(DataModuleSettings):
    """``conf/datamodule/from_file.yaml``: :class:`datamodules.from_file.FromFileDataModule`."""

    _target_: str = "datamodules.from_file.FromFileDataModule"
    path: str = MISSING


@dataclass
class MonkeyM1Settings(DataModuleSettings):
    """``conf/datamodule/monkey_m1.yaml``: :class:`datamodules.monkey_m1.MonkeyM1DataModule`."""

    _target_: str = "datamodules.monkey_m1.MonkeyM1DataModule"
    split: str = "trials"
    path: str | None = None
    drop_silent_units: bool = True
    scaling: str = "max"
    n_directions: int = 8
    bin_size_ms: float = 20.0
    align_event: str = "move_onset_time"
    window_ms: list[float] = field(default_factory=lambda: [-250.0, 450.0])
    behaviour_key: str | None = "hand_vel"
    behaviour_lag_ms: float = 0.0
    trial_splits: list[str] | None = field(default_factory=lambda: ["train", "val"])
    include_heldout: bool = True


@dataclass
class MouseVoltageSettings(DataModuleSettings):
    """``conf/datamodule/mouse_voltage.yaml``: :class:`datamodules.mouse_voltage.MouseVoltageDataModule`.

    ``simulation`` and ``figures`` stay free-form mappings (the simulator's and the imaging
    figures' own keyword arguments).
    """

    _target_: str = "datamodules.mouse_voltage.MouseVoltageDataModule"
    split: str = "blocks"
    path: str | None = None
    series: str | None = None
    fs: float | None = None
    frames: list[int] | None = None
    spatial_bin: int = 1
    bandpass: list[float | None] | None = None
    zscore: bool = True
    simulation: dict[str, Any] | None = None
    figures: dict[str, Any] | None = None
    cache_dir: str | None = None


#: schema of each shipped ``conf/datamodule/NAME.yaml`` (``base``: the keys every one shares)
DATAMODULE_SCHEMAS: dict[str, type[DataModuleSettings]] = {
    "base": DataModuleSettings,
    "synthetic": SyntheticSettings,
    "grouped_teacher": GroupedTeacherSettings,
    "from_file": FromFileSettings,
    "monkey_m1": MonkeyM1Settings,
    "mouse_voltage": MouseVoltageSettings,
}


__all__ = [
    "DATAMODULE_SCHEMAS",
    "DataModuleSettings",
    "FromFileSettings",
    "GroupedTeacherSettings",
    "MonkeyM1Settings",
    "MouseVoltageSettings",
    "SPLITS",
    "SyntheticSettings",
    "check_history_fits",
    "is_integer",
    "is_number",
    "known_values",
    "require_choice",
    "require_non_negative",
    "require_positive",
    "shown",
    "trial_length",
]
