"""The fused (hand-derived) training step equals autograd through ``FacRNNModule.loss_terms``.

Loss terms bit for bit, gradients to round-off, the same posterior-noise draws, a finite
difference check of the hand-written gradient, and the direct fused AdamW update bit for bit
equal to ``optimizer.step()``.
"""

from __future__ import annotations

import pytest
import torch

from facrnn.core.fused_step import (
    fused_batch_unsupported_reason,
    fused_loss_and_backward,
    fused_loss_and_grads,
    fused_step_supported,
    fused_step_unsupported_reason,
    model_parameters,
)
from facrnn.core.losses import LOSS_TERMS
from facrnn.core.model import LowRankRNN
from facrnn.training.adam_step import fused_adam_step, fused_adam_unsupported_reason
from facrnn.training.module import FacRNNModule

N_NEURONS, BATCH, N_TRAIN = 7, 24, 300

#: name -> (FacRNNModule keyword arguments, batch options)
VARIANTS = {
    "gaussian_identity": ({}, {}),
    "gaussian_relu": ({"link": "relu"}, {}),
    "gaussian_softplus_external": ({"link": "softplus"}, {"external": 0.5}),
    "poisson_softplus": ({"likelihood": "poisson", "link": "softplus"}, {}),
    # external input -1.5 puts part of the rates below the clamp of poisson_nll (zero gradient there)
    "poisson_external_clamped": ({"likelihood": "poisson", "link": "softplus"}, {"external": -1.5}),
    "identity_external": ({}, {"external": 1.0}),
    "beta0": ({"beta": 0.0}, {}),
    "beta0_alpha": ({"beta": 0.0, "alpha": 2.0}, {}),
    "alpha_and_beta": ({"alpha": 2.0}, {}),
    "three_unequal_groups": ({"latent_dim": 6, "n_groups": None, "group_sizes": [1, 2, 3]}, {}),
    "one_group": ({"n_groups": 1}, {}),
    "copies_shared_batch": ({"replicas": 3, "alpha": 1.0}, {}),
    "copies_own_batches": ({"replicas": 2, "restarts": 2, "link": "relu"}, {"per_copy": True, "external": 0.3}),
    "copies_poisson": ({"replicas": 3, "likelihood": "poisson", "link": "softplus"}, {"per_copy": True}),
}


def make_module(dtype: torch.dtype, **kwargs) -> FacRNNModule:
    torch.manual_seed(0)
    settings = {"latent_dim": 6, "n_groups": 2, "beta": 20.0, "seed": 0, **kwargs}
    module = FacRNNModule(n_neurons=N_NEURONS, n_train=N_TRAIN, **settings).to(dtype)
    with torch.no_grad():  # log_noise_std away from its constant init, so every gradient is generic
        for parameter in module.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, dtype=dtype))
    return module


def make_batch(module: FacRNNModule, dtype: torch.dtype, external: float | None = None, per_copy: bool = False):
    generator = torch.Generator().manual_seed(3)
    shape = (module.n_copies, BATCH, N_NEURONS) if per_copy else (BATCH, N_NEURONS)
    if module.hparams.likelihood == "poisson":
        x = torch.poisson(torch.full(shape, 1.5, dtype=torch.float64), generator=generator).to(dtype)
    else:
        x = torch.randn(shape, generator=generator, dtype=dtype)
    batch = {"x": x, "encoder_input": torch.tanh(torch.randn(shape, generator=generator, dtype=dtype))}
    if external is not None:
        batch["external_input"] = external * torch.rand(shape, generator=generator, dtype=dtype)
    return batch


def autograd_reference(module: FacRNNModule, batch, beta: float | None = None):
    torch.manual_seed(11)
    terms = module.loss_terms(batch, beta=beta)
    module.zero_grad(set_to_none=True)
    terms["loss"].sum().backward()
    grads = {name: None if p.grad is None else p.grad.clone() for name, p in module.model.named_parameters()}
    return {name: value.detach() for name, value in terms.items()}, grads, torch.get_rng_state()


def fused_arguments(module: FacRNNModule, beta: float | None = None) -> dict:
    beta = float(module.hparams.beta) if beta is None else beta
    return {
        "beta": beta,
        "alpha": float(module.hparams.alpha),
        "n_train": int(module.hparams.n_train),
        "block_mask": module.block_mask,
        "partial_corr": float(module.hparams.beta) > 0,
    }


