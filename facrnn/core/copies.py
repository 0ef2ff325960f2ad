"""Many independently initialised copies of one low-rank RNN, trained in one process with
batched weights (``model.replicas`` seeds, ``model.restarts`` starts per seed; docs/scale.md).

Copy ``c = r * restarts + j`` is start ``j`` of replica ``r``. Its initial weights are those
of a plain :class:`~facrnn.core.model.LowRankRNN` built right after ``torch.manual_seed(s)`` with
``s = seed + r`` for the first start (so replica ``r`` starts like a plain run with
``seed = seed + r``) and ``s = seed + r + RESTART_SEED_STRIDE * j`` for the others. The
copies share nothing: summing their losses gives every copy its own gradient, and Adam(W)
updates element-wise, so one optimizer over the stacked weights trains them independently.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from facrnn.core.grouping import padded_group_index
from facrnn.core.model import LowRankRNN

RESTART_SEED_STRIDE = 1_000_003

#: stacked parameter name -> (attribute path in LowRankRNN)
PARAMETER_SOURCES = {
    "encoder_weight": "encoder.weight",  # B, (C, K, N)
    "encoder_bias": "encoder.bias",  # b, (C, K)
    "decoder_weight": "decoder.weight",  # A, (C, N, K)
    "decoder_bias": "decoder.bias",  # a, (C, N)
    "log_noise_std": "log_noise_std",  # (C, N)
}


def configured_copies(model_cfg: Any) -> int:
    """Copies a model config trains at once: ``model.replicas * model.restarts`` (1 if unset)."""
    return int(model_cfg.get("replicas", 1) or 1) * int(model_cfg.get("restarts", 1) or 1)


def copy_seed(seed: int, replica: int, start: int) -> int:
    """Initialisation seed of start ``start`` of replica ``replica`` (see the module docstring)."""
    return int(seed) + int(replica) + RESTART_SEED_STRIDE * int(start)


class ReplicatedLowRankRNN(nn.Module):
    """``C`` copies of a linear :class:`~facrnn.core.model.LowRankRNN` with stacked weights.

    Parameters
    ----------
    models : sequence of LowRankRNN
        The copies' initial states (linear encoder and decoder, same sizes and settings; the
        MLP variants cannot be batched, which :mod:`facrnn.training.settings` rules out).
    """

    def __init__(self, models: Sequence[LowRankRNN]) -> None:
        super().__init__()
        if not models:
            raise ValueError("ReplicatedLowRankRNN: expected at least one model copy")
        first = models[0]
        if not all(model.is_linear for model in models):
            raise ValueError("ReplicatedLowRankRNN: expected copies of a linear LowRankRNN (linear encoder and decoder)")
        self.group_sizes = list(first.group_sizes)
        self.latent_dim = first.latent_dim
        self.n_neurons = first.n_neurons
        self.observation = first.observation
        self.history = first.history
        self.width = first.width
        self.is_linear = True
        state = [model.state_dict() for model in models]
        for name, source in PARAMETER_SOURCES.items():
            self.register_parameter(name, nn.Parameter(torch.stack([s[source].detach().clone() for s in state])))
        self.register_buffer("group_index", padded_group_index(self.group_sizes), persistent=False)
        # a plain model to copy in to_model; set past nn.Module so it is no submodule (no state_dict entries)
        object.__setattr__(self, "_template", first)

    @property
    def link(self) -> str:
        """Decoder link ``f`` (``model.link``) of the observation model."""
        return self.observation.link

    @property
    def n_copies(self) -> int:
        """``C``, the number of stacked copies."""
        return int(self.encoder_weight.shape[0])

    def encode(self, encoder_input: torch.Tensor) -> torch.Tensor:
        """Posterior means ``mu = B u + b``: ``(C, n, N) -> (C, n, K)``."""
        return torch.baddbmm(self.encoder_bias.unsqueeze(1), encoder_input, self.encoder_weight.transpose(1, 2))

    def sample(self, means: torch.Tensor) -> torch.Tensor:
        """Posterior samples ``z = mu + h eps``: ``(C, n, K) -> (C, n, K)``."""
        return means + self.width * torch.randn_like(means)

    def decode(self, latents: torch.Tensor, external_input: torch.Tensor | None = None) -> torch.Tensor:
        """Observation mean ``f(A z + a) + e``: ``(C, n, K) -> (C, n, N)``."""
        output = torch.baddbmm(self.decoder_bias.unsqueeze(1), latents, self.decoder_weight.transpose(1, 2))
        return self.observation.mean(output, external_input)

    def overlap(self) -> torch.Tensor:
        """Overlap matrices ``B A`` of every copy, ``(C, K, K)``."""
        return torch.bmm(self.encoder_weight, self.decoder_weight)

    def copy_state(self, index: int, parameters: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """State dict of a plain :class:`LowRankRNN` holding copy ``index``.

        ``parameters`` (stacked tensors keyed like :data:`PARAMETER_SOURCES`) defaults to the
        current weights; pass a stored snapshot (e.g. the best validation state) instead.
        """
        stacked = parameters if parameters is not None else dict(self.named_parameters())
        return {source: stacked[name][index].detach().clone() for name, source in PARAMETER_SOURCES.items()}

    def to_model(self, index: int, parameters: dict[str, torch.Tensor] | None = None) -> LowRankRNN:
        """A plain :class:`LowRankRNN` with copy ``index``'s weights."""
        model = copy.deepcopy(self._template)
        model.load_state_dict(self.copy_state(index, parameters), strict=False)
        return model

    @torch.no_grad()
    def keep(self, indices: Sequence[int]) -> None:
        """Keep only the copies ``indices`` (in that order); the parameters stay the same objects.

        The caller re-indexes the optimizer state the same way (:func:`keep_optimizer_state`).
        """
        index = torch.as_tensor(list(indices), dtype=torch.long, device=self.encoder_weight.device)
        for parameter in self.parameters():
            parameter.data = parameter.data.index_select(0, index).contiguous()
            parameter.grad = None

    def extra_repr(self) -> str:
        return f"copies={self.n_copies}, group_sizes={self.group_sizes}, width={self.width:.4f}, link={self.link}"


