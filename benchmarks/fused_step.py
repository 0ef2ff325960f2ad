"""Training step: autograd against the hand-derived fused forward+backward
(:mod:`facrnn.core.fused_step`), in one process, interleaved, median of repeats.

Paper settings by default (N = 20 neurons, K = 6 latents in 2 groups of 3, beta = 20, batch 128,
AdamW(fused=True) lr 1e-3, float32, CPU, 1 thread). Each path has its own module, built
from the same seed, and runs the same precomputed batches (random data of the synthetic
benchmark's sizes; the arithmetic does not depend on the values):

- ``autograd``: ``optimizer.zero_grad(); module.loss_terms(batch)["loss"].sum().backward(); optimizer.step()``
  (what ``FacRNNModule.training_step`` does per batch with the plain backward);
- ``fused + optimizer.step()``: ``fused_loss_and_backward(...)`` (sets ``.grad``, no zero_grad), ``optimizer.step()``;
- ``fused + fused_adam_step``: the same with the AdamW kernel called directly;
- ``compiled + fused_adam_step``: the fused step compiled by ``torch.compile``
  (:class:`facrnn.training.compiled_step.CompiledFusedStep`, ``model.compile_step``);
- ``compiled step and AdamW update``: the step and the update in one compiled graph
  (``CompiledFusedStep.step_and_update``, what training with ``model.compile_step`` runs).
  Compilations (~30 s cold, ~1-3 s from torch's cache) are printed and not timed.
  ``--no-compile`` leaves both out.

    python -m benchmarks.fused_step                      # ~30 s
    python -m benchmarks.fused_step --repeats 21 --steps 500
    python -m benchmarks.fused_step --replicas 10 --alpha 1 --link relu
    python -m benchmarks.fused_step --no-compile
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from benchmarks.common import machine_description, median, print_table
from facrnn.core.fused_step import fused_loss_and_backward, fused_step_unsupported_reason
from facrnn.core.model import encoder_input
from facrnn.training.adam_step import fused_adam_step
from facrnn.training.compiled_step import CompiledFusedStep
from facrnn.training.module import FacRNNModule


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=11, help="interleaved repeats of every path")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps per timed repeat")
    parser.add_argument("--warmup", type=int, default=100, help="untimed steps of every path first")
    parser.add_argument("--neurons", type=int, default=20)
    parser.add_argument("--latent-dim", type=int, default=6)
    parser.add_argument("--groups", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--n-train", type=int, default=900, help="training bins M (synthetic_paper: ~900)")
    parser.add_argument("--beta", type=float, default=20.0)
    parser.add_argument("--alpha", type=float, default=0.0)
    parser.add_argument("--link", default="identity")
    parser.add_argument("--likelihood", default="gaussian")
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--no-compile", action="store_true", help="leave out the compiled step")
    return parser.parse_args()


def make_module(args: argparse.Namespace) -> FacRNNModule:
    torch.manual_seed(0)
    module = FacRNNModule(
        n_neurons=args.neurons,
        n_train=args.n_train,
        latent_dim=args.latent_dim,
        n_groups=args.groups,
        beta=args.beta,
        alpha=args.alpha,
        link=args.link,
        likelihood=args.likelihood,
        lr=1e-3,
        replicas=args.replicas,
        seed=0,
    )
    return module.to(getattr(torch, args.dtype))


def make_batches(args: argparse.Namespace, n_batches: int = 8) -> list[dict[str, torch.Tensor]]:
    """Batches of the synthetic benchmark's shapes, ``(batch, N)`` (shared by the copies)."""
    generator = torch.Generator().manual_seed(1)
    dtype = getattr(torch, args.dtype)
    x = torch.randn(1, args.n_train, args.neurons, generator=generator, dtype=dtype)
    if args.likelihood == "poisson":
        x = torch.poisson(torch.full_like(x, 2.0), generator=generator)
    inputs = encoder_input(x)[0]
    batches = []
    for _ in range(n_batches):
        rows = torch.randperm(args.n_train, generator=generator)[: args.batch_size]
        batches.append({"x": x[0, rows].contiguous(), "encoder_input": inputs[rows].contiguous()})
    return batches


