"""Post-hoc baselines of DESIGN §2: re-express a trained lrRNN's latents, then group them.

- ``ica`` (method ``lrrnn_ica``): FastICA of the posterior means on the training split;
  the new latents are the independent components ``s = U (mu - m)``, so ``B <- U B``,
  ``A <- A U^-1`` (``U^-1`` = the ICA mixing matrix).
- ``svd`` (method ``lint``): SVD of the connectivity ``W = A B = U S V^T``;
  ``A <- U_K S_K``, ``B <- V_K^T``.

Both are invertible linear changes of latent coordinates ``z' = T z + c``, applied by
:func:`transform_latents` so that ``W = A B``, the decoded means and the implied dynamics
are unchanged. The transformed model gets the true group sizes applied to consecutive
components (their order is arbitrary, hence the permutation analysis,
:mod:`facrnn.evaluation.permutation`).

:func:`facrnn.runs.pipeline.evaluate_posthoc` runs a transform on a training run and writes
``RUN/posthoc_<kind>/metrics.json`` (and figures), which ``facrnn.cli.compare`` reads as the
methods of :data:`POSTHOC_METHODS`.
"""

from __future__ import annotations

import copy
import logging
from typing import TYPE_CHECKING

import numpy as np
import torch
from sklearn.decomposition import FastICA

from facrnn.core.grouping import padded_group_index
from facrnn.core.model import LowRankRNN

if TYPE_CHECKING:
    from datamodules.base import RecordingDataModule

log = logging.getLogger(__name__)

# kind -> method name in comparisons
POSTHOC_METHODS = {"ica": "lrrnn_ica", "svd": "lint"}

__all__ = [
    "POSTHOC_METHODS",
    "posthoc_group_sizes",
    "ica_transform",
    "posthoc_model",
    "svd_transform",
    "transform_latents",
    "with_grouping",
]


def transform_latents(model: LowRankRNN, transform: np.ndarray, shift: np.ndarray | None = None) -> LowRankRNN:
    """A copy of ``model`` whose latents are ``z' = T z + c``; everything observable unchanged.

    ``B' = T B``, ``b' = T b + c``, ``A' = A T^-1``, ``a' = a - A T^-1 c``, so
    ``A' B' = A B``, ``decode'(encode'(u)) = decode(encode(u))`` and the posterior means map
    as ``mu' = T mu + c``.

    Parameters
    ----------
    model : LowRankRNN
        A model with linear encoder and decoder.
    transform : (K, K) array
        Invertible ``T``.
    shift : (K,) array, optional
        ``c`` (zero when omitted).
    """
    if not model.is_linear:
        raise ValueError("transform_latents: expected a model with model.encoder=linear and model.decoder=linear")
    K = model.latent_dim
    T = np.asarray(transform, dtype=np.float64)
    if T.shape != (K, K):
        raise ValueError(f"transform has shape {T.shape}: expected ({K}, {K}) for a model with K={K} latents")
    c = np.zeros(K) if shift is None else np.asarray(shift, dtype=np.float64)
    T_inv = np.linalg.inv(T)
    A = model.A.detach().double().numpy()
    B = model.B.detach().double().numpy()
    a = model.decoder.bias.detach().double().numpy()
    b = model.encoder.bias.detach().double().numpy()
    new = copy.deepcopy(model)
    dtype = model.A.dtype
    with torch.no_grad():
        new.encoder.weight.copy_(torch.from_numpy(T @ B).to(dtype))
        new.encoder.bias.copy_(torch.from_numpy(T @ b + c).to(dtype))
        new.decoder.weight.copy_(torch.from_numpy(A @ T_inv).to(dtype))
        new.decoder.bias.copy_(torch.from_numpy(a - A @ T_inv @ c).to(dtype))
    return new


def with_grouping(model: LowRankRNN, group_sizes: list[int]) -> LowRankRNN:
    """Set ``model``'s latent grouping (consecutive dimensions) in place; returns it."""
    sizes = [int(size) for size in group_sizes]
    if sum(sizes) != model.latent_dim:
        raise ValueError(f"group_sizes={sizes} sums to {sum(sizes)}: expected the model's K={model.latent_dim}")
    model.group_sizes = sizes
    model.group_index = padded_group_index(sizes).to(model.log_noise_std.device)
    return model


def ica_transform(model: LowRankRNN, train_encoder_input: torch.Tensor, seed: int = 0) -> LowRankRNN:
    """``lrrnn_ica``: latents rotated to the FastICA components of the training posterior means.

    Parameters
    ----------
    model : LowRankRNN
    train_encoder_input : (M, N) tensor
        Encoder inputs of the training split.
    seed : int
        ``random_state`` of FastICA.

    Returns
    -------
    LowRankRNN
        Latents ``s = U (mu - m)``: unit-variance, maximally independent components.
    """
    with torch.no_grad():
        means = model.encode(train_encoder_input).double().numpy()
    ica = FastICA(n_components=model.latent_dim, whiten="unit-variance", random_state=seed, max_iter=5000, tol=1e-4)
    ica.fit(means)
    unmixing = ica.components_  # (K, K): s = unmixing @ (mu - mean_)
    return transform_latents(model, unmixing, -unmixing @ ica.mean_)


def svd_transform(model: LowRankRNN) -> LowRankRNN:
    """``lint``: latents of the SVD ``W = U S V^T``, ``A = U_K S_K``, ``B = V_K^T``.

    The change of coordinates is ``T = V_K^T B^+`` (``B^+`` the pseudo-inverse), exact when
    ``A`` has full column rank.
    """
    A = model.A.detach().double().numpy()
    B = model.B.detach().double().numpy()
    _, _, vt = np.linalg.svd(A @ B)
    T = vt[: model.latent_dim] @ np.linalg.pinv(B)
    return transform_latents(model, T)


def posthoc_model(
    model: LowRankRNN, kind: str, group_sizes: list[int], train_encoder_input: torch.Tensor | None = None, seed: int = 0
) -> LowRankRNN:
    """Apply the post-hoc ``kind`` (``ica`` or ``svd``) and group the result by ``group_sizes``."""
    if kind == "ica":
        if train_encoder_input is None:
            raise ValueError("posthoc=ica: expected the training split's encoder inputs")
        transformed = ica_transform(model, train_encoder_input, seed)
    elif kind == "svd":
        transformed = svd_transform(model)
    else:
        raise ValueError(f"posthoc={kind!r}: expected one of {sorted(POSTHOC_METHODS)}")
    return with_grouping(transformed, group_sizes)


def posthoc_group_sizes(model: LowRankRNN, datamodule: RecordingDataModule) -> list[int]:
    """The true group sizes when known and compatible with ``K``, else the model's own."""
    true_sizes = datamodule.recording.group_sizes
    if true_sizes is not None and sum(true_sizes) == model.latent_dim:
        return [int(size) for size in true_sizes]
    return list(model.group_sizes)
