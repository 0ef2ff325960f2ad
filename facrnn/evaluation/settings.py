"""How a trained model is scored: one dataclass for every evaluation setting.

``evaluate.py`` (``conf/evaluate.yaml``), the evaluation at the end of ``train.py``,
``facrnn.cli.compare`` and the post-hoc baselines all build an :class:`EvalSettings` and hand
it down; no function re-spells the settings as separate arguments.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

#: splits a run can be scored on
EVALUATION_SPLITS = ("train", "val", "test")
#: checkpoint names of a run directory (or a path to a .ckpt file)
CHECKPOINT_CHOICES = ("best", "last")


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
        Seed of the estimators' noise (PC, TC, free generation).
    rollout_steps : int
        Longest rollout horizon ``k`` of the k-step R² curve.
    dynamics : bool
        Run the rollout measures (rollout R², free generation, coupling, fixed points).
    figures : bool
        Write the PNG figures.
    """

    split: str = "test"
    checkpoint: str = "best"
    n_mc: int = 10
    seed: int = 0
    rollout_steps: int = 20
    dynamics: bool = True
    figures: bool = True

    @classmethod
    def from_config(cls, cfg: Any) -> EvalSettings:
        """Settings from ``conf/evaluate.yaml`` keys (``eval_seed`` is the seed); absent keys keep their defaults."""
        names = {field.name for field in fields(cls)}
        values = {name: cfg.get(name) for name in names if name != "seed" and cfg.get(name) is not None}
        if cfg.get("eval_seed") is not None:
            values["seed"] = cfg.get("eval_seed")
        return cls(**values)

    def with_changes(self, **changes: Any) -> EvalSettings:
        """A copy with some settings replaced."""
        return replace(self, **changes)


__all__ = ["CHECKPOINT_CHOICES", "EVALUATION_SPLITS", "EvalSettings"]
