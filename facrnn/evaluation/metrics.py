"""Evaluation metrics of DESIGN §3: reconstruction, group-wise latent alignment, connectivity.

Pure functions on numpy arrays (torch tensors are accepted and converted). Everything is
computed in float64.

- :func:`r2_score`, :func:`recon_r2`, :func:`cond_loglik`: fit of the decoded mean.
- :func:`group_latent_r2`, :func:`component_latent_r2`: recovery of ground-truth latents up
  to an affine map within each group, with groups matched by the Hungarian algorithm.
- :func:`connectivity_metrics`, :func:`sub_connectivity_metrics`: ``W = A B`` against the
  truth, whole and per group (both invariant to ``A -> A Q``, ``B -> Q^-1 B`` within groups).
- :func:`evaluation_grouping`: which grouping of a model's latents to score it with.
- :func:`observation_scores`: the held-out fit of a model's observation model
  (:mod:`facrnn.core.observation`): ``cond_loglik`` and, for Poisson counts, ``bits_per_spike``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import sklearn.metrics
from scipy.optimize import linear_sum_assignment

from facrnn.core.grouping import group_slices
from facrnn.core.observation import GaussianObservation, Observation, PoissonObservation

__all__ = [
    "GroupMaps",
    "apply_group_maps",
    "fit_group_maps",
    "GroupAlignment",
    "component_latent_r2",
    "cond_loglik",
    "connectivity_metrics",
    "evaluation_grouping",
    "group_latent_r2",
    "r2_score",
    "recon_r2",
    "sub_connectivity_metrics",
    "poisson_loglik",
    "bits_per_spike",
    "OBSERVATION_SCORES",
    "observation_scores",
]

_LOG_2PI = float(np.log(2.0 * np.pi))


def _as_array(value: Any, name: str) -> np.ndarray:
    """Convert a numpy array, torch tensor or nested sequence to a float64 array."""
    if hasattr(value, "detach"):  # torch.Tensor without importing torch
        value = value.detach().cpu().numpy()
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name}: expected a numeric array, got {type(value).__name__}") from error


def _as_matrix(value: Any, name: str) -> np.ndarray:
    """Like :func:`_as_array` but 1-D inputs become one column and anything else must be 2-D."""
    array = _as_array(value, name)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2:
        raise ValueError(f"{name} has shape {array.shape}: expected a 2-D array (n_samples, n_features)")
    return array


def _check_sizes(sizes: Sequence[int], total: int, name: str, array_name: str, shape: tuple[int, ...]) -> list[int]:
    """Validate a list of group sizes against the number of columns it partitions."""
    result = [int(size) for size in sizes]
    if len(result) == 0 or any(size < 1 for size in result):
        raise ValueError(f"{name}={list(sizes)}: expected a non-empty list of positive integers")
    if sum(result) != total:
        raise ValueError(
            f"{name}={result} sums to {sum(result)} but {array_name} has shape {shape} "
            f"({total} columns): expected the group sizes to sum to the column count"
        )
    return result


# ----------------------------------------------------------------------------------------
# Reconstruction
# ----------------------------------------------------------------------------------------


def r2_score(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Coefficient of determination, uniform average over output columns.

    ``sklearn.metrics.r2_score(y_true, y_pred, multioutput="uniform_average")`` in float64,
    after checking the shapes: a column with ``SS_tot = 0`` scores 1 if it is predicted
    exactly and 0 otherwise (sklearn's ``force_finite=True``).

    Parameters
    ----------
    y_true, y_pred : (n, d) array
        Targets and predictions (a 1-D array is one column).

    Returns
    -------
    float
        ``mean_j (1 - SS_res_j / SS_tot_j)``.
    """
    y_true = _as_matrix(y_true, "y_true")
    y_pred = _as_matrix(y_pred, "y_pred")
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has shape {y_true.shape} but y_pred has shape {y_pred.shape}: expected equal shapes")
    if y_true.shape[0] < 2:
        raise ValueError(f"y_true has shape {y_true.shape}: R² needs at least 2 samples")
    return float(sklearn.metrics.r2_score(y_true, y_pred, multioutput="uniform_average"))


def recon_r2(x: np.ndarray, mean: np.ndarray) -> float:
    """R² of the decoded mean against the data, uniform average over neurons.

    Parameters
    ----------
    x, mean : (n, N) array
        Observations and decoded means.
    """
    return r2_score(x, mean)


