"""The low-rank RNN written as a VAE (DESIGN §1): encoder = the network's input projection
``B``, decoder = its output projection ``A``; ``W = A B`` is the learned connectivity.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from facrnn.core.grouping import group_slices, padded_group_index
from facrnn.core.observation import LINKS, Observation, make_observation

PROJECTIONS = ("linear", "mlp")
#: per-bin batch tensors the model and its loss read (a batch may carry others: latents, trial, time)
MODEL_INPUT_KEYS = ("x", "encoder_input", "external_input")


def history_kernel(n_lags: int) -> torch.Tensor:
    """Weights ``psi_l`` of lags ``l = 1..L``: ``psi_l ∝ exp(-l)``, normalised to sum 1.

    Returns
    -------
    (L,) tensor, most recent lag first (largest weight).
    """
    if n_lags < 1:
        raise ValueError(f"model.history={n_lags}: expected a positive number of lags")
    weights = torch.exp(-torch.arange(1, n_lags + 1, dtype=torch.float64))
    return (weights / weights.sum()).float()


def encoder_input(x: torch.Tensor, n_lags: int = 1, missing_past: str = "first") -> torch.Tensor:
    """Encoder input ``u_t = sum_l psi_l tanh(x_{t-l})`` of every bin of every trial.

    Parameters
    ----------
    x : (trials, T, N) tensor
        Observations.
    n_lags : int
        History length ``L``.
    missing_past : {"first", "zero"}
        What stands for ``x_{t-l}`` before the start of a trial: the trial's first bin
        (trial data) or zero (one long recording).

    Returns
    -------
    (trials, T, N) tensor
    """
    if x.ndim != 3:
        raise ValueError(f"encoder_input: expected x of shape (trials, time, channels), got {tuple(x.shape)}")
    if missing_past not in ("first", "zero"):
        raise ValueError(f"missing_past={missing_past!r}: expected 'first' or 'zero'")
    kernel = history_kernel(n_lags).to(x)
    squashed = torch.tanh(x)
    first = squashed[:, :1] if missing_past == "first" else torch.zeros_like(squashed[:, :1])
    pad = first.expand(-1, n_lags, -1)
    padded = torch.cat([pad, squashed], dim=1)  # (trials, L + T, N); padded[:, L + t] = tanh(x_t)
    n_bins = x.shape[1]
    result = torch.zeros_like(x)
    for lag in range(1, n_lags + 1):
        result = result + kernel[lag - 1] * padded[:, n_lags - lag : n_lags - lag + n_bins]
    return result


def past_buffer(x: torch.Tensor, n_lags: int, missing_past: str = "zero") -> torch.Tensor:
    """Squashed past ``tanh(x_{t-1}), ..., tanh(x_{t-L})`` of every bin (most recent first).

    The same convention as :func:`encoder_input`, which equals
    ``sum_l psi_l buffer[:, t, l]``.

    Parameters
    ----------
    x : (trials, T, N) tensor
    n_lags : int
        ``L``.
    missing_past : {"first", "zero"}
        What stands for bins before the start of a trial.

    Returns
    -------
    (trials, T, L, N) tensor
    """
    squashed = torch.tanh(x)
    pad = squashed[:, :1] if missing_past == "first" else torch.zeros_like(squashed[:, :1])
    padded = torch.cat([pad.expand(-1, n_lags, -1), squashed], dim=1)  # padded[:, L + t] = tanh(x_t)
    n_bins = x.shape[1]
    return torch.stack([padded[:, n_lags - lag : n_lags - lag + n_bins] for lag in range(1, n_lags + 1)], dim=2)


def posterior_width(n_samples: int, latent_dim: int) -> float:
    """Scott's-rule width ``h = M^(-1 / (K + 4))`` of the fixed-width posterior."""
    if n_samples < 1:
        raise ValueError(f"posterior_width: n_samples={n_samples}, expected at least 1")
    return float(n_samples) ** (-1.0 / (latent_dim + 4))


