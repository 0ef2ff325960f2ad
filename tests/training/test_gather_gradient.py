"""The DDP gather's gradient reaches the all-to-all dense (gloo sums non-contiguous tensors wrongly).

The end-to-end check is ``tests/runs/test_scale.py::test_ddp_partial_correlation_sees_the_global_batch``;
this one looks at what the gather's backward receives, without processes.
"""

from __future__ import annotations

import torch

from facrnn.core.partial_correlation import partial_correlation_minibatch
from facrnn.training.module import with_contiguous_gradient


class _RecordIncomingGradient(torch.autograd.Function):
    """Identity that keeps the gradient handed to its backward (stands in for ``all_gather``)."""

    received: list[torch.Tensor] = []

    @staticmethod
    def forward(ctx, tensor):  # type: ignore[override]
        return tensor.clone()

    @staticmethod
    def backward(ctx, gradient):  # type: ignore[override]
        _RecordIncomingGradient.received.append(gradient)
        return gradient


def _incoming_gradient(dense: bool) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    means = torch.randn(24, 6, generator=generator, requires_grad=True)
    samples = means.detach() + 0.5 * torch.randn(24, 6, generator=generator)
    gathered = _RecordIncomingGradient.apply(means)
    if dense:
        gathered = with_contiguous_gradient(gathered)
    _RecordIncomingGradient.received.clear()
    partial_correlation_minibatch(samples, gathered, 0.5, [3, 3], 100).backward()
    return _RecordIncomingGradient.received[0]


def test_gathered_tensor_receives_a_dense_gradient() -> None:
    # the PC backward returns a transposed view; the hook makes it dense, with the same values
    raw, dense = _incoming_gradient(dense=False), _incoming_gradient(dense=True)
    assert not raw.is_contiguous()
    assert dense.is_contiguous()
    torch.testing.assert_close(dense, raw, rtol=0, atol=0)


def test_no_hook_without_gradients() -> None:
    tensor = torch.ones(3, 2)
    assert with_contiguous_gradient(tensor) is tensor and tensor._backward_hooks is None