def cond_loglik(x: np.ndarray, mean: np.ndarray, log_std: np.ndarray) -> float:
    """Gaussian conditional log-likelihood ``log N(x; mean, diag(exp(log_std)^2))``.

    Summed over neurons (with the full ``-log(2 pi) / 2`` constant), averaged over bins.

    Parameters
    ----------
    x, mean : (n, N) array
        Observations and decoded means (extra leading axes are averaged over too).
    log_std : (N,) array
        Per-neuron log standard deviation of the observation noise (broadcast against ``x``).

    Returns
    -------
    float
        Mean over bins of the summed per-neuron log density, in nats.
    """
    x = _as_array(x, "x")
    mean = _as_array(mean, "mean")
    log_std = _as_array(log_std, "log_std")
    if x.shape != mean.shape:
        raise ValueError(f"x has shape {x.shape} but mean has shape {mean.shape}: expected equal shapes")
    if x.ndim < 1:
        raise ValueError(f"x has shape {x.shape}: expected (n_bins, n_neurons)")
    try:
        log_std = np.broadcast_to(log_std, x.shape)
    except ValueError as error:
        raise ValueError(
            f"log_std has shape {log_std.shape}, not broadcastable to x's shape {x.shape}: expected (N,)"
        ) from error
    z = (x - mean) * np.exp(-log_std)
    log_density = -0.5 * _LOG_2PI - log_std - 0.5 * z**2
    return float(np.mean(np.sum(log_density, axis=-1)))


# ----------------------------------------------------------------------------------------
# Latent alignment
# ----------------------------------------------------------------------------------------


@dataclass
class GroupAlignment:
    """Result of matching learned latent groups to true latent groups.

    Attributes
    ----------
    score : float
        Mean R² over the matched (true group, learned group) pairs.
    r2_matrix : (G_true, G_est) array
        ``r2_matrix[i, j]``: R² (uniform over true group i's dimensions) of the affine
        least-squares map from learned group j's latents to true group i's latents.
    matching : list of (int, int)
        ``(true group, learned group)`` pairs chosen by the Hungarian algorithm
        (maximising the summed R²), sorted by true group; ``min(G_true, G_est)`` pairs.
    aligned : (n, K_true) array
        For every matched true group, the affine prediction of its latents from its
        matched learned group; NaN columns for unmatched true groups.
    """

    score: float
    r2_matrix: np.ndarray
    matching: list[tuple[int, int]]
    aligned: np.ndarray


@dataclass(frozen=True)
class GroupMaps:
    """Affine maps from groups of source columns to groups of target columns, fitted on one set.

    Attributes
    ----------
    target_sizes, source_sizes : list of int
        The groupings (consecutive blocks of columns).
    coefficients : dict
        ``(i, j) -> (k_j + 1, d_i)`` least-squares map from source group ``j`` (plus an
        intercept column) to target group ``i``.
    fitted : GroupAlignment
        The maps on the bins they were fitted on: ``r2_matrix`` the in-sample R² of every
        pair, ``matching`` the Hungarian matching on it (:func:`group_latent_r2`'s result).
    """

    target_sizes: list[int]
    source_sizes: list[int]
    coefficients: dict[tuple[int, int], np.ndarray]
    fitted: GroupAlignment

    @property
    def fit_r2(self) -> np.ndarray:
        """``(G_target, G_source)`` R² of every map on its fitting bins."""
        return self.fitted.r2_matrix

    @property
    def matching(self) -> list[tuple[int, int]]:
        """``(target group, source group)`` pairs matched on the fitting bins."""
        return self.fitted.matching


def _with_intercept(source: np.ndarray) -> np.ndarray:
    return np.concatenate([source, np.ones((source.shape[0], 1))], axis=1)


def _matched(
    r2_matrix: np.ndarray, matching: list[tuple[int, int]], predictions: dict, shape: tuple[int, ...], target_sizes: list[int]
) -> GroupAlignment:
    """The alignment of ``matching``: mean R² of its pairs and their predictions (NaN for unmatched targets)."""
    target_parts = group_slices(target_sizes)
    aligned = np.full(shape, np.nan)
    for i, j in matching:
        aligned[:, target_parts[i]] = predictions[i, j]
    score = float(np.mean([r2_matrix[i, j] for i, j in matching]))
    return GroupAlignment(score=score, r2_matrix=r2_matrix, matching=list(matching), aligned=aligned)


