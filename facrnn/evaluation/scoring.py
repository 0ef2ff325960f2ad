"""Scoring a trained model on held-out data: every metric of DESIGN §3 the data allow."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from datamodules.recording import Recording
from facrnn.core.grouping import group_slices
from facrnn.core.model import LowRankRNN
from facrnn.core.partial_correlation import partial_correlation_estimate
from facrnn.evaluation.behaviour import BehaviourBins, BehaviourEvaluation, evaluate_behaviour
from facrnn.evaluation.metrics import (
    component_latent_r2,
    connectivity_metrics,
    evaluation_grouping,
    group_latent_r2,
    observation_scores,
    recon_r2,
    sub_connectivity_metrics,
)
from facrnn.evaluation.settings import EvalSettings


@dataclass
class Evaluation:
    """Metrics (flat, snake_case) and the arrays the figures need."""

    metrics: dict[str, float]
    true_group_sizes: list[int] | None = None
    eval_group_sizes: list[int] | None = None
    true_latents: np.ndarray | None = None
    aligned_latents: np.ndarray | None = None
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    group_matching: list[tuple[int, int]] | None = None
    dynamics: Any = None  # facrnn.evaluation.dynamics.DynamicsResult when the rollout measures ran
    behaviour: BehaviourEvaluation | None = None
    #: what was measured how, set when a run's evaluation is written (facrnn/runs/provenance.py)
    provenance: dict[str, Any] = field(default_factory=dict)


def split_connectivity(A: np.ndarray, B: np.ndarray, group_sizes: list[int]) -> np.ndarray:
    """Per-group ``W_g = A[:, g] B[g, :]`` for ``A`` (N, K), ``B`` (K, N): ``(G, N, N)``."""
    return np.stack([A[:, part] @ B[part, :] for part in group_slices(group_sizes)])


def evaluate_model(
    model: LowRankRNN,
    tensors: dict[str, torch.Tensor],
    recording: Recording,
    settings: EvalSettings | None = None,
    fit_tensors: dict[str, torch.Tensor] | None = None,
) -> Evaluation:
    """Score ``model`` on one split.

    Parameters
    ----------
    model : LowRankRNN
    tensors : dict
        The split's samples: ``x`` and ``encoder_input`` ``(n, N)``, optional
        ``external_input`` ``(n, N)``, ``latents`` ``(n, K*)`` and ``behaviour`` ``(n, D)``
        (hand velocity: scored by ``latent_r2`` and the rotation sweep, using ``trial`` and
        ``time`` ``(n,)``).
    recording : Recording
        Ground truth (``A``, ``B``, ``group_sizes``) when known.
    fit_tensors : dict, optional
        The training split's samples: the behavioural alignment maps are fitted on them and
        applied to ``tensors`` (``latent_r2`` held out; ``latent_r2_refit`` beside it refits
        on ``tensors``). Default: fitted on ``tensors`` themselves (in-sample).
    settings : EvalSettings, optional
        ``n_mc`` and ``seed`` of the partial-correlation estimate, ``dynamics`` (run the
        rollout measures; needs the split's ``trial`` and ``time`` per bin) and their
        ``rollout_steps`` (``K_max`` of the k-step-ahead R² curve,
        :mod:`facrnn.evaluation.dynamics`), ``kl_n_mc``, and the estimators' budget
        (``exact_max_points``, ``query_samples``, ``max_centres``, ``chunk_mb``: exact up to
        ``exact_max_points`` bins, linear in the number of bins above; docs/evaluation.md);
        default :class:`EvalSettings()`. ``split``, ``checkpoint`` and ``figures`` are the caller's.

    Every Monte Carlo estimate comes with its standard error: ``partial_corr_se``,
    ``total_corr_se`` (and ``generation_state_kl_se``, ``generation_latent_kl_se`` of the
    rollout measures).

    The history ``L`` of the rollouts and the observation model behind ``cond_loglik``
    (plus ``bits_per_spike`` for Poisson counts) are the model's own (``model.history``,
    ``model.observation``).
    """
    settings = EvalSettings() if settings is None else settings
    n_mc, seed = settings.n_mc, settings.seed
    model.eval()
    with torch.no_grad():
        means = model.encode(tensors["encoder_input"])
        reconstruction = model.decode(means, tensors.get("external_input"))
    x = tensors["x"].numpy()
    latent_dim = model.latent_dim
    fit = observation_scores(model.observation, x, reconstruction.numpy(), model.log_noise_std.detach().numpy())
    metrics = {"cond_loglik": fit.pop("cond_loglik"), "recon_r2": recon_r2(x, reconstruction.numpy()), **fit}
    true_sizes = recording.group_sizes
    if true_sizes is not None and sum(true_sizes) == latent_dim:
        eval_sizes = evaluation_grouping(model.group_sizes, true_sizes)
    else:
        eval_sizes = list(model.group_sizes)
    budget = settings.budget
    for name, sizes in (("partial_corr", eval_sizes), ("total_corr", [1] * latent_dim)):
        estimate = partial_correlation_estimate(means.double(), model.width, sizes, n_mc, seed, budget)
        metrics[name], metrics[f"{name}_se"] = estimate.value, estimate.se
    result = Evaluation(metrics=metrics, eval_group_sizes=eval_sizes)
    if settings.dynamics and "trial" in tensors and "time" in tensors:
        from facrnn.evaluation.dynamics import dynamics_metrics

        result.dynamics = dynamics_metrics(
            model,
            torch.from_numpy(recording.x),
            torch.stack([tensors["trial"], tensors["time"]], dim=1),
            eval_sizes,
            missing_past="zero" if recording.single_sequence else "first",
            external_input=None if recording.external_input is None else torch.from_numpy(recording.external_input),
            max_steps=settings.rollout_steps,
            seed=seed,
            kl_n_mc=settings.kl_n_mc,
            budget=budget,
        )
        metrics.update(result.dynamics.metrics)

    mean_latents = means.numpy().astype(np.float64)
    if "latents" in tensors:
        true_latents = tensors["latents"].numpy().astype(np.float64)
        true_dim = true_latents.shape[1]
        if true_sizes is None:
            true_sizes = list(model.group_sizes) if true_dim == latent_dim else [true_dim]
        score_sizes = eval_sizes if sum(true_sizes) == latent_dim else list(model.group_sizes)
        alignment = group_latent_r2(true_latents, mean_latents, true_sizes, score_sizes)
        metrics["group_latent_r2"] = alignment.score
        metrics["component_latent_r2"] = component_latent_r2(true_latents, mean_latents).score
        result.true_latents, result.aligned_latents = true_latents, alignment.aligned
        result.true_group_sizes = list(true_sizes)

    if "behaviour" in tensors:
        fit_on = None
        if fit_tensors is not None and fit_tensors is not tensors:
            with torch.no_grad():
                fit_latents = model.encode(fit_tensors["encoder_input"]).numpy().astype(np.float64)
            fit_on = BehaviourBins(
                fit_latents, fit_tensors["behaviour"].numpy(), fit_tensors["trial"].numpy(), fit_tensors["time"].numpy()
            )
        result.behaviour = evaluate_behaviour(
            mean_latents,
            tensors["behaviour"].numpy(),
            tensors["trial"].numpy(),
            tensors["time"].numpy(),
            model.group_sizes,
            recording.extras.get("direction"),
            fit_on=fit_on,
        )
        metrics.update(result.behaviour.metrics)

    if not model.is_linear:  # MLP encoder/decoder: W = A B is undefined, no connectivity metrics
        result.metrics = {key: float(value) for key, value in metrics.items()}
        return result
    A, B = model.A.detach().numpy().astype(np.float64), model.B.detach().numpy().astype(np.float64)
    result.arrays["W"] = A @ B
    result.arrays["W_groups"] = split_connectivity(A, B, eval_sizes)
    if recording.A is not None:
        true_sizes = true_sizes or recording.group_sizes or [recording.A.shape[1]]
        result.arrays["W_true"] = recording.connectivity
        result.arrays["W_groups_true"] = split_connectivity(recording.A, recording.B, list(true_sizes))
        for name, value in connectivity_metrics(result.arrays["W_true"], result.arrays["W"]).items():
            metrics[f"connectivity_{name}"] = value
        sub_metrics, matching = sub_connectivity_metrics(result.arrays["W_groups_true"], result.arrays["W_groups"])
        for name, value in sub_metrics.items():
            metrics[f"sub_connectivity_{name}"] = value
        result.group_matching = matching
        result.true_group_sizes = list(true_sizes)
    result.metrics = {key: float(value) for key, value in metrics.items()}
    return result