def assert_grads_close(fused, reference, dtype: torch.dtype) -> None:
    assert fused.keys() == reference.keys()
    rtol, atol = (1e-10, 1e-10) if dtype == torch.float64 else (1e-5, 1e-5)
    for name, expected in reference.items():
        if expected is None:
            assert fused[name] is None, name
            continue
        assert fused[name].shape == expected.shape and fused[name].dtype == expected.dtype, name
        # gradients of the loss scale (~1e2 with beta = 20): relative to the largest entry
        scale = float(expected.abs().max()) or 1.0
        torch.testing.assert_close(fused[name], expected, rtol=rtol, atol=atol * scale, msg=name)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_terms_and_gradients_equal_autograd(variant: str, dtype: torch.dtype) -> None:
    module_kwargs, batch_kwargs = VARIANTS[variant]
    module = make_module(dtype, **module_kwargs)
    batch = make_batch(module, dtype, **batch_kwargs)
    assert fused_step_supported(module.model, batch)
    reference_terms, reference_grads, reference_rng = autograd_reference(module, batch)

    torch.manual_seed(11)
    terms, grads = fused_loss_and_grads(module.model, batch, **fused_arguments(module))

    assert torch.equal(torch.get_rng_state(), reference_rng)  # the same noise draw, nothing more
    assert tuple(terms) == LOSS_TERMS
    for name in LOSS_TERMS:  # the same operations in the same order: bit for bit
        assert not terms[name].requires_grad
        assert torch.equal(terms[name], reference_terms[name]), name
    assert bool(torch.isfinite(terms["loss"]).all())
    assert_grads_close(grads, reference_grads, dtype)
    # the variant exercises what it names
    with_pc = module_kwargs.get("beta", 20.0) > 0 and module_kwargs.get("n_groups", 2) != 1
    assert bool((terms["partial_corr"] != 0).all()) == with_pc
    assert bool((terms["overlap"] > 0).all()) == (module_kwargs.get("alpha", 0.0) > 0)


def test_poisson_clamp_is_exercised() -> None:
    module = make_module(torch.float64, likelihood="poisson", link="softplus")
    batch = make_batch(module, torch.float64, external=-1.5)
    with torch.no_grad():
        means = module.model.encode(batch["encoder_input"])
        rate = module.model.decode(means, batch["external_input"])
    assert 0.05 < float((rate < 1e-8).double().mean()) < 0.95


def test_warmup_beta_weights_the_computed_pc_term() -> None:
    # loss_terms(beta=...) computes the PC term whenever model.beta > 0 and weights it by the ramp's beta
    module = make_module(torch.float64)
    batch = make_batch(module, torch.float64)
    reference_terms, reference_grads, _ = autograd_reference(module, batch, beta=2.5)
    torch.manual_seed(11)
    terms, grads = fused_loss_and_grads(module.model, batch, **fused_arguments(module, beta=2.5))
    for name in LOSS_TERMS:
        assert torch.equal(terms[name], reference_terms[name]), name
    assert_grads_close(grads, reference_grads, torch.float64)


@pytest.mark.parametrize("likelihood, link", [("gaussian", "identity"), ("poisson", "softplus")])
def test_backward_sets_grad_without_zero_grad(likelihood: str, link: str) -> None:
    module = make_module(torch.float64, likelihood=likelihood, link=link, alpha=1.0)
    batch = make_batch(module, torch.float64)
    _, reference_grads, _ = autograd_reference(module, batch)
    for parameter in module.parameters():  # stale gradients from an earlier step
        parameter.grad = torch.full_like(parameter, 7.0)
    torch.manual_seed(11)
    terms = fused_loss_and_backward(module.model, batch, **fused_arguments(module))
    assert set(terms) == set(LOSS_TERMS)
    grads = {name: p.grad for name, p in module.model.named_parameters()}
    assert_grads_close(grads, reference_grads, torch.float64)
    if likelihood == "poisson":  # as zero_grad(set_to_none=True) + a backward that does not reach it
        assert module.model.log_noise_std.grad is None


