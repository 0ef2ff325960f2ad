"""The learned network run on its own: rollouts, generation, coupling and fixed points.

Training and the one-step metrics are teacher-forced: every latent ``z_t`` is encoded from
observed data. The functions here instead iterate the latent map the model implies
(DESIGN §1),

``z_{t+1} = B u_{t+1} + b``, ``u_{t+1} = sum_l psi_l tanh(x̂_{t+1-l})``, ``x̂_t = f(A z_t + a) + e_t``,

which for ``L = 1`` lag is ``z_{t+1} = B tanh(f(A z_t + a) + e_t) + b``
(:meth:`~facrnn.core.model.LowRankRNN.latent_step`). For ``L > 1`` the map keeps a buffer of the
last ``L`` squashed (decoded) observations, filled with observed data at the start.

- :func:`rollout`, :func:`k_step_r2`: k-step-ahead prediction from encoded states.
- :func:`free_generation`: free-running trajectories from encoded initial states;
  :func:`gaussian_mixture_kl` and :func:`power_spectrum_correlation` compare them with data.
- :func:`jacobians`, :func:`group_coupling`: how much one latent group drives another.
- :func:`find_fixed_points`: multi-start root finding of ``F(z) = z`` with the eigenvalues
  of the Jacobian, whole and per group.
- :func:`dynamics_metrics`: all of the above on one split, as flat ``snake_case`` metrics.

Everything takes any model with ``encode``, ``decode`` and ``latent_dim`` (a
:class:`~facrnn.core.model.LowRankRNN`, linear or MLP).
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import optimize, signal

from facrnn.core.grouping import group_slices
from facrnn.core.model import history_kernel, past_buffer
from facrnn.core.partial_correlation import (
    EstimatorBudget,
    KDEEstimate,
    blockwise_estimate,
    centre_subset,
    kernel_log_sums,
    own_kernel_sums,
    posterior_queries,
    standard_error,
    weighted_log_mass,
)
from facrnn.evaluation.metrics import r2_score

log = logging.getLogger(__name__)

__all__ = [
    "DynamicsResult",
    "FixedPoint",
    "Generation",
    "dynamics_metrics",
    "find_fixed_points",
    "free_generation",
    "gaussian_mixture_kl",
    "gaussian_mixture_kl_estimate",
    "group_coupling",
    "jacobians",
    "k_step_r2",
    "past_buffer",
    "power_spectra",
    "power_spectrum_correlation",
    "rollout",
    "rollout_auc",
]


# ----------------------------------------------------------------------------- rollout


def rollout(
    model: torch.nn.Module,
    initial_latents: torch.Tensor,
    n_steps: int,
    initial_past: torch.Tensor | None = None,
    external_input: torch.Tensor | None = None,
) -> torch.Tensor:
    """Iterate the latent map ``n_steps`` times from given states.

    Parameters
    ----------
    model : LowRankRNN
    initial_latents : (n, K) tensor
        ``z_0`` (e.g. encoded posterior means).
    n_steps : int
    initial_past : (n, L, N) tensor, optional
        Squashed observations ``tanh(x_{-1}), ..., tanh(x_{-L})`` that encoded ``z_0``
        (most recent first); only lags 2..L are used. ``None`` means ``L = 1``.
    external_input : (n, n_steps, N) tensor, optional
        Known input ``e_s`` added to the decoded mean at step ``s = 0..n_steps-1``.

    Returns
    -------
    (n, n_steps + 1, K) tensor
        ``z_0, ..., z_{n_steps}``.
    """
    n_lags = 1 if initial_past is None else initial_past.shape[1]
    kernel = history_kernel(n_lags).to(initial_latents)
    past = initial_past
    latents = [initial_latents]
    state = initial_latents
    for step in range(n_steps):
        step_input = None if external_input is None else external_input[:, step]
        squashed = torch.tanh(model.decode(state, step_input))  # (n, N)
        if n_lags == 1:
            state = model.encode(squashed)
        else:
            past = torch.cat([squashed[:, None], past[:, :-1]], dim=1)
            state = model.encode(torch.einsum("l,nlk->nk", kernel, past))
        latents.append(state)
    return torch.stack(latents, dim=1)


def _decode_all(model: torch.nn.Module, latents: torch.Tensor, external_input: torch.Tensor | None) -> torch.Tensor:
    """Decoded means of ``(n, S, K)`` latents with optional ``(n, S, N)`` inputs: ``(n, S, N)``."""
    n, steps, latent_dim = latents.shape
    flat_input = None if external_input is None else external_input.reshape(n * steps, -1)
    return model.decode(latents.reshape(n * steps, latent_dim), flat_input).reshape(n, steps, -1)


def _gather_inputs(external_input: torch.Tensor | None, trials: torch.Tensor, times: torch.Tensor) -> torch.Tensor | None:
    """``external_input[trial, time]`` for index tensors of equal shape, clamped to the trial."""
    if external_input is None:
        return None
    return external_input[trials, times.clamp(max=external_input.shape[1] - 1)]


def k_step_r2(
    model: torch.nn.Module,
    x: torch.Tensor,
    encoder_inputs: torch.Tensor,
    starts: torch.Tensor,
    max_steps: int = 20,
    n_lags: int = 1,
    missing_past: str = "zero",
    external_input: torch.Tensor | None = None,
) -> np.ndarray:
    """R² of k-step-ahead predictions, ``k = 1..max_steps``.

    From the encoded state ``z_t = encode(u_t)`` of every start bin ``t``, iterate the latent
    map ``k`` steps, decode and score against the observed ``x_{t+k}`` (uniform average over
    channels, pooled over the starts whose ``t + k`` lies in the same trial).

    Parameters
    ----------
    model : LowRankRNN
    x : (trials, T, N) tensor
        The whole recording (targets come from every bin, not only the split's).
    encoder_inputs : (trials, T, N) tensor
        ``encoder_input(x, n_lags, missing_past)``.
    starts : (n, 2) long tensor
        ``(trial, time)`` of the start bins (e.g. the held-out bins).
    max_steps : int
        ``K_max``.
    n_lags : int
        ``L`` of the model's history kernel.
    missing_past : {"first", "zero"}
    external_input : (trials, T, N) tensor, optional

    Returns
    -------
    (max_steps,) array
        ``R²_k``; NaN where fewer than 2 starts have a target ``k`` bins ahead.
    """
    trials, times = starts[:, 0].long(), starts[:, 1].long()
    n_bins = x.shape[1]
    past = past_buffer(x, n_lags, missing_past)[trials, times] if n_lags > 1 else None
    steps = torch.arange(max_steps + 1)
    future_times = times[:, None] + steps[None, :]  # (n, max_steps + 1)
    future_trials = trials[:, None].expand_as(future_times)
    inputs = _gather_inputs(external_input, future_trials, future_times)
    with torch.no_grad():
        latents = rollout(
            model, model.encode(encoder_inputs[trials, times]), max_steps, past, None if inputs is None else inputs[:, :-1]
        )
        predictions = _decode_all(model, latents[:, 1:], None if inputs is None else inputs[:, 1:])
    scores = np.full(max_steps, np.nan)
    for k in range(1, max_steps + 1):
        valid = (times + k) < n_bins
        if int(valid.sum()) < 2:
            continue
        targets = x[trials[valid], times[valid] + k]
        scores[k - 1] = r2_score(targets.double().numpy(), predictions[valid, k - 1].double().numpy())
    return scores


def rollout_auc(scores: np.ndarray) -> float:
    """Normalised area under the R²-vs-k curve: the mean of the finite ``R²_k`` (1 = perfect)."""
    finite = np.asarray(scores, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    return float(np.mean(finite)) if finite.size else float("nan")


# -------------------------------------------------------------------------- generation


@dataclass
class Generation:
    """Free-running trajectories at the bins of one split, beside the data.

    Attributes
    ----------
    generated_latents, encoded_latents : (n, K) arrays
        Generated states and the posterior means of the data at the same bins.
    generated_x, true_x : (n, N) arrays
        Decoded generated states and the observed data.
    segments : list of (m,) int arrays
        Row indices of each trial's bins, in time order (equally spaced within a trial).
    """

    generated_latents: np.ndarray
    encoded_latents: np.ndarray
    generated_x: np.ndarray
    true_x: np.ndarray
    segments: list[np.ndarray]


def free_generation(
    model: torch.nn.Module,
    x: torch.Tensor,
    encoder_inputs: torch.Tensor,
    bins: torch.Tensor,
    n_lags: int = 1,
    missing_past: str = "zero",
    external_input: torch.Tensor | None = None,
) -> Generation:
    """Run the model freely in every trial from the encoded state of the trial's first given bin.

    For each trial that holds some of ``bins``, the latent map is iterated from the first of
    them to the last (through every bin in between); the generated states are kept at the
    given bins. With the even/odd split of one long recording this generates the whole
    test length from one encoded state.

    Parameters
    ----------
    model : LowRankRNN
    x, encoder_inputs : (trials, T, N) tensors
    bins : (n, 2) long tensor
        ``(trial, time)`` of the bins to compare at (e.g. the held-out bins).
    n_lags : int
    missing_past : {"first", "zero"}
    external_input : (trials, T, N) tensor, optional

    Returns
    -------
    Generation
    """
    trials, times = bins[:, 0].long(), bins[:, 1].long()
    order = np.lexsort((times.numpy(), trials.numpy()))
    trials, times = trials[order], times[order]
    past_all = past_buffer(x, n_lags, missing_past) if n_lags > 1 else None
    generated, segments = [], []
    row = 0
    with torch.no_grad():
        for trial in torch.unique(trials):
            in_trial = trials == trial
            trial_times = times[in_trial]
            start, stop = int(trial_times[0]), int(trial_times[-1])
            n_steps = stop - start
            initial = model.encode(encoder_inputs[trial, start][None])
            past = None if past_all is None else past_all[trial, start][None]
            inputs = None if external_input is None else external_input[trial, start:stop][None]
            latents = rollout(model, initial, n_steps, past, inputs)[0]  # (n_steps + 1, K)
            generated.append(latents[trial_times - start])
            segments.append(np.arange(row, row + len(trial_times)))
            row += len(trial_times)
        generated_latents = torch.cat(generated)
        bin_inputs = None if external_input is None else external_input[trials, times]
        generated_x = model.decode(generated_latents, bin_inputs)
        encoded = model.encode(encoder_inputs[trials, times])
    return Generation(
        generated_latents=generated_latents.double().numpy(),
        encoded_latents=encoded.double().numpy(),
        generated_x=generated_x.double().numpy(),
        true_x=x[trials, times].double().numpy(),
        segments=segments,
    )


def gaussian_mixture_kl(
    reference: np.ndarray,
    candidate: np.ndarray,
    width: float | None = None,
    n_mc: int = 4,
    seed: int = 0,
    chunk: int = 2048,
    budget: EstimatorBudget | None = None,
) -> float:
    """State-space divergence ``KL(p_ref || p_cand)`` of two point clouds (trajectories).

    Each cloud is turned into a Gaussian mixture with one isotropic component of variance
    ``width²`` per point (Brenner et al. 2022's ``D_stsp`` for high-dimensional states);
    the KL divergence is estimated by Monte Carlo with ``n_mc`` samples per reference
    component. Both clouds are first standardised with the reference's mean and standard
    deviation per dimension, so the measure is scale-free. Above
    ``budget.exact_max_points`` points, a subsampled estimate linear in the number of points
    (:func:`gaussian_mixture_kl_estimate`, which also gives the standard error).

    Parameters
    ----------
    reference : (n, d) array
        E.g. the true states.
    candidate : (m, d) array
        E.g. the generated states.
    width : float, optional
        Component standard deviation in standardised units; default Scott's rule
        ``n^(-1/(d+4))``.
    n_mc : int
    seed : int
    chunk : int
        Samples per chunk of the exact estimate.
    budget : EstimatorBudget, optional
        When and how to subsample (default :class:`~facrnn.core.partial_correlation.EstimatorBudget()`).

    Returns
    -------
    float
        In nats; 0 for identical clouds (up to Monte Carlo error), large when the
        candidate misses regions the reference visits.
    """
    return gaussian_mixture_kl_estimate(reference, candidate, width, n_mc, seed, chunk, budget).value


def gaussian_mixture_kl_estimate(
    reference: np.ndarray,
    candidate: np.ndarray,
    width: float | None = None,
    n_mc: int = 4,
    seed: int = 0,
    chunk: int = 2048,
    budget: EstimatorBudget | None = None,
) -> KDEEstimate:
    """:func:`gaussian_mixture_kl` with its Monte Carlo standard error.

    Exact (``n_mc`` samples of every reference component scored against every component of
    both mixtures, O(n_mc n (n + m)) time) when both clouds have at most
    ``budget.exact_max_points`` points; otherwise ``budget.query_samples`` seeded draws
    ``s = r_i + width eps`` (``i`` uniform) scored against every component of both mixtures
    (or seeded subsets of ``budget.max_centres``: the reference's own component kept and the
    others importance weighted, the candidate's mixture estimated by the subset's mean),
    O(query_samples (n + m)) time. The standard error is that of the mean over samples (over
    query blocks with their own subsets when subsampling components).

    Returns
    -------
    KDEEstimate
        ``value`` in nats; ``inf`` (with NaN standard error) when the candidate is not finite.
    """
    budget = EstimatorBudget() if budget is None else budget
    reference = np.asarray(reference, dtype=np.float64)
    candidate = np.asarray(candidate, dtype=np.float64)
    if reference.ndim != 2 or candidate.ndim != 2 or reference.shape[1] != candidate.shape[1]:
        raise ValueError(f"reference {reference.shape} and candidate {candidate.shape}: expected (n, d) and (m, d) arrays")
    centre, scale = reference.mean(0), reference.std(0)
    scale = np.where(scale > 0, scale, 1.0)
    reference = (reference - centre) / scale
    candidate = (candidate - centre) / scale
    if not np.all(np.isfinite(candidate)):
        return KDEEstimate(float("inf"), float("nan"), 0, 0)
    dim = reference.shape[1]
    width = float(reference.shape[0] ** (-1.0 / (dim + 4))) if width is None else float(width)
    if budget.exact(max(reference.shape[0], candidate.shape[0])):
        return _exact_mixture_kl(reference, candidate, width, n_mc, seed, chunk)
    ref_t, cand_t = torch.from_numpy(reference), torch.from_numpy(candidate)
    n_ref, n_cand = ref_t.shape[0], cand_t.shape[0]
    generator = torch.Generator().manual_seed(int(seed))
    queries, own = posterior_queries(ref_t, width, budget.query_samples, generator)
    own_log_kernel = -0.5 * ((queries - ref_t[own]) / width).pow(2).sum(-1)  # log N(s; r_i) up to constants
    ref_subset, cand_subset = budget.centre_subset(n_ref), budget.centre_subset(n_cand)

    def block_terms(block: slice) -> torch.Tensor:
        centres = None if ref_subset is None else centre_subset(n_ref, ref_subset, generator)
        sums = own_kernel_sums(
            queries[block], own[block], ref_t, width, [dim], centres, budget.tile_bytes, squares=centres is not None
        )
        log_ref_mass, _ = weighted_log_mass(sums, own[block], n_ref, centres)
        log_ref = own_log_kernel[block] + log_ref_mass - math.log(n_ref)
        cand = cand_t if cand_subset is None else cand_t[centre_subset(n_cand, cand_subset, generator)]
        log_cand = kernel_log_sums(queries[block], cand, width, budget.tile_bytes, population=n_cand)
        log_cand = log_cand - math.log(cand.shape[0])
        return log_ref - log_cand

    subsets = ref_subset is not None or cand_subset is not None
    return blockwise_estimate(block_terms, budget.query_samples, subsets, ref_subset or n_ref)


def _exact_mixture_kl(
    reference: np.ndarray, candidate: np.ndarray, width: float, n_mc: int, seed: int, chunk: int
) -> KDEEstimate:
    """The exact estimate of :func:`gaussian_mixture_kl_estimate` on standardised clouds."""
    dim = reference.shape[1]
    rng = np.random.default_rng(seed)
    samples = np.repeat(reference, n_mc, axis=0) + width * rng.standard_normal((reference.shape[0] * n_mc, dim))
    ref_t, cand_t = torch.from_numpy(reference), torch.from_numpy(candidate)
    total = 0.0
    terms = torch.empty(samples.shape[0], dtype=torch.float64)  # once: see _partial_correlation_exact
    for start, block in zip(range(0, samples.shape[0], chunk), torch.from_numpy(samples).split(chunk)):
        log_ref = _mixture_log_density(block, ref_t, width)
        log_cand = _mixture_log_density(block, cand_t, width)
        difference = log_ref - log_cand
        total += float(difference.sum())
        terms[start : start + block.shape[0]] = difference
    return KDEEstimate(total / samples.shape[0], standard_error(terms), samples.shape[0], reference.shape[0])


def _mixture_log_density(points: torch.Tensor, centres: torch.Tensor, width: float) -> torch.Tensor:
    """``log (1/m) sum_j N(p; c_j, width² I)`` for ``(n, d)`` points and ``(m, d)`` centres: ``(n,)``."""
    dim = points.shape[1]
    squared = torch.cdist(points, centres).pow(2)
    log_kernel = -0.5 * squared / width**2 - dim * np.log(width) - 0.5 * dim * np.log(2 * np.pi)
    return torch.logsumexp(log_kernel, dim=1) - np.log(centres.shape[0])


def power_spectra(series: np.ndarray, segments: Sequence[np.ndarray], nperseg: int = 256) -> np.ndarray:
    """Welch power spectra per channel, averaged over segments.

    Parameters
    ----------
    series : (n, C) array
    segments : list of index arrays
        Rows of each equally sampled segment (e.g. one trial).
    nperseg : int
        Welch segment length (shortened to the shortest segment).

    Returns
    -------
    (F, C) array
        Without the zero frequency.
    """
    length = min(nperseg, min(len(rows) for rows in segments))
    spectra = []
    for rows in segments:
        _, power = signal.welch(series[rows], nperseg=length, axis=0, detrend="constant")
        spectra.append(power)
    return np.mean(spectra, axis=0)[1:]


def power_spectrum_correlation(
    true_series: np.ndarray, generated_series: np.ndarray, segments: Sequence[np.ndarray], nperseg: int = 256
) -> np.ndarray:
    """Pearson correlation of the true and generated power spectra, per channel.

    Parameters
    ----------
    true_series, generated_series : (n, C) arrays
    segments : list of index arrays
    nperseg : int

    Returns
    -------
    (C,) array
        NaN for a channel whose spectrum is flat or too short (fewer than 3 frequencies).
    """
    true_power = power_spectra(true_series, segments, nperseg)
    generated_power = power_spectra(generated_series, segments, nperseg)
    result = np.full(true_power.shape[1], np.nan)
    if true_power.shape[0] < 3:
        return result
    for channel in range(true_power.shape[1]):
        a, b = true_power[:, channel], generated_power[:, channel]
        if np.std(a) > 0 and np.std(b) > 0 and np.all(np.isfinite(b)):
            result[channel] = float(np.corrcoef(a, b)[0, 1])
    return result


# ----------------------------------------------------------------------------- coupling


def jacobians(model: torch.nn.Module, latents: torch.Tensor) -> torch.Tensor:
    """Jacobians of the one-lag latent map ``F(z) = encode(tanh(decode(z)))`` at given states.

    Parameters
    ----------
    model : LowRankRNN
    latents : (n, K) tensor

    Returns
    -------
    (n, K, K) tensor
        ``J[i, k, l] = dF_k / dz_l`` at ``latents[i]``.
    """

    def latent_map(state: torch.Tensor) -> torch.Tensor:
        return model.encode(torch.tanh(model.decode(state[None])))[0]

    return torch.func.vmap(torch.func.jacrev(latent_map))(latents)


def group_coupling(jacobian_stack: np.ndarray, group_sizes: Sequence[int]) -> tuple[float, np.ndarray]:
    """How much latent groups drive each other, from Jacobians at visited states.

    Parameters
    ----------
    jacobian_stack : (n, K, K) array
    group_sizes : sequence of int
        ``[H_1..H_G]`` (consecutive latent dimensions).

    Returns
    -------
    coupling : float
        ``mean_i ||offdiag blocks of J_i||_F / ||diag blocks of J_i||_F``: 0 when the groups
        evolve independently.
    matrix : (G, G) array
        ``C[g, h] = mean_i ||J_i[g, h]||_F / sqrt(mean_i ||J_i[g, g]||_F mean_i ||J_i[h, h]||_F)``
        (the block driving group g from group h, relative to the groups' own dynamics;
        diagonal = 1).
    """
    jacobian_stack = np.asarray(jacobian_stack, dtype=np.float64)
    parts = group_slices(group_sizes)
    norms = np.stack(
        [np.stack([np.linalg.norm(jacobian_stack[:, g][:, :, h], axis=(1, 2)) for h in parts], axis=1) for g in parts],
        axis=1,
    )  # (n, G, G)
    diagonal = np.eye(len(parts), dtype=bool)
    own = np.sqrt((norms[:, diagonal] ** 2).sum(1))
    cross = np.sqrt((norms[:, ~diagonal] ** 2).sum(1))
    coupling = float(np.mean(cross / np.maximum(own, 1e-12)))
    mean_norms = norms.mean(0)
    scale = np.sqrt(np.outer(np.diag(mean_norms), np.diag(mean_norms)))
    matrix = mean_norms / np.maximum(scale, 1e-12)
    return coupling, matrix


# ------------------------------------------------------------------------- fixed points


@dataclass
class FixedPoint:
    """A fixed point ``z* = F(z*)`` of the one-lag latent map.

    Attributes
    ----------
    state : (K,) array
    residual : float
        ``||F(z*) - z*||``.
    eigenvalues : (K,) complex array
        Of the Jacobian at ``z*``; ``|lambda| < 1`` for all means stable.
    group_eigenvalues : list of (H_g,) complex arrays
        Of each diagonal block ``J[g, g]``.
    """

    state: np.ndarray
    residual: float
    eigenvalues: np.ndarray
    group_eigenvalues: list[np.ndarray] = field(default_factory=list)

    @property
    def stable(self) -> bool:
        return bool(np.max(np.abs(self.eigenvalues)) < 1.0)

    def to_dict(self) -> dict:
        """JSON-friendly: complex numbers as ``[real, imag]`` pairs."""

        def pairs(values: np.ndarray) -> list[list[float]]:
            return [[float(v.real), float(v.imag)] for v in values]

        return {
            "state": [float(v) for v in self.state],
            "residual": self.residual,
            "stable": self.stable,
            "eigenvalues": pairs(self.eigenvalues),
            "group_eigenvalues": [pairs(values) for values in self.group_eigenvalues],
        }


def find_fixed_points(
    model: torch.nn.Module,
    starts: np.ndarray,
    group_sizes: Sequence[int],
    tolerance: float = 1e-6,
    merge_distance: float = 1e-3,
) -> list[FixedPoint]:
    """Multi-start root finding of ``F(z) - z = 0`` (scipy's hybrid Powell with exact Jacobian).

    Parameters
    ----------
    model : LowRankRNN
    starts : (S, K) array
        Initial guesses (e.g. visited states and random points around them).
    group_sizes : sequence of int
    tolerance : float
        Largest ``||F(z) - z||`` accepted as a root.
    merge_distance : float
        Roots closer than this (relative to ``1 + ||z||``) count as one.

    Returns
    -------
    list of FixedPoint
        Distinct roots, sorted by their norm.
    """
    parts = group_slices(group_sizes)

    def map_np(state: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            tensor = torch.as_tensor(state, dtype=torch.float64)[None]
            return model.encode(torch.tanh(model.decode(tensor)))[0].numpy()

    def residual(state: np.ndarray) -> np.ndarray:
        return map_np(state) - state

    def residual_jacobian(state: np.ndarray) -> np.ndarray:
        tensor = torch.as_tensor(state, dtype=torch.float64)[None]
        return jacobians(model, tensor)[0].detach().numpy() - np.eye(len(state))

    found: list[np.ndarray] = []
    for start in np.asarray(starts, dtype=np.float64):
        solution = optimize.root(residual, start, jac=residual_jacobian, method="hybr")
        state = solution.x
        if not np.all(np.isfinite(state)) or np.linalg.norm(residual(state)) > tolerance:
            continue
        if any(np.linalg.norm(state - other) < merge_distance * (1 + np.linalg.norm(other)) for other in found):
            continue
        found.append(state)
    result = []
    for state in sorted(found, key=np.linalg.norm):
        jacobian = residual_jacobian(state) + np.eye(len(state))
        result.append(
            FixedPoint(
                state=state,
                residual=float(np.linalg.norm(residual(state))),
                eigenvalues=np.linalg.eigvals(jacobian),
                group_eigenvalues=[np.linalg.eigvals(jacobian[part, part]) for part in parts],
            )
        )
    return result


# ----------------------------------------------------------------------------- metrics


@dataclass
class DynamicsResult:
    """Rollout metrics and what the figures need.

    Attributes
    ----------
    metrics : dict
        ``rollout_r2_auc``, ``rollout_r2_k{k}``, ``generation_state_kl``,
        ``generation_latent_kl`` (each with its standard error ``..._se``), ``generation_psd_corr``, ``group_coupling``,
        ``n_fixed_points``, ``n_stable_fixed_points`` (those that apply).
    rollout_r2 : (K_max,) array
    generation : Generation or None
    coupling_matrix : (G, G) array or None
    fixed_points : list of FixedPoint
    """

    metrics: dict[str, float]
    rollout_r2: np.ndarray
    generation: Generation | None = None
    coupling_matrix: np.ndarray | None = None
    fixed_points: list[FixedPoint] = field(default_factory=list)


def dynamics_metrics(
    model: torch.nn.Module,
    x: torch.Tensor,
    bins: torch.Tensor,
    group_sizes: Sequence[int],
    n_lags: int | None = None,
    missing_past: str = "zero",
    external_input: torch.Tensor | None = None,
    max_steps: int = 20,
    n_pcs: int = 6,
    n_fixed_point_starts: int = 64,
    seed: int = 0,
    kl_n_mc: int = 4,
    budget: EstimatorBudget | None = None,
) -> DynamicsResult:
    """All rollout measures of a model on one split.

    Parameters
    ----------
    model : LowRankRNN
    x : (trials, T, N) tensor
        The whole recording.
    bins : (n, 2) long tensor
        ``(trial, time)`` of the split's bins: the start bins of the k-step predictions and
        the bins at which generated and true trajectories are compared.
    group_sizes : sequence of int
        Grouping of the latents used for the coupling and the per-group eigenvalues.
    n_lags : int, optional
        History ``L`` of the rollouts; default the model's (``model.history``).
    missing_past : {"first", "zero"}
    external_input : (trials, T, N) tensor, optional
    max_steps : int
        ``K_max`` of the k-step curve (0 skips the rollout metrics).
    n_pcs : int
        Principal components of the true data in which the observed-space state KL is taken.
    n_fixed_point_starts : int
        Starts of the fixed-point search (0 skips it).
    seed : int
    kl_n_mc : int
        Samples per reference point of the exact mixture KLs.
    budget : EstimatorBudget, optional
        When the mixture KLs subsample (:func:`gaussian_mixture_kl_estimate`; default
        :class:`~facrnn.core.partial_correlation.EstimatorBudget()`).

    Returns
    -------
    DynamicsResult
    """
    from facrnn.core.model import encoder_input

    n_lags = model.history if n_lags is None else n_lags
    dtype = next(model.parameters()).dtype
    x = x.to(dtype)
    inputs_full = None if external_input is None else external_input.to(dtype)
    encoder_inputs = encoder_input(x, n_lags, missing_past)
    bins = bins.long()
    metrics: dict[str, float] = {}
    model = model.eval()

    scores = np.full(0, np.nan)
    if max_steps > 0:
        scores = k_step_r2(model, x, encoder_inputs, bins, max_steps, n_lags, missing_past, inputs_full)
        metrics["rollout_r2_auc"] = rollout_auc(scores)
        for k, score in enumerate(scores, start=1):
            metrics[f"rollout_r2_k{k}"] = float(score)

    generation = free_generation(model, x, encoder_inputs, bins, n_lags, missing_past, inputs_full)
    true_x, generated_x = generation.true_x, generation.generated_x
    centred = true_x - true_x.mean(0)
    _, singular_values, right = np.linalg.svd(centred, full_matrices=False)
    # top principal components, without directions the data do not vary in (noise-free data)
    n_components = max(1, min(n_pcs, int(np.sum(singular_values > 1e-6 * singular_values[0]))))
    projection = right[:n_components].T
    clouds = {
        "generation_state_kl": (centred @ projection, (generated_x - true_x.mean(0)) @ projection),
        "generation_latent_kl": (generation.encoded_latents, generation.generated_latents),
    }
    for name, (reference, candidate) in clouds.items():
        estimate = gaussian_mixture_kl_estimate(reference, candidate, n_mc=kl_n_mc, seed=seed, budget=budget)
        metrics[name], metrics[f"{name}_se"] = estimate.value, estimate.se
    psd_corr = power_spectrum_correlation(true_x, generated_x, generation.segments)
    metrics["generation_psd_corr"] = float(np.nanmean(psd_corr)) if np.any(np.isfinite(psd_corr)) else float("nan")

    visited = torch.from_numpy(generation.encoded_latents).to(dtype)
    coupling, matrix = group_coupling(jacobians(model, visited).detach().numpy(), group_sizes)
    metrics["group_coupling"] = coupling

    fixed_points: list[FixedPoint] = []
    if n_fixed_point_starts > 0:
        rng = np.random.default_rng(seed)
        states = generation.encoded_latents
        picks = states[rng.integers(0, len(states), n_fixed_point_starts)]
        spread = states.std(0, keepdims=True)
        half = n_fixed_point_starts // 2  # half at visited states, half perturbed by their spread
        perturbed = picks[half:] + spread * rng.standard_normal(picks[half:].shape)
        starts = np.concatenate([states.mean(0, keepdims=True), picks[:half], perturbed])
        double_model = _double_copy(model)
        fixed_points = find_fixed_points(double_model, starts, group_sizes)
        metrics["n_fixed_points"] = float(len(fixed_points))
        metrics["n_stable_fixed_points"] = float(sum(point.stable for point in fixed_points))
    return DynamicsResult(
        metrics=metrics, rollout_r2=scores, generation=generation, coupling_matrix=matrix, fixed_points=fixed_points
    )


def _double_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A float64 copy of ``model`` (root finding to 1e-6 needs more than float32)."""
    return copy.deepcopy(model).double().eval()
