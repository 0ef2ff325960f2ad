"""Multi-step (generative) training: the latent map run along windows of consecutive bins,
forced to the encoded state at some bins (DESIGN §1, docs/generative.md).

One-step training decodes every bin from its own encoded state ``z_t = B u_t + b``. Here the
state of a window's first bin is its encoded sample and every later state is the model's
own prediction,

    s_{p+1} = B u'_{p+1} + b,   u'_{p+1} = sum_l psi_l g_{p+1-l},   g_q = tanh(f(A s_q + a) + e_q)

(for one lag ``s_{p+1} = B tanh(f(A s_p + a) + e_p) + b``, :meth:`LowRankRNN.latent_step`),
except where it is *forced*: sparse teacher forcing (Mikhaeil et al. 2022) puts the encoded
sample back every ``interval`` bins, generalized teacher forcing (Hess et al. 2023) mixes
``s_p <- (1 - alpha) s_p + alpha z_p`` at the other bins that have an encoding. The lag
buffer ``g`` holds the observed squashed past at a forced bin and the model's predictions
after it, as in :func:`facrnn.evaluation.dynamics.rollout`.

Pure functions; shapes in the docstrings; ``...`` is an optional leading copies dimension
(``model.replicas`` / ``model.restarts``).
"""

from __future__ import annotations

import torch
from torch import nn

from facrnn.core.model import history_kernel


def forcing_pattern(window: int, interval: int | None, eligible: torch.Tensor) -> torch.Tensor:
    """Where a window's state is set to the encoded sample.

    Parameters
    ----------
    window : int
        Bins per window ``W``.
    interval : int, optional
        ``tau``: force at window positions ``0, tau, 2 tau, ...``; None forces only the first
        bin (free running over the whole window).
    eligible : (..., n, W) bool tensor
        Bins whose encoding may be used (training bins); position 0 must be eligible.

    Returns
    -------
    (..., n, W) bool tensor
    """
    step = window if interval is None else int(interval)
    if step < 1:
        raise ValueError(f"model.rollout_interval={interval}: expected a positive number of bins, or null")
    positions = torch.arange(window, device=eligible.device)
    pattern = (positions % step == 0).expand_as(eligible)
    return pattern & eligible


def forced_rollout(
    model: nn.Module,
    encoded: torch.Tensor,
    forced: torch.Tensor,
    mix: torch.Tensor | float = 0.0,
    observed_past: torch.Tensor | None = None,
    external_input: torch.Tensor | None = None,
) -> torch.Tensor:
    """States of the latent map along windows, forced to ``encoded`` where ``forced``.

    Parameters
    ----------
    model : LowRankRNN or ReplicatedLowRankRNN
        Its ``encode`` ``(..., n, N) -> (..., n, K)`` and ``decode`` ``(..., n, K) -> (..., n, N)``.
    encoded : (..., n, W, K) tensor
        Encoded posterior samples of every bin of ``n`` windows of ``W`` bins.
    forced : (..., n, W) bool tensor
        Bins where the state is the encoded sample; ``forced[..., 0]`` must be all True.
    mix : float or (..., n, W) tensor
        Generalized teacher forcing weight ``alpha`` at the other bins (0 where a bin has no
        usable encoding); 0 is sparse teacher forcing.
    observed_past : (..., n, W, L, N) tensor, optional
        Squashed observed past ``tanh(x_{p-1}), ..., tanh(x_{p-L})`` of every bin (most recent
        first), which refills the lag buffer at forced bins. None means ``L = 1``.
    external_input : (..., n, W, N) tensor, optional
        Known input ``e_p`` added to the decoded mean of bin ``p``.

    Returns
    -------
    (..., n, W, K) tensor
        The states ``s_p``; decode them for the predictions of ``x_p``.
    """
    window = encoded.shape[-2]
    if not bool(forced[..., 0].all()):
        raise ValueError("forced_rollout: every window's first bin must be forced (its encoded sample)")
    n_lags = 1 if observed_past is None else observed_past.shape[-2]
    kernel = history_kernel(n_lags).to(encoded)
    mix_tensor = torch.as_tensor(mix, dtype=encoded.dtype, device=encoded.device)
    use_mix = bool((mix_tensor != 0).any())
    state = encoded[..., 0, :]
    past = None if observed_past is None else observed_past[..., 0, :, :]
    states = [state]
    for position in range(1, window):
        target = encoded[..., position, :]
        if bool(forced[..., position].all()):  # every window forced here (e.g. interval 1): no free step
            state = target
            past = None if past is None else observed_past[..., position, :, :]
            states.append(state)
            continue
        step_input = None if external_input is None else external_input[..., position - 1, :]
        squashed = torch.tanh(model.decode(state, step_input))  # (..., n, N)
        if past is None:
            free = model.encode(squashed)
        else:
            past = torch.cat([squashed.unsqueeze(-2), past[..., :-1, :]], dim=-2)
            free = model.encode(torch.einsum("l,...ln->...n", kernel, past))
        if use_mix:
            weight = mix_tensor if mix_tensor.ndim == 0 else mix_tensor[..., position].unsqueeze(-1)
            free = free + weight * (target - free)
        force_here = forced[..., position].unsqueeze(-1)
        state = torch.where(force_here, target, free)
        if past is not None:
            past = torch.where(force_here.unsqueeze(-1), observed_past[..., position, :, :], past)
        states.append(state)
    return torch.stack(states, dim=-2)


__all__ = ["forced_rollout", "forcing_pattern"]
