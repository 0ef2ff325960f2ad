"""Observation models of the VAE's decoder (DESIGN §1): how the decoder output becomes the
observation mean, and the training negative log-likelihood of the data under it.

One object per ``model.likelihood``, built by :func:`make_observation` from the config's
``model.likelihood`` and ``model.link`` strings (checked by :mod:`facrnn.training.settings`):

- :class:`GaussianObservation`: ``x ~ N(f(A z + a) + e, diag(s^2))`` with per-neuron std ``s``
  (the model's ``log_noise_std``); any link ``f``.
- :class:`PoissonObservation`: counts ``x ~ Poisson(f(A z + a) + e)``, ``f = softplus``.

The evaluation scores of each observation model (held-out log-likelihood, bits per spike)
live in :mod:`facrnn.evaluation.metrics`, keyed by :attr:`Observation.name`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch

from facrnn.core.losses import gaussian_nll, poisson_nll

#: decoder link ``f`` by ``model.link``
LINK_FUNCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "identity": lambda output: output,
    "relu": torch.relu,
    "softplus": torch.nn.functional.softplus,  # Poisson rate
}
LINKS = tuple(LINK_FUNCTIONS)


class Observation:
    """Observation model: the decoder's link and the training negative log-likelihood.

    Parameters
    ----------
    link : {"identity", "relu", "softplus"}
        Decoder link ``f`` applied to ``A z + a``.
    """

    #: ``model.likelihood`` value of this observation model
    name: ClassVar[str]

    def __init__(self, link: str = "identity") -> None:
        if link not in LINK_FUNCTIONS:
            raise ValueError(f"model.link={link!r}: expected one of {LINKS}")
        self.link = link
        self._link_function = LINK_FUNCTIONS[link]

    def mean(self, decoder_output: torch.Tensor, external_input: torch.Tensor | None = None) -> torch.Tensor:
        """Observation mean ``f(A z + a) + e``: ``(..., n, N) -> (..., n, N)``."""
        mean = self._link_function(decoder_output)
        if external_input is not None:
            mean = mean + external_input
        return mean

    def nll(
        self, x: torch.Tensor, mean: torch.Tensor, log_noise_std: torch.Tensor, weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Negative log-likelihood of ``x`` ``(..., n, N)`` given the mean ``(..., n, N)``.

        ``log_noise_std`` ``(..., N)`` is the model's per-neuron noise parameter (unused by
        models without one). Returns ``(...)``: mean over samples of the sum over neurons,
        weighted by ``weights`` ``(..., n)`` when given (the training bins of rollout windows).
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(link={self.link!r})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.link == self.link  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((self.name, self.link))


class GaussianObservation(Observation):
    """Gaussian observations with per-neuron standard deviation ``exp(log_noise_std)``."""

    name = "gaussian"

    def nll(
        self, x: torch.Tensor, mean: torch.Tensor, log_noise_std: torch.Tensor, weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        return gaussian_nll(x, mean, log_noise_std, weights=weights)


class PoissonObservation(Observation):
    """Poisson counts with rate = the observation mean (``link=softplus``); no noise parameter."""

    name = "poisson"

    def __init__(self, link: str = "softplus") -> None:
        super().__init__(link)

    def nll(
        self, x: torch.Tensor, mean: torch.Tensor, log_noise_std: torch.Tensor, weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        return poisson_nll(x, mean, weights=weights)


#: observation model class by ``model.likelihood``
OBSERVATIONS: dict[str, type[Observation]] = {
    GaussianObservation.name: GaussianObservation,
    PoissonObservation.name: PoissonObservation,
}
LIKELIHOODS = tuple(OBSERVATIONS)


def make_observation(likelihood: str = "gaussian", link: str = "identity") -> Observation:
    """The observation model of ``model.likelihood`` with decoder link ``model.link``."""
    if likelihood not in OBSERVATIONS:
        raise ValueError(f"model.likelihood={likelihood!r}: expected one of {LIKELIHOODS}")
    return OBSERVATIONS[likelihood](link)


__all__ = [
    "GaussianObservation",
    "LIKELIHOODS",
    "LINKS",
    "LINK_FUNCTIONS",
    "OBSERVATIONS",
    "Observation",
    "PoissonObservation",
    "make_observation",
]
