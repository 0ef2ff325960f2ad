"""How evaluation grows with the number of scored bins M: time and peak memory of
:func:`facrnn.evaluation.scoring.evaluate_model` and of its estimators, with the growth
exponent in M (log-log least squares).

    python -m benchmarks.eval_scaling                      # M = 10k, 100k (a few minutes on 2 cores)
    python -m benchmarks.eval_scaling --million            # + M = 1M (~7 min more)
    python -m benchmarks.eval_scaling --sizes 5000 20000   # other sizes
    python -m benchmarks.eval_scaling --exact 10000        # + the exact estimators at 10k (the old default)

Each size runs in a fresh process (its own peak RSS). The recording is a neuron-disjoint
grouped lrRNN teacher (``datamodules.grouped_teacher``, Gaussian, N = 20 neurons, K = 6 as
2 x 3 latents, the Lorenz and Thomas attractors) of 2M bins, one long sequence split even/odd
like the synthetic benchmark; the M odd bins are scored (``split=test``), by a model initialised at the teacher's weights
with a perturbation and the posterior width of M training bins. Everything of
``evaluate_model`` runs: fit, PC and TC, latent R², connectivity, rollout measures (k-step
R², free generation over the whole test length, mixture KLs, coupling, fixed points);
figures and the run directory's files are not part of it. ``peak MiB`` is the process's
peak RSS; ``eval MiB`` is the growth of the peak during ``evaluate_model`` (after data and
model were built). Estimator settings: ``EvalSettings()`` defaults (``--query-samples``,
``--max-centres``, ``--exact-max-points`` change them).
"""

from __future__ import annotations

import argparse
import resource
import time
from typing import Any

import numpy as np

from benchmarks.common import machine_description, print_table, run_in_child

#: timed parts of evaluate_model: (module, function) wrapped by a timer
TIMED = {
    "PC+TC s": ("facrnn.evaluation.scoring", "partial_correlation_estimate"),
    "mixture KLs s": ("facrnn.evaluation.dynamics", "gaussian_mixture_kl_estimate"),
    "free generation s": ("facrnn.evaluation.dynamics", "free_generation"),
    "coupling s": ("facrnn.evaluation.dynamics", "jacobians"),
}


def build_case(n_bins: int, seed: int = 0) -> dict[str, Any]:
    """Recording, split tensors and model of ``n_bins`` scored bins (see the module docstring)."""
    import torch

    from datamodules.grouped_teacher import generate_grouped_teacher
    from datamodules.recording import Recording
    from facrnn.core.model import LowRankRNN, encoder_input

    teacher = generate_grouped_teacher(
        n_groups=2,
        group_rank=3,
        neurons_per_group=10,
        n_steps=2 * n_bins,
        likelihood="gaussian",
        dynamics="chaotic",
        seed=seed,
    )
    x = teacher["x"][None]  # (1, 2M, N)
    recording = Recording(
        x=x,
        latents=teacher["latents"][None],
        A=teacher["A"],
        B=teacher["B"],
        group_sizes=[int(size) for size in teacher["group_sizes"]],
        single_sequence=True,
        source=f"grouped teacher, {2 * n_bins} bins",
    )
    test = np.arange(1, 2 * n_bins, 2)
    x_t = torch.from_numpy(x)
    tensors = {
        "x": x_t[0, test],
        "encoder_input": encoder_input(x_t, 1, "zero")[0, test],
        "latents": torch.from_numpy(teacher["latents"][test]),
        "trial": torch.zeros(len(test), dtype=torch.long),
        "time": torch.from_numpy(test),
    }
    model = LowRankRNN(n_neurons=x.shape[-1], group_sizes=[3, 3], n_samples=n_bins)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter, value in (
            (model.decoder.weight, teacher["A"]),
            (model.decoder.bias, teacher["a"]),
            (model.encoder.weight, teacher["B"]),
            (model.encoder.bias, teacher["b"]),
        ):
            value = torch.as_tensor(value, dtype=parameter.dtype)
            parameter.copy_(value + 0.05 * value.abs().mean() * torch.randn(value.shape, generator=generator))
    return {"recording": recording, "tensors": tensors, "model": model}