class _FusedLoss(torch.autograd.Function):
    """The fused loss as a function of (B, b, A, a, s), with the fused gradient as its backward."""

    @staticmethod
    def forward(ctx, model, batch, noise, settings, *parameters):  # type: ignore[override]
        with torch.no_grad():
            for target, value in zip(model_parameters(model), parameters):
                target.copy_(value)
        terms, grads = fused_loss_and_grads(model, batch, noise=noise, **settings)
        ctx.grads = [torch.zeros_like(p) if g is None else g for p, g in zip(parameters, grads.values())]
        return terms["loss"].clone()

    @staticmethod
    def backward(ctx, grad_output):  # type: ignore[override]
        return (None, None, None, None, *(grad_output * grad for grad in ctx.grads))


@pytest.mark.parametrize(
    "likelihood, link, external",
    [("gaussian", "softplus", 0.7), ("gaussian", "identity", None), ("poisson", "softplus", 0.4)],
)
def test_gradient_against_finite_differences(likelihood: str, link: str, external: float | None) -> None:
    torch.manual_seed(2)
    model = LowRankRNN(4, [1, 2], n_samples=50, link=link, likelihood=likelihood).double()
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(6, 4, generator=generator, dtype=torch.float64)
    if likelihood == "poisson":
        x = torch.poisson(torch.full((6, 4), 2.0, dtype=torch.float64), generator=generator)
    batch = {"x": x, "encoder_input": torch.tanh(torch.randn(6, 4, generator=generator, dtype=torch.float64))}
    if external is not None:
        batch["external_input"] = external * torch.rand(6, 4, generator=generator, dtype=torch.float64)
    noise = torch.randn(6, 3, generator=generator, dtype=torch.float64)
    mask = torch.zeros(3, 3, dtype=torch.float64)
    mask[0, 0], mask[1:, 1:] = 1.0, 1.0
    settings = {"beta": 3.0, "alpha": 1.5, "n_train": 40, "block_mask": mask}
    inputs = [p.detach().clone().requires_grad_(True) for p in model_parameters(model)]
    if likelihood == "poisson":  # no gradient: gradcheck's analytical zero must match the numerical one
        assert fused_loss_and_grads(model, batch, noise=noise, **settings)[1]["log_noise_std"] is None

    def loss(*parameters: torch.Tensor) -> torch.Tensor:
        return _FusedLoss.apply(model, batch, noise, settings, *parameters)

    assert torch.autograd.gradcheck(loss, inputs, eps=1e-6, atol=1e-7, rtol=1e-6)


def test_training_trajectory_and_random_stream_match_autograd() -> None:
    # 15 steps with the fused loss and the direct AdamW kernel against autograd + optimizer.step(),
    # float64: the same posterior noise at every step, parameters equal to round-off
    dtype = torch.float64
    reference_module, fused_module = make_module(dtype, alpha=0.5), make_module(dtype, alpha=0.5)
    batches = [make_batch(reference_module, dtype, external=0.2)]
    generator = torch.Generator().manual_seed(8)
    for _ in range(2):
        batches.append({k: v[torch.randperm(BATCH, generator=generator)] for k, v in batches[0].items()})
    initial = [p.detach().clone() for p in fused_module.parameters()]
    reference_optimizer = reference_module.configure_optimizers()
    fused_optimizer = fused_module.configure_optimizers()
    arguments = fused_arguments(fused_module)
    for step in range(15):
        batch = batches[step % len(batches)]
        torch.manual_seed(100 + step)
        reference_terms = reference_module.loss_terms(batch)
        reference_optimizer.zero_grad()
        reference_terms["loss"].backward()
        reference_optimizer.step()
        reference_rng = torch.get_rng_state()
        torch.manual_seed(100 + step)
        terms = fused_loss_and_backward(fused_module.model, batch, **arguments)
        fused_adam_step(fused_optimizer)
        assert torch.equal(torch.get_rng_state(), reference_rng)
        torch.testing.assert_close(terms["loss"], reference_terms["loss"].detach(), rtol=1e-11, atol=1e-11)
    for reference, fused, start in zip(reference_module.parameters(), fused_module.parameters(), initial):
        torch.testing.assert_close(fused, reference, rtol=1e-10, atol=1e-10)
        assert (fused - start).abs().max() > 1e-3  # trained, not a trivial agreement


def _random_grads(module: FacRNNModule, generator: torch.Generator, skip: str | None = None) -> list:
    grads = []
    for name, parameter in module.model.named_parameters():
        grads.append(None if name == skip else torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))
    return grads