def _pair_r2(target: np.ndarray, predictions: dict, target_sizes: list[int], n_source_groups: int) -> np.ndarray:
    """``(G_target, G_source)`` R² (uniform over a target group's columns) of every pair's prediction."""
    target_parts = group_slices(target_sizes)
    r2_matrix = np.empty((len(target_parts), n_source_groups))
    for (i, j), prediction in predictions.items():
        r2_matrix[i, j] = sklearn.metrics.r2_score(target[:, target_parts[i]], prediction, multioutput="uniform_average")
    return r2_matrix


def fit_group_maps(
    target: np.ndarray, source: np.ndarray, target_sizes: Sequence[int], source_sizes: Sequence[int]
) -> GroupMaps:
    """Fit an affine map per (target group, source group) pair on these bins and match groups.

    Parameters
    ----------
    target : (n, D) array
        E.g. true latents, or hand position.
    source : (n, K) array
        E.g. posterior means, or integrated latents.
    target_sizes, source_sizes : sequence of int
        Groupings summing to ``D`` and ``K``.
    """
    target, source = _as_matrix(target, "target"), _as_matrix(source, "source")
    if len(target) != len(source) or len(target) < 2:
        raise ValueError(f"target has shape {target.shape}, source {source.shape}: expected the same n >= 2 rows")
    target_sizes = _check_sizes(target_sizes, target.shape[1], "target_sizes", "target", target.shape)
    source_sizes = _check_sizes(source_sizes, source.shape[1], "source_sizes", "source", source.shape)
    coefficients, predictions = {}, {}
    for j, source_part in enumerate(group_slices(source_sizes)):
        design = _with_intercept(source[:, source_part])
        solution = np.linalg.lstsq(design, target, rcond=None)[0]  # every target column at once
        prediction = design @ solution
        for i, target_part in enumerate(group_slices(target_sizes)):
            coefficients[i, j], predictions[i, j] = solution[:, target_part], prediction[:, target_part]
    r2_matrix = _pair_r2(target, predictions, target_sizes, len(source_sizes))
    rows, cols = linear_sum_assignment(r2_matrix, maximize=True)
    matching = [(int(i), int(j)) for i, j in sorted(zip(rows, cols))]
    fitted = _matched(r2_matrix, matching, predictions, target.shape, target_sizes)
    return GroupMaps(target_sizes, source_sizes, coefficients, fitted)


def apply_group_maps(maps: GroupMaps, target: np.ndarray, source: np.ndarray) -> GroupAlignment:
    """Score fitted ``maps`` on other bins: R² of every pair there, the score of the fitted matching.

    Returns
    -------
    GroupAlignment
        ``score``: mean R² (on these bins) of the pairs matched on the fitting bins;
        ``r2_matrix``: R² of every pair's fitted map on these bins; ``matching``: the
        fitting bins' matching; ``aligned``: the matched predictions (NaN for unmatched targets).
    """
    target, source = _as_matrix(target, "target"), _as_matrix(source, "source")
    if len(target) != len(source) or len(target) < 2:
        raise ValueError(f"target has shape {target.shape}, source {source.shape}: expected the same n >= 2 rows")
    if target.shape[1] != sum(maps.target_sizes) or source.shape[1] != sum(maps.source_sizes):
        raise ValueError(
            f"target has shape {target.shape}, source {source.shape}: expected {sum(maps.target_sizes)} and "
            f"{sum(maps.source_sizes)} columns, as the maps were fitted"
        )
    source_parts = group_slices(maps.source_sizes)
    predictions = {
        (i, j): _with_intercept(source[:, source_parts[j]]) @ coefficient for (i, j), coefficient in maps.coefficients.items()
    }
    r2_matrix = _pair_r2(target, predictions, maps.target_sizes, len(maps.source_sizes))
    return _matched(r2_matrix, maps.matching, predictions, target.shape, maps.target_sizes)


