"""``optimizer.step()`` of a fused Adam/AdamW without the wrappers of ``Optimizer.step``.

:func:`fused_adam_step` applies ``torch.optim.Adam``/``AdamW(fused=True)``'s update directly
(``torch._fused_adamw_`` / ``torch._fused_adam_``), bit for bit what ``optimizer.step()``
gives (parameters and state): the training step of :class:`~facrnn.training.module.FacRNNModule`
uses it with the hand-derived gradients of :mod:`facrnn.core.fused_step`
(benchmarks/README.md).
"""

from __future__ import annotations

import torch


def _global_step_hooks() -> bool:
    from torch.optim import optimizer as optimizer_module

    return bool(optimizer_module._global_optimizer_pre_hooks or optimizer_module._global_optimizer_post_hooks)


def fused_adam_unsupported_reason(optimizer: torch.optim.Optimizer) -> str | None:
    """Why :func:`fused_adam_step` would fall back to ``optimizer.step()``, or None.

    Applies to ``torch.optim.Adam``/``AdamW`` with ``fused=True``, no amsgrad, maximize,
    capturable or differentiable, float betas, a float ``lr`` (or a tensor on the parameters'
    device), all parameters of one device and dtype, and no step hooks (global or the
    optimizer's own) that ``Optimizer.step`` would run.
    """
    if type(optimizer) not in (torch.optim.Adam, torch.optim.AdamW):
        return f"{type(optimizer).__name__}: expected torch.optim.Adam or AdamW"
    if optimizer._optimizer_step_pre_hooks or optimizer._optimizer_step_post_hooks or _global_step_hooks():
        return "optimizer step hooks are registered"
    if "step" in vars(optimizer):
        return "optimizer.step was patched (e.g. by an LR scheduler)"
    devices = set()
    for group in optimizer.param_groups:
        if not group.get("fused") or group["amsgrad"] or group["maximize"] or group["capturable"] or group["differentiable"]:
            return "expected fused=True without amsgrad, maximize, capturable, differentiable"
        if any(isinstance(beta, torch.Tensor) for beta in group["betas"]):
            return "tensor betas"
        devices.update((p.device, p.dtype) for p in group["params"])
        lr = group["lr"]
        if isinstance(lr, torch.Tensor) and any(lr.device != p.device for p in group["params"]):
            return "a tensor lr on another device than the parameters"
    if len(devices) > 1:
        return "parameters of several devices or dtypes"
    return None


def fused_adam_step(optimizer: torch.optim.Optimizer, checked: bool = False) -> None:
    """``optimizer.step()`` of a fused Adam/AdamW, applied by its fused kernel directly.

    The same ``step += 1`` and the same ``torch._fused_adamw_`` (``_fused_adam_`` for Adam)
    call with the same arguments as ``Optimizer.step``, so the parameters and the state are
    bit for bit those of ``optimizer.step()``; parameters without a gradient are skipped, as
    there. Without the profiler/hook wrapper, grad-mode switches, graph-capture checks and
    per-step tensor grouping. Falls back to ``optimizer.step()`` where
    :func:`fused_adam_unsupported_reason` gives a reason, and while a parameter with a
    gradient has no state yet (the first step: the lazy state initialisation stays torch's).
    Lightning's step counting is *not* done (see the caller's
    ``LightningOptimizer._on_before_step``/``_on_after_step``).

    Parameters
    ----------
    optimizer : torch.optim.Optimizer
        The raw optimizer (``LightningOptimizer.optimizer``, not the Lightning wrapper).
    checked : bool
        The caller found :func:`fused_adam_unsupported_reason` None for this optimizer (once
        for many steps); skips the check.
    """
    if not checked and fused_adam_unsupported_reason(optimizer) is not None:
        optimizer.step()
        return
    state = optimizer.state
    calls = []
    for group in optimizer.param_groups:
        params, grads, exp_avgs, exp_avg_sqs, steps = [], [], [], [], []
        for parameter in group["params"]:
            grad = parameter.grad
            if grad is None:
                continue
            parameter_state = state.get(parameter)
            if not parameter_state:  # not initialised yet: optimizer.step() does it
                optimizer.step()
                return
            params.append(parameter)
            grads.append(grad)
            exp_avgs.append(parameter_state["exp_avg"])
            exp_avg_sqs.append(parameter_state["exp_avg_sq"])
            steps.append(parameter_state["step"])
        if params:
            calls.append((group, params, grads, exp_avgs, exp_avg_sqs, steps))
    with torch.no_grad():
        for group, params, grads, exp_avgs, exp_avg_sqs, steps in calls:
            beta1, beta2 = group["betas"]
            torch._foreach_add_(steps, 1)
            decoupled = group.get("decoupled_weight_decay", isinstance(optimizer, torch.optim.AdamW))
            kernel = torch._fused_adamw_ if decoupled else torch._fused_adam_
            kernel(
                params,
                grads,
                exp_avgs,
                exp_avg_sqs,
                [],
                steps,
                amsgrad=False,
                lr=group["lr"],
                beta1=beta1,
                beta2=beta2,
                weight_decay=group["weight_decay"],
                eps=group["eps"],
                maximize=False,
                grad_scale=None,
                found_inf=None,
            )


