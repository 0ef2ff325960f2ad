"""How one training epoch grows with neurons N, samples M, batch size and latent dimension K:
time per epoch and peak memory, with fitted growth exponents (log-log least squares).

    python -m benchmarks.scaling                    # all four sweeps, a few minutes
    python -m benchmarks.scaling --sweeps batch K   # some of them
    python -m benchmarks.scaling --steps 100        # more steps timed per point

Each point runs in a fresh process (its own peak RSS) with random data of the given shape
(the step's cost does not depend on the values) and the pipeline's training computation
(``FacRNNModule.loss_terms`` + its optimizer, one thread). Time per epoch = the epoch's
``randperm`` + ``ceil(M / batch)`` x the median step time of timed blocks (large M cannot
afford whole epochs by default). Fixed settings unless swept: N = 20, M = 1,000, batch 128,
K = 6 in 2 groups (the synthetic paper benchmark).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from typing import Any

import numpy as np
import torch

from benchmarks.common import machine_description, print_table, run_in_child
from facrnn.training.module import FacRNNModule

BASE = {"n_neurons": 20, "n_samples": 1000, "batch_size": 128, "latent_dim": 6}
SWEEPS = {
    "N": ("n_neurons", [20, 100, 500, 2000], {}),
    "M": ("n_samples", [1_000, 10_000, 100_000, 1_000_000], {}),
    "batch": ("batch_size", [128, 512, 1024, 2048, 4096], {"n_samples": 16_384}),
    "K": ("latent_dim", [2, 4, 8, 16], {}),
}


def step_case(n_neurons: int, n_samples: int, batch_size: int, latent_dim: int, steps: int, blocks: int) -> dict[str, Any]:
    """Time training steps of one configuration (runs in a child process)."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x = torch.randn(n_samples, n_neurons)
    tensors = {"x": x, "encoder_input": torch.tanh(x)}
    module = FacRNNModule(n_neurons=n_neurons, n_train=n_samples, latent_dim=latent_dim, n_groups=2, lr=1e-3)
    optimizer = module.configure_optimizers()

    def run_steps(count: int, order: torch.Tensor) -> None:
        for indices in order[: count * batch_size].split(batch_size):
            batch = {key: value[indices] for key, value in tensors.items()}
            loss = module.loss_terms(batch)["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    def order_for(count: int) -> torch.Tensor:  # enough indices for `count` batches
        repeats = math.ceil(count * batch_size / n_samples)
        return torch.cat([torch.randperm(n_samples) for _ in range(repeats)])

    run_steps(3, order_for(3))  # warm-up
    step_seconds = []
    for _ in range(blocks):
        order = order_for(steps)
        started = time.perf_counter()
        run_steps(steps, order)
        step_seconds.append((time.perf_counter() - started) / steps)
    started = time.perf_counter()
    torch.randperm(n_samples).split(batch_size)
    permutation_seconds = time.perf_counter() - started
    step = statistics.median(step_seconds)
    steps_per_epoch = math.ceil(n_samples / batch_size)
    return {"step_s": step, "epoch_s": permutation_seconds + steps_per_epoch * step, "steps_per_epoch": steps_per_epoch}


def growth_exponent(values: list[float], costs: list[float]) -> float:
    """Slope of log(cost) against log(value)."""
    return float(np.polyfit(np.log(values), np.log(costs), 1)[0])


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweeps", nargs="+", default=list(SWEEPS), choices=list(SWEEPS))
    parser.add_argument("--steps", type=int, default=20, help="steps per timed block")
    parser.add_argument("--blocks", type=int, default=3, help="timed blocks per point (median)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    print(f"machine: {machine_description()}; one thread per point")
    summary = []
    for sweep in args.sweeps:
        key, values, fixed = SWEEPS[sweep]
        rows, epoch_costs, step_costs, memory = [], [], [], []
        for value in values:
            setting = {**BASE, **fixed, key: value}
            result = run_in_child(step_case, *setting.values(), args.steps, args.blocks)
            increment = result["peak_rss_mib"] - result["baseline_rss_mib"]
            rows.append(
                [
                    value,
                    setting["n_samples"],
                    setting["batch_size"],
                    result["steps_per_epoch"],
                    1e3 * result["step_s"],
                    result["epoch_s"],
                    result["peak_rss_mib"],
                    increment,
                ]
            )
            epoch_costs.append(result["epoch_s"])
            step_costs.append(result["step_s"])
            memory.append(max(increment, 1.0))
            print(f"{sweep}={value}: {1e3 * result['step_s']:.3f} ms/step, {result['epoch_s']:.3f} s/epoch", flush=True)
        print_table(
            [f"{sweep} (swept)", "M", "batch", "steps/epoch", "ms/step", "s/epoch", "peak RSS MiB", "peak - imports MiB"],
            rows,
            title=f"scaling in {sweep} (others: N={BASE['n_neurons']}, M={fixed.get('n_samples', BASE['n_samples'])}, "
            f"batch={BASE['batch_size']}, K={BASE['latent_dim']})",
        )
        tail = slice(len(values) // 2, None)  # the asymptotic half of the sweep
        summary.append(
            [
                sweep,
                f"{values[0]}..{values[-1]}",
                growth_exponent(values, epoch_costs),
                growth_exponent(values[tail], epoch_costs[tail]),
                growth_exponent(values, step_costs),
                growth_exponent(values[tail], step_costs[tail]),
                growth_exponent(values, memory),
            ]
        )
    print_table(
        ["swept", "range", "epoch time exponent", "(upper half)", "step time exponent", "(upper half)", "memory exponent"],
        summary,
        title="fitted growth exponents: cost ~ value^exponent",
    )


if __name__ == "__main__":
    main()
