"""The canonical in-memory recording every data source produces, and its validation."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


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
        """Check dimensions, shapes and finiteness; raise ``ValueError`` naming the key at fault."""
        where = self.source
        if not np.issubdtype(np.asarray(self.x).dtype, np.number):
            raise ValueError(f"{where}: 'x' has dtype {self.x.dtype}; expected numbers")
        if self.x.ndim != 3:
            raise ValueError(f"{where}: 'x' has shape {self.x.shape}; expected (trials, time, channels)")
        if self.x.size == 0:
            raise ValueError(f"{where}: 'x' is empty (shape {self.x.shape}); expected at least one bin and channel")
        self.x = np.ascontiguousarray(self.x, dtype=np.float32)
        n_bad = int((~np.isfinite(self.x)).sum())
        if n_bad:
            trials, bins, _ = np.nonzero(~np.isfinite(self.x))
            raise ValueError(
                f"{where}: 'x' holds {n_bad} NaN/Inf values (first at trial {trials[0]}, bin {bins[0]}); "
                "expected finite values"
            )
        for key in ("external_input", "latents", "behaviour"):
            value = getattr(self, key)
            if value is None:
                continue
            value = np.ascontiguousarray(value, dtype=np.float32)
            if value.ndim != 3 or value.shape[:2] != self.x.shape[:2]:
                raise ValueError(
                    f"{where}: '{key}' has shape {value.shape}; expected (trials, time, ...) matching "
                    f"'x' {self.x.shape[:2]}"
                )
            if key == "external_input" and value.shape != self.x.shape:
                raise ValueError(f"{where}: 'inputs' has shape {value.shape}; expected the shape of 'x' {self.x.shape}")
            if not np.isfinite(value).all():
                raise ValueError(f"{where}: '{key}' holds NaN/Inf values; expected finite values")
            setattr(self, key, value)
        n_true = self.latents.shape[-1] if self.latents is not None else None
        if self.A is not None:
            self.A = np.asarray(self.A, dtype=np.float64)
            if self.A.ndim != 2 or self.A.shape[0] != self.n_channels or (n_true and self.A.shape[1] != n_true):
                raise ValueError(f"{where}: 'A' has shape {self.A.shape}; expected (neurons={self.n_channels}, K={n_true})")
        if self.B is not None:
            self.B = np.asarray(self.B, dtype=np.float64)
            if self.B.ndim != 2 or self.B.shape[1] != self.n_channels or (n_true and self.B.shape[0] != n_true):
                raise ValueError(f"{where}: 'B' has shape {self.B.shape}; expected (K={n_true}, neurons={self.n_channels})")
        if (self.A is None) != (self.B is None):
            raise ValueError(f"{where}: only one of 'A' and 'B' given; expected both or neither")
        if self.group_sizes is not None:
            self.group_sizes = [int(size) for size in np.ravel(self.group_sizes)]
            width = n_true if n_true is not None else (self.A.shape[1] if self.A is not None else None)
            if width is not None and sum(self.group_sizes) != width:
                raise ValueError(
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