def group_latent_r2(
    true_latents: np.ndarray,
    est_latents: np.ndarray,
    true_group_sizes: Sequence[int],
    est_group_sizes: Sequence[int],
) -> GroupAlignment:
    """Group latent R²: recovery of each true group by one learned group, up to an affine map.

    For every pair (true group i, learned group j) an affine least-squares map (with
    intercept) from learned group j's latents to true group i's latents is fitted and
    scored by R²; groups are matched one-to-one by the Hungarian algorithm maximising the
    summed R² (rectangular when the group counts differ), and the score is the mean R²
    of the matched pairs. Groups are consecutive blocks of columns of the given sizes.

    Parameters
    ----------
    true_latents : (n, K_true) array
        Ground-truth latents.
    est_latents : (n, K_est) array
        Learned latents (e.g. posterior means) of the same n samples.
    true_group_sizes : sequence of int
        Sizes of the true groups, summing to ``K_true``.
    est_group_sizes : sequence of int
        Sizes of the learned groups, summing to ``K_est``.

    Returns
    -------
    GroupAlignment

    Raises
    ------
    ValueError
        If the sample counts disagree or a list of group sizes does not sum to the
        corresponding column count.

    Notes
    -----
    When there are fewer learned groups than true groups, the unmatched true groups do
    not enter ``score`` (their ``aligned`` columns are NaN); inspect ``r2_matrix`` or
    ``matching`` to see that.
    """
    true_latents = _as_matrix(true_latents, "true_latents")
    est_latents = _as_matrix(est_latents, "est_latents")
    if true_latents.shape[0] != est_latents.shape[0]:
        raise ValueError(
            f"true_latents has shape {true_latents.shape} but est_latents has shape {est_latents.shape}: "
            "expected the same number of samples (rows)"
        )
    if true_latents.shape[0] < 2:
        raise ValueError(f"true_latents has shape {true_latents.shape}: R² needs at least 2 samples")
    true_sizes = _check_sizes(true_group_sizes, true_latents.shape[1], "true_group_sizes", "true_latents", true_latents.shape)
    est_sizes = _check_sizes(est_group_sizes, est_latents.shape[1], "est_group_sizes", "est_latents", est_latents.shape)
    return fit_group_maps(true_latents, est_latents, true_sizes, est_sizes).fitted


def component_latent_r2(true_latents: np.ndarray, est_latents: np.ndarray) -> GroupAlignment:
    """Component latent R²: :func:`group_latent_r2` with every dimension its own group.

    Parameters
    ----------
    true_latents : (n, K_true) array
    est_latents : (n, K_est) array

    Returns
    -------
    GroupAlignment
        With ``r2_matrix`` of shape ``(K_true, K_est)``.
    """
    true_latents = _as_matrix(true_latents, "true_latents")
    est_latents = _as_matrix(est_latents, "est_latents")
    return group_latent_r2(true_latents, est_latents, [1] * true_latents.shape[1], [1] * est_latents.shape[1])


# ----------------------------------------------------------------------------------------
# Connectivity
# ----------------------------------------------------------------------------------------


def _flat_metrics(true: np.ndarray, est: np.ndarray) -> dict[str, float]:
    """MAE, RMSE, R² (est against true) and Pearson r of two flat vectors."""
    error = est - true
    ss_res = float(np.sum(error**2))
    ss_tot = float(np.sum((true - true.mean()) ** 2))
    if ss_tot > 0:
        r2 = 1.0 - ss_res / ss_tot
    else:
        r2 = 1.0 if ss_res == 0 else 0.0
    true_centred, est_centred = true - true.mean(), est - est.mean()
    denominator = float(np.sqrt(np.sum(true_centred**2) * np.sum(est_centred**2)))
    pearson = float(np.sum(true_centred * est_centred) / denominator) if denominator > 0 else float("nan")
    return {
        "mae": float(np.mean(np.abs(error))),
        "rmse": float(np.sqrt(np.mean(error**2))),
        "r2": float(r2),
        "pearson": pearson,
    }


def connectivity_metrics(true_w: np.ndarray, est_w: np.ndarray) -> dict[str, float]:
    """Compare a learned connectivity matrix with the truth, entry by entry.

    Parameters
    ----------
    true_w, est_w : (N, N) array
        True ``W* = A* B*`` and learned ``W = A B`` (any equal shapes; both are flattened).

    Returns
    -------
    dict
        ``mae``, ``rmse``, ``r2`` (``1 - SS_res / SS_tot`` of ``est_w`` against ``true_w``)
        and ``pearson`` (NaN if either matrix is constant).
    """
    true_w = _as_array(true_w, "true_w")
    est_w = _as_array(est_w, "est_w")
    if true_w.shape != est_w.shape:
        raise ValueError(f"true_w has shape {true_w.shape} but est_w has shape {est_w.shape}: expected equal shapes")
    if true_w.size == 0:
        raise ValueError(f"true_w has shape {true_w.shape}: expected a non-empty matrix")
    return _flat_metrics(true_w.ravel(), est_w.ravel())


