"""The hand-derived training step (:mod:`facrnn.core.fused_step`) compiled by ``torch.compile``.

:func:`facrnn.core.fused_step.fused_terms_and_grads` is ~100 small tensor operations on a
batch of 128; eager PyTorch spends most of a step dispatching them. Inductor fuses them into
a few C++ loops around the matrix products, and the AdamW update into the same loops
(:meth:`CompiledFusedStep.step_and_update`): ~2x faster per step on one CPU core
(benchmarks/README.md). The price is a one-off compilation, ~30-45 s on a cold cache and
~2.5 s once torch's inductor cache (``TORCHINDUCTOR_CACHE_DIR``, by default
``/tmp/torchinductor_$USER``) holds the kernels, so ``model.compile_step=auto`` compiles only
runs of at least :data:`AUTO_MIN_STEPS` optimizer steps on CPU.

The compiled and the eager step compute the same terms and gradients up to round-off
(inductor fuses and reorders sums): ``tests/training/test_compiled_step.py`` checks them
against each other and a run against the eager run. The posterior noise is drawn outside the
compiled code (one ``torch.randn`` from the global generator, as :meth:`LowRankRNN.sample`),
so both paths consume the same random stream. Each batch shape is compiled once (the full
batches and the last, partial batch of an epoch: two compilations; ``dynamic=False`` kernels
are ~20 % faster than shape-generic ones here).
"""

from __future__ import annotations

import functools
import logging
import shutil
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch

from facrnn.core.fused_step import (
    FusedStepSpec,
    FusedTermsAndGrads,
    Model,
    fused_terms_and_grads,
    set_gradients,
    step_arguments,
    terms_of,
)
from facrnn.training.adam_step import adam_hyperparameters, adam_state, adam_update_, fused_adam_step

logger = logging.getLogger(__name__)

#: Inductor's options for the step:
#:
#: - ``pattern_matcher`` off: in torch 2.13 the rewrite of ``add(mm(...), y, alpha=c)`` into
#:   ``addmm`` drops ``alpha`` (silently wrong gradients of the encoder; pytorch/pytorch#167313,
#:   #196577). The pointwise fusion, where the time is saved, does not depend on it.
#: - ``cpp.vec_isa_ok``: the SIMD instruction sets are taken from the CPU's flags
#:   (``/proc/cpuinfo``) without inductor's probe, which builds and loads a test library in a
#:   child Python for each of them in every process (~1.3 s of a ~2.5 s warm start). A
#:   toolchain that cannot build them fails the compilation, and ``auto`` trains on eagerly.
INDUCTOR_OPTIONS = {"pattern_matcher": False, "cpp.vec_isa_ok": True}
#: ``auto`` compiles runs of at least this many optimizer steps (cold compilation ~30-45 s, eager
#: ~0.3-0.4 ms per step slower than compiled: ~100,000 steps to pay back without a cache,
#: ~7,000 with one; the paper run has 40,000)
AUTO_MIN_STEPS = 20_000


def compile_unsupported_reason(device: torch.device) -> str | None:
    """Why ``auto`` does not compile the step on ``device`` (None: it does)."""
    if device.type != "cpu":
        return f"device {device.type}: auto compiles the CPU step only (model.compile_step=always to try)"
    if shutil.which("g++") is None and shutil.which("c++") is None and shutil.which("clang++") is None:
        return "no C++ compiler (g++, c++ or clang++) on PATH for torch.compile's CPU kernels"
    return None


def compile_decision(setting: str, device: torch.device, planned_steps: float) -> tuple[bool, str]:
    """Whether ``model.compile_step=setting`` compiles the fused step, and why (for the log).

    Parameters
    ----------
    setting : {"auto", "always", "never"}
        ``model.compile_step``.
    device : torch.device
        The parameters' device.
    planned_steps : float
        Optimizer steps the run will take (``inf`` without a limit).
    """
    if setting == "never":
        return False, "model.compile_step=never"
    if setting == "always":
        return True, "model.compile_step=always"
    reason = compile_unsupported_reason(device)
    if reason is not None:
        return False, reason
    if planned_steps < AUTO_MIN_STEPS:
        return False, f"{planned_steps:,.0f} optimizer steps planned, auto compiles from {AUTO_MIN_STEPS:,}"
    return True, f"{planned_steps:,.0f} optimizer steps planned (auto compiles from {AUTO_MIN_STEPS:,})"


def fused_step_and_adam_update(
    spec: FusedStepSpec,
    hyperparameters: tuple[float, float, float, float, float, bool],
    inputs: tuple[torch.Tensor | None, ...],
    beta: torch.Tensor,
    block_mask: torch.Tensor | None,
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    steps: list[torch.Tensor],
) -> FusedTermsAndGrads:
    """:func:`fused_terms_and_grads` followed by the Adam/AdamW update of the parameters
    (:func:`facrnn.training.adam_step.adam_update_`; parameters without a gradient, the
    Poisson ``log_noise_std``, skipped), for one compiled graph. The state lists follow the
    parameters with a gradient, in ``model_parameters`` order."""
    result = fused_terms_and_grads(spec, *inputs, beta, block_mask)
    params = [p for p, g in zip(inputs[:5], result[5:]) if g is not None]
    grads = [g for g in result[5:] if g is not None]
    adam_update_(params, grads, exp_avgs, exp_avg_sqs, steps, hyperparameters)
    return result