def adam_state(optimizer: torch.optim.Optimizer, params: list[torch.Tensor]) -> tuple[list[torch.Tensor], ...] | None:
    """``(exp_avgs, exp_avg_sqs, steps)`` of ``params`` in ``optimizer.state``, or None while
    one of them has no state yet (``optimizer.step()`` initialises it on the first step)."""
    state = optimizer.state
    exp_avgs, exp_avg_sqs, steps = [], [], []
    for parameter in params:
        parameter_state = state.get(parameter)
        if not parameter_state:
            return None
        exp_avgs.append(parameter_state["exp_avg"])
        exp_avg_sqs.append(parameter_state["exp_avg_sq"])
        steps.append(parameter_state["step"])
    return exp_avgs, exp_avg_sqs, steps


def adam_hyperparameters(optimizer: torch.optim.Optimizer) -> tuple[float, float, float, float, float, bool]:
    """``(lr, beta1, beta2, weight_decay, eps, decoupled)`` of a one-group Adam/AdamW, as floats
    (a compiled update specialises on them: a changed lr compiles it again)."""
    (group,) = optimizer.param_groups
    beta1, beta2 = group["betas"]
    decoupled = group.get("decoupled_weight_decay", isinstance(optimizer, torch.optim.AdamW))
    return float(group["lr"]), float(beta1), float(beta2), float(group["weight_decay"]), float(group["eps"]), bool(decoupled)


def adam_update_(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    steps: list[torch.Tensor],
    hyperparameters: tuple[float, float, float, float, float, bool],
) -> None:
    """One Adam/AdamW update in place, written out (the arithmetic of ``torch._fused_adamw_``/
    ``_fused_adam_`` on CPU, for a compiled step to fuse into its own kernels; equal to
    round-off, not bit for bit).

    With ``t = step + 1``: ``m = m + (1 - b1)(g - m)``, ``v = b2 v + (1 - b2) g^2``,
    ``p = p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``; AdamW first decays
    ``p = p (1 - lr wd)``, Adam adds ``wd p`` to ``g``. Each tensor is of its parameter's shape;
    ``steps`` are the 0-d step counters.
    """
    lr, beta1, beta2, weight_decay, eps, decoupled = hyperparameters
    for param, grad, exp_avg, exp_avg_sq, step in zip(params, grads, exp_avgs, exp_avg_sqs, steps):
        step.add_(1)
        if weight_decay != 0:
            if decoupled:
                param.mul_(1 - lr * weight_decay)
            else:
                grad = grad + weight_decay * param
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        bias_correction1 = 1 - torch.pow(beta1, step)
        bias_correction2_sqrt = torch.sqrt(1 - torch.pow(beta2, step))
        denom = exp_avg_sq.sqrt() / bias_correction2_sqrt + eps
        param.sub_(lr / bias_correction1 * exp_avg / denom)


__all__ = ["adam_hyperparameters", "adam_state", "adam_update_", "fused_adam_step", "fused_adam_unsupported_reason"]
