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
from typing import TYPE_CHECKING, Any

from facrnn.errors import ConfigError

if TYPE_CHECKING:
    from facrnn.core.partial_correlation import EstimatorBudget

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


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def require_integer_at_least(key: str, value: Any, lowest: int, what: str) -> None:
    """``value`` of config key ``key`` must be an integer of at least ``lowest``.

    Raises
    ------
    ConfigError
        ``KEY=VALUE: expected WHAT (an integer of at least LOWEST)``.
    """
    if not (_is_integer(value) and value >= lowest):
        raise ConfigError(f"{key}={value!r}: expected {what} (an integer of at least {lowest})")


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
    exact_max_points : int
        The partial/total correlation and the mixture KLs of the rollout measures are exact
        (every posterior sample of every point scored against every point: O(n_mc n²)) up
        to this many points, subsampled above (O(query_samples n); docs/evaluation.md).
        0 always subsamples.
    query_samples : int
        Query samples of a subsampled estimate; its standard error (``partial_corr_se``, ...)
        shrinks as ``1/sqrt(query_samples)``.
    max_centres : int, optional
        Kernel centres per query of a subsampled estimate: None (every point), or seeded
        subsets of this size for a cost independent of the recording length.
    chunk_mb : float
        Memory (MB) of one tile of kernel values of a subsampled estimate, allocated once.
    kl_n_mc : int
        Samples per reference point of the exact mixture KLs (``generation_*_kl``).

    Raises
    ------
    ConfigError
        An unknown split, ``n_mc``, ``rollout_steps`` or ``kl_n_mc`` not a positive integer,
        an empty checkpoint, or an estimator setting out of range (one line naming the key).
    """

    split: str = "test"
    checkpoint: str = "best"
    n_mc: int = 10
    seed: int = 0
    rollout_steps: int = 20
    dynamics: bool = True
    figures: bool = True
    exact_max_points: int = 4000
    query_samples: int = 10_000
    max_centres: int | None = None
    chunk_mb: float = 8.0
    kl_n_mc: int = 4

    def __post_init__(self) -> None:
        if self.split not in EVALUATION_SPLITS:
            raise ConfigError(f"split={self.split!r}: expected one of {', '.join(EVALUATION_SPLITS)}")
        require_positive_integer("n_mc", self.n_mc, "the number of posterior samples per point")
        require_positive_integer("rollout_steps", self.rollout_steps, "the longest rollout horizon k")
        if not isinstance(self.checkpoint, str) or not self.checkpoint:
            raise ConfigError(f"checkpoint={self.checkpoint!r}: expected best, last or a .ckpt path")
        require_integer_at_least(
            "exact_max_points", self.exact_max_points, 0, "the most points estimated exactly, 0 to always subsample"
        )
        require_integer_at_least("query_samples", self.query_samples, 2, "the query samples of a subsampled estimate")
        if self.max_centres is not None:
            require_integer_at_least(
                "max_centres", self.max_centres, 2, "null (every point a kernel centre) or the kernel centres per query"
            )
        chunk = self.chunk_mb
        if not (isinstance(chunk, (int, float)) and not isinstance(chunk, bool) and math.isfinite(chunk) and chunk > 0):
            raise ConfigError(f"chunk_mb={chunk!r}: expected the memory of one estimator tile in MB (a positive number)")
        require_positive_integer("kl_n_mc", self.kl_n_mc, "the samples per reference point of the mixture KLs")

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

    @property
    def budget(self) -> EstimatorBudget:
        """When and how the estimators subsample (:class:`~facrnn.core.partial_correlation.EstimatorBudget`)."""
        from facrnn.core.partial_correlation import EstimatorBudget  # torch: not needed to check a config

        return EstimatorBudget(
            exact_max_points=self.exact_max_points,
            query_samples=self.query_samples,
            max_centres=self.max_centres,
            tile_bytes=max(1, int(self.chunk_mb * 2**20)),
        )

    def with_changes(self, **changes: Any) -> EvalSettings:
        """A copy with some settings replaced (checked again)."""
        return replace(self, **changes)


__all__ = ["EVALUATION_SPLITS", "EvalSettings", "require_integer_at_least", "require_positive_integer"]
