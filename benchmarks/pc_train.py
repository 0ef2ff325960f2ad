"""The training PC term alone: fused autograd function vs the plain-autograd reference,
forward + backward, interleaved in one process, median of repeats (one thread, float32).

    python -m benchmarks.pc_train
    python -m benchmarks.pc_train --batch-sizes 128 1024 --groups 3 3 --groups 1 1 1 1 1 1
    git show REV:facrnn/core/partial_correlation.py > /tmp/pc_rev.py
    python -m benchmarks.pc_train --batch-sizes 128 --compare-file /tmp/pc_rev.py   # + another version's fused PC
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import torch

from benchmarks.common import machine_description, median, print_table
from facrnn.core.partial_correlation import partial_correlation_minibatch, partial_correlation_minibatch_autograd

ESTIMATORS = {"fused": partial_correlation_minibatch, "autograd": partial_correlation_minibatch_autograd}
COMPARED = "compared file"


def load_minibatch_estimator(path: Path):
    """``partial_correlation_minibatch`` of another version of the module (a file of this repository's history)."""
    spec = importlib.util.spec_from_file_location("compared_partial_correlation", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"--compare-file {path}: not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module.partial_correlation_minibatch


def time_estimator(name: str, samples: torch.Tensor, means: torch.Tensor, group_sizes: list[int], calls: int) -> float:
    """Seconds per forward + backward."""
    estimator = ESTIMATORS[name]
    samples, means = samples.clone().requires_grad_(True), means.clone().requires_grad_(True)
    started = time.perf_counter()
    for _ in range(calls):
        estimator(samples, means, 0.5, group_sizes, 1000).backward()
    return (time.perf_counter() - started) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 512, 2048])
    parser.add_argument("--groups", type=int, nargs="+", action="append", help="group sizes (repeatable)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--compare-file", type=Path, help="another version of facrnn/core/partial_correlation.py, timed interleaved"
    )
    args = parser.parse_args()
    if args.compare_file is not None:
        ESTIMATORS[COMPARED] = load_minibatch_estimator(args.compare_file)
    groupings = args.groups or [[3, 3], [1] * 6]
    torch.set_num_threads(1)
    print(f"machine: {machine_description()}")
    rows = []
    for group_sizes in groupings:
        for batch_size in args.batch_sizes:
            generator = torch.Generator().manual_seed(batch_size)
            means = torch.randn(batch_size, sum(group_sizes), generator=generator)
            samples = means + 0.5 * torch.randn(batch_size, sum(group_sizes), generator=generator)
            calls = max(2, int(20000 / batch_size))
            timings: dict[str, list[float]] = {name: [] for name in ESTIMATORS}
            for name in ESTIMATORS:  # warm-up
                time_estimator(name, samples, means, group_sizes, 2)
            for _ in range(args.repeats):
                for name in ESTIMATORS:
                    timings[name].append(time_estimator(name, samples, means, group_sizes, calls))
            fused, reference = median(timings["fused"]), median(timings["autograd"])
            row = [str(group_sizes), batch_size, 1e3 * reference, 1e3 * fused, reference / fused]
            if COMPARED in timings:
                row += [1e3 * median(timings[COMPARED]), fused / median(timings[COMPARED])]
            rows.append(row)
    compared_columns = ["compared ms", "fused / compared"] if COMPARED in ESTIMATORS else []
    print_table(
        ["groups", "batch", "autograd ms", "fused ms", "speed-up", *compared_columns],
        rows,
        title=f"pc_train: forward + backward of the minibatch PC, median of {args.repeats}",
    )


if __name__ == "__main__":
    main()
