"""How a trained model is scored: one dataclass for every evaluation setting.

``evaluate.py`` (``conf/evaluate.yaml``), the evaluation at the end of ``train.py``,
``facrnn.cli.compare`` and the post-hoc baselines all build an :class:`EvalSettings` and hand
it down; no function re-spells the settings as separate arguments. The settings check
themselves when built (:class:`~facrnn.errors.ConfigError`, one line naming the key), so a
bad ``conf/evaluate.yaml`` value is reported before anything is loaded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any

from facrnn.errors import ConfigError

#: splits a run can be scored on
EVALUATION_SPLITS = ("train", "val", "test")


def require_positive_integer(key: str, value: Any, what: str) -> None:
    """``value`` of config key ``key`` must be a positive integer.

    Raises
    ------
    ConfigError
        ``KEY=VALUE: expected WHAT (a positive integer)``.
    """
    valid = isinstance(value, int) and not isinstance(value, bool) and value > 0 and math.isfinite(value)
    if not valid:
        raise ConfigError(f"{key}={value!r}: expected {what} (a positive integer)")


@dataclass(frozen=True)
class EvalSettings:
    """Settings of one evaluation.

    Parameters
    ----------
    split : {"train", "val", "test"}
        Split to score (held-out: ``test``).
    checkpoint : str
        ``best``, ``last`` or a path to a ``.ckpt`` file.
    n_mc : int
        Posterior samples per point of the partial-correlation estimate.
    seed : int
        Seed of the estimators' noise (PC, TC, free generation); ``eval_seed`` in the config.
    rollout_steps : int
        Longest rollout horizon ``k`` of the k-step R² curve.
    dynamics : bool
        Run the rollout measures (rollout R², free generation, coupling, fixed points).
    figures : bool
        Write the PNG figures.

    Raises
    ------
    ConfigError
        An unknown split, ``n_mc`` or ``rollout_steps`` not a positive integer, or an empty
        checkpoint.
    """

    split: str = "test"
    checkpoint: str = "best"
    n_mc: int = 10
    seed: int = 0
    rollout_steps: int = 20
    dynamics: bool = True
    figures: bool = True

    def __post_init__(self) -> None:
        if self.split not in EVALUATION_SPLITS:
            raise ConfigError(f"split={self.split!r}: expected one of {', '.join(EVALUATION_SPLITS)}")
        require_positive_integer("n_mc", self.n_mc, "the number of posterior samples per point")
        require_positive_integer("rollout_steps", self.rollout_steps, "the longest rollout horizon k")
        if not isinstance(self.checkpoint, str) or not self.checkpoint:
            raise ConfigError(f"checkpoint={self.checkpoint!r}: expected best, last or a .ckpt path")

    @classmethod
    def from_config(cls, cfg: Any) -> EvalSettings:
        """Settings from ``conf/evaluate.yaml`` keys (``eval_seed`` is the seed).

        Absent keys keep their defaults (as does ``eval_seed: null``); a key set to null is
        checked like any other value.
        """
        values: dict[str, Any] = {}
        for field in fields(cls):
            key = "eval_seed" if field.name == "seed" else field.name
            if key not in cfg:
                continue
            value = cfg.get(key)
            if field.name == "seed" and value is None:
                continue
            values[field.name] = bool(value) if field.name in ("dynamics", "figures") else value
        return cls(**values)

    def with_changes(self, **changes: Any) -> EvalSettings:
        """A copy with some settings replaced (checked again)."""
        return replace(self, **changes)


__all__ = ["EVALUATION_SPLITS", "EvalSettings", "require_positive_integer"]
