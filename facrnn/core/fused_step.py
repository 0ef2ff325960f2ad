"""Hand-derived forward and backward of the one-step FacRNN training loss, without autograd.

The training loss of :meth:`facrnn.training.module.FacRNNModule.loss_terms` for the linear
low-rank RNN is small enough to differentiate by hand:

    mu = u B^T + b                       (n, K)   posterior means (encoder)
    z  = mu + h eps                      (n, K)   posterior samples, eps ~ N(0, I)
    y  = z A^T + a                       (n, N)   decoder output
    m  = f(y) + e                        (n, N)   observation mean (link f, external input e)
    loss = nll(x, m) + kl(mu) + beta pc(z, mu) + alpha mean((1 - mask) * (B A)^2)

With ``g_m = d nll / d m`` and ``g_y = f'(y) g_m``:

    dA = g_y^T z + B^T dO,   da = sum_i g_y,   g_z = g_y A + beta d pc / d z
    g_mu = g_z + mu / n + beta d pc / d mu,   dB = g_mu^T u + dO A^T,   db = sum_i g_mu
    dO = 2 alpha (1 - mask) * (B A) / K^2

- Gaussian: ``r = (x - m) exp(-s)``; ``g_m = -r exp(-s) / n``, ``ds = 1 - mean_i r^2``.
- Poisson: ``rate = max(m, min_rate)``; ``g_m = (1 - x / rate) / n`` where ``m >= min_rate``
  (else 0, as autograd's ``clamp_min``); ``log_noise_std`` gets no gradient (``None``, as
  with autograd, so AdamW leaves it alone, weight decay included).
- The PC term's value and gradients are those of the fused autograd function of
  :func:`facrnn.core.partial_correlation.partial_correlation_minibatch`, whose forward and
  backward are called directly (no autograd graph).

Batched copies (:class:`~facrnn.core.copies.ReplicatedLowRankRNN`) are the same with a
leading copy dimension ``C`` on every tensor; the terms are then ``(C,)`` and the gradients
those of ``terms["loss"].sum()``.

Agreement with autograd: the loss terms are computed by the same operations in the same
order as ``loss_terms`` (bit for bit equal, float32 and float64); the gradients agree to
round-off, not bit for bit (other summation orders: a few ulp of the largest entry, ~1e-16
in float64 and ~1e-7 in float32), so a trajectory trained with the fused path departs from
the autograd one by accumulated round-off only (float32: ~1e-7 after 160 AdamW steps).
The posterior noise is drawn as :meth:`LowRankRNN.sample` draws it (one
``torch.randn`` of the means' shape from the global generator), so both paths consume the
same random stream.

The optimizer half of the step, AdamW's fused kernel without ``Optimizer.step``'s wrappers,
is :func:`facrnn.training.adam_step.fused_adam_step`.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F  # noqa: N812 (the usual name)

from facrnn.core.copies import ReplicatedLowRankRNN
from facrnn.core.losses import LOSS_TERMS, gaussian_kl, overlap_penalty, poisson_nll
from facrnn.core.model import MODEL_INPUT_KEYS, LowRankRNN
from facrnn.core.observation import GaussianObservation, PoissonObservation
from facrnn.core.partial_correlation import group_mask, minibatch_pc_backward, minibatch_pc_forward

logger = logging.getLogger(__name__)

#: the clamp of the Poisson rate in :func:`facrnn.core.losses.poisson_nll` (its default)
POISSON_MIN_RATE: float = float(inspect.signature(poisson_nll).parameters["min_rate"].default)
#: links with a hand-written derivative
FUSED_LINKS = ("identity", "relu", "softplus")
#: ``nn.functional.softplus`` defaults (``beta``, ``threshold``) of the ``softplus`` link
_SOFTPLUS_BETA, _SOFTPLUS_THRESHOLD = 1.0, 20.0
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)

#: (plain model attribute path, copies' parameter name) in the order of the gradient tuples
PARAMETER_NAMES = (
    ("encoder.weight", "encoder_weight"),  # B: (K, N) / (C, K, N)
    ("encoder.bias", "encoder_bias"),  # b: (K,) / (C, K)
    ("decoder.weight", "decoder_weight"),  # A: (N, K) / (C, N, K)
    ("decoder.bias", "decoder_bias"),  # a: (N,) / (C, N)
    ("log_noise_std", "log_noise_std"),  # s: (N,) / (C, N)
)

Model = LowRankRNN | ReplicatedLowRankRNN


def model_parameters(model: Model) -> tuple[torch.Tensor, ...]:
    """``(B, b, A, a, log_noise_std)`` of a plain linear model or of batched copies (stacked)."""
    if isinstance(model, ReplicatedLowRankRNN):
        return (model.encoder_weight, model.encoder_bias, model.decoder_weight, model.decoder_bias, model.log_noise_std)
    encoder, decoder = model.encoder, model.decoder
    return (encoder.weight, encoder.bias, decoder.weight, decoder.bias, model.log_noise_std)


def fused_model_unsupported_reason(model: Any) -> str | None:
    """Why the fused path cannot stand in for autograd on ``model``, or None (check it once).

    Supported: a :class:`LowRankRNN` with linear encoder and decoder, or batched copies
    (:class:`ReplicatedLowRankRNN`); Gaussian or Poisson observations with link identity, relu
    or softplus; one process (no DDP gather of the PC term); the parameters ``B, b, A, a,
    log_noise_std`` only, floating point, of one dtype and device, requiring gradients.
    """
    if isinstance(model, LowRankRNN):
        if not model.is_linear or type(model.encoder) is not torch.nn.Linear or type(model.decoder) is not torch.nn.Linear:
            return "model.encoder/decoder=mlp: only the linear projections are fused"
    elif not isinstance(model, ReplicatedLowRankRNN):
        return f"{type(model).__name__}: expected a LowRankRNN or ReplicatedLowRankRNN"
    observation = model.observation
    if type(observation) not in (GaussianObservation, PoissonObservation):
        return f"observation {observation!r}: only the Gaussian and Poisson models are fused"
    if observation.link not in FUSED_LINKS:
        return f"model.link={observation.link!r}: expected one of {FUSED_LINKS}"
    parameters = model_parameters(model)
    first = parameters[0]
    if not first.dtype.is_floating_point or any(p.dtype != first.dtype or p.device != first.device for p in parameters):
        return "parameters of mixed or non-floating dtypes or devices"
    if not all(p.requires_grad for p in parameters):
        return "a frozen parameter (requires_grad=False)"
    if len(list(model.parameters())) != len(parameters):
        return "parameters beyond B, b, A, a, log_noise_std"
    if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        return "distributed training: the PC term is gathered across ranks"
    return None


def fused_batch_unsupported_reason(model: Model, batch: Mapping[str, torch.Tensor]) -> str | None:
    """Why the fused path cannot take ``batch`` (cheap; check it per batch), or None.

    Supported: one-step batches (``x``, ``encoder_input``, optional ``external_input``; no
    rollout windows) of the parameters' dtype and device; ``(n, N)``, or for batched copies
    ``(C, n, N)`` with ``C`` the current number of copies or ``(n, N)`` shared by them.
    """
    for key in ("target_mask", "past"):
        if key in batch:
            return f"batch key {key!r}: only one-step batches are fused (no rollout windows)"
    x = batch["x"]
    if isinstance(model, ReplicatedLowRankRNN):
        if not (x.ndim == 2 or (x.ndim == 3 and x.shape[0] == model.n_copies)):
            return f"batch x of shape {tuple(x.shape)}: expected (n, N) or (C={model.n_copies}, n, N)"
        reference = model.encoder_weight
    else:
        if x.ndim != 2:
            return f"batch x of shape {tuple(x.shape)}: expected (n, N)"
        reference = model.log_noise_std
    for value in (batch[key] for key in MODEL_INPUT_KEYS if key in batch):
        if value.dtype != reference.dtype or value.device != reference.device:
            return "batch tensors of another dtype or device than the parameters"
    return None


def fused_step_unsupported_reason(model: Any, batch: Mapping[str, torch.Tensor] | None = None) -> str | None:
    """:func:`fused_model_unsupported_reason`, then (given a batch) :func:`fused_batch_unsupported_reason`."""
    reason = fused_model_unsupported_reason(model)
    if reason is None and batch is not None:
        reason = fused_batch_unsupported_reason(model, batch)
    return reason


def fused_step_supported(model: Any, batch: Mapping[str, torch.Tensor] | None = None) -> bool:
    """Whether :func:`fused_loss_and_grads` applies (:func:`fused_step_unsupported_reason` is None)."""
    reason = fused_step_unsupported_reason(model, batch)
    if reason is not None:
        logger.debug("fused training step not used: %s", reason)
    return reason is None


@dataclass(frozen=True)
class FusedStepSpec:
    """What the arithmetic of :func:`fused_terms_and_grads` depends on besides its tensors.

    Fixed for a model and a training run (one per value of ``partial_corr_gradient`` when a
    beta warm-up starts at 0), so that a compiled step (:mod:`facrnn.training.compiled_step`)
    is traced once.

    Attributes
    ----------
    replicated : bool
        Batched copies: every tensor has a leading copy dimension ``C``.
    gaussian : bool
        Gaussian observations (else Poisson).
    link : str
        One of :data:`FUSED_LINKS`.
    width : float
        Posterior width ``h``.
    group_sizes : tuple of int
        Latent group sizes.
    n_train : int
        ``M``, training samples, weighting the minibatch PC estimator.
    alpha : float
        Weight of the overlap penalty; 0 skips it.
    partial_corr : bool
        Whether the PC term is computed (with at least two groups).
    partial_corr_gradient : bool
        Whether its gradient is taken (``beta != 0``).
    """

    replicated: bool
    gaussian: bool
    link: str
    width: float
    group_sizes: tuple[int, ...]
    n_train: int
    alpha: float
    partial_corr: bool
    partial_corr_gradient: bool


class FusedTermsAndGrads(NamedTuple):
    """Output of :func:`fused_terms_and_grads`: the loss terms, then the gradients of ``loss.sum()``."""

    loss: torch.Tensor  # () or (C,)
    nll: torch.Tensor
    kl: torch.Tensor
    partial_corr: torch.Tensor
    overlap: torch.Tensor
    B_grad: torch.Tensor  # (K, N) / (C, K, N)
    b_grad: torch.Tensor  # (K,) / (C, K)
    A_grad: torch.Tensor  # (N, K) / (C, N, K)
    a_grad: torch.Tensor  # (N,) / (C, N)
    log_noise_std_grad: torch.Tensor | None  # (N,) / (C, N); None for Poisson


def step_spec(model: Model, beta: float, alpha: float, n_train: int, partial_corr: bool | None = None) -> FusedStepSpec:
    """The :class:`FusedStepSpec` of ``model``; ``partial_corr`` None means ``beta > 0``."""
    if partial_corr is None:
        partial_corr = beta > 0
    return FusedStepSpec(
        replicated=isinstance(model, ReplicatedLowRankRNN),
        gaussian=isinstance(model.observation, GaussianObservation),
        link=model.observation.link,
        width=float(model.width),
        group_sizes=tuple(int(size) for size in model.group_sizes),
        n_train=int(n_train),
        alpha=float(alpha),
        partial_corr=bool(partial_corr),
        partial_corr_gradient=beta != 0,
    )


def fused_terms_and_grads(
    spec: FusedStepSpec,
    B: torch.Tensor,
    b: torch.Tensor,
    A: torch.Tensor,
    a: torch.Tensor,
    log_noise_std: torch.Tensor,
    x: torch.Tensor,
    u: torch.Tensor,
    external: torch.Tensor | None,
    noise: torch.Tensor,
    mask: torch.Tensor,
    beta: float | torch.Tensor,
    block_mask: torch.Tensor | None,
) -> FusedTermsAndGrads:
    """The loss terms and their gradients from tensors alone (pure; no autograd graph).

    Parameters
    ----------
    spec : FusedStepSpec
        The model's settings.
    B, b, A, a, log_noise_std : tensor
        Encoder weight ``(K, N)`` and bias ``(K,)``, decoder weight ``(N, K)`` and bias
        ``(N,)``, observation log-std ``(N,)``; copies: a leading ``C`` on each.
    x, u : tensor
        Targets and encoder inputs ``(n, N)``; copies ``(C, n, N)`` (expanded if shared).
    external : tensor, optional
        External input added to the observation mean, of ``x``'s shape.
    noise : tensor
        Posterior noise ``eps``, ``(n, K)`` or ``(C, n, K)``.
    mask : (G, K) tensor
        :func:`~facrnn.core.partial_correlation.group_mask` of ``spec.group_sizes``.
    beta : float or 0-d tensor
        Weight of the PC term in ``loss`` (a tensor keeps a compiled step from specialising
        on its value during a warm-up).
    block_mask : (K, K) tensor, optional
        Needed when ``spec.alpha > 0``.

    Returns
    -------
    FusedTermsAndGrads
    """
    replicated = spec.replicated
    width, link, alpha = spec.width, spec.link, spec.alpha
    n = x.shape[-2]
    inv_n = 1.0 / n

    # ---- forward: the operations of loss_terms, in its order
    means = torch.baddbmm(b.unsqueeze(1), u, B.transpose(1, 2)) if replicated else F.linear(u, B, b)
    samples = means + width * noise
    output = torch.baddbmm(a.unsqueeze(1), samples, A.transpose(1, 2)) if replicated else F.linear(samples, A, a)
    if link == "identity":
        mean = output
    elif link == "relu":
        mean = torch.relu(output)
    else:
        mean = F.softplus(output)
    if external is not None:
        mean = mean + external
    if spec.gaussian:
        log_std = log_noise_std.unsqueeze(-2)
        inv_std = torch.exp(-log_std)  # (..., 1, N)
        standardized = (x - mean) * inv_std
        squared = standardized.pow(2)
        per_neuron = 0.5 * squared + log_std + _HALF_LOG_2PI
        nll = per_neuron.sum(-1).mean(-1)
        grad_mean = standardized * (inv_std * -inv_n)  # d nll / d mean
        grad_log_std = torch.rsub(squared.mean(-2), 1.0)  # 1 - mean_i r^2
    else:
        rate = mean.clamp_min(POISSON_MIN_RATE)
        per_neuron = rate - x * torch.log(rate) + torch.lgamma(x + 1.0)
        nll = per_neuron.sum(-1).mean(-1)
        grad_rate = torch.div(x, rate).sub_(1.0).mul_(-inv_n)  # (1 - x / rate) / n
        grad_mean = torch.where(mean >= POISSON_MIN_RATE, grad_rate, 0.0)  # clamp_min's backward
        grad_log_std = None
    kl = gaussian_kl(means, width)
    zero = torch.zeros_like(nll)
    with_pc = spec.partial_corr and len(spec.group_sizes) > 1 and n >= 2
    if with_pc:
        batched = (samples, means) if replicated else (samples.unsqueeze(0), means.unsqueeze(0))
        value, saved = minibatch_pc_forward(*batched, width, mask, spec.n_train)
        pc = value if replicated else value[0]
    else:
        pc = zero
    if alpha > 0:
        if block_mask is None:
            raise ValueError(f"fused_loss_and_grads: alpha={alpha} needs the (K, K) block_mask of the groups")
        overlap_matrix = torch.bmm(B, A) if replicated else B @ A  # as model.overlap()
        overlap = overlap_penalty(overlap_matrix, block_mask)
    else:
        overlap = zero
    loss = nll + kl + beta * pc + alpha * overlap

    # ---- backward
    if link == "relu":
        grad_output = torch.ops.aten.threshold_backward(grad_mean, output, 0.0)
    elif link == "softplus":
        grad_output = torch.ops.aten.softplus_backward(grad_mean, output, _SOFTPLUS_BETA, _SOFTPLUS_THRESHOLD)
    else:
        grad_output = grad_mean
    grad_output_t = grad_output.transpose(-1, -2)  # (..., N, n)
    A_grad = grad_output_t @ samples  # (..., N, K)
    a_grad = grad_output.sum(-2)
    grad_samples = grad_output @ A  # (..., n, K)
    grad_means = torch.add(grad_samples, means, alpha=inv_n)  # + d kl / d mu
    if with_pc and spec.partial_corr_gradient:
        n_copies = means.shape[0] if replicated else 1
        if isinstance(beta, torch.Tensor):
            weight = beta.to(means.dtype).expand(n_copies)
        else:
            weight = means.new_full((n_copies,), beta)
        pc_samples, pc_means = minibatch_pc_backward(saved, weight)
        if not replicated:
            pc_samples, pc_means = pc_samples[0], pc_means[0]
        grad_means.add_(pc_samples).add_(pc_means)
    B_grad = grad_means.transpose(-1, -2) @ u  # (..., K, N)
    b_grad = grad_means.sum(-2)
    if alpha > 0:
        latent_dim = overlap_matrix.shape[-1]
        grad_overlap = (1.0 - block_mask) * overlap_matrix * (2.0 * alpha / latent_dim**2)  # (..., K, K)
        B_grad.add_(grad_overlap @ A.transpose(-1, -2))
        A_grad.add_(B.transpose(-1, -2) @ grad_overlap)
    return FusedTermsAndGrads(loss, nll, kl, pc, overlap, B_grad, b_grad, A_grad, a_grad, grad_log_std)


def step_inputs(
    model: Model, batch: Mapping[str, torch.Tensor], noise: torch.Tensor | None = None
) -> tuple[torch.Tensor, ...]:
    """The tensor arguments ``(B, b, A, a, log_noise_std, x, u, external, noise, mask)`` of
    :func:`fused_terms_and_grads` for ``model`` and ``batch``; the noise drawn as
    :meth:`LowRankRNN.sample` draws it (one ``torch.randn`` of the means' shape) when None."""
    B, b, A, a, log_noise_std = model_parameters(model)
    x, u, external = batch["x"], batch["encoder_input"], batch.get("external_input")
    if isinstance(model, ReplicatedLowRankRNN) and x.ndim == 2:  # shared by every copy, as loss_terms expands it
        n_copies = model.n_copies
        x, u = x.expand(n_copies, *x.shape), u.expand(n_copies, *u.shape)
        external = None if external is None else external.expand(n_copies, *external.shape)
    if noise is None:
        shape = (*x.shape[:-1], B.shape[-2])  # the means' shape, (..., n, K)
        noise = torch.randn(shape, dtype=B.dtype, device=B.device)
    mask = group_mask(model.group_sizes, B.dtype, B.device)
    return B, b, A, a, log_noise_std, x, u, external, noise, mask


def step_arguments(
    model: Model,
    batch: Mapping[str, torch.Tensor],
    beta: float,
    alpha: float,
    n_train: int,
    partial_corr: bool | None = None,
    noise: torch.Tensor | None = None,
) -> tuple[FusedStepSpec, tuple[torch.Tensor | None, ...]]:
    """:func:`step_spec` and :func:`step_inputs` of one step: what :func:`fused_terms_and_grads`
    takes besides ``beta`` and the block mask (the noise drawn here when None)."""
    return step_spec(model, beta, alpha, n_train, partial_corr), step_inputs(model, batch, noise)


@torch.no_grad()
def _fused(
    model: Model,
    batch: Mapping[str, torch.Tensor],
    beta: float,
    alpha: float,
    n_train: int,
    block_mask: torch.Tensor | None,
    partial_corr: bool | None,
    noise: torch.Tensor | None,
) -> FusedTermsAndGrads:
    spec, inputs = step_arguments(model, batch, beta, alpha, n_train, partial_corr, noise)
    return fused_terms_and_grads(spec, *inputs, beta, block_mask)


def terms_of(result: FusedTermsAndGrads) -> dict[str, torch.Tensor]:
    """The loss terms of ``result`` by name (``facrnn.core.losses.LOSS_TERMS``)."""
    return dict(zip(LOSS_TERMS, result[:5]))


def set_gradients(parameters: Sequence[torch.Tensor], result: FusedTermsAndGrads) -> None:
    """Set (not accumulate) the ``.grad`` of ``parameters`` (:func:`model_parameters`, or the
    first five of :func:`step_inputs`) to their gradients in ``result``."""
    for parameter, grad in zip(parameters, result[5:]):
        parameter.grad = grad


def fused_loss_and_grads(
    model: Model,
    batch: Mapping[str, torch.Tensor],
    beta: float,
    alpha: float,
    n_train: int,
    block_mask: torch.Tensor | None = None,
    *,
    partial_corr: bool | None = None,
    noise: torch.Tensor | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor | None]]:
    """The one-step training loss terms and their exact gradients, without autograd.

    Pure: the parameters and their ``.grad`` are left alone (see :func:`fused_loss_and_backward`
    for the training step). Check :func:`fused_step_supported` first.

    Parameters
    ----------
    model : LowRankRNN or ReplicatedLowRankRNN
        Linear encoder and decoder; ``C`` batched copies for the latter.
    batch : mapping of str to tensor
        ``x`` and ``encoder_input`` ``(n, N)`` (copies: ``(C, n, N)`` or shared ``(n, N)``),
        optional ``external_input`` of the same shape.
    beta : float
        Weight of the PC term in ``loss`` (``FacRNNModule.training_beta()``).
    alpha : float
        Weight of the overlap penalty (``model.alpha``); 0 skips it (``overlap`` = 0).
    n_train : int
        ``M``, training samples, weighting the minibatch PC estimator.
    block_mask : (K, K) tensor, optional
        ``FacRNNModule.block_mask``; needed when ``alpha > 0``.
    partial_corr : bool, optional
        Whether the PC term is computed (``FacRNNModule`` computes it when ``model.beta > 0``,
        whatever ``beta``); default ``beta > 0``. Its gradient is skipped when ``beta == 0``.
    noise : (n, K) or (C, n, K) tensor, optional
        Posterior noise ``eps``; default one ``torch.randn`` of the means' shape from the
        global generator, the draw of :meth:`LowRankRNN.sample`.

    Returns
    -------
    terms : dict of str to tensor
        ``loss``, ``nll``, ``kl``, ``partial_corr``, ``overlap`` (``facrnn.core.losses.LOSS_TERMS``): scalars,
        or ``(C,)`` for copies; no graph. Bit for bit those of ``FacRNNModule.loss_terms``.
    grads : dict of str to tensor or None
        Gradient of ``terms["loss"].sum()`` by parameter name (``model.named_parameters()``),
        of the parameter's shape; ``log_noise_std`` is None for Poisson observations (autograd
        gives it none either).
    """
    result = _fused(model, batch, beta, alpha, n_train, block_mask, partial_corr, noise)
    names = [pair[1] if isinstance(model, ReplicatedLowRankRNN) else pair[0] for pair in PARAMETER_NAMES]
    return terms_of(result), dict(zip(names, result[5:]))


