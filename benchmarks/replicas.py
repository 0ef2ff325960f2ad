"""Many seeds at once: ``model.replicas=R`` (one process, batched weights) against R
sequential plain runs of the same configuration, through the real pipeline (``train.py``
code path, logging and checkpointing on, evaluation off).

    python -m benchmarks.replicas                         # R = 10, 300 epochs, 3 plain repeats (~3 min)
    python -m benchmarks.replicas --replicas 10 --epochs 5000 --plain-runs 10   # the full claim

Sequential throughput is measured on ``--plain-runs`` plain runs with seeds ``0, 1, ...``
(median wall time per run, times R); the replicated run trains seeds ``0 .. R-1``. The last
table compares each seed's final training objective and validation loss between the two,
which must agree within seed-to-seed noise.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import open_dict

from benchmarks.common import (
    compose_train_config,
    machine_description,
    median,
    pipeline_overrides,
    print_table,
    quiet_training_runs,
)
from facrnn.runs.pipeline import instantiate_datamodule, train
from facrnn.training.runtime import training_threads


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=300, help="epochs per run (paper: 5000)")
    parser.add_argument("--plain-runs", type=int, default=3, help="sequential plain runs measured (seeds 0..)")
    parser.add_argument("--model", default="facrnn")
    parser.add_argument("--logger", default="default", help="logger config (default = csv + wandb offline)")
    parser.add_argument("--experiment", default="synthetic_paper")
    parser.add_argument("--override", action="append", default=[], help="extra Hydra override (repeatable)")
    return parser.parse_args()


def last_values(metrics_csv: Path) -> dict[str, float]:
    """Last logged ``train/loss`` and ``val/loss`` of a CSV log."""
    result: dict[str, float] = {}
    with metrics_csv.open() as handle:
        for row in csv.DictReader(handle):
            for name in ("train/loss", "val/loss"):
                if row.get(name):
                    result[name] = float(row[name])
    return result


def main() -> None:
    args = parse_args()
    quiet_training_runs()
    workdir = Path(tempfile.mkdtemp(prefix="facrnn_replicas_"))
    overrides = pipeline_overrides(args)
    print(f"machine: {machine_description()}")
    print(f"config: {' '.join(overrides)}; runs in {workdir}")
    warm = compose_train_config(overrides, workdir / "warm")
    torch.set_num_threads(training_threads(warm.threads, 1))
    instantiate_datamodule(warm.datamodule)  # fit the teacher / fill the data cache outside the timings

    plain_seconds, plain_dirs = [], []
    for seed in range(args.plain_runs):
        cfg = compose_train_config([*overrides, f"seed={seed}"], workdir / f"plain_seed{seed}")
        started = time.perf_counter()
        train(cfg)
        plain_seconds.append(time.perf_counter() - started)
        plain_dirs.append(Path(cfg.paths.output_dir))
        print(f"plain run seed {seed}: {plain_seconds[-1]:.1f} s", flush=True)

    cfg = compose_train_config([*overrides, f"model.replicas={args.replicas}", "seed=0"], workdir / "replicated")
    with open_dict(cfg):
        cfg.seed = 0
    started = time.perf_counter()
    result = train(cfg)
    replicated_seconds = time.perf_counter() - started
    print(f"replicated run (R={args.replicas}): {replicated_seconds:.1f} s", flush=True)

    sequential = args.replicas * median(plain_seconds)
    print_table(
        ["path", "runs", "epochs", "wall s", "runs per hour", "s at 5,000 epochs (all runs)"],
        [
            [
                f"{args.replicas} sequential plain runs (median x {args.replicas})",
                args.replicas,
                args.epochs,
                sequential,
                3600 * args.replicas / sequential,
                sequential * 5000 / args.epochs,
            ],
            [
                f"model.replicas={args.replicas}",
                args.replicas,
                args.epochs,
                replicated_seconds,
                3600 * args.replicas / replicated_seconds,
                replicated_seconds * 5000 / args.epochs,
            ],
        ],
        title=f"replicas: {args.experiment}, model={args.model}, logger={args.logger}",
    )
    print(f"throughput, replicated / sequential: {sequential / replicated_seconds:.2f}x")

    rows = []
    replica_dirs = [Path(path) for path in result["replica_run_dirs"]]
    for seed, plain_dir in enumerate(plain_dirs):
        plain = last_values(plain_dir / "csv" / "metrics.csv")
        replica = last_values(replica_dirs[seed] / "csv" / "metrics.csv")
        rows.append([seed, plain.get("train/loss"), replica.get("train/loss"), plain.get("val/loss"), replica.get("val/loss")])
    print_table(
        ["seed", "plain train/loss", "replica train/loss", "plain val/loss", "replica val/loss"],
        rows,
        title="same seeds, plain run vs replica (last logged epoch)",
    )


if __name__ == "__main__":
    main()
