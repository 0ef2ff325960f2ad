"""How one training epoch grows with neurons N, samples M, batch size and latent dimension K:
time per epoch and peak memory, with fitted growth exponents (log-log least squares).

    python -m benchmarks.scaling                    # all five sweeps, several minutes
    python -m benchmarks.scaling --quick            # growth in M only (step and pipeline), ~2-3 min
    python -m benchmarks.scaling --sweeps batch K   # some of them
    python -m benchmarks.scaling --steps 100        # more steps timed per point

``M_pipeline`` is the real training path instead: ``facrnn.runs.pipeline.train`` (the
``train.py`` code path, ``experiment=synthetic_paper`` settings, CSV logger and checkpoints,
evaluation off) on a random ``(M, N)`` recording read through ``datamodule=from_file``
(train on even bins: 0.45 M training samples), ``--pipeline-epochs`` whole epochs timed
from the first to the last training batch; ``setup s`` is the rest of ``train`` (reading
the file, splits, loggers). Validation runs every 100 epochs in the paper settings and is
not included.

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
import tempfile
import time
from pathlib import Path
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
    "M_pipeline": ("n_samples", [1_000, 10_000, 100_000, 1_000_000], {}),
}
#: sweeps that run the real pipeline (pipeline_case) rather than bare training steps (step_case)
PIPELINE_SWEEPS = ("M_pipeline",)
QUICK = {"sweeps": ["M", "M_pipeline"], "steps": 10, "blocks": 2, "pipeline_epochs": 2}


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


def pipeline_case(n_neurons: int, n_samples: int, epochs: int, workdir: str) -> dict[str, Any]:
    """Train on a random ``(n_samples, n_neurons)`` recording through ``facrnn.runs.pipeline.train``
    for ``epochs`` epochs (runs in a child process)."""
    from benchmarks.common import FitTimer, compose_train_config, quiet_training_runs
    from facrnn.runs.pipeline import train

    quiet_training_runs()
    torch.set_num_threads(1)
    path = Path(workdir) / f"random_{n_samples}x{n_neurons}.npz"
    x = np.random.default_rng(0).standard_normal((n_samples, n_neurons)).astype(np.float32)
    np.savez(path, x=x)
    del x
    overrides = [
        "experiment=synthetic_paper",
        "datamodule=from_file",
        f"datamodule.path={path}",
        "logger=csv",
        "evaluate=false",
        f"trainer.max_epochs={epochs}",
        "threads=1",
        "+callbacks.fit_timer._target_=benchmarks.common.FitTimer",
        "~callbacks.progress_bar",
        "+trainer.enable_progress_bar=false",
    ]
    cfg = compose_train_config(overrides, Path(workdir) / f"run_{n_samples}x{n_neurons}")
    started = time.perf_counter()
    train(cfg)
    total = time.perf_counter() - started
    fit_s, steps = FitTimer.last["fit_s"], int(FitTimer.last["steps"])
    return {
        "step_s": fit_s / steps,
        "epoch_s": fit_s / epochs,
        "steps_per_epoch": steps // epochs,
        "setup_s": total - fit_s,
    }


def growth_exponent(values: list[float], costs: list[float]) -> float:
    """Slope of log(cost) against log(value)."""
    return float(np.polyfit(np.log(values), np.log(costs), 1)[0])


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--sweeps", nargs="+", default=None, choices=list(SWEEPS), help="default: all (--quick: M, M_pipeline)"
    )
    parser.add_argument("--steps", type=int, default=None, help="steps per timed block (20; --quick 10)")
    parser.add_argument("--blocks", type=int, default=None, help="timed blocks per point, median (3; --quick 2)")
    parser.add_argument("--pipeline-epochs", type=int, default=None, help="epochs per M_pipeline point (3; --quick 2)")
    parser.add_argument("--quick", action="store_true", help="growth in M only, fewer steps: a few minutes")
    args = parser.parse_args()
    defaults = QUICK if args.quick else {"sweeps": list(SWEEPS), "steps": 20, "blocks": 3, "pipeline_epochs": 3}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main() -> None:
    args = parse_args()
    print(f"machine: {machine_description()}; one thread per point", flush=True)
    workdir = tempfile.mkdtemp(prefix="facrnn_scaling_")
    summary = []
    for sweep in args.sweeps:
        key, values, fixed = SWEEPS[sweep]
        rows, epoch_costs, step_costs, memory = [], [], [], []
        for value in values:
            setting = {**BASE, **fixed, key: value}
            if sweep in PIPELINE_SWEEPS:
                result = run_in_child(pipeline_case, setting["n_neurons"], setting["n_samples"], args.pipeline_epochs, workdir)
            else:
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
                    result.get("setup_s", "-"),
                ]
            )
            epoch_costs.append(result["epoch_s"])
            step_costs.append(result["step_s"])
            memory.append(max(increment, 1.0))
            setup = f", {result['setup_s']:.2f} s set-up" if "setup_s" in result else ""
            print(f"{sweep}={value}: {1e3 * result['step_s']:.3f} ms/step, {result['epoch_s']:.3f} s/epoch{setup}", flush=True)
        print_table(
            [
                f"{sweep} (swept)",
                "M",
                "batch",
                "steps/epoch",
                "ms/step",
                "s/epoch",
                "peak RSS MiB",
                "peak - imports MiB",
                "setup s",
            ],
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