def fused_loss_and_backward(
    model: Model,
    batch: Mapping[str, torch.Tensor],
    beta: float,
    alpha: float,
    n_train: int,
    block_mask: torch.Tensor | None = None,
    *,
    partial_corr: bool | None = None,
    noise: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """:func:`fused_loss_and_grads` that writes the gradients into the parameters' ``.grad``.

    Replaces ``optimizer.zero_grad(); loss_terms(batch)["loss"].sum().backward()``: every
    parameter's ``.grad`` is *set* (not accumulated) to its gradient, so no ``zero_grad`` is
    needed; ``log_noise_std.grad`` is set to None for Poisson observations, as
    ``zero_grad(set_to_none=True)`` and a backward that does not reach it leave it. Arguments
    as :func:`fused_loss_and_grads`.

    Returns
    -------
    dict of str to tensor
        The loss terms (``facrnn.core.losses.LOSS_TERMS``), detached.
    """
    result = _fused(model, batch, beta, alpha, n_train, block_mask, partial_corr, noise)
    set_gradients(model_parameters(model), result)
    return terms_of(result)


__all__ = [
    "FUSED_LINKS",
    "FusedStepSpec",
    "FusedTermsAndGrads",
    "PARAMETER_NAMES",
    "POISSON_MIN_RATE",
    "fused_batch_unsupported_reason",
    "fused_loss_and_backward",
    "fused_loss_and_grads",
    "fused_model_unsupported_reason",
    "fused_step_supported",
    "fused_step_unsupported_reason",
    "fused_terms_and_grads",
    "model_parameters",
    "set_gradients",
    "step_arguments",
    "step_inputs",
    "step_spec",
    "terms_of",
]