class LowRankRNN(nn.Module):
    """Low-rank RNN VAE with grouped latents.

    Parameters
    ----------
    n_neurons : int
        ``N``, observed channels.
    group_sizes : sequence of int
        ``[H_1, ..., H_G]``; ``K = sum H_g``.
    n_samples : int
        ``M`` in the posterior width ``h = M^(-1/(K+4))``.
    link : {"identity", "relu", "softplus"}
        Decoder link ``f`` (``softplus`` for Poisson rates).
    likelihood : {"gaussian", "poisson"}
        Observation model (:mod:`facrnn.core.observation`), held as :attr:`observation`.
    history : int
        ``L``, the encoder's history lags (the encoder input is built from ``x_{t-1..t-L}``).
    encoder, decoder : {"linear", "mlp"}
        ``linear``: the low-rank RNN's projections ``B`` and ``A``. ``mlp`` (the ``*_mlp``
        baselines of DESIGN §2): encoder Linear(N, H)-ReLU-Linear(H, K), decoder
        Linear(K, H)-ReLU-Linear(H, N)-ReLU; ``W = A B`` is then undefined.
    hidden_dim : int
        ``H``, hidden width of the MLP encoder/decoder.

    The settings are those of ``model.*`` checked by :mod:`facrnn.training.settings`.
    """

    def __init__(
        self,
        n_neurons: int,
        group_sizes: Sequence[int],
        n_samples: int,
        link: str = "identity",
        encoder: str = "linear",
        decoder: str = "linear",
        hidden_dim: int = 32,
        likelihood: str = "gaussian",
        history: int = 1,
    ) -> None:
        super().__init__()
        self.group_sizes = [int(size) for size in group_sizes]
        self.latent_dim = sum(self.group_sizes)
        self.n_neurons = int(n_neurons)
        self.observation: Observation = make_observation(likelihood, link)
        self.history = int(history)
        self.width = posterior_width(n_samples, self.latent_dim)
        self.encoder_kind, self.decoder_kind = encoder, decoder
        if not {encoder, decoder} <= set(PROJECTIONS):
            raise ValueError(f"LowRankRNN: encoder={encoder!r}, decoder={decoder!r}; expected projections in {PROJECTIONS}")
        if encoder == "linear":
            self.encoder = nn.Linear(n_neurons, self.latent_dim)  # weight B (K, N), bias b
        else:
            self.encoder = nn.Sequential(nn.Linear(n_neurons, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, self.latent_dim))
        if decoder == "linear":
            self.decoder = nn.Linear(self.latent_dim, n_neurons)  # weight A (N, K), bias a
        else:
            self.decoder = nn.Sequential(
                nn.Linear(self.latent_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, n_neurons), nn.ReLU()
            )
        self.log_noise_std = nn.Parameter(torch.full((n_neurons,), -1.0))
        self.register_buffer("group_index", padded_group_index(self.group_sizes), persistent=False)

    @property
    def link(self) -> str:
        """Decoder link ``f`` (``model.link``) of the observation model."""
        return self.observation.link

    @property
    def is_linear(self) -> bool:
        """Whether encoder and decoder are the linear projections, so ``W = A B`` exists."""
        return self.encoder_kind == "linear" and self.decoder_kind == "linear"

    def _linear_weight(self, which: str) -> torch.Tensor:
        layer = self.decoder if which == "A" else self.encoder
        if not isinstance(layer, nn.Linear):
            raise ValueError(
                f"model.{'decoder' if which == 'A' else 'encoder'}=mlp: {which} (and W = A B) is only "
                "defined for a linear projection; expected model.encoder=linear model.decoder=linear"
            )
        return layer.weight

    @property
    def A(self) -> torch.Tensor:  # noqa: N802 (the paper's name)
        """Output projection ``(N, K)`` (linear decoder only)."""
        return self._linear_weight("A")

    @property
    def B(self) -> torch.Tensor:  # noqa: N802
        """Input projection ``(K, N)`` (linear encoder only)."""
        return self._linear_weight("B")

    def encode(self, encoder_input: torch.Tensor) -> torch.Tensor:
        """Posterior means ``mu = B u + b``: ``(n, N) -> (n, K)``."""
        return self.encoder(encoder_input)

    def sample(self, means: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Posterior samples ``z = mu + h eps``: ``(n, K) -> (n, K)``."""
        noise = torch.randn(means.shape, generator=generator, dtype=means.dtype, device=means.device)
        return means + self.width * noise

    def decode(self, latents: torch.Tensor, external_input: torch.Tensor | None = None) -> torch.Tensor:
        """Observation mean ``f(A z + a) + e``: ``(n, K) -> (n, N)``."""
        return self.observation.mean(self.decoder(latents), external_input)

    def connectivity(self) -> torch.Tensor:
        """``W = A B``, ``(N, N)``."""
        return self.A @ self.B

    def group_connectivity(self) -> torch.Tensor:
        """Per-group sub-circuits ``W_g = A[:, g] B[g, :]``, ``(G, N, N)``; they sum to ``W``."""
        return torch.stack([self.A[:, part] @ self.B[part, :] for part in group_slices(self.group_sizes)])

    def overlap(self) -> torch.Tensor:
        """Overlap matrix ``B A``, ``(K, K)``; block-diagonal when the groups decouple."""
        return self.B @ self.A

    def latent_step(self, latents: torch.Tensor, external_input: torch.Tensor | None = None) -> torch.Tensor:
        """One step of the implied latent dynamics (L = 1): ``z' = B tanh(f(A z + a) + e) + b``.

        ``(n, K) -> (n, K)``.
        """
        return self.encode(torch.tanh(self.decode(latents, external_input)))

    def extra_repr(self) -> str:
        projections = "" if self.is_linear else f", encoder={self.encoder_kind}, decoder={self.decoder_kind}"
        return f"group_sizes={self.group_sizes}, width={self.width:.4f}, link={self.link}{projections}"


__all__ = [
    "LINKS",  # re-exported from facrnn.core.observation
    "LowRankRNN",
    "PROJECTIONS",
    "encoder_input",
    "history_kernel",
    "past_buffer",
    "posterior_width",
]
