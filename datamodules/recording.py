"""The canonical in-memory recording every data source produces, and its validation."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from datamodules.validation import (
    check_finite,
    check_magnitude,
    check_min_channels,
    check_ndim,
    check_not_empty,
    check_same_leading,
    check_some_variance,
    check_trial_length,
    integer_labels,
    numeric_array,
)
from facrnn.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class Recording:
    """Observations and optional ground truth in the canonical ``(trials, time, channels)`` layout.

    Attributes
    ----------
    x : (trials, T, N) float32
        Observations.
    external_input : (trials, T, N) float32, optional
        Known input added to the decoder mean.
    latents : (trials, T, K*) float32, optional
        Ground-truth latents.
    A : (N, K*) float, optional
        Ground-truth output projection.
    B : (K*, N) float, optional
        Ground-truth input projection.
    group_sizes : list of int, optional
        True grouping of ``latents``.
    behaviour : (trials, T, D) float32, optional
        Behavioural variables per bin (e.g. hand velocity, D = 2).
    single_sequence : bool
        One long recording (missing past = zero) rather than trials (missing past = first bin).
    source : str
        Where the data came from, for messages.
    """

    x: np.ndarray
    external_input: np.ndarray | None = None
    latents: np.ndarray | None = None
    A: np.ndarray | None = None
    B: np.ndarray | None = None
    group_sizes: list[int] | None = None
    behaviour: np.ndarray | None = None
    single_sequence: bool = False
    source: str = "recording"
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def n_channels(self) -> int:
        return int(self.x.shape[-1])

    def validate(self) -> None:
        """Check dtypes, dimensions, shapes and finiteness; raise ``DataError`` naming the source and key."""
        where = self.source
        layout = "(trials, time, channels)"
        x = check_ndim(numeric_array(self.x, "x", where), "x", where, (3,), layout)
        check_not_empty(x, "x", where, layout)
        check_trial_length(x.shape[1], where)
        check_min_channels(x.shape[-1], "x", where)
        with np.errstate(over="ignore"):  # beyond the float32 range: Inf, reported next
            self.x = np.ascontiguousarray(x, dtype=np.float32)
        check_finite(self.x, "x", where)
        check_magnitude(x, "x", where)
        for key in ("external_input", "latents", "behaviour"):
            value = getattr(self, key)
            if value is None:
                continue
            value = numeric_array(value, key, where)
            check_ndim(value, key, where, (3,), "(trials, time, ...) like 'x'")
            check_same_leading(self.x, "x", value, key, where, 2, "(trials, time)")
            if key == "external_input" and value.shape != self.x.shape:
                raise DataError(
                    f"{where}: 'inputs' has shape {value.shape} but 'x' has shape {self.x.shape}; "
                    "expected the same shape in both"
                )
            with np.errstate(over="ignore"):
                converted = np.ascontiguousarray(value, dtype=np.float32)
            check_finite(converted, key, where)
            if key != "latents":  # ground truth is only compared, never fed to the model
                check_magnitude(value, key, where)
            value = converted
            setattr(self, key, value)
        n_true = self.latents.shape[-1] if self.latents is not None else None
        for key in ("A", "B"):
            value = getattr(self, key)
            if value is not None:
                value = numeric_array(value, key, where).astype(np.float64)
                check_finite(value, key, where, ("row", "column"), repairable=False)
                setattr(self, key, value)
        if self.A is not None:
            if self.A.ndim != 2 or self.A.shape[0] != self.n_channels or (n_true and self.A.shape[1] != n_true):
                raise DataError(f"{where}: 'A' has shape {self.A.shape}; expected (neurons={self.n_channels}, K={n_true})")
        if self.B is not None:
            if self.B.ndim != 2 or self.B.shape[1] != self.n_channels or (n_true and self.B.shape[0] != n_true):
                raise DataError(f"{where}: 'B' has shape {self.B.shape}; expected (K={n_true}, neurons={self.n_channels})")
        if (self.A is None) != (self.B is None):
            raise DataError(f"{where}: only one of 'A' and 'B' given; expected both or neither")
        if self.A is not None and self.B is not None and self.A.shape[1] != self.B.shape[0]:
            raise DataError(
                f"{where}: 'A' has shape {self.A.shape} but 'B' has shape {self.B.shape}; expected A (N, K) and B (K, N)"
            )
        if self.group_sizes is not None:
            self.group_sizes = integer_labels(self.group_sizes, "group_sizes", where, minimum=1).tolist()
            width = n_true if n_true is not None else (self.A.shape[1] if self.A is not None else None)
            if width is not None and sum(self.group_sizes) != width:
                raise DataError(
                    f"{where}: 'group_sizes' {self.group_sizes} sums to {sum(self.group_sizes)}; "
                    f"expected the ground-truth latent dimension {width}"
                )

    @property
    def connectivity(self) -> np.ndarray | None:
        """Ground-truth ``W* = A* B*`` ``(N, N)``, if known."""
        return None if self.A is None else self.A @ self.B


def simulated_recording(arrays: dict[str, np.ndarray], source: str, **extras: np.ndarray) -> Recording:
    """One long simulated recording with full ground truth.

    Parameters
    ----------
    arrays : dict
        ``x`` (T, N), ``latents`` (T, K), ``A`` (N, K), ``B`` (K, N), ``group_sizes`` (G,).
    source : str
        Description for messages.
    extras : arrays (T, ...)
        Further per-bin arrays kept in ``Recording.extras`` with a leading trial axis.
    """
    return Recording(
        x=arrays["x"][None],
        latents=arrays["latents"][None],
        A=arrays["A"],
        B=arrays["B"],
        group_sizes=[int(size) for size in arrays["group_sizes"]],
        single_sequence=True,
        source=source,
        extras={key: value[None] for key, value in extras.items()},
    )


def drop_constant_channels(recording: Recording) -> Recording:
    """Remove zero-variance channels of ``recording.x`` (and everything indexed by channel).

    ``external_input``, the rows of ``A``, the columns of ``B`` and the extras
    ``units_kept`` / ``channel_map`` / ``mask`` follow (other recordings get
    ``extras["channels_kept"]``); the number dropped is logged as a warning.

    Raises
    ------
    DataError
        Every channel is constant.
    """
    varies = check_some_variance(recording.x, "x", recording.source)
    if varies.all():
        return recording
    kept = np.flatnonzero(varies)
    log.warning(
        "%s: dropped %d zero-variance channels of %d; %d channels remain",
        recording.source,
        int((~varies).sum()),
        varies.size,
        kept.size,
    )
    extras = dict(recording.extras)
    if "units_kept" in extras:
        extras["units_kept"] = np.asarray(extras["units_kept"])[kept]
    elif "channel_map" in extras:
        old_map = np.asarray(extras["channel_map"])
        renumber = np.full(varies.size, -1, dtype=np.int64)
        renumber[kept] = np.arange(kept.size)
        extras["channel_map"] = np.where(old_map >= 0, renumber[np.clip(old_map, 0, None)], -1)
        extras["mask"] = extras["channel_map"] >= 0
    else:
        extras["channels_kept"] = kept
    return Recording(
        x=recording.x[..., kept],
        external_input=None if recording.external_input is None else recording.external_input[..., kept],
        latents=recording.latents,
        A=None if recording.A is None else recording.A[kept],
        B=None if recording.B is None else recording.B[:, kept],
        group_sizes=recording.group_sizes,
        behaviour=recording.behaviour,
        single_sequence=recording.single_sequence,
        source=recording.source,
        extras=extras,
    )