def sub_connectivity_metrics(
    true_group_w: np.ndarray, est_group_w: np.ndarray
) -> tuple[dict[str, float], list[tuple[int, int]]]:
    """Compare per-group connectivities ``W_g = A_g B_g`` with the truth.

    Groups are matched one-to-one by the Hungarian algorithm minimising the RMSE between
    ``W*_i`` and ``W_j`` (rectangular when the group counts differ; unmatched groups are
    left out), then the metrics of :func:`connectivity_metrics` are computed on the
    concatenation of the matched pairs, flattened.

    Parameters
    ----------
    true_group_w : (G_true, N, N) array
        True per-group connectivities (an ``(N, N)`` array is one group).
    est_group_w : (G_est, N, N) array
        Learned per-group connectivities.

    Returns
    -------
    metrics : dict
        ``mae``, ``rmse``, ``r2``, ``pearson`` over the matched pairs.
    matching : list of (int, int)
        ``(true group, learned group)`` pairs, sorted by true group.
    """
    true_group_w = _as_array(true_group_w, "true_group_w")
    est_group_w = _as_array(est_group_w, "est_group_w")
    if true_group_w.ndim == 2:
        true_group_w = true_group_w[None]
    if est_group_w.ndim == 2:
        est_group_w = est_group_w[None]
    if true_group_w.ndim != 3 or est_group_w.ndim != 3 or true_group_w.shape[1:] != est_group_w.shape[1:]:
        raise ValueError(
            f"true_group_w has shape {true_group_w.shape} and est_group_w has shape {est_group_w.shape}: "
            "expected (G_true, N, N) and (G_est, N, N) with the same N"
        )
    if true_group_w.shape[0] == 0 or est_group_w.shape[0] == 0:
        raise ValueError(
            f"true_group_w has shape {true_group_w.shape} and est_group_w has shape {est_group_w.shape}: "
            "expected at least one group each"
        )
    true_flat = true_group_w.reshape(true_group_w.shape[0], -1)
    est_flat = est_group_w.reshape(est_group_w.shape[0], -1)
    rmse = np.sqrt(np.mean((true_flat[:, None, :] - est_flat[None, :, :]) ** 2, axis=-1))
    rows, cols = linear_sum_assignment(rmse)
    matching = [(int(i), int(j)) for i, j in sorted(zip(rows, cols))]
    true_cat = np.concatenate([true_flat[i] for i, _ in matching])
    est_cat = np.concatenate([est_flat[j] for _, j in matching])
    return _flat_metrics(true_cat, est_cat), matching


# ----------------------------------------------------------------------------------------
# Grouping used for scoring
# ----------------------------------------------------------------------------------------


def evaluation_grouping(model_group_sizes: Sequence[int], true_group_sizes: Sequence[int]) -> list[int]:
    """Grouping of a model's latents used to score it against the ground truth.

    The model's own grouping when it has as many groups as the truth; otherwise (e.g. an
    lrRNN with one group of 6 against a truth of ``[3, 3]``) the true group sizes applied
    to consecutive model dimensions, provided the totals agree.

    Parameters
    ----------
    model_group_sizes : sequence of int
        The model's group sizes (sum ``K``).
    true_group_sizes : sequence of int
        The ground truth's group sizes (sum ``K*``).

    Returns
    -------
    list of int

    Raises
    ------
    ValueError
        If the group counts differ and so do the total latent dimensions.
    """
    model_sizes = [int(size) for size in model_group_sizes]
    true_sizes = [int(size) for size in true_group_sizes]
    for name, sizes, given in (
        ("model_group_sizes", model_sizes, model_group_sizes),
        ("true_group_sizes", true_sizes, true_group_sizes),
    ):
        if len(sizes) == 0 or any(size < 1 for size in sizes):
            raise ValueError(f"{name}={list(given)}: expected a non-empty list of positive integers")
    if len(model_sizes) == len(true_sizes):
        return model_sizes
    if sum(model_sizes) == sum(true_sizes):
        return true_sizes
    raise ValueError(
        f"model_group_sizes={model_sizes} ({len(model_sizes)} groups, K={sum(model_sizes)}) and "
        f"true_group_sizes={true_sizes} ({len(true_sizes)} groups, K*={sum(true_sizes)}): "
        "the group counts differ, so the true grouping would be applied to the model's latents, "
        "but that needs equal latent dimensions K == K*"
    )


