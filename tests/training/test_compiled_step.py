"""``model.compile_step``: the fused step compiled by ``torch.compile`` computes what the eager
fused step computes (terms and gradients to round-off, the same random stream), falls back
to it when compilation fails, and is chosen by ``auto`` for long CPU runs only.

Compilation takes ~30 s per batch shape on a cold inductor cache, so the default suite
compiles the default model once here and once through the pipeline; the other variants are
``slow``.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import torch

from facrnn.core.fused_step import fused_loss_and_backward
from facrnn.core.losses import LOSS_TERMS
from facrnn.runs.pipeline import train
from facrnn.training import compiled_step
from facrnn.training.adam_step import fused_adam_step
from facrnn.training.compiled_step import AUTO_MIN_STEPS, CompiledFusedStep, compile_decision
from tests.core.test_fused_step import VARIANTS, assert_grads_close, fused_arguments, make_batch, make_module
from tests.helpers import TINY_DATA, compose_config


def eager_and_compiled(variant: str, step: CompiledFusedStep) -> tuple[dict, dict, dict, dict]:
    """Terms and gradients of the eager and of the compiled fused step on one batch, same noise."""
    module_kwargs, batch_kwargs = VARIANTS[variant]
    module = make_module(torch.float32, **module_kwargs)
    batch = make_batch(module, torch.float32, **batch_kwargs)
    results = []
    for run in (fused_loss_and_backward, step):
        torch.manual_seed(11)
        terms = run(module.model, batch, **fused_arguments(module))
        grads = {name: None if p.grad is None else p.grad.clone() for name, p in module.model.named_parameters()}
        results.append((terms, grads, torch.get_rng_state()))
    (eager_terms, eager_grads, eager_rng), (terms, grads, rng) = results
    assert torch.equal(rng, eager_rng)  # the noise is drawn outside the compiled code, as in eager
    return eager_terms, eager_grads, terms, grads


VARIANT_PARAMS = [
    "gaussian_identity",
    "copies_own_batches",
    *(pytest.param(name, marks=pytest.mark.slow) for name in ("poisson_external_clamped", "beta0_alpha")),
]


@pytest.mark.parametrize("variant", VARIANT_PARAMS)
def test_compiled_step_equals_the_eager_step(variant: str) -> None:
    eager_terms, eager_grads, terms, grads = eager_and_compiled(variant, CompiledFusedStep(fallback_on_error=False))
    assert tuple(terms) == LOSS_TERMS
    for name in LOSS_TERMS:  # inductor reorders sums: round-off, not bits
        torch.testing.assert_close(terms[name], eager_terms[name], rtol=1e-5, atol=1e-6, msg=name)
    # the encoder gradient is what torch 2.13's addmm pattern got wrong (INDUCTOR_OPTIONS)
    assert_grads_close(grads, eager_grads, torch.float32)


UPDATE_PARAMS = [
    "gaussian_identity",
    "poisson_external_clamped",  # no log_noise_std gradient: that parameter is left alone
    pytest.param("copies_own_batches", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("variant", UPDATE_PARAMS)
def test_compiled_step_and_adamw_update_equal_the_eager_ones(variant: str) -> None:
    """Four AdamW steps (weight decay on) of the step and update compiled together against the
    eager step + torch's fused AdamW kernel: parameters and optimizer state to round-off."""
    module_kwargs, batch_kwargs = VARIANTS[variant]
    runs = []
    for compiled in (False, True):
        module = make_module(torch.float32, **module_kwargs)
        optimizer = torch.optim.AdamW(module.parameters(), lr=1e-2, weight_decay=0.1, fused=True)
        batch = make_batch(module, torch.float32, **batch_kwargs)
        step = CompiledFusedStep(fallback_on_error=False)
        torch.manual_seed(11)
        for index in range(5):
            terms = (
                step.step_and_update(module.model, batch, **fused_arguments(module), optimizer=optimizer) if compiled else None
            )
            if terms is None:  # eager, and the compiled run's first step (no optimizer state yet)
                assert not compiled or index == 0
                fused_loss_and_backward(module.model, batch, **fused_arguments(module))
                fused_adam_step(optimizer)
        runs.append((module, optimizer, torch.get_rng_state()))
    (eager, eager_optimizer, eager_rng), (compiled, compiled_optimizer, rng) = runs
    assert torch.equal(rng, eager_rng)
    initial = make_module(torch.float32, **module_kwargs).model.state_dict()
    for (name, parameter), reference in zip(compiled.model.named_parameters(), eager.model.parameters()):
        torch.testing.assert_close(parameter, reference, rtol=1e-5, atol=1e-6, msg=name)
        state, reference_state = compiled_optimizer.state[parameter], eager_optimizer.state[reference]
        if reference.grad is None:  # Poisson log_noise_std: never stepped, no state, not moved
            assert not state and not reference_state and torch.equal(parameter, initial[name]), name
            continue
        assert float(state["step"]) == float(reference_state["step"]) == 5.0, name
        for key in ("exp_avg", "exp_avg_sq"):  # the gradients' round-off (relative to the largest entry)
            scale = float(reference_state[key].abs().max())
            torch.testing.assert_close(state[key], reference_state[key], rtol=1e-4, atol=1e-5 * scale, msg=f"{name} {key}")
        assert not torch.equal(parameter, initial[name]), name  # the update ran


