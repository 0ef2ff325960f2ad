"""Where the time of a training run goes: cProfile of ``facrnn.runs.pipeline.train`` (the
``train.py`` code path, evaluation off), after one unprofiled warm-up run.

    python -m benchmarks.profile_train                                  # 200 epochs of synthetic_paper
    python -m benchmarks.profile_train --sort tottime --override model.replicas=10
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import tempfile
import warnings
from pathlib import Path

from benchmarks.common import compose_train_config, machine_description
from facrnn.runs.pipeline import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--experiment", default="synthetic_paper")
    parser.add_argument("--logger", default="default", help="logger config (default = csv + wandb offline)")
    parser.add_argument("--sort", default="cumulative", help="pstats sort key: cumulative or tottime")
    parser.add_argument("--lines", type=int, default=40, help="functions to list")
    parser.add_argument("--override", action="append", default=[], help="extra Hydra override (repeatable)")
    args = parser.parse_args()
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    warnings.filterwarnings("ignore")
    overrides = [
        f"experiment={args.experiment}",
        f"logger={args.logger}",
        f"trainer.max_epochs={args.epochs}",
        "evaluate=false",
        *args.override,
    ]
    workdir = Path(tempfile.mkdtemp(prefix="facrnn_profile_"))
    print(f"machine: {machine_description()}")
    print(f"config: {' '.join(overrides)}")
    train(compose_train_config(overrides, workdir / "warm"))  # data cache, imports, allocator
    profiler = cProfile.Profile()
    profiler.enable()
    train(compose_train_config(overrides, workdir / "profiled"))
    profiler.disable()
    pstats.Stats(profiler).sort_stats(args.sort).print_stats(args.lines)


if __name__ == "__main__":
    main()