# ----------------------------------------------------------------------------------------
# Spike counts (model.likelihood=poisson)
# ----------------------------------------------------------------------------------------


def _poisson_log_pmf(counts: np.ndarray, rates: np.ndarray) -> np.ndarray:
    """Elementwise ``x log r - r - log x!`` (``0 log 0 = 0``)."""
    from scipy.special import gammaln, xlogy

    return xlogy(counts, rates) - rates - gammaln(counts + 1.0)


def poisson_loglik(counts: np.ndarray, rates: np.ndarray) -> float:
    """Poisson log-likelihood of counts, summed over neurons, mean over bins (nats).

    Parameters
    ----------
    counts, rates : (n, N) array
    """
    counts, rates = _as_array(counts, "counts"), _as_array(rates, "rates")
    if counts.shape != rates.shape:
        raise ValueError(f"counts have shape {counts.shape} but rates {rates.shape}: expected equal shapes")
    return float(np.mean(np.sum(_poisson_log_pmf(counts, rates), axis=-1)))


def bits_per_spike(counts: np.ndarray, rates: np.ndarray) -> float:
    """Bits per spike of predicted rates (Neural Latents Benchmark co-smoothing definition).

    ``(log L(rates) - log L(mean rate per neuron)) / (total spikes x ln 2)``, the null model
    predicting each neuron's mean count over the scored bins; ``log x!`` cancels.

    Parameters
    ----------
    counts : (n, N) array
        Observed (held-out) counts.
    rates : (n, N) array
        Predicted rates (expected counts per bin), positive.

    Returns
    -------
    float
        > 0 when the rates beat the per-neuron mean rate.
    """
    counts, rates = _as_array(counts, "counts"), _as_array(rates, "rates")
    if counts.shape != rates.shape or counts.ndim != 2:
        raise ValueError(f"counts {counts.shape} and rates {rates.shape}: expected equal (n_bins, n_neurons) shapes")
    if np.any(rates < 0):
        raise ValueError("rates: expected non-negative predicted rates")
    total_spikes = float(counts.sum())
    if total_spikes <= 0:
        raise ValueError("counts: no spikes in the scored bins; bits per spike are undefined")
    null_rates = np.broadcast_to(counts.mean(axis=0, keepdims=True), counts.shape)
    model_ll = np.sum(_poisson_log_pmf(counts, rates))
    null_ll = np.sum(_poisson_log_pmf(counts, null_rates))
    return float((model_ll - null_ll) / (total_spikes * np.log(2.0)))


# ----------------------------------------------------------------------------------------
# Scores of each observation model
# ----------------------------------------------------------------------------------------


def gaussian_scores(x: np.ndarray, mean: np.ndarray, log_std: np.ndarray) -> dict[str, float]:
    """``cond_loglik``: Gaussian log-likelihood of ``x`` ``(n, N)`` with per-neuron ``log_std`` ``(N,)``."""
    return {"cond_loglik": cond_loglik(x, mean, log_std)}


def poisson_scores(x: np.ndarray, mean: np.ndarray, log_std: np.ndarray) -> dict[str, float]:
    """``cond_loglik``: Poisson log-likelihood of counts ``x`` ``(n, N)`` at rates ``mean``; plus
    ``bits_per_spike`` when the bins hold any spike (``log_std`` is unused)."""
    scores = {"cond_loglik": poisson_loglik(x, mean)}
    if x.sum() > 0:
        scores["bits_per_spike"] = bits_per_spike(x, mean)
    return scores


#: held-out scores by observation model name (:attr:`facrnn.core.observation.Observation.name`)
OBSERVATION_SCORES = {
    GaussianObservation.name: gaussian_scores,
    PoissonObservation.name: poisson_scores,
}


def observation_scores(observation: Observation, x: np.ndarray, mean: np.ndarray, log_std: np.ndarray) -> dict[str, float]:
    """Held-out fit of the decoded ``mean`` ``(n, N)`` to ``x`` ``(n, N)`` under ``observation``.

    Parameters
    ----------
    observation : Observation
        The model's observation model (``model.observation``).
    x, mean : (n, N) array
        Observations and decoded means (rates for Poisson counts).
    log_std : (N,) array
        The model's per-neuron ``log_noise_std`` (Gaussian observations only).

    Returns
    -------
    dict
        ``cond_loglik`` first, then the observation model's own scores (``bits_per_spike``).
    """
    return OBSERVATION_SCORES[observation.name](x, mean, log_std)