def eval_case(n_bins: int, settings_changes: dict[str, Any], threads: int) -> dict[str, Any]:
    """Time ``evaluate_model`` on ``n_bins`` bins and its parts (runs in a child process)."""
    import importlib

    import torch

    from facrnn.evaluation.scoring import evaluate_model
    from facrnn.evaluation.settings import EvalSettings

    torch.set_num_threads(threads)
    started = time.perf_counter()
    case = build_case(n_bins)
    build_s = time.perf_counter() - started
    seconds = dict.fromkeys(TIMED, 0.0)
    for label, (module_name, name) in TIMED.items():
        module = importlib.import_module(module_name)
        original = getattr(module, name)

        def timed(*args, _original=original, _label=label, **kwargs):
            begun = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                seconds[_label] += time.perf_counter() - begun

        setattr(module, name, timed)
    settings = EvalSettings(figures=False, **settings_changes)
    before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    evaluation = evaluate_model(case["model"], case["tensors"], case["recording"], settings)
    total_s = time.perf_counter() - started
    after_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    metrics = evaluation.metrics
    return {
        "build_s": build_s,
        "evaluate_s": total_s,
        **seconds,
        "eval_mib": (after_kib - before_kib) / 1024,
        "partial_corr": metrics["partial_corr"],
        "partial_corr_se": metrics["partial_corr_se"],
        "total_corr": metrics["total_corr"],
        "total_corr_se": metrics["total_corr_se"],
        "generation_state_kl": metrics.get("generation_state_kl", float("nan")),
        "generation_state_kl_se": metrics.get("generation_state_kl_se", float("nan")),
    }


def growth_exponent(values: list[float], costs: list[float]) -> float:
    """Slope of log(cost) against log(value)."""
    return float(np.polyfit(np.log(values), np.log(costs), 1)[0])


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000], help="scored bins M")
    parser.add_argument("--million", action="store_true", help="also M = 1,000,000")
    parser.add_argument("--exact", type=int, nargs="*", default=[], help="sizes also run with the exact estimators")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--query-samples", type=int, default=None)
    parser.add_argument("--max-centres", type=int, default=None)
    parser.add_argument("--exact-max-points", type=int, default=None)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    sizes = sorted(set(args.sizes + ([1_000_000] if args.million else [])))
    changes: dict[str, Any] = {}
    for key in ("query_samples", "max_centres", "exact_max_points"):
        if getattr(args, key) is not None:
            changes[key] = getattr(args, key)
    print(f"machine: {machine_description()}; evaluation threads: {args.threads}; settings: {changes or 'defaults'}")
    rows, results = [], {}
    cases = [(size, "default", changes) for size in sizes]
    cases += [(size, "exact", {**changes, "exact_max_points": size}) for size in args.exact]
    for size, label, case_changes in cases:
        result = run_in_child(eval_case, size, case_changes, args.threads)
        if label == "default":
            results[size] = result
        rows.append(
            [
                size,
                label,
                result["evaluate_s"],
                *(result[key] for key in TIMED),
                result["peak_rss_mib"],
                result["eval_mib"],
                f"{result['partial_corr']:.4f} ± {result['partial_corr_se']:.4f}",
                f"{result['total_corr']:.4f} ± {result['total_corr_se']:.4f}",
                f"{result['generation_state_kl']:.3f} ± {result['generation_state_kl_se']:.3f}",
            ]
        )
        print(
            f"M={size} ({label}): evaluate_model {result['evaluate_s']:.1f} s, peak RSS {result['peak_rss_mib']:.0f} MiB",
            flush=True,
        )
    headers = ["M", "estimators", "evaluate_model s", *TIMED, "peak MiB", "eval MiB", "PC ± SE", "TC ± SE", "state KL ± SE"]
    print_table(headers, rows, title="eval_scaling: evaluate_model, N = 20, K = 6 (2 x 3), float64 estimators")
    if len(results) >= 2:
        values = sorted(results)
        exponents = [["evaluate_model", growth_exponent(values, [results[m]["evaluate_s"] for m in values])]]
        exponents += [[key, growth_exponent(values, [max(results[m][key], 1e-6) for m in values])] for key in TIMED]
        exponents += [["peak RSS", growth_exponent(values, [results[m]["peak_rss_mib"] for m in values])]]
        print_table(["part", f"exponent in M ({values[0]}..{values[-1]})"], exponents, title="growth exponents")


if __name__ == "__main__":
    main()