def step_functions(args: argparse.Namespace, batches: list[dict[str, torch.Tensor]]) -> dict[str, Callable[[int], None]]:
    """One training step of each path, by name; ``step(i)`` trains on batch ``i mod len(batches)``."""
    paths: dict[str, Callable[[int], None]] = {}

    autograd_module = make_module(args)
    autograd_optimizer = autograd_module.configure_optimizers()

    def autograd_step(index: int) -> None:
        terms = autograd_module.loss_terms(batches[index % len(batches)])
        autograd_optimizer.zero_grad()
        terms["loss"].sum().backward()
        autograd_optimizer.step()

    paths["autograd"] = autograd_step

    reason = fused_step_unsupported_reason(autograd_module.model, batches[0])
    if reason is not None:
        print(f"fused path unsupported: {reason}")
        return paths

    def fused_path(
        use_kernel: bool, loss_and_backward: Callable[..., object] = fused_loss_and_backward
    ) -> Callable[[int], None]:
        module = make_module(args)
        optimizer = module.configure_optimizers()
        model, block_mask = module.model, module.block_mask
        beta, alpha, n_train = float(module.hparams.beta), float(module.hparams.alpha), int(module.hparams.n_train)

        def fused_step(index: int) -> None:
            loss_and_backward(model, batches[index % len(batches)], beta, alpha, n_train, block_mask)
            if use_kernel:
                fused_adam_step(optimizer)
            else:
                optimizer.step()

        return fused_step

    def compiled_update_path() -> Callable[[int], None]:
        """The step and the AdamW update compiled together (what training uses by default)."""
        module = make_module(args)
        optimizer = module.configure_optimizers()
        model, block_mask = module.model, module.block_mask
        beta, alpha, n_train = float(module.hparams.beta), float(module.hparams.alpha), int(module.hparams.n_train)
        step = CompiledFusedStep(fallback_on_error=False)

        def update(index: int) -> None:
            step.step_and_update(model, batches[index % len(batches)], beta, alpha, n_train, block_mask, optimizer)

        started = time.perf_counter()
        update(0)
        update(1)
        print(f"compilation of the compiled step and update: {time.perf_counter() - started:.1f} s (not timed below)")
        return update

    paths["fused + optimizer.step()"] = fused_path(False)
    paths["fused + fused_adam_step"] = fused_path(True)
    if not args.no_compile:
        compiled = fused_path(True, CompiledFusedStep(fallback_on_error=False))
        started = time.perf_counter()
        compiled(0)
        print(f"compilation of the compiled step: {time.perf_counter() - started:.1f} s (not timed below)")
        paths["compiled + fused_adam_step"] = compiled
        paths["compiled step and AdamW update"] = compiled_update_path()
    return paths


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    batches = make_batches(args)
    paths = step_functions(args, batches)
    print(f"machine: {machine_description()}")
    print(
        f"settings: N={args.neurons}, K={args.latent_dim} in {args.groups} groups, batch {args.batch_size}, "
        f"M={args.n_train}, beta={args.beta}, alpha={args.alpha}, {args.likelihood}/{args.link}, "
        f"replicas={args.replicas}, {args.dtype}; {args.repeats} interleaved repeats of {args.steps} steps"
    )
    for step in paths.values():
        for index in range(args.warmup):
            step(index)
    times: dict[str, list[float]] = {name: [] for name in paths}
    counter = 0
    for repeat in range(args.repeats):
        order = list(paths) if repeat % 2 == 0 else list(reversed(paths))  # alternate who goes first
        for name in order:
            step = paths[name]
            started = time.perf_counter()
            for index in range(counter, counter + args.steps):
                step(index)
            times[name].append(1e3 * (time.perf_counter() - started) / args.steps)
        counter += args.steps
    reference = times["autograd"]
    rows = []
    for name, values in times.items():
        ratios = [ref / value for ref, value in zip(reference, values)]
        rows.append([name, median(values), min(values), max(values), median(ratios)])
    print_table(
        ["path", "median ms/step", "min", "max", "speed-up (median of per-repeat autograd / path)"],
        rows,
        title="fused_step: one training step (loss, gradients, AdamW update)",
    )
    for name in list(paths)[1:]:
        print(f"autograd / {name}: {median(reference) / median(times[name]):.3f} (ratio of medians)")


if __name__ == "__main__":
    main()
