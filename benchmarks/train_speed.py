"""Training speed: the real pipeline (``facrnn.runs.pipeline.train``, the ``train.py`` code path
with logging and checkpointing on) against a bare PyTorch loop of the same computation, in
one process, interleaved, median of repeats.

    python -m benchmarks.train_speed                      # 500 epochs x 3 repeats (~2 min)
    python -m benchmarks.train_speed --epochs 5000 --repeats 1   # one full paper run each
    python -m benchmarks.train_speed --model lrrnn --logger csv  # other model / loggers
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import open_dict

from benchmarks.common import (
    FitTimer,
    add_pipeline_arguments,
    bare_loop,
    compose_train_config,
    machine_description,
    median,
    pipeline_overrides,
    print_table,
    quiet_training_runs,
)
from facrnn.core.copies import configured_copies
from facrnn.runs.pipeline import instantiate_datamodule, instantiate_module, train
from facrnn.training.runtime import training_threads


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=500, help="epochs per measured run (paper: 5000)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of each of pipeline and bare loop")
    add_pipeline_arguments(parser)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    quiet_training_runs()
    workdir = Path(tempfile.mkdtemp(prefix="facrnn_train_speed_"))
    overrides = pipeline_overrides(args, "+callbacks.fit_timer._target_=benchmarks.common.FitTimer")
    print(f"machine: {machine_description()}")
    print(f"config: {' '.join(overrides)}; runs in {workdir}")

    # Warm the data cache (teacher fit on first use) outside the measurements.
    warm_cfg = compose_train_config(overrides, workdir / "warm")
    torch.set_num_threads(training_threads(warm_cfg.threads, 1))
    datamodule = instantiate_datamodule(warm_cfg.datamodule)
    train_tensors = datamodule.split_tensors("train")
    batch_size = datamodule.batch_size

    pipeline_rows, bare_rows = [], []
    for repeat in range(args.repeats):
        cfg = compose_train_config(overrides, workdir / f"pipeline_{repeat}")
        with open_dict(cfg):
            cfg.seed = repeat
        started = time.perf_counter()
        train(cfg)
        total = time.perf_counter() - started
        fit = FitTimer.last
        pipeline_rows.append({"total_s": total, "fit_s": fit["fit_s"], "steps": int(fit["steps"])})

        torch.set_num_threads(training_threads(cfg.threads, configured_copies(cfg.model)))
        pl.seed_everything(repeat, verbose=False)
        module = instantiate_module(cfg.model, datamodule)
        seconds, steps = bare_loop(module, train_tensors, batch_size, args.epochs)
        bare_rows.append({"fit_s": seconds, "steps": steps})
        print(
            f"repeat {repeat}: pipeline {total:.1f} s total, {fit['fit_s']:.1f} s fit "
            f"({1e3 * fit['fit_s'] / fit['steps']:.3f} ms/step); bare {seconds:.1f} s "
            f"({1e3 * seconds / steps:.3f} ms/step)",
            flush=True,
        )

    pipeline_fit = median([row["fit_s"] for row in pipeline_rows])
    pipeline_total = median([row["total_s"] for row in pipeline_rows])
    bare_fit = median([row["fit_s"] for row in bare_rows])
    steps = pipeline_rows[0]["steps"]
    ratios = [p["fit_s"] / b["fit_s"] for p, b in zip(pipeline_rows, bare_rows)]
    scale_to_paper = 5000 / args.epochs
    print_table(
        ["path", "epochs", "steps", "fit s", "total s", "steps/s", "ms/step", "fit s at 5,000 epochs"],
        [
            [
                "pipeline (train.py path)",
                args.epochs,
                steps,
                pipeline_fit,
                pipeline_total,
                steps / pipeline_fit,
                1e3 * pipeline_fit / steps,
                pipeline_fit * scale_to_paper,
            ],
            [
                "bare PyTorch loop",
                args.epochs,
                bare_rows[0]["steps"],
                bare_fit,
                bare_fit,
                bare_rows[0]["steps"] / bare_fit,
                1e3 * bare_fit / bare_rows[0]["steps"],
                bare_fit * scale_to_paper,
            ],
        ],
        title=f"train_speed: {args.experiment}, model={args.model}, logger={args.logger}, median of {args.repeats}",
    )
    print(
        f"pipeline / bare (fit): {pipeline_fit / bare_fit:.3f} (ratio of medians), "
        f"{median(ratios):.3f} (median of per-repeat ratios); "
        f"start-up + teardown of the pipeline: {pipeline_total - pipeline_fit:.1f} s"
    )


if __name__ == "__main__":
    main()