@pytest.mark.parametrize(
    "settings, skip",
    [
        ({"optimizer": "adamw"}, None),
        ({"optimizer": "adam", "weight_decay": 0.05}, None),
        ({"optimizer": "adamw", "likelihood": "poisson", "link": "softplus"}, "log_noise_std"),
        ({"optimizer": "adamw", "replicas": 3}, None),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_fused_adam_step_is_bitwise_optimizer_step(settings: dict, skip: str | None, dtype: torch.dtype) -> None:
    modules = [make_module(dtype, **settings) for _ in range(2)]
    optimizers = [module.configure_optimizers() for module in modules]
    assert all(group["fused"] for group in optimizers[1].param_groups)
    assert fused_adam_unsupported_reason(optimizers[1]) is None
    generator = torch.Generator().manual_seed(5)
    for _ in range(6):
        grads = _random_grads(modules[0], generator, skip)
        for module in modules:
            for parameter, grad in zip(module.model.parameters(), grads):
                parameter.grad = None if grad is None else grad.clone()
        optimizers[0].step()
        fused_adam_step(optimizers[1])
    for reference, fused in zip(modules[0].parameters(), modules[1].parameters()):
        assert torch.equal(fused, reference)
        reference_state, fused_state = optimizers[0].state[reference], optimizers[1].state[fused]
        assert reference_state.keys() == fused_state.keys()
        for key in reference_state:
            assert torch.equal(fused_state[key], reference_state[key]), key
            assert fused_state[key].dtype == reference_state[key].dtype
    if skip is not None:  # never stepped: no state, no weight decay
        skipped = modules[1].model.log_noise_std
        assert len(optimizers[1].state[skipped]) == 0
        assert torch.equal(skipped, make_module(dtype, **settings).model.log_noise_std)
    step = optimizers[1].state[model_parameters(modules[1].model)[0]]["step"]
    assert float(step) == 6.0


def test_fused_adam_step_falls_back_where_unsupported() -> None:
    module = make_module(torch.float32)
    parameters = list(module.parameters())
    plain = torch.optim.AdamW(parameters, lr=1e-3, fused=False)
    assert fused_adam_unsupported_reason(plain) is not None
    assert fused_adam_unsupported_reason(torch.optim.SGD(parameters, lr=0.1)) is not None
    hooked = torch.optim.AdamW(parameters, lr=1e-3, fused=True)
    calls = []
    hooked.register_step_post_hook(lambda *args: calls.append(1))
    assert fused_adam_unsupported_reason(hooked) == "optimizer step hooks are registered"
    for parameter in parameters:
        parameter.grad = torch.ones_like(parameter)
    before = [p.detach().clone() for p in parameters]
    fused_adam_step(hooked)  # falls back to optimizer.step(): the hook runs
    assert calls == [1]
    assert all(not torch.equal(p, b) for p, b in zip(parameters, before))


def test_supported_cases() -> None:
    module = make_module(torch.float32)
    batch = make_batch(module, torch.float32)
    assert fused_step_unsupported_reason(module.model, batch) is None
    assert fused_batch_unsupported_reason(module.model, batch) is None
    windows = {**batch, "target_mask": torch.ones(BATCH, dtype=torch.bool)}
    assert "rollout" in fused_step_unsupported_reason(module.model, windows)
    assert fused_step_unsupported_reason(module.model, {k: v.double() for k, v in batch.items()}) is not None
    mlp = make_module(torch.float32, encoder="mlp")
    assert not fused_step_supported(mlp.model, batch)
    copies = make_module(torch.float32, replicas=3)
    assert fused_step_supported(copies.model, batch)
    assert fused_step_supported(copies.model, {k: v.expand(3, *v.shape) for k, v in batch.items()})
    assert not fused_step_supported(copies.model, {k: v.expand(4, *v.shape) for k, v in batch.items()})
    module.model.log_noise_std.requires_grad_(False)
    assert not fused_step_supported(module.model)


def test_overlap_needs_the_block_mask() -> None:
    module = make_module(torch.float32, alpha=1.0)
    with pytest.raises(ValueError, match="block_mask"):
        fused_loss_and_grads(module.model, make_batch(module, torch.float32), beta=20.0, alpha=1.0, n_train=N_TRAIN)