def test_a_failed_compilation_falls_back_to_the_eager_step(monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    attempts = []

    def failing_compile(function, **options):
        def compiled(*args):
            attempts.append(options)
            raise RuntimeError("InductorError: no working C++ compiler")

        return compiled

    monkeypatch.setattr(compiled_step.torch, "compile", failing_compile)
    step = CompiledFusedStep(fallback_on_error=True)
    with caplog.at_level(logging.WARNING, logger=compiled_step.__name__):
        eager_terms, eager_grads, terms, grads = eager_and_compiled("gaussian_identity", step)
        eager_and_compiled("gaussian_identity", step)  # no second attempt once failed
    assert len(attempts) == 1 and attempts[0]["options"] == compiled_step.INDUCTOR_OPTIONS
    assert "training on with the eager one: InductorError: no working C++ compiler" in caplog.text
    for name in LOSS_TERMS:  # the eager step itself: bit for bit
        assert torch.equal(terms[name], eager_terms[name]), name
    for name, grad in grads.items():
        assert torch.equal(grad, eager_grads[name]), name

    with pytest.raises(RuntimeError, match="no working C"):  # model.compile_step=always: no silent fallback
        eager_and_compiled("gaussian_identity", CompiledFusedStep(fallback_on_error=False))


def test_a_failed_compilation_of_the_update_trains_on_eagerly(monkeypatch: pytest.MonkeyPatch) -> None:
    """step_and_update after a failed compilation: the eager step and torch's fused AdamW, bit
    for bit, from the same noise (it is drawn once, before the compiled code is tried)."""

    def failing_compile(function, **options):
        def compiled(*args):
            raise RuntimeError("InductorError: no working C++ compiler")

        return compiled

    monkeypatch.setattr(compiled_step.torch, "compile", failing_compile)
    runs = []
    for via_step_and_update in (False, True):
        module = make_module(torch.float32)
        optimizer = torch.optim.AdamW(module.parameters(), lr=1e-2, weight_decay=0.1, fused=True)
        batch = make_batch(module, torch.float32)
        step = CompiledFusedStep(fallback_on_error=True)
        torch.manual_seed(11)
        for _ in range(3):  # the first creates the optimizer's state, the second finds compilation failing
            if via_step_and_update:
                step.step_and_update(module.model, batch, **fused_arguments(module), optimizer=optimizer)
            else:
                fused_loss_and_backward(module.model, batch, **fused_arguments(module))
                fused_adam_step(optimizer)
        runs.append((module, torch.get_rng_state()))
    (eager, eager_rng), (fallback, rng) = runs
    assert torch.equal(rng, eager_rng)
    for (name, parameter), reference in zip(fallback.named_parameters(), eager.parameters()):
        assert torch.equal(parameter, reference), name


def test_auto_compiles_long_cpu_runs_only(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    expected = f"40,000 optimizer steps planned (auto compiles from {AUTO_MIN_STEPS:,})"
    assert compile_decision("auto", cpu, 40_000) == (True, expected)
    compile_it, why = compile_decision("auto", cpu, AUTO_MIN_STEPS - 1)
    assert not compile_it and "auto compiles from 20,000" in why
    assert compile_decision("auto", cpu, float("inf"))[0]
    assert compile_decision("always", cpu, 10) == (True, "model.compile_step=always")
    assert compile_decision("never", cpu, 10**9) == (False, "model.compile_step=never")
    compile_it, why = compile_decision("auto", torch.device("meta"), 10**9)
    assert not compile_it and why.startswith("device meta: auto compiles the CPU step only")
    monkeypatch.setattr(compiled_step.shutil, "which", lambda name: None)
    compile_it, why = compile_decision("auto", cpu, 10**9)
    assert not compile_it and why.startswith("no C++ compiler")


def test_bad_compile_step_is_a_one_line_error(tmp_path: Path) -> None:
    from facrnn.errors import ConfigError
    from facrnn.training.settings import ModelSettings

    with pytest.raises(ConfigError, match=r"model.compile_step='yes': expected one of auto, always, never"):
        ModelSettings(compile_step="yes")


def test_pipeline_trains_with_the_compiled_step(tmp_path: Path, caplog) -> None:
    quick = [*TINY_DATA, "threads=1", "logger=csv", "evaluate=false", "trainer.max_epochs=2", "seed=2"]
    quick.append(f"paths.cache_dir={tmp_path / 'cache'}")
    checkpoints = {}
    with caplog.at_level(logging.INFO, logger="facrnn.training.module"):
        for setting in ("always", "never", "auto"):
            cfg = compose_config("train", [*quick, f"model.compile_step={setting}"], tmp_path, setting)
            train(cfg)
            checkpoints[setting] = torch.load(tmp_path / setting / "checkpoints" / "last.ckpt", weights_only=True)
    assert "training step: compiled by torch.compile (model.compile_step=always)" in caplog.text
    assert "training step: eager (model.compile_step=never)" in caplog.text
    # auto counts the optimizer steps of the run (whole-epoch calls of several batches each)
    planned = re.search(r"training step: eager \(([\d,]+) optimizer steps planned, auto compiles from 20,000\)", caplog.text)
    assert planned is not None and int(planned.group(1).replace(",", "")) == checkpoints["auto"]["global_step"] > 2
    weights = {setting: checkpoint["state_dict"] for setting, checkpoint in checkpoints.items()}
    compiled, eager = weights["always"], weights["never"]
    assert compiled.keys() == eager.keys()
    assert any(not torch.equal(compiled[name], eager[name]) for name in compiled)  # the compiled code ran
    for name in compiled:  # round-off apart after 2 epochs of AdamW
        torch.testing.assert_close(compiled[name], eager[name], rtol=1e-4, atol=1e-5, msg=name)