def build_copies(make_model: Callable[[], LowRankRNN], seed: int, replicas: int, restarts: int) -> ReplicatedLowRankRNN:
    """Build ``replicas * restarts`` copies, copy ``r * restarts + j`` seeded by :func:`copy_seed`.

    The global torch RNG is re-seeded with ``seed`` afterwards.
    """
    models = []
    for replica in range(replicas):
        for start in range(restarts):
            torch.manual_seed(copy_seed(seed, replica, start))
            models.append(make_model())
    torch.manual_seed(int(seed))
    return ReplicatedLowRankRNN(models)


@torch.no_grad()
def keep_optimizer_state(optimizer: torch.optim.Optimizer, indices: Sequence[int], n_copies: int) -> None:
    """Keep copies ``indices`` of every per-parameter optimizer state tensor (Adam's moments).

    State tensors whose first dimension is ``n_copies`` are re-indexed; scalars (the step
    count) are left alone. Call it together with :meth:`ReplicatedLowRankRNN.keep`.
    """
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            state = optimizer.state.get(parameter)
            if not state:
                continue
            for key, value in state.items():
                if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == n_copies:
                    index = torch.as_tensor(list(indices), dtype=torch.long, device=value.device)
                    state[key] = value.index_select(0, index).contiguous()


def select_starts(objectives: torch.Tensor) -> list[int]:
    """Copy index of the best start of every replica.

    Parameters
    ----------
    objectives : (replicas, restarts) tensor
        Training objective of every start (lower is better; non-finite counts as worst).

    Returns
    -------
    list of int
        ``r * restarts + argmin_j objectives[r, j]`` for every replica ``r``.
    """
    if objectives.ndim != 2:
        raise ValueError(f"select_starts: expected objectives of shape (replicas, restarts), got {tuple(objectives.shape)}")
    cleaned = torch.where(torch.isfinite(objectives), objectives, torch.full_like(objectives, float("inf")))
    restarts = objectives.shape[1]
    return [replica * restarts + int(cleaned[replica].argmin()) for replica in range(objectives.shape[0])]


__all__ = [
    "PARAMETER_SOURCES",
    "RESTART_SEED_STRIDE",
    "ReplicatedLowRankRNN",
    "build_copies",
    "configured_copies",
    "copy_seed",
    "keep_optimizer_state",
    "select_starts",
]