class CompiledFusedStep:
    """The fused step of one model, compiled on first use of every batch shape.

    :meth:`__call__` replaces :func:`facrnn.core.fused_step.fused_loss_and_backward`;
    :meth:`step_and_update` also applies the optimizer's update in the same compiled code.

    Parameters
    ----------
    fallback_on_error : bool
        On a failed compilation, log a warning and use the eager step from then on (``auto``);
        False re-raises (``always``).
    """

    def __init__(self, fallback_on_error: bool = True) -> None:
        # torch 2.13's own lowering warns of its own deprecated helper while compiling
        warnings.filterwarnings("ignore", message=r"`torch._prims_common.check` is deprecated", category=FutureWarning)
        self.fallback_on_error = fallback_on_error
        self.failed = False
        self._compiled: dict[tuple[Any, ...], Callable[..., FusedTermsAndGrads]] = {}
        self._beta: tuple[float, torch.Tensor] | None = None  # the last beta and its tensor

    def _function(self, function: Callable[..., FusedTermsAndGrads], *static: Any) -> Callable[..., FusedTermsAndGrads]:
        key = (function, *static)
        if key not in self._compiled:
            self._compiled[key] = torch.compile(functools.partial(function, *static), dynamic=False, options=INDUCTOR_OPTIONS)
        return self._compiled[key]

    def _run(
        self, function: Callable[..., FusedTermsAndGrads], static: tuple[Any, ...], *args: Any
    ) -> FusedTermsAndGrads | None:
        """The compiled ``function(*static, *args)``, or None once compilation has failed."""
        if self.failed:
            return None
        try:
            return self._function(function, *static)(*args)
        except Exception as error:  # noqa: BLE001 - a compiler failure of any kind falls back
            if not self.fallback_on_error:
                raise
            self.failed = True
            logger.warning("compiled training step failed, training on with the eager one: %s", error)
            return None

    def _prepare(
        self,
        model: Model,
        batch: Mapping[str, torch.Tensor],
        beta: float,
        alpha: float,
        n_train: int,
        partial_corr: bool | None,
    ) -> tuple[FusedStepSpec, tuple[torch.Tensor | None, ...], torch.Tensor]:
        """The spec, the tensor inputs (the noise drawn once, here) and ``beta`` as a 0-d tensor
        (one per value: the compiled code takes it as an input, not a constant)."""
        spec, inputs = step_arguments(model, batch, beta, alpha, n_train, partial_corr)
        if self._beta is None or self._beta[0] != beta:
            self._beta = (beta, torch.tensor(beta, dtype=inputs[0].dtype, device=inputs[0].device))
        return spec, inputs, self._beta[1]

    @torch.no_grad()
    def __call__(
        self,
        model: Model,
        batch: Mapping[str, torch.Tensor],
        beta: float,
        alpha: float,
        n_train: int,
        block_mask: torch.Tensor | None = None,
        *,
        partial_corr: bool | None = None,
    ) -> dict[str, torch.Tensor]:
        """:func:`facrnn.core.fused_step.fused_loss_and_backward`, compiled: sets every
        parameter's ``.grad`` and returns the loss terms."""
        spec, inputs, beta_tensor = self._prepare(model, batch, beta, alpha, n_train, partial_corr)
        result = self._run(fused_terms_and_grads, (spec,), *inputs, beta_tensor, block_mask)
        if result is None:
            result = fused_terms_and_grads(spec, *inputs, beta, block_mask)
        set_gradients(inputs[:5], result)
        return terms_of(result)

    @torch.no_grad()
    def step_and_update(
        self,
        model: Model,
        batch: Mapping[str, torch.Tensor],
        beta: float,
        alpha: float,
        n_train: int,
        block_mask: torch.Tensor | None,
        optimizer: torch.optim.Optimizer,
        *,
        partial_corr: bool | None = None,
    ) -> dict[str, torch.Tensor]:
        """:meth:`__call__` followed by ``optimizer``'s step, in one compiled graph: sets every
        parameter's ``.grad``, updates the parameters and the optimizer's state, and returns the
        loss terms. The first step, which creates the optimizer's state, and every step after a
        failed compilation are the eager step and :func:`~facrnn.training.adam_step.fused_adam_step`
        (the same noise either way). ``optimizer``: a one-group fused Adam/AdamW over the model's
        parameters that :func:`~facrnn.training.adam_step.fused_adam_unsupported_reason` accepts."""
        spec, inputs, beta_tensor = self._prepare(model, batch, beta, alpha, n_train, partial_corr)
        parameters = inputs[:5]
        # Poisson: no log_noise_std gradient, no update
        state = adam_state(optimizer, list(parameters if spec.gaussian else parameters[:4]))
        result = None
        if state is not None:
            static = (spec, adam_hyperparameters(optimizer))
            result = self._run(fused_step_and_adam_update, static, inputs, beta_tensor, block_mask, *state)
        updated = result is not None
        if not updated:
            result = fused_terms_and_grads(spec, *inputs, beta, block_mask)
        set_gradients(parameters, result)
        if not updated:  # the update from the gradients just set
            fused_adam_step(optimizer, checked=True)
        return terms_of(result)


__all__ = [
    "AUTO_MIN_STEPS",
    "INDUCTOR_OPTIONS",
    "CompiledFusedStep",
    "compile_decision",
    "compile_unsupported_reason",
    "fused_step_and_adam_update",
]
