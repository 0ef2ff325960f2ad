"""The project's training against the bare PyTorch loop, run at the same time on two cores.

On a shared machine the load changes from one minute to the next, so two runs one after the
other see different machines. Here the project's training (``facrnn.runs.pipeline.train``,
the ``train.py`` code path with logging and checkpointing on, as in
:mod:`benchmarks.train_speed`) and the bare loop of the same module, loss, batches and
optimizer (:func:`benchmarks.common.bare_loop`) run simultaneously in two fresh processes,
each pinned to its own core (``os.sched_setaffinity``) with one torch thread. The plain
loop trains untimed until the project's ``trainer.fit`` starts (after its loggers and data
are set up), then both are timed; the one that finishes first keeps training untimed
until the other is done, so each sees a busy neighbour throughout. Then the cores
are swapped. A pair is both assignments; the ratio project / plain is printed per run, per
pair (geometric mean of its two runs) and as the median over all runs.

    python -m benchmarks.side_by_side                       # 300 epochs, 3 pairs (~2 min on 2 cores)
    python -m benchmarks.side_by_side --epochs 1000 --pairs 5
    python -m benchmarks.side_by_side --cores 2 3 --override model.restarts=4
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from benchmarks.common import add_pipeline_arguments, machine_description, median, pipeline_overrides, print_table

ROLES = ("project", "plain")
#: set in a project process: the event its FitStarted callback sets
_fit_started: Any = None


class FitStarted(pl.Callback):
    """Tells the plain loop's process that the project's ``trainer.fit`` has started."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if _fit_started is not None:
            _fit_started.set()


def _busy_while(module: Any, tensors: dict[str, Any], batch_size: int, waiting: Callable[[], bool]) -> None:
    """Untimed epochs of the bare loop while ``waiting()``: the neighbour stays busy."""
    from benchmarks.common import bare_loop

    while waiting():
        bare_loop(module, tensors, batch_size, 1)


def run_role(
    role: str,
    core: int,
    overrides: list[str],
    run_dir: str,
    seed: int,
    epochs: int,
    events: dict[str, Any],
    results: Any,
) -> None:
    """One process of a run: pin to ``core``, set up, time ``role``'s training beside the other."""
    os.sched_setaffinity(0, {core})
    from omegaconf import open_dict

    import benchmarks.side_by_side as this  # the module the FitStarted callback lives in (not __mp_main__)
    from benchmarks.common import FitTimer, bare_loop, compose_train_config, quiet_training_runs
    from facrnn.runs.pipeline import instantiate_datamodule, instantiate_module, train
    from facrnn.training.runtime import keep_freed_buffers

    quiet_training_runs()
    torch.set_num_threads(1)
    keep_freed_buffers()  # as the pipeline does, so both have the same allocator
    done = [events["project_done"], events["plain_done"]]
    try:
        cfg = compose_train_config(overrides, Path(run_dir))
        with open_dict(cfg):
            cfg.seed = seed
        datamodule = instantiate_datamodule(cfg.datamodule)  # from the data cache (warmed by the parent)
        tensors = datamodule.split_tensors("train")
        pl.seed_everything(seed, verbose=False)
        module = instantiate_module(cfg.model, datamodule)
        events["ready"].wait()
        if role == "project":
            this._fit_started = events["fit_started"]
            started = time.perf_counter()
            train(cfg)
            total = time.perf_counter() - started
            fit_s, steps = FitTimer.last["fit_s"], int(FitTimer.last["steps"])
        else:
            _busy_while(module, tensors, datamodule.batch_size, lambda: not events["fit_started"].is_set())
            pl.seed_everything(seed, verbose=False)
            module = instantiate_module(cfg.model, datamodule)
            fit_s, steps = bare_loop(module, tensors, datamodule.batch_size, epochs)
            total = fit_s
        events[f"{role}_done"].set()
        results.put({"role": role, "core": core, "fit_s": fit_s, "total_s": total, "steps": steps})
        _busy_while(module, tensors, datamodule.batch_size, lambda: not all(event.is_set() for event in done))
    except BaseException as error:  # noqa: BLE001 - reported to the parent
        for name in ("fit_started", "project_done", "plain_done"):
            events[name].set()
        events["ready"].abort()
        results.put({"role": role, "core": core, "error": repr(error)})


def side_by_side_run(
    cores: tuple[int, int], overrides: list[str], workdir: Path, seed: int, epochs: int
) -> dict[str, dict[str, Any]]:
    """Project on ``cores[0]`` and plain loop on ``cores[1]``, at the same time; their results by role."""
    context = multiprocessing.get_context("spawn")
    events = {name: context.Event() for name in ("fit_started", "project_done", "plain_done")}
    events["ready"] = context.Barrier(len(ROLES))
    results = context.Queue()
    processes = []
    for role, core in zip(ROLES, cores):
        run_dir = str(workdir / f"{role}_core{core}_seed{seed}")
        args = (role, core, overrides, run_dir, seed, epochs, events, results)
        processes.append(context.Process(target=run_role, args=args))
    for process in processes:
        process.start()
    by_role = {}
    for _ in ROLES:
        result = results.get()
        by_role[result["role"]] = result
    for process in processes:
        process.join()
    errors = [f"{role}: {result['error']}" for role, result in by_role.items() if "error" in result]
    if errors:
        raise RuntimeError("side-by-side run failed: " + "; ".join(errors))
    return by_role


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=300, help="epochs per timed run (paper: 5000)")
    parser.add_argument("--pairs", type=int, default=3, help="pairs of runs (each pair: both core assignments)")
    parser.add_argument("--cores", type=int, nargs=2, default=None, help="the two cores (default: the first two of the mask)")
    add_pipeline_arguments(parser)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    mask = sorted(os.sched_getaffinity(0))
    if args.cores is None and len(mask) < 2:
        raise SystemExit(f"side_by_side needs two cores; this process may use {mask}")
    cores = tuple(args.cores) if args.cores else (mask[0], mask[1])
    from benchmarks.common import compose_train_config, quiet_training_runs
    from facrnn.runs.pipeline import instantiate_datamodule

    quiet_training_runs()
    workdir = Path(tempfile.mkdtemp(prefix="facrnn_side_by_side_"))
    overrides = pipeline_overrides(
        args,
        "+callbacks.fit_timer._target_=benchmarks.common.FitTimer",
        "+callbacks.fit_started._target_=benchmarks.side_by_side.FitStarted",
        "threads=1",
    )
    print(f"machine: {machine_description()}")
    print(f"config: {' '.join(overrides)}; cores {cores[0]} and {cores[1]}; runs in {workdir}", flush=True)
    instantiate_datamodule(compose_train_config(overrides, workdir / "warm").datamodule)  # the data cache

    rows, ratios, pair_ratios = [], [], []
    for pair in range(args.pairs):
        in_pair = []
        for assignment in (cores, cores[::-1]):
            result = side_by_side_run(assignment, overrides, workdir, seed=pair, epochs=args.epochs)
            project, plain = result["project"], result["plain"]
            project_ms = 1e3 * project["fit_s"] / project["steps"]
            plain_ms = 1e3 * plain["fit_s"] / plain["steps"]
            ratio = project_ms / plain_ms
            in_pair.append(ratio)
            ratios.append(ratio)
            load = os.getloadavg()[0]
            rows.append([pair, project["core"], plain["core"], project_ms, plain_ms, ratio, project["total_s"], load])
            print(
                f"pair {pair}: project on core {project['core']} {project_ms:.3f} ms/step "
                f"({project['fit_s']:.1f} s fit, {project['total_s']:.1f} s with start-up), plain on core "
                f"{plain['core']} {plain_ms:.3f} ms/step; project / plain {ratio:.3f} (load {load:.2f})",
                flush=True,
            )
        pair_ratios.append(math.sqrt(in_pair[0] * in_pair[1]))
    print_table(
        [
            "pair",
            "project core",
            "plain core",
            "project ms/step",
            "plain ms/step",
            "project / plain",
            "project s (total)",
            "load 1 min",
        ],
        rows,
        title=f"side_by_side: {args.experiment}, model={args.model}, logger={args.logger}, {args.epochs} epochs, "
        "one thread each, at the same time",
    )
    print(
        "project / plain per pair (geometric mean of both core assignments): "
        + ", ".join(f"{ratio:.3f}" for ratio in pair_ratios)
        + f"; median over all {len(ratios)} runs: {median(ratios):.3f}"
    )


if __name__ == "__main__":
    main()
